"""The SQLite state file holds live access tokens: only its owner may read it."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

from shared.adapters.sql_state import SqlStateStore
from shared.domain.jobs import utcnow


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_sqlite_state_file_and_its_wal_are_created_0600(tmp_path: Path) -> None:
    old = os.umask(0o022)  # the usual default, which makes files 0644
    try:
        path = tmp_path / "state" / "state.sqlite3"
        store = SqlStateStore(f"sqlite:///{path}")
        store.cache_put("wechat:token", "live-token-value-123456", utcnow() + timedelta(hours=1))
    finally:
        os.umask(old)

    assert mode(path) == 0o600
    wal = path.with_name(path.name + "-wal")
    assert not wal.exists() or mode(wal) == 0o600


def test_an_existing_readable_state_file_is_tightened(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    SqlStateStore(f"sqlite:///{path}")
    path.chmod(0o644)

    SqlStateStore(f"sqlite:///{path}")

    assert mode(path) == 0o600


def test_opening_a_second_store_keeps_the_first_ones_commits_visible(tmp_path: Path) -> None:
    """Tightening the file's mode must not drop the locks of a store already open in this
    process: another process closing last would delete the WAL under it, and its later
    commits would go to a deleted file that nobody else reads."""
    path = tmp_path / "state.sqlite3"
    url = f"sqlite:///{path}"
    first = SqlStateStore(url)
    first.cache_put("before", "1", utcnow() + timedelta(hours=1))
    SqlStateStore(url)  # e.g. the next invocation of a warm function
    elsewhere = ("import sys; from datetime import datetime, timezone; "
                 "from shared.adapters.sql_state import SqlStateStore; "
                 "print(SqlStateStore(sys.argv[1]).cache_get(sys.argv[2], datetime.now(timezone.utc)))")
    def read_elsewhere(key: str) -> str:
        return subprocess.run([sys.executable, "-c", elsewhere, url, key], check=True,
                              capture_output=True, text=True).stdout.strip()

    assert read_elsewhere("before") == "1"  # that process closes the file last
    first.cache_put("after", "2", utcnow() + timedelta(hours=1))

    assert read_elsewhere("after") == "2"
