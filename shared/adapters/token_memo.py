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
    caller's clock) and never past the expiry it was stored with."""

    def __init__(self, store: TokenCache) -> None:
        self._store = store
        self._memo: dict[str, tuple[str, datetime]] = {}
        self._lock = threading.Lock()  # the poller advances jobs from several threads

    def cache_get(self, key: str, now: datetime) -> str | None:
        with self._lock:
            remembered = self._memo.get(key)
        if remembered is not None and now < remembered[1]:
            return remembered[0]
        value = self._store.cache_get(key, now)
        with self._lock:
            if value is None:
                self._memo.pop(key, None)
            else:
                self._memo[key] = (value, now + MEMO_FOR)
        return value

    def cache_put(self, key: str, value: str, expires_at: datetime) -> None:
        self._store.cache_put(key, value, expires_at)
        with self._lock:
            self._memo.pop(key, None)  # the next read learns it from the store, with its clock

    def cache_delete(self, key: str) -> None:
        with self._lock:
            self._memo.pop(key, None)
        self._store.cache_delete(key)
