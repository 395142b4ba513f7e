"""The CLI on one machine: a killed `run` does not leave its run open, and `status` says
what each open run waits for."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
from datetime import timedelta
from pathlib import Path

import pytest
import yaml

from devkit.sample_data import make_docs
from shared.domain.jobs import JobStatus, RunStatus
from shared.entrypoints.cli import main as cli
from shared.service.context import Context
from shared.service.poll import poll
from shared.service.start import start_run
from tests.support.backup import ENV_ID, FAST_TIMING, SECRET, LocalBackup, backup_now


class Ignore:
    def dispatch(self, job_id: str) -> None:
        """Nobody copies: the run's process is about to be 'killed'."""


def _config_file(local: LocalBackup, tmp_path: Path) -> Path:
    path = tmp_path / "backup.yaml"
    path.write_text(yaml.safe_dump({
        "destination": local.destination.model_dump(mode="json", exclude={"secret_id", "secret_key"}),
        "state": {"url": local.state_url},
        "timing": FAST_TIMING,
        "sources": [local.wechat_source()],
    }), encoding="utf-8")
    return path


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _killed_run(local: LocalBackup, ctx: Context) -> str:
    """A run whose only job is being copied by a local process that was killed."""
    run, _ = start_run(ctx, idempotency_key="killed", trigger="cli")
    for _ in range(200):
        poll(ctx)
        (job,) = ctx.state.list_jobs(run.run_id)
        if job.status is JobStatus.READY:
            break
    assert job.status is JobStatus.READY
    later = ctx.clock() + timedelta(minutes=16)
    held = ctx.state.save_job(job.moved_to(
        JobStatus.COPYING, lease_owner=f"{ctx.worker.split(':')[0]}:{_dead_pid()}:abc123",
        lease_until=later, next_check_at=later))
    assert held is not None
    return run.run_id


def test_run_after_a_killed_run_finishes_the_killed_one_too(
        local: LocalBackup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WECHAT_SECRET", SECRET)
    local.seed("orders", make_docs(20))
    path = _config_file(local, tmp_path)
    ctx = local.context(local.config(), dispatcher=Ignore())
    killed = _killed_run(local, ctx)

    assert cli(["--config", str(path), "run", "--tick", "0.05"]) == 0

    runs = {r.run_id: r for r in ctx.state.list_runs(10)}
    assert len(runs) == 2 and all(r.status is RunStatus.SUCCEEDED for r in runs.values())
    assert ctx.state.open_runs() == [] and killed in runs


def test_status_says_what_each_open_run_waits_for_and_poll_moves_it(
        local: LocalBackup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("WECHAT_SECRET", SECRET)
    local.seed("orders", make_docs(20))
    path = _config_file(local, tmp_path)
    ctx = local.context(local.config(), dispatcher=Ignore())
    killed = _killed_run(local, ctx)

    assert cli(["--config", str(path), "status"]) == 0
    out = capsys.readouterr().out
    assert f"run {killed} is open; it waits for:" in out
    assert "shop/orders copying: the copy by" in out and "its lease runs until" in out

    for _ in range(50):
        cli(["--config", str(path), "poll"])
        if not ctx.state.open_runs():
            break
    assert ctx.state.open_runs() == []
    assert "taking it back" in capsys.readouterr().out


@pytest.mark.parametrize("command", [["status"], ["poll"], ["run"], ["verify"]])
def test_a_state_backend_that_does_not_answer_is_one_clear_line_not_a_traceback(
        local: LocalBackup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str], command: list[str]) -> None:
    with socket.socket() as closed:  # a port nothing listens on: the database is down
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    password = "state-db-password-7c1f"
    monkeypatch.setenv("WECHAT_SECRET", SECRET)
    monkeypatch.setenv("STATE_PASSWORD", password)
    path = _config_file(local, tmp_path)
    document = yaml.safe_load(path.read_text(encoding="utf-8"))
    document["state"] = {"url": f"mysql+pymysql://backup:${{STATE_PASSWORD}}@127.0.0.1:{port}/b"}
    path.write_text(yaml.safe_dump(document), encoding="utf-8")

    code = cli(["--config", str(path), *command])

    captured = capsys.readouterr()
    assert code == 1
    assert "Traceback" not in captured.err and password not in captured.err + captured.out
    assert "state" in captured.err and "state.url" in captured.err, captured.err
    assert "Can't connect to MySQL server" in captured.err  # the driver's own reason


@pytest.mark.parametrize("given", [["run", "--tick", "-1"], ["run", "--tick", "nan"],
                                   ["status", "--limit", "0"], ["status", "--limit", "-3"],
                                   ["serve", "--port", "65536"], ["serve", "--port", "-1"],
                                   # str.isdigit takes these; int() does not
                                   ["status", "--limit", "\u00b2"], ["serve", "--port", "\u00b2"],
                                   # finite, but past what time.sleep / Event.wait take
                                   ["run", "--tick", "1e10"],
                                   # past a signed 64-bit LIMIT (SQLite, MySQL)
                                   ["status", "--limit", str(2 ** 63)],
                                   # (a host that fails fast, should it get as far as serving)
                                   ["serve", "--poll-seconds", "1e10", "--host", "nosuch.invalid"]])
def test_a_bad_number_is_refused_before_anything_starts(
        local: LocalBackup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str], given: list[str]) -> None:
    monkeypatch.setenv("WECHAT_SECRET", SECRET)
    local.seed("orders", make_docs(3))
    path = _config_file(local, tmp_path)

    with pytest.raises(SystemExit) as exited:
        cli(["--config", str(path), *given])

    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert given[1] in err and "must be" in err, err  # names the option and what it takes
    assert local.context(local.config()).state.list_runs(10) == []  # no run was started


