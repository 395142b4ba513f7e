"""The HTTP API on this machine: real HTTP requests become Function URL events for the
same handler the trigger function runs, so the status page can be used and tested
without a cloud. `baas-backup serve` runs it, with the poller's work done in a thread."""

from __future__ import annotations

import base64
import json
import logging
import os
import sys
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote, urlsplit

from shared.entrypoints.http_api import MAX_BODY_BYTES, TOKEN_ENV

if TYPE_CHECKING:
    from shared.config import Config

log = logging.getLogger(__name__)

EventHandler = Callable[[dict[str, Any]], dict[str, Any]]
INTERRUPTED = 130  # 128 + SIGINT: the status a shell gives a command Ctrl-C stopped
STAGE = "local"
BODY_TIMEOUT_SECONDS = 10.0


def function_url_event(method: str, target: str, headers: dict[str, str], body: bytes,
                       client_ip: str) -> dict[str, Any]:
    """The event a Function URL sends an event function for this request: `httpMethod`,
    `path`, lower-case `headers` with the client's address in `x-scf-remote-addr`,
    `queryString`, and the body as text with no base64 flag (cloud.tencent.com/document/
    product/583/96099, 事件函数 -> 请求参数). A repeated query name is passed as a list
    (its form on a real Function URL is not documented)."""
    parts = urlsplit(target)
    query: dict[str, Any] = {
        name: values[0] if len(values) == 1 else values
        for name, values in parse_qs(parts.query, keep_blank_values=True).items()
    }
    # Bytes that are not UTF-8 stay as lone surrogates, so the handler refuses them as
    # "not UTF-8" instead of seeing replacement characters.
    text = body.decode("utf-8", "surrogateescape")
    return {
        "httpMethod": method,
        "path": unquote(parts.path) or "/",
        "headers": {**{name.lower(): value for name, value in headers.items()},
                    "x-scf-remote-addr": client_ip},
        "queryString": query,
        "body": text,
    }


def _digits(text: str) -> bool:
    """ASCII digits only (RFC 9110 8.6: Content-Length = 1*DIGIT): str.isdigit alone
    takes "²", which int() refuses."""
    return text.isascii() and text.isdigit()


class _Handler(BaseHTTPRequestHandler):
    server_version = "baas-backup-local"
    protocol_version = "HTTP/1.1"
    handle_event: EventHandler  # set on the subclass made per server

    # A client that stalls (headers or body) is dropped after this many seconds, so a
    # slow sender cannot hold a thread forever.
    timeout = BODY_TIMEOUT_SECONDS

    def _body(self) -> bytes | None:
        """The request body, or None after answering a body this server will not read:
        chunked (API Gateway hands the function a whole body; this stand-in takes only
        Content-Length, rather than guess where a chunked body ends), or a length that
        is not one non-negative number. Read one byte past the limit, so the handler
        can refuse it; never the whole body."""
        if self.headers.get("Transfer-Encoding"):
            self._refuse(411, "send the body with Content-Length, not Transfer-Encoding")
            return None
        lengths = self.headers.get_all("Content-Length") or []
        if len(set(lengths)) > 1 or not all(_digits(v.strip()) for v in lengths):
            self._refuse(400, "Content-Length must be one non-negative integer")
            return None
        length = int(lengths[0]) if lengths else 0
        try:
            body = self.rfile.read(min(length, MAX_BODY_BYTES + 1)) if length else b""
        except TimeoutError:
            self._refuse(408, f"the body did not arrive within {self.timeout:g} s")
            return None
        if len(body) < min(length, MAX_BODY_BYTES + 1):  # the client hung up early
            self.close_connection = True
            return None
        if length > len(body):
            self.close_connection = True
        return body

    def _refuse(self, status: int, message: str) -> None:
        data = json.dumps({"error": message, "field": "body"}).encode()
        self.close_connection = True
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)

    def _serve(self) -> None:
        body = self._body()
        if body is None:
            return
        event = function_url_event(self.command, self.path, dict(self.headers.items()), body,
                                  self.client_address[0])
        try:
            answer = self.handle_event(event)
        except Exception:  # what SCF would report as a function error
            log.exception("the handler raised")
            answer = {"statusCode": 502, "headers": {"Content-Type": "application/json"},
                      "body": '{"error": "the handler raised; see the log", "field": null}'}
        payload = answer.get("body") or ""
        data = base64.b64decode(payload) if answer.get("isBase64Encoded") else payload.encode("utf-8")
        self.send_response(int(answer["statusCode"]))
        for name, value in (answer.get("headers") or {}).items():
            self.send_header(name, str(value))
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = do_HEAD = _serve

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the handler writes one JSON log line per request


class LocalApiServer:
    """A threaded HTTP server around an event handler; `start()` serves in the background."""

    def __init__(self, handle_event: EventHandler, host: str = "127.0.0.1", port: int = 0) -> None:
        handler = type("Handler", (_Handler,), {"handle_event": staticmethod(handle_event)})
        self.httpd = ThreadingHTTPServer((host, port), handler)
        self.httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host!s}:{port}/"

    def start(self) -> str:
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="local-api", daemon=True)
        self._thread.start()
        return self.url

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        if self._thread:
            self._thread.join(timeout=10)


def serve(config: Config, config_path: str | None, host: str, port: int, poll_seconds: float,
          *, fragment: str = "") -> int:
    """`baas-backup serve`: the trigger's HTTP API here, and the poller every few seconds.
    `fragment` ends the URL printed once the port is bound (the demo's `#token=...`)."""
    from shared.bootstrap import build_context
    from shared.config import CONFIG_PATH_ENV
    from shared.entrypoints.scf import handle_trigger
    from shared.service.poll import poll

    try:  # first: a port or host it cannot have is refused before a poller starts
        server = LocalApiServer(handle_trigger, host, port)
    except OSError as exc:  # in use, not this machine's address, or a name that does not resolve
        reason = exc.strerror or str(exc)  # the system's words: in use, not known, ...
        print(f"baas-backup serve: cannot listen on {host}:{port}: {reason}; choose another "
              "--port (0: any free one) or --host", file=sys.stderr)
        return 2
    if config_path:  # the handler finds its config the way SCF gives it: by environment
        os.environ[CONFIG_PATH_ENV] = os.path.abspath(config_path)
    stop = threading.Event()
    try:  # the socket is closed however this ends, a context that cannot be built included
        if poll_seconds > 0:
            ctx = build_context(config)

            def poller() -> None:
                while not stop.wait(poll_seconds):
                    try:
                        poll(ctx)
                    except Exception:  # keep serving; the next tick tries again
                        log.exception("local poll failed")

            threading.Thread(target=poller, name="local-poller", daemon=True).start()
        token_note = ("" if os.environ.get(TOKEN_ENV, "").strip()
                      else f" -- {TOKEN_ENV} is not set: every route answers 503 until it is")
        print(f"serving the HTTP API and status page on {server.url}{fragment}{token_note}",
              flush=True)
        server.httpd.serve_forever()
    except KeyboardInterrupt:  # Ctrl-C: how this is meant to end; a run it left open is in
        # the state store, moved on by the next poll (a copy it held is taken back at once)
        print("baas-backup serve: interrupted; stopped serving. Runs still open stay open: "
              "`baas-backup poll` (or the next `serve`) moves them on", file=sys.stderr,
              flush=True)
        return INTERRUPTED
    finally:
        stop.set()
        server.httpd.server_close()
    return 0
