"""state.url: the forms it accepts, the MySQL password as a secret, and what the SQL
backend must survive on a real MariaDB (dropped connections). The behaviour every backend
shares is in test_state_contract.py."""

from __future__ import annotations

import copy
import logging
import sqlite3
from pathlib import Path
from typing import Any

import pymysql
import pytest
import sqlalchemy as sa

from shared.adapters import sql_state
from shared.adapters.sql_state import SqlStateStore
from shared.adapters.state import open_store
from shared.config import ConfigError, StateSettings, parse_config
from shared.domain.errors import StateError
from shared.domain.jobs import IllegalTransition, Job, JobStatus, Run, utcnow
from shared.logs import JsonFormatter, redact
from tests.support.mysql import MariaDB, full_login_without_rsa

PASSWORD = "Tr0ub4dor-and-3-horses"
ENV = {"MYSQL_PASSWORD": PASSWORD, "WECHAT_SECRET": "app-secret-123456", "DB_HOST": "db.internal"}
BASE: dict[str, Any] = {
    "destination": {"bucket": "backups-1250000000", "region": "ap-guangzhou"},
    "sources": [{"type": "wechat", "name": "shop", "appid": "wx0123456789abcdef",
                 "secret": "${WECHAT_SECRET}", "env": "shop-1a2b", "collections": ["orders"]}],
}


def config_with(url: str | None) -> Any:
    document = copy.deepcopy(BASE)
    if url is not None:
        document["state"] = {"url": url}
    return parse_config(document, environ=ENV)


