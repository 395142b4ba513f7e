"""A throwaway MariaDB for the MySQL state tests: scripts/mariadb installs it when missing
and starts it on loopback with its data in a temp folder; every test gets its own database.

If the server cannot be installed or started, the tests that need it fail (never skip).
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pymysql
import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "mariadb"
PASSWORD_ENV = "MYSQL_PASSWORD"


@dataclass(frozen=True)
class MariaDB:
    host: str
    port: int
    user: str
    password: str

    def url(self, database: str) -> str:
        """A resolved URL, password included (what open_store takes)."""
        return f"mysql+pymysql://{self.user}:{self.password}@{self.host}:{self.port}/{database}"

    def config_url(self, database: str) -> str:
        """The form a config file holds: the password as a ${MYSQL_PASSWORD} reference."""
        return f"mysql+pymysql://{self.user}:${{{PASSWORD_ENV}}}@{self.host}:{self.port}/{database}"

    def connect(self, database: str | None = None) -> pymysql.connections.Connection:
        return pymysql.connect(host=self.host, port=self.port, user=self.user,
                               password=self.password, database=database, autocommit=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def mariadb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MariaDB]:
    folder = tmp_path_factory.mktemp("mariadb")
    port = free_port()
    password = secrets.token_hex(12)
    started = subprocess.run(
        [str(SCRIPT), "start", str(folder), str(port)],
        env={**os.environ, "MARIADB_PASSWORD": password},
        capture_output=True, text=True, timeout=900, check=False,
    )
    if started.returncode != 0:
        pytest.fail(
            "scripts/mariadb could not install or start MariaDB, which the MySQL state tests "
            f"need (exit {started.returncode}):\n{started.stdout}{started.stderr}",
            pytrace=False,
        )
    try:
        yield MariaDB(host="127.0.0.1", port=port, user="baas", password=password)
    finally:
        subprocess.run([str(SCRIPT), "stop", str(folder)], timeout=60, check=False)


@pytest.fixture
def mysql_database(mariadb: MariaDB) -> Iterator[str]:
    """A fresh, empty database; its name."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    with mariadb.connect() as conn, conn.cursor() as cursor:
        cursor.execute(f"CREATE DATABASE {name} CHARACTER SET utf8mb4 COLLATE utf8mb4_bin")
    yield name
    from shared.adapters import sql_state as sql

    engine = sql._engines.pop(mariadb.url(name), None)
    if engine is not None:
        engine.dispose()
    with mariadb.connect() as conn, conn.cursor() as cursor:
        cursor.execute(f"DROP DATABASE IF EXISTS {name}")


@pytest.fixture
def mysql_url(mariadb: MariaDB, mysql_database: str) -> str:
    """A resolved URL of a fresh database."""
    return mariadb.url(mysql_database)


def full_login_without_rsa(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every new connection meets what a MySQL 8 server without TLS (TencentDB's default)
    asks after a restart or FLUSH PRIVILEGES: the full caching_sha2_password login, which
    PyMySQL answers with RSA, and the SCF package has no `cryptography` for it. The error
    is PyMySQL's own (pymysql/_auth.py, sha2_rsa_encrypt); MariaDB has no such plugin."""
    from pymysql import _auth, connections

    def full_login(self: connections.Connection) -> None:
        _auth.sha2_rsa_encrypt(self.password, self.salt, b"")

    monkeypatch.setattr(_auth, "_have_cryptography", False)
    monkeypatch.setattr(connections.Connection, "_request_authentication", full_login)
