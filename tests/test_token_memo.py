"""The in-process memo over the state table's token cache (real SQLite underneath)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

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


def test_a_value_is_never_served_past_the_expiry_it_was_stored_with(tmp_path: Path) -> None:
    store = CountingStore(f"sqlite:///{tmp_path / 'state.sqlite3'}")
    store.cache_put("t", "short-lived", NOW + timedelta(seconds=10))
    memo = MemoTokenCache(store)
    assert memo.cache_get("t", NOW) == "short-lived"
    assert memo.cache_get("t", NOW + timedelta(seconds=9)) == "short-lived"
    assert memo.cache_get("t", NOW + timedelta(seconds=10)) is None  # stored expiry reached
    assert memo.cache_get("t", NOW + timedelta(seconds=15)) is None


class RacingStore(SqlStateStore):
    """Runs `meanwhile` once, right after a read got its answer from the store and before
    the memo remembers it: the exact point where another thread's write lands."""

    meanwhile: Callable[[], None] | None = None

    def cache_get(self, key: str, now: datetime) -> str | None:
        value = super().cache_get(key, now)
        action, self.meanwhile = self.meanwhile, None
        if action is not None:
            action()
        return value


@pytest.mark.parametrize("invalidate", ["delete", "put"])
def test_a_read_that_started_before_an_invalidation_never_brings_the_old_token_back(
    tmp_path: Path, invalidate: str
) -> None:
    store = RacingStore(f"sqlite:///{tmp_path / 'state.sqlite3'}")
    memo = MemoTokenCache(store)
    memo.cache_put("t", "rejected", NOW + timedelta(hours=1))

    def platform_rejected_it() -> None:  # what CachedToken.renew does from another thread
        memo.cache_delete("t")
        if invalidate == "put":
            memo.cache_put("t", "fresh", NOW + timedelta(hours=1))

    store.meanwhile = platform_rejected_it
    assert memo.cache_get("t", NOW) == "rejected"  # in flight when the token was rejected
    after = memo.cache_get("t", NOW + timedelta(seconds=1))
    assert after == (None if invalidate == "delete" else "fresh")


def test_concurrent_reads_never_keep_a_deleted_token(tmp_path: Path) -> None:
    """The same race with real threads: the reader is held inside its store read (after the
    store answered) until the other thread's delete has returned."""
    read_answered, deleted = threading.Event(), threading.Event()

    class HeldStore(SqlStateStore):
        def cache_get(self, key: str, now: datetime) -> str | None:
            value = super().cache_get(key, now)
            if threading.current_thread() is not threading.main_thread():
                read_answered.set()
                assert deleted.wait(5)
            return value

    memo = MemoTokenCache(HeldStore(f"sqlite:///{tmp_path / 'state.sqlite3'}"))
    memo.cache_put("t", "rejected", NOW + timedelta(hours=1))
    seen: list[str | None] = []
    reader = threading.Thread(target=lambda: seen.append(memo.cache_get("t", NOW)))
    reader.start()
    assert read_answered.wait(5)
    memo.cache_delete("t")
    deleted.set()
    reader.join(5)
    assert seen == ["rejected"]
    assert memo.cache_get("t", NOW) is None
