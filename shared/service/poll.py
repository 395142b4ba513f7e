"""Poll: move every due job one step forward (start its export, check it, hand it to the
finisher, take back a copy whose lease ran out, give up past the deadline) within the
time budget, then close runs whose jobs all ended. Jobs not reached stay due."""

from __future__ import annotations

import logging
import time
from collections.abc import Hashable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, cast

from shared.domain.errors import BackupError, Forgotten, Retryable, RetryLater
from shared.domain.jobs import Job, JobStatus, Run, count_warning
from shared.logs import log_context, redact
from shared.ports import ExportPlatform, StateStore
from shared.service.close import RunsNotClosed, close_finished_runs
from shared.service.context import Budget, Context, fail, save
from shared.service.copiers import copier_for
from shared.service.lanes import run_in_lanes
from shared.service.outbox import resend
from shared.service.sweep import sweep_uploads
from shared.service.tries import restart_forgotten, retry_backoff
from shared.service.watch import RUNS_LOOKED_AT, watch

log = logging.getLogger(__name__)

START_CLAIM = timedelta(seconds=120)  # how long one poller owns a pending job while starting it
RETRY_LATER = timedelta(seconds=60)
# A job that went unclaimed past `timing.unclaimed_ready_hours` is handed out this many times
# at least before it fails: a poller that was itself stopped for hours gives the finisher
# one more chance first.
MIN_UNCLAIMED_HAND_OFFS = 2
# A tick may work up to `timing.poll_budget_seconds` while the timer fires every minute, so
# the next tick reads the same due jobs afresh and advances them first. A job this tick
# read longer ago than this is read again before its step: one the other tick advanced
# meanwhile costs the platform no second call (its write would lose the compare-and-set).
SNAPSHOT_FRESH = timedelta(seconds=30)


@dataclass
class PollSummary:
    advanced: int = 0
    closed_runs: list[str] = field(default_factory=list)


def poll(ctx: Context, limit: int = 2000) -> PollSummary:
    """Advance the due jobs, several at once: up to `timing.poll_concurrency` jobs, and per
    source and per platform type at most `timing.platform_calls_per_source` /
    `platform_calls_per_type` jobs (each makes at most one platform call at a time, so
    that caps the calls in flight). Every write stays a compare-and-set."""
    summary = PollSummary()
    timing = ctx.config.timing
    budget = Budget(ctx, timing.poll_budget_seconds)
    read_at = ctx.clock()
    summary.advanced = run_in_lanes(
        ctx.state.due_jobs(read_at, limit),
        lambda job: _advance_unless_moved(ctx, job, read_at),
        lanes=lambda job: _lanes(ctx, job),
        workers=timing.poll_concurrency,
        keep_going=lambda: not budget.spent(),
    )
    _close_sweep_and_watch(ctx, summary)
    return summary


def _advance_unless_moved(ctx: Context, job: Job, read_at: datetime) -> None:
    """Advance `job`, read at `read_at`; read again first when that was a while ago, and
    left alone when another poller (or a finisher) wrote it since."""
    if ctx.clock() - read_at >= SNAPSHOT_FRESH:
        with log_context(run_id=job.run_id, job_id=job.job_id):
            try:
                current = ctx.state.get_job(job.job_id)
            except Exception as exc:  # the state store's outage: the next tick tries again
                log.warning("could not read the job again; the next tick tries it",
                            extra={"reason": redact(str(exc))})
                return
            if current is None or current.version != job.version:
                log.info("job moved on since this tick read it; left to whoever moved it")
                return
        job = current
    advance(ctx, job)


