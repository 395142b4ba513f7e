"""Fixtures for the OneDB emulator, and a finisher run in a process of its own (so a test
can really kill it):

    python -m tests.support.onedb CONFIG JOB_ID [--die-after-part N]

runs the finisher function's handler on JOB_ID with CONFIG; with --die-after-part it
SIGKILLs itself right after uploading part N, before that part is checkpointed.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sqlite3
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devkit.emulators.onedb import OneDBEmulator
from tests.support.backup import LocalBackup

ENV_ID = "onedb-env-7c1d"
KEY_ID = "key-2f9a41"
KEY_SECRET = "onedb-key-secret-5e8d2c7b"
APP = "user"
SECRET_ENV = "ONEDB_KEY_SECRET"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def onedb_emulator() -> Iterator[OneDBEmulator]:
    """A started emulator whose environment ENV_ID has key KEY_ID (cdb granted) and no
    tables yet (add them with ``add_table`` / ``add_generated_table``)."""
    emulator = OneDBEmulator()
    emulator.add_key(ENV_ID, KEY_ID, KEY_SECRET)
    emulator.start()
    try:
        yield emulator
    finally:
        emulator.stop()


def onedb_source(local: LocalBackup, emulator: OneDBEmulator, name: str = "crm",
                 **overrides: Any) -> dict[str, Any]:
    """A OneDB source on `emulator` for `local.config(...)`; sets the secret's variable."""
    local.environ[SECRET_ENV] = KEY_SECRET
    return {
        "type": "onedb", "name": name, "region": "cn-east-1", "envid": ENV_ID,
        "keyid": KEY_ID, "key_secret": f"${{{SECRET_ENV}}}", "app_id": APP,
        "keys": ["userId", "seq"], "tables": ["events"], "api_base": emulator.base_url,
        **overrides,
    }


def stored_job(state_url: str, job_id: str) -> dict[str, Any]:
    """The job as stored, read straight from the SQLite file (as another process sees it)."""
    path = state_url.removeprefix("sqlite:///")
    with sqlite3.connect(path, timeout=30) as db:
        row = db.execute("SELECT doc FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
    assert row is not None, f"no job {job_id}"
    doc: dict[str, Any] = json.loads(row[0])
    return doc


def saved_parts(doc: dict[str, Any]) -> int:
    return len(((doc.get("checkpoint") or {}).get("paged") or {}).get("parts", []))


def finisher_process(config_path: Path, job_id: str, environ: dict[str, str],
                     die_after_part: int | None = None) -> Any:
    import subprocess

    command = [sys.executable, "-m", "tests.support.onedb", str(config_path), job_id]
    if die_after_part is not None:
        command += ["--die-after-part", str(die_after_part)]
    return subprocess.Popen(command, cwd=ROOT, env={**os.environ, **environ},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def wait_for_parts(state_url: str, job_id: str, parts: int, process: Any,
                   timeout: float = 120) -> dict[str, Any]:
    """Wait until the finisher has checkpointed `parts` parts (it must still be running)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        doc = stored_job(state_url, job_id)
        if saved_parts(doc) >= parts:
            return doc
        if process.poll() is not None:
            raise AssertionError(f"the finisher ended before part {parts}: "
                                 f"{process.stderr.read().decode()[-2000:]}")
        time.sleep(0.01)
    raise AssertionError(f"no checkpoint of part {parts} within {timeout} s")


class _DyingSink:
    """The real sink, except that the process is killed right after part N is uploaded:
    the crash window between an upload and its checkpoint."""

    def __init__(self, sink: Any, die_after_part: int) -> None:
        self._sink = sink
        self._die_after = die_after_part

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sink, name)

    def upload_part(self, key: str, upload_id: str, number: int, data: bytes) -> str:
        etag: str = self._sink.upload_part(key, upload_id, number, data)
        if number == self._die_after:
            os.kill(os.getpid(), signal.SIGKILL)
        return etag


def _child(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("config")
    parser.add_argument("job_id")
    parser.add_argument("--die-after-part", type=int)
    args = parser.parse_args(argv)
    os.environ["BAAS_BACKUP_CONFIG"] = args.config
    if args.die_after_part is None:
        from shared.entrypoints.scf import handle_finisher  # what SCF runs

        print(json.dumps(handle_finisher({"job_id": args.job_id})), flush=True)
        return 0
    from shared.bootstrap import build_context
    from shared.config import load_config
    from shared.service.finish import finish

    ctx = build_context(load_config(args.config))
    ctx.objects = _DyingSink(ctx.objects, args.die_after_part)
    print(json.dumps({"outcome": finish(ctx, args.job_id)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1:]))
