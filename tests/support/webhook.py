"""A chat-robot webhook on loopback that records what it is sent."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest


class WebhookReceiver:
    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.pings: list[str] = []  # paths (with query) of GET requests: heartbeat pings
        self.answers: list[tuple[int, dict[str, Any]]] = []  # queued replies; default 200 ok
        self.gets = 0
        self.get_status = 405  # robots refuse a GET; a heartbeat test sets 200
        self.get_body: dict[str, Any] | None = None  # a JSON answer to a GET (Uptime Kuma's)
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                receiver.messages.append(json.loads(self.rfile.read(length)))
                status, body = receiver.answers.pop(0) if receiver.answers else (200, {"errcode": 0})
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:  # robots refuse a GET (405); heartbeat monitors answer 200
                receiver.gets += 1
                receiver.pings.append(self.path)
                data = b"" if receiver.get_body is None else json.dumps(receiver.get_body).encode()
                self.send_response(receiver.get_status)
                if data:
                    self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/cgi-bin/webhook/send?key=robot-key-5e6f7a8b"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def webhook() -> Iterator[WebhookReceiver]:
    receiver = WebhookReceiver()
    yield receiver
    receiver.server.shutdown()
    receiver.server.server_close()


class GarbledEndpoint:
    """A loopback endpoint that answers every request (webhook POST, heartbeat GET) with
    HTTP 200 and a body labelled gzip that is not: httpx raises DecodingError reading it,
    an httpx error that is not a TransportError."""

    def __init__(self) -> None:
        self.requests: list[str] = []  # "METHOD path"
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def _garbled(self) -> None:
                endpoint.requests.append(f"{self.command} {self.path}")
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                self.send_response(200)
                self.send_header("Content-Encoding", "gzip")
                self.send_header("Content-Length", "7")
                self.end_headers()
                self.wfile.write(b"garbage")

            do_POST = do_GET = _garbled

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def garbled() -> Iterator[GarbledEndpoint]:
    endpoint = GarbledEndpoint()
    yield endpoint
    endpoint.server.shutdown()
    endpoint.server.server_close()
