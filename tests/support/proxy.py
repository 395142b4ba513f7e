"""A minimal HTTP proxy on loopback that records what it is asked: CONNECT tunnels (how
clients reach https:// through HTTPS_PROXY) and absolute-form requests (how httpx sends
an http:// request through HTTP_PROXY; requests without a body). `routes` sends a target to another address, so a
test can place a server where only the proxy reaches it."""

from __future__ import annotations

import contextlib
import socket
import socketserver
import threading
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest

Address = tuple[str, int]


class RecordingProxy:
    def __init__(self) -> None:
        self.requests: list[str] = []  # "CONNECT host:port" or "GET http://host:port/path"
        self.routes: dict[Address, Address] = {}
        proxy = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                head = self.rfile.readline(8192).decode("latin-1").strip()
                headers = []
                while (line := self.rfile.readline(8192)) not in (b"\r\n", b"\n", b""):
                    headers.append(line)
                method, target, _ = head.split(" ", 2)
                proxy.requests.append(f"{method} {target}")
                if method == "CONNECT":
                    host, _, port = target.rpartition(":")
                    self._tunnel(proxy.upstream((host.strip("[]"), int(port))))
                else:
                    self._forward(method, target, headers)

            def _tunnel(self, upstream: Address) -> None:
                with socket.create_connection(upstream, timeout=10) as far:
                    self.wfile.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    self.wfile.flush()
                    _pipe(self.connection, far)

            def _forward(self, method: str, target: str, headers: list[bytes]) -> None:
                parts = urlsplit(target)
                upstream = proxy.upstream((parts.hostname or "", parts.port or 80))
                path = parts.path + (f"?{parts.query}" if parts.query else "")
                kept = [h for h in headers if not h.lower().startswith((b"proxy-", b"connection"))]
                with socket.create_connection(upstream, timeout=10) as far:
                    far.sendall(f"{method} {path} HTTP/1.1\r\n".encode() + b"".join(kept)
                                + b"Connection: close\r\n\r\n")
                    _pipe(self.connection, far)

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

        self.server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def upstream(self, target: Address) -> Address:
        return self.routes.get(target, target)


def _pipe(near: socket.socket, far: socket.socket) -> None:
    """Copy bytes both ways until the far side closes."""
    def copy(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                sink.shutdown(socket.SHUT_WR)

    back = threading.Thread(target=copy, args=(far, near), daemon=True)
    back.start()
    copy(near, far)
    back.join(timeout=10)


@pytest.fixture
def recording_proxy() -> Iterator[RecordingProxy]:
    proxy = RecordingProxy()
    yield proxy
    proxy.server.shutdown()
    proxy.server.server_close()
