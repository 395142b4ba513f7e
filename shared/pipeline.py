"""The use cases: start a run, poll its jobs forward, finish (copy) a ready job.

Every step is idempotent and every write is compare-and-set, so timers that overlap,
SCF's automatic retries and resent HTTP requests cannot start, copy or close twice.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from shared import paged
from shared.config import Config
from shared.dispatch import Dispatcher
from shared.errors import Fatal, Forgotten, PlatformError, Retryable, RetryLater, VerificationFailed
from shared.jobs import (
    Job,
    JobResult,
    JobStatus,
    Run,
    RunStatus,
    StoredObject,
    backoff,
    job_id_for,
    run_id_for,
    utcnow,
)
from shared.layout import CONTENT_TYPES, data_key, manifest_key, part_key, run_manifest_key
from shared.logs import log_context, redact
from shared.notify import notify_run
from shared.providers.base import Provider, with_retries
from shared.records import counter_for
from shared.sink import ObjectStore, StreamSummary
from shared.state.base import StateStore

log = logging.getLogger(__name__)

MANIFEST_FORMAT = 1
START_CLAIM = timedelta(seconds=120)  # how long one poller owns a pending job while starting it
RETRY_LATER = timedelta(seconds=60)


@dataclass
class Context:
    config: Config
    store: StateStore
    sink: ObjectStore
    provider_for: Callable[[str], Provider]
    dispatcher: Dispatcher
    clock: Callable[[], datetime] = utcnow
    worker: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}")


class UnknownSource(ValueError):
    pass


# start ---------------------------------------------------------------------------
def start_run(
    ctx: Context,
    *,
    idempotency_key: str,
    trigger: str,
    sources: list[str] | None = None,
    collections: dict[str, list[str]] | None = None,
) -> tuple[Run, bool]:
    """Record a run and its jobs once per idempotency key, then start what can start
    within the time budget; the poller starts the rest."""
    chosen = _choose_sources(ctx.config, sources or (list(collections) if collections else None))
    targets, discovery = _discover(ctx, chosen, collections)
    now = ctx.clock()
    run_id = run_id_for(idempotency_key, now)
    deadline = now + timedelta(minutes=ctx.config.timing.export_deadline_minutes)
    jobs = [
        Job(
            job_id=job_id_for(run_id, name, target),
            run_id=run_id,
            source=name,
            target=target,
            next_check_at=now,
            deadline_at=deadline,
            created_at=now,
            updated_at=now,
        )
        for name in chosen
        for target in targets[name]
    ]
    run = Run(run_id=run_id, idempotency_key=idempotency_key, trigger=trigger,
              sources=chosen, created_at=now, discovery=discovery)
    run, created = ctx.store.create_run(run, jobs)
    with log_context(run_id=run.run_id):
        if not created:
            log.info("run already recorded for this request; nothing new started")
            return run, False
        log.info("run recorded", extra={"jobs": len(jobs), "sources": chosen})
        budget = _Budget(ctx, ctx.config.timing.start_budget_seconds)
        for job in ctx.store.list_jobs(run.run_id):
            if budget.spent():
                log.info("start budget spent; the poller starts the remaining exports")
                break
            if job.status is JobStatus.PENDING:
                _advance(ctx, job)
    return run, True


def _discover(
    ctx: Context, chosen: list[str], collections: dict[str, list[str]] | None
) -> tuple[dict[str, list[str]], dict[str, dict[str, Any]]]:
    """Each source's targets for this run, and what discovery found (for the run manifest).
    A source whose collections cannot be listed gets no jobs: its error is recorded on the
    run, which then ends failed, while the other sources are backed up."""
    targets: dict[str, list[str]] = {}
    discovery: dict[str, dict[str, Any]] = {}
    for name in chosen:
        try:
            targets[name] = _choose_targets(ctx, name, (collections or {}).get(name))
        except PlatformError as exc:
            message = redact(str(exc))
            log.error("could not list the source's collections", extra={"source": name,
                                                                        "reason": message})
            targets[name], discovery[name] = [], {"error": message}
            continue
        found = ctx.provider_for(name).discovery()
        if found is not None:
            discovery[name] = found
    return targets, discovery


def _choose_targets(ctx: Context, source: str, wanted: list[str] | None) -> list[str]:
    return _subset(ctx.provider_for(source).targets(), wanted, lambda unknown, available: (
        f"source {source!r} has no collection(s) {unknown}; it backs up: {available}"))


def _subset(available: list[str], wanted: list[str] | None,
            complaint: Callable[[str, str], str]) -> list[str]:
    """`wanted` in the order of `available`, or all of it; a name not available is an error."""
    if not wanted:
        return available
    unknown = sorted(set(wanted) - set(available))
    if unknown:
        raise UnknownSource(complaint(", ".join(unknown), ", ".join(available)))
    return [name for name in available if name in wanted]


class _Budget:
    """Wall-clock allowance of one invocation, so a function ends before SCF's timeout."""

    def __init__(self, ctx: Context, seconds: float) -> None:
        self._ctx = ctx
        self._until = ctx.clock() + timedelta(seconds=seconds)

    def spent(self) -> bool:
        return self._ctx.clock() >= self._until


