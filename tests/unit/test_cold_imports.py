"""A cold start loads what its invocation runs: a poller tick that closes no run and copies
nothing paged does not load the run manifest, retention or the paged copier (issue 15)."""

from __future__ import annotations

import json
import subprocess
import sys

LOADED_LATER = ("shared.domain.manifest", "shared.service.prune", "shared.domain.retention",
                "shared.service.copy_paged", "shared.service.verify")


def loaded_after(*modules: str) -> set[str]:
    probe = (f"import json, sys\nfor m in {list(modules)!r}: __import__(m)\n"
             f"print(json.dumps([m for m in {list(LOADED_LATER)!r} if m in sys.modules]))")
    answer = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return set(json.loads(answer.stdout))


def test_the_poller_loads_closing_and_paged_copying_only_when_it_needs_them() -> None:
    assert loaded_after("shared.entrypoints.scf", "shared.service.poll") == set()


def test_the_finisher_loads_the_manifest_it_writes_and_nothing_else_of_those() -> None:
    assert loaded_after("shared.entrypoints.scf", "shared.service.finish") == {"shared.domain.manifest"}
