"""The finisher's half of a restore: claim the job with a lease, make sure the target
exists (created like the original when missing), then send the backup to the platform:
whole files to a platform that imports them (the poller then follows its import job), or
row by row to one that has no import (shared/service/restore/rows.py).

Progress lives in the job's checkpoint, saved compare-and-set after every step, so a
finisher that is killed or runs out of time is followed by one that carries on:
    created  the restore made the target (mode new)
    before   the target's record count before anything was written
    sent     one entry per backup object sent: the platform's import id ("" for none)
    sending  the object being sent; resent: those a try found marked but not in sent
             (sent again: the earlier import may have run, its id lost)
    verified how many backup objects were read through and found to match their
             manifest, all of them before the target is made and anything written
    mark     how far it had got when this finisher took it (a reclaim after progress is
             a resumption, not a failed try)
An object sent but not yet saved when a finisher died is sent again: the records of the
second import land on the same ids (upserted, or kept in mode insert), never twice.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from datetime import timedelta
from typing import Any, cast

from shared.domain.errors import BackupError, Fatal, Retryable, RetryLater, VerificationFailed
from shared.domain.jobs import Job, JobStatus, RestoreOrder, StoredObject
from shared.domain.records import counter_for
from shared.logs import log_context, redact
from shared.ports import FileImportPlatform, RestorablePlatform, RowImportPlatform, TargetShape
from shared.service.context import Budget, Context, fail, save
from shared.service.copying import CopyHold, CopyPaused, LeaseLost, claim, claimable
from shared.service.tries import retry_backoff

log = logging.getLogger(__name__)

def progress(job: Job) -> int:
    """How far a restore has got: objects sent plus rows written."""
    point = job.checkpoint or {}
    return (len(point.get("sent", [])) + int(point.get("rows", 0)) + int(point.get("object", 0))
            + int(point.get("verified", 0)))


def progressed(job: Job) -> bool:
    return progress(job) > int((job.checkpoint or {}).get("mark", 0))


def rebased(job: Job) -> dict[str, Any]:
    return {**(job.checkpoint or {}), "mark": progress(job)}


def finish_restore(ctx: Context, job: Job) -> str:
    """Send a ready restore's backup to its platform; the outcome, as `finish` gives it."""
    with log_context(run_id=job.run_id, job_id=job.job_id):
        now = ctx.clock()
        if not claimable(job, now):
            return str(job.status.value)
        claimed = claim(ctx, job, now, progressed=progressed(job), checkpoint=rebased(job))
        if claimed is None:
            return "claimed-elsewhere"
        hold = CopyHold(ctx, claimed)
        try:
            return _send(ctx, hold)
        except LeaseLost:
            log.warning("another finisher took this restore over; stopping here")
            return "claimed-elsewhere"
        except CopyPaused:
            save(ctx, hold.job.moved_to(JobStatus.READY, lease_owner=None, lease_until=None,
                                        next_check_at=ctx.clock()))
            return "paused"
        except Exception as exc:
            if not isinstance(exc, BackupError):
                log.exception("unexpected error while restoring")
                exc = Retryable(f"internal error: {type(exc).__name__}: {exc}")
            return _after_error(ctx, hold.job, exc)


def target_platform(ctx: Context, source: str, target: str, original: str) -> RestorablePlatform:
    """The source's platform, told what the restore's target is shaped like."""
    platform = ctx.platforms.get(source)
    if isinstance(platform, TargetShape):
        platform.restoring_into(target, original)
    return cast(RestorablePlatform, platform)


def _send(ctx: Context, hold: CopyHold) -> str:
    order = _order(hold.job)
    platform = target_platform(ctx, hold.job.source, order.target, order.collection)
    budget = Budget(ctx, ctx.config.timing.finish_budget_seconds)
    _check_objects(ctx, hold, order, budget)
    _prepare(ctx, hold, platform, order)
    if isinstance(platform, RowImportPlatform):
        from shared.service.restore.rows import write_rows

        point = write_rows(ctx, hold, platform, order, budget)
        done = save(ctx, hold.job.moved_to(
            JobStatus.DONE, checkpoint=point, progress_records=point["rows"], error=None,
            finished_at=ctx.clock(), lease_owner=None, lease_until=None))
        log.info("restore done", extra={k: point.get(k) for k in ("rows", "written", "kept")})
        return JobStatus.DONE.value if done else "claimed-elsewhere"
    _send_files(ctx, hold, cast(FileImportPlatform, platform), order, budget)
    saved = save(ctx, hold.job.moved_to(
        JobStatus.IMPORTING, lease_owner=None, lease_until=None, error=None,
        next_check_at=ctx.clock() + timedelta(seconds=ctx.config.timing.first_check_seconds)))
    log.info("restore sent; the platform is importing it")
    return JobStatus.IMPORTING.value if saved else "claimed-elsewhere"


def _order(job: Job) -> RestoreOrder:
    if job.restore is None:
        raise Fatal(f"job {job.job_id} is not a restore")
    return job.restore


