"""Ctrl-C on the CLI, sent as SIGINT to a real `baas-backup` process: one line saying what
was interrupted and what is left (which the test then checks is true), exit 130 (128 +
SIGINT, as a shell reports it); never a traceback."""

from __future__ import annotations

import fcntl
import os
import pty
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest
import yaml

from devkit.sample_data import make_docs
from shared.domain.jobs import RunStatus
from shared.entrypoints.cli import main as cli
from tests.support.backup import FAST_TIMING, SECRET, LocalBackup, backup_now
from tests.support.hostile import Hostile, every_path

ROOT = Path(__file__).resolve().parent.parent
INTERRUPTED = 130
HELD = 10 ** 6  # the emulator's export/import polls before it is ready: never, here


def _config_file(local: LocalBackup, tmp_path: Path, endpoint: str | None = None) -> Path:
    destination = local.destination.model_dump(mode="json", exclude={"secret_id", "secret_key"})
    if endpoint:
        destination["endpoint"] = endpoint
    path = tmp_path / "backup.yaml"
    path.write_text(yaml.safe_dump({"destination": destination, "state": {"url": local.state_url},
                                    "timing": FAST_TIMING, "sources": [local.wechat_source()]}),
                    encoding="utf-8")
    return path


@pytest.fixture
def started() -> Iterator[list[subprocess.Popen[str]]]:
    """The CLI processes a test starts; killed if the test left one running."""
    processes: list[subprocess.Popen[str]] = []
    yield processes
    for process in processes:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)


def _cli_process(started: list[subprocess.Popen[str]], path: Path,
                 *args: str) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "shared.entrypoints.cli", "--config", str(path), *args],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "WECHAT_SECRET": SECRET})
    started.append(process)
    return process


def _line_with(process: subprocess.Popen[str], said: str) -> str:
    """The first line of its output holding `said` (the process must still be running)."""
    assert process.stdout is not None
    while line := process.stdout.readline():
        if said in line:
            return line
    raise AssertionError(f"it ended before saying {said!r}: {process.communicate()[1][-2000:]}")


def _prompted(process: subprocess.Popen[str], prompt: str) -> None:
    """Wait until it asks `prompt` (no newline follows a prompt: read it as it comes)."""
    assert process.stdout is not None
    seen = ""
    while not seen.endswith(prompt):
        char = process.stdout.read(1)
        assert char, f"it ended before asking: {seen[-500:]} {process.communicate()[1][-2000:]}"
        seen += char


def _interrupted(process: subprocess.Popen[str]) -> str:
    """Ctrl-C: SIGINT, as the terminal sends it; what it said on stderr, as one line."""
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == INTERRUPTED, (process.returncode, err[-3000:])
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err[-3000:]
    return err.strip()


def _poll_until_closed(path: Path, local: LocalBackup, run_id: str) -> RunStatus:
    """`baas-backup poll` until run `run_id` ends, as the interrupted command said."""
    state = local.context(local.config()).state
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert cli(["--config", str(path), "poll"]) == 0
        run = state.get_run(run_id)
        assert run is not None
        if run.status is not RunStatus.RUNNING:
            return run.status
        time.sleep(0.05)
    raise AssertionError(f"run {run_id} still open after 60 s of polls")


def test_ctrl_c_during_run_says_the_run_stays_open_and_poll_finishes_it(
        local: LocalBackup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        started: list[subprocess.Popen[str]]) -> None:
    monkeypatch.setenv("WECHAT_SECRET", SECRET)
    local.seed("orders", make_docs(20))
    local.emulator.polls_until_ready = HELD  # the export runs on while the CLI waits
    path = _config_file(local, tmp_path)
    process = _cli_process(started, path, "run", "--tick", "0.05")
    run_id = _line_with(process, " started").split()[1]
    _line_with(process, "shop/orders: exporting")  # the platform is exporting it

    err = _interrupted(process)

    assert err.startswith(f"baas-backup run: interrupted; run {run_id} ") and "open" in err, err
    assert "baas-backup poll" in err and f"baas-backup status {run_id}" in err, err
    local.emulator.polls_until_ready = 2
    local.emulator.release_jobs()
    assert _poll_until_closed(path, local, run_id) is RunStatus.SUCCEEDED


