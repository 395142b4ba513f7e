"""The token cache as platforms see it: the state table's cache, remembered in this
process for a few seconds. A poller tick advancing hundreds of jobs of one source
otherwise reads the same token from the state store before every platform call."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta

from shared.ports import TokenCache

# Short against a token's life: tokens are shared until five minutes before they expire,
# and a platform that rejects one deletes it (here too) before fetching another.
MEMO_FOR = timedelta(seconds=30)


class MemoTokenCache:
    """A `TokenCache` over another, remembering each value for at most MEMO_FOR (on the
    caller's clock) and never past the expiry it was stored with; a put or delete is never
    undone by a read that was in flight when it happened."""

    def __init__(self, store: TokenCache) -> None:
        self._store = store
        self._memo: dict[str, tuple[str, datetime]] = {}
        # Bumped by every put and delete once the store has it: a read that saw another
        # number before asking the store may hold the old value, and does not remember it.
        # One count for all keys keeps it bounded; a read crossing another key's write only
        # asks the store again next time.
        self._writes = 0
        self._lock = threading.Lock()  # the poller advances jobs from several threads

    def cache_get(self, key: str, now: datetime) -> str | None:
        with self._lock:
            remembered = self._memo.get(key)
            writes = self._writes
        if remembered is not None and now < remembered[1]:
            return remembered[0]
        # The port gives no expiry: a value the store still holds at the end of the memo
        # lives at least that long, so remembering it never outlives its stored expiry.
        lasting = self._store.cache_get(key, now + MEMO_FOR)
        with self._lock:
            if lasting is not None and self._writes == writes:
                self._memo[key] = (lasting, now + MEMO_FOR)
            else:
                self._memo.pop(key, None)
        if lasting is not None:
            return lasting
        return self._store.cache_get(key, now)  # in its last MEMO_FOR: served, not remembered

    def cache_put(self, key: str, value: str, expires_at: datetime) -> None:
        self._store.cache_put(key, value, expires_at)
        self._forget(key)  # the next read learns it from the store, with its clock

    def cache_delete(self, key: str) -> None:
        self._store.cache_delete(key)
        self._forget(key)

    def cache_claim(self, key: str, value: str, expires_at: datetime, now: datetime) -> bool:
        """Claimed in the store, where every function sees it. A claim guards a value that
        is about to change (a token fetch): whether this one won it or another function
        holds it, what is remembered is read from the store again, so waiting for that
        function's token is never answered from the memo with the old one."""
        claimed = self._store.cache_claim(key, value, expires_at, now)
        with self._lock:
            self._memo.clear()
            self._writes += 1
        return claimed

    def _forget(self, key: str) -> None:
        """After the store changed: drop the memo, and stop reads in flight remembering."""
        with self._lock:
            self._memo.pop(key, None)
            self._writes += 1
