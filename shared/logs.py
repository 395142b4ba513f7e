"""JSON logs, one object per line on stdout (SCF ships stdout to CLS).

Redaction happens here, in the formatter, for every record from every library
(httpx logs request URLs, which carry access tokens and signatures), so no call
site has to remember it. It runs on each value before JSON encoding: encoding escapes
`"`, `\\` and control characters, and a secret holding one would no longer match.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import re
import sys
import threading
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any

REDACTED = "[redacted]"

_context: contextvars.ContextVar[dict[str, str]] = contextvars.ContextVar("log_context", default={})  # noqa: B039
_secrets: set[str] = set()
_secrets_lock = threading.Lock()

# any URL's userinfo (user:password@host): httpx logs request URLs as given. The scheme is
# bounded so a long run of letters and dashes is not rescanned from every position.
URL_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]{0,30}://)[^\s/?#\"'<>]+@")

# names whose value is a credential, matched whole (not inside errcode, status_code,
# max_tokens): a prefix of words joined by _ or - (authorizer_refresh_, x-cos-security-,
# TENCENTCLOUD_), then a word ending in one of these. Bounded, so matching stays linear.
_COMPOUND = (r"(?:[a-z0-9]+[_-]){0,4}[a-z0-9]*?"
             r"(?:secret[_-]?(?:key|id)|secret|token|ticket|passw(?:or)?d)")
# masked after `=`, `:` or as a quoted key: WeChat (access_token, authorizer_refresh_token,
# component_verify_ticket, component_appsecret, secret), MinApp (client_secret, code,
# refresh_token), OneDB (key_secret), COS (SecretKey, x-cos-security-token, q-ak,
# q-signature), Tencent Cloud API (SecretId, X-TC-Token), Authorization headers.
# WeChat third-party names: developers.weixin.qq.com/doc/oplatform/Third-party_Platforms/2.0/
# api/ThirdParty/token/component_access_token.html and .../api_get_authorizer_token.html
# Not a name right after `/`: that is a path (WeChat's /cgi-bin/stable_token), and what
# follows it in an error ("/cgi-bin/stable_token: HTTP 502") is the reason, not a secret.
_ANY_FORM = re.compile(
    rf"""(?i)(?<!/)(["']?\b(?:{_COMPOUND}|code|authorization|q-signature|q-ak)(?![\w-])["']?\s*[:=]\s*["']?)"""
    r"""(?!Bearer |Basic |TC3-HMAC-SHA256 )[^\s"'&,}]+"""
)
# everyday words, masked only when assigned (sign=, TC3's Credential= and Signature=, per
# cloud.tencent.com/document/api/583/17238 "签名方法 v3"; DingTalk robots' sign=, per
# open.dingtalk.com/document/robots/customize-robot-security-settings) or a
# quoted key ("sign": ...), not after a colon in prose ("the signature: check ...")
_ASSIGNED = re.compile(
    r"""(?i)((?:\b(?:sign|signature|credential)\s*=|(["'])(?:sign|signature|credential)\2\s*:)"""
    r"""\s*["']?)[^\s"'&,}]+"""
)

_PATTERNS: list[tuple[re.Pattern[str], str]] = [
    (URL_USERINFO, rf"\1{REDACTED}@"),
    # any URL's query string (access_token=..., COS q-signature=..., sign=..., MinApp codes),
    # whatever precedes it: a scheme in any case, none (urllib3 logs the path alone), or
    # JSON-escaped slashes. It starts at `?` so no prefix is rescanned; an escaped quote ends it.
    (re.compile(r"""(?<=[^\s"'<>])\?(?=[\w.~%-]*[=&])(?:[^\s"'<>\\]|\\(?!["']))*"""), f"?{REDACTED}"),
    # credentials in Authorization headers: the whole value up to a space or quote (a
    # bearer token may hold ':'; Basic is base64 of user:password)
    (re.compile(r"(?i)\b(Bearer|Basic)\s+[^\s\"'<>,;]+"), rf"\1 {REDACTED}"),
    # token-like parameters outside URLs: query, form, JSON, dict reprs, headers
    (_ANY_FORM, rf"\1{REDACTED}"),
    (_ASSIGNED, rf"\1{REDACTED}"),
    # a WeCom robot's key= (developer.work.weixin.qq.com/document/path/91770), as a query or
    # form parameter only (object keys are logged as key=)
    (re.compile(r"(?i)([?&]key=)[^\s\"'&,}#]+"), rf"\1{REDACTED}"),
    # cookies (MinApp's authorize sets the session the sign-in code is handed to) as a
    # header, a dict entry, or httpcore's DEBUG header tuples (b'Set-Cookie', b'...')
    (re.compile(r"""(?i)(\b(?:set-)?cookie(?![\w-])["']?\s*[:=]\s*b?["']?|"""
                r"""(["'])(?:set-)?cookie\2\s*,\s*b?["'])[^"'\r\n]+"""), rf"\1{REDACTED}"),
    # the COS SDK's DEBUG lines "sign_key: <hex>", "sign_key<hex>", "sign: <hex>"
    # (qcloud_cos/cos_auth.py): the key signs any request until its q-key-time ends
    (re.compile(r"(?i)\b(sign(?:_?key)?\W{0,3})[0-9a-f]{32,}"), rf"\1{REDACTED}"),
]


def register_secret(value: str | None) -> None:
    """Remember a secret value (app secret, fetched token) so it is masked wherever it appears."""
    if value and len(value) >= 6:
        with _secrets_lock:
            _secrets.add(value)


def redact(text: str) -> str:
    with _secrets_lock:
        known = sorted(_secrets, key=len, reverse=True)
    for secret in known:
        if secret in text:
            text = text.replace(secret, REDACTED)
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


@contextlib.contextmanager
def log_context(**fields: str | None) -> Iterator[None]:
    """Attach fields (run_id, job_id, ...) to every log line written inside the block."""
    merged = {**_context.get(), **{k: v for k, v in fields.items() if v is not None}}
    token = _context.set(merged)
    try:
        yield
    finally:
        _context.reset(token)


_STANDARD_ATTRS = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **_context.get(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(_redacted(entry), ensure_ascii=False)


def _redacted(value: Any) -> Any:
    """Every string in a log entry redacted, anything else made a string first."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {str(k): _redacted(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_redacted(v) for v in value]
    if value is None or isinstance(value, (bool, int, float)):
        return value
    return redact(str(value))


def configure_logging(level: int | str = logging.INFO, stream: Any = None) -> None:
    """Route every logger through one JSON handler; safe to call on every invocation."""
    handler = logging.StreamHandler(stream or sys.stdout)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    for existing in list(root.handlers):
        if isinstance(existing.formatter, JsonFormatter) or getattr(existing, "_scf", False):
            root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level)
