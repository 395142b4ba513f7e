"""Finish: claim a ready job with a lease, copy its data into the bucket with the
platform kind's copier, verify it, write its manifest, mark it done."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor

from shared.domain.errors import BackupError, Fatal, Forgotten, Retryable, RetryLater
from shared.domain.jobs import Job, JobResult, JobStatus
from shared.domain.layout import data_key
from shared.domain.manifest import JobManifest, as_document
from shared.logs import log_context, redact
from shared.ports import RestoreCaveats
from shared.retry import with_retries
from shared.service.context import Context, fail, save
from shared.service.copiers import copier_for
from shared.service.copying import (
    Copier,
    CopyHold,
    CopyPaused,
    LeaseLost,
    backing_off,
    claim,
    claimable,
)
from shared.service.suspicion import Verdict, judge, newest_good
from shared.service.tries import restart_forgotten, retry_backoff

log = logging.getLogger(__name__)


def finish(ctx: Context, job_id: str, *, close_run: bool = False) -> str:
    """Copy a ready job's data into the bucket, verify it, write its manifest; the outcome.
    With `close_run`, a job that ended closes its run when no other job is open (the
    finisher does, so a run's notification does not wait for the poller's next tick)."""
    job = ctx.state.get_job(job_id)
    if job is None:
        log.warning("finisher got an unknown job", extra={"job_id": job_id})
        return "unknown"
    missing = _source_missing(ctx, job)
    if missing is not None:
        return missing
    if job.restore is not None:
        from shared.service.restore.send import finish_restore

        outcome = finish_restore(ctx, job)
    else:
        outcome = _finish(ctx, job)
    if close_run and outcome in (JobStatus.DONE.value, JobStatus.FAILED.value):
        from shared.service.close import close_finished_runs

        close_finished_runs(ctx, job.run_id)
    return outcome


def _source_missing(ctx: Context, job: Job) -> str | None:
    """Why a job to copy cannot be, its source having left the config since it was
    dispatched; None when it is there. The job is left as it is: the poller counts its
    tries and fails it after the last (poll._check_source_configured)."""
    if not claimable(job, ctx.clock()):
        return None  # nothing to copy: its status answers
    try:
        ctx.config.source(job.source)
    except KeyError:
        outcome = (f"source {job.source!r} is no longer in the config: put it back to go on "
                   "with this job, or let the run fail (the poller fails the job after "
                   f"{ctx.config.timing.max_attempts} tries)")
        log.warning("finisher got a job of a source no longer configured",
                    extra={"source": job.source, "reason": outcome})
        return outcome
    return None


def _finish(ctx: Context, job: Job) -> str:
    with log_context(run_id=job.run_id, job_id=job.job_id):
        now = ctx.clock()
        if not claimable(job, now):
            log.info("nothing to copy" if not backing_off(job, now) else
                     "a late hand-off: the job waits out its backoff, then the poller hands "
                     "it out again", extra={"status": job.status.value})
            return str(job.status.value)
        copier = copier_for(ctx, job.source)
        # The platform's client (its module, an HTTP client) is built while the claim's
        # writes travel: CPU work beside a wait. A build that fails fails again in the copy,
        # where its error is handled.
        with ThreadPoolExecutor(max_workers=1) as side:
            side.submit(ctx.platforms.get, job.source)
            claimed = claim(ctx, job, now, progressed=copier.progressed(job),
                            checkpoint=copier.rebased(job))
        if claimed is None:
            return "claimed-elsewhere"
        log.info("copy started", extra={"collection": job.collection})
        hold = CopyHold(ctx, claimed)
        try:
            result, verdict = with_retries(lambda: _copy(ctx, copier, hold), attempts=2,
                                  base_seconds=ctx.config.timing.retry_base_seconds)
        except LeaseLost:
            log.warning("another finisher took this job over; stopping here")
            return "claimed-elsewhere"
        except Forgotten as exc:  # the export vanished before we could copy it: one more try
            restarted = restart_forgotten(ctx, hold.job, exc, ctx.clock())
            return "restarted" if restarted else JobStatus.FAILED.value
        except CopyPaused:  # out of time; the poller hands it to the next invocation
            save(ctx, hold.job.moved_to(JobStatus.READY, lease_owner=None, lease_until=None,
                                        next_check_at=ctx.clock()))
            return "paused"
        except Exception as exc:
            if not isinstance(exc, BackupError):
                log.exception("unexpected error while copying")
                exc = Retryable(f"internal error: {type(exc).__name__}: {exc}")
            if isinstance(exc, Fatal):
                fail(ctx, hold.job, str(exc), ctx.clock())
                return JobStatus.FAILED.value
            return _release_after_error(ctx, copier, hold.job, exc)
        done = save(ctx, hold.job.moved_to(JobStatus.DONE, result=result, error=None,
                                           finished_at=ctx.clock(), lease_owner=None,
                                           lease_until=None, suspect=verdict.suspect,
                                           previous_records=verdict.previous_records))
        log.info("copy done", extra={"key": result.key, "bytes": result.bytes,
                                     "records": result.records, "sha256": result.sha256})
        if verdict.suspect:
            log.warning("suspect backup: far fewer records than the last good backup",
                        extra={"collection": job.collection, "records": result.records,
                               "previous_records": verdict.previous_records})
        return JobStatus.DONE.value if done else "claimed-elsewhere"


def _copy(ctx: Context, copier: Copier, hold: CopyHold) -> tuple[JobResult, Verdict]:
    """The verified copy, and how its record count compares with the last good backup."""
    job = hold.job
    platform = ctx.platforms.get(job.source)
    file_type = job.export_file_type(platform.file_type)  # the config may have changed since
    base = data_key(ctx.config.destination.prefix, job.run_id, job.source, job.collection,
                    file_type)
    # The newest good backup (state reads only, independent of the copy) is looked up
    # while the data streams, so the lookup adds nothing to the invocation's time.
    # Asked before the copy: a lookup that fails then costs no copied byte.
    caveats = (platform.restore_caveats(job.collection) if isinstance(platform, RestoreCaveats)
               else [])
    with ThreadPoolExecutor(max_workers=1) as side:
        previous = side.submit(newest_good, ctx, job)
        result = copier.copy(ctx, hold, base)
        verdict = judge(ctx, previous.result(), result.records)
    manifest = JobManifest.of(hold.job, result, platform=ctx.config.source(job.source).type,
                              file_type=file_type, copied_at=ctx.clock(),
                              suspect=verdict.suspect, previous_records=verdict.previous_records,
                              restore_caveats=caveats)
    ctx.objects.put_json(result.manifest_key, as_document(manifest))
    return result, verdict


def _release_after_error(ctx: Context, copier: Copier, job: Job, exc: Exception) -> str:
    """Back to ready for a later try, or failed after the last one; the outcome."""
    now = ctx.clock()
    message = redact(str(exc))
    # Neither a copy that got further nor a platform asking to wait is a failed try.
    tries = job.attempts + (0 if copier.progressed(job) or isinstance(exc, RetryLater) else 1)
    if tries >= ctx.config.timing.max_attempts:
        fail(ctx, job, f"copy failed after {job.attempts + 1} tries: {message}", now)
        return JobStatus.FAILED.value
    log.warning("copy failed; will retry", extra={"reason": message})
    # Backed off from the poller's one-minute tick, as a failed poller step: a backoff of
    # seconds would have every tick try again (tries.retry_backoff).
    save(ctx, job.moved_to(
        JobStatus.READY, attempts=tries, error=message, lease_owner=None,
        lease_until=None, checkpoint=copier.rebased(job),
        next_check_at=now + retry_backoff(ctx, job.attempts),
    ))
    return "retry"
