"""Links a platform chooses (export downloads and their redirects) go only to public
addresses, are never inflated without bound, and must prove they arrived whole. Real
HTTP to real local listeners; host names resolve through a resolver the test controls."""

from __future__ import annotations

import json
import re
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import trustme

from devkit.emulators.minapp import MinAppEmulator
from devkit.s3_server import server_context
from devkit.sample_data import make_docs
from shared.adapters import http, tls
from shared.adapters.http import (
    InflationRefused,
    RefusedTarget,
    UnconfirmedLength,
    download_chunks,
    make_download_client,
)
from shared.domain.jobs import JobStatus, RunStatus
from shared.domain.records import JsonLinesCounter
from tests.support.backup import LocalBackup, backup_now
from tests.support.hostile import Hostile, cut_without_length, every_path, gzipped, plain, redirect


def resolver(names: dict[str, str]) -> Callable[[str, int], list[str]]:
    """Test names resolve as given; addresses resolve to themselves."""

    def resolve(host: str, port: int) -> list[str]:
        return [names.get(host, host)]

    return resolve


def fetch(client: httpx.Client, url: str, **options: bool) -> bytes:
    with client.stream("GET", url) as response:
        return b"".join(download_chunks(response, **options))


UNSAFE = {
    "loopback": "127.0.0.1",
    "loopback v6": "::1",
    "link-local (metadata service)": "169.254.169.254",
    "link-local v6": "fe80::1",
    "private 10/8": "10.1.2.3",
    "private 172.16/12": "172.16.0.9",
    "private 192.168/16": "192.168.1.1",
    "shared 100.64/10": "100.64.0.1",
    "unique local v6": "fd00::1",
    "v4-mapped metadata": "::ffff:169.254.169.254",
    "unspecified": "0.0.0.0",
}


@pytest.mark.parametrize("address", UNSAFE.values(), ids=UNSAFE.keys())
def test_a_download_to_a_non_public_address_is_refused_before_connecting(
        hostile: Hostile, address: str) -> None:
    hostile.answers["/file"] = plain(b'{"a": 1}\n')
    client = make_download_client(api_base="https://api.weixin.qq.com",
                                  resolver=resolver({"files.example.com": address}))

    with pytest.raises(RefusedTarget, match=re.escape(address)):
        fetch(client, f"http://files.example.com:{hostile.port}/file")

    assert hostile.seen == []


def test_loopback_is_allowed_only_when_the_platform_api_is_on_loopback(hostile: Hostile) -> None:
    hostile.answers["/file"] = plain(b'{"a": 1}\n')
    names = resolver({"files.example.com": "127.0.0.1"})
    url = f"http://files.example.com:{hostile.port}/file"

    emulated = make_download_client(api_base="http://127.0.0.1:9", resolver=names)
    assert fetch(emulated, url) == b'{"a": 1}\n'
    # connected to the checked address, still naming the host (signed links cover it)
    assert hostile.seen[0].headers["Host"] == f"files.example.com:{hostile.port}"
    hosted = make_download_client(api_base="https://cloud.minapp.com", resolver=names)
    with pytest.raises(RefusedTarget, match="loopback"):
        fetch(hosted, url)
    assert len(hostile.seen) == 1


def test_every_redirect_hop_is_checked(hostile: Hostile, other_hostile: Hostile) -> None:
    """A public-looking link that redirects to the metadata service, through a second
    real listener: the hop is refused before it is sent."""
    hostile.answers["/file"] = redirect(f"http://cdn.example.com:{other_hostile.port}/hop")
    other_hostile.answers["/hop"] = redirect("http://metadata.example.com/latest/meta-data/", 302)
    client = make_download_client(api_base="http://127.0.0.1:9", resolver=resolver({
        "cdn.example.com": "127.0.0.1", "metadata.example.com": "169.254.169.254"}))

    with pytest.raises(RefusedTarget, match=re.escape("169.254.169.254, a link-local")):
        fetch(client, f"{hostile.base}/file")

    assert [s.path for s in hostile.seen] == ["/file"]
    assert [s.path for s in other_hostile.seen] == ["/hop"]


