"""Every kind of run notification no webhook accepted is sent again by the poller: a
failed restore, a run failed because no finisher claimed its ready job."""

from __future__ import annotations

from datetime import timedelta

import pytest

from shared.domain.jobs import JobStatus, Run
from shared.service.poll import poll
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


def test_a_tick_lists_the_newest_runs_once_for_the_resends_and_the_staleness_alarm() -> None:
    """Both read the newest runs: one listing serves them (on COS state a listing and a read
    per run, every minute)."""
    u = unit(ScriptedExport({"orders": []}))
    _failed_restore(u)
    listed: list[int] = []
    list_runs = u.state.list_runs

    def counted(limit: int = 20, before: str | None = None) -> list[Run]:
        listed.append(limit)
        return list_runs(limit=limit, before=before)

    u.state.list_runs = counted  # type: ignore[method-assign]
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
