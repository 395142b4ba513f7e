"""The dead-man switch: after every run, a request to an outside monitor's ping URL in
the convention it understands, so the monitor alerts when the pings stop (the product
itself cannot say it stopped running). A ping that fails is logged; it never keeps a
run from closing."""

from __future__ import annotations

import base64
import logging
import socket
from urllib.parse import unquote_plus, urlencode, urlsplit, urlunsplit

import httpx

from shared.adapters.http import (
    CONNECT_SECONDS,
    describe_http_error,
    describe_transport_error,
    make_client,
    proxy_for,
)
from shared.adapters.tls import tls_context
from shared.config.model import Heartbeat
from shared.domain.errors import Fatal, Retryable
from shared.logs import redact, register_secret
from shared.retry import with_retries

log = logging.getLogger(__name__)


def ping_url(heartbeat: Heartbeat, ok: bool, message: str) -> str:
    base = heartbeat.url.get_secret_value()
    if heartbeat.style == "healthchecks":
        # healthchecks.io/docs/signaling_failures/: append /fail to the path to signal a
        # failure; the query (?create=1, healthchecks.io/docs/autoprovisioning/) stays after it
        if ok:
            return base
        parts = urlsplit(base)
        return urlunsplit(parts._replace(path=parts.path.rstrip("/") + "/fail"))
    if heartbeat.style == "cronitor":
        # cronitor.io/docs/telemetry-api: ?state=complete | ?state=fail, optional message
        query = {"state": "complete" if ok else "fail", "message": message}
    else:
        # Uptime Kuma push monitor (/api/push/<token>): ?status=up|down&msg=...
        query = {"status": "up" if ok else "down", "msg": message}
    # The URL as the monitor hands it out may carry these names already (Uptime Kuma's
    # push URL ends in ?status=up&msg=OK&ping=): ours replace them. Repeated, the name
    # reads as a list, and Uptime Kuma's `request.query.status === "up"` (louislam/
    # uptime-kuma, server/routers/api-router.js, /api/push/:pushToken) calls every run
    # down; a server reading the first value would call a failed run up.
    parts = urlsplit(base)
    kept = "&".join(pair for pair in parts.query.split("&")
                    if pair and unquote_plus(pair.partition("=")[0]) not in query)
    joined = "&".join(q for q in (kept, urlencode(query)) if q)
    return urlunsplit(parts._replace(query=joined))


def ping(heartbeat: Heartbeat, ok: bool, message: str, *, client: httpx.Client | None = None,
         retry_base_seconds: float = 1.0) -> None:
    url = ping_url(heartbeat, ok, message[:200])
    register_secret(heartbeat.url.get_secret_value())
    register_secret(url)
    http = client or make_client()

    def send() -> None:
        try:
            response = http.get(url)
        except httpx.TransportError as exc:
            raise Retryable(f"heartbeat unreachable: {describe_transport_error(exc)}") from None
        except httpx.HTTPError as exc:  # an unreadable answer (bad gzip), too many redirects
            raise Retryable(f"heartbeat answer unusable: {describe_http_error(exc)}") from None
        refused = _refusal(response, url)  # before the status: Uptime Kuma's comes with a 404
        if refused:  # an answer, not a transient failure: sending it again changes nothing
            raise Fatal(f"heartbeat refused the ping: {refused}; {_CHECK_URL}, and that the "
                        "monitor is active (not paused)")
        if response.status_code >= 300:
            raise Retryable(f"heartbeat answered HTTP {response.status_code}")

    try:
        with_retries(send, attempts=3, base_seconds=retry_base_seconds)
    except (Retryable, Fatal) as exc:
        log.error("could not ping the heartbeat monitor", extra={"reason": str(exc)})
    except Exception as exc:  # the Notifier never raises: the run closed whatever the monitor does
        log.exception("could not ping the heartbeat monitor",
                      extra={"reason": redact(f"{type(exc).__name__}: {exc}")})
    else:
        log.info("heartbeat pinged", extra={"ok": ok})


TEST_MESSAGE = "baas-backup doctor: a test ping; no backup ran"
_CHECK_URL = "check notify.heartbeat.url (its host, port and key) and notify.heartbeat.style"


def probe_heartbeat(heartbeat: Heartbeat, send: bool, *, client: httpx.Client | None = None) -> str:
    """`doctor`: the monitor's host takes a connection; with `send`, it accepts one success
    ping. Without `send` no request is made: healthchecks.io ("HEAD, GET and POST requests
    all work", healthchecks.io/docs/http_api/), Cronitor (GET or POST, cronitor.io/docs/
    telemetry-api) and Uptime Kuma (the push route takes any method, louislam/uptime-kuma
    server/routers/api-router.js, /api/push/:pushToken) count any request to the URL as a
    ping, which would vouch for a run that never happened. The URL carries the monitor's
    key: only its host is ever shown."""
    base = heartbeat.url.get_secret_value()
    register_secret(base)
    where = f"notify.heartbeat ({heartbeat.style}, host {urlsplit(base).hostname})"
    if send:
        return _test_ping(heartbeat, where, client or make_client())
    secured = _connect(base, where)
    return (f"{where} accepts connections{secured}; no ping was sent, as the monitor counts "
            "any request to the URL as a run: doctor --notify (or \"notify\": true) sends it "
            "one success ping")