def _choose_sources(config: Config, names: list[str] | None) -> list[str]:
    return _subset([s.name for s in config.sources], names, lambda unknown, available: (
        f"unknown source(s): {unknown}; configured sources are: {available}"))


# poll ----------------------------------------------------------------------------
@dataclass
class PollSummary:
    advanced: int = 0
    closed_runs: list[str] = field(default_factory=list)


def poll(ctx: Context, limit: int = 500) -> PollSummary:
    """Move every due job one step forward within the time budget, then close runs
    whose jobs all ended. Jobs not reached stay due for the next tick."""
    summary = PollSummary()
    budget = _Budget(ctx, ctx.config.timing.poll_budget_seconds)
    for job in ctx.store.due_jobs(ctx.clock(), limit):
        if budget.spent():
            log.info("poll budget spent; the rest waits for the next tick")
            break
        _advance(ctx, job)
        summary.advanced += 1
    summary.closed_runs = close_finished_runs(ctx)
    return summary


def _advance(ctx: Context, job: Job) -> None:
    with log_context(run_id=job.run_id, job_id=job.job_id):
        now = ctx.clock()
        try:
            if job.status in (JobStatus.PENDING, JobStatus.EXPORTING) and _past_deadline(job, now):
                minutes = ctx.config.timing.export_deadline_minutes
                _fail(ctx, job, f"export did not finish within {minutes:g} minutes "
                                f"(platform job {job.remote_id or 'never started'})", now)
            elif job.status is JobStatus.PENDING:
                _start_export(ctx, job, now)
            elif job.status is JobStatus.EXPORTING:
                _check_export(ctx, job, now)
            elif job.status is JobStatus.READY:
                _hand_off(ctx, job, now)
            elif job.status is JobStatus.COPYING and job.lease_expired(now):
                _reclaim_copy(ctx, job, now)
        except PlatformError as exc:
            _on_platform_error(ctx, job, exc, now)
        except Exception as exc:  # a bug must not stall the other jobs, nor stay silent
            log.exception("unexpected error while advancing job")
            _on_platform_error(ctx, job, Retryable(f"internal error: {type(exc).__name__}: {exc}"), now)


def _past_deadline(job: Job, now: datetime) -> bool:
    return job.deadline_at is not None and now >= job.deadline_at


