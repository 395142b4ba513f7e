"""The one place HTTP clients are made, so timeouts, headers and the rules on where a
request may go are the same everywhere.

Two rules guard the links a platform chooses (export downloads and their redirects):

- A download only goes to a public address: every hop's host is resolved and a
  loopback, link-local (169.254.x: the cloud's metadata service), private, shared
  (100.64/10), reserved or multicast address is refused before any byte is sent, unless
  the source's own API is on loopback (the local emulators), which allows loopback only.
  The connection goes to the address that was checked (Host header and TLS server name
  stay the host's), so a name answering differently a moment later changes nothing.
- A link given over https stays on https: a redirect from https to plain http is refused
  before it is followed (the export would then cross the network readable, and could be
  swapped on the way).
- A compressed answer is never inflated without a bound: downloads ask for `identity`,
  and a server that compresses anyway is decoded in bounded pieces and refused past
  `MAX_INFLATION` times its compressed size.
"""

from __future__ import annotations

import email.utils
import ipaddress
import re
import socket
import zlib
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from urllib.parse import urlsplit

import httpx

from shared.adapters.thread_pools import ThreadPools
from shared.adapters.tls import tls_context
from shared.domain.errors import Fatal, Retryable
from shared.logs import redact

USER_AGENT = "baas-backup/0.1"
DOWNLOAD_PIECE = 1 << 20  # the most a download hands on at once (and inflates at once)
# A JSON Lines or CSV export compresses about 5-20x; a ratio far beyond is a bomb.
MAX_INFLATION = 200
INFLATION_GRACE = 16 << 20  # small files may compress better: check the ratio past this

Resolver = Callable[[str, int], list[str]]


class RefusedTarget(Fatal):
    """A request to an address this product never connects to (see the module doc)."""


class InflationRefused(Fatal):
    """A compressed download that would grow past the bound (a decompression bomb)."""


CONNECT_SECONDS = 10.0  # to open a connection (TCP and TLS), by a client or a probe


def make_client(*, follow_redirects: bool = False) -> httpx.Client:
    """A client that goes through the proxy the environment names (see `proxy_for`), with a
    connection pool per thread (`ThreadPools`), direct or through a proxy alike."""
    context = tls_context()

    def pools(proxy: httpx.Proxy | None = None) -> ThreadPools:
        return ThreadPools(lambda: httpx.HTTPTransport(verify=context, proxy=proxy))

    return httpx.Client(
        transport=pools(),
        mounts=_proxy_mounts(pools),
        timeout=httpx.Timeout(60.0, connect=CONNECT_SECONDS),
        headers={"User-Agent": USER_AGENT},
        follow_redirects=follow_redirects,
    )


def _proxy_mounts(
    pools: Callable[[httpx.Proxy | None], httpx.BaseTransport],
) -> dict[str, httpx.BaseTransport | None]:
    """The environment's proxies as httpx.Client mounts them itself, which it does only
    for a client given no transport of its own (httpx 0.28 _client.py, `allow_env_proxies`
    and `_get_proxy_map`): a pattern whose proxy is None (NO_PROXY) goes direct."""
    from httpx._utils import get_environment_proxies

    return {pattern: None if url is None else pools(httpx.Proxy(url=url))
            for pattern, url in get_environment_proxies().items()}


def proxy_for(url: str) -> httpx.URL | None:
    """The proxy `make_client`'s requests to `url` go through, None for a direct connection:
    HTTP_PROXY, HTTPS_PROXY, ALL_PROXY and NO_PROXY as httpx reads them for the clients
    (trust_env, python-httpx.org/environment_variables/), with the very functions
    httpx.Client maps them with (httpx 0.28 _client.py, _get_proxy_map and
    _transport_for_url), so a check that may send no request connects as requests do."""
    from httpx._utils import URLPattern, get_environment_proxies

    target = httpx.URL(url)
    patterns = sorted(((URLPattern(key), proxy) for key, proxy in get_environment_proxies().items()),
                      key=lambda pair: pair[0])
    for pattern, proxy in patterns:
        if pattern.matches(target):
            return None if proxy is None else httpx.URL(proxy)
    return None