def _prepare(ctx: Context, hold: CopyHold, platform: RestorablePlatform,
             order: RestoreOrder) -> None:
    """Once per restore: the target exists, and its record count before is known."""
    point = hold.job.checkpoint or {}
    if "before" in point:
        return
    created = bool(point.get("created"))
    if not platform.target_exists(order.target):
        log.info("creating the restore's target", extra={"target": order.target,
                                                        "like": order.collection})
        platform.create_target(order.target, like=order.collection)
        created = True
    before = platform.count(order.target)
    if order.mode == "new" and before and not created:
        raise Fatal(f"{hold.job.source}/{order.target} was empty when the restore was asked "
                    f"for but now holds {before} records; mode new writes only into a new or "
                    "empty collection. Start the restore again with another name")
    save_point(ctx, hold, created=created, before=before)


def _check_objects(ctx: Context, hold: CopyHold, order: RestoreOrder, budget: Budget) -> None:
    """Read every object through once, checking its size, SHA-256 and record count, before
    the target is made and anything written: an import the platform has accepted runs on
    its own (WeChat, MinApp), so a damaged part 2 found while sending it would leave part 1
    imported; rows written one by one (OneDB) cannot be taken back either. Streamed: a chunk at a time in memory. Saved object by object, so a
    finisher stopped mid-way carries on with the next object."""
    point = hold.job.checkpoint or {}
    if point.get("sent"):
        return  # sent by an earlier try: checked then, or by a finisher from before the check
    for index in range(int(point.get("verified", 0)), len(order.objects)):
        if index and budget.spent():
            raise CopyPaused()
        _check_object(ctx, order.objects[index], order.file_type)
        save_point(ctx, hold, verified=index + 1)


def _check_object(ctx: Context, stored: StoredObject, file_type: str) -> None:
    """Read a backup object through, a chunk at a time: its size, SHA-256 and record count
    against its manifest, before anything of the backup is written."""
    counter = counter_for(file_type)
    for chunk in checked(ctx, stored):
        counter.feed(chunk)
    if counter.total != stored.records:
        raise VerificationFailed(
            f"backup object {stored.key} holds {counter.total} records but its manifest "
            f"says {stored.records}; nothing was restored. Run `baas-backup verify` on its "
            "run, and restore from another run")


def _send_files(ctx: Context, hold: CopyHold, platform: FileImportPlatform,
                order: RestoreOrder, budget: Budget) -> None:
    for index, stored in enumerate(order.objects):
        sent = list((hold.job.checkpoint or {}).get("sent", []))
        if index < len(sent):
            continue  # sent by an earlier try
        if sent and budget.spent():
            raise CopyPaused()
        _mark_sending(ctx, hold, index)
        name = f"{hold.job.run_id}-{index + 1:04d}.{order.file_type}"
        log.info("sending a backup object to the platform",
                 extra={"key": stored.key, "bytes": stored.bytes, "part": index + 1})
        import_id = platform.send_import(order.target, cast(Any, order.mode),
                                         file_type=order.file_type, name=name,
                                         chunks=checked(ctx, stored), size=stored.bytes)
        save_point(ctx, hold, sent=[*sent, import_id or ""])


def _mark_sending(ctx: Context, hold: CopyHold, index: int) -> None:
    """Saved before object `index` goes: a later try that finds it marked but not in `sent`
    knows the platform may have imported it already (its import id was lost), so in mode
    insert that many more records may come back rejected as already there."""
    point = hold.job.checkpoint or {}
    resent = list(point.get("resent", []))
    if point.get("sending") == index and index not in resent:
        log.warning("sending a backup object again: an earlier try may have sent it",
                    extra={"part": index + 1})
        resent.append(index)
    save_point(ctx, hold, sending=index, resent=resent)


def checked(ctx: Context, stored: StoredObject) -> Iterator[bytes]:
    """The object's bytes from the bucket; once they are all through, raises
    VerificationFailed if their size or SHA-256 differ from the backup's, so a platform
    that reads the whole upload before starting its import never imports a damaged file."""
    digest = hashlib.sha256()
    size = 0
    for chunk in ctx.objects.iter_read(stored.key):
        digest.update(chunk)
        size += len(chunk)
        if size > stored.bytes:
            break
        yield chunk
    if size != stored.bytes or digest.hexdigest() != stored.sha256:
        raise VerificationFailed(
            f"backup object {stored.key} no longer matches its manifest (size {size} of "
            f"{stored.bytes}, or its SHA-256 differs); nothing more of it is restored. Run "
            "`baas-backup verify` on its run, and restore from another run")


def save_point(ctx: Context, hold: CopyHold, **changes: Any) -> None:
    """Progress saved on the job (compare-and-set), renewing the lease."""
    lease_until = ctx.clock() + timedelta(seconds=ctx.config.timing.copy_lease_seconds)
    hold.checkpoint(checkpoint={**(hold.job.checkpoint or {}), **changes},
                    lease_until=lease_until, next_check_at=lease_until)


def _after_error(ctx: Context, job: Job, exc: BackupError) -> str:
    now = ctx.clock()
    message = redact(str(exc))
    timing = ctx.config.timing
    tries = job.attempts + (0 if progressed(job) or isinstance(exc, RetryLater) else 1)
    if isinstance(exc, Fatal) or tries >= timing.max_attempts:
        fail(ctx, job, f"restore failed: {message}", now)
        return JobStatus.FAILED.value
    log.warning("restore step failed; will retry", extra={"reason": message})
    save(ctx, job.moved_to(
        JobStatus.READY, attempts=tries, error=message, lease_owner=None, lease_until=None,
        checkpoint=rebased(job), next_check_at=now + retry_backoff(ctx, job.attempts)))
    return "retry"
