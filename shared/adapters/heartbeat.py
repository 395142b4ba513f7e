"""The dead-man switch: after every run, a request to an outside monitor's ping URL in
the convention it understands, so the monitor alerts when the pings stop (the product
itself cannot say it stopped running). A ping that fails is logged; it never keeps a
run from closing."""

from __future__ import annotations

import logging
from urllib.parse import unquote_plus, urlencode, urlsplit, urlunsplit

import httpx

from shared.adapters.http import describe_http_error, describe_transport_error, make_client
from shared.config.model import Heartbeat
from shared.domain.errors import Retryable
from shared.logs import redact, register_secret
from shared.retry import with_retries

log = logging.getLogger(__name__)


def ping_url(heartbeat: Heartbeat, ok: bool, message: str) -> str:
    base = heartbeat.url.get_secret_value()
    if heartbeat.style == "healthchecks":
        # healthchecks.io/docs/signaling_failures/: append /fail to signal a failure
        return base if ok else base.rstrip("/") + "/fail"
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
        if response.status_code >= 300:
            raise Retryable(f"heartbeat answered HTTP {response.status_code}")

    try:
        with_retries(send, attempts=3, base_seconds=retry_base_seconds)
    except Retryable as exc:
        log.error("could not ping the heartbeat monitor", extra={"reason": str(exc)})
    except Exception as exc:  # the Notifier never raises: the run closed whatever the monitor does
        log.exception("could not ping the heartbeat monitor",
                      extra={"reason": redact(f"{type(exc).__name__}: {exc}")})
    else:
        log.info("heartbeat pinged", extra={"ok": ok})
