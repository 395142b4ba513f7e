"""The service layer's branches over in-memory fakes: leases lost and expired, an
export forgotten mid-copy, a copy paused by its budget, retry accounting, closing a run
and notifying once. Each test is milliseconds: no HTTP, no bucket, no database."""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Collection
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import Any

import pytest

from shared.config import Config
from shared.domain.errors import Forgotten, Retryable, RetryLater, StorageError
from shared.domain.jobs import Job, JobStatus, RestoreOrder, Run, RunStatus, StoredObject
from shared.domain.layout import data_key, parked_key
from shared.ports import Page, Progress
from shared.service.close import RunsNotClosed, close_finished_runs
from shared.service.copying import claim
from shared.service.finish import finish
from shared.service.poll import advance, poll
from tests.unit.support import (
    FakePlatforms,
    ScriptedExport,
    ScriptedPages,
    polled_unclaimed,
    seed_run,
    unit,
    when_due,
)

ROWS = [{"_id": f"d{i}", "n": i} for i in range(5)]


def test_a_pending_export_is_started_checked_handed_off_and_copied() -> None:
    u = unit(ScriptedExport({"orders": ROWS}, checks=[Progress("running")]))
    [job] = seed_run(u)

    poll(u.ctx)  # start
    assert u.job(job.job_id).status is JobStatus.EXPORTING
    u.clock.advance(10)
    poll(u.ctx)  # still running: checked again later, not at once
    assert u.job(job.job_id).next_check_at > u.clock()
    u.clock.advance(60)
    poll(u.ctx)  # ready: handed to the finisher
    assert u.dispatcher.dispatched == [job.job_id]
    assert finish(u.ctx, job.job_id) == "done"
    done = u.job(job.job_id)
    assert done.result is not None and done.result.records == len(ROWS)
    assert u.objects.read(done.result.key).count(b"\n") == len(ROWS)
    assert json.loads(u.objects.read(done.result.manifest_key))["records"] == len(ROWS)


def test_a_finisher_that_loses_its_lease_mid_copy_stops_without_touching_the_job() -> None:
    platform = ScriptedExport({"orders": ROWS})
    u = unit(platform)
    [job] = seed_run(u, JobStatus.READY, part_records=[5, 5])

    def taken_over(collection: str, part: int) -> None:
        if part == 0:  # another finisher claims the job while this one copies part 1
            current = u.job(job.job_id)
            u.state.save_job(current.model_copy(update={"lease_owner": "someone-else"}))

    platform.on_open = taken_over
    assert finish(u.ctx, job.job_id) == "claimed-elsewhere"
    after = u.job(job.job_id)
    assert after.status is JobStatus.COPYING and after.lease_owner == "someone-else"
    assert after.result is None


def test_an_expired_copy_lease_is_taken_back_and_counted_as_a_try() -> None:
    u = unit(ScriptedExport({"orders": ROWS}))
    [job] = seed_run(u, JobStatus.COPYING, lease_owner="gone", attempts=0,
                     lease_until=None)
    u.put(u.job(job.job_id).model_copy(update={"lease_until": u.clock() - timedelta(seconds=1)}))

    poll(u.ctx)

    reclaimed = u.job(job.job_id)
    assert reclaimed.status is JobStatus.READY and reclaimed.attempts == 1
    assert reclaimed.lease_owner is None and u.dispatcher.dispatched == [job.job_id]


def test_a_copy_lease_that_expires_at_the_last_try_fails_the_job() -> None:
    u = unit(ScriptedExport({"orders": ROWS}), max_attempts=2)
    [job] = seed_run(u, JobStatus.COPYING, lease_owner="gone", attempts=1)
    u.put(u.job(job.job_id).model_copy(update={"lease_until": u.clock() - timedelta(seconds=1)}))

    poll(u.ctx)

    failed = u.job(job.job_id)
    assert failed.status is JobStatus.FAILED and "after 2 tries" in (failed.error or "")