@pytest.mark.parametrize(("wrong_bucket", "endpoint", "expected"), [
    # the first deploy's commonest slip: a bucket name or region that does not exist
    ("nosuch-1250000000", None, "NoSuchBucket: no such bucket in that region: check "
                                "destination.bucket (name-APPID"),
    # nothing listens there: the write that failed is named, not the cleanup after it
    (None, "closed", "COS create-only upload of"),
])
def test_a_cos_state_that_cannot_be_reached_is_one_line_saying_what_to_check(
        local: LocalBackup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str], wrong_bucket: str | None, endpoint: str | None,
        expected: str) -> None:
    monkeypatch.setenv("WECHAT_SECRET", SECRET)
    path = _config_file(local, tmp_path)
    document = yaml.safe_load(path.read_text(encoding="utf-8"))
    document["state"] = {"url": "cos://"}
    if wrong_bucket:
        document["destination"]["bucket"] = wrong_bucket
    if endpoint:
        with socket.socket() as closed:  # a port nothing listens on
            closed.bind(("127.0.0.1", 0))
            document["destination"]["endpoint"] = f"http://127.0.0.1:{closed.getsockname()[1]}"
    path.write_text(yaml.safe_dump(document), encoding="utf-8")

    code = cli(["--config", str(path), "status"])

    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith("baas-backup status: ") and expected in err, err
    assert "check destination." in err, err  # what to check, not only what failed


UNKNOWN_RUN = "20200101T000000000Z-00000000"


@pytest.mark.parametrize("given", [["status", UNKNOWN_RUN], ["verify", UNKNOWN_RUN],
                                   ["ack", UNKNOWN_RUN, "shop", "orders"],
                                   ["restore", UNKNOWN_RUN, "shop", "orders"]])
def test_an_unknown_run_is_one_line_naming_the_command_and_exit_2(
        local: LocalBackup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str], given: list[str]) -> None:
    """README "Command line": a one-line error reads `baas-backup <command>: ...`; a run id
    that names no run is a wrong argument, as a bad number is: exit 2, whatever the command."""
    monkeypatch.setenv("WECHAT_SECRET", SECRET)
    path = _config_file(local, tmp_path)

    code = cli(["--config", str(path), *given])

    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, (code, err)
    assert err.startswith(f"baas-backup {given[0]}: ") and UNKNOWN_RUN in err, err
    assert "baas-backup status" in err, err  # where to find the runs there are


@pytest.mark.parametrize(("host", "why"), [("127.0.0.1", "in use"), ("nosuch.invalid", "not known"),
                                             ("10.255.255.1", "assign")])
def test_serve_on_a_port_it_cannot_have_is_one_line_and_exit_2_with_no_poller_left(
        local: LocalBackup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str], host: str, why: str) -> None:
    """README "Command line": a bad `--port` exits 2 before anything is started; a port
    another process holds (or a host that does not resolve) is as bad as 65536."""
    monkeypatch.setenv("WECHAT_SECRET", SECRET)
    path = _config_file(local, tmp_path)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])

        code = cli(["--config", str(path), "serve", "--host", host, "--port", port,
                    "--poll-seconds", "0.05"])

    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, (code, err)
    assert err.startswith("baas-backup serve: ") and f"{host}:{port}" in err and why in err, err
    assert "--port" in err, err  # what to change
    assert not [t for t in threading.enumerate() if t.name == "local-poller"]  # nothing started


