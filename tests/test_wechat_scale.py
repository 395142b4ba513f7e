"""An environment with 500 collections, backed up in one run within SCF's limits.

The poller's one-minute timer is played by a clock that jumps a minute between ticks, each
tick a fresh invocation (new context) with its own time budget. WeChat answers -501004 once
50 exports run at once: the jobs wait and start at later ticks, none fails, none starts
twice (unless a start's answer was lost, which is logged), and every object equals its
collection.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from devkit.compare import assert_object_equals_docs
from devkit.sample_data import make_docs
from shared.config import Config
from shared.domain.jobs import JobStatus, Run, RunStatus, utcnow
from shared.service.context import Context
from shared.service.poll import poll
from shared.service.start import start_run
from tests.support.backup import ENV_ID, LocalBackup

COLLECTIONS = 500
CONCURRENCY = 50
EXPORT = "/tcb/databasemigrateexport"
LISTING = "/tcb/databasecollectionget"


class TimerClock:
    """Real time plus the minutes skipped between timer ticks, so time budgets still run on
    real seconds while a whole night passes in a few."""

    def __init__(self) -> None:
        self.skipped = timedelta(0)

    def __call__(self) -> datetime:
        return utcnow() + self.skipped


@pytest.fixture
def in_memory_state(local: LocalBackup) -> Iterator[LocalBackup]:
    """The state table on tmpfs where there is one: this test is about the pipeline's
    behaviour, and ~10,000 fsyncs of a disk-backed SQLite would take most of its time."""
    shm = Path("/dev/shm")
    if not (shm.is_dir() and shm.stat().st_mode & 0o002):
        yield local
        return
    with tempfile.TemporaryDirectory(dir=shm) as folder:
        local.state_url = f"sqlite:///{folder}/state.sqlite3"
        yield local


def invocation(local: LocalBackup, config: Config, clock: TimerClock) -> Context:
    ctx = local.context(config)
    ctx.clock = clock
    return ctx


def run_by_timer(local: LocalBackup, config: Config, clock: TimerClock, run: Run) -> tuple[Run, int, float]:
    """Tick the poller a minute apart until the run closes: (run, ticks, slowest tick in s)."""
    ticks, slowest = 0, 0.0
    while True:
        clock.skipped += timedelta(seconds=61)
        began = time.perf_counter()
        ctx = invocation(local, config, clock)
        poll(ctx)
        slowest = max(slowest, time.perf_counter() - began)
        ticks += 1
        assert local.emulator.running_exports(ENV_ID) <= CONCURRENCY
        assert not [j for j in ctx.state.list_jobs(run.run_id) if j.status is JobStatus.FAILED]
        current = ctx.state.get_run(run.run_id)
        assert current is not None
        if current.status is not RunStatus.RUNNING:
            return current, ticks, slowest
        assert ticks < 60, "the run should end within an hour of timer ticks"


def assert_all_backed_up(local: LocalBackup, ctx: Context, run: Run, data: dict[str, list[Any]]) -> None:
    jobs = {j.collection: j for j in ctx.state.list_jobs(run.run_id)}
    assert set(jobs) == set(data)
    for name, docs in data.items():
        result = jobs[name].result
        assert jobs[name].status is JobStatus.DONE and result is not None, jobs[name].error
        assert_object_equals_docs(local.objects.read(result.key), docs, "json")


def assert_each_exported_once(local: LocalBackup, caplog: pytest.LogCaptureFixture,
                              nights: dict[str, int]) -> None:
    """Each collection exported once a night (`nights`: how many nights it has existed).
    The one excuse: a start retried because its first answer was lost (on loopback, a
    machine in trouble), which WeChat may have carried out; each such retry is logged and
    excuses one export more, no more. Otherwise a collection exported too often is named,
    with every export of it and the warnings logged."""
    exports = local.emulator.export_jobs()
    exported = Counter(job["collection"] for job in exports)
    assert set(exported) == set(nights)
    short = {name: count for name, count in exported.items() if count < nights[name]}
    assert not short, f"exported fewer times than nights: {short}"
    extra = {name: [(job["job_id"], job["file_path"], job["status"], job["polls"])
                    for job in exports if job["collection"] == name]
             for name, count in exported.items() if count > nights[name]}
    # a start retried after an answer WeChat gave (an errcode: nothing was started) excuses nothing
    retried_starts = [r for r in caplog.records if r.name == "shared.retry"
                      and EXPORT in (reason := str(r.__dict__.get("reason"))) and "errcode" not in reason]
    warnings = [f"{r.name}: {r.getMessage()} {r.__dict__.get('reason', '')}"
                for r in caplog.records if r.levelno >= logging.WARNING]
    surplus = sum(exported.values()) - sum(nights.values())
    assert surplus <= len(retried_starts), f"exported too often: {extra}; warnings: {warnings[:20]}"
    if surplus:
        print(f"\n{surplus} export(s) started again after a lost answer: {warnings[:5]}")


def test_500_collections_in_one_run_and_a_new_one_the_next_night(
        in_memory_state: LocalBackup, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    local = in_memory_state
    data = {f"coll-{i:03d}": make_docs(2, seed=i, prefix=f"c{i}") for i in range(COLLECTIONS)}
    for name, docs in data.items():
        local.seed(name, docs)
    local.emulator.export_concurrency_limit = CONCURRENCY
    local.emulator.polls_until_ready = 0
    config = local.config(local.wechat_source(collections="all"))
    clock = TimerClock()

    # The trigger: discovery, 500 jobs recorded at once, exports started until WeChat's limit.
    began = time.perf_counter()
    run, created = start_run(invocation(local, config, clock), idempotency_key="timer:night-1",
                             trigger="timer")
    trigger_seconds = time.perf_counter() - began
    assert created and local.emulator.calls[LISTING] == 6  # pages of 100, each after the first from the last one read
    ctx = invocation(local, config, clock)
    jobs = ctx.state.list_jobs(run.run_id)
    assert len(jobs) == COLLECTIONS
    statuses = [j.status for j in jobs]
    assert statuses.count(JobStatus.EXPORTING) == CONCURRENCY
    assert statuses.count(JobStatus.PENDING) == COLLECTIONS - CONCURRENCY
    assert "-501004" in (next(j for j in jobs if j.status is JobStatus.PENDING).error or "")
    assert local.emulator.calls[EXPORT] == CONCURRENCY + 1  # one refusal, then no more asking
    assert trigger_seconds < config.timing.start_budget_seconds

    # SCF retries the timer event: same run, nothing started twice.
    again, created_again = start_run(invocation(local, config, clock),
                                     idempotency_key="timer:night-1", trigger="timer")
    assert not created_again and again.run_id == run.run_id
    assert local.emulator.calls[EXPORT] == CONCURRENCY + 1

    first, ticks, slowest = run_by_timer(local, config, clock, run)

    assert first.status is RunStatus.SUCCEEDED
    assert_each_exported_once(local, caplog, dict.fromkeys(data, 1))
    assert_all_backed_up(local, ctx, first, data)
    assert slowest < config.timing.poll_budget_seconds
    print(f"\n500 collections: trigger {trigger_seconds:.2f} s, {ticks} poller ticks, "
          f"slowest tick {slowest:.2f} s (budget {config.timing.poll_budget_seconds:g} s)")

    # The next night: a collection created during the day is in the backup. This trigger
    # stops right after recording the run (its budget is gone at once), as if it had been
    # killed there: the poller starts every export.
    data["coll-new"] = make_docs(4, seed=999, prefix="new")
    local.seed("coll-new", data["coll-new"])
    clock.skipped += timedelta(hours=24)
    tight = local.config(local.wechat_source(collections="all"), start_budget_seconds=0.001)
    exports_before = local.emulator.calls[EXPORT]
    second_run, _ = start_run(invocation(local, tight, clock), idempotency_key="timer:night-2",
                              trigger="timer")
    assert local.emulator.calls[EXPORT] - exports_before <= 1

    second, ticks, slowest = run_by_timer(local, tight, clock, second_run)

    assert second.status is RunStatus.SUCCEEDED
    assert_all_backed_up(local, ctx, second, data)
    assert_each_exported_once(local, caplog, {**dict.fromkeys(data, 2), "coll-new": 1})
    print(f"501 collections, trigger cut short: {ticks} poller ticks, slowest tick {slowest:.2f} s")