def test_an_export_forgotten_mid_copy_is_started_again() -> None:
    platform = ScriptedExport({"orders": ROWS})
    u = unit(platform)
    [job] = seed_run(u, JobStatus.READY, platform_job_id="export-0", expected_records=5)

    def forgotten(collection: str, part: int) -> None:
        raise Forgotten("the platform has no export export-0")

    platform.on_open = forgotten
    assert finish(u.ctx, job.job_id) == "restarted"
    restarted = u.job(job.job_id)
    assert restarted.status is JobStatus.PENDING and restarted.platform_job_id is None
    assert restarted.attempts == 1 and restarted.next_check_at > u.clock()  # a try, backed off
    assert not u.objects.objects  # nothing half-written
    platform.on_open = None
    u.clock.advance(60)  # the next tick
    poll(u.ctx)
    assert platform.started == ["orders"]  # a fresh export


def test_a_paged_copy_paused_by_its_budget_resumes_where_it_stopped() -> None:
    rows = [{"_id": f"r{i}"} for i in range(9)]
    platform = ScriptedPages({"events": rows}, page_rows=2)
    u = unit(platform, kind="paged")
    [job] = seed_run(u, JobStatus.READY)

    u.ctx.stop_by = time.monotonic()  # the invocation is out of time at once
    assert finish(u.ctx, job.job_id) == "paused"
    paused = u.job(job.job_id)
    assert paused.status is JobStatus.READY and paused.attempts == 0
    read_first = platform.fetched
    assert 0 < read_first < 5

    u.ctx.stop_by = None
    assert finish(u.ctx, job.job_id) == "done"
    done = u.job(job.job_id)
    assert done.result is not None and done.result.records == 9
    lines = u.objects.read(done.result.key).splitlines()
    assert [json.loads(line) for line in lines] == rows  # no row lost or doubled
    assert platform.fetched < read_first + 5  # resumed, not started over


BIG = "x" * (8 * 1024 * 1024 + 10)  # one row fills a part (part_size_mb 8, the default)


@dataclass
class FlakyPages(ScriptedPages):
    """Every page past the first is refused twice (OneDB busy a moment) before it is served."""

    refusals: dict[int, int] = field(default_factory=dict)

    def fetch_page(self, collection: str, cursor: dict[str, Any] | None) -> Page:
        offset = int((cursor or {}).get("offset", 0))
        if offset > 0 and self.refusals.setdefault(offset, 0) < 2:
            self.refusals[offset] += 1
            raise Retryable(f"OneDB busy (offset {offset})")
        return super().fetch_page(collection, cursor)


def test_one_invocation_with_progress_then_a_blip_counts_no_try() -> None:
    """The in-call retry of the copy must not forget what its first try saved."""
    u = unit(FlakyPages({"events": [{"_id": f"r{i}", "blob": BIG} for i in range(3)]},
                        page_rows=1), kind="paged", max_attempts=3)
    assert u.ctx.config.destination.part_size_mb == 8
    [job] = seed_run(u, JobStatus.READY)

    assert finish(u.ctx, job.job_id) == "retry"
    after = u.job(job.job_id)
    assert (after.progress_records, after.attempts) == (1, 0)


def test_a_paged_copy_that_progressed_before_each_transient_error_gets_done() -> None:
    u = unit(FlakyPages({"events": [{"_id": f"r{i}", "blob": BIG} for i in range(4)]},
                        page_rows=1), kind="paged", max_attempts=3)
    [job] = seed_run(u, JobStatus.READY)

    outcomes = []
    for _ in range(6):
        outcomes.append(finish(u.ctx, job.job_id))
        if u.job(job.job_id).status.terminal:
            break
        u.clock.advance(3600)
    final = u.job(job.job_id)
    assert final.status is JobStatus.DONE, (outcomes, final.attempts, final.error)


def test_a_transient_copy_failure_is_retried_and_counted() -> None:
    platform = ScriptedExport({"orders": ROWS})
    u = unit(platform, max_attempts=3)
    [job] = seed_run(u, JobStatus.READY, expected_records=5)

    def flaky(collection: str, part: int) -> None:
        raise Retryable("download cut off")

    platform.on_open = flaky
    assert finish(u.ctx, job.job_id) == "retry"
    first = u.job(job.job_id)
    assert first.status is JobStatus.READY and first.attempts == 1
    assert first.next_check_at > u.clock()  # backed off
    assert finish(u.ctx, job.job_id) == JobStatus.READY.value  # a late event waits
    when_due(u, job.job_id)
    assert finish(u.ctx, job.job_id) == "retry"
    when_due(u, job.job_id)
    assert finish(u.ctx, job.job_id) == "failed"
    assert "after 3 tries" in (u.job(job.job_id).error or "")


