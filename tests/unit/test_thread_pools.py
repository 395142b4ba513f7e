"""`make_client` gives each thread a connection pool of its own (shared/adapters/thread_pools.py):
a thread keeps its connection from request to request, threads do not share one, a
finished thread's pool is closed when the next is made, and closing the client closes
them all. Over real HTTP to a loopback server that counts connections."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import httpx
import pytest

from shared.adapters.http import make_client
from shared.adapters.thread_pools import ThreadPools
from tests.support.proxy import RecordingProxy


class Counting(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: one connection serves many requests
    connections: ClassVar[set[tuple[str, int]]] = set()

    def do_GET(self) -> None:
        Counting.connections.add(self.client_address)
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, format: str, *args: object) -> None:
        """Quiet."""


@pytest.fixture()
def server() -> Iterator[str]:
    Counting.connections = set()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Counting)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()
    httpd.server_close()


def pools_of(client: httpx.Client) -> ThreadPools:
    transport = client._transport  # the client's own transport, as httpx keeps it
    assert isinstance(transport, ThreadPools)
    return transport


def in_threads(count: int, work: Callable[[], object]) -> None:
    threads = [threading.Thread(target=work) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def test_each_thread_keeps_one_connection_of_its_own(server: str) -> None:
    with make_client() as client:
        turn = threading.Lock()  # one request at a time: a shared pool would reuse one connection
        barrier = threading.Barrier(4)

        def work() -> None:
            for _ in range(5):
                with turn:
                    assert client.get(server).text == "ok"
            barrier.wait()

        in_threads(4, work)
        assert len(Counting.connections) == 4  # 20 requests, one connection per thread
        assert pools_of(client).pools() == 4


def test_a_finished_threads_pool_is_closed_when_the_next_is_made(server: str) -> None:
    with make_client() as client:
        barrier = threading.Barrier(3)

        def work() -> None:
            client.get(server)
            barrier.wait()  # alive together: none is swept while the others make theirs

        in_threads(3, work)
        assert pools_of(client).pools() == 3  # their threads ended; not yet swept
        client.get(server)  # this thread's first request makes its pool
        assert pools_of(client).pools() == 1


def test_closing_the_client_closes_every_pool() -> None:
    closed: list[int] = []

    class Recording(httpx.MockTransport):
        def close(self) -> None:
            closed.append(1)

    pools = ThreadPools(lambda: Recording(lambda request: httpx.Response(200)))
    client = httpx.Client(transport=pools)
    barrier = threading.Barrier(3)

    def work() -> None:
        client.get("http://platform.test/")
        barrier.wait()  # alive together: no pool is swept before the close

    in_threads(3, work)
    assert pools.pools() == 3 and closed == []
    client.close()
    assert len(closed) == 3 and pools.pools() == 0


def test_the_environments_proxy_is_still_taken_and_no_proxy_goes_direct(
        server: str, recording_proxy: RecordingProxy, monkeypatch: pytest.MonkeyPatch) -> None:
    """httpx mounts the environment's proxies only for a client without a transport of its
    own; make_client mounts them itself, each with pools per thread too."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    monkeypatch.setenv("http_proxy", recording_proxy.url)
    with make_client() as client:
        in_threads(2, lambda: client.get(server))
    assert recording_proxy.requests == [f"GET {server}"] * 2

    monkeypatch.setenv("no_proxy", "127.0.0.1")
    with make_client() as client:
        assert client.get(server).text == "ok"
    assert len(recording_proxy.requests) == 2  # direct
