"""Two restores into one collection never both start: each claims its target
(platform source, target collection) by compare-and-set before it is recorded, on SQLite
and on the COS state store (moto), with two starts really racing in two threads. An
ended restore frees its target; one whose process died before recording frees it after
RECORDING_WITHIN."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from devkit.sample_data import make_docs
from shared.config import Config
from shared.domain.jobs import Job, Run, RunStatus
from shared.entrypoints.cli import main as cli
from shared.service.context import Context
from shared.service.holds import RECORDING_WITHIN
from shared.service.restore.plan import Plan, RestoreRefused, plan_restore, start_restore
from tests.support.backup import LocalBackup, backup_now, drive

TARGET = "orders_copy"


@pytest.fixture(params=["sqlite", "cos"])
def racing(request: pytest.FixtureRequest, local: LocalBackup) -> LocalBackup:
    return local if request.param == "sqlite" else dataclasses.replace(local, state_url="cos://")


def backed_up(local: LocalBackup) -> tuple[Config, Run]:
    local.seed("orders", make_docs(12))
    config = local.config(local.wechat_source(collections=["orders"]))
    return config, backup_now(local.context(config), key="night")


def planned(ctx: Context, run: Run, key: str) -> Plan:
    return plan_restore(ctx, run.run_id, "shop", "orders", into=TARGET, idempotency_key=key)


def restores(ctx: Context) -> list[Run]:
    return [r for r in ctx.state.list_runs() if r.operation == "restore"]


def test_two_restores_started_at_once_into_one_target_start_once(
        racing: LocalBackup, monkeypatch: pytest.MonkeyPatch) -> None:
    """Both starts read "nobody writes into it" before either records its restore (a
    barrier holds each right after that read): exactly one starts, the other gets 409
    naming the restore that won and the target."""
    config, backup = backed_up(racing)
    starters = [racing.context(config), racing.context(config)]  # two functions
    plans = [planned(ctx, backup, f"key-{i}") for i, ctx in enumerate(starters)]
    both_read = threading.Barrier(2, timeout=20)
    for ctx in starters:
        monkeypatch.setattr(ctx.state, "open_runs", _then_wait(ctx.state.open_runs, both_read))
    started: list[Run] = []
    refused: list[RestoreRefused] = []
    errors: list[BaseException] = []

    def start(i: int) -> None:
        try:
            started.append(start_restore(starters[i], plans[i], idempotency_key=f"key-{i}",
                                         trigger="test")[0])
        except RestoreRefused as exc:
            refused.append(exc)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert len(started) == 1 and len(refused) == 1, (started, refused)
    assert refused[0].status == 409 and refused[0].field == "into"
    assert started[0].run_id in str(refused[0]) and f"shop/{TARGET}" in str(refused[0])
    assert [r.run_id for r in restores(starters[0])] == [started[0].run_id]


def _then_wait(read: Callable[[], list[Run]],
               barrier: threading.Barrier) -> Callable[[], list[Run]]:
    def wrapped() -> list[Run]:
        found = read()
        barrier.wait()
        return found
    return wrapped


def test_a_restore_that_ended_frees_its_target(racing: LocalBackup) -> None:
    """Driven to its end, a restore leaves the target to the next one at once, and its
    claim is gone from the target's record."""
    config, backup = backed_up(racing)
    ctx = racing.context(config)
    first, _ = start_restore(ctx, planned(ctx, backup, "first"), idempotency_key="first",
                             trigger="test")
    with pytest.raises(RestoreRefused, match=first.run_id):
        start_restore(ctx, planned_any(ctx, backup), idempotency_key="second", trigger="test")
    assert drive(ctx, first).status is RunStatus.SUCCEEDED
    # Closing released its claim: the target's record keeps nothing that no longer holds.
    assert [r.holds for r in ctx.state.list_runs() if r.operation == "restore-target"] == [[]]

    second, created = start_restore(ctx, planned_any(ctx, backup), idempotency_key="second",
                                    trigger="test")
    assert created and second.run_id != first.run_id