def test_a_platform_asking_to_wait_is_not_a_failed_try() -> None:
    platform = ScriptedExport({"orders": ROWS})
    u = unit(platform, max_attempts=2)
    [job] = seed_run(u, JobStatus.READY, expected_records=5)

    def busy(collection: str, part: int) -> None:
        raise RetryLater("rate limited")

    platform.on_open = busy
    for _ in range(4):
        assert finish(u.ctx, job.job_id) == "retry"
        when_due(u, job.job_id)
    assert u.job(job.job_id).attempts == 0 and u.job(job.job_id).status is JobStatus.READY


def test_check_errors_are_retried_with_backoff_or_waited_for() -> None:
    platform = ScriptedExport({"orders": ROWS})
    u = unit(platform, max_attempts=3)
    [job] = seed_run(u, JobStatus.EXPORTING, platform_job_id="export-1")

    def check(collection: str, platform_job_id: str) -> Progress:
        raise errors.pop(0)

    errors: list[Exception] = [RetryLater("quota"), Retryable("system busy")]
    platform.check = check  # type: ignore[method-assign]
    poll(u.ctx)
    waited = u.job(job.job_id)
    assert waited.attempts == 0 and waited.next_check_at == u.clock() + timedelta(seconds=60)
    u.clock.advance(60)
    poll(u.ctx)
    retried = u.job(job.job_id)
    assert retried.attempts == 1 and retried.status is JobStatus.EXPORTING


def test_a_storage_failure_during_an_export_copy_is_a_plain_retry(
        caplog: pytest.LogCaptureFixture) -> None:
    u = unit(ScriptedExport({"orders": ROWS}))
    [job] = seed_run(u, JobStatus.READY, expected_records=5)
    u.objects.fail_puts = 10

    with caplog.at_level(logging.INFO):
        assert finish(u.ctx, job.job_id) == "retry"

    assert "InternalError" in (u.job(job.job_id).error or "")
    assert not [r for r in caplog.records if "unexpected" in r.getMessage()]
    u.objects.fail_puts = 0
    when_due(u, job.job_id)
    assert finish(u.ctx, job.job_id) == "done"


def test_a_storage_failure_once_is_retried_within_the_same_invocation() -> None:
    u = unit(ScriptedExport({"orders": ROWS}))
    [job] = seed_run(u, JobStatus.READY, expected_records=5)
    u.objects.fail_puts = 1
    assert finish(u.ctx, job.job_id) == "done"
    assert u.job(job.job_id).attempts == 0


def test_a_run_is_closed_and_notified_once() -> None:
    u = unit(ScriptedExport({"orders": ROWS, "users": ROWS[:2]}))
    jobs = seed_run(u, JobStatus.READY)
    for job in jobs:
        assert finish(u.ctx, job.job_id) == "done"

    assert close_finished_runs(u.ctx) == [jobs[0].run_id]
    assert close_finished_runs(u.ctx) == []  # already closed: no second notification
    assert len(u.notifier.sent) == 1
    run, listed = u.notifier.sent[0]
    assert run.status is RunStatus.SUCCEEDED and len(listed) == 2
    manifest = json.loads(u.objects.read(run.manifest_key or ""))
    assert manifest["status"] == "succeeded" and manifest["summary"]["records"] == 7


def test_the_close_deletes_the_rows_a_failed_paged_copy_parked_and_nothing_else() -> None:
    """Nobody reads a failed copy's parked rows again: the close deletes its own
    `<key>.parked`, never an object its checkpoint merely names (a tampered state row)."""
    u = unit(ScriptedPages({"events": ROWS, "orders": ROWS}), kind="paged")
    events, orders = seed_run(u, JobStatus.FAILED, error="boom")
    prefix = u.ctx.config.destination.prefix
    own = data_key(prefix, events.run_id, "shop", "events", "json")
    elsewhere = f"{prefix}/runs/another/shop/orders.jsonl"
    for job, key in ((events, own), (orders, elsewhere)):
        u.put(job.model_copy(update={"checkpoint": {"paged": {"key": key}}}))
        u.objects.put_json(parked_key(key), {"rows": "parked"})

    assert close_finished_runs(u.ctx) == [events.run_id]
    assert u.objects.head(parked_key(own)) is None
    assert u.objects.head(parked_key(elsewhere)) is not None


