"""A cold start loads what its invocation runs: a poller tick that closes no run and copies
nothing paged does not load the run manifest, retention or the paged copier; a finisher's
context makes the shared TLS context and loads its platforms' modules ahead, on a side
thread, and makes the TLS context only once (issue 15).
Each check runs in a fresh interpreter, so what earlier tests imported does not count."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

LOADED_LATER = ("shared.domain.manifest", "shared.service.prune", "shared.service.prune_alert",
                "shared.domain.retention",
                "shared.service.copy_paged", "shared.service.verify")


def loaded_after(*modules: str) -> set[str]:
    probe = (f"import json, sys\nfor m in {list(modules)!r}: __import__(m)\n"
             f"print(json.dumps([m for m in {list(LOADED_LATER)!r} if m in sys.modules]))")
    answer = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return set(json.loads(answer.stdout))


def test_a_handler_import_loads_no_http_stack_tls_or_yaml() -> None:
    """Every invocation needs them, but after the import: loaded by the first client
    (COS SDK and requests, httpx, ssl and the CA bundle) and by the config loader (YAML),
    they stay out of the import figure `scripts/bench package` holds to 200 ms."""
    probe = ("import json, sys\nimport shared.entrypoints.scf\n"
             "print(json.dumps([m for m in ('ssl', 'shared.adapters.tls', 'requests', "
             "'qcloud_cos', 'httpx', 'yaml') if m in sys.modules]))")
    answer = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert json.loads(answer.stdout) == []


def test_a_handler_import_builds_no_pydantic_model() -> None:
    """Every model the handlers import is built on first use (defer_build): a model built
    at import also loads pydantic's plugin loader and, with it, importlib.metadata (about
    20 ms of a cold start)."""
    probe = ("import json, sys\nimport shared.entrypoints.scf\n"
             "print(json.dumps([m for m in ('pydantic.plugin._loader', 'importlib.metadata') "
             "if m in sys.modules]))")
    answer = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert json.loads(answer.stdout) == []


def test_the_poller_loads_closing_and_paged_copying_only_when_it_needs_them() -> None:
    assert loaded_after("shared.entrypoints.scf", "shared.service.poll") == set()


def test_the_finisher_loads_the_manifest_it_writes_and_nothing_else_of_those() -> None:
    assert loaded_after("shared.entrypoints.scf", "shared.service.finish") == {"shared.domain.manifest"}


WARM_UP = """
import json, sys, threading
import ssl

made = []  # CA bundles loaded (the cost a shared TLS context pays once)
load = ssl.SSLContext.load_verify_locations
ssl.SSLContext.load_verify_locations = lambda *a, **k: made.append(1) or load(*a, **k)
from shared.adapters import tls
from shared.bootstrap import build_context
from tests.unit.support import unit_config

config = unit_config(["orders"])
config = config.model_copy(update={"state": config.state.model_copy(update={"url": sys.argv[1]})})
environ = {"SECRET": "unit-secret-0123456789", "TENCENTCLOUD_SECRETID": "AKIDunit",
           "TENCENTCLOUD_SECRETKEY": "unit-key", "TENCENTCLOUD_SESSIONTOKEN": "unit-token"}
ctx = build_context(config, environ=environ, warm_platforms=%s)
for thread in threading.enumerate():
    if thread.name == "warm-platforms":
        thread.join(30)
warmed = len(made)
platform = "shared.platforms.wechat.platform" in sys.modules
contexts = set()
racers = [threading.Thread(target=lambda: contexts.add(id(tls.tls_context()))) for _ in range(8)]
for racer in racers:
    racer.start()
for racer in racers:
    racer.join()
print(json.dumps({"warmed": warmed, "platform": platform, "made": len(made),
                  "contexts": len(contexts)}))
"""


def warm_up_probe(tmp_path: Path, warm: bool) -> dict[str, int | bool]:
    state = f"sqlite:///{tmp_path / 'state.sqlite3'}"
    answer = subprocess.run([sys.executable, "-c", WARM_UP % warm, state], capture_output=True,
                            text=True, check=True, cwd=Path(__file__).resolve().parents[2])
    result: dict[str, int | bool] = json.loads(answer.stdout.splitlines()[-1])
    return result


def test_a_finisher_context_warms_its_platforms_up_and_makes_one_tls_context(tmp_path: Path) -> None:
    assert warm_up_probe(tmp_path, warm=True) == {
        "warmed": 1, "platform": True, "made": 1, "contexts": 1}
    # without the warm-up nothing is made or loaded until asked, and eight threads asking
    # at once still get one context
    assert warm_up_probe(tmp_path, warm=False) == {
        "warmed": 0, "platform": False, "made": 1, "contexts": 1}
