"""`python -m scripts.serve_api`, the README's "Try it here": the link it prints with the
session's token opens the page it serves, whatever port it was given (0: any free one)."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent


def test_the_printed_link_is_where_the_page_is_served_on_port_0(tmp_path: Path) -> None:
    child = subprocess.Popen(
        [sys.executable, "-m", "scripts.serve_api", "--port", "0", "--workdir", str(tmp_path)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)})
    try:
        assert child.stdout is not None
        lines: list[str] = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not any("serving" in x for x in lines):
            line = child.stdout.readline()
            if not line:
                break
            lines.append(line)
        said = "".join(lines)
        link = re.search(r"(http://127\.0\.0\.1:\d+/)#token=(\S+)", said)
        assert link, said
        answer = httpx.get(f"{link.group(1)}runs",
                           headers={"Authorization": f"Bearer {link.group(2)}"}, timeout=30)
        assert answer.status_code == 200, (said, answer.text)
    finally:
        child.terminate()
        child.wait(timeout=30)


def test_a_port_past_65535_is_refused_as_serve_refuses_it(tmp_path: Path) -> None:
    """The same words as `baas-backup serve --port 70000`, exit 2, before anything starts
    (it raised OverflowError from bind, after two demo backups)."""
    done = subprocess.run(
        [sys.executable, "-m", "scripts.serve_api", "--port", "70000", "--workdir", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)})

    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert "argument --port: must be a TCP port, 1 to 65535" in done.stderr, done.stderr
    assert "70000" in done.stderr and not (tmp_path / "state.sqlite3").exists()


def test_ctrl_c_while_it_backs_up_stops_it_with_one_line_and_exit_130(tmp_path: Path) -> None:
    """Ctrl-C before the page is served (the demo's two backups take a while): it stops
    there, saying so; it does not go on to the next backup and serve anyway."""
    child = subprocess.Popen(
        [sys.executable, "-m", "scripts.serve_api", "--port", "0", "--workdir", str(tmp_path)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)})
    try:
        assert child.stdout is not None
        while "run " not in (line := child.stdout.readline()):  # the first backup started
            assert line, child.communicate()[1][-2000:]
        child.send_signal(signal.SIGINT)
        out, err = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(timeout=30)

    assert child.returncode == 130 and "Traceback" not in err, (child.returncode, err[-3000:])
    assert len(err.strip().splitlines()) == 1 and "interrupted" in err, err
    assert "serving" not in out, out