def _start_export(ctx: Context, job: Job, now: datetime) -> None:
    if paged.is_paged(ctx.provider_for(job.source)):  # pages the table itself: no export job
        _hand_off(ctx, job.moved_to(JobStatus.READY, started_at=job.started_at or now,
                                    lease_owner=None, lease_until=None), now)
        return
    if job.lease_owner and not job.lease_expired(now):
        return  # another poller is starting it right now
    reason = ctx.provider_for(job.source).start_blocked()
    if reason:  # the platform said "no more exports for now" in this invocation: wait, one write
        _save(ctx, job.model_copy(update={"next_check_at": now + RETRY_LATER, "error": redact(reason)}))
        return
    claimed = ctx.store.save_job(job.model_copy(update={
        "lease_owner": ctx.worker, "lease_until": now + START_CLAIM,
        "next_check_at": now + START_CLAIM,
    }))
    if claimed is None:
        return  # lost the race to another poller
    remote_id = ctx.provider_for(job.source).start(job.target, job.job_id)
    log.info("export started", extra={"platform_job_id": remote_id, "target": job.target})
    _save(ctx, claimed.moved_to(
        JobStatus.EXPORTING,
        remote_id=remote_id,
        started_at=claimed.started_at or now,
        next_check_at=now + timedelta(seconds=ctx.config.timing.first_check_seconds),
        lease_owner=None,
        lease_until=None,
    ))


def _check_export(ctx: Context, job: Job, now: datetime) -> None:
    assert job.remote_id is not None
    try:
        progress = ctx.provider_for(job.source).check(job.target, job.remote_id)
    except Forgotten as exc:
        log.warning("platform forgot the export; starting it again", extra={"reason": str(exc)})
        _save(ctx, job.moved_to(JobStatus.PENDING, remote_id=None, next_check_at=now,
                                error=redact(str(exc))))
        return
    if progress.remote_id and progress.remote_id != job.remote_id:
        job = job.model_copy(update={"remote_id": progress.remote_id})
    if progress.state == "running":
        _save(ctx, job.model_copy(update={"next_check_at": now + _check_interval(ctx, job, now)}))
    elif progress.state == "failed":
        _fail(ctx, job, progress.message, now)
    else:
        log.info("export ready", extra={"expected_records": progress.expected_records,
                                        "parts": len(progress.part_records or [None])})
        _hand_off(ctx, job.moved_to(JobStatus.READY, expected_records=progress.expected_records,
                                    part_records=progress.part_records), now)


def _check_interval(ctx: Context, job: Job, now: datetime) -> timedelta:
    """Check often at first and ever less often as an export drags on."""
    timing = ctx.config.timing
    elapsed = (now - (job.started_at or now)).total_seconds()
    seconds = min(timing.max_check_interval_seconds, max(timing.first_check_seconds, elapsed / 4))
    return timedelta(seconds=seconds)


def _hand_off(ctx: Context, job: Job, now: datetime) -> None:
    """Give a ready job to the finisher; if it never claims it, the poller tries again later."""
    lease = timedelta(seconds=ctx.config.timing.copy_lease_seconds)
    saved = _save(ctx, job.model_copy(update={"next_check_at": now + lease}))
    if saved is not None:
        ctx.dispatcher.dispatch(saved.job_id)


def _reclaim_copy(ctx: Context, job: Job, now: datetime) -> None:
    if paged.progressed(job):  # cut off (killed, timed out) after real progress: resume it
        log.warning("paged copy stopped after saving progress; handing it out again",
                    extra={"rows_so_far": job.progress_records})
        _hand_off(ctx, job.moved_to(JobStatus.READY, lease_owner=None, lease_until=None,
                                    checkpoint=paged.rebased(job)), now)
        return
    if job.attempts + 1 >= ctx.config.timing.max_attempts:
        _fail(ctx, job, f"copy did not finish after {job.attempts + 1} tries; last error: "
                        f"{job.error or 'the finisher stopped without a word (timeout?)'}", now)
        return
    log.warning("copy lease expired; handing the job out again")
    _hand_off(ctx, job.moved_to(JobStatus.READY, attempts=job.attempts + 1,
                                lease_owner=None, lease_until=None), now)