def _close_sweep_and_watch(ctx: Context, summary: PollSummary) -> None:
    """The tick's housekeeping: runs close, abandoned uploads are swept, alerts no webhook
    accepted are sent again, the staleness alarm is checked. The staleness alarm runs whatever became of closing and
    sweeping (a run that cannot close must not silence it); their first failure is then
    raised, so the invocation still ends in error."""
    failures: list[Exception] = []
    started = ctx.clock()
    try:
        summary.closed_runs = close_finished_runs(ctx)
    except RunsNotClosed as exc:  # each run was logged; the others closed
        summary.closed_runs = exc.closed
        failures.append(exc)
    except Exception as exc:  # the state store's outage, say
        log.exception("could not close finished runs; the next tick tries again")
        failures.append(exc)
    try:
        sweep_uploads(ctx)
    except Exception as exc:
        log.exception("could not sweep abandoned uploads; the next tick tries again")
        failures.append(exc)
    recent = _recent_runs(ctx, failures)  # once, for both: a COS listing each
    if recent is not None:
        try:  # an alert first tried by a run closing above waits for the next tick
            resend(ctx, recent, page=RUNS_LOOKED_AT, tried_before=started)
        except Exception as exc:  # the alarm must still run
            log.exception("could not send undelivered alerts again; the next tick tries again")
            failures.append(exc)
    try:  # without the listing, watch() lists the runs itself: a blip may have passed
        watch(ctx, recent)
    except Exception as exc:
        log.exception("the staleness alarm could not run this tick (it judges from the recent "
                      "runs in the state store): check the state store; the next tick tries again")
        failures.append(exc)
    if failures:
        raise failures[0]


def _recent_runs(ctx: Context, failures: list[Exception]) -> list[Run] | None:
    """The newest RUNS_LOOKED_AT runs; None (the failure logged and collected) when the
    state store cannot list them, so the alarm still gets its own try."""
    try:
        return ctx.state.list_runs(limit=RUNS_LOOKED_AT)
    except Exception as exc:  # the state store's outage, say
        log.exception("could not list the recent runs; undelivered alerts wait for the next tick")
        failures.append(exc)
        return None


def _lanes(ctx: Context, job: Job) -> dict[Hashable, int]:
    timing = ctx.config.timing
    try:
        platform_type = ctx.config.source(job.source).type
    except KeyError:  # a source since removed from the config: advance() fails its job
        platform_type = "?"
    return {("source", job.source): timing.platform_calls_per_source,
            ("type", platform_type): timing.platform_calls_per_type}


class _StepState:
    """The state store as one step sees it: remembers the step's own last write of its
    job, so a failure's verdict lands on the job as this step left it, never on what
    another poller or a finisher made of it since."""

    def __init__(self, inner: StateStore, job: Job) -> None:
        self._inner = inner
        self.job = job

    def save_job(self, job: Job) -> Job | None:
        saved = self._inner.save_job(job)
        if saved is not None and saved.job_id == self.job.job_id:
            self.job = saved
        return saved

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def advance(ctx: Context, job: Job) -> None:
    """One step of one job; a failure is classified, never raised to the caller."""
    step = _StepState(ctx.state, job)
    ctx = replace(ctx, state=cast(StateStore, step))
    with log_context(run_id=job.run_id, job_id=job.job_id):
        now = ctx.clock()
        try:
            _check_source_configured(ctx, job, now)
            if job.restore is not None:
                from shared.service.restore.check import advance_restore

                advance_restore(ctx, job, now)
            elif job.status in (JobStatus.PENDING, JobStatus.EXPORTING) and _past_deadline(job, now):
                minutes = ctx.config.timing.export_deadline_minutes
                fail(ctx, job, _deadline_error(job, minutes), now)
            elif job.status is JobStatus.PENDING:
                _start_export(ctx, job, now)
            elif job.status is JobStatus.EXPORTING:
                _check_export(ctx, job, now)
            elif job.status is JobStatus.READY:
                hand_off(ctx, job, now)
            elif job.status is JobStatus.COPYING and job.lease_expired(now):
                _reclaim_copy(ctx, job, now)
        except BackupError as exc:
            on_error(ctx, step.job, exc, now)
        except Exception as exc:  # a bug must not stall the other jobs, nor stay silent
            log.exception("unexpected error while advancing job")
            on_error(ctx, step.job, Retryable(f"internal error: {type(exc).__name__}: {exc}"), now)


def _check_source_configured(ctx: Context, job: Job, now: datetime) -> None:
    """A job whose source was since removed from the config cannot go on (nor be copied:
    the finisher cannot look it up): its tries run out and it fails, saying so. A live
    copy is left to its finisher."""
    if job.status is JobStatus.COPYING and not job.lease_expired(now):
        return
    try:
        ctx.config.source(job.source)
    except KeyError:
        raise Retryable(
            f"source {job.source!r} is no longer in the config: put it back to go on with this "
            f"job (it fails after {ctx.config.timing.max_attempts} tries without it), or let "
            f"the run fail") from None


