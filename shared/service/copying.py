"""The copy strategies' common ground: the `Copier` protocol (export copy, paged copy),
the finisher's hold on the job it copies, and the signals a copy ends with."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

from shared.domain.jobs import Job, JobResult, JobStatus

if TYPE_CHECKING:
    from shared.service.context import Context


class LeaseLost(Exception):
    """Another finisher took the job over; this one stops without touching it."""


class CopyPaused(Exception):
    """The invocation's time budget is spent; the job goes back to ready and the next
    invocation resumes from the checkpoint. Not a failure."""


class CopyHold:
    """A finisher's hold on the job it copies, following the job's stored version as
    checkpoints are written, so the final write is compare-and-set on the latest one."""

    def __init__(self, ctx: Context, job: Job) -> None:
        self._ctx = ctx
        self.job = job

    def checkpoint(self, **changes: Any) -> None:
        saved = self._ctx.state.save_job(self.job.model_copy(update=changes))
        if saved is None:
            raise LeaseLost(self.job.job_id)
        self.job = saved


def claimable(job: Job, now: datetime) -> bool:
    """Ready (and not backing off), or copying under a lease that ran out (its finisher
    died or timed out)."""
    return (job.status is JobStatus.READY and not backing_off(job, now)) or (
        job.status is JobStatus.COPYING and job.lease_expired(now))


def backing_off(job: Job, now: datetime) -> bool:
    """A ready job a failed copy put back, not due again yet and not handed out since: an
    event for it is a late or repeated one (SCF retries an async invocation for up to its
    retention time, 6 hours by default: cloud.tencent.com/document/product/583/41138, 异步
    调用), which must not try it again ahead of its backoff. The poller hands it out when
    it is due."""
    return job.unclaimed_hand_offs == 0 and job.next_check_at > now


def claim(ctx: Context, job: Job, now: datetime, *, progressed: bool,
          checkpoint: dict[str, Any] | None) -> Job | None:
    """Take a claimable job for this finisher under a fresh lease (compare-and-set); None
    when another got it first. Taking over a dead finisher's copy that saved no progress
    counts as a try. A claim ends the count of unclaimed hand-offs."""
    lease_until = now + timedelta(seconds=ctx.config.timing.copy_lease_seconds)
    return ctx.state.save_job(job.moved_to(
        JobStatus.COPYING, lease_owner=ctx.worker, lease_until=lease_until,
        next_check_at=lease_until, checkpoint=checkpoint, unclaimed_since=None,
        unclaimed_hand_offs=0,
        attempts=job.attempts + (1 if job.status is JobStatus.COPYING and not progressed else 0)))


class Copier(Protocol):
    """How one platform kind's data gets into the bucket."""

    @property
    def exports(self) -> bool:
        """True: the platform runs an export job first (started and checked by the poller);
        False: the copy itself reads the data, so a job is ready at once."""

    def copy(self, ctx: Context, hold: CopyHold, base_key: str) -> JobResult:
        """Copy the job's data under `base_key`, verified; resumes what an earlier try
        saved in the job's checkpoint. Raises CopyPaused when out of time."""

    def progressed(self, job: Job) -> bool:
        """Did the copy save progress since the finisher holding it took it? A reclaim
        after real progress is a resumption, not a failed try."""

    def rebased(self, job: Job) -> dict[str, Any] | None:
        """The job's checkpoint with its progress counted from now, written whenever the
        job changes hands."""
