"""Every local emulator's HTTP server queues a burst of connections until its accept loop
takes them. With socketserver's default listen backlog (5), a restore's 24 threads on a
loaded machine overflowed the queue: connections were reset before the emulator read the
request, the client retried, and a third reset in a row failed the write."""

from __future__ import annotations

import selectors
import socket
import time
from collections.abc import Callable
from http.server import ThreadingHTTPServer

import pytest

from devkit.emulators import tencentcloud
from devkit.emulators.http_base import HOST
from devkit.emulators.minapp import MinAppEmulator
from devkit.emulators.onedb import OneDBEmulator
from devkit.emulators.wechat import WeChatEmulator

BURST = 64  # the restore tests' 24 threads, with room for httpx opening new connections

SERVERS: dict[str, Callable[[], ThreadingHTTPServer]] = {
    "onedb": lambda: OneDBEmulator()._make_server((HOST, 0)),
    "minapp": lambda: MinAppEmulator()._make_server((HOST, 0)),
    "wechat": lambda: WeChatEmulator()._make_server((HOST, 0)),
    "tencentcloud": lambda: tencentcloud._Server((HOST, 0), tencentcloud.TencentCloudEmulator()),
}


def _connected(address: tuple[str, int], count: int, within: float) -> int:
    """How many of `count` connections opened at once complete their handshake in time."""
    sockets = [socket.socket() for _ in range(count)]
    selector = selectors.DefaultSelector()
    try:
        for sock in sockets:
            sock.setblocking(False)
            sock.connect_ex(address)
            selector.register(sock, selectors.EVENT_WRITE)
        done = 0
        deadline = time.monotonic() + within
        while done < count and (left := deadline - time.monotonic()) > 0:
            for key, _ in selector.select(left):
                selector.unregister(key.fileobj)
                ready = key.fileobj
                assert isinstance(ready, socket.socket)
                done += ready.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
        return done
    finally:
        selector.close()
        for sock in sockets:
            sock.close()


@pytest.mark.parametrize("make", list(SERVERS.values()), ids=list(SERVERS))
def test_a_burst_of_connections_waits_for_the_accept_loop(
        make: Callable[[], ThreadingHTTPServer]) -> None:
    server = make()  # listening, but not serving: nothing accepts while the burst arrives
    try:
        host, port = server.server_address[:2]
        assert _connected((str(host), int(port)), BURST, within=2.0) == BURST
    finally:
        server.server_close()
