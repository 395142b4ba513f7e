"""The poller's half of a restore: hand a pending restore to the finisher, take back one
whose finisher stopped, and follow the platform's import jobs until they end, then compare
what the platform wrote with what the backup holds.

A platform that reports its imports (WeChat's databasemigratequeryinfo) must report every
record of the backup written; one that does not (MinApp e-mails the result) is checked by
counting the target's records until they reach the count before plus the backup's."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any, cast

from shared.domain.jobs import Job, JobStatus, RestoreOrder
from shared.ports import FileImportPlatform, ImportProgress
from shared.service.context import Context, fail, save
from shared.service.restore.send import progressed, rebased, target_platform

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
    platform = cast(FileImportPlatform,
                    target_platform(ctx, job.source, order.target, order.collection))
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
    reported = (sum(r.imported or 0 for r in results), sum(r.rejected or 0 for r in results))
    outcome, note = _judge(order, point, after, reported if len(ids) == len(point["sent"]) else None,
                           overwrite="upsert" in platform.restore_modes)
    if outcome == "done":
        imported = reported[0] if ids else after - int(point["before"])
        save(ctx, job.moved_to(
            JobStatus.DONE, progress_records=imported, finished_at=now, error=None,
            checkpoint={**point, "after": after, "imported": imported, "rejected": reported[1],
                        **({"note": note} if note else {})}))
        log.info("restore done", extra={"target": order.target, "imported": imported,
                                        "records_after": after, "note": note})
    elif outcome == "fail":
        fail(ctx, job, note or "the import fell short", now)
    else:  # records still arriving (MinApp): look again, until the deadline
        seen = {} if point.get("seen") == after else {"seen": after, "seen_at": now.isoformat()}
        save(ctx, job.model_copy(update={"error": note, "checkpoint": {**point, **seen}}))
        _later(ctx, job, now)


def _judge(order: RestoreOrder, point: dict[str, Any], after: int,
           reported: tuple[int, int] | None, *, overwrite: bool = True) -> tuple[str, str | None]:
    """done | wait | fail, and what to say. A platform that reports its import must have
    written every record (in mode insert, the rejected ones may be records already there,
    which insert keeps); one that does not is judged by counting the target."""
    before = int(point["before"])
    if reported is not None:
        imported, rejected = reported
        if imported == order.records:
            if order.mode == "new" and after != order.records:
                return "fail", (f"the platform reports {imported} records imported, but "
                                f"{order.target} holds {after}; check the collection")
            return "done", None
        # a rejection for an id already there needs a record there: one there before, or
        # one an import of a part sent twice (its first import id lost) put there
        twice = sum(order.objects[i].records for i in point.get("resent", [])
                    if i < len(order.objects))
        if order.mode == "insert" and before + twice and imported + rejected == order.records:
            held = f"{before} before the import" + (
                f" and {twice} put there by parts sent twice" if twice else "")
            if rejected > before + twice:
                return "fail", (f"the platform imported {imported} of the backup's "
                                f"{order.records} records into {order.target} and rejected "
                                f"{rejected}, but {order.target} held only {held}: at most "
                                "that many can have been kept as already there. Check the "
                                "import's result in the platform's console for why the others "
                                "were rejected")
            return "done", (f"{rejected} of the backup's records were not inserted: records "
                            f"with their ids were already in {order.target} ({held}) and "
                            "insert keeps them (mode upsert overwrites them)")
        why = (" (in mode insert, a record whose id is already there is rejected: use mode "
               "upsert to overwrite it)" if rejected and order.mode == "insert" else "")
        return "fail", (f"the platform imported {imported} of the backup's {order.records} "
                        f"records into {order.target} and rejected {rejected}{why}")
    if after >= before + order.records or (order.mode == "upsert" and after >= order.records):
        return "done", None
    if order.mode == "insert" and before:
        return _counted_insert(order, point, before, after, overwrite)
    return "wait", _short(order, before, after)


def _counted_insert(order: RestoreOrder, point: dict[str, Any], before: int, after: int,
                    overwrite: bool) -> tuple[str, str | None]:
    """Insert into a target that held records, on a platform that reports nothing: the
    count may stop short of before + records (a record whose id is there is kept). Only a
    count that rose since the import was sent, then held at the next check, shows the
    import ran: MinApp's import is a task that runs later (导入或导出操作并非实时,
    ifanrx/hydrogen-sdk-doc dashboard/basic-services/schema.md), so an unmoved count may be
    a task not yet run as well as a backup whose every id was there; it waits for the
    deadline, which fails it saying so."""
    if after > before and point.get("seen") == after:
        return "done", (f"{order.target} went from {before} to {after} records and stopped "
                        "there: backup records whose ids were already in it are kept as they "
                        "were (the platform reports its import by e-mail only)")
    if after != before:
        return "wait", _short(order, before, after)
    how = ("use mode upsert to overwrite them" if overwrite else
           "the platform cannot overwrite them (no mode upsert): restore into a new table "
           "(mode new) to get the backup's version of them")
    return "wait", (f"{order.target} still holds the {before} records it held before the "
                    "import was sent: either the platform's import task has not run yet, or "
                    "every record of the backup has an id already in it (insert keeps those; "
                    f"{how}). The platform reports imports by e-mail to the account that "
                    "created them: check it")


def _short(order: RestoreOrder, before: int, after: int) -> str:
    return (f"{order.target} holds {after} records; {before + order.records} expected "
            f"({before} before plus the backup's {order.records}). The platform reports "
            "imports by e-mail to the account that created them: check it for rejected records")


def _later(ctx: Context, job: Job, now: datetime) -> None:
    from shared.service.poll import check_interval

    save(ctx, job.model_copy(update={"next_check_at": now + check_interval(ctx, job, now)}))
