"""Overlapping poller ticks (a tick may work up to `timing.poll_budget_seconds`, the timer
fires every minute) and platforms that keep forgetting exports: what each costs the
platform, over in-memory fakes."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

from shared.domain.jobs import JobStatus
from shared.ports import Progress
from shared.service.poll import poll
from tests.unit.support import ScriptedExport, seed_run, unit


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
