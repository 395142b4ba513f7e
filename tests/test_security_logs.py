"""Log redaction runs on values before JSON encoding, covers every credential shape, and
every credential the process reads is registered."""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Iterator

import httpx
import pytest

from shared.adapters.cos.client import cos_client
from shared.adapters.cos.objects import CosObjectStore
from shared.config import Destination
from shared.domain.errors import Fatal
from shared.logs import REDACTED, JsonFormatter, configure_logging, redact, register_secret
from shared.platforms.wechat.settings import TokenService
from shared.platforms.wechat.tokens import OwnedToken
from tests.support.hostile import Hostile, every_path, json_answer, plain, send


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


# -- every secret-bearing name the product sends or receives, in every form it takes ------
# WeChat: developers.weixin.qq.com/doc/oplatform/Third-party_Platforms/2.0/api/ThirdParty/token/
# (component_verify_ticket, component_appsecret, component/authorizer tokens); MinApp:
# client_secret, code, refresh_token; OneDB: key_secret; COS and Tencent Cloud API keys and
# session tokens; DingTalk robots sign their webhook URL with timestamp and sign.
SECRET_NAMES = [
    "authorizer_refresh_token", "component_verify_ticket", "component_access_token",
    "authorizer_access_token", "access_token", "refresh_token", "component_appsecret",
    "secret", "key_secret", "client_secret", "password", "SecretKey", "SecretId",
    "x-cos-security-token", "X-TC-Token", "TENCENTCLOUD_SESSIONTOKEN", "TENCENTCLOUD_SECRETKEY",
    "Authorization", "ticket", "token", "code", "sign", "signature", "Credential",
]
# names that are also everyday words are masked when assigned or quoted, not after a
# bare colon in prose ("COS refused the signature: check the SecretKey")
PROSE_NAMES = {"sign", "signature", "Credential"}


def _forms(name: str) -> list[str]:
    value = f"Unreg1stered-{name}-v4lue"
    forms = [f"?appid=wx1&{name}={value}&x=1", f"{name}={value}", f'{{"{name}": "{value}"}}',
             f'{{"{name}":"{value}"}}', f"{{'{name}': '{value}', 'n': 1}}", f"a=1&{name}={value}"]
    if name not in PROSE_NAMES:
        forms.append(f"{name}: {value}")
    return forms


@pytest.mark.parametrize("name", SECRET_NAMES)
def test_every_secret_name_is_masked_in_query_json_header_and_form(name: str) -> None:
    value = f"Unreg1stered-{name}-v4lue"
    for text in _forms(name):
        assert value not in redact(text), text


def test_a_webhook_key_parameter_is_masked_without_masking_object_keys() -> None:
    assert "wecom-robot-key-1234" not in redact("send?key=wecom-robot-key-1234")
    assert "wecom-robot-key-1234" not in redact("msgtype=text&key=wecom-robot-key-1234")
    assert redact("copied key=backups/runs/r1/a.jsonl") == "copied key=backups/runs/r1/a.jsonl"


def test_everyday_words_stay_readable() -> None:
    for text in ("COS refused the signature: check the SecretKey (and the clock)",
                 "HTTP status_code: 500, errcode: 40001", "max_tokens=5 token_type: bearer",
                 "expires_in=7200"):
        assert redact(text) == text


@pytest.mark.parametrize("url", [
    "HTTPS://oapi.dingtalk.com/robot/send?timestamp=1700000000000&sign=S1gnedUrlSecret%3D",
    "Http://cos.example/o.json?q-sign-algorithm=sha1&sign=S1gnedUrlSecret",
    "oapi.dingtalk.com/robot/send?timestamp=1700000000000&sign=S1gnedUrlSecret",
    'https://b.cos.example:443 "GET /export/x.json?t=1&sign=S1gnedUrlSecret HTTP/1.1" 200 12',
    '{"file_url": "https:\\/\\/x.tcb.qcloud.la\\/export\\/a.json?t=1&sign=S1gnedUrlSecret"}',
    '{"file_url": "https://x.tcb.qcloud.la/a.json?t=1\\u0026sign=S1gnedUrlSecret"}',
])
def test_signed_url_queries_are_masked_whatever_the_url_looks_like(url: str) -> None:
    shown = redact(url)
    assert "S1gnedUrlSecret" not in shown, shown


def test_a_json_escaped_url_keeps_its_closing_quote() -> None:
    shown = redact('{"u": "https:\\/\\/x\\/a?sign=S1gned\\"}"}')
    assert "S1gned" not in shown and shown.endswith('\\"}"}'), shown


