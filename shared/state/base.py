"""What every state backend offers. Writes are compare-and-set on `version`, so two
functions racing on the same job cannot both win."""

from __future__ import annotations

from datetime import datetime
from typing import Protocol

from shared.jobs import Job, Run


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


def open_store(url: str) -> StateStore:
    from shared.state.sql import SqlStateStore

    return SqlStateStore(url)