def _on_platform_error(ctx: Context, job: Job, exc: Exception, now: datetime) -> None:
    current = ctx.store.get_job(job.job_id) or job  # a claim may have bumped the version
    if current.status.terminal:
        return
    message = redact(str(exc))
    if isinstance(exc, RetryLater):
        log.info("platform asks to wait", extra={"reason": message})
        _save(ctx, current.model_copy(update={
            "next_check_at": now + RETRY_LATER, "error": message,
            "lease_owner": None, "lease_until": None}))
    elif isinstance(exc, Retryable) and current.attempts + 1 < ctx.config.timing.max_attempts:
        log.warning("transient error; will retry", extra={"reason": message})
        timing = ctx.config.timing
        _save(ctx, current.model_copy(update={
            "attempts": current.attempts + 1, "error": message,
            "next_check_at": now + backoff(current.attempts, timing.first_check_seconds,
                                           timing.max_check_interval_seconds),
            "lease_owner": None, "lease_until": None}))
    else:
        _fail(ctx, current, message, now)


def _fail(ctx: Context, job: Job, message: str, now: datetime) -> None:
    log.error("job failed", extra={"reason": redact(message), "target": job.target})
    _save(ctx, job.failed(redact(message), now))


def _save(ctx: Context, job: Job) -> Job | None:
    saved = ctx.store.save_job(job)
    if saved is None:
        log.info("job changed under us; leaving it to whoever changed it")
    return saved


# finish --------------------------------------------------------------------------
def finish(ctx: Context, job_id: str) -> str:
    """Copy a ready job's export into the bucket, verify it, write its manifest."""
    job = ctx.store.get_job(job_id)
    if job is None:
        log.warning("finisher got an unknown job", extra={"job_id": job_id})
        return "unknown"
    with log_context(run_id=job.run_id, job_id=job.job_id):
        now = ctx.clock()
        if job.status is not JobStatus.READY and not (
            job.status is JobStatus.COPYING and job.lease_expired(now)
        ):
            log.info("nothing to copy", extra={"status": job.status.value})
            return str(job.status.value)
        lease_until = now + timedelta(seconds=ctx.config.timing.copy_lease_seconds)
        claimed = ctx.store.save_job(job.moved_to(
            JobStatus.COPYING,
            lease_owner=ctx.worker,
            lease_until=lease_until,
            next_check_at=lease_until,
            attempts=job.attempts + (1 if job.status is JobStatus.COPYING
                                     and not paged.progressed(job) else 0),
            checkpoint=paged.rebased(job),
        ))
        if claimed is None:
            return "claimed-elsewhere"
        log.info("copy started", extra={"target": job.target})
        hold = CopyHold(ctx, claimed)
        try:
            result = with_retries(lambda: _copy(ctx, hold), attempts=2,
                                  base_seconds=ctx.config.timing.retry_base_seconds)
        except LeaseLost:
            log.warning("another finisher took this job over; stopping here")
            return "claimed-elsewhere"
        except Forgotten as exc:  # the export vanished before we could copy it: start over
            log.warning("platform forgot the export during the copy; starting it again",
                        extra={"reason": redact(str(exc))})
            _save(ctx, hold.job.moved_to(
                JobStatus.PENDING, remote_id=None, expected_records=None, part_records=None,
                checkpoint=None, lease_owner=None, lease_until=None, next_check_at=ctx.clock(),
                error=redact(str(exc))))
            return "restarted"
        except paged.CopyPaused:  # out of time; the poller hands it to the next invocation
            _save(ctx, hold.job.moved_to(JobStatus.READY, lease_owner=None, lease_until=None,
                                         next_check_at=ctx.clock()))
            return "paused"
        except Exception as exc:
            if not isinstance(exc, PlatformError):
                log.exception("unexpected error while copying")
                exc = Retryable(f"internal error: {type(exc).__name__}: {exc}")
            if isinstance(exc, Fatal):
                _fail(ctx, hold.job, str(exc), ctx.clock())
                return JobStatus.FAILED.value
            _release_after_error(ctx, hold.job, exc)
            return "retry"
        done = _save(ctx, hold.job.moved_to(JobStatus.DONE, result=result, error=None,
                                            finished_at=ctx.clock(), lease_owner=None,
                                            lease_until=None))
        log.info("copy done", extra={"key": result.key, "bytes": result.bytes,
                                     "records": result.records, "sha256": result.sha256})
        return JobStatus.DONE.value if done else "claimed-elsewhere"