def _deadline_error(job: Job, minutes: float) -> str:
    """The deadline's verdict, with the last problem the job met: what kept it waiting
    (e.g. a status the platform does not document) is the lead to follow."""
    said = (f"export did not finish within {minutes:g} minutes "
            f"(platform job {job.platform_job_id or 'never started'})")
    return f"{said}; last problem seen: {job.error}" if job.error else said


def _past_deadline(job: Job, now: datetime) -> bool:
    return job.deadline_at is not None and now >= job.deadline_at


def _start_export(ctx: Context, job: Job, now: datetime) -> None:
    if not copier_for(ctx, job.source).exports:  # the copy reads the data itself
        hand_off(ctx, job.moved_to(JobStatus.READY, started_at=job.started_at or now,
                                   lease_owner=None, lease_until=None), now)
        return
    if job.lease_owner and not job.lease_expired(now):
        return  # another poller is starting it right now
    platform = cast(ExportPlatform, ctx.platforms.get(job.source))
    reason = platform.start_blocked()
    if reason:  # the platform said "no more exports for now" in this invocation: wait, one write
        save(ctx, job.model_copy(update={"next_check_at": now + RETRY_LATER, "error": redact(reason)}))
        return
    claim = _start_claim(ctx)
    claimed = ctx.state.save_job(job.model_copy(update={
        "lease_owner": ctx.worker, "lease_until": now + claim, "next_check_at": now + claim,
    }))
    if claimed is None:
        return  # lost the race to another poller
    file_type = platform.file_type  # what this start asks for; the copy follows it
    platform_job_id = platform.start(job.collection, job.job_id)
    log.info("export started", extra={"platform_job_id": platform_job_id,
                                      "collection": job.collection})
    save(ctx, claimed.moved_to(
        JobStatus.EXPORTING,
        platform_job_id=platform_job_id,
        file_type=file_type,
        started_at=claimed.started_at or now,
        next_check_at=now + timedelta(seconds=ctx.config.timing.first_check_seconds),
        lease_owner=None,
        lease_until=None,
    ))


def _start_claim(ctx: Context) -> timedelta:
    """How long this invocation owns a pending job while starting it. One start call may
    take minutes (each try waiting out the HTTP timeout, then retried) while the timer's
    next ticks overlap it: a claim that ran out first would have them start a second
    export. On SCF it lasts until START_CLAIM past this invocation's stop (`stop_by`:
    SCF's time limit less a margin under START_CLAIM), when SCF has ended the call."""
    if ctx.stop_by is None:
        return START_CLAIM
    return START_CLAIM + timedelta(seconds=max(0.0, ctx.stop_by - time.monotonic()))


def _check_export(ctx: Context, job: Job, now: datetime) -> None:
    assert job.platform_job_id is not None
    platform = cast(ExportPlatform, ctx.platforms.get(job.source))
    try:
        progress = platform.check(job.collection, job.platform_job_id)
    except Forgotten as exc:
        restart_forgotten(ctx, job, exc, now)
        return
    if progress.platform_job_id and progress.platform_job_id != job.platform_job_id:
        job = job.model_copy(update={"platform_job_id": progress.platform_job_id})
    if progress.state == "running":
        interval = check_interval(ctx, job, now)
        if progress.check_within_seconds is not None:
            interval = min(interval, timedelta(seconds=max(0.0, progress.check_within_seconds)))
        save(ctx, job.model_copy(update={"next_check_at": now + interval}))
    elif progress.state == "failed":
        fail(ctx, job, progress.message, now)
    else:
        log.info("export ready", extra={"expected_records": progress.expected_records,
                                        "parts": len(progress.part_records or [None])})
        ready = job.moved_to(JobStatus.READY, expected_records=progress.expected_records,
                             part_records=progress.part_records,
                             platform_collection_count=progress.platform_count)
        warning = count_warning(ready)
        if warning:
            log.warning("export count far from the platform's count", extra={"reason": warning})
        hand_off(ctx, ready, now)


def check_interval(ctx: Context, job: Job, now: datetime) -> timedelta:
    """Check often at first and ever less often as an export (or an import) drags on."""
    timing = ctx.config.timing
    elapsed = (now - (job.started_at or now)).total_seconds()
    seconds = min(timing.max_check_interval_seconds, max(timing.first_check_seconds, elapsed / 4))
    return timedelta(seconds=seconds)


