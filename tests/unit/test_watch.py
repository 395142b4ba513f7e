"""The staleness alarm under a moving clock: once per episode, one recovery."""

from __future__ import annotations

import dataclasses
import json
import threading
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from shared.adapters.state import open_store
from shared.adapters.webhooks import WebhookNotifier
from shared.config import Notify
from shared.domain.errors import StateError, StorageError
from shared.domain.jobs import JobStatus, Run, RunStatus
from shared.entrypoints.http_api import TOKEN_ENV, Request, handle
from shared.ports import StateStore
from shared.service.close import RunsNotClosed
from shared.service.poll import poll
from shared.service.watch import ALARM_KEY, RUNS_LOOKED_AT, undelivered_alarm, watch
from tests.fakes import MemoryState
from tests.support.api import TOKEN
from tests.support.webhook import WebhookReceiver
from tests.unit.support import ScriptedExport, Unit, seed_run, unit


def _run(u: Unit, name: str, status: RunStatus) -> Run:
    run = Run(run_id=f"{u.clock():%Y%m%dT%H%M%S}000Z-{name}", idempotency_key=name,
              trigger="test", sources=["shop"], created_at=u.clock())
    u.state.create_run(run, [])
    if status is not RunStatus.RUNNING:
        saved = u.state.save_run(run.model_copy(update={"status": status,
                                                        "finished_at": u.clock()}))
        assert saved is not None
        return saved
    return run


def test_no_success_for_too_long_alerts_once_and_recovers_once() -> None:
    u = unit(ScriptedExport({"orders": []}))
    _run(u, "good", RunStatus.SUCCEEDED)
    for _ in range(3):
        u.clock.advance(3600 * 10)
        poll(u.ctx)
    assert len(u.notifier.alerts) == 1 and "no run has succeeded for 26 hours" in u.notifier.alerts[0]
    _run(u, "failed", RunStatus.FAILED)
    u.clock.advance(3600)
    poll(u.ctx)
    assert len(u.notifier.alerts) == 1  # still the same episode
    _run(u, "good-again", RunStatus.SUCCEEDED)
    poll(u.ctx)
    poll(u.ctx)
    assert len(u.notifier.alerts) == 2 and "recovered" in u.notifier.alerts[1]
    u.clock.advance(27 * 3600)
    poll(u.ctx)
    assert len(u.notifier.alerts) == 3  # a new episode


def _restores(u: Unit, count: int) -> None:
    """`count` closed restores, one run each (a whole environment restored after an
    accident): together more runs than the newest page the tick lists."""
    for index in range(count):
        name = f"restore-{index:03d}"
        run = Run(run_id=f"{u.clock():%Y%m%dT%H%M%S}000Z-{name}", operation="restore",
                  idempotency_key=name, trigger="http", sources=["shop"], created_at=u.clock(),
                  status=RunStatus.SUCCEEDED, finished_at=u.clock())
        u.state.create_run(run, [])


def test_many_restores_do_not_hide_the_last_successful_backup() -> None:
    """A success two hours ago, then more restores than the tick's page of newest runs:
    backups are not stale, so no alarm (judging by the restores alone, or by when the
    poller first looked, would raise a false one)."""
    u = unit(ScriptedExport({"orders": []}))
    poll(u.ctx)  # the poller starts watching before the first run
    u.clock.advance(30 * 3600)
    _run(u, "good", RunStatus.SUCCEEDED)
    u.clock.advance(3600)
    _restores(u, RUNS_LOOKED_AT + 10)
    u.clock.advance(3600)
    poll(u.ctx)
    assert u.notifier.alerts == []


