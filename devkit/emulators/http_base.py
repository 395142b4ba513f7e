"""HTTP plumbing shared by the local emulators; each emulator keeps only its platform.

- :class:`EmulatorServer`: a ``ThreadingHTTPServer`` with daemon threads and a reusable
  address that keeps quiet about clients hanging up (``ConnectionError``, ``TimeoutError``);
- :class:`QuietHandler` and :class:`DispatchHandler`: request handlers speaking HTTP/1.1
  that log nothing (request lines and headers carry tokens and signatures);
- :class:`BackgroundServer` and :class:`LocalEmulator`: serving on 127.0.0.1 (an ephemeral
  port unless told otherwise) from a daemon thread, with ``start()``, ``stop()`` and
  ``with``; :func:`serve_until_terminated`: a ``main()`` that prints the base URL and serves
  until SIGTERM or Ctrl-C.
"""

from __future__ import annotations

import json
import shutil
import signal
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, ClassVar, Generic, TypeVar

__all__ = ["LISTEN_BACKLOG", "BackgroundServer", "DispatchHandler", "EmulatorServer", "LocalEmulator",
           "QuietHandler", "json_bytes", "serve_until_terminated"]

HOST = "127.0.0.1"
# Connections the kernel queues until the accept loop takes them. socketserver's default
# (5) overflowed under a restore's 24 threads on a loaded machine, and Linux reset queued
# connections before the request was read (docs.python.org/3/library/socketserver.html,
# request_queue_size; man 2 listen, "backlog"). Above httpx's default pool of 100
# connections (python-httpx.org/advanced/resource-limits/); capped by net.core.somaxconn.
LISTEN_BACKLOG = 128

_Emulator = TypeVar("_Emulator")
_Self = TypeVar("_Self", bound="LocalEmulator")


def json_bytes(document: Any) -> bytes:
    """A JSON answer body: UTF-8, non-ASCII characters kept as they are; a text holding a
    lone surrogate (half an emoji) goes out with `\\uXXXX` escapes, as JSON.stringify
    writes it, instead of failing the answer."""
    try:
        return json.dumps(document, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(document).encode("ascii")


class EmulatorServer(ThreadingHTTPServer, Generic[_Emulator]):
    """Serves one emulator (``self.emulator``), one daemon thread per connection."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = LISTEN_BACKLOG

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler],
                 emulator: _Emulator) -> None:
        self.emulator = emulator
        super().__init__(address, handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            return
        super().handle_error(request, client_address)


class QuietHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    sys_version = ""
    timeout = 60
    disable_nagle_algorithm = True  # small JSON answers: no delayed-ACK stalls

    def log_message(self, format: str, *args: Any) -> None:
        """Silent: request lines and headers carry tokens and signatures."""


class DispatchHandler(QuietHandler):
    """GET and POST go to ``_dispatch(method)``; answers are whole bodies (``_send``)."""

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def _dispatch(self, method: str) -> None:
        raise NotImplementedError

    def _send(self, status: int, data: bytes, content_type: str,
              extra: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)


class BackgroundServer:
    """A started server and the daemon thread serving it."""

    def __init__(self, server: ThreadingHTTPServer, name: str) -> None:
        self.server = server
        host, port = server.server_address[:2]
        self.endpoint = f"{host!s}:{port}"
        self.url = f"http://{self.endpoint}"
        self.thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                       name=name, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


class LocalEmulator:
    """``start()`` serves in a background thread on 127.0.0.1 and returns the base URL;
    ``stop()`` is safe to call twice; ``with`` starts (unless started) and stops.

    Subclasses set ``_lock``, ``port`` and ``base_url`` and implement ``_make_server``;
    with ``tmp_prefix`` set, a temporary directory (``_tmpdir``) lives as long as the server.
    """

    thread_name: ClassVar[str] = "emulator"
    tmp_prefix: ClassVar[str | None] = None
    port: int
    base_url: str
    _lock: threading.RLock
    _serving: BackgroundServer | None = None
    _tmpdir: str | None = None

    def _make_server(self, address: tuple[str, int]) -> ThreadingHTTPServer:
        raise NotImplementedError

    def _on_start(self) -> None:
        """Runs under the lock before the server starts."""

    def _on_stop(self) -> None:
        """Runs under the lock as the server is taken away, before it stops."""

    def start(self) -> str:
        """Start serving in a background thread; return the base URL."""
        with self._lock:
            if self._serving is not None:
                raise RuntimeError("emulator already started")
            self._on_start()
            if self.tmp_prefix is not None:
                self._tmpdir = tempfile.mkdtemp(prefix=self.tmp_prefix)
            self._serving = BackgroundServer(self._make_server((HOST, self.port)), self.thread_name)
            self.base_url = self._serving.url
            return self.base_url

    def stop(self) -> None:
        """Stop serving (and delete the temporary directory). Safe to call twice."""
        with self._lock:
            serving, tmpdir = self._serving, self._tmpdir
            self._serving = self._tmpdir = None
            self._on_stop()
        if serving is not None:
            serving.close()
        if tmpdir is not None:
            shutil.rmtree(tmpdir, ignore_errors=True)

    def __enter__(self: _Self) -> _Self:
        if self._serving is None:
            self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def serve_until_terminated(emulator: LocalEmulator) -> int:
    """Print the base URL and serve until SIGTERM or Ctrl-C; then stop. Returns 0."""

    def _terminate(signum: int, frame: Any) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, _terminate)
    print(emulator.start(), flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        emulator.stop()
    return 0
