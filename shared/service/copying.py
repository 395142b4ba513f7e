"""The copy strategies' common ground: the `Copier` protocol (export copy, paged copy),
the finisher's hold on the job it copies, and the signals a copy ends with."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from shared.domain.jobs import Job, JobResult

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