def system_resolver(host: str, port: int) -> list[str]:
    return sorted({str(info[4][0]) for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)})


def is_loopback_url(url: str) -> bool:
    """Is this URL's host on this machine (how the local emulators run)?"""
    host = (urlsplit(url).hostname or "").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def refusal(address: str, *, allow_loopback: bool) -> str | None:
    """Why `address` may not be connected to, or None when it is a public address."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_loopback:
        return None if allow_loopback else "a loopback address"
    if ip.is_link_local:
        return "a link-local address (such as the cloud metadata service)"
    if ip.is_multicast or ip.is_unspecified or ip.is_reserved:
        return "a reserved or multicast address"
    if not ip.is_global:
        return "a private address"
    return None


class GuardedTransport(httpx.HTTPTransport):
    """Checks each request's host (every redirect hop is a request) before connecting."""

    def __init__(self, *, allow_loopback: bool, resolver: Resolver | None = None) -> None:
        # No kept-alive connections: a pooled one is matched by address, and a TLS
        # session verified for one host name must not carry another host's request.
        # The pool is httpx's own (same TLS context and limits) over a network backend
        # that reads the socket in wide steps (see wide_reads).
        import httpcore

        from shared.adapters.wide_reads import WideReadBackend

        limits = httpx.Limits(max_keepalive_connections=0)
        super().__init__(verify=tls_context(), limits=limits)
        self._pool = httpcore.ConnectionPool(
            ssl_context=tls_context(),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=WideReadBackend(),
        )
        self._allow_loopback = allow_loopback
        self._resolve = resolver or system_resolver

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        port = url.port or (443 if url.scheme == "https" else 80)
        try:
            addresses = self._resolve(url.host, port)
        except OSError as exc:
            raise httpx.ConnectError(f"cannot resolve {url.host}: {exc}", request=request) from None
        if not addresses:
            raise httpx.ConnectError(f"{url.host} resolves to no address", request=request)
        for address in addresses:
            why = refusal(address, allow_loopback=self._allow_loopback)
            if why:
                raise RefusedTarget(
                    f"refused to fetch from {url.scheme}://{url.host}: it resolves to {address}, "
                    f"{why}; a platform's download link must point at the internet")
        # Connect to the address just checked, not to whatever the name resolves to a
        # moment later (DNS rebinding); the Host header and TLS name stay the host's.
        if url.host != addresses[0]:
            request.url = url.copy_with(host=addresses[0])
            request.extensions = {**request.extensions, "sni_hostname": url.host}
        return super().handle_request(request)


def make_download_client(*, api_base: str, resolver: Resolver | None = None) -> httpx.Client:
    """A client for links a platform hands out: redirects followed, every hop checked,
    compression refused; loopback allowed only when the platform's API is on loopback."""
    return httpx.Client(
        transport=GuardedTransport(allow_loopback=is_loopback_url(api_base), resolver=resolver),
        timeout=httpx.Timeout(60.0, connect=10.0),
        headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity"},
        follow_redirects=True,
        event_hooks={"response": [_refuse_downgrade]},
    )


def _refuse_downgrade(response: httpx.Response) -> None:
    """Refuse a redirect from https to anything else, before it is followed (httpx calls
    response hooks ahead of its next hop)."""
    if response.request.url.scheme != "https" or not response.has_redirect_location:
        return
    target = response.request.url.join(response.headers["Location"])
    if target.scheme != "https":
        raise RefusedTarget(
            f"refused a redirect from https://{response.request.url.host} to "
            f"{target.scheme}://{target.host}: the download would go on unencrypted; a "
            "platform's download link must stay on https")


class UnconfirmedLength(Retryable):
    """A download whose end cannot be told from a cut-off (no length, not chunked)."""


def download_chunks(response: httpx.Response, *, require_length: bool = False) -> Iterator[bytes]:
    """A download's body as it arrives (pieces of at most `DOWNLOAD_PIECE`, never waiting
    to fill one, so the caller can watch the clock); gzip/deflate is inflated with a bound.

    `require_length`: for a platform that reports no record count, the transport is the
    only proof the file is whole, so the answer must carry Content-Length (checked here
    against what arrived) or chunked framing (whose end marker the HTTP library checks).
    """
    if require_length:
        yield from _whole(response)
        return
    yield from _decoded(response)


