"""COS over real TLS (the local S3 server behind a certificate from a throwaway CA), through
the real SDK: every connection verifies the server with the process's one TLS context,
which loads the CA bundle once however many connections a copy opens."""

from __future__ import annotations

import json
import os
import shutil
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import trustme

from devkit.s3_server import server_context, start_s3_server
from scripts.build_package import hash_cas
from shared.adapters import tls
from shared.adapters.cos import client
from shared.adapters.cos.objects import CosObjectStore
from shared.adapters.http import make_client
from shared.config import Destination
from shared.domain.errors import StorageError

MIB = 1 << 20


# Where a process may be told its CA bundle: httpx's variables, then requests' own
CA_VARIABLES = ("SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")


@pytest.fixture
def trusted(request: pytest.FixtureRequest, tmp_path: Path,
            monkeypatch: pytest.MonkeyPatch) -> Iterator[trustme.CA]:
    """A CA this process trusts, named by one of the variables a user's own bundle may be
    named by (SSL_CERT_FILE unless the test says), and fresh shared state: no TLS context
    and no COS connections kept."""
    ca = trustme.CA()
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    for name in CA_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(getattr(request, "param", "SSL_CERT_FILE"), str(bundle))
    tls._context.cache_clear()
    client._session.cache_clear()
    yield ca
    tls._context.cache_clear()
    client._session.cache_clear()


@contextmanager
def https_s3(ca: trustme.CA, *names: str) -> Iterator[str]:
    """The S3 server on HTTPS with a certificate `ca` issued for `names` (moto's buckets
    are per process, so it serves the `bucket` fixture's bucket too)."""
    server, url = start_s3_server(tls=server_context(ca, *names))
    try:
        yield url
    finally:
        server.stop()


def store_at(url: str, bucket: str) -> CosObjectStore:
    return CosObjectStore(Destination.model_validate({
        "bucket": bucket, "region": "ap-guangzhou", "endpoint": url, "anonymous": True,
        "part_size_mb": 5, "part_concurrency": 4}))


def count_tls(monkeypatch: pytest.MonkeyPatch) -> tuple[list[str], list[str]]:
    """CA bundles loaded into any context, and TLS connections opened by clients."""
    loads: list[str] = []
    connections: list[str] = []
    load, wrap = ssl.SSLContext.load_verify_locations, ssl.SSLContext.wrap_socket

    def counted_load(self: ssl.SSLContext, *args: Any, **kwargs: Any) -> None:
        loads.append(repr(args or kwargs))
        load(self, *args, **kwargs)

    def counted_wrap(self: ssl.SSLContext, sock: Any, *args: Any, **kwargs: Any) -> ssl.SSLSocket:
        if not kwargs.get("server_side"):
            connections.append(str(kwargs.get("server_hostname")))
        return wrap(self, sock, *args, **kwargs)

    monkeypatch.setattr(ssl.SSLContext, "load_verify_locations", counted_load)
    monkeypatch.setattr(ssl.SSLContext, "wrap_socket", counted_wrap)
    return loads, connections


@pytest.mark.parametrize("trusted", ["SSL_CERT_FILE", "REQUESTS_CA_BUNDLE"], indirect=True)
def test_a_multipart_copy_over_tls_loads_the_ca_bundle_once(
        trusted: trustme.CA, bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    data = bytes(range(256)) * (5 * 5 * MIB // 256)  # five parts, four sent at a time
    with https_s3(trusted, "127.0.0.1") as url:
        loads, connections = count_tls(monkeypatch)
        store = store_at(url, bucket)
        summary = store.put_stream("tls/five-parts.bin", [data], content_type="application/octet-stream")
        assert summary.bytes == len(data)
        assert store.read("tls/five-parts.bin") == data
    assert len(connections) >= 2, "the parts should have gone up on several connections"
    # requests' own adapter would have loaded the bundle for each of those connections
    assert len(loads) == 1, loads
    # urllib3 sets a context's verification on each connection: the shared one (httpx's
    # too) must still check certificates and names after COS used it
    shared = tls.tls_context(os.environ.get("REQUESTS_CA_BUNDLE"))  # the one COS used
    assert shared.verify_mode == ssl.CERT_REQUIRED and shared.check_hostname


@pytest.mark.parametrize(("issuer", "names"), [
    ("another CA", ("127.0.0.1",)),
    ("the trusted CA", ("cos.example.com",)),
], ids=["untrusted-issuer", "other-host-name"])
def test_a_certificate_that_does_not_verify_is_refused(
        trusted: trustme.CA, bucket: str, issuer: str, names: tuple[str, ...]) -> None:
    ca = trustme.CA() if issuer == "another CA" else trusted
    with https_s3(ca, *names) as url, pytest.raises(StorageError) as refused:
        store_at(url, bucket).put_json("tls/never.json", {"a": 1})
    assert "CERTIFICATE_VERIFY_FAILED" in str(refused.value)


def openssl() -> str:
    found = shutil.which("openssl")
    assert found, "no openssl command here: scripts/setup installs it (Debian's openssl package)"
    return found


@pytest.fixture
def packaged_cas(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[trustme.CA]:
    """A CA in a folder laid out as the package's (scripts/build_package.py hash_cas), after
    another CA of the same bundle, taking the package's place; no variable names a bundle."""
    ca = trustme.CA()
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(trustme.CA().cert_pem.bytes() + ca.cert_pem.bytes())
    folder = tmp_path / "ca-certificates"
    assert hash_cas(openssl(), bundle, folder) == 2
    for name in CA_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(tls, "PACKAGED_CAS", str(folder))
    tls._context.cache_clear()
    client._session.cache_clear()
    yield ca
    tls._context.cache_clear()
    client._session.cache_clear()


def test_the_packaged_ca_folder_verifies_servers_reading_only_the_cas_they_need(
        packaged_cas: trustme.CA, bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    with https_s3(packaged_cas, "127.0.0.1") as url:
        loads, connections = count_tls(monkeypatch)
        context = tls.tls_context()
        assert context.cert_store_stats()["x509_ca"] == 0  # nothing read yet
        store_at(url, bucket).put_json("tls/folder.json", {"a": 1})
        assert json.loads(store_at(url, bucket).read("tls/folder.json")) == {"a": 1}
        with make_client() as http:  # the platforms' client: the same context
            answered = http.get(f"{url}/{bucket}/tls/folder.json")  # unsigned: refused, but
            assert "x-amzn-requestid" in answered.headers  # ... by the server, over TLS
    assert connections and loads == [repr((None, tls.PACKAGED_CAS, None))]  # the folder, once
    # the server's CA, found by its subject hash, and not the other CA of the bundle
    assert context.cert_store_stats()["x509_ca"] == 1
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname


def test_a_server_whose_ca_is_not_in_the_packaged_folder_is_refused(
        packaged_cas: trustme.CA, bucket: str) -> None:
    with https_s3(trustme.CA(), "127.0.0.1") as url, pytest.raises(StorageError) as refused:
        store_at(url, bucket).put_json("tls/never.json", {"a": 1})
    assert "CERTIFICATE_VERIFY_FAILED" in str(refused.value)


def test_a_named_bundle_still_wins_over_the_packaged_folder(
        packaged_cas: trustme.CA, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    own = tmp_path / "own.pem"
    trustme.CA().cert_pem.write_to_path(str(own))
    monkeypatch.setenv("SSL_CERT_FILE", str(own))
    assert tls._source(None) == (str(own), None)
    monkeypatch.delenv("SSL_CERT_FILE")
    assert tls._source(None) == (None, tls.PACKAGED_CAS)
