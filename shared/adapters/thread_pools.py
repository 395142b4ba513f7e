"""One connection pool per thread behind one httpx client.

httpx's client is safe to share across threads, but its one connection pool serves them
all under one lock and, for every request and every response closed, walks each of its
connections and waiting requests (httpcore's `_assign_requests_to_connections`). A
poller tick's workers sharing a platform's client spent about a tenth of their CPU there
(`scripts/bench poller`, a tick at 0 ms latency; py-spy). Here each thread gets a pool of
its own: a worker keeps its one connection to a platform for the whole tick, and waits
on no other thread's lock. A pool whose thread has ended is closed when the next pool is
made, and every pool when the client closes.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import httpx


class ThreadPools(httpx.BaseTransport):
    """Sends each request through the calling thread's own transport, made by `make`."""

    def __init__(self, make: Callable[[], httpx.BaseTransport]) -> None:
        self._make = make
        self._local = threading.local()
        self._lock = threading.Lock()
        self._pools: dict[threading.Thread, httpx.BaseTransport] = {}

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        pool: httpx.BaseTransport | None = getattr(self._local, "pool", None)
        if pool is None:
            pool = self._local.pool = self._new_pool()
        return pool.handle_request(request)

    def _new_pool(self) -> httpx.BaseTransport:
        pool = self._make()
        with self._lock:
            ended = [thread for thread in self._pools if not thread.is_alive()]
            left = [self._pools.pop(thread) for thread in ended]
            self._pools[threading.current_thread()] = pool
        for old in left:  # idle connections of a finished tick's workers
            old.close()
        return pool

    def pools(self) -> int:
        """Pools open now (one per thread that sent a request and is still known)."""
        with self._lock:
            return len(self._pools)

    def close(self) -> None:
        with self._lock:
            pools, self._pools = list(self._pools.values()), {}
        for pool in pools:
            pool.close()