def _whole(response: httpx.Response) -> Iterator[bytes]:
    declared = response.headers.get("Content-Length")
    chunked = "chunked" in response.headers.get("Transfer-Encoding", "").lower()
    if declared is None and not chunked:
        raise UnconfirmedLength(
            "the download has neither Content-Length nor chunked framing, so a cut-off could "
            "not be told from its end; refused (the platform reports no record count to check)")
    yield from _decoded(response)
    received = response.num_bytes_downloaded
    if declared is not None and not (declared.isascii() and declared.isdigit()):
        # str.isdigit alone takes "²", which int() refuses (RFC 9110 8.6: 1*DIGIT)
        raise UnconfirmedLength(f"the download's Content-Length {declared!r} is not a number "
                                "of bytes, so a cut-off could not be told from its end; refused")
    if declared is not None and received != int(declared):
        raise UnconfirmedLength(f"the download ended after {received} of the {declared} bytes "
                                "its Content-Length announced")


def _decoded(response: httpx.Response) -> Iterator[bytes]:
    encoding = response.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding in ("", "identity"):
        for chunk in response.iter_raw():
            yield from _pieces(chunk)
        return
    if encoding not in ("gzip", "x-gzip", "deflate"):
        raise InflationRefused(f"the download came with Content-Encoding {encoding!r}, which "
                               "this product does not decode; serve it uncompressed")
    inflater = zlib.decompressobj(zlib.MAX_WBITS | 32)  # gzip or zlib header, detected
    taken = given = 0
    for chunk in response.iter_raw():
        taken += len(chunk)
        data = chunk
        while data:
            out = inflater.decompress(data, DOWNLOAD_PIECE)
            data = inflater.unconsumed_tail
            given += len(out)
            if given > INFLATION_GRACE and given > MAX_INFLATION * taken:
                raise InflationRefused(
                    f"the compressed download grew past {MAX_INFLATION} times its size "
                    f"({taken} bytes in, {given} out); refused as a decompression bomb")
            if out:
                yield out
    tail = inflater.flush()
    if tail:
        yield tail


def _pieces(chunk: bytes) -> Iterator[bytes]:
    for start in range(0, len(chunk), DOWNLOAD_PIECE):
        yield chunk[start:start + DOWNLOAD_PIECE]


def same_origin_only(origin: str) -> Callable[[httpx.Request], None]:
    """A request hook refusing any request (a redirect hop included) outside `origin`,
    before it is sent: credentials in a body or header never reach another host or
    travel over plain http after https."""
    wanted = _origin(origin)

    def check(request: httpx.Request) -> None:
        found = _origin(str(request.url))
        if found != wanted:
            raise OffOrigin(f"{wanted[0]}://{wanted[1]}:{wanted[2]}",
                            f"{found[0]}://{found[1]}:{found[2]}")

    return check


class OffOrigin(Exception):
    """A request (usually a redirect) that would leave the origin credentials belong to."""

    def __init__(self, origin: str, target: str) -> None:
        super().__init__(f"redirected from {origin} to {target}")
        self.origin = origin
        self.target = target


def _origin(url: str) -> tuple[str, str, int]:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    return scheme, (parts.hostname or "").lower(), parts.port or (443 if scheme == "https" else 80)


def describe_transport_error(exc: httpx.TransportError) -> str:
    """The error's kind without its URL (URLs may carry tokens or signatures)."""
    return f"{type(exc).__name__}"


def retry_after_seconds(value: str | None) -> float | None:
    """Seconds a server asks to wait, from `Retry-After`: delay-seconds or an HTTP-date
    (RFC 9110 section 10.2.3); None when absent or unreadable."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return max(0.0, (moment - datetime.now(timezone.utc)).total_seconds())


_URL = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]*://\S*")


def describe_http_error(exc: httpx.HTTPError) -> str:
    """Any httpx error's kind and message (an answer labelled gzip that is not says so),
    every URL in it cut out: httpx names the request URL in some messages, and a webhook's
    or a ping's URL carries its key."""
    return redact(_URL.sub("<url>", f"{type(exc).__name__}: {exc}"))