def test_a_run_that_cannot_close_keeps_no_other_from_closing(
        caplog: pytest.LogCaptureFixture) -> None:
    """One run's manifest cannot be written (the bucket refuses it): the other run still
    closes and is notified, the refused one is logged with its reason and stays open,
    and the next tick closes it."""
    u = unit(ScriptedExport({"orders": ROWS}))
    stuck = seed_run(u, JobStatus.FAILED, error="boom")[0].run_id
    other = Run(run_id="20261101T030000000Z-other", idempotency_key="other", trigger="test",
                sources=["shop"], created_at=u.clock())
    u.state.create_run(other, [])
    put_json = u.objects.put_json

    def refuse_one(key: str, document: dict[str, object]) -> None:
        if stuck in key:
            raise StorageError(f"COS put of {key!r} failed: AccessDenied (HTTP 403)",
                               key=key, code="AccessDenied")
        put_json(key, document)

    u.objects.put_json = refuse_one  # type: ignore[method-assign,assignment]
    with pytest.raises(RunsNotClosed) as raised:
        close_finished_runs(u.ctx)

    assert raised.value.closed == [other.run_id] and list(raised.value.reasons) == [stuck]
    assert "AccessDenied" in str(raised.value)
    assert [run.run_id for run, _ in u.notifier.sent] == [other.run_id]
    assert u.state.runs[stuck].status is RunStatus.RUNNING  # open: tried again next tick
    [logged] = [r for r in caplog.records if r.getMessage().startswith("run could not be closed")]
    assert logged.levelno == logging.ERROR and "AccessDenied" in logged.reason  # type: ignore[attr-defined]

    u.objects.put_json = put_json  # type: ignore[method-assign]
    assert close_finished_runs(u.ctx) == [stuck]


def test_the_finisher_closes_its_run_after_the_last_job_without_reading_a_busy_run() -> None:
    """Each copy asks whether its run still has open jobs; only the last one reads the
    run's jobs and closes it, so a run of thousands of jobs costs each copy a glance."""
    u = unit(ScriptedExport({"orders": ROWS, "users": ROWS[:2]}))
    jobs = seed_run(u, JobStatus.READY)
    listed: list[str] = []
    list_jobs, get_run = u.state.list_jobs, u.state.get_run

    def counted(run_id: str, *, skip: Collection[str] = ()) -> list[Job]:
        listed.append(run_id)
        return list_jobs(run_id, skip=skip)

    def read(run_id: str) -> Run | None:
        listed.append(f"run {run_id}")
        return get_run(run_id)

    u.state.list_jobs = counted  # type: ignore[method-assign]
    u.state.get_run = read  # type: ignore[method-assign]
    assert finish(u.ctx, jobs[0].job_id, close_run=True) == "done"
    assert listed == [] and u.notifier.sent == []  # the other job is still ready
    assert finish(u.ctx, jobs[1].job_id, close_run=True) == "done"
    assert listed == [f"run {jobs[0].run_id}", jobs[0].run_id]
    [(run, closed_jobs)] = u.notifier.sent
    assert run.status is RunStatus.SUCCEEDED and len(closed_jobs) == 2
    assert close_finished_runs(u.ctx) == []  # the poller finds nothing left to close


def test_a_run_with_a_failed_job_closes_failed_and_says_why() -> None:
    u = unit(ScriptedExport({"orders": ROWS}, checks=[Progress("failed", message="boom")]))
    [job] = seed_run(u, JobStatus.EXPORTING, platform_job_id="export-1")

    summary = poll(u.ctx)

    assert summary.closed_runs == [job.run_id]
    run, _ = u.notifier.sent[0]
    assert run.status is RunStatus.FAILED
    manifest = json.loads(u.objects.read(run.manifest_key or ""))
    assert manifest["jobs"][0]["error"] == "boom"


def test_a_job_past_its_deadline_fails_naming_the_platform_job() -> None:
    u = unit(ScriptedExport({"orders": ROWS}, checks=[Progress("running")] * 10))
    [job] = seed_run(u, JobStatus.EXPORTING, platform_job_id="export-9")
    u.clock.advance(7 * 3600)

    poll(u.ctx)

    failed = u.job(job.job_id)
    assert failed.status is JobStatus.FAILED and "export-9" in (failed.error or "")