def problems_with(url: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        config_with(url)
    return info.value.problems


# state.url ---------------------------------------------------------------------------
def test_default_is_the_destination_bucket() -> None:
    config = config_with(None)
    assert config.state.url == "cos://" and config.state.backend == "cos"


@pytest.mark.parametrize(("url", "resolved", "backend"), [
    ("cos://", "cos://", "cos"),
    ("sqlite:////tmp/state.sqlite3", "sqlite:////tmp/state.sqlite3", "sqlite"),
    ("sqlite:///relative.sqlite3", "sqlite:///relative.sqlite3", "sqlite"),
    ("mysql+pymysql://backup:${MYSQL_PASSWORD}@${DB_HOST}:3306/baas",
     f"mysql+pymysql://backup:{PASSWORD}@db.internal:3306/baas", "mysql"),
    ("mysql+pymysql://backup@10.0.0.5/baas?charset=utf8mb4",
     "mysql+pymysql://backup@10.0.0.5/baas?charset=utf8mb4", "mysql"),
])
def test_accepted_urls(url: str, resolved: str, backend: str) -> None:
    state = config_with(url).state
    assert state.url == url and state.resolved_url() == resolved and state.backend == backend


def test_password_with_url_characters_survives() -> None:
    state = StateSettings.model_validate(
        {"url": "mysql+pymysql://u:${P}@h/db"}, context={"environ": {"P": "p@ss/w:rd%!"}})
    assert sa.engine.make_url(state.resolved_url()).password == "p@ss/w:rd%!"


def test_mysql_password_never_shows() -> None:
    config = config_with("mysql+pymysql://backup:${MYSQL_PASSWORD}@db:3306/baas")
    for text in (repr(config), str(config), repr(config.state), config.model_dump_json(),
                 str(config.model_dump())):
        assert PASSWORD not in text
    assert "${MYSQL_PASSWORD}" in repr(config.state)
    # registered as a secret: masked in every log line and redacted message
    assert PASSWORD not in redact(f"connect to {config.state.resolved_url()} failed")
    record = logging.LogRecord("x", logging.ERROR, __file__, 1, "url %s", (config.state.resolved_url(),), None)
    assert PASSWORD not in JsonFormatter().format(record)


@pytest.mark.parametrize(("url", "expected"), [
    ("mysql+pymysql://backup:hunter2-literal@db/baas", "the MySQL password may not be written into the config"),
    ("mysql+pymysql://backup:hunter2/lit@eral@db/baas", "the MySQL password may not be written into the config"),
    ("mysql+pymysql://backup:${NOT_SET}@db/baas", "environment variable NOT_SET (the MySQL password) is not set"),
    ("mysql+pymysql://backup:${MYSQL_PASSWORD}@db", "needs a host and a database"),
    ("mysql://backup:${MYSQL_PASSWORD}@db/baas", "use the PyMySQL driver: mysql+pymysql://"),
    ("postgresql://backup:hunter2-literal@db/baas", "url must be one of cos://"),
    ("cos://other-bucket/state", "cos:// takes no bucket or path"),
    ("sqlite://relative", "write sqlite:///PATH"),
    ("sqlite:///${NOPE}/state.sqlite3", "environment variable NOPE is not set"),
    ("just a path", "url must be one of cos://"),
])
def test_bad_urls_say_what_is_accepted_and_never_echo_a_password(url: str, expected: str) -> None:
    found = problems_with(url)
    assert len(found) == 1 and found[0].startswith("state: url"), found
    assert expected in found[0], found
    assert "hunter2" not in found[0]
    if "must be one of" in expected:
        assert all(form in found[0] for form in ("cos://", "sqlite:///PATH", "mysql+pymysql://"))


# MySQL on a real server ------------------------------------------------------------
def test_store_repr_and_login_errors_hide_the_password(mysql_url: str, mariadb: MariaDB) -> None:
    assert mariadb.password not in repr(open_store(mysql_url))
    wrong = mysql_url.replace(mariadb.password, "wrong-password-123")
    with pytest.raises(StateError) as failed:  # mapped at the edge, opening included
        open_store(wrong)
    assert "Access denied" in str(failed.value) and "wrong-password-123" not in str(failed.value)
    assert "state.url" in str(failed.value)


def test_connection_killed_by_the_server_is_replaced(mysql_url: str, mariadb: MariaDB, mysql_database: str) -> None:
    """SCF freezes containers between invocations; the server drops idle connections
    (wait_timeout, failovers). The next invocation must not fail on a dead connection."""
    store = open_store(mysql_url)
    assert isinstance(store, SqlStateStore)
    now = utcnow()
    store.create_run(Run(run_id="r1", idempotency_key="k", trigger="t", created_at=now), [])
    with store.engine.connect() as conn:
        pooled_id = conn.execute(sa.text("SELECT CONNECTION_ID()")).scalar()
    with mariadb.connect() as admin, admin.cursor() as cursor:
        cursor.execute(f"KILL CONNECTION {int(pooled_id)}")  # type: ignore[arg-type]
    assert store.get_run("r1") is not None
    with store.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT CONNECTION_ID()")).scalar() != pooled_id


def test_a_login_that_needs_cryptography_names_the_auth_plugin_and_the_fix(
        mysql_url: str, mariadb: MariaDB, mysql_database: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """MySQL 8 restarted (or its auth cache flushed): the next connection of a warm store,
    and every cold open, must do the full caching_sha2_password login, which PyMySQL can
    only do over TLS or with `cryptography` (not in the SCF package). That is a StateError
    naming the plugin and both fixes, not a bare RuntimeError saying to install a package."""
    store = open_store(mysql_url)
    assert isinstance(store, SqlStateStore)
    with store.engine.connect() as conn:
        pooled_id = conn.execute(sa.text("SELECT CONNECTION_ID()")).scalar()
    with mariadb.connect() as admin, admin.cursor() as cursor:
        cursor.execute(f"KILL CONNECTION {int(pooled_id)}")  # type: ignore[arg-type]
    full_login_without_rsa(monkeypatch)

    def cold_open() -> None:  # a new instance: no engine kept for the URL
        sql_state._engines.pop(mysql_url).dispose()
        open_store(mysql_url)

    for attempt in (lambda: store.get_run("r1"), cold_open):
        with pytest.raises(StateError) as failed:
            attempt()
        message = str(failed.value)
        for words in ("caching_sha2_password", "TLS", "SSL",
                      f"ALTER USER '{mariadb.user}'@'%' IDENTIFIED WITH mysql_native_password"):
            assert words in message, message
        assert mariadb.password not in message and "check state.url (host" not in message


def test_an_open_that_failed_is_tried_again_by_the_next_open(
        mysql_url: str, mariadb: MariaDB, mysql_database: str) -> None:
    """A cold start that cannot create the tables (MySQL not answering, the database not
    made yet) must not leave a warm instance an engine without tables: the next open
    points at state.url again while it still fails, and creates them once it can."""
    with mariadb.connect() as admin, admin.cursor() as cursor:
        cursor.execute(f"DROP DATABASE {mysql_database}")
    for _ in range(2):
        with pytest.raises(StateError, match=r"Unknown database.*check state\.url"):
            open_store(mysql_url)
    with mariadb.connect() as admin, admin.cursor() as cursor:
        cursor.execute(f"CREATE DATABASE {mysql_database} CHARACTER SET utf8mb4 COLLATE utf8mb4_bin")
    store = open_store(mysql_url)
    store.create_run(Run(run_id="r1", idempotency_key="k", trigger="t", created_at=utcnow()), [])
    assert store.get_run("r1") is not None


def test_tables_are_byte_exact_utf8mb4(mysql_url: str, mariadb: MariaDB, mysql_database: str) -> None:
    open_store(mysql_url)
    with mariadb.connect(mysql_database) as conn, conn.cursor() as cursor:
        cursor.execute("SELECT table_name, table_collation, engine FROM information_schema.tables "
                       "WHERE table_schema = %s ORDER BY table_name", (mysql_database,))
        assert cursor.fetchall() == (("cache", "utf8mb4_bin", "InnoDB"), ("jobs", "utf8mb4_bin", "InnoDB"),
                                     ("runs", "utf8mb4_bin", "InnoDB"))
        cursor.execute("SELECT column_name, data_type FROM information_schema.columns WHERE "
                       "table_schema = %s AND column_name IN ('next_check_at', 'expires_at', 'doc')",
                       (mysql_database,))
        assert sorted(cursor.fetchall()) == [("doc", "mediumtext"), ("doc", "mediumtext"),
                                             ("expires_at", "double"), ("next_check_at", "double")]


def test_mariadb_fixture_connects_with_the_password_only(mariadb: MariaDB) -> None:
    with pytest.raises(pymysql.err.OperationalError):
        pymysql.connect(host=mariadb.host, port=mariadb.port, user=mariadb.user, password="nope")


# the job status machine, which every store relies on --------------------------------
def test_illegal_transition_is_refused() -> None:
    now = utcnow()
    job = Job(job_id="j", run_id="r", source="s", collection="t", next_check_at=now,
              created_at=now, updated_at=now)
    done = job.moved_to(JobStatus.READY).moved_to(JobStatus.COPYING).moved_to(JobStatus.DONE)
    with pytest.raises(IllegalTransition):
        done.moved_to(JobStatus.COPYING)
    with pytest.raises(IllegalTransition):
        job.moved_to(JobStatus.DONE)


def test_database_failures_surface_as_state_errors(tmp_path: Path) -> None:
    """Mapped at the adapter's edge, so the service layer retries them by class."""
    store = open_store(f"sqlite:///{tmp_path / 'state.sqlite3'}")
    with sqlite3.connect(tmp_path / "state.sqlite3") as conn:
        conn.execute("DROP TABLE jobs")
    with pytest.raises(StateError, match="get_job failed: OperationalError: no such table: jobs"):
        store.get_job("j")
