"""`scripts/demo` (python -m scripts.local_demo), the README's first command: a complete
backup on the local default, verified, restored, and a doctor whose every check passes.
Run whole, as a user runs it, so a change that breaks any step of it fails here."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_demo_backs_up_verifies_restores_and_passes_every_doctor_check(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "scripts.local_demo", "--workdir", str(tmp_path)],
        check=False, cwd=ROOT, capture_output=True, text=True, timeout=600,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "COLUMNS": "200"})
    said = done.stdout + done.stderr
    assert done.returncode == 0, said[-4000:]
    for line in ("every object equals its source collection", "all backups verified",
                 "equal to the original", "every check passed"):
        assert line in said, (line, said[-4000:])
