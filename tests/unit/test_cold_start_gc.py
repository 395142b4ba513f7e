"""A cold start runs with the garbage collector paused (shared/entrypoints/coldstart.py):
the handler file pauses it before its imports, the first invocation resumes it, freezing
what the start made, before its work (a poller tick, a copy) begins, on every other way
out (a malformed event), and before a doctor's checks. A process that already holds the
handlers' code is left alone. Each check loads a handler file the way SCF does, in a
fresh interpreter."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

PROBE = """
import gc, importlib.util, json, sys
warm, handler_name, event = sys.argv[1] == "warm", sys.argv[2], json.loads(sys.argv[3])
if warm:
    import shared.entrypoints.scf
spec = importlib.util.spec_from_file_location("index", f"functions/{handler_name}/index.py")
handler = importlib.util.module_from_spec(spec)
spec.loader.exec_module(handler)
seen = {"after_import": gc.isenabled()}

import shared.entrypoints.scf as scf
import shared.service.poll as poll_module
from tests.unit.support import unit_config

config = unit_config(["orders"])


def load_config():
    seen["loading_config"] = gc.isenabled()
    return config.model_copy(update={"state": config.state.model_copy(update={"url": sys.argv[4]})})


scf.load_config = load_config


class Summary:
    advanced, closed_runs = 0, 0


def tick(ctx):
    seen["during_work"] = gc.isenabled()
    return Summary()


poll_module.poll = tick
try:
    handler.main_handler(event, None)
except Exception as exc:
    seen["raised"] = type(exc).__name__
seen.update(after_call=gc.isenabled(), frozen=gc.get_freeze_count() > 0)
print(json.dumps(seen))
"""
TIMER = {"Type": "Timer", "TriggerName": "poller", "Time": "2026-11-30T00:00:00Z"}


def probe(tmp_path: Path, handler: str, event: object, *, warm: bool = False) -> dict[str, object]:
    state = f"sqlite:///{tmp_path / 'state.sqlite3'}"
    answer = subprocess.run(
        [sys.executable, "-c", PROBE, "warm" if warm else "cold", handler, json.dumps(event), state],
        capture_output=True, text=True, check=True, cwd=ROOT,
        env={"PATH": "", "SECRET": "unit-secret-0123456789", "TENCENTCLOUD_SECRETID": "AKIDunit",
             "TENCENTCLOUD_SECRETKEY": "unit-key", "TENCENTCLOUD_SESSIONTOKEN": "unit-token"})
    result: dict[str, object] = json.loads(answer.stdout.splitlines()[-1])
    return result


def test_a_cold_poller_imports_paused_and_ticks_with_the_collector_on(tmp_path: Path) -> None:
    assert probe(tmp_path, "poller", TIMER) == {
        "after_import": False, "loading_config": False, "during_work": True,
        "after_call": True, "frozen": True}


def test_an_invocation_that_builds_no_context_resumes_the_collector_too(tmp_path: Path) -> None:
    assert probe(tmp_path, "finisher", {"job": "no id"}) == {
        "after_import": False, "raised": "MalformedEvent", "after_call": True, "frozen": True}


def test_a_process_that_holds_the_handlers_code_already_is_left_alone(tmp_path: Path) -> None:
    assert probe(tmp_path, "poller", TIMER, warm=True) == {
        "after_import": True, "loading_config": True, "during_work": True,
        "after_call": True, "frozen": False}


def test_a_doctor_invocation_runs_with_the_collector_on(tmp_path: Path) -> None:
    """A doctor run is no cold start to hurry, and what it leaves as garbage must not be
    frozen for the instance's life."""
    assert probe(tmp_path, "finisher", {"doctor": True}) == {
        "after_import": False, "loading_config": True, "after_call": True, "frozen": True}
