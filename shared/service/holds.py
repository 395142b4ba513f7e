"""Who may touch a backup: retention deleting it or moving it to the cold storage class
(where it cannot be read), or a restore reading it. Each side claims
the backup on its run's record with compare-and-set (`StateStore.save_run` writes only over
the version it read) and never over a live claim of the other side, so of a prune and a
restore racing for one backup exactly one wins:

- retention claims the backups it will delete (PRUNING) or move to the cold class
  (COOLING), then deletes or moves only those it won;
- a restore claims the backup it will read before its own run is recorded, and is
  refused when retention holds it.

A claim ends by itself: retention's after PRUNING_FOR (a prune interrupted after claiming
leaves the backup to the next prune, which claims it again and deletes it, or else to a
restore once the claim is over); a restore's when its run ends, or, when its run was never
recorded (the request died between claiming and recording), after RECORDING_WITHIN. Its
holder also releases it (`release`) once done: moving ended, a restore ended, so that
the record does not keep claims that no longer hold.

A restore also claims the collection it writes into (`claim_target`), so that two
restores never write into one collection at once: on a record of its own per platform
source and target (a Run of operation "restore-target", created idempotently under a key
made from the two, so every starter finds the same one), with the same compare-and-set.
Only one live restore holds it; the claim ends as a restore's claim on a backup does."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from datetime import datetime, timedelta

from shared.domain.jobs import COOLING, PRUNING, Hold, Run, RunStatus
from shared.service.context import Context

PRUNING_FOR = timedelta(hours=6)
# A prune deletes a backup only this soon after claiming it: deleting one backup's objects
# takes seconds, so a slow prune never deletes after its claim ended.
DELETE_WITHIN = PRUNING_FOR / 2
RECORDING_WITHIN = timedelta(minutes=10)  # a restore records its run right after claiming


def claim(ctx: Context, run_id: str, job_ids: Iterable[str], by: str) -> set[str] | None:
    """Claim backups `job_ids` of backup run `run_id` for `by` (PRUNING, COOLING, or a
    restore's run id); the ids won: all but those a live claim of the other side holds;
    None when the run is gone. Claims that ended are dropped from the record as it is
    written."""
    wanted = set(job_ids)
    while True:
        run = ctx.state.get_run(run_id)
        if run is None:
            return None
        now = ctx.clock()
        live = [h for h in run.holds if _alive(ctx, h, now)]
        won = wanted - {h.job_id for h in live if by_retention(h.by) != by_retention(by)}
        if not won:
            return set()
        holds = [h for h in live if not (h.by == by and h.job_id in won)]
        holds += [Hold(job_id=job_id, by=by, at=now) for job_id in sorted(won)]
        if ctx.state.save_run(run.model_copy(update={"holds": holds})) is not None:
            return won
        # The run moved since it was read (the other side's claim, a verify): read it again.


def release(ctx: Context, run_id: str, by: str, job_ids: Iterable[str] | None = None) -> None:
    """End `by`'s claims on backups `job_ids` (all of its claims when None) of backup run
    `run_id`, dropping claims that ended as well; compare-and-set, like `claim`, so a claim
    written meanwhile by anyone else is kept."""
    ids = None if job_ids is None else set(job_ids)
    while True:
        run = ctx.state.get_run(run_id)
        if run is None:
            return
        now = ctx.clock()
        holds = [h for h in run.holds if _alive(ctx, h, now)
                 and not (h.by == by and (ids is None or h.job_id in ids))]
        if holds == run.holds:
            return  # nothing to drop: no write
        if ctx.state.save_run(run.model_copy(update={"holds": holds})) is not None:
            return


def claim_target(ctx: Context, source: str, target: str, by: str) -> str | None:
    """Claim collection `target` of `source` for restore `by` (its run id); None when won,
    else the run id of the live restore that holds it. Claims that ended are dropped."""
    record = _target_record(ctx, source, target)
    while True:
        now = ctx.clock()
        live = [h for h in record.holds if _alive(ctx, h, now)]
        holder = next((h.by for h in live if h.by != by), None)
        if holder is not None:
            return holder
        saved = ctx.state.save_run(record.model_copy(
            update={"holds": [Hold(job_id=TARGET, by=by, at=now)]}))
        if saved is not None:
            return None
        # Another start claimed or released it since it was read: read it again.
        record = ctx.state.get_run(record.run_id) or _target_record(ctx, source, target)


def release_target(ctx: Context, source: str, target: str, by: str) -> None:
    """End restore `by`'s claim on `target` of `source` (compare-and-set, like `release`)."""
    record = ctx.state.find_run(_target_key(source, target))
    if record is not None:
        release(ctx, record.run_id, by)


TARGET = "target"  # Hold.job_id of a claim on a restore target: the record is the target's


def _target_key(source: str, target: str) -> str:
    digest = hashlib.sha256(f"{source}\x00{target}".encode()).hexdigest()
    return f"restore-target:{digest}"


def _target_record(ctx: Context, source: str, target: str) -> Run:
    """The target's claim record, made by whichever start comes first. Its run id sorts
    before every real run's (they start with the year), so listings of the newest runs
    never meet it; it is never open, so the poller never reads it."""
    key = _target_key(source, target)
    now = ctx.clock()
    record = Run(run_id=f"0-{key.replace(':', '-')}"[:64], operation="restore-target",
                 idempotency_key=key, trigger="restore", status=RunStatus.SUCCEEDED,
                 sources=[source], collections={source: [target]}, created_at=now,
                 finished_at=now)
    return ctx.state.create_run(record, [])[0]


def by_retention(by: str) -> bool:
    """Whether a claim is retention's (deleting or moving), not a restore's."""
    return by in (PRUNING, COOLING)


def _alive(ctx: Context, hold: Hold, now: datetime) -> bool:
    if by_retention(hold.by):
        return now - hold.at < PRUNING_FOR
    restore = ctx.state.get_run(hold.by)
    if restore is None:
        return now - hold.at < RECORDING_WITHIN
    return restore.status is RunStatus.RUNNING
