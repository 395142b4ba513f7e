"""The state table on SQLAlchemy Core: SQLite for one machine, MySQL (TencentDB for MySQL,
TDSQL-C) through PyMySQL for functions that share it. Each row keeps its whole model as
JSON plus the few columns that queries filter on, so new fields need no migration.

MySQL details that matter for correctness:
- keys compare byte for byte (utf8mb4_bin): idempotency keys "A" and "a" are two runs, and
  run ids order as in SQLite;
- times are DOUBLE (a MySQL FLOAT would round an epoch timestamp to minutes);
- a compare-and-set always bumps `version`, so `rowcount` (matched rows: SQLAlchemy sets the
  FOUND_ROWS client flag for PyMySQL) is 1 exactly when the write won;
- READ COMMITTED, pre-pinged pooled connections (SCF freezes a container between
  invocations and the server drops idle connections), and a retry on deadlocks.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Collection
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.dialects import mysql, sqlite
from sqlalchemy.engine import Engine, make_url

from shared.domain.errors import StateError
from shared.domain.jobs import Job, JobStatus, Run, RunStatus

_metadata = sa.MetaData()
_MYSQL_TABLE: dict[str, Any] = {"mysql_engine": "InnoDB", "mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_bin"}
_Doc = sa.Text().with_variant(mysql.MEDIUMTEXT(), "mysql")  # TEXT stops at 64 KB on MySQL

runs = sa.Table(
    "runs",
    _metadata,
    sa.Column("run_id", sa.String(64), primary_key=True),
    sa.Column("idempotency_key", sa.String(255), nullable=False, unique=True),
    sa.Column("status", sa.String(16), nullable=False, index=True),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("doc", _Doc, nullable=False),
    **_MYSQL_TABLE,
)

jobs = sa.Table(
    "jobs",
    _metadata,
    sa.Column("job_id", sa.String(128), primary_key=True),
    sa.Column("run_id", sa.String(64), nullable=False, index=True),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("next_check_at", sa.Double, nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("doc", _Doc, nullable=False),
    sa.Index("ix_jobs_due", "status", "next_check_at"),
    **_MYSQL_TABLE,
)

cache = sa.Table(
    "cache",
    _metadata,
    sa.Column("key", sa.String(255), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
    sa.Column("expires_at", sa.Double, nullable=False),
    **_MYSQL_TABLE,
)

_UNFINISHED = [s.value for s in JobStatus if not s.terminal]
# A run's operation as its JSON holds it (`Run.model_dump_json` writes every field).
_OPERATION = sa.type_coerce(runs.c.doc, sa.JSON)["operation"].as_string()
# The poller's hot write, built once: SQLAlchemy then reuses its compiled form instead of
# building and caching a new statement for every save.
_SAVE_JOB = (
    jobs.update()
    .where(jobs.c.job_id == sa.bindparam("b_job_id"), jobs.c.version == sa.bindparam("b_version"))
    .values({c: sa.bindparam(c) for c in ("status", "next_check_at", "version", "doc")})
)
_MYSQL_RETRYABLE = {1213, 1205}  # deadlock found; lock wait timeout
T = TypeVar("T")

# One engine per server URL and process: a warm SCF container reuses its connections.
_engines: dict[str, Engine] = {}
_engines_lock = threading.Lock()


def _sqlite_engine(url: str) -> Engine:
    path = url.removeprefix("sqlite:///")
    if path and path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        _owner_only(Path(path))
    engine = sa.create_engine(url, connect_args={"timeout": 30})

    @sa.event.listens_for(engine, "connect")
    def _pragmas(dbapi_connection, _record):  # type: ignore[no-untyped-def]
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA busy_timeout=30000")
        # Readers never block the writer. Functions opening a new file at once race to
        # switch it to WAL, and that switch answers "locked" at once rather than waiting.
        for attempt in range(200):
            try:
                cursor.execute("PRAGMA journal_mode=WAL")
                break
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or attempt == 199:
                    raise
                time.sleep(0.05)
        # In WAL mode NORMAL syncs at checkpoints, not at every commit: a crash of the
        # process loses nothing, a power cut may lose the last commits but never corrupts
        # (sqlite.org/pragma.html#pragma_synchronous). Commit fsyncs were most of a tick.
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    return engine


def _owner_only(path: Path) -> None:
    """The state holds live access tokens: the file is made (or tightened to) 0600 before
    SQLite opens it; its -wal and -shm files take the database file's mode.

    An existing file is never opened here: closing any descriptor of it drops every POSIX
    lock this process holds on it (sqlite.org/howtocorrupt.html, 2.2), among them the
    shared lock of a store already open, and another process closing last would then
    delete the WAL under that store, losing its next commits."""
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600))
    for file in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        with contextlib.suppress(FileNotFoundError):
            if file.stat().st_mode & 0o077:
                file.chmod(0o600)


def _mysql_engine(url: str) -> Engine:
    parsed = make_url(url)
    if "charset" not in parsed.query:
        parsed = parsed.update_query_dict({"charset": "utf8mb4"})  # emoji in collection names
    engine = sa.create_engine(
        parsed,
        pool_pre_ping=True,
        pool_recycle=600,
        pool_size=2,
        max_overflow=8,
        isolation_level="READ COMMITTED",
        connect_args={"connect_timeout": 10},
    )
    sa.event.listen(engine, "do_connect", _connect_or_explain)
    return engine


# MySQL 8's default auth plugin asks for a full login while its cache lacks the user (after
# a restart or a FLUSH PRIVILEGES, until a full login fills it again). PyMySQL then sends the
# password inside TLS if the server offers it (PyMySQL 1.2 tries TLS by default), else
# encrypts it with RSA, which needs `cryptography`, left out of the SCF package
# (pymysql/_auth.py, caching_sha2_password_auth and sha2_rsa_encrypt). SSL is a switch in
# the console, off until turned on: TDSQL-C cloud.tencent.com/document/product/1003/109673
# ("此功能状态默认为未打开"), TencentDB for MySQL tencentcloud.com/document/product/236/48452.
_NO_RSA = "'cryptography' package is required"


def _connect_or_explain(dialect: Any, _record: Any, cargs: Any, cparams: dict[str, Any]) -> Any:
    try:
        return dialect.connect(*cargs, **cparams)
    except RuntimeError as exc:
        if _NO_RSA not in str(exc):
            raise
        raise StateError(_no_rsa_advice(str(cparams.get("user") or "USER"))) from None


def _no_rsa_advice(user: str) -> str:
    return (
        "the mysql state backend refused the login: MySQL asked for a full "
        "caching_sha2_password (or sha256_password) login, which over a connection without "
        "TLS needs the 'cryptography' package, not in the SCF package; either enable SSL "
        "encryption on the instance (TencentDB for MySQL / TDSQL-C console, data security, "
        "SSL; the state store then logs in over TLS), or give the state user MySQL's native "
        f"plugin: ALTER USER '{user}'@'%' IDENTIFIED WITH mysql_native_password BY "
        "'<its password>' (use the user's host if it is not '%')")


def _create_tables(engine: Engine) -> None:
    """Create what is missing. Functions starting at once on a new database race here: the
    loser's CREATE finds the table or index made after its check, and checks again (each
    failure means another function got further, so a few rounds always suffice)."""
    rounds = 2 * len(_metadata.tables) + 4
    for attempt in range(rounds):
        try:
            _metadata.create_all(engine)
            return
        except sa.exc.DatabaseError as exc:
            if "already exists" not in str(exc.orig) or attempt == rounds - 1:
                raise


def _engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = _sqlite_engine(url)  # a file: cheap to open, nothing to keep warm
        _create_tables(engine)
        return engine
    with _engines_lock:
        cached = _engines.get(url)
        if cached is None:
            cached = _mysql_engine(url)
            try:
                _create_tables(cached)
            except BaseException:
                cached.dispose()
                raise
            # kept only once the tables exist: a failed cold start is tried again by the
            # next open, which names state.url again if it still fails
            _engines[url] = cached
        return cached


def _errors_mapped(cls: type[T]) -> type[T]:
    """Every public method raises the domain's StateError instead of SQLAlchemy's errors,
    so the service layer handles a database outage by class (a retry), not as a bug. The
    message names the operation and the driver's error, never the URL or its password."""

    def mapped(name: str, method: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(method)
        def call(*args: Any, **kwargs: Any) -> Any:
            try:
                return method(*args, **kwargs)
            except sa.exc.SQLAlchemyError as exc:
                cause = getattr(exc, "orig", None) or exc
                raise StateError(f"state table: {name} failed: {type(cause).__name__}: "
                                 f"{str(cause).splitlines()[0][:200]}") from None
        return call

    for name, member in list(vars(cls).items()):
        if callable(member) and not name.startswith("_"):
            setattr(cls, name, mapped(name, member))
    return cls


@_errors_mapped
class SqlStateStore:
    def __init__(self, url: str) -> None:
        try:
            self.engine = _engine(url)
        except sa.exc.SQLAlchemyError as exc:  # not mapped by _errors_mapped: a private name
            kind = "sqlite" if url.startswith("sqlite") else "mysql"
            cause = getattr(exc, "orig", None) or exc
            raise StateError(
                f"the {kind} state backend does not answer: {type(cause).__name__}: "
                f"{str(cause).splitlines()[0][:200]}; check state.url (host, port, database, "
                "user, password variable), that this network reaches it (VPC) and the "
                "database's allow-list") from None
        self._mysql = self.engine.dialect.name == "mysql"

    def __repr__(self) -> str:
        return f"SqlStateStore({self.engine.url!r})"  # SQLAlchemy masks the password

    def _retrying(self, action: Callable[[], T]) -> T:
        """Run a transaction again when MySQL picked it as a deadlock victim, or when SQLite
        answered "database is locked" without waiting: in WAL mode a transaction whose
        snapshot went stale is refused at once, busy timeout or not."""
        for attempt in range(5):
            try:
                return action()
            except sa.exc.OperationalError as exc:
                code = exc.orig.args[0] if exc.orig is not None and exc.orig.args else None
                retryable = (code in _MYSQL_RETRYABLE if self._mysql
                             else "locked" in str(exc.orig) or "busy" in str(exc.orig))
                if not retryable or attempt == 4:
                    raise
                time.sleep(0.05 * (attempt + 1))
        raise AssertionError("unreachable")

    # runs -----------------------------------------------------------------
    def create_run(self, run: Run, new_jobs: list[Job]) -> tuple[Run, bool]:
        def insert() -> None:
            with self.engine.begin() as conn:
                conn.execute(runs.insert().values(**_run_row(run)))
                if new_jobs:
                    conn.execute(jobs.insert(), [_job_row(j) for j in new_jobs])

        try:
            self._retrying(insert)
        except sa.exc.IntegrityError:
            stored = self.find_run(run.idempotency_key)
            if stored is None:  # the conflict was not the key's
                raise
            return stored, False
        return run, True

    def find_run(self, idempotency_key: str) -> Run | None:
        with self.engine.connect() as conn:
            doc = conn.execute(sa.select(runs.c.doc).where(
                runs.c.idempotency_key == idempotency_key)).scalar()
        return Run.model_validate_json(doc) if doc else None

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

    def list_restores(self, limit: int = 20, before: str | None = None) -> list[Run]:
        # The operation is read from the row's JSON (SQLite json_extract; MySQL/MariaDB
        # JSON_UNQUOTE(JSON_EXTRACT)), so existing tables need no new column. Walking the
        # primary key newest first, the database stops at the limit-th restore.
        query = (sa.select(runs.c.doc).where(_OPERATION == "restore")
                 .order_by(runs.c.run_id.desc()).limit(limit))
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

        def update() -> int:
            with self.engine.begin() as conn:
                return conn.execute(
                    runs.update()
                    .where(runs.c.run_id == run.run_id, runs.c.version == run.version)
                    .values(status=row["status"], version=row["version"], doc=row["doc"])
                ).rowcount

        return stored if self._retrying(update) == 1 else None

    # jobs -----------------------------------------------------------------
    def get_job(self, job_id: str) -> Job | None:
        with self.engine.connect() as conn:
            doc = conn.execute(sa.select(jobs.c.doc).where(jobs.c.job_id == job_id)).scalar()
        return Job.model_validate_json(doc) if doc else None

    def list_jobs(self, run_id: str, *, skip: Collection[str] = ()) -> list[Job]:
        query = (sa.select(jobs.c.job_id, jobs.c.doc).where(jobs.c.run_id == run_id)
                 .order_by(jobs.c.job_id))
        left_out = frozenset(skip)  # filtered here: an IN list has a size limit
        with self.engine.connect() as conn:
            return [Job.model_validate_json(doc) for job_id, doc in conn.execute(query)
                    if job_id not in left_out]

    def run_has_open_jobs(self, run_id: str) -> bool:
        query = (sa.select(jobs.c.job_id)
                 .where(jobs.c.run_id == run_id, jobs.c.status.in_(_UNFINISHED)).limit(1))
        with self.engine.connect() as conn:
            return conn.execute(query).first() is not None

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
        values = {k: v for k, v in row.items() if k not in ("job_id", "run_id")}

        def update() -> int:
            with self.engine.begin() as conn:
                return conn.execute(
                    _SAVE_JOB, {"b_job_id": job.job_id, "b_version": job.version, **values}
                ).rowcount

        return stored if self._retrying(update) == 1 else None

    def delete_run(self, run_id: str) -> None:
        def delete() -> None:
            with self.engine.begin() as conn:
                conn.execute(jobs.delete().where(jobs.c.run_id == run_id))
                conn.execute(runs.delete().where(runs.c.run_id == run_id))

        self._retrying(delete)

    # token cache ------------------------------------------------------------
    def cache_get(self, key: str, now: datetime) -> str | None:
        query = sa.select(cache.c.value).where(
            cache.c.key == key, cache.c.expires_at > now.timestamp()
        )
        with self.engine.connect() as conn:
            value: str | None = conn.execute(query).scalar()
        return value

    def cache_put(self, key: str, value: str, expires_at: datetime) -> None:
        """An upsert: two functions fetching a token at once must not collide on the key."""
        row = {"key": key, "value": value, "expires_at": expires_at.timestamp()}
        statement: Any
        if self._mysql:
            statement = mysql.insert(cache).values(**row)
            statement = statement.on_duplicate_key_update(
                value=statement.inserted.value, expires_at=statement.inserted.expires_at
            )
        else:
            statement = sqlite.insert(cache).values(**row)
            statement = statement.on_conflict_do_update(
                index_elements=[cache.c.key],
                set_={"value": statement.excluded.value, "expires_at": statement.excluded.expires_at},
            )

        def upsert() -> None:
            with self.engine.begin() as conn:
                conn.execute(statement)
                # Expired entries (old tokens, short-lived markers) are dropped as we go.
                conn.execute(cache.delete().where(cache.c.expires_at < time.time() - 86400))

        self._retrying(upsert)

    def cache_delete(self, key: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(cache.delete().where(cache.c.key == key))

    def cache_claim(self, key: str, value: str, expires_at: datetime, now: datetime) -> bool:
        """An expired entry is dropped and a plain INSERT made, in one transaction: the
        primary key lets one of racing inserts in, the others fail on it."""
        row = {"key": key, "value": value, "expires_at": expires_at.timestamp()}

        def insert() -> bool:
            try:
                with self.engine.begin() as conn:
                    conn.execute(cache.delete().where(
                        cache.c.key == key, cache.c.expires_at <= now.timestamp()))
                    conn.execute(cache.insert().values(**row))
            except sa.exc.IntegrityError:  # a live entry holds the key
                return False
            return True

        return self._retrying(insert)


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