def planned_any(ctx: Context, run: Run) -> Plan:
    """Into TARGET whether or not it holds records (upsert)."""
    return plan_restore(ctx, run.run_id, "shop", "orders", into=TARGET, mode="upsert",
                        idempotency_key="second")


class Killed(BaseException):
    """The process died: nothing of the start runs after it."""


def test_a_start_that_died_before_recording_frees_its_target_after_a_while(
        racing: LocalBackup, monkeypatch: pytest.MonkeyPatch) -> None:
    """The function died between claiming the target and recording its restore: the
    target is refused to others while that claim may still be recorded, then free."""
    config, backup = backed_up(racing)
    dying, other = racing.context(config), racing.context(config)

    plan = planned(dying, backup, "dying")
    real_create = dying.state.create_run

    def dies(run: Run, jobs: list[Job]) -> tuple[Run, bool]:
        if run.operation == "restore":  # after its claims, before its record
            raise Killed()
        return real_create(run, jobs)

    monkeypatch.setattr(dying.state, "create_run", dies)
    with pytest.raises(Killed):
        start_restore(dying, plan, idempotency_key="dying", trigger="test")
    with pytest.raises(RestoreRefused, match=TARGET) as refused:
        start_restore(other, planned(other, backup, "other"), idempotency_key="other",
                      trigger="test")
    assert refused.value.status == 409

    later = other.clock() + RECORDING_WITHIN
    other.clock = lambda: later
    restore, created = start_restore(other, planned(other, backup, "other"),
                                     idempotency_key="other", trigger="test")
    assert created and [r.run_id for r in restores(other)] == [restore.run_id]


def test_status_lists_restores_not_their_targets_records(
        local: LocalBackup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """`baas-backup status` shows runs and restores; a target's claim record is neither."""
    config, backup = backed_up(local)
    ctx = local.context(config)
    restore, _ = start_restore(ctx, planned(ctx, backup, "first"), idempotency_key="first",
                               trigger="test")
    path = local.config_file(config, [local.wechat_source(collections=["orders"])],
                             tmp_path / "config.yaml", monkeypatch)
    monkeypatch.setenv("COLUMNS", "300")  # rich wraps the table to the terminal otherwise

    assert cli(["--config", str(path), "status"]) == 0
    out = capsys.readouterr().out
    assert restore.run_id in out and backup.run_id in out
    assert "restore-target" not in out


def test_a_cli_restore_whose_target_was_taken_while_it_asked_is_refused_in_one_line(
        local: LocalBackup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """`restore` plans, shows the plan and asks for the target's name; meanwhile a restore
    from the status page starts into the same target. The CLI's start is refused: README
    (Command line) words that as one line and exit 2; it was a Python traceback."""
    import shared.service.restore.plan as plan_module

    config, backup = backed_up(local)
    path = local.config_file(config, [local.wechat_source(collections=["orders"])],
                             tmp_path / "config.yaml", monkeypatch)
    real_plan = plan_module.plan_restore
    page = local.context(config)
    from_the_page: list[Run] = []

    def planned_then_the_page_starts(ctx: Context, *args: object, **kwargs: object) -> Plan:
        plan = real_plan(ctx, *args, **kwargs)  # type: ignore[arg-type]
        from_the_page.append(start_restore(page, planned(page, backup, "page"),
                                           idempotency_key="page", trigger="http")[0])
        return plan

    monkeypatch.setattr(plan_module, "plan_restore", planned_then_the_page_starts)

    code = cli(["--config", str(path), "restore", backup.run_id, "shop", "orders",
                "--into", TARGET])

    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.startswith("baas-backup restore: ") and len(err.splitlines()) == 1, err
    assert from_the_page[0].run_id in err and f"shop/{TARGET}" in err, err
    assert [r.run_id for r in restores(page)] == [from_the_page[0].run_id]