@pytest.mark.parametrize("command", [["validate"], ["run"], ["doctor"]])
@pytest.mark.parametrize(("given", "fix"), [
    ("a folder", "the path of the YAML file"),
    # Windows editors on a Chinese system save GBK unless told otherwise
    ("gbk", "save it as UTF-8"),
])
def test_a_config_that_is_not_a_utf8_file_is_named_with_the_fix_not_a_traceback(
        local: LocalBackup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str], command: list[str], given: str, fix: str) -> None:
    monkeypatch.setenv("WECHAT_SECRET", SECRET)
    path = _config_file(local, tmp_path)
    if given == "a folder":
        path = tmp_path
    else:
        text = path.read_text(encoding="utf-8").replace("shop", "商城")
        path.write_bytes(text.encode("gbk"))

    code = cli(["--config", str(path), *command])

    out = capsys.readouterr()
    said = out.err if command[0] != "doctor" else out.out
    assert code == (1 if command[0] == "doctor" else 2), (code, out)
    assert "Traceback" not in out.err + out.out and str(path) in said and fix in said, said


def test_restoring_a_backup_of_a_source_no_longer_configured_names_it_not_a_traceback(
        local: LocalBackup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """A source renamed or dropped from the config since its backup: the restore cannot
    reach its platform, and says so (README "Command line": one line, exit 2)."""
    monkeypatch.setenv("WECHAT_SECRET", SECRET)
    local.seed("orders", make_docs(5))
    run = backup_now(local.context(local.config()))
    assert run.status is RunStatus.SUCCEEDED
    path = _config_file(local, tmp_path)
    path.write_text(path.read_text(encoding="utf-8").replace("name: shop", "name: shop-renamed"),
                    encoding="utf-8")

    code = cli(["--config", str(path), "restore", run.run_id, "shop", "orders"])

    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, (code, err)
    assert err.startswith("baas-backup restore: ") and "'shop'" in err, err
    assert "shop-renamed" in err and "sources" in err, err  # what is configured, where to fix


def test_status_of_a_run_that_backed_up_nothing_shows_the_run_and_why(
        local: LocalBackup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """A run whose sources listed no collection has no jobs, but it is a run (failed, with
    the reason on it): `status RUN_ID` must not answer that it does not exist."""
    monkeypatch.setenv("WECHAT_SECRET", SECRET)
    path = _config_file(local, tmp_path)
    document = yaml.safe_load(path.read_text(encoding="utf-8"))
    document["sources"][0]["collections"] = "all"  # and the environment has none
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    assert cli(["--config", str(path), "run", "--tick", "0.05"]) == 1
    (run,) = local.context(local.config()).state.list_runs(10)
    assert run.status is RunStatus.FAILED
    capsys.readouterr()

    code = cli(["--config", str(path), "status", run.run_id])

    out = capsys.readouterr()
    assert code == 0 and out.err == "", (code, out.err)
    assert run.run_id in out.out and "failed" in out.out, out.out
    assert "shop: nothing backed up: " in out.out and "listed no collection" in out.out, out.out


def test_a_token_call_that_fails_says_how_not_redacted(
        local: LocalBackup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """The path `/cgi-bin/stable_token` is no credential: what follows it in an error is the
    reason (`HTTP 502`, the transport error's kind), the one thing a user can act on."""
    monkeypatch.setenv("WECHAT_SECRET", SECRET)
    local.seed("orders", make_docs(3))
    local.emulator.lose_answers("/cgi-bin/stable_token", times=1000)
    path = _config_file(local, tmp_path)

    assert cli(["--config", str(path), "run", "--tick", "0.05"]) == 1

    out = capsys.readouterr().out
    assert "stable_token: [redacted]" not in out, out
    assert "WeChat /cgi-bin/stable_token: RemoteProtocolError" in out, out  # the connection dropped


@pytest.mark.parametrize("said", ["collection [orders] is locked by a migration",
                                  "quota exceeded [/tcb/quota]"])
def test_a_platform_message_with_brackets_is_printed_as_written(
        local: LocalBackup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str], said: str) -> None:
    """The platform's own words reach the tables of `run` and `status RUN_ID`: text, not
    rich markup to interpret (which dropped `[orders]`, and crashed on `[/tcb/quota]`)."""
    monkeypatch.setenv("WECHAT_SECRET", SECRET)
    local.seed("orders", make_docs(3))
    local.emulator.fail_export(ENV_ID, "orders", said)
    path = _config_file(local, tmp_path)

    assert cli(["--config", str(path), "run", "--tick", "0.05"]) == 1
    (run,) = local.context(local.config()).state.list_runs(10)
    assert cli(["--config", str(path), "status", run.run_id]) == 0

    out = capsys.readouterr().out
    assert out.count(said) >= 3, out  # the progress line, and each table


def test_the_run_summary_line_shows_a_chinese_collection_name_as_written(
        local: LocalBackup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """The last line of `run` names the suspect collections: readable, not \\u escapes."""
    monkeypatch.setenv("WECHAT_SECRET", SECRET)
    local.seed("商品", make_docs(20))
    path = _config_file(local, tmp_path)
    document = yaml.safe_load(path.read_text(encoding="utf-8"))
    document["sources"][0]["collections"] = ["商品"]
    path.write_text(yaml.safe_dump(document, allow_unicode=True), encoding="utf-8")
    assert cli(["--config", str(path), "run", "--tick", "0.05"]) == 0
    local.seed("商品", make_docs(1))  # a sharp drop: the next backup is suspect
    capsys.readouterr()

    cli(["--config", str(path), "run", "--tick", "0.05"])

    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("run ") and '"suspect"' in last, last
    assert '"collection": "商品"' in last, last


@pytest.mark.parametrize("given", [["validate", "--config", "{path}"],
                                   ["--verbose", "validate", "--config", "{path}"],
                                   ["validate", "--config", "{path}", "--verbose"],
                                   ["--config", "{path}", "validate", "--verbose"],
                                   # after, it wins: as a later option does before the command
                                   ["--config", "nosuch.yaml", "validate", "--config", "{path}"]])
def test_the_global_options_may_follow_the_command(
        local: LocalBackup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str], given: list[str]) -> None:
    """`baas-backup validate --config x.yaml` is what people type after `validate --help`;
    it must read x.yaml, not refuse the option (nor fall back to backup.yaml)."""
    monkeypatch.setenv("WECHAT_SECRET", SECRET)
    path = _config_file(local, tmp_path)

    code = cli([str(path) if word == "{path}" else word for word in given])

    out = capsys.readouterr()
    assert code == 0 and out.out.startswith("config OK: 1 source(s)"), (code, out)


def test_verbose_after_the_command_turns_the_json_logs_on(
        local: LocalBackup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("WECHAT_SECRET", SECRET)
    local.seed("orders", make_docs(3))
    path = _config_file(local, tmp_path)

    assert cli(["run", "--config", str(path), "--tick", "0.05", "--verbose"]) == 0

    err = capsys.readouterr().err
    assert '"level": "INFO"' in err or '"level":"INFO"' in err, err[-2000:]


@pytest.mark.parametrize("host", ["ü" * 64, "例子." * 2 + "ü" * 70])
def test_serve_on_a_host_name_no_system_can_encode_is_refused_before_anything_starts(
        local: LocalBackup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str], host: str) -> None:
    """A non-ASCII name goes to bind() IDNA-encoded; a label past 63 characters cannot be,
    and bind() raised TypeError ("encoding of hostname failed") as a traceback."""
    monkeypatch.setenv("WECHAT_SECRET", SECRET)
    path = _config_file(local, tmp_path)

    with pytest.raises(SystemExit) as exited:
        cli(["serve", "--config", str(path), "--host", host, "--port", "0"])

    err = capsys.readouterr().err
    assert exited.value.code == 2 and "Traceback" not in err, err
    assert "argument --host: must be a host name or IP address" in err and host in err, err
    assert not [t for t in threading.enumerate() if t.name == "local-poller"]


@pytest.mark.parametrize(("into", "shown", "rule"), [
    ("a/b", "'a/b'", "no /"),
    ("", "''", "1 to 255 characters"),
    ("a\x01b", "'a\\x01b'", "no control characters"),
    ("x" * 256, "'xxxxxxxx", "1 to 255 characters"),
])
def test_restore_into_what_cannot_be_a_collection_name_is_refused_before_anything_is_written(
        local: LocalBackup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str], into: str, shown: str, rule: str) -> None:
    """`--into a/b` was accepted and the restore started; a WeChat collection name has no
    documented rule, but some strings cannot be a name at all."""
    monkeypatch.setenv("WECHAT_SECRET", SECRET)
    local.seed("orders", make_docs(5))
    backup = backup_now(local.context(local.config()))
    path = _config_file(local, tmp_path)
    capsys.readouterr()

    code = cli(["--config", str(path), "restore", backup.run_id, "shop", "orders",
                "--into", into, "--tick", "0.05"])

    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, (code, err)
    assert err.startswith(f"baas-backup restore: --into {shown}") and rule in err, err
    assert local.context(local.config()).state.list_runs(10) == [backup]  # no restore started
    assert not local.emulator.has_collection(ENV_ID, into)