class LeaseLost(Exception):
    """Another finisher took the job over; this one stops without touching it."""


class CopyHold:
    """A finisher's hold on the job it copies, following the job's stored version as
    checkpoints are written, so the final write is compare-and-set on the latest one."""

    def __init__(self, ctx: Context, job: Job) -> None:
        self._ctx = ctx
        self.job = job

    def checkpoint(self, **changes: Any) -> None:
        saved = self._ctx.store.save_job(self.job.model_copy(update=changes))
        if saved is None:
            raise LeaseLost(self.job.job_id)
        self.job = saved


def _release_after_error(ctx: Context, job: Job, exc: Exception) -> None:
    now = ctx.clock()
    message = redact(str(exc))
    # Neither a copy that got further (paged) nor a platform asking to wait is a failed try.
    tries = job.attempts + (0 if paged.progressed(job) or isinstance(exc, RetryLater) else 1)
    if tries >= ctx.config.timing.max_attempts:
        _fail(ctx, job, f"copy failed after {job.attempts + 1} tries: {message}", now)
        return
    log.warning("copy failed; will retry", extra={"reason": message})
    timing = ctx.config.timing
    _save(ctx, job.moved_to(
        JobStatus.READY, attempts=tries, error=message, lease_owner=None,
        lease_until=None, checkpoint=paged.rebased(job),
        next_check_at=now + backoff(job.attempts, timing.first_check_seconds,
                                    timing.max_check_interval_seconds),
    ))


def _copy(ctx: Context, hold: CopyHold) -> JobResult:
    """Copy every part not copied yet; parts already stored by an earlier try are kept."""
    job = hold.job
    provider = ctx.provider_for(job.source)
    base = data_key(ctx.config.destination.prefix, job.run_id, job.source, job.target,
                    provider.file_type)
    if paged.is_paged(provider):  # no export file: pages go straight into the object
        result = JobResult(manifest_key=manifest_key(base),
                           objects=[paged.copy_table(ctx, hold, provider, base)])
        ctx.sink.put_json(result.manifest_key,
                          _job_manifest(ctx, hold.job, result, provider.file_type))
        return result
    expected = job.part_records or [job.expected_records]
    stored = [StoredObject.model_validate(o) for o in (job.checkpoint or {}).get("copied", [])]
    for index in range(len(stored), len(expected)):
        key = base if len(expected) == 1 else part_key(base, index + 1)
        label = repr(job.target) if len(expected) == 1 else (
            f"part {index + 1} of {len(expected)} of {job.target!r}")
        stored.append(_copy_part(ctx, provider, job, part=index, key=key,
                                 expected=expected[index], label=label))
        if len(expected) > 1:
            hold.checkpoint(checkpoint={"copied": [o.model_dump() for o in stored]})
    result = JobResult(manifest_key=manifest_key(base), objects=stored)
    ctx.sink.put_json(result.manifest_key,
                      _job_manifest(ctx, hold.job, result, provider.file_type))
    return result


