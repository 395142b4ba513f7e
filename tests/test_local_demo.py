"""`scripts/demo` (python -m scripts.local_demo), the README's first command: a complete
backup on the local default, verified, restored, and a doctor whose every check passes.
Run whole, as a user runs it, so a change that breaks any step of it fails here."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEMO_ENV = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "COLUMNS": "200"}


def test_the_demo_backs_up_verifies_restores_and_passes_every_doctor_check(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "scripts.local_demo", "--workdir", str(tmp_path)],
        check=False, cwd=ROOT, capture_output=True, text=True, timeout=600, env=DEMO_ENV)
    said = done.stdout + done.stderr
    assert done.returncode == 0, said[-4000:]
    for line in ("every object equals its source collection", "all backups verified",
                 "equal to the original", "every check passed"):
        assert line in said, (line, said[-4000:])


def test_ctrl_c_in_a_step_stops_the_demo_there_with_exit_130(tmp_path: Path) -> None:
    """Ctrl-C during its backup ended the `run` step (the CLI said so), and then the demo
    went on to show the bucket, verify, restore and check as if nothing had happened."""
    process = subprocess.Popen(
        [sys.executable, "-m", "scripts.local_demo", "--workdir", str(tmp_path)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=DEMO_ENV)
    try:
        assert process.stdout is not None
        seen = []
        while line := process.stdout.readline():  # the backup is under way
            seen.append(line)
            if line.startswith("run ") and line.rstrip().endswith(" started"):
                break
        assert line, "".join(seen)[-3000:]
        process.send_signal(signal.SIGINT)  # as a terminal's Ctrl-C
        out, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)

    said = "".join(seen) + out + err
    assert process.returncode == 130 and "Traceback" not in said, (process.returncode, said[-3000:])
    assert "baas-backup run: interrupted" in err, err  # the step's own word on what it left
    assert err.strip().splitlines()[-1].startswith("demo: stopped by Ctrl-C during the backup"), err
    for later in ("what landed in bucket", "$ baas-backup verify", "$ baas-backup restore",
                  "$ baas-backup doctor"):
        assert later not in said, (later, said[-3000:])
