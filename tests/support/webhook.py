"""A chat-robot webhook on loopback that records what it is sent."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest


def robot_refusal(signing: tuple[str, str], path: str, body: dict[str, Any]) -> dict[str, Any] | None:
    """How a robot with signing turned on answers a message it cannot verify; None when
    the signature holds. DingTalk (加签, https://open.dingtalk.com/document/robots/
    customize-robot-security-settings): `timestamp` (ms) and `sign` in the query, sign =
    urlencode(base64(HmacSHA256(key=secret, msg=timestamp + "\n" + secret))), within an
    hour. Feishu (签名校验, https://open.feishu.cn/document/client-docs/bot-v3/add-custom-bot):
    `timestamp` (s) and `sign` in the body, sign = base64(HmacSHA256(key=timestamp + "\n" +
    secret, msg="")), within an hour."""
    robot, secret = signing
    if robot == "dingtalk":
        query = parse_qs(urlsplit(path).query)
        stamp, sign = query.get("timestamp", [""])[0], query.get("sign", [""])[0]
        key, message, now = secret.encode(), f"{stamp}\n{secret}".encode(), time.time() * 1000
        window, refusal = 3600 * 1000, {"errcode": 310000, "errmsg": "sign not match"}
    else:
        stamp, sign = str(body.get("timestamp", "")), str(body.get("sign", ""))
        key, message, now = f"{stamp}\n{secret}".encode(), b"", time.time()
        window = 3600
        refusal = {"code": 19021, "msg": "sign match fail or timestamp is not within one hour "
                                        "from current time", "data": {}}
    expected = base64.b64encode(hmac.new(key, message, hashlib.sha256).digest()).decode()
    fresh = stamp.isdigit() and abs(now - int(stamp)) < window
    return None if fresh and hmac.compare_digest(sign, expected) else refusal


class WebhookReceiver:
    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.posted_paths: list[str] = []  # paths (with query) of POST requests
        self.signing: tuple[str, str] | None = None  # (robot, secret): verify as that robot does
        self.pings: list[str] = []  # paths (with query) of GET requests: heartbeat pings
        # queued replies, a str sent as an HTML page; default 200 ok
        self.answers: list[tuple[int, dict[str, Any] | str]] = []
        self.gets = 0
        self.get_status = 405  # robots refuse a GET; a heartbeat test sets 200
        self.get_body: dict[str, Any] | None = None  # a JSON answer to a GET (Uptime Kuma's)
        # (bytes, answer): a body longer than that many bytes is refused with that answer
        self.body_limit: tuple[int, dict[str, Any]] | None = None
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                raw = self.rfile.read(length)
                message = json.loads(raw)
                receiver.messages.append(message)
                receiver.posted_paths.append(self.path)
                status, body = receiver.answers.pop(0) if receiver.answers else (200, {"errcode": 0})
                refused = receiver.signing and robot_refusal(receiver.signing, self.path, message)
                if refused:  # both robots answer HTTP 200 with the code in the body
                    status, body = 200, refused
                if receiver.body_limit and len(raw) > receiver.body_limit[0]:
                    status, body = 200, receiver.body_limit[1]
                page = isinstance(body, str)
                data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "text/html" if page else "application/json")
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
