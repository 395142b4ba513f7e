"""Overlapping poller ticks (a tick may work up to `timing.poll_budget_seconds`, the timer
fires every minute) and platforms that keep forgetting exports: what each costs the
platform, over in-memory fakes."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import replace

from shared.domain.errors import Forgotten, Retryable
from shared.domain.jobs import JobStatus
from shared.ports import Progress
from shared.service.finish import finish
from shared.service.poll import poll
from tests.unit.support import ScriptedExport, minutes_of_ticks, seed_run, unit


def test_a_job_another_poller_checked_since_this_tick_read_it_is_not_checked_again() -> None:
    platform = ScriptedExport({"a": [], "b": [], "c": []})
    u = unit(platform, poll_concurrency=1, platform_calls_per_source=1)
    seed_run(u, JobStatus.EXPORTING, platform_job_id="export-1", started_at=u.clock())
    checks: Counter[str] = Counter()
    later = {"tick": True}

    def check(collection: str, platform_job_id: str) -> Progress:
        checks[collection] += 1
        if later["tick"]:  # this tick has run a minute: the timer starts the next one
            later["tick"] = False
            u.clock.advance(60)
            poll(replace(u.ctx, worker="next-tick"))
        return Progress("running")

    platform.check = check  # type: ignore[method-assign]
    poll(u.ctx)

    # "a" was in flight here while the next tick checked it too; "b" and "c" the next
    # tick had checked (and rescheduled) before this one reached them
    assert checks["b"] == checks["c"] == 1


def test_a_platform_that_forgets_every_export_does_not_get_one_started_every_tick() -> None:
    platform = ScriptedExport({"orders": []})
    u = unit(platform, max_attempts=3)
    [job] = seed_run(u)

    def forgets(collection: str, platform_job_id: str) -> Progress:
        raise Forgotten(f"WeChat no longer knows this export job {platform_job_id}")

    platform.check = forgets  # type: ignore[method-assign]
    for _ in range(60):  # an hour of one tick a minute
        poll(u.ctx)
        u.clock.advance(60)

    assert len(platform.started) == 3  # one export per try, not one every other minute
    failed = u.job(job.job_id)
    assert failed.status is JobStatus.FAILED
    assert "forgot the export 3 times" in (failed.error or "")


def test_a_platform_that_forgets_every_export_mid_copy_does_not_get_one_started_every_tick() -> None:
    platform = ScriptedExport({"orders": [{"_id": "d0"}]})
    u = unit(platform, max_attempts=3)
    [job] = seed_run(u)

    def forgets(collection: str, part: int) -> None:
        raise Forgotten("WeChat no longer knows this export job")

    platform.on_open = forgets
    minutes_of_ticks(u, 60)  # an hour of one tick a minute, each hand-off copied at once

    assert len(platform.started) == 3  # one export per try, not one every tick
    failed = u.job(job.job_id)
    assert failed.status is JobStatus.FAILED
    assert "forgot the export 3 times" in (failed.error or "")


def test_an_export_start_that_outlasts_the_claim_is_not_started_again_by_the_next_tick() -> None:
    """A start call can take minutes (each try waits out the HTTP timeout, then retries)
    while the poller's SCF invocation lives on: its claim must outlast it."""
    platform = ScriptedExport({"orders": []})
    u = unit(platform)
    [job] = seed_run(u)
    u.ctx.stop_by = time.monotonic() + 270  # SCF: 300 s less the margin
    slow = {"first": True}
    original = platform.start

    def start(collection: str, job_id: str) -> str:
        if slow["first"]:  # the answer takes 150 s; the timer's next ticks run meanwhile
            slow["first"] = False
            for _ in range(3):
                u.clock.advance(50)
                poll(replace(u.ctx, worker="next-tick", stop_by=time.monotonic() + 270))
        return original(collection, job_id)

    platform.start = start  # type: ignore[method-assign]
    poll(u.ctx)

    assert platform.started == ["orders"]  # one export, not one per overlapping poller
    assert u.job(job.job_id).status is JobStatus.EXPORTING


def test_a_check_that_keeps_failing_is_asked_again_ever_less_often() -> None:
    """The timer ticks once a minute: a backoff of seconds is no backoff at all, and a
    platform down for a few minutes would use up every running export's tries."""
    platform = ScriptedExport({"orders": []})
    u = unit(platform, max_attempts=5, max_check_interval_seconds=300)
    [job] = seed_run(u, JobStatus.EXPORTING, platform_job_id="export-1", started_at=u.clock())
    checks = []

    def down(collection: str, platform_job_id: str) -> Progress:
        checks.append(u.clock())
        raise Retryable("WeChat: errcode -1 system busy")

    platform.check = down  # type: ignore[method-assign]
    for _ in range(6):  # six minutes of one tick a minute
        poll(u.ctx)
        u.clock.advance(60)

    assert len(checks) == 3  # at 0, 1 and 3 minutes: one, then two minutes apart
    assert u.job(job.job_id).status is JobStatus.EXPORTING  # tries left for when it is back


def test_a_copy_that_keeps_failing_is_tried_again_ever_less_often() -> None:
    """As a failed check: a download host down for a few minutes must not use up the
    copy's tries at one a tick (README: "one tick, two, four … apart")."""
    platform = ScriptedExport({"orders": [{"_id": "d0"}]})
    u = unit(platform, max_attempts=5, max_check_interval_seconds=300)
    [job] = seed_run(u, JobStatus.READY, platform_job_id="export-1", expected_records=1)
    copies = []

    def down(collection: str, part: int) -> None:
        copies.append(u.clock())
        raise Retryable("download host answered HTTP 502")

    platform.on_open = down
    minutes_of_ticks(u, 6)  # six minutes of one tick a minute, each hand-off copied at once

    assert len(copies) == 2 * 3  # two in-call tries at 0, 1 and 3 minutes
    assert u.job(job.job_id).status is JobStatus.READY  # tries left for when it is back


def test_hand_offs_queued_while_the_finisher_was_throttled_do_not_skip_a_failed_copys_backoff() -> None:
    """SCF keeps an async event its finisher's concurrency turned away and retries it every
    minute (product/583/41138): after a throttled hour the hand-offs of every copy lease
    arrive within a minute. The first copy fails; the rest must not try it again at once,
    each using up a try, ahead of the backoff the failure set."""
    platform = ScriptedExport({"orders": [{"_id": "d0"}]})
    u = unit(platform, max_attempts=5, max_check_interval_seconds=300)
    [job] = seed_run(u, JobStatus.READY, platform_job_id="export-1", expected_records=1)
    for _ in range(4):  # a throttled hour: one hand-off a copy lease, none run yet
        poll(u.ctx)
        u.clock.advance(u.ctx.config.timing.copy_lease_seconds + 1)
    queued = list(u.dispatcher.dispatched)
    assert len(queued) == 4

    def down(collection: str, part: int) -> None:
        raise Retryable("download host answered HTTP 502")

    platform.on_open = down
    for job_id in queued:  # the throttling ends: SCF delivers them seconds apart
        finish(u.ctx, job_id)
        u.clock.advance(10)

    after = u.job(job.job_id)
    assert after.attempts == 1  # one failed copy, backed off; the late events waited
    assert after.status is JobStatus.READY
