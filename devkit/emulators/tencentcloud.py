"""Local fake of the Tencent Cloud API endpoint (API 3.0), enough for SCF ``Invoke``.

A real HTTP server (stdlib ``ThreadingHTTPServer`` on 127.0.0.1) that the real
``tencentcloud-sdk-python`` talks to when its ``HttpProfile`` points here
(``endpoint="127.0.0.1:PORT"``, ``protocol="http"``):

- every request must carry a valid **TC3-HMAC-SHA256** signature, recomputed here from
  the raw request with the key registered for its SecretId (a broken signing fails);
  a temporary key's session token must come along in ``X-TC-Token``; a timestamp more
  than 5 minutes off is ``AuthFailure.SignatureExpire``;
- ``Invoke`` (service ``scf``, version ``2018-04-16``) answers like the real API:
  ``{"Response": {"Result": {...}, "RequestId": ...}}`` or
  ``{"Response": {"Error": {"Code", "Message"}, "RequestId": ...}}``; functions live per
  region and namespace; a key may be limited to some functions (like a CAM policy);
- every accepted invocation is recorded; a function may have a handler, which runs for
  each ``Event`` invocation in a background thread (retried twice when it raises, as SCF
  does) and inline for ``RequestResponse``; a function created with *async execution*
  (异步执行, ``AsyncRunEnable``) answers every invocation, ``RequestResponse`` included,
  with its request id only and runs the handler in the background, without retries
  (cloud.tencent.com/document/product/583/51519, 注意事项);
- faults can be injected: the next N calls answer a given error code.

Tests drive it in-process through :class:`TencentCloudEmulator`; standalone:
``python -m devkit.emulators.tencentcloud --key AKID:KEY[:TOKEN] --function NAME``.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import hmac
import json
import re
import ssl
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from devkit.emulators.http_base import LISTEN_BACKLOG, BackgroundServer, LocalEmulator, json_bytes

__all__ = ["Invocation", "TencentCloudEmulator", "main"]

SCF_VERSION = "2018-04-16"
MAX_SKEW_SECONDS = 300
MAX_EVENT_BYTES = 128 * 1024
MAX_BODY = 8 * 1024 * 1024
DEFAULT_REGION = "ap-guangzhou"
DEFAULT_UIN = "100000000001"

_AUTH = re.compile(
    r"^TC3-HMAC-SHA256 Credential=(?P<id>[^/]+)/(?P<date>\d{4}-\d{2}-\d{2})/(?P<service>[a-z0-9]+)"
    r"/tc3_request, SignedHeaders=(?P<headers>[a-z0-9;-]+), Signature=(?P<signature>[0-9a-f]{64})$"
)

Handler = Callable[[dict[str, Any]], Any]


class _ApiError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


@dataclass
class _Key:
    secret_key: str
    token: str | None
    allow: set[str] | None  # "region:namespace/function" the key may invoke; None: all
    # False: like an account whose CAM does not honour a function-level resource for
    # scf:InvokeFunction, only a "*" grant lets the key invoke anything
    resource_level: bool = True


@dataclass
class _Function:
    handler: Handler | None
    async_run: bool = False  # created with AsyncRunEnable (异步执行)


@dataclass
class Invocation:
    """One accepted ``Invoke`` call, and what its handler did with it."""

    request_id: str
    function_request_id: str
    region: str
    namespace: str
    function: str
    qualifier: str
    invocation_type: str
    event: dict[str, Any]
    secret_id: str
    attempts: int = 0
    result: Any = None
    error: str | None = None
    done: threading.Event = field(default_factory=threading.Event, repr=False)


def tc3_signature(secret_key: str, date: str, service: str, string_to_sign: str) -> str:
    """TC3-HMAC-SHA256, written from the API's signing spec rather than taken from the SDK."""

    def mac(key: bytes, text: str) -> bytes:
        return hmac.new(key, text.encode("utf-8"), hashlib.sha256).digest()

    signing_key = mac(mac(mac(("TC3" + secret_key).encode("utf-8"), date), service), "tc3_request")
    return hmac.new(signing_key, string_to_sign.encode("utf-8"), hashlib.sha256).hexdigest()


