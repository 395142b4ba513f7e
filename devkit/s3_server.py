"""moto's S3 server standing in for COS on loopback (behind `devkit.cos_layer`, which adds
COS's x-cos-forbid-overwrite and x-cos-hash-crc64ecma), and the bucket the backups go to.

    python -m devkit.s3_server --bucket NAME [--request-log FILE] [--https FOLDER]
    # prints the endpoint URL, runs until killed; FILE gets one JSON line per request;
    # with --https, FOLDER/ca.pem is the CA its certificate comes from
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import ssl
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from moto.s3.models import s3_backends
from moto.server import ThreadedMotoServer
from qcloud_cos import CosConfig, CosS3Client
from werkzeug.serving import make_server

from devkit.cos_layer import CosLayer, StartResponse, WsgiApp

if TYPE_CHECKING:
    import trustme

REGION = "ap-guangzhou"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RequestLog:
    """WSGI middleware writing one JSON line per request to `path`: when it arrived and
    when its answer was ready (wall clock, seconds), its method, path and query names.
    A benchmark reads it to time the phases of an upload the same way for every client."""

    def __init__(self, app: WsgiApp, path: Path) -> None:
        self.app = app
        self._out = path.open("a", buffering=1, encoding="utf-8")
        self._lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        arrived = time.time()
        body = list(self.app(environ, start_response))  # moto answers with a finished body
        line = json.dumps({"start": arrived, "end": time.time(),
                           "method": environ.get("REQUEST_METHOD"), "path": environ.get("PATH_INFO"),
                           "query": sorted(k.split("=")[0] for k in
                                           environ.get("QUERY_STRING", "").split("&") if k)})
        with self._lock:
            self._out.write(line + "\n")
        return body


class CosLikeServer(ThreadedMotoServer):
    """moto's threaded server behind `CosLayer`: COS's forbid-overwrite header and CRC64;
    with `request_log`, every request is timed into that file (`RequestLog`); with `tls`
    (a server-side context), it speaks HTTPS as COS does. moto keeps its buckets per
    process, so every server started in one process serves the same ones."""

    def __init__(self, ip_address: str, port: int, request_log: Path | None = None,
                 tls: ssl.SSLContext | None = None) -> None:
        super().__init__(ip_address=ip_address, port=port, verbose=False)
        self.layer = CosLayer(DomainDispatcherApplication(create_backend_app))
        self._app: WsgiApp = RequestLog(self.layer, request_log) if request_log else self.layer
        self._tls = tls

    def _server_entry(self) -> None:
        self._server = make_server(self._ip_address, self._port, self._app, True,
                                   request_handler=MotoRequestHandler, ssl_context=self._tls)
        self._server_ready_event.set()
        self._server.serve_forever()


def start_s3_server(port: int = 0, request_log: Path | None = None,
                    tls: ssl.SSLContext | None = None) -> tuple[CosLikeServer, str]:
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    port = port or free_port()
    server = CosLikeServer("127.0.0.1", port, request_log, tls)
    server.start()
    return server, f"{'https' if tls else 'http'}://127.0.0.1:{port}"


def stop_s3_server(server: ThreadedMotoServer) -> None:
    """Stop and drop the stored objects now; left to interpreter exit, moto's key
    finalizers print tracebacks."""
    server.stop()
    for regions in s3_backends.values():
        for backend in regions.values():
            backend.reset()


def cos_client(endpoint: str, ca: str | None = None) -> CosS3Client:
    """An unsigned SDK client for the local server (moto cannot check COS signatures);
    over HTTPS it trusts the CA file `ca`."""
    scheme, _, address = endpoint.partition("://")
    host, port = address.split(":")
    return CosS3Client(CosConfig(Region=REGION, Scheme=scheme, IP=host, Port=int(port),
                                 Anonymous=True, VerifySSL=ca))


def create_bucket(endpoint: str, bucket: str, ca: str | None = None) -> None:
    cos_client(endpoint, ca).create_bucket(Bucket=bucket)


def server_context(ca: trustme.CA, *names: str) -> ssl.SSLContext:
    """A server context with a certificate `ca` issued for `names` (default 127.0.0.1)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert(*(names or ("127.0.0.1",))).configure_cert(context)
    return context


def https_context(folder: Path) -> ssl.SSLContext:
    """A server context for 127.0.0.1 from a throwaway CA, whose certificate goes to
    FOLDER/ca.pem for the clients to trust."""
    import trustme  # a test tool: only a server asked for HTTPS needs it

    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(folder / "ca.pem"))
    return server_context(ca)


def trust(ca: Path) -> Path:
    """Every client in this process (and the processes it starts) trusts the CA file `ca`
    beside the public CAs the functions trust (certifi's bundle: loading it is the cost
    a TLS client pays per context, so the bundle is as large as when deployed). httpx's
    variable and requests' name the same file (shared/adapters/tls.py), which is returned."""
    import certifi

    bundle = ca.with_name("bundle.pem")
    bundle.write_text(Path(certifi.where()).read_text() + ca.read_text())
    for name in ("SSL_CERT_DIR", "CURL_CA_BUNDLE"):
        os.environ.pop(name, None)
    os.environ["SSL_CERT_FILE"] = os.environ["REQUESTS_CA_BUNDLE"] = str(bundle)
    return bundle


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--bucket", action="append", default=["bench-1250000000"])
    parser.add_argument("--request-log", type=Path, help="time every request into this file")
    parser.add_argument("--https", type=Path, metavar="FOLDER",
                        help="speak HTTPS; the CA to trust is written to FOLDER/ca.pem")
    args = parser.parse_args()
    tls = https_context(args.https) if args.https else None
    _, url = start_s3_server(args.port, args.request_log, tls)
    for bucket in args.bucket:
        create_bucket(url, bucket, str(args.https / "ca.pem") if args.https else None)
    print(url, flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
