"""A COS error a deployment's own settings cause says what to check, over real HTTP with
the real cos-python-sdk-v5: a code COS answers (cloud.tencent.com/document/product/436/7730)
and an endpoint nothing answers at. The keys never appear in the message."""

from __future__ import annotations

import socket

import pytest

from shared.adapters.cos.objects import CosObjectStore
from shared.config import Destination
from shared.domain.errors import StorageError
from tests.support.hostile import Hostile, every_path, send

ROLE = {"TENCENTCLOUD_SECRETID": "AKIDcoserrors0000000001", "TENCENTCLOUD_SECRETKEY": "cos-errors-key-5e6f7a",
        "TENCENTCLOUD_SESSIONTOKEN": "cos-errors-token-1b2c3d"}


def _store(endpoint: str) -> CosObjectStore:
    return CosObjectStore(Destination.model_validate({
        "bucket": "backups-1250000000", "region": "ap-guangzhou", "endpoint": endpoint,
        "prefix": "backups"}), ROLE)


def _no_keys(text: str) -> None:
    assert not any(value in text for value in ROLE.values()), text


@pytest.mark.parametrize(("code", "status", "words"), [
    ("AccessDenied", 403, ["build/cam-policy.json", "destination.prefix"]),
    ("NoSuchBucket", 404, ["destination.bucket", "destination.region"]),
    ("SignatureDoesNotMatch", 403, ["SecretKey"]),
])
def test_a_cos_refusal_caused_by_a_setting_says_what_to_check(
        hostile: Hostile, code: str, status: int, words: list[str]) -> None:
    body = (f"<?xml version='1.0' encoding='utf-8' ?><Error><Code>{code}</Code>"
            f"<Message>refused</Message><RequestId>req-1</RequestId></Error>").encode()
    hostile.answers = every_path(lambda h: send(h, status, body, {"Content-Type": "application/xml"}))

    with pytest.raises(StorageError) as failed:
        _store(hostile.base).put_json("backups/run/manifest.json", {"ok": True})

    text = str(failed.value)
    assert f"failed: {code} (HTTP {status}" in text and all(w in text for w in words), text
    _no_keys(text)


def test_a_cos_endpoint_nothing_answers_at_says_what_to_check() -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]

    with pytest.raises(StorageError) as failed:
        _store(f"http://127.0.0.1:{port}").head("backups/run/manifest.json")

    text = str(failed.value)
    assert "destination.region" in text and "destination.endpoint" in text, text
    _no_keys(text)
