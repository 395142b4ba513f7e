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
the record does not keep claims that no longer hold."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta

from shared.domain.jobs import COOLING, PRUNING, Hold, RunStatus
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