def _connect(url: str, where: str) -> str:
    """Resolve the host, connect (through the proxy the pings take, if any), and for https
    verify its certificate; no HTTP request reaches the monitor."""
    parts = urlsplit(url)
    https = parts.scheme == "https"
    host = parts.hostname or ""
    proxy = proxy_for(url)
    via = f" through the proxy {proxy.host}:{proxy.port or ''}".rstrip(":") if proxy else ""
    try:
        port = parts.port or (443 if https else 80)
        with _tunnel(proxy, host, port) if proxy else socket.create_connection(
                (host, port), timeout=CONNECT_SECONDS) as sock:
            if https:
                with tls_context().wrap_socket(sock, server_hostname=host):
                    pass
    except (OSError, ValueError) as exc:  # unresolvable, refused, timed out, bad certificate
        reason = redact(str(exc))[:200]
        raise Fatal(f"{where} is unreachable from here{via}: {type(exc).__name__}"
                    f"{f' ({reason})' if reason else ''}; {_CHECK_URL}, and that this network "
                    f"{'(the proxy) ' if proxy else ''}reaches it") from None
    return f"{via}{' (TLS certificate verified)' if https else ''}"


def _tunnel(proxy: httpx.URL, host: str, port: int) -> socket.socket:
    """A connection to host:port through an HTTP CONNECT tunnel (RFC 9110 section 9.3.6),
    as httpx reaches an https URL through a proxy; the proxy's own answer is read, so
    a refused tunnel is an error here too."""
    secure = proxy.scheme == "https"
    sock = socket.create_connection((proxy.host, proxy.port or (443 if secure else 80)),
                                    timeout=CONNECT_SECONDS)
    try:
        if secure:
            sock = tls_context().wrap_socket(sock, server_hostname=proxy.host)
        authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        head = [f"CONNECT {authority} HTTP/1.1", f"Host: {authority}"]
        if proxy.username:  # as httpx sends it: Basic, from the proxy URL's user and password
            pair = base64.b64encode(f"{proxy.username}:{proxy.password or ''}".encode()).decode()
            head.append(f"Proxy-Authorization: Basic {pair}")
        sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
        status = _answer_head(sock).split(" ", 2)
        if len(status) < 2 or not status[1].startswith("2"):
            raise ConnectionError(f"the proxy refused the tunnel: {' '.join(status[1:])[:100]}")
    except BaseException:
        sock.close()
        raise
    return sock


def _answer_head(sock: socket.socket) -> str:
    """The status line of the proxy's answer, its headers read up to the blank line."""
    received = b""
    while b"\r\n\r\n" not in received:
        piece = sock.recv(1)  # one byte at a time: what follows the head is the tunnel's
        if not piece or len(received) > 8192:
            raise ConnectionError("the proxy closed the connection or answered no HTTP head")
        received += piece
    return received.split(b"\r\n", 1)[0].decode("latin-1")


def _test_ping(heartbeat: Heartbeat, where: str, http: httpx.Client) -> str:
    url = ping_url(heartbeat, True, TEST_MESSAGE)
    register_secret(url)
    try:
        response = http.get(url)
    except httpx.TransportError as exc:
        raise Fatal(f"{where} is unreachable from here: {describe_transport_error(exc)}; "
                    f"{_CHECK_URL}, and that this network reaches it") from None
    except httpx.HTTPError as exc:  # an unreadable answer, a redirect loop
        raise Fatal(f"{where}: its answer to the test ping is unusable: "
                    f"{describe_http_error(exc)}; {_CHECK_URL}") from None
    refused = _refusal(response, url)  # before the status: Uptime Kuma's comes with a 404
    if refused:
        raise Fatal(f"{where} refused the test ping: {refused}; {_CHECK_URL}")
    if response.status_code >= 300:  # healthchecks.io: 404 for a UUID it does not know
        raise Fatal(f"{where} answered the test ping with HTTP {response.status_code}; "
                    f"{_CHECK_URL}: the monitor may not know this key") from None
    return (f"{where} answered a success ping with HTTP {response.status_code}: the monitor "
            "counts it as a good run")


def _refusal(response: httpx.Response, url: str) -> str | None:
    """Uptime Kuma answers a push to a paused or unknown monitor with {"ok": false, "msg":
    "Monitor not found or not active."} (louislam/uptime-kuma server/routers/api-router.js,
    /api/push/:pushToken, `response.status(404).json({ok: false, msg: e.message})`; the
    HTTP status has changed between releases, 404 or 500 in those read, so the body
    decides, whatever the status) where the others answer an HTTP error. The message is the monitor's: any part of the URL in it
    (the push token) is masked."""
    try:
        answer = response.json()
    except ValueError:
        return None
    if isinstance(answer, dict) and answer.get("ok") is False:
        return _masked(redact(str(answer.get("msg") or "ok: false")), url)[:200]
    return None


def _masked(text: str, url: str) -> str:
    """`text` without any path segment or query value of `url` long enough to be a key."""
    parts = urlsplit(url)
    pieces = [unquote_plus(p) for p in parts.path.split("/")]
    pieces += [unquote_plus(pair.partition("=")[2]) for pair in parts.query.split("&")]
    for piece in sorted((p for p in pieces if len(p) >= 6), key=len, reverse=True):
        text = text.replace(piece, "***")
    return text
