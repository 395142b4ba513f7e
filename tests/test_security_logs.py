"""Log redaction runs on values before JSON encoding, covers every credential shape, and
every credential the process reads is registered."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import httpx
import pytest

from shared.adapters.cos.client import cos_client
from shared.config import Destination
from shared.domain.errors import Fatal
from shared.logs import REDACTED, JsonFormatter, redact, register_secret
from shared.platforms.wechat.settings import TokenService
from shared.platforms.wechat.tokens import OwnedToken
from tests.support.hostile import Hostile, json_answer, send


@pytest.fixture
def log_lines() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("tests.security")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield stream
    logger.removeHandler(handler)


@pytest.mark.parametrize("secret", ['quo"te-secret-1', "back\\slash-secret-2",
                                    "ctrl\x01char-secret-3", "new\nline-secret-4"])
def test_secrets_json_would_escape_are_masked(log_lines: io.StringIO, secret: str) -> None:
    register_secret(secret)
    logging.getLogger("tests.security").info(f"said {secret}", extra={"detail": [f"x{secret}y"]})

    line = log_lines.getvalue()
    entry = json.loads(line)
    assert secret not in json.dumps(entry) and secret not in line
    assert secret not in entry["message"] and secret not in entry["detail"][0]
    assert REDACTED in entry["message"]


@pytest.mark.parametrize(("text", "leak"), [
    ("Authorization: Basic dXNlcjpwYXNzd29yZA==", "dXNlcjpwYXNzd29yZA"),
    ("authorization=Basic dXNlcjpwYXNzd29yZA==", "dXNlcjpwYXNzd29yZA"),
    ("sent Bearer tok3n-head:tok3n-tail-part", "tok3n-tail-part"),
    ("signed q-ak=AKIDexample1234567890&q-sign-time=1", "AKIDexample1234567890"),
    ("header x-cos-security-token: sessi0n-token-value", "sessi0n-token-value"),
    ("HTTP Request: GET https://ops:pa55-w0rd-1@tokens.example/x", "pa55-w0rd-1"),
    ("mysql+pymysql://backup:pa55-w0rd-2@db.example:3306/state", "pa55-w0rd-2"),
])
def test_credential_shapes_are_masked(text: str, leak: str) -> None:
    assert leak not in redact(text)


def test_cos_keys_are_registered_when_the_client_is_made() -> None:
    environ = {"COS_ID": "AKIDcosid1234567890abc", "COS_KEY": "cos-secret-key-0987654321"}
    destination = Destination.model_validate(
        {"bucket": "b-1250000000", "region": "ap-guangzhou", "secret_id": "${COS_ID}",
         "secret_key": "${COS_KEY}"}, context={"environ": environ})
    cos_client(destination)
    role = {"TENCENTCLOUD_SECRETID": "AKIDrole123456789", "TENCENTCLOUD_SECRETKEY": "role-key-5566778899",
            "TENCENTCLOUD_SESSIONTOKEN": "role-session-token-abcdef"}
    cos_client(Destination(bucket="b-1250000000", region="ap-guangzhou"), role)

    for value in (*environ.values(), *role.values()):
        assert redact(f"x {value} y") == f"x {REDACTED} y"


def test_the_token_service_credential_is_registered(hostile: Hostile) -> None:
    hostile.answers["/token"] = json_answer(b'{"access_token": "served-token-123456", "expires_in": 7200}')
    credential = "Basic c2VydmljZTpwYXNzLTc3ODg5OQ=="
    settings = TokenService.model_validate(
        {"url": f"{hostile.base}/token", "authorization": "${AUTH}"},
        context={"environ": {"AUTH": credential}})

    assert OwnedToken(settings, "the token", httpx.Client()).token() == "served-token-123456"

    assert hostile.seen[0].headers["Authorization"] == credential
    assert credential not in redact(f"token service said: {credential}")
    assert "c2VydmljZTpwYXNzLTc3ODg5OQ" not in redact(credential.split()[1])


def test_a_token_service_url_with_a_password_keeps_it_out_of_the_error(hostile: Hostile) -> None:
    """The config refuses userinfo in `url` (tests/test_security_config.py); a URL that
    comes by another way (settings built in code) still never shows it."""
    password = "pa55w0rd-9f8e7d6c"
    hostile.answers["/wechat/shop"] = lambda handler: send(handler, 401, b'{"error": "no"}')
    url = hostile.base.replace("://", f"://ops:{password}@") + "/wechat/shop"
    settings = TokenService.model_construct(url=url, access_token=None, authorization=None)

    with pytest.raises(Fatal) as caught:
        OwnedToken(settings, "the access token of source 'shop'", httpx.Client()).token()

    message = str(caught.value)
    assert password not in message and "ops:" not in message, message
    assert f"token service {hostile.base}/wechat/shop answered HTTP 401" in message
    assert password not in redact(message)