def test_the_poll_budget_leaves_jobs_for_the_next_tick() -> None:
    u = unit(ScriptedExport({f"c{i}": ROWS for i in range(5)}))
    seed_run(u)
    u.ctx.stop_by = time.monotonic()

    summary = poll(u.ctx)

    assert summary.advanced == 0
    assert all(j.status is JobStatus.PENDING for j in u.state.jobs.values())


def test_a_storage_error_is_in_the_error_tree() -> None:
    assert issubclass(StorageError, Retryable)


@pytest.mark.parametrize("mode", ["quick", "full"])
def test_a_run_whose_backup_fails_verify_at_close_fails(mode: str) -> None:
    u = unit(ScriptedExport({"orders": ROWS, "users": ROWS[:2]}))
    u.ctx.config = u.ctx.config.model_copy(update={
        "verify": u.ctx.config.verify.model_copy(update={"after_run": mode})})
    jobs = seed_run(u, JobStatus.READY)
    for job in jobs:
        assert finish(u.ctx, job.job_id) == "done"
    orders = u.job(jobs[0].job_id).result
    assert orders is not None
    if mode == "quick":
        del u.objects.objects[orders.key]  # gone: a HEAD sees it
    else:
        data = u.objects.objects[orders.key]
        at = data.index(b"d0")  # a letter inside a value: still valid JSON, same size
        u.objects.objects[orders.key] = data[:at] + bytes([data[at] ^ 1]) + data[at + 1:]

    close_finished_runs(u.ctx)

    run, _ = u.notifier.sent[0]
    assert run.status is RunStatus.FAILED
    verified = (run.summary or {})["verify"]
    assert verified["mode"] == mode and not verified["ok"] and len(verified["problems"]) == 1
    assert verified["problems"][0].startswith("shop/orders " + ("missing object" if mode == "quick" else "sha256"))


def test_verify_after_run_can_be_turned_off() -> None:
    u = unit(ScriptedExport({"orders": ROWS}))
    u.ctx.config = u.ctx.config.model_copy(update={
        "verify": u.ctx.config.verify.model_copy(update={"after_run": "off"})})
    [job] = seed_run(u, JobStatus.READY)
    assert finish(u.ctx, job.job_id) == "done"
    u.objects.objects.clear()
    close_finished_runs(u.ctx)
    run, _ = u.notifier.sent[0]
    assert run.status is RunStatus.SUCCEEDED and "verify" not in (run.summary or {})


# A failed step's verdict lands on the job as that step left it ------------------------

def test_a_dispatch_error_after_the_finisher_claimed_leaves_its_lease_alone() -> None:
    """SCF's Invoke went through (the finisher claimed the job and is copying) but the
    poller saw an error: it must not strip the live finisher's lease nor count a try."""
    platform = ScriptedExport({"orders": ROWS})
    u = unit(platform, max_attempts=2)
    [job] = seed_run(u, JobStatus.READY, expected_records=5, platform_job_id="export-1")
    copying, release = threading.Event(), threading.Event()
    outcomes: list[str] = []

    def slow_download(collection: str, part: int) -> None:
        copying.set()
        release.wait(10)

    platform.on_open = slow_download
    finisher_ctx = replace(u.ctx, worker="finisher-1")

    class InvokedButErrored:
        def __init__(self) -> None:
            self.worker = threading.Thread(
                target=lambda: outcomes.append(finish(finisher_ctx, job.job_id)))

        def dispatch(self, job_id: str) -> None:
            self.worker.start()
            assert copying.wait(10)  # the finisher claimed the job and is copying
            raise Retryable("invoking the finisher failed; will retry: InternalError")

    dispatcher = InvokedButErrored()
    u.ctx.dispatcher = dispatcher
    poll(u.ctx)
    during = u.job(job.job_id)
    release.set()
    dispatcher.worker.join(10)

    assert (during.status, during.lease_owner, during.attempts) == (
        JobStatus.COPYING, "finisher-1", 0)
    assert outcomes == ["done"] and u.job(job.job_id).status is JobStatus.DONE


