"""Every kind of run notification no webhook accepted is sent again by the poller: a
failed restore, a run failed because no finisher claimed its ready job."""

from __future__ import annotations

from datetime import timedelta

import pytest

from shared.domain.jobs import JobStatus, Run, RunStatus, UndeliveredAlert, run_id_for
from shared.service.poll import poll
from shared.service.verify import Problem, Report, record
from tests.unit.support import ScriptedExport, Unit, seed_run, unit


def _failed_restore(u: Unit) -> Run:
    now = u.clock()
    run = Run(run_id="20261101T030000000Z-restore", operation="restore", idempotency_key="r",
              trigger="test", sources=["shop"], created_at=now)
    (job,) = seed_run(u, JobStatus.FAILED, error="the import failed")
    u.state.create_run(run, [job.model_copy(update={"job_id": "restore-job", "run_id": run.run_id})])
    return run


def _unclaimed_ready(u: Unit) -> Run:
    (job,) = seed_run(u, JobStatus.READY, unclaimed_since=u.clock(), unclaimed_hand_offs=5)
    u.clock.advance(3600 * 13)  # past timing.unclaimed_ready_hours (12)
    stored = u.state.get_run(job.run_id)
    assert stored is not None
    return stored


@pytest.mark.parametrize("scenario", [_failed_restore, _unclaimed_ready])
def test_a_notification_no_webhook_accepted_is_sent_again_once(scenario: object) -> None:
    u = unit(ScriptedExport({"orders": []}))
    assert callable(scenario)
    run: Run = scenario(u)
    u.notifier.accepting = False

    poll(u.ctx)  # the run closes failed; every webhook is down

    closed = u.state.get_run(run.run_id)
    assert closed is not None and closed.status.value == "failed"
    assert _sent(u, run) == [True] and "run" in closed.undelivered
    u.notifier.accepting = True
    u.clock.advance(60)
    poll(u.ctx)
    poll(u.ctx)
    assert _sent(u, run) == [True, False]  # sent again once, without a second heartbeat ping
    settled = u.state.get_run(run.run_id)
    assert settled is not None and settled.undelivered == {}


def test_a_claim_another_poller_holds_is_left_alone() -> None:
    """A sender claimed the alert (the closer, or another poller): no one else sends it
    until the claim lapses."""
    u = unit(ScriptedExport({"orders": []}))
    run = _failed_restore(u)
    u.notifier.accepting = False
    poll(u.ctx)
    closed = u.state.get_run(run.run_id)
    assert closed is not None
    alert = closed.undelivered["run"].model_copy(update={"claimed_until": u.clock() + timedelta(minutes=10)})
    assert u.state.save_run(closed.model_copy(update={"undelivered": {"run": alert}})) is not None
    u.notifier.accepting = True
    poll(u.ctx)
    assert len(_sent(u, run)) == 1  # held by the other sender
    u.clock.advance(11 * 60)  # it died: its claim lapsed
    poll(u.ctx)
    assert len(_sent(u, run)) == 2


def _sent(u: Unit, run: Run) -> list[bool]:
    """The notifications of `run` sent so far: whether each pinged the heartbeat."""
    return [pinged for (sent, _), pinged in zip(u.notifier.sent, u.notifier.pinged)
            if sent.run_id == run.run_id]


def _listings(u: Unit) -> list[str | None]:
    """Each `list_runs` call from now on, by its `before` (None: the newest page)."""
    listed: list[str | None] = []
    list_runs = u.state.list_runs

    def counted(limit: int = 20, before: str | None = None) -> list[Run]:
        listed.append(before)
        return list_runs(limit=limit, before=before)

    u.state.list_runs = counted  # type: ignore[method-assign]
    return listed


def test_a_tick_lists_the_newest_runs_once_for_the_resends_and_the_staleness_alarm() -> None:
    """Both read the newest runs: one listing serves them (on COS state a listing and a read
    per run, every minute)."""
    u = unit(ScriptedExport({"orders": []}))
    _failed_restore(u)
    listed = _listings(u)
    poll(u.ctx)
    assert len(listed) == 1


def test_a_run_with_nothing_to_send_closes_in_one_write() -> None:
    """A quiet success (or no webhook) has no notification to keep for sending again: no
    claim is recorded, so no second write settles it; the heartbeat is still pinged."""
    u = unit(ScriptedExport({"orders": []}))
    restore = _failed_restore(u)
    u.notifier.quiet = True
    saves: list[Run] = []
    save_run = u.state.save_run

    def counted(run: Run) -> Run | None:
        saves.append(run)
        return save_run(run)

    u.state.save_run = counted  # type: ignore[method-assign]
    poll(u.ctx)

    closing = [s for s in saves if s.run_id == restore.run_id]
    assert [s.status.value for s in closing] == ["failed"] and closing[0].undelivered == {}
    assert _sent(u, restore) == [True]


def _runs_every_quarter_hour(u: Unit, hours: float) -> list[Run]:
    """Closed quiet runs every 15 minutes for the last `hours`, newest first (a busy
    deployment: far more runs than one listing page)."""
    now = u.clock()
    runs = []
    for n in range(int(hours * 4)):
        at = now - timedelta(minutes=15 * n)
        run = Run(run_id=run_id_for(f"busy-{n}", at), idempotency_key=f"busy-{n}",
                  trigger="timer", sources=["shop"], created_at=at, finished_at=at,
                  status=RunStatus.SUCCEEDED)
        u.state.create_run(run, [])
        runs.append(run)
    return runs