class TencentCloudEmulator(LocalEmulator):
    """The fake API: keys, functions, recorded invocations, injected faults. Thread-safe.

    ``async_retry_delay`` is how long a failed ``Event`` handler waits before SCF would run
    it again (about a minute on SCF; short here). ``clock_skew`` shifts this server's clock.
    """

    def __init__(self, *, port: int = 0, uin: str = DEFAULT_UIN, async_retries: int = 2,
                 async_retry_delay: float = 0.05, tls: ssl.SSLContext | None = None) -> None:
        self.port = port
        self.tls = tls  # a server context: the API over HTTPS, as Tencent Cloud's is
        self.uin = uin
        self.async_retries = async_retries
        self.async_retry_delay = async_retry_delay
        self.clock_skew = 0.0
        self.endpoint = ""  # "127.0.0.1:PORT", what HttpProfile(endpoint=...) wants
        self.url = ""
        self.calls: collections.Counter[str] = collections.Counter()
        self.rejections: list[str] = []  # error codes answered, in order
        self._lock = threading.RLock()
        self._keys: dict[str, _Key] = {}
        self._functions: dict[tuple[str, str, str], _Function] = {}
        self._faults: collections.deque[tuple[str, str]] = collections.deque()
        self._invocations: list[Invocation] = []
        self._workers: list[threading.Thread] = []

    # ----------------------------------------------------------------- lifecycle

    def start(self) -> str:
        with self._lock:
            if self._serving is not None:
                raise RuntimeError("emulator already started")
            server = _Server(("127.0.0.1", self.port), self)
            if self.tls is not None:
                server.socket = self.tls.wrap_socket(server.socket, server_side=True)
            self._serving = BackgroundServer(server, "tencentcloud-emulator")
            self.endpoint = self._serving.endpoint
            self.url = f"{'https' if self.tls else 'http'}://{self.endpoint}"
            return self.url

    def stop(self, wait: float = 30) -> None:
        """Wait for running handlers (up to `wait` seconds), then stop serving."""
        self.wait_idle(wait, raise_on_timeout=False)
        super().stop()

    # ----------------------------------------------------------------- setup

    def add_key(self, secret_id: str, secret_key: str, token: str | None = None,
                *, allow: list[str] | None = None, resource_level: bool = True) -> None:
        """A key pair (with `token`: a role's temporary key). `allow` lists the functions it
        may invoke as "namespace/function" (any region), "region:namespace/function", or
        "*" (every function). `resource_level=False` refuses every grant but "*", as CAM
        does where it does not support a resource-level scf:InvokeFunction."""
        with self._lock:
            self._keys[secret_id] = _Key(secret_key, token, None if allow is None else set(allow),
                                         resource_level)

    def add_function(self, name: str, handler: Handler | None = None, *,
                     namespace: str = "default", region: str = DEFAULT_REGION,
                     async_run: bool = False) -> None:
        """`async_run`: the function was created with async execution (AsyncRunEnable)."""
        with self._lock:
            self._functions[(region, namespace, name)] = _Function(handler, async_run)

    def inject(self, code: str, message: str = "injected fault", times: int = 1) -> None:
        """The next `times` API calls answer this error (after the signature check)."""
        with self._lock:
            self._faults.extend([(code, message)] * times)

    # ----------------------------------------------------------------- inspection

    @property
    def invocations(self) -> list[Invocation]:
        with self._lock:
            return list(self._invocations)

    def wait_idle(self, timeout: float = 30, *, raise_on_timeout: bool = True) -> None:
        """Wait until every background handler run (and its retries) has finished."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                alive = [w for w in self._workers if w.is_alive()]
                self._workers = alive
            if not alive:
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                if raise_on_timeout:
                    raise TimeoutError(f"{len(alive)} handler run(s) still going after {timeout} s")
                return
            alive[0].join(min(remaining, 0.2))

    # ----------------------------------------------------------------- request handling

    def handle(self, method: str, path: str, headers: dict[str, str], body: bytes) -> dict[str, Any]:
        """One API request → the JSON document to answer (always HTTP 200, like the API)."""
        request_id = str(uuid.uuid4())
        try:
            action, secret_id, region = self._authenticate(method, path, headers, body)
            with self._lock:
                self.calls[action] += 1
                fault = self._faults.popleft() if self._faults else None
            if fault is not None:
                raise _ApiError(*fault)
            if action != "Invoke":
                raise _ApiError("InvalidAction", f"action {action} is not served by this fake")
            if headers.get("x-tc-version") != SCF_VERSION:
                raise _ApiError("NoSuchVersion", f"scf has no version {headers.get('x-tc-version')}")
            result = self._invoke(json.loads(body or b"{}"), secret_id, region, request_id)
            return {"Response": {"Result": result, "RequestId": request_id}}
        except _ApiError as exc:
            with self._lock:
                self.rejections.append(exc.code)
            return {"Response": {"Error": {"Code": exc.code, "Message": exc.message},
                                 "RequestId": request_id}}
        except ValueError as exc:
            return {"Response": {"Error": {"Code": "InvalidParameter", "Message": f"bad body: {exc}"},
                                 "RequestId": request_id}}

    def _authenticate(self, method: str, path: str, headers: dict[str, str],
                      body: bytes) -> tuple[str, str, str]:
        match = _AUTH.match(headers.get("authorization", ""))
        if match is None:
            raise _ApiError("AuthFailure.InvalidAuthorization",
                            "Authorization is not a TC3-HMAC-SHA256 signature")
        secret_id = match["id"]
        with self._lock:
            key = self._keys.get(secret_id)
        if key is None:
            raise _ApiError("AuthFailure.SecretIdNotFound", "The SecretId is not found.")
        try:
            timestamp = int(headers.get("x-tc-timestamp", ""))
        except ValueError:
            raise _ApiError("MissingParameter", "X-TC-Timestamp is missing") from None
        now = time.time() + self.clock_skew
        if abs(now - timestamp) > MAX_SKEW_SECONDS:
            raise _ApiError("AuthFailure.SignatureExpire",
                            "Signature expired. Timestamp and server time cannot differ by more than five minutes.")
        date = datetime.fromtimestamp(timestamp, timezone.utc).strftime("%Y-%m-%d")
        signed = match["headers"].split(";")
        if date != match["date"] or "host" not in signed or "content-type" not in signed:
            raise _ApiError("AuthFailure.SignatureFailure", "credential scope or signed headers are wrong")
        query = path.partition("?")[2] if method == "GET" else ""
        canonical = "\n".join([
            method, path.partition("?")[0], query,
            "".join(f"{name}:{headers.get(name, '').strip().lower()}\n" for name in signed),
            ";".join(signed),
            hashlib.sha256(body).hexdigest(),
        ])
        scope = f"{match['date']}/{match['service']}/tc3_request"
        to_sign = "\n".join(["TC3-HMAC-SHA256", str(timestamp), scope,
                             hashlib.sha256(canonical.encode("utf-8")).hexdigest()])
        expected = tc3_signature(key.secret_key, match["date"], match["service"], to_sign)
        if not hmac.compare_digest(expected, match["signature"]):
            raise _ApiError("AuthFailure.SignatureFailure",
                            "The provided credentials could not be validated. Please check your signature is correct.")
        if key.token is not None and headers.get("x-tc-token") != key.token:
            raise _ApiError("AuthFailure.TokenFailure", "Token is invalid or expired.")
        action = headers.get("x-tc-action", "")
        if match["service"] != "scf":
            raise _ApiError("InvalidAction", f"service {match['service']} is not served by this fake")
        region = headers.get("x-tc-region", "")
        if not region:
            raise _ApiError("MissingParameter", "The request is missing a required parameter `Region`.")
        return action, secret_id, region

    def _invoke(self, params: dict[str, Any], secret_id: str, region: str,
                request_id: str) -> dict[str, Any]:
        name = params.get("FunctionName")
        if not name:
            raise _ApiError("MissingParameter", "The request is missing a required parameter `FunctionName`.")
        namespace = params.get("Namespace") or "default"
        qualifier = params.get("Qualifier") or "$LATEST"
        invocation_type = params.get("InvocationType") or "RequestResponse"
        if invocation_type not in ("Event", "RequestResponse"):
            raise _ApiError("InvalidParameterValue.InvocationType", f"InvocationType {invocation_type} is invalid")
        context = params.get("ClientContext") or "{}"
        if invocation_type == "Event" and len(context.encode("utf-8")) > MAX_EVENT_BYTES:
            raise _ApiError("InvalidParameterValue.ClientContext", "ClientContext exceeds 128 KB")
        try:
            event = json.loads(context)
        except ValueError:
            raise _ApiError("InvalidParameterValue.ClientContext", "ClientContext is not JSON") from None
        if not isinstance(event, dict):
            raise _ApiError("InvalidParameterValue.ClientContext", "ClientContext must be a JSON object")
        with self._lock:
            key = self._keys[secret_id]
            function = self._functions.get((region, namespace, name))
            namespaces = {ns for (r, ns, _) in self._functions if r == region}
        resource = f"qcs::scf:{region}:uin/{self.uin}:namespace/{namespace}/function/{name}"
        granted = {"*"} if not key.resource_level else {"*", f"{namespace}/{name}",
                                                         f"{region}:{namespace}/{name}"}
        if key.allow is not None and not (granted & key.allow):
            raise _ApiError("AuthFailure.UnauthorizedOperation",
                            f"you are not authorized to perform operation (scf:InvokeFunction) "
                            f"resource ({resource}) has no permission")
        if function is None:
            if namespace not in namespaces:
                raise _ApiError("ResourceNotFound.Namespace", f"Namespace {namespace} does not exist.")
            raise _ApiError("ResourceNotFound.Function", f"Function {name} does not exist in namespace {namespace}.")
        invocation = Invocation(request_id=request_id, function_request_id=str(uuid.uuid4()),
                                region=region, namespace=namespace, function=name,
                                qualifier=qualifier, invocation_type=invocation_type,
                                event=event, secret_id=secret_id)
        with self._lock:
            self._invocations.append(invocation)
        result: dict[str, Any] = {"Log": "", "RetMsg": "", "ErrMsg": "", "MemUsage": 0,
                                  "Duration": 0, "BillDuration": 0,
                                  "FunctionRequestId": invocation.function_request_id,
                                  "InvokeResult": 0}
        if function.handler is None:
            invocation.done.set()
        elif invocation_type == "Event" or function.async_run:
            # async execution: "事件调用成功，返回信息只包含 RequestId", no retry of errors
            retries = 0 if function.async_run else self.async_retries
            worker = threading.Thread(target=self._run_async,
                                      args=(function.handler, invocation, retries),
                                      name=f"scf-{name}", daemon=True)
            with self._lock:
                self._workers.append(worker)
            worker.start()
        else:
            self._run_once(function.handler, invocation)
            if invocation.error is None:
                result["RetMsg"] = json.dumps(invocation.result, ensure_ascii=False, default=str)
            else:
                result.update(ErrMsg=invocation.error, InvokeResult=-1)
        return result

    def _run_once(self, handler: Handler, invocation: Invocation) -> None:
        invocation.attempts += 1
        try:
            invocation.result = handler(dict(invocation.event))
            invocation.error = None
        except Exception as exc:
            invocation.error = f"{type(exc).__name__}: {exc}"
        finally:
            invocation.done.set()

    def _run_async(self, handler: Handler, invocation: Invocation, retries: int) -> None:
        """Run an Event invocation; a handler that raises is retried, like SCF's async retries."""
        for attempt in range(1 + retries):
            if attempt:
                time.sleep(self.async_retry_delay)
            invocation.done.clear()
            self._run_once(handler, invocation)
            if invocation.error is None:
                return


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = LISTEN_BACKLOG  # see http_base: the default 5 overflows under load

    def __init__(self, address: tuple[str, int], emulator: TencentCloudEmulator) -> None:
        super().__init__(address, _RequestHandler)
        self.emulator = emulator


class _RequestHandler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: tests read the recorded calls instead

    def _answer(self, document: dict[str, Any]) -> None:
        payload = json_bytes(document)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")  # the SDK parses errors only then
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            self.send_error(413)
            return
        body = self.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in self.headers.items()}
        self._answer(self.server.emulator.handle(self.command, self.path, headers, body))

    do_POST = _serve
    do_GET = _serve


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--key", action="append", default=[], metavar="ID:KEY[:TOKEN]")
    parser.add_argument("--function", action="append", default=[], metavar="NAME[:NAMESPACE]")
    parser.add_argument("--region", default=DEFAULT_REGION)
    args = parser.parse_args(argv)
    emulator = TencentCloudEmulator(port=args.port)
    for spec in args.key:
        secret_id, secret_key, *token = spec.split(":", 2)
        emulator.add_key(secret_id, secret_key, token[0] if token else None)

    def show(event: dict[str, Any]) -> None:
        print(json.dumps({"event": event}), file=sys.stderr, flush=True)

    for spec in args.function:
        name, _, namespace = spec.partition(":")
        emulator.add_function(name, show, namespace=namespace or "default", region=args.region)
    print(emulator.start(), flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        emulator.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
