"""The poller's half of a restore: hand a pending restore to the finisher, take back one
whose finisher stopped, and follow the platform's import jobs until they end, then compare
what the platform wrote with what the backup holds.

A platform that reports its imports (WeChat's databasemigratequeryinfo) must report every
record of the backup written; one that does not (MinApp e-mails the result) is checked by
counting the target's records until they reach the count before plus the backup's."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import cast

from shared.domain.jobs import Job, JobStatus, RestoreOrder
from shared.ports import FileImportPlatform, ImportProgress
from shared.service.context import Context, fail, save
from shared.service.restore.send import progressed, rebased

log = logging.getLogger(__name__)


def advance_restore(ctx: Context, job: Job, now: datetime) -> None:
    """One step of a restore's job, like `advance` for a backup's."""
    from shared.service.poll import hand_off

    if job.status is JobStatus.PENDING:
        hand_off(ctx, job.moved_to(JobStatus.READY, started_at=job.started_at or now), now)
    elif job.status is JobStatus.READY:
        hand_off(ctx, job, now)
    elif job.status is JobStatus.COPYING and job.lease_expired(now):
        _reclaim(ctx, job, now)
    elif job.status is JobStatus.IMPORTING:
        if job.deadline_at is not None and now >= job.deadline_at:
            fail(ctx, job, f"the platform's import did not end within "
                           f"{ctx.config.timing.export_deadline_minutes:g} minutes; "
                           f"{job.error or 'the platform never reported it ended'}", now)
        else:
            _check_imports(ctx, job, now)


def _reclaim(ctx: Context, job: Job, now: datetime) -> None:
    from shared.service.poll import hand_off

    tries = job.attempts + (0 if progressed(job) else 1)
    if tries >= ctx.config.timing.max_attempts:
        fail(ctx, job, f"restore did not finish after {tries} tries; last error: "
                       f"{job.error or 'the finisher stopped without a word (timeout?)'}", now)
        return
    log.warning("restore's finisher stopped; handing it out again")
    hand_off(ctx, job.moved_to(JobStatus.READY, attempts=tries, lease_owner=None,
                               lease_until=None, checkpoint=rebased(job)), now)


def _check_imports(ctx: Context, job: Job, now: datetime) -> None:
    order = job.restore
    assert order is not None
    platform = cast(FileImportPlatform, ctx.platforms.get(job.source))
    point = dict(job.checkpoint or {})
    ids = [i for i in point.get("sent", []) if i]
    results: list[ImportProgress] = [platform.check_import(order.target, i) for i in ids]
    failed = [r for r in results if r.state == "failed"]
    if failed:
        fail(ctx, job, f"the platform's import into {job.source}/{order.target} failed: "
                       + "; ".join(r.message or "no reason given" for r in failed), now)
        return
    if any(r.state == "running" for r in results):
        _later(ctx, job, now)
        return
    after = platform.count(order.target)
    problem = _shortfall(order, point, results, after, reported=len(ids) == len(point["sent"]))
    if problem is None:
        imported = sum(r.imported or 0 for r in results) if ids else after - int(point["before"])
        save(ctx, job.moved_to(
            JobStatus.DONE, progress_records=imported, finished_at=now, error=None,
            checkpoint={**point, "after": after, "imported": imported,
                        "rejected": sum(r.rejected or 0 for r in results)}))
        log.info("restore done", extra={"target": order.target, "imported": imported,
                                        "records_after": after})
    elif ids:  # the platform says it ended: what it wrote is final
        fail(ctx, job, problem, now)
    else:  # records still arriving (MinApp): look again, until the deadline
        save(ctx, job.model_copy(update={"error": problem}))
        _later(ctx, job, now)


def _shortfall(order: RestoreOrder, point: dict[str, object], results: list[ImportProgress],
               after: int, *, reported: bool) -> str | None:
    """Why the import does not (yet) hold the backup's records, or None."""
    before = int(cast(int, point["before"]))
    if reported:
        imported = sum(r.imported or 0 for r in results)
        rejected = sum(r.rejected or 0 for r in results)
        if imported != order.records:
            why = (" (in mode insert, a document whose _id is already there is rejected: "
                   "use mode upsert to overwrite it)" if rejected and order.mode == "insert" else "")
            return (f"the platform imported {imported} of the backup's {order.records} records "
                    f"into {order.target} and rejected {rejected}{why}")
        if order.mode == "new" and after != order.records:
            return (f"the platform reports {imported} records imported, but {order.target} "
                    f"holds {after}; check the collection")
        return None
    if order.mode == "upsert":
        return None if after >= order.records else (
            f"{order.target} holds {after} records, fewer than the backup's {order.records}")
    if after >= before + order.records:
        return None
    return (f"{order.target} holds {after} records; {before + order.records} expected "
            f"({before} before plus the backup's {order.records}). The platform reports imports "
            "by e-mail to the account that created them: check it for rejected records")


def _later(ctx: Context, job: Job, now: datetime) -> None:
    timing = ctx.config.timing
    elapsed = (now - (job.started_at or now)).total_seconds()
    seconds = min(timing.max_check_interval_seconds, max(timing.first_check_seconds, elapsed / 4))
    save(ctx, job.model_copy(update={"next_check_at": now + timedelta(seconds=seconds)}))