def _copy_part(ctx: Context, provider: Provider, job: Job, *, part: int, key: str,
               expected: int | None, label: str) -> StoredObject:
    counter = counter_for(provider.file_type)

    def counted() -> Iterator[bytes]:
        for chunk in provider.open(job.target, job.remote_id or "", part):
            counter.feed(chunk)
            yield chunk

    def verify(summary: StreamSummary) -> None:
        if expected is not None and counter.total != expected:
            raise VerificationFailed(
                f"record count mismatch for {label}: the platform reported {expected}, "
                f"the export file holds {counter.total}; not stored"
            )

    summary = ctx.sink.put_stream(key, counted(), content_type=CONTENT_TYPES[provider.file_type],
                                  before_commit=verify)
    return StoredObject(key=key, bytes=summary.bytes, sha256=summary.sha256,
                        records=counter.total, upload_parts=summary.parts)


def _job_manifest(ctx: Context, job: Job, result: JobResult, file_type: str) -> dict[str, Any]:
    source = ctx.config.source(job.source)
    return {
        "format": MANIFEST_FORMAT,
        "source": job.source,
        "platform": source.type,
        "collection": job.target,
        "run_id": job.run_id,
        "job_id": job.job_id,
        "platform_job_id": job.remote_id,
        "file_type": file_type,
        "object_key": result.key,
        "bytes": result.bytes,
        "sha256": result.sha256,
        "records": result.records,
        "platform_reported_records": job.expected_records,
        "objects": [o.model_dump(exclude={"upload_parts"}) for o in result.objects],
        "export_started_at": _iso(job.started_at),
        "copied_at": _iso(ctx.clock()),
    }


# close ---------------------------------------------------------------------------
def close_finished_runs(ctx: Context) -> list[str]:
    closed = []
    for run in ctx.store.open_runs():
        jobs = ctx.store.list_jobs(run.run_id)
        if not all(j.status.terminal for j in jobs):
            continue
        with log_context(run_id=run.run_id):
            if _close_run(ctx, run, jobs):
                closed.append(run.run_id)
    return closed


def _close_run(ctx: Context, run: Run, jobs: list[Job]) -> bool:
    now = ctx.clock()
    failed = [j for j in jobs if j.status is JobStatus.FAILED]
    unlisted = {s: d["error"] for s, d in run.discovery.items() if "error" in d}
    summary: dict[str, Any] = {
        "jobs": len(jobs),
        "done": len(jobs) - len(failed),
        "failed": len(failed),
        "bytes": sum(j.result.bytes for j in jobs if j.result),
        "records": sum(j.result.records for j in jobs if j.result),
    }
    if unlisted:
        summary["sources_not_listed"] = sorted(unlisted)
    status = RunStatus.SUCCEEDED if jobs and not failed and not unlisted else RunStatus.FAILED
    key = run_manifest_key(ctx.config.destination.prefix, run.run_id)
    ctx.sink.put_json(key, {
        "format": MANIFEST_FORMAT,
        "run_id": run.run_id,
        "trigger": run.trigger,
        "status": status.value,
        "started_at": _iso(run.created_at),
        "finished_at": _iso(now),
        "summary": summary,
        "discovery": run.discovery,  # per source: collections found and excluded, or the error
        "jobs": [_job_entry(j) for j in jobs],
    })
    saved = ctx.store.save_run(run.model_copy(update={
        "status": status, "finished_at": now, "manifest_key": key, "summary": summary}))
    if saved is None:
        return False
    notify_run(ctx.config.notify, saved, jobs,
               retry_base_seconds=ctx.config.timing.retry_base_seconds)
    if status is RunStatus.SUCCEEDED:
        log.info("run succeeded", extra=summary)
    else:
        log.error("run finished with failures", extra={
            **summary, "failures": {**{f"{j.source}/{j.target}": j.error for j in failed},
                                    **{f"{s}/*": error for s, error in unlisted.items()}}})
    return True


def _job_entry(job: Job) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "source": job.source,
        "collection": job.target,
        "status": job.status.value,
        "platform_job_id": job.remote_id,
        "attempts": job.attempts,
        "error": job.error if job.status is JobStatus.FAILED else None,
    }
    if job.result:
        entry.update(job.result.model_dump())
    return entry


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment else None
