"""A real HTTP listener on loopback whose answers a test scripts: redirects, compressed
bombs, slow drips, bodies cut off without a length. It records every request (method,
path, headers, body) so a test can prove what was (not) sent to it."""

from __future__ import annotations

import contextlib
import gzip
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

import pytest

Answer = Callable[[BaseHTTPRequestHandler], None]


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


class Hostile:
    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.answers: dict[str, Answer] = {}  # by path (query ignored)
        self.seen: list[Seen] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                path = urlsplit(self.path).path
                owner.seen.append(Seen(self.command, path, dict(self.headers.items()), body))
                answer = owner.answers.get(path)
                if answer is None:
                    send(self, 404, b"not here")
                else:
                    answer(self)

            do_GET = do_POST = do_PUT = do_HEAD = do_DELETE = _any

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        if tls is not None:  # HTTPS: each accepted connection does its handshake first
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_port
        self.base = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def send(handler: BaseHTTPRequestHandler, status: int, body: bytes,
         headers: dict[str, str] | None = None) -> None:
    handler.send_response(status)
    for name, value in (headers or {}).items():
        handler.send_header(name, value)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


def redirect(location: str, status: int = 307) -> Answer:
    return lambda h: send(h, status, b"", {"Location": location})


def json_answer(body: bytes) -> Answer:
    return lambda h: send(h, 200, body, {"Content-Type": "application/json"})


def gzipped(data: bytes) -> Answer:
    packed = gzip.compress(data, compresslevel=9)
    return lambda h: send(h, 200, packed, {"Content-Encoding": "gzip",
                                           "Content-Type": "application/octet-stream"})


def plain(data: bytes) -> Answer:
    return lambda h: send(h, 200, data, {"Content-Type": "application/octet-stream"})


def drip(data: bytes, every: float) -> Answer:
    """The whole length announced, then a byte at a time (a slow or stalling link)."""

    def answer(h: BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        try:
            for index in range(len(data)):
                h.wfile.write(data[index:index + 1])
                h.wfile.flush()
                time.sleep(every)
        except OSError:
            pass  # the client gave up: that is the point

    return answer


def cut_without_length(data: bytes) -> Answer:
    """No Content-Length, no chunked framing: the body ends when the connection closes,
    so a cut-off looks like the end."""

    def answer(h: BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Content-Type", "application/octet-stream")
        h.send_header("Connection", "close")
        h.end_headers()
        h.wfile.write(data)
        h.wfile.flush()
        h.close_connection = True
        with contextlib.suppress(OSError):
            h.connection.shutdown(socket.SHUT_WR)

    return answer


def every_path(answer: Answer) -> dict[str, Answer]:
    """Answers for any path (when the platform picks the file's path)."""

    class Every(dict[str, Answer]):
        def get(self, key: str, default: object = None) -> Answer:
            return answer

    return Every()


@pytest.fixture
def hostile() -> Iterator[Hostile]:
    server = Hostile()
    yield server
    server.close()


@pytest.fixture
def other_hostile() -> Iterator[Hostile]:
    server = Hostile()
    yield server
    server.close()