@pytest.fixture
def https_hostiles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Hostile]]:
    """Two HTTPS listeners, for cdn.example.com and cdn2.example.com, whose CA this process
    trusts."""
    ca = trustme.CA()
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    monkeypatch.setenv("SSL_CERT_FILE", str(bundle))
    tls._context.cache_clear()
    servers = [Hostile(tls=server_context(ca, name)) for name in ("cdn.example.com", "cdn2.example.com")]
    yield servers
    for server in servers:
        server.close()
    tls._context.cache_clear()


def test_a_redirect_from_https_to_plain_http_is_refused(
        https_hostiles: list[Hostile], other_hostile: Hostile) -> None:
    """A link given over https stays on https: a redirect to plain http is refused before
    its hop is sent; one to another https host is followed."""
    secure, other_secure = https_hostiles
    secure.answers["/file"] = redirect(f"http://plain.example.com:{other_hostile.port}/hop")
    secure.answers["/moved"] = redirect(f"https://cdn2.example.com:{other_secure.port}/hop")
    other_hostile.answers["/hop"] = other_secure.answers["/hop"] = plain(b'{"a": 1}\n')
    client = make_download_client(api_base="http://127.0.0.1:9", resolver=resolver({
        "cdn.example.com": "127.0.0.1", "cdn2.example.com": "127.0.0.1",
        "plain.example.com": "127.0.0.1"}))

    with pytest.raises(RefusedTarget, match="unencrypted"):
        fetch(client, f"https://cdn.example.com:{secure.port}/file")
    assert other_hostile.seen == []
    assert fetch(client, f"https://cdn.example.com:{secure.port}/moved") == b'{"a": 1}\n'


def test_a_gzip_bomb_is_refused_with_memory_bounded(hostile: Hostile) -> None:
    bomb = b"\0" * (64 << 20)  # ~64 KiB compressed, 64 MiB inflated
    hostile.answers["/file"] = gzipped(bomb)
    del bomb
    client = make_download_client(api_base="http://127.0.0.1:9")

    tracemalloc.start()
    try:
        with pytest.raises(InflationRefused, match="decompression bomb"):
            fetch(client, f"{hostile.base}/file")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert peak < 24 << 20, f"peak {peak / 2**20:.1f} MiB while refusing a gzip bomb"
    assert hostile.seen[0].headers["Accept-Encoding"] == "identity"


def test_a_server_that_compresses_anyway_is_decoded_exactly(hostile: Hostile) -> None:
    data = "".join(json.dumps(d, ensure_ascii=False) + "\n" for d in make_docs(2000, seed=3))
    hostile.answers["/file"] = gzipped(data.encode())
    client = make_download_client(api_base="http://127.0.0.1:9")

    assert fetch(client, f"{hostile.base}/file") == data.encode()


def test_a_body_without_length_or_framing_is_refused_when_completeness_rests_on_it(
        hostile: Hostile) -> None:
    hostile.answers["/file"] = cut_without_length(b'{"a": 1}\n{"a": 2')
    client = make_download_client(api_base="http://127.0.0.1:9")

    with pytest.raises(UnconfirmedLength, match="neither Content-Length nor chunked"):
        fetch(client, f"{hostile.base}/file", require_length=True)


def test_a_content_length_that_is_not_ascii_digits_is_refused_naming_it() -> None:
    """Over the wire h11 refuses such a header first ("bad Content-Length"); the check
    must not lean on that: "\u00b2" passes str.isdigit, and int() refuses it."""
    response = httpx.Response(200, headers=[(b"Content-Length", b"\xb2")],
                              stream=httpx.ByteStream(b"ab"))

    with pytest.raises(UnconfirmedLength, match="Content-Length '\u00b2'"):
        b"".join(download_chunks(response, require_length=True))


# end to end: the platforms use the guarded client ------------------------------------
def test_wechat_file_url_at_the_metadata_service_is_never_fetched(
        local: LocalBackup, hostile: Hostile, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http, "system_resolver",
                        resolver({"metadata.example.com": "169.254.169.254"}))
    local.seed("orders", make_docs(5, seed=1))
    local.emulator.link_base = f"https://metadata.example.com:{hostile.port}"  # https: the address is what is refused
    ctx = local.context(local.config())

    run = backup_now(ctx)

    assert run.status is RunStatus.FAILED
    [job] = ctx.state.list_jobs(run.run_id)
    assert job.status is JobStatus.FAILED and job.error is not None
    assert "169.254.169.254, a link-local address" in job.error
    assert hostile.seen == []
    assert not [o for o in local.objects.list("") if o.key.endswith(".jsonl")]


