"""What every state backend offers. Writes are compare-and-set on `version`, so two
functions racing on the same job cannot both win."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Protocol

from shared.jobs import Job, Run

if TYPE_CHECKING:
    from shared.config import Destination, StateSettings


class StateBackendError(RuntimeError):
    """The state backend failed or does not keep its promises (e.g. a bucket that lets a
    create-only write overwrite). The message names the object or table, never a secret."""


class StateStore(Protocol):
    def create_run(self, run: Run, jobs: list[Job]) -> tuple[Run, bool]:
        """Store a run and its jobs atomically; if a run with the same idempotency key
        exists, store nothing and return that run with False."""

    def get_run(self, run_id: str) -> Run | None: ...

    def list_runs(self, limit: int = 20, before: str | None = None) -> list[Run]:
        """Newest first; `before` is a run id to page from."""

    def open_runs(self) -> list[Run]: ...

    def save_run(self, run: Run) -> Run | None:
        """Write if the stored version equals run.version; the stored run, or None."""

    def get_job(self, job_id: str) -> Job | None: ...

    def list_jobs(self, run_id: str) -> list[Job]: ...

    def due_jobs(self, now: datetime, limit: int = 100) -> list[Job]:
        """Unfinished jobs whose next_check_at has come, oldest first."""

    def save_job(self, job: Job) -> Job | None:
        """Write if the stored version equals job.version; the stored job, or None."""

    def cache_get(self, key: str, now: datetime) -> str | None: ...

    def cache_put(self, key: str, value: str, expires_at: datetime) -> None: ...

    def cache_delete(self, key: str) -> None: ...


def open_store(
    state: StateSettings | str,
    destination: Destination | None = None,
    *,
    environ: Mapping[str, str] | None = None,
) -> StateStore:
    """The backend `state.url` names. `cos://` keeps the state in `destination`'s bucket;
    a plain string is an already resolved URL (password included)."""
    url = state if isinstance(state, str) else state.resolved_url()
    if url.startswith("cos://"):
        if destination is None:
            raise ValueError("state.url cos:// keeps the state in the destination bucket; "
                             "open_store needs that destination")
        from shared.state.cos import CosStateStore

        return CosStateStore(destination, environ)
    from shared.state.sql import SqlStateStore

    return SqlStateStore(url)