def test_an_overlapping_pollers_stale_check_error_leaves_a_live_copy_alone() -> None:
    """Two pollers read the same exporting job; one hands it off and a finisher claims
    it; the other's check then fails: that error must not touch the copy."""
    platform = ScriptedExport({"orders": ROWS})
    u = unit(platform, max_attempts=3)
    [job] = seed_run(u, JobStatus.EXPORTING, platform_job_id="export-1")
    stale = u.job(job.job_id)  # what the second poller read
    advance(u.ctx, stale)  # the first poller: ready, handed off
    claimed = claim(replace(u.ctx, worker="finisher-1"), u.job(job.job_id), u.clock(),
                    progressed=False, checkpoint=None)
    assert claimed is not None and claimed.status is JobStatus.COPYING

    def busy(collection: str, platform_job_id: str) -> Progress:
        raise Retryable("errcode -1: system busy")

    platform.check = busy  # type: ignore[method-assign]
    advance(u.ctx, stale)  # the second poller, with its stale read

    after = u.job(job.job_id)
    assert (after.version, after.lease_owner, after.attempts) == (claimed.version, "finisher-1", 0)


def test_a_steps_own_writes_still_take_its_error() -> None:
    """The step's own writes (the claim before starting an export, the hand-off before
    dispatching) are not someone else's: the error is counted on top of them."""
    platform = ScriptedExport({"orders": ROWS})
    u = unit(platform, max_attempts=3)
    [job] = seed_run(u)

    def refused(collection: str, job_id: str) -> str:
        raise Retryable("errcode -1: system busy")

    platform.start = refused  # type: ignore[method-assign]
    poll(u.ctx)  # claimed, then start failed
    started = u.job(job.job_id)
    assert (started.status, started.attempts, started.lease_owner) == (JobStatus.PENDING, 1, None)

    class Throttled:
        def dispatch(self, job_id: str) -> None:
            raise Retryable("invoking the finisher failed: throttled")

    u = unit(ScriptedExport({"orders": ROWS}), max_attempts=3)
    [ready] = seed_run(u, JobStatus.READY, expected_records=5)
    u.ctx.dispatcher = Throttled()
    advance(u.ctx, ready)  # saved its next check, then the dispatch failed
    assert u.job(ready.job_id).attempts == 1


# A job whose source left the config -----------------------------------------------------

class StrictPlatforms(FakePlatforms):
    """Like bootstrap.ConfiguredPlatforms: a source not in the config is a KeyError."""

    def __init__(self, platform: ScriptedPages, config: Config) -> None:
        super().__init__(platform, "paged")
        self._config = config

    def get(self, source: str) -> Any:
        self._config.source(source)
        return super().get(source)

    def kind(self, source: str) -> Any:
        self._config.source(source)
        return super().kind(source)


def test_a_ready_job_of_a_removed_source_fails_rather_than_loop_for_ever() -> None:
    platform = ScriptedPages({"events": [{"_id": "r0"}]})
    u = unit(platform, kind="paged", max_attempts=3)
    [job] = seed_run(u, JobStatus.READY)
    u.put(u.job(job.job_id).model_copy(update={"source": "gone"}))  # since removed
    u.ctx.platforms = StrictPlatforms(platform, u.ctx.config)

    for _ in range(20):  # a hand-off every copy lease: over 5 hours
        poll(u.ctx)
        for job_id in u.dispatcher.dispatched:
            with contextlib.suppress(KeyError):  # the finisher cannot look the source up
                finish(u.ctx, job_id, close_run=True)
        u.dispatcher.dispatched.clear()
        u.clock.advance(u.ctx.config.timing.copy_lease_seconds + 1)
    final = u.job(job.job_id)
    assert final.status is JobStatus.FAILED
    assert "source 'gone' is no longer in the config: put it back" in (final.error or "")


def test_a_live_copy_of_a_removed_source_is_left_to_its_finisher() -> None:
    u = unit(ScriptedPages({"events": [{"_id": "r0"}]}), kind="paged", max_attempts=3)
    [job] = seed_run(u, JobStatus.READY)
    copying = claim(u.ctx, u.job(job.job_id).model_copy(update={"source": "gone"}), u.clock(),
                    progressed=False, checkpoint=None)
    assert copying is not None
    advance(u.ctx, copying)
    assert u.job(job.job_id) == copying


# A ready job no finisher ever claims ----------------------------------------------------

UNCLAIMED_BOUND = timedelta(hours=12)  # timing.unclaimed_ready_hours' default