def _waiting_since(u: Unit, run: Run, hours_ago: float) -> Run:
    """`run` with its notification waiting since `hours_ago` (every webhook was down)."""
    since = u.clock() - timedelta(hours=hours_ago)
    stored = u.state.get_run(run.run_id)
    assert stored is not None
    alert = UndeliveredAlert(since=since, claimed_until=None)
    saved = u.state.save_run(stored.model_copy(update={"undelivered": {"run": alert}}))
    assert saved is not None
    return saved


def test_alerts_on_runs_older_than_the_newest_page_are_sent_again_or_given_up() -> None:
    """Runs every 15 minutes and a webhook down for half a day: the waiting alert sits on a
    run far behind the newest 50; it is sent again while within its day, and one past its
    day is given up (not left waiting for ever, holding its run from retention)."""
    u = unit(ScriptedExport({"orders": []}))
    runs = _runs_every_quarter_hour(u, hours=30)
    fresh = _waiting_since(u, runs[70], hours_ago=17)  # 17.5 hours old: not in the newest 50
    stale = _waiting_since(u, runs[110], hours_ago=25)  # past the day

    poll(u.ctx)

    assert [run.run_id for run, _ in u.notifier.sent] == [fresh.run_id]
    sent, given_up = u.state.get_run(fresh.run_id), u.state.get_run(stale.run_id)
    assert sent is not None and sent.undelivered == {}
    assert given_up is not None and given_up.undelivered["run"].gave_up_at == u.clock()


def test_a_run_that_closed_long_after_it_started_is_sent_again() -> None:
    """Its alert dates from its close, its id from its start: one started 26 hours ago
    (an export near its deadline, then a finisher that never claimed it) whose close 8 hours
    ago reached no webhook is still within its day."""
    u = unit(ScriptedExport({"orders": []}))
    runs = _runs_every_quarter_hour(u, hours=27)
    late = _waiting_since(u, runs[104], hours_ago=8)  # started 26 hours ago

    poll(u.ctx)

    assert [run.run_id for run, _ in u.notifier.sent] == [late.run_id]


def test_paging_back_for_alerts_stops_at_the_window_not_at_the_oldest_run() -> None:
    """A tick reads back only as far as an alert can still be sent: years of runs cost
    the same listing as the last couple of days."""
    u = unit(ScriptedExport({"orders": []}))
    _runs_every_quarter_hour(u, hours=24 * 10)
    listed = _listings(u)
    poll(u.ctx)
    # 1 day + the longest a run stays open (6 h export, 12 h unclaimed, 3 leases of 16 min):
    # about 43 hours of runs every 15 minutes, 172 runs, four pages of 50
    assert len(listed) == 4 and listed[0] is None


def test_a_verify_alert_on_an_old_run_is_sent_again_then_given_up() -> None:
    """A verify asked for today of a backup from days ago (far behind the pages a tick
    reads) finds it damaged while every webhook is down: its alert is still sent again at
    the next tick, and given up after its day (not left waiting for ever, which would also
    keep the run from retention)."""
    u = unit(ScriptedExport({"orders": []}))
    runs = _runs_every_quarter_hour(u, hours=24 * 3)
    old = runs[250]  # 62.5 hours old
    sent: list[str] = []
    accepting = [False, True, False]  # down at the verify; up at the next tick; then down

    def alert(text: str) -> bool:
        sent.append(text)
        return accepting[min(len(sent), len(accepting)) - 1]

    u.notifier.alert = alert  # type: ignore[method-assign]
    record(u.ctx, Report(run_id=old.run_id, quick=True,
                         problems=[Problem("missing manifest", "runs/x/manifest.json", "gone")]))
    u.clock.advance(60)
    poll(u.ctx)
    assert len(sent) == 2 and "found problems" in sent[1]  # sent again
    stored = u.state.get_run(old.run_id)
    assert stored is not None and stored.undelivered == {}

    accepting[:] = [False]  # a second verify, every webhook down from then on
    sent.clear()
    record(u.ctx, Report(run_id=old.run_id, quick=True,
                         problems=[Problem("missing manifest", "runs/x/manifest.json", "gone")]))
    for _ in range(26):
        u.clock.advance(3600)
        poll(u.ctx)
    given_up = u.state.get_run(old.run_id)
    assert given_up is not None and given_up.undelivered["verify"].gave_up_at is not None
    # the verify's, then one a tick for its day (the staleness alarm aside)
    assert len([text for text in sent if "found problems" in text]) == 24


def test_a_run_open_past_the_timing_bounds_is_sent_again() -> None:
    """A run can stay open longer than the timing settings bound (a copy that keeps making
    progress is handed out again and again): started 62 hours ago, it closes now, failed,
    while every webhook is down; the next tick still sends its notification again."""
    u = unit(ScriptedExport({"orders": []}))
    _runs_every_quarter_hour(u, hours=24 * 3)
    started = u.clock() - timedelta(hours=62, minutes=5)
    run = Run(run_id=run_id_for("long", started), idempotency_key="long", trigger="timer",
              sources=["shop"], created_at=started)
    (job,) = seed_run(u, JobStatus.FAILED, error="the copy failed at last")
    u.state.create_run(run, [job.model_copy(update={"job_id": "long-job", "run_id": run.run_id})])
    u.notifier.accepting = False

    poll(u.ctx)  # it closes; no webhook takes its notification
    u.notifier.accepting = True
    u.clock.advance(60)
    poll(u.ctx)

    assert _sent(u, run) == [True, False]
    stored = u.state.get_run(run.run_id)
    assert stored is not None and stored.undelivered == {}