def test_ctrl_c_during_restore_says_it_carries_on_and_poll_finishes_it(
        local: LocalBackup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        started: list[subprocess.Popen[str]]) -> None:
    monkeypatch.setenv("WECHAT_SECRET", SECRET)
    local.seed("orders", make_docs(20))
    backup = backup_now(local.context(local.config()))
    local.emulator.polls_until_ready = HELD  # the import runs on while the CLI waits
    path = _config_file(local, tmp_path)
    process = _cli_process(started, path, "restore", backup.run_id, "shop", "orders",
                           "--tick", "0.05")
    target = _line_with(process, "restore shop/orders").split(" into shop/")[1].split()[0]
    restore_id = _line_with(process, " started").split()[1]
    _line_with(process, f"shop/{target}: importing")  # the platform is writing it

    err = _interrupted(process)

    assert err.startswith(f"baas-backup restore: interrupted; restore {restore_id} ") \
        and "not stopped" in err and f"shop/{target}" in err, err
    assert "baas-backup poll" in err and f"baas-backup status {restore_id}" in err, err
    local.emulator.polls_until_ready = 2
    local.emulator.release_jobs()
    assert _poll_until_closed(path, local, restore_id) is RunStatus.SUCCEEDED
    assert len(local.emulator.docs("shop-prod-1a2b3c", target)) == 20


def test_ctrl_c_during_verify_says_nothing_was_recorded(
        local: LocalBackup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        started: list[subprocess.Popen[str]], hostile: Hostile) -> None:
    monkeypatch.setenv("WECHAT_SECRET", SECRET)
    local.seed("orders", make_docs(20))
    backup = backup_now(local.context(local.config()))
    release = threading.Event()

    def held(_: BaseHTTPRequestHandler) -> None:  # a bucket that does not answer yet
        release.wait(60)

    hostile.answers = every_path(held)
    path = _config_file(local, tmp_path, endpoint=hostile.base)
    try:
        process = _cli_process(started, path, "verify", backup.run_id)
        deadline = time.monotonic() + 60
        while not hostile.seen:  # verify is reading the bucket
            assert process.poll() is None and time.monotonic() < deadline, process.communicate()
            time.sleep(0.02)

        err = _interrupted(process)
    finally:
        release.set()

    assert err.startswith("baas-backup verify: interrupted ") and "nothing" in err, err
    assert "recorded" in err and "again" in err, err
    assert [s.method for s in hostile.seen if s.method in ("PUT", "POST")] == []


def test_ctrl_c_during_serve_says_it_stopped_and_exits_130(
        local: LocalBackup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        started: list[subprocess.Popen[str]]) -> None:
    monkeypatch.setenv("WECHAT_SECRET", SECRET)
    path = _config_file(local, tmp_path)
    process = _cli_process(started, path, "serve", "--port", "0", "--poll-seconds", "0.05")
    _line_with(process, "serving the HTTP API")

    err = _interrupted(process)

    assert err.startswith("baas-backup serve: interrupted; stopped serving"), err
    assert "baas-backup poll" in err, err


def test_ctrl_d_at_the_restore_prompt_is_a_no_and_writes_nothing(
        local: LocalBackup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        started: list[subprocess.Popen[str]]) -> None:
    """Ctrl-D, the end of input, is a no, as any answer but the target's name."""
    monkeypatch.setenv("WECHAT_SECRET", SECRET)
    local.seed("orders", make_docs(20))
    backup = backup_now(local.context(local.config()))
    path = _config_file(local, tmp_path)
    terminal, stdin = pty.openpty()  # the prompt is asked at a terminal only
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "shared.entrypoints.cli", "--config", str(path), "restore",
             backup.run_id, "shop", "orders", "--into", "orders", "--mode", "upsert"],
            cwd=ROOT, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "WECHAT_SECRET": SECRET})
        started.append(process)
        _prompted(process, "write into orders? type its name: ")
        os.write(terminal, b"\x04")
        _, err = process.communicate(timeout=60)
    finally:
        os.close(terminal)
        os.close(stdin)

    assert process.returncode == 2 and "Traceback" not in err, (process.returncode, err)
    said = "baas-backup restore: not confirmed: nothing written. Add --yes"
    assert err.strip().startswith(said) and len(err.strip().splitlines()) == 1, err
    assert local.context(local.config()).state.list_runs(10) == [backup]  # no restore started


def test_the_target_name_typed_at_the_prompt_is_a_yes(
        local: LocalBackup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        started: list[subprocess.Popen[str]]) -> None:
    """The answer is read without input() (see the next test): the name typed still goes."""
    monkeypatch.setenv("WECHAT_SECRET", SECRET)
    local.seed("orders", make_docs(20))
    backup = backup_now(local.context(local.config()))
    path = _config_file(local, tmp_path)
    terminal, stdin = pty.openpty()
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "shared.entrypoints.cli", "--config", str(path), "restore",
             backup.run_id, "shop", "orders", "--into", "orders", "--mode", "upsert",
             "--tick", "0.05"],
            cwd=ROOT, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "WECHAT_SECRET": SECRET})
        started.append(process)
        _prompted(process, "write into orders? type its name: ")
        os.write(terminal, b"orders\n")
        _, err = process.communicate(timeout=120)
    finally:
        os.close(terminal)
        os.close(stdin)

    assert process.returncode == 0, (process.returncode, err[-3000:])
    runs = local.context(local.config()).state.list_runs(10)
    assert [r.operation for r in runs if r.operation == "restore"] == ["restore"], runs


