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
folder, one file per CA named by its subject hash (scripts/build_package.py), and that is
used instead: OpenSSL reads from a folder only the CAs a chain needs ("only looked up
when required", CApath in https://docs.openssl.org/3.0/man3/SSL_CTX_load_verify_locations/),
so a cold start skips loading the whole bundle (30-50 ms of CPU here). requests may be told another
($REQUESTS_CA_BUNDLE, $CURL_CA_BUNDLE); it then gets a context of that bundle, and the
same one when both name the same file.
"""

from __future__ import annotations

import functools
import os
import ssl
import threading

_lock = threading.Lock()
# Where scripts/build_package.py puts certifi's CAs, by subject hash: the package's root.
PACKAGED_CAS = os.path.normpath(os.path.join(os.path.dirname(__file__), "..", "..", "ca-certificates"))


def tls_context(bundle: str | None = None) -> ssl.SSLContext:
    """The context trusting `bundle` (a CA file or folder), or the default bundle."""
    with _lock:
        return _context(*_source(bundle))


def _source(bundle: str | None) -> tuple[str | None, str | None]:
    """(CA file, CA folder) for `bundle` or the default, the key a context is kept by."""
    if bundle is None:
        bundle = os.environ.get("SSL_CERT_FILE") or os.environ.get("SSL_CERT_DIR")
    if bundle is None and os.path.isdir(PACKAGED_CAS):
        bundle = PACKAGED_CAS
    if bundle is None:
        import certifi

        bundle = certifi.where()
    return (None, bundle) if os.path.isdir(bundle) else (bundle, None)


@functools.cache
def _context(cafile: str | None, capath: str | None) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=cafile, capath=capath)