TC3 = ("Authorization: TC3-HMAC-SHA256 Credential=AKIDtc3secretid0001/2024-05-01/scf/tc3_request, "
       "SignedHeaders=content-type;host, Signature=" + "ab12" * 16)


@pytest.mark.parametrize("text", [TC3, repr({"Authorization": TC3.split(": ", 1)[1]}),
                                  TC3.replace("Authorization: ", "Authorization=")])
def test_a_tc3_authorization_header_hides_its_secret_id_and_signature(text: str) -> None:
    shown = redact(text)
    assert "AKIDtc3secretid0001" not in shown and "ab12ab12" not in shown, shown
    assert "TC3-HMAC-SHA256" in shown and "SignedHeaders=content-type;host" in shown, shown


@pytest.mark.parametrize("text", [
    "a-" * 100_000, "a_" * 100_000, "?a=" * 50_000, "https://" + "a" * 200_000 + "?",
    '"' * 100_000, "x" + "=" * 100_000, "sign_key" * 20_000, "a" * 200_000 + ":",
    "token " * 40_000, "Authorization: " * 10_000, "https:\\/\\/" * 20_000, "&a" * 100_000,
    "Credential=" + "a/" * 100_000,
])
def test_redaction_of_adversarial_lines_stays_linear(text: str) -> None:
    started = time.monotonic()
    redact(text)
    assert time.monotonic() - started < 5, "a regex backtracks on this input"


class _Raw(logging.Handler):
    """What a library hands to logging, before the product's formatter redacts it."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_the_cos_sdk_debug_lines_keep_no_signing_key(hostile: Hostile) -> None:
    """qcloud_cos/cos_auth.py logs the HMAC signing key at DEBUG ("sign_key: <hex>" and
    "sign_key<hex>"); with it anyone signs any request to the bucket until its key time ends.
    The product keeps the SDK's logger quiet, unless someone turns it up to debug a refused
    signature, as here."""
    hostile.answers = every_path(plain(b""))  # any PUT is stored; only the signing matters
    environ = {"ID": "AKIDcosdebug000000001", "KEY": "cos-debug-secret-key-1"}
    destination = Destination.model_validate(
        {"bucket": "b-1250000000", "region": "ap-guangzhou", "endpoint": hostile.base, "secret_id": "${ID}",
         "secret_key": "${KEY}"}, context={"environ": environ})
    stream, raw = io.StringIO(), _Raw()
    sdk = logging.getLogger("qcloud_cos")
    level = sdk.level
    configure_logging(logging.DEBUG, stream=stream)
    sdk.addHandler(raw)
    sdk.setLevel(logging.DEBUG)
    try:
        CosObjectStore(destination).put_json("backups/probe.json", {"a": 1})
    finally:
        sdk.setLevel(level)
        sdk.removeHandler(raw)
        configure_logging()

    keys = {m.split("sign_key", 1)[1].strip(": ") for m in raw.messages if m.startswith("sign_key")}
    assert keys, "the COS SDK no longer logs its signing key; this test can go"
    logs = stream.getvalue()
    assert "sign_key" in logs  # the records were written, redacted
    for key in keys:
        assert key not in logs


def test_httpcore_debug_lines_keep_no_session_cookie(hostile: Hostile) -> None:
    """httpcore logs every answer's headers at DEBUG; MinApp's authorize sets the session
    cookie that the sign-in code is then handed to (devkit/emulators/minapp.py)."""
    cookie = "sessi0n-cookie-value-42"
    hostile.answers["/api/oauth2/hydrogen/openapi/authorize/"] = lambda handler: send(
        handler, 200, b"{}", {"Set-Cookie": f"sessionid={cookie}; Path=/; HttpOnly"})
    stream = io.StringIO()
    configure_logging(logging.DEBUG, stream=stream)
    try:
        httpx.Client().post(f"{hostile.base}/api/oauth2/hydrogen/openapi/authorize/", json={})
    finally:
        configure_logging()

    logs = stream.getvalue()
    assert "receive_response_headers.complete" in logs  # httpcore's line was written
    assert cookie not in logs


@pytest.mark.parametrize("text", [
    "Set-Cookie: sessionid=sessi0n-cookie-value-42; Path=/", "Cookie: sessionid=sessi0n-cookie-value-42",
    "{'set-cookie': 'sessionid=sessi0n-cookie-value-42; Path=/'}",
    "[(b'Set-Cookie', b'sessionid=sessi0n-cookie-value-42; Path=/')]",
])
def test_cookies_are_masked(text: str) -> None:
    assert "sessi0n-cookie-value-42" not in redact(text)
    assert redact("keeps its cookies, for this one sign-in") == "keeps its cookies, for this one sign-in"
