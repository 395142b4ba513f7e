"""The state table on SQLAlchemy Core: SQLite embedded by default; the same statements
serve a server database. Each row keeps its whole model as JSON plus the few columns
that queries filter on, so new fields need no migration."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from shared.jobs import Job, JobStatus, Run, RunStatus

_metadata = sa.MetaData()

runs = sa.Table(
    "runs",
    _metadata,
    sa.Column("run_id", sa.String(64), primary_key=True),
    sa.Column("idempotency_key", sa.String(255), nullable=False, unique=True),
    sa.Column("status", sa.String(16), nullable=False, index=True),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("doc", sa.Text, nullable=False),
)

jobs = sa.Table(
    "jobs",
    _metadata,
    sa.Column("job_id", sa.String(128), primary_key=True),
    sa.Column("run_id", sa.String(64), nullable=False, index=True),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("next_check_at", sa.Float, nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("doc", sa.Text, nullable=False),
    sa.Index("ix_jobs_due", "status", "next_check_at"),
)

cache = sa.Table(
    "cache",
    _metadata,
    sa.Column("key", sa.String(255), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
    sa.Column("expires_at", sa.Float, nullable=False),
)

_UNFINISHED = [s.value for s in JobStatus if not s.terminal]


def _sqlite_engine(url: str) -> Engine:
    path = url.removeprefix("sqlite:///")
    if path and path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(url, connect_args={"timeout": 30})

    @sa.event.listens_for(engine, "connect")
    def _pragmas(dbapi_connection, _record):  # type: ignore[no-untyped-def]
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")  # readers never block the writer
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    return engine


class SqlStateStore:
    def __init__(self, url: str) -> None:
        self.engine = _sqlite_engine(url) if url.startswith("sqlite") else sa.create_engine(url)
        _metadata.create_all(self.engine)

    # runs -----------------------------------------------------------------
    def create_run(self, run: Run, new_jobs: list[Job]) -> tuple[Run, bool]:
        try:
            with self.engine.begin() as conn:
                conn.execute(runs.insert().values(**_run_row(run)))
                if new_jobs:
                    conn.execute(jobs.insert(), [_job_row(j) for j in new_jobs])
        except sa.exc.IntegrityError:
            with self.engine.connect() as conn:
                doc = conn.execute(
                    sa.select(runs.c.doc).where(runs.c.idempotency_key == run.idempotency_key)
                ).scalar_one()
            return Run.model_validate_json(doc), False
        return run, True

    def get_run(self, run_id: str) -> Run | None:
        with self.engine.connect() as conn:
            doc = conn.execute(sa.select(runs.c.doc).where(runs.c.run_id == run_id)).scalar()
        return Run.model_validate_json(doc) if doc else None

    def list_runs(self, limit: int = 20, before: str | None = None) -> list[Run]:
        query = sa.select(runs.c.doc).order_by(runs.c.run_id.desc()).limit(limit)
        if before:
            query = query.where(runs.c.run_id < before)
        with self.engine.connect() as conn:
            return [Run.model_validate_json(d) for d in conn.execute(query).scalars()]

    def open_runs(self) -> list[Run]:
        query = sa.select(runs.c.doc).where(runs.c.status == RunStatus.RUNNING.value)
        with self.engine.connect() as conn:
            return [Run.model_validate_json(d) for d in conn.execute(query).scalars()]

    def save_run(self, run: Run) -> Run | None:
        stored = run.model_copy(update={"version": run.version + 1})
        row = _run_row(stored)
        with self.engine.begin() as conn:
            result = conn.execute(
                runs.update()
                .where(runs.c.run_id == run.run_id, runs.c.version == run.version)
                .values(status=row["status"], version=row["version"], doc=row["doc"])
            )
        return stored if result.rowcount == 1 else None

    # jobs -----------------------------------------------------------------
    def get_job(self, job_id: str) -> Job | None:
        with self.engine.connect() as conn:
            doc = conn.execute(sa.select(jobs.c.doc).where(jobs.c.job_id == job_id)).scalar()
        return Job.model_validate_json(doc) if doc else None

    def list_jobs(self, run_id: str) -> list[Job]:
        query = sa.select(jobs.c.doc).where(jobs.c.run_id == run_id).order_by(jobs.c.job_id)
        with self.engine.connect() as conn:
            return [Job.model_validate_json(d) for d in conn.execute(query).scalars()]

    def due_jobs(self, now: datetime, limit: int = 100) -> list[Job]:
        query = (
            sa.select(jobs.c.doc)
            .where(jobs.c.status.in_(_UNFINISHED), jobs.c.next_check_at <= now.timestamp())
            .order_by(jobs.c.next_check_at)
            .limit(limit)
        )
        with self.engine.connect() as conn:
            return [Job.model_validate_json(d) for d in conn.execute(query).scalars()]

    def save_job(self, job: Job) -> Job | None:
        stored = job.model_copy(update={"version": job.version + 1, "updated_at": _now()})
        row = _job_row(stored)
        with self.engine.begin() as conn:
            result = conn.execute(
                jobs.update()
                .where(jobs.c.job_id == job.job_id, jobs.c.version == job.version)
                .values({k: v for k, v in row.items() if k not in ("job_id", "run_id")})
            )
        return stored if result.rowcount == 1 else None

    # token cache ------------------------------------------------------------
    def cache_get(self, key: str, now: datetime) -> str | None:
        query = sa.select(cache.c.value).where(
            cache.c.key == key, cache.c.expires_at > now.timestamp()
        )
        with self.engine.connect() as conn:
            value: str | None = conn.execute(query).scalar()
        return value

    def cache_put(self, key: str, value: str, expires_at: datetime) -> None:
        with self.engine.begin() as conn:
            conn.execute(cache.delete().where(cache.c.key == key))
            conn.execute(cache.insert().values(key=key, value=value, expires_at=expires_at.timestamp()))

    def cache_delete(self, key: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(cache.delete().where(cache.c.key == key))


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _run_row(run: Run) -> dict[str, object]:
    return {
        "run_id": run.run_id,
        "idempotency_key": run.idempotency_key,
        "status": run.status.value,
        "version": run.version,
        "doc": run.model_dump_json(),
    }


def _job_row(job: Job) -> dict[str, object]:
    return {
        "job_id": job.job_id,
        "run_id": job.run_id,
        "status": job.status.value,
        "next_check_at": job.next_check_at.timestamp(),
        "version": job.version,
        "doc": job.model_dump_json(),
    }
