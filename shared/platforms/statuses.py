"""A job status the vendor's documents do not list: waited for a bounded time, never read
as progress or failure on a guess (a new in-between state would pass by then)."""

from __future__ import annotations

from datetime import datetime, timedelta

from shared.domain.errors import RetryLater
from shared.ports import TokenCache


def wait_for_documented(cache: TokenCache, key: str, said: str, now: datetime,
                        wait: timedelta) -> str:
    """RetryLater naming `said` (the status and what to check) until `wait` has passed since
    the status was first seen under `key` (kept in the state table's cache, so the job's
    tries are not spent); then the message to fail the job with."""
    first = cache.cache_get(key, now)
    if first is None:
        first = now.isoformat()
        cache.cache_put(key, first, now + wait + timedelta(hours=1))
    minutes = wait.total_seconds() / 60
    if now - datetime.fromisoformat(first) >= wait:
        return f"{said} (still so after {minutes:g} minutes)"
    raise RetryLater(f"{said}; waiting up to {minutes:g} minutes for a documented status")