def test_a_ready_job_no_finisher_claims_fails_after_the_bound_and_its_run_closes_failed() -> None:
    u = unit(ScriptedExport({"orders": ROWS}))
    [job] = seed_run(u, JobStatus.READY, expected_records=5)
    first_hand_off = u.clock()

    final = polled_unclaimed(u, job.job_id, hours=30)

    assert final.status is JobStatus.FAILED
    lease = timedelta(seconds=u.ctx.config.timing.copy_lease_seconds + 1)
    assert final.finished_at is not None
    assert first_hand_off + UNCLAIMED_BOUND <= final.finished_at < first_hand_off + UNCLAIMED_BOUND + lease
    error = final.error or ""
    assert "no finisher claimed it in 12 hours" in error
    for what in ("finisher function's logs", "scf:InvokeFunction", "concurrency",
                 "timing.unclaimed_ready_hours"):
        assert what in error
    run = u.state.get_run(job.run_id)
    assert run is not None and run.status is RunStatus.FAILED
    [(notified, [told])] = u.notifier.sent
    assert notified.status is RunStatus.FAILED and told.error == error


def test_a_job_claimed_just_before_the_bound_is_copied() -> None:
    u = unit(ScriptedExport({"orders": ROWS}))
    [job] = seed_run(u, JobStatus.READY, expected_records=5)
    lease = u.ctx.config.timing.copy_lease_seconds + 1
    polled_unclaimed(u, job.job_id, hours=(UNCLAIMED_BOUND.total_seconds() - lease) / 3600)

    poll(u.ctx)  # the last hand-off before the bound: the finisher finally runs
    assert u.job(job.job_id).status is JobStatus.READY
    assert u.dispatcher.dispatched == [job.job_id]
    assert finish(u.ctx, job.job_id, close_run=True) == "done"
    run = u.state.get_run(job.run_id)
    assert run is not None and run.status is RunStatus.SUCCEEDED


def test_a_job_its_finisher_put_back_after_an_error_is_handed_out_as_before() -> None:
    platform = ScriptedExport({"orders": ROWS})
    u = unit(platform, max_attempts=3)
    [job] = seed_run(u, JobStatus.READY, expected_records=5)
    polled_unclaimed(u, job.job_id, hours=11)

    def flaky(collection: str, part: int) -> None:
        raise Retryable("download cut off")

    platform.on_open = flaky
    assert finish(u.ctx, job.job_id) == "retry"  # claimed at last, then put back
    platform.on_open = None
    again = polled_unclaimed(u, job.job_id, hours=11)  # 22 hours after the first hand-off

    assert again.status is JobStatus.READY and again.attempts == 1
    assert again.error == "download cut off"


def test_a_poller_back_after_hours_hands_the_job_out_once_more_before_failing_it() -> None:
    u = unit(ScriptedExport({"orders": ROWS}))
    [job] = seed_run(u, JobStatus.READY, expected_records=5)
    poll(u.ctx)  # handed out; then the poller itself stops for a day
    u.dispatcher.dispatched.clear()
    u.clock.advance(24 * 3600)

    poll(u.ctx)
    assert u.job(job.job_id).status is JobStatus.READY
    assert u.dispatcher.dispatched == [job.job_id]
    u.clock.advance(u.ctx.config.timing.copy_lease_seconds + 1)
    poll(u.ctx)  # that one went unclaimed too
    assert u.job(job.job_id).status is JobStatus.FAILED


@pytest.mark.parametrize("restore", [False, True])
def test_a_finisher_given_a_job_of_a_removed_source_answers_instead_of_crashing(
        restore: bool) -> None:
    platform = ScriptedPages({"events": [{"_id": "r0"}]})
    u = unit(platform, kind="paged")
    [job] = seed_run(u, JobStatus.READY)
    order = RestoreOrder(backup_run_id="b", backup_job_id="b.j", collection="events",
                         target="events_r", mode="new", file_type="json", records=1,
                         objects=[StoredObject(key="k", bytes=1, sha256="0" * 64, records=1)])
    gone = u.put(u.job(job.job_id).model_copy(update={
        "source": "gone", "restore": order if restore else None}))
    u.ctx.platforms = StrictPlatforms(platform, u.ctx.config)

    outcome = finish(u.ctx, job.job_id, close_run=True)

    assert "source 'gone' is no longer in the config: put it back" in outcome
    assert "or let the run fail" in outcome
    assert u.job(job.job_id) == gone  # left as it was: the poller counts its tries