def hand_off(ctx: Context, job: Job, now: datetime) -> None:
    """Give a ready job to the finisher; if it never claims it, the poller tries again every
    copy lease, and fails the job once no finisher claimed it for `unclaimed_ready_hours`."""
    if _unclaimed_too_long(ctx, job, now):
        fail(ctx, job, _unclaimed_error(ctx, job), now)
        return
    lease = timedelta(seconds=ctx.config.timing.copy_lease_seconds)
    saved = save(ctx, job.model_copy(update={
        "next_check_at": now + lease, "unclaimed_since": job.unclaimed_since or now,
        "unclaimed_hand_offs": job.unclaimed_hand_offs + 1}))
    if saved is not None:
        ctx.dispatcher.dispatch(saved.job_id)


def _unclaimed_too_long(ctx: Context, job: Job, now: datetime) -> bool:
    """Handed out, unclaimed, for longer than a throttled finisher can take. SCF keeps an
    async invocation that the function's concurrency turned away (432; 429 for burst) and
    retries it every minute for the function's 最长保留时间, 6 hours unless changed (错误类型与
    重试策略 > 异步调用, https://cloud.tencent.com/document/product/583/41138); the poller
    sends a fresh one every lease meanwhile. A finisher that has not claimed the job by the
    bound (twice that by default) crashes before claiming, or is never run."""
    bound = timedelta(hours=ctx.config.timing.unclaimed_ready_hours)
    return (job.unclaimed_since is not None and now - job.unclaimed_since >= bound
            and job.unclaimed_hand_offs >= MIN_UNCLAIMED_HAND_OFFS)


def _unclaimed_error(ctx: Context, job: Job) -> str:
    hours = ctx.config.timing.unclaimed_ready_hours
    return (f"handed to the finisher {job.unclaimed_hand_offs} times but no finisher claimed it "
            f"in {hours:g} hours: check the finisher function's logs (a package that fails to "
            "load or crashes on start claims nothing), that the poller's role may invoke it "
            "asynchronously (scf:InvokeFunction on dispatch.finisher_function) and its async "
            "invocations reach it, and the finisher's concurrency (SCF retries a throttled "
            "async invocation for its retention time, 6 hours unless changed); raise "
            "timing.unclaimed_ready_hours if your finisher is throttled for longer")


def _reclaim_copy(ctx: Context, job: Job, now: datetime) -> None:
    copier = copier_for(ctx, job.source)
    if copier.progressed(job):  # cut off (killed, timed out) after real progress: resume it
        log.warning("copy stopped after saving progress; handing it out again",
                    extra={"rows_so_far": job.progress_records})
        hand_off(ctx, job.moved_to(JobStatus.READY, lease_owner=None, lease_until=None,
                                   checkpoint=copier.rebased(job)), now)
        return
    if job.attempts + 1 >= ctx.config.timing.max_attempts:
        fail(ctx, job, f"copy did not finish after {job.attempts + 1} tries; last error: "
                       f"{job.error or 'the finisher stopped without a word (timeout?)'}", now)
        return
    log.warning("copy lease expired; handing the job out again")
    hand_off(ctx, job.moved_to(JobStatus.READY, attempts=job.attempts + 1,
                               lease_owner=None, lease_until=None), now)


def on_error(ctx: Context, job: Job, exc: Exception, now: datetime) -> None:
    """A failed step's verdict (wait, retry, fail), for the job as the step left it
    (`job`: what it read, or its own last write). A job that moved on since (a finisher
    claimed it, another poller advanced it) is left to whoever moved it."""
    message = redact(str(exc))
    current = ctx.state.get_job(job.job_id)
    if current is None or current.version != job.version:
        log.warning("job moved on while this step failed; its error is not applied",
                    extra={"reason": message,
                           "status": current.status.value if current else "gone"})
        return
    if current.status.terminal:
        return
    timing = ctx.config.timing
    if isinstance(exc, RetryLater):
        log.info("platform asks to wait", extra={"reason": message})
        save(ctx, current.model_copy(update={
            "next_check_at": now + RETRY_LATER, "error": f"{message}; waiting, asked again later",
            "lease_owner": None, "lease_until": None}))
    elif isinstance(exc, Retryable) and current.attempts + 1 < timing.max_attempts:
        log.warning("transient error; will retry", extra={"reason": message})
        save(ctx, current.model_copy(update={
            "attempts": current.attempts + 1, "error": message,
            "next_check_at": now + retry_backoff(ctx, current.attempts),
            "lease_owner": None, "lease_until": None}))
    else:
        fail(ctx, current, message, now)