def _asleep(pid: int) -> bool:
    """Waiting in the kernel (a read, a write, a select): /proc/PID/stat's state S."""
    stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii")
    return stat.rsplit(")", 1)[1].split()[0] == "S"


def _read_to_end(fd: int, seconds: float) -> bytes:
    """All a pipe holds until its writer has gone; fails if that takes over `seconds`."""
    got, deadline = b"", time.monotonic() + seconds
    while True:
        left = deadline - time.monotonic()
        assert left > 0, f"still running {seconds} s after Ctrl-C: {got[-2000:]!r}"
        if select.select([fd], [], [], left)[0]:
            chunk = os.read(fd, 65536)
            if not chunk:
                return got
            got += chunk


def test_ctrl_c_at_the_restore_prompt_ends_it_and_writes_nothing_however_late_it_reads(
        local: LocalBackup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        started: list[subprocess.Popen[str]]) -> None:
    """Ctrl-C at the prompt, at a terminal, before it gets to reading the answer: it hung
    (under load) in the read that followed, the Ctrl-C taken but never acted on. Here the
    gap is made wide: the prompt's write waits on a full stderr when the Ctrl-C comes."""
    monkeypatch.setenv("WECHAT_SECRET", SECRET)
    local.seed("orders", make_docs(20))
    backup = backup_now(local.context(local.config()))
    path = _config_file(local, tmp_path)
    terminal, tty = pty.openpty()  # stdin and stdout a terminal, as a user's
    reader, writer = os.pipe()
    fcntl.fcntl(writer, fcntl.F_SETPIPE_SZ, 4096)
    filler = b"#" * fcntl.fcntl(writer, fcntl.F_GETPIPE_SZ)
    os.write(writer, filler)  # full: a write to stderr waits until it is read
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "shared.entrypoints.cli", "--config", str(path), "restore",
             backup.run_id, "shop", "orders", "--into", "orders", "--mode", "upsert"],
            cwd=ROOT, stdin=tty, stdout=tty, stderr=writer,
            env={**os.environ, "WECHAT_SECRET": SECRET, "COLUMNS": "200"})
        started.append(process)  # type: ignore[arg-type]
        os.close(writer)
        shown = b""
        deadline = time.monotonic() + 60
        while b"restore shop/orders" not in shown or not _asleep(process.pid):
            assert process.poll() is None and time.monotonic() < deadline, shown
            if select.select([terminal], [], [], 0.2)[0]:
                shown += os.read(terminal, 4096)
        time.sleep(0.5)  # at the prompt, or writing it
        process.send_signal(signal.SIGINT)
        err = _read_to_end(reader, 30)
        process.wait(timeout=5)
    finally:
        os.close(terminal)
        os.close(tty)
        os.close(reader)

    said = err[len(filler):].decode()
    assert process.returncode == INTERRUPTED and "Traceback" not in said, (process.returncode, said)
    assert said.strip().endswith("baas-backup restore: interrupted before the restore was under "
                                 "way, and nothing is written until it is: `baas-backup status` "
                                 "shows whether it was started, and `baas-backup poll` carries "
                                 "an open one on"), said
    assert local.context(local.config()).state.list_runs(10) == [backup]  # no restore started


def test_output_into_a_reader_that_stops_early_ends_quietly(
        started: list[subprocess.Popen[str]]) -> None:
    """`baas-backup schema | head -1`: the reader leaving is no error of ours to show
    (it was a BrokenPipeError traceback)."""
    reader, writer = os.pipe()
    fcntl.fcntl(writer, fcntl.F_SETPIPE_SZ, 4096)  # smaller than the schema: it must wait
    process = subprocess.Popen([sys.executable, "-m", "shared.entrypoints.cli", "schema"],
                               cwd=ROOT, stdout=writer, stderr=subprocess.PIPE, text=True)
    started.append(process)
    os.close(writer)
    with os.fdopen(reader, "rb") as head:
        assert head.read(1) == b"{"  # one byte, then the reader is gone, as `head -c 1`

    _, err = process.communicate(timeout=60)

    assert process.returncode == 1 and "Traceback" not in err and "Error" not in err, err