def test_many_restores_do_not_hide_that_backups_stopped() -> None:
    """The last success is 28 hours old behind more restores than the tick's page: the
    alarm names it, as it would without the restores."""
    u = unit(ScriptedExport({"orders": []}))
    _run(u, "good", RunStatus.SUCCEEDED)
    u.clock.advance(27 * 3600)
    _restores(u, RUNS_LOOKED_AT + 10)
    u.clock.advance(3600)
    poll(u.ctx)
    assert len(u.notifier.alerts) == 1
    assert "no run has succeeded for 26 hours" in u.notifier.alerts[0]
    assert "-good)" in u.notifier.alerts[0]


def test_a_deployment_that_never_runs_alerts_after_the_limit() -> None:
    u = unit(ScriptedExport({"orders": []}))
    poll(u.ctx)  # the poller starts watching
    u.clock.advance(25 * 3600)
    poll(u.ctx)
    assert u.notifier.alerts == []
    u.clock.advance(2 * 3600)
    poll(u.ctx)
    assert len(u.notifier.alerts) == 1 and "in the last 26 hours" in u.notifier.alerts[0]


def test_a_run_open_for_too_long_alerts() -> None:
    u = unit(ScriptedExport({"orders": []}))
    seed_run(u, JobStatus.COPYING, lease_owner="slow", lease_until=u.clock() + timedelta(days=2))
    u.clock.advance(26 * 3600 + 1)
    poll(u.ctx)
    assert len(u.notifier.alerts) == 1 and "still running" in u.notifier.alerts[0]


def test_a_run_stuck_behind_a_page_of_newer_runs_is_named() -> None:
    """A backup stuck for 27 hours, then a success and more restores than the tick's page
    of newest runs: the stuck run is still found (by the open runs), and named."""
    u = unit(ScriptedExport({"orders": []}))
    stuck = _run(u, "stuck", RunStatus.RUNNING)
    u.clock.advance(27 * 3600)
    _run(u, "good", RunStatus.SUCCEEDED)
    _restores(u, RUNS_LOOKED_AT + 10)
    assert watch(u.ctx) == "raised"
    assert u.notifier.alerts[0].startswith(f"⏰ baas-backup: run {stuck.run_id} is still running")


def _stuck_restore(u: Unit) -> Run:
    """A restore left open for 27 hours (no finisher picked it up)."""
    run = Run(run_id=f"{u.clock():%Y%m%dT%H%M%S}000Z-stuck-restore", operation="restore",
              idempotency_key="stuck-restore", trigger="http", sources=["shop"],
              created_at=u.clock())
    u.state.create_run(run, [])
    _run(u, "good", RunStatus.SUCCEEDED)  # backups themselves are fine
    u.clock.advance(27 * 3600)
    _run(u, "good-again", RunStatus.SUCCEEDED)
    assert watch(u.ctx) == "raised" and "still running" in u.notifier.alerts[0]
    return run


def test_recovery_from_a_stuck_restore_says_how_the_restore_ended() -> None:
    """The episode ended because the restore closed, not because "a run succeeded again"."""
    u = unit(ScriptedExport({"orders": []}))
    restore = _stuck_restore(u)
    closed = u.state.save_run(restore.model_copy(update={"status": RunStatus.FAILED,
                                                         "finished_at": u.clock()}))
    assert closed is not None
    u.clock.advance(60)
    assert watch(u.ctx) == "recovered"
    recovered = u.notifier.alerts[1]
    assert f"restore {restore.run_id} ended: failed" in recovered
    assert "succeeded again" not in recovered


