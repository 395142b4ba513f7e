"""The COS client against an endpoint that answers a redirect (a misconfigured
destination.endpoint, a proxy, a moved host). The SDK is built with AllowRedirects=False
and then hands a 301/302/307 back as if it were the answer (qcloud_cos/cos_client.py,
send_request: "2xx和3xx都认为是成功的"): a PUT that stored nothing would pass for a
backup, a read would return the redirect's body. Every call must fail, name the
endpoint to check, and send nothing to the address the redirect names."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from shared.adapters.cos.objects import CosObjectStore
from shared.adapters.cos.state import CosStateStore
from shared.config import Destination
from shared.domain.errors import StateError, StorageError
from tests.support.hostile import Hostile, every_path, redirect

SECRET_KEY = "cos-secret-key-redirect-0a1b2c"
ROLE = {"TENCENTCLOUD_SECRETID": "AKIDredirect000000000001", "TENCENTCLOUD_SECRETKEY": SECRET_KEY,
        "TENCENTCLOUD_SESSIONTOKEN": "role-session-token-redirect-9f8e"}
Call = Callable[[CosObjectStore], Any]
CALLS: dict[str, Call] = {
    "put": lambda store: store.put_json("backups/run/manifest.json", {"ok": True}),
    "read": lambda store: store.read("backups/run/manifest.json"),
    "head": lambda store: store.head("backups/run/manifest.json"),
    "delete": lambda store: store.delete("backups/run/manifest.json"),
    "list": lambda store: store.list("backups/run/"),
    "begin upload": lambda store: store.begin_upload("backups/run/orders.jsonl", "application/x-ndjson"),
}


def _destination(hostile: Hostile) -> Destination:
    return Destination.model_validate({
        "bucket": "backups-1250000000", "region": "ap-guangzhou", "endpoint": hostile.base,
        "prefix": "backups"})


def _redirecting(hostile: Hostile, other_hostile: Hostile, status: int) -> None:
    hostile.answers = every_path(redirect(f"{other_hostile.base}/elsewhere?key=1", status))


def _says_what_to_check(error: BaseException, hostile: Hostile, status: int) -> None:
    text = str(error)
    assert f"HTTP {status}" in text and "redirect" in text, text
    assert "destination.endpoint" in text and f"127.0.0.1:{hostile.port}" in text, text
    assert SECRET_KEY not in text and ROLE["TENCENTCLOUD_SESSIONTOKEN"] not in text


@pytest.mark.parametrize("status", [301, 302, 307])
@pytest.mark.parametrize("call", sorted(CALLS))
def test_a_redirect_fails_every_object_call_and_is_not_followed(
    hostile: Hostile, other_hostile: Hostile, status: int, call: str
) -> None:
    _redirecting(hostile, other_hostile, status)
    store = CosObjectStore(_destination(hostile), ROLE)

    with pytest.raises(StorageError) as failed:
        CALLS[call](store)

    _says_what_to_check(failed.value, hostile, status)
    assert len(hostile.seen) == 1  # one try: retrying a redirect answers the same
    assert other_hostile.seen == []  # the signed request and its keys went nowhere else


@pytest.mark.parametrize("status", [301, 302, 307])
def test_a_redirect_fails_a_state_write(hostile: Hostile, other_hostile: Hostile, status: int) -> None:
    _redirecting(hostile, other_hostile, status)
    store = CosStateStore(_destination(hostile), ROLE, verify=False)

    with pytest.raises(StateError) as failed:
        store.cache_put("doctor:probe", "value", datetime.now(timezone.utc) + timedelta(minutes=5))

    _says_what_to_check(failed.value, hostile, status)
    assert other_hostile.seen == []