def test_wechat_file_url_over_plain_http_is_never_fetched(
        local: LocalBackup, hostile: Hostile, monkeypatch: pytest.MonkeyPatch) -> None:
    """WeChat's links are https COS URLs; a plain-http one (anyone on the path could read or
    swap the export) is refused before connecting. The host resolves to loopback here only
    so that a fetch, if made, would be seen."""
    monkeypatch.setattr(http, "system_resolver", resolver({"cdn.example.com": "127.0.0.1"}))
    local.seed("orders", make_docs(5, seed=1))
    local.emulator.link_base = f"http://cdn.example.com:{hostile.port}"
    ctx = local.context(local.config())

    run = backup_now(ctx)

    [job] = ctx.state.list_jobs(run.run_id)
    assert job.status is JobStatus.FAILED and job.error is not None
    assert "file_url" in job.error and "https" in job.error and "api_base" in job.error
    assert "q-signature" not in job.error  # the link's signature is never shown
    assert hostile.seen == []


def test_minapp_download_redirected_to_a_private_address_is_never_fetched(
        local: LocalBackup, minapp_emulator: MinAppEmulator, hostile: Hostile,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http, "system_resolver", resolver({"db.internal.example": "10.0.0.7"}))
    minapp_emulator.add_table(1001, [{"name": "a"}])
    minapp_emulator.link_base = hostile.base  # a real CDN-like hop, then the private network
    hostile.answers = every_path(redirect(f"http://db.internal.example:{hostile.port}/x", 302))
    ctx = local.context(local.config(local.minapp_source(minapp_emulator)))

    run = backup_now(ctx)

    [job] = ctx.state.list_jobs(run.run_id)
    assert job.status is JobStatus.FAILED and job.error is not None
    assert "10.0.0.7, a private address" in job.error
    assert all(s.path.startswith("/_files/") for s in hostile.seen)


def test_wechat_gzip_bomb_fails_the_job_and_stores_nothing(
        local: LocalBackup, hostile: Hostile) -> None:
    local.seed("orders", make_docs(3, seed=1))
    local.emulator.link_base = hostile.base
    hostile.answers = every_path(gzipped(b"\n" * (32 << 20)))
    ctx = local.context(local.config())

    run = backup_now(ctx)

    [job] = ctx.state.list_jobs(run.run_id)
    assert job.status is JobStatus.FAILED and "decompression bomb" in (job.error or "")
    assert not [o for o in local.objects.list("") if o.key.endswith(".jsonl")]


def test_three_empty_lines_are_not_three_records(local: LocalBackup, hostile: Hostile) -> None:
    local.seed("orders", make_docs(3, seed=1))
    local.emulator.link_base = hostile.base
    hostile.answers = every_path(plain(b"\n\n\n"))
    ctx = local.context(local.config())

    run = backup_now(ctx)

    [job] = ctx.state.list_jobs(run.run_id)
    assert job.status is JobStatus.FAILED
    assert "reported 3, the export file holds 0" in (job.error or "")
    assert not [o for o in local.objects.list("") if o.key.endswith(".jsonl")]


def test_minapp_download_cut_without_a_length_is_never_done(
        local: LocalBackup, minapp_emulator: MinAppEmulator, hostile: Hostile) -> None:
    minapp_emulator.add_table(1001, [{"name": "a"}, {"name": "b"}])
    minapp_emulator.link_base = hostile.base
    hostile.answers = every_path(cut_without_length(b'{"name": "a"}\n'))
    ctx = local.context(local.config(local.minapp_source(minapp_emulator)))

    run = backup_now(ctx)

    [job] = ctx.state.list_jobs(run.run_id)
    assert job.status is JobStatus.FAILED
    assert "neither Content-Length nor chunked" in (job.error or "")
    assert not [o for o in local.objects.list("") if o.key.endswith(".jsonl")]



def test_a_record_is_a_line_that_parses_as_an_object() -> None:
    counter = JsonLinesCounter()
    for chunk in (b'\xef\xbb\xbf{"a": 1}\n\n   \n[1]\n"text"\nnot json\n{"b"', b': 2}\n{"c": 3}'):
        counter.feed(chunk)
    assert counter.total == 3 and counter.invalid == 3
