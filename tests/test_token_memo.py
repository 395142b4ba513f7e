"""The in-process memo over the state table's token cache (real SQLite underneath)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

from shared.adapters.sql_state import SqlStateStore
from shared.adapters.token_memo import MEMO_FOR, MemoTokenCache

NOW = datetime.now(timezone.utc)  # the store drops entries long expired by the real clock


class CountingStore(SqlStateStore):
    reads = 0

    def cache_get(self, key: str, now: datetime) -> str | None:
        self.reads += 1
        return super().cache_get(key, now)


def test_repeated_reads_hit_the_store_once_within_the_memo(tmp_path: Path) -> None:
    store = CountingStore(f"sqlite:///{tmp_path / 'state.sqlite3'}")
    store.cache_put("t", "token-1", NOW + timedelta(hours=1))
    memo = MemoTokenCache(store)
    assert [memo.cache_get("t", NOW + timedelta(seconds=s)) for s in (0, 1, 29)] == ["token-1"] * 3
    assert store.reads == 1
    store.cache_put("t", "token-2", NOW + timedelta(hours=1))  # another function renewed it
    assert memo.cache_get("t", NOW + MEMO_FOR) == "token-2"  # the memo ran out: read again
    assert store.reads == 2


def test_a_deleted_or_replaced_token_is_never_served_from_the_memo(tmp_path: Path) -> None:
    store = CountingStore(f"sqlite:///{tmp_path / 'state.sqlite3'}")
    memo = MemoTokenCache(store)
    memo.cache_put("t", "rejected", NOW + timedelta(hours=1))
    assert memo.cache_get("t", NOW) == "rejected"
    memo.cache_delete("t")  # the platform refused it
    assert memo.cache_get("t", NOW) is None
    memo.cache_put("t", "fresh", NOW + timedelta(hours=1))
    assert memo.cache_get("t", NOW) == "fresh"
    assert store.cache_get("t", NOW) == "fresh"  # written through