def test_recovery_from_a_stuck_restore_survives_a_state_store_blip(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Reading how the restore ended fails once: the episode's end is told at the next
    tick, not lost with the raised alarm."""
    u = unit(ScriptedExport({"orders": []}))
    restore = _stuck_restore(u)
    closed = u.state.save_run(restore.model_copy(update={"status": RunStatus.SUCCEEDED,
                                                         "finished_at": u.clock()}))
    assert closed is not None
    get_run = u.state.get_run

    def unreachable(run_id: str) -> Run | None:
        raise StateError("state store unreachable: ConnectTimeout")

    monkeypatch.setattr(u.state, "get_run", unreachable)
    with pytest.raises(StateError):
        watch(u.ctx)
    monkeypatch.setattr(u.state, "get_run", get_run)
    assert watch(u.ctx) == "recovered"
    assert f"restore {restore.run_id} ended: succeeded" in u.notifier.alerts[1]


def test_recovery_from_a_stuck_restore_that_was_deleted_says_so() -> None:
    u = unit(ScriptedExport({"orders": []}))
    restore = _stuck_restore(u)
    u.state.delete_run(restore.run_id)
    assert watch(u.ctx) == "recovered"
    assert f"restore {restore.run_id} is no longer recorded" in u.notifier.alerts[1]


def _two_stores(kind: str, tmp_path: Path) -> list[StateStore]:
    """One state as two poller invocations see it: the in-memory fake shared, or two
    connections to one SQLite file."""
    if kind == "memory":
        return [MemoryState()] * 2
    url = f"sqlite:///{tmp_path / 'state.sqlite3'}"
    return [open_store(url), open_store(url)]


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_two_ticks_racing_to_raise_the_alarm_send_it_once(
        kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two overlapping poller ticks both find backups stale and no alarm raised yet: the
    claim is a compare-and-set, so one sends the alarm and the other stays quiet."""
    u, stores = _backed_up_on_two_stores(kind, tmp_path)
    u.clock.advance(27 * 3600)
    assert _watched_at_once(u, stores, monkeypatch) == [None, "raised"]
    assert len(u.notifier.alerts) == 1 and "no run has succeeded" in u.notifier.alerts[0]


def _backed_up_on_two_stores(kind: str, tmp_path: Path) -> tuple[Unit, list[StateStore]]:
    """A unit whose state is `_two_stores`, with one good backup."""
    u = unit(ScriptedExport({"orders": []}))
    stores = _two_stores(kind, tmp_path)
    u = dataclasses.replace(u, ctx=dataclasses.replace(u.ctx, state=stores[0]))
    u.state = stores[0]  # type: ignore[assignment]
    _run(u, "good", RunStatus.SUCCEEDED)
    return u, stores


def _watched_at_once(u: Unit, stores: list[StateStore],
                     monkeypatch: pytest.MonkeyPatch) -> list[str | None]:
    """What watch() answered in two ticks run at once, one on each store, each reading the
    alarm before either acts on it; sorted, None first."""
    ticks = [dataclasses.replace(u.ctx, state=store) for store in stores]
    both_read = threading.Barrier(2, timeout=20)
    for tick in {id(t.state): t for t in ticks}.values():
        monkeypatch.setattr(tick.state, "cache_get",
                            _first_alarm_read_waits(tick.state.cache_get, both_read))
    results: list[str | None] = []
    threads = [threading.Thread(target=lambda t=tick: results.append(watch(t))) for tick in ticks]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    monkeypatch.undo()  # later reads wait no more
    return sorted(results, key=str)


def _first_alarm_read_waits(read: Callable[[str, datetime], str | None],
                            barrier: threading.Barrier) -> Callable[[str, datetime], str | None]:
    """Each tick's first read of the alarm waits for the other's: both have read "raised"
    before either acts on it. Later reads (a tick looking again) do not wait."""
    waited: set[int] = set()

    def wrapped(key: str, now: datetime) -> str | None:
        found = read(key, now)
        if key == ALARM_KEY and threading.get_ident() not in waited:
            waited.add(threading.get_ident())
            barrier.wait()
        return found
    return wrapped


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_two_ticks_racing_to_tell_the_recovery_send_it_once(
        kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two overlapping poller ticks both find the raised alarm's problem over: one sends
    "recovered", the other stays quiet."""
    u, stores = _backed_up_on_two_stores(kind, tmp_path)
    u.clock.advance(27 * 3600)
    assert watch(u.ctx) == "raised"
    _run(u, "good-again", RunStatus.SUCCEEDED)
    assert _watched_at_once(u, stores, monkeypatch) == [None, "recovered"]
    assert len(u.notifier.alerts) == 2 and "recovered" in u.notifier.alerts[1]
    u.clock.advance(60)
    assert watch(u.ctx) is None and len(u.notifier.alerts) == 2  # the episode is over


def _closed_now(u: Unit, run: Run, status: RunStatus) -> None:
    closed = u.state.save_run(run.model_copy(update={"status": status,
                                                     "finished_at": u.clock()}))
    assert closed is not None


def test_a_stuck_run_that_ends_while_backups_went_stale_says_so_once() -> None:
    """The alarm names a stuck run; it fails, and no backup succeeded meanwhile: the user
    is told the alarm now stands for stale backups (and how the run ended), once."""
    u = unit(ScriptedExport({"orders": []}))
    _run(u, "good", RunStatus.SUCCEEDED)
    u.clock.advance(3600)
    stuck = _run(u, "stuck", RunStatus.RUNNING)
    u.clock.advance(26 * 3600 + 1)
    assert watch(u.ctx) == "raised" and f"run {stuck.run_id} is still running" in u.notifier.alerts[0]
    _closed_now(u, stuck, RunStatus.FAILED)
    u.clock.advance(60)
    assert watch(u.ctx) == "changed"
    changed = u.notifier.alerts[1]
    assert changed.startswith("⏰ baas-backup: no run has succeeded for 26 hours")
    assert f"run {stuck.run_id} ended: failed" in changed and "recovered" not in changed
    for _ in range(3):
        u.clock.advance(60)
        assert watch(u.ctx) is None
    assert len(u.notifier.alerts) == 2
    _run(u, "good-again", RunStatus.SUCCEEDED)
    assert watch(u.ctx) == "recovered"
    assert "a run succeeded again (was: no run has succeeded" in u.notifier.alerts[2]


def test_backups_stale_then_a_run_stuck_says_so_once() -> None:
    """The reverse: backups went stale, then a run stays open too long; the user is told
    the new cause once, and the recovery says how that run ended."""
    u = unit(ScriptedExport({"orders": []}))
    _run(u, "good", RunStatus.SUCCEEDED)
    u.clock.advance(2 * 3600)
    stuck = _run(u, "stuck", RunStatus.RUNNING)
    u.clock.advance(25 * 3600)
    assert watch(u.ctx) == "raised" and "no run has succeeded" in u.notifier.alerts[0]
    u.clock.advance(3600 + 1)
    assert watch(u.ctx) == "changed"
    assert u.notifier.alerts[1].startswith(f"⏰ baas-backup: run {stuck.run_id} is still running")
    u.clock.advance(60)
    assert watch(u.ctx) is None and len(u.notifier.alerts) == 2
    _closed_now(u, stuck, RunStatus.SUCCEEDED)
    assert watch(u.ctx) == "recovered"
    assert f"run {stuck.run_id} ended: succeeded" in u.notifier.alerts[2]


def test_a_change_of_cause_no_webhook_took_is_sent_again_at_the_next_tick(
        monkeypatch: pytest.MonkeyPatch) -> None:
    u = unit(ScriptedExport({"orders": []}))
    _run(u, "good", RunStatus.SUCCEEDED)
    u.clock.advance(3600)
    stuck = _run(u, "stuck", RunStatus.RUNNING)
    u.clock.advance(26 * 3600 + 1)
    assert watch(u.ctx) == "raised"
    _closed_now(u, stuck, RunStatus.FAILED)
    monkeypatch.setattr(u.notifier, "alert", lambda text: False)  # every webhook refuses
    assert watch(u.ctx) is None
    assert undelivered_alarm(u.ctx) is not None
    assert "no run has succeeded" in str(undelivered_alarm(u.ctx))
    monkeypatch.undo()
    u.clock.advance(60)
    assert watch(u.ctx) == "changed" and f"run {stuck.run_id} ended: failed" in u.notifier.alerts[1]
    assert undelivered_alarm(u.ctx) is None
    u.clock.advance(60)
    assert watch(u.ctx) is None and len(u.notifier.alerts) == 2


def test_the_limit_is_configurable() -> None:
    u = unit(ScriptedExport({"orders": []}))
    u.ctx.config = u.ctx.config.model_copy(update={
        "alerts": u.ctx.config.alerts.model_copy(update={"stale_after_hours": 2})})
    _run(u, "good", RunStatus.SUCCEEDED)
    u.clock.advance(timedelta(hours=3).total_seconds())
    poll(u.ctx)
    assert len(u.notifier.alerts) == 1 and "2 hours" in u.notifier.alerts[0]


def test_a_run_that_cannot_close_still_raises_the_alarm() -> None:
    """The bucket became unwritable: the failed run's manifest cannot be written, so it
    never closes. Every tick still fails (SCF records the invocation error) but the
    alarm is raised once the run has been open too long."""
    u = unit(ScriptedExport({"orders": []}))
    [job] = seed_run(u, JobStatus.FAILED, error="COS upload failed: AccessDenied (HTTP 403)")

    def refuse(key: str, document: Any) -> None:
        raise StorageError(f"COS put of {key!r} failed: AccessDenied (HTTP 403)", key=key,
                           code="AccessDenied")

    u.objects.put_json = refuse  # type: ignore[method-assign]
    for _ in range(27):
        u.clock.advance(3600)
        with pytest.raises(RunsNotClosed, match="AccessDenied"):
            poll(u.ctx)
    assert u.notifier.sent == []
    assert len(u.notifier.alerts) == 1
    assert f"run {job.run_id} is still running" in u.notifier.alerts[0]


def test_a_sweep_that_fails_does_not_silence_the_alarm(monkeypatch: pytest.MonkeyPatch) -> None:
    u = unit(ScriptedExport({"orders": []}))
    _run(u, "good", RunStatus.SUCCEEDED)

    def sweep(ctx: object) -> int:
        raise StateError("state store unreachable: ConnectTimeout")

    monkeypatch.setattr("shared.service.poll.sweep_uploads", sweep)
    u.clock.advance(27 * 3600)
    with pytest.raises(StateError):
        poll(u.ctx)
    assert len(u.notifier.alerts) == 1 and "no run has succeeded" in u.notifier.alerts[0]


def _listing_fails(u: Unit, times: int) -> None:
    """The state store cannot list runs for the next `times` listings (a blip, or longer)."""
    list_runs = u.state.list_runs
    left = {"failures": times}

    def flaky(limit: int = RUNS_LOOKED_AT, before: str | None = None) -> list[Run]:
        if left["failures"] > 0:
            left["failures"] -= 1
            raise StateError("state store unreachable: ConnectTimeout")
        return list_runs(limit=limit, before=before)

    u.state.list_runs = flaky  # type: ignore[method-assign]


def test_a_runs_listing_that_fails_once_does_not_silence_the_alarm(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """The tick's one listing of the recent runs meets a blip of the state store: it is
    logged and collected like the sweep's failure (raised first), and the alarm still runs."""
    u = unit(ScriptedExport({"orders": []}))
    _run(u, "good", RunStatus.SUCCEEDED)

    def sweep(ctx: object) -> int:
        raise StorageError("COS list of uploads failed: AccessDenied (HTTP 403)")

    monkeypatch.setattr("shared.service.poll.sweep_uploads", sweep)
    u.clock.advance(27 * 3600)
    _listing_fails(u, 1)
    with pytest.raises(StorageError, match="AccessDenied"):  # the first failure of the tick
        poll(u.ctx)
    assert len(u.notifier.alerts) == 1 and "no run has succeeded" in u.notifier.alerts[0]
    assert any(r.levelname == "ERROR" and "could not list the recent runs" in r.getMessage()
               for r in caplog.records)


def test_a_runs_listing_that_keeps_failing_says_the_alarm_could_not_run(
        caplog: pytest.LogCaptureFixture) -> None:
    u = unit(ScriptedExport({"orders": []}))
    _run(u, "good", RunStatus.SUCCEEDED)
    u.clock.advance(27 * 3600)
    _listing_fails(u, 2)
    with pytest.raises(StateError, match="unreachable"):
        poll(u.ctx)
    assert u.notifier.alerts == []
    assert any(r.levelname == "ERROR" and "staleness alarm could not run" in r.getMessage()
               for r in caplog.records)


def _contents(webhook: WebhookReceiver, start: int = 0) -> list[str]:
    return [m["text"]["content"] for m in webhook.messages[start:]]


def test_an_alarm_no_webhook_took_is_sent_again_at_the_next_tick(webhook: WebhookReceiver) -> None:
    """The robot is down at the minute backups turn stale, and again at the minute they
    recover: each message is tried again until it is delivered, then once only."""
    u = unit(ScriptedExport({"orders": []}))
    notify = Notify.model_validate({"webhooks": [{"url": "${HOOK}", "format": "wecom"}]},
                                   context={"environ": {"HOOK": webhook.url}})
    u.ctx.notifier = WebhookNotifier(notify, retry_base_seconds=0)
    _run(u, "good", RunStatus.SUCCEEDED)

    u.clock.advance(27 * 3600)                       # backups have stopped
    webhook.answers = [(502, {"errmsg": "bad gateway"})] * 3
    poll(u.ctx)
    assert len(webhook.messages) == 3                # tried three times, refused
    for _ in range(5):                               # the robot is back
        u.clock.advance(60)
        poll(u.ctx)
    stale = _contents(webhook, 3)
    assert len(stale) == 1 and "no run has succeeded for 26 hours" in stale[0]

    _run(u, "good-again", RunStatus.SUCCEEDED)
    webhook.answers = [(200, {"errcode": 93000, "errmsg": "invalid webhook url"})]
    poll(u.ctx)
    assert len(webhook.messages) == 5                # the recovery refused for good: tried once
    for _ in range(5):                               # the URL is fixed
        u.clock.advance(60)
        poll(u.ctx)
    recovered = _contents(webhook, 5)
    assert len(recovered) == 1 and "recovered" in recovered[0]


def test_an_alarm_no_webhook_took_is_shown_by_the_api_until_one_takes_it(
        webhook: WebhookReceiver) -> None:
    """GET /collections (the status page's table) says the staleness alarm is still
    undelivered, so no one reads a quiet page as "all is well"."""
    u = unit(ScriptedExport({"orders": []}))
    notify = Notify.model_validate({"webhooks": [{"url": "${HOOK}", "format": "feishu"}]},
                                   context={"environ": {"HOOK": webhook.url}})
    u.ctx.notifier = WebhookNotifier(notify, retry_base_seconds=0)
    _run(u, "good", RunStatus.SUCCEEDED)
    u.clock.advance(27 * 3600)
    webhook.answers = [(200, {"code": 9499, "msg": "Bad Request", "data": {}})] * 3

    poll(u.ctx)
    unsent = _collections(u)["undelivered_alarm"]
    assert unsent is not None and "no run has succeeded for 26 hours" in unsent

    u.clock.advance(60)
    poll(u.ctx)  # the robot takes it
    assert _collections(u)["undelivered_alarm"] is None


def _collections(u: Unit) -> dict[str, Any]:
    request = Request("GET", "/collections", headers={"authorization": f"Bearer {TOKEN}"})
    response = handle(request, lambda: u.ctx, environ={TOKEN_ENV: TOKEN})
    assert response.status == 200, response.body
    answer: dict[str, Any] = json.loads(response.body)
    return answer
