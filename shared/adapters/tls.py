"""Certificate-verifying TLS contexts, one per CA bundle for the whole process, shared by
every HTTPS client: httpx (platforms and downloads) and requests under the COS SDK.

Loading a CA bundle into a context costs about 40 ms of CPU here. httpx does it once per
client; urllib3 2.x, as requests drives it, does it for every new connection (it calls
`load_verify_locations` on each connection's context, urllib3/connection.py
`_ssl_wrap_socket_and_match_hostname`). A context is safe to share across clients and
threads, so each is made once, even when threads ask at the same moment (a finisher
makes it ahead, beside its first state reads).

The default bundle is httpx's: $SSL_CERT_FILE, else $SSL_CERT_DIR, else certifi's
(httpx/_config.py `create_ssl_context`). In the SCF package certifi's bundle is also a
folder, one file per CA named by its subject hash (scripts/build_package.py), and that
is used instead: OpenSSL reads from a folder only the CAs a chain needs ("only looked up
when required", CApath in
https://docs.openssl.org/3.0/man3/SSL_CTX_load_verify_locations/), so a cold start skips
loading the whole bundle (30-50 ms of CPU here). requests may be told another
($REQUESTS_CA_BUNDLE, $CURL_CA_BUNDLE); it then gets a context of that bundle, and the
same one when both name the same file.
"""

from __future__ import annotations

import functools
import os
import ssl
import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import requests
    from requests.adapters import _HostParams, _PoolKwargs

_lock = threading.Lock()
# Where scripts/build_package.py puts certifi's CAs, by subject hash: the package's root.
PACKAGED_CAS = os.path.normpath(os.path.join(os.path.dirname(__file__), "..", "..",
                                             "ca-certificates"))


def tls_context(bundle: str | None = None) -> ssl.SSLContext:
    """The context trusting `bundle` (a CA file or folder), or the default bundle."""
    with _lock:
        return _context(*_source(bundle))


def default_bundle() -> str:
    """The CA file or folder trusted when none is named: $SSL_CERT_FILE, else $SSL_CERT_DIR,
    else the package's folder, else certifi's bundle."""
    named = os.environ.get("SSL_CERT_FILE") or os.environ.get("SSL_CERT_DIR")
    if named:
        return named
    if os.path.isdir(PACKAGED_CAS):
        return PACKAGED_CAS
    import certifi

    return certifi.where()


def _source(bundle: str | None) -> tuple[str | None, str | None]:
    """(CA file, CA folder) for `bundle` or the default, the key a context is kept by."""
    if bundle is None:
        bundle = default_bundle()
    return (None, bundle) if os.path.isdir(bundle) else (bundle, None)


@functools.cache
def _context(cafile: str | None, capath: str | None) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=cafile, capath=capath)


@functools.cache
def requests_adapter() -> type[requests.adapters.HTTPAdapter]:
    """A requests adapter verifying with these contexts; made on first use, so that requests
    is imported by the first client that needs it (the COS SDK's, the Tencent Cloud SDK's),
    not with this module."""
    from requests.adapters import HTTPAdapter

    class SharedTlsAdapter(HTTPAdapter):
        """Verifies a server's certificate with the process's TLS context for the CA bundle
        requests was given, instead of loading that bundle again for each new connection:
        about 40 ms of CPU apiece, 160 ms for a finisher's 4 parts in flight. A caller that
        asks for no verification gets requests' behaviour."""

        def build_connection_pool_key_attributes(
            self, request: requests.PreparedRequest, verify: bool | str,
            cert: str | tuple[str, str] | None = None,
        ) -> tuple[_HostParams, _PoolKwargs]:
            host, pool = super().build_connection_pool_key_attributes(request, verify, cert)
            if verify is not False and host["scheme"] == "https":
                pool["ssl_context"] = tls_context(None if verify is True else verify)
            return host, pool

        def cert_verify(self, conn: Any, url: str, verify: bool | str,
                        cert: str | tuple[str, str] | None) -> None:
            super().cert_verify(conn, url, verify, cert)  # type: ignore[no-untyped-call]
            if verify is not False and url.lower().startswith("https"):
                # on the pool, before it connects: CERT_REQUIRED stays, and the CAs are in
                # the shared context already (urllib3 would load these paths into it again)
                conn.ca_certs = conn.ca_cert_dir = None

    return SharedTlsAdapter
