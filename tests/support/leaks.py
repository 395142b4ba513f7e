"""One check for secrets in captured text: known values, and credential-shaped strings
(token parameters, COS signatures, sign-in codes, bearer headers) that were not redacted."""

from __future__ import annotations

import re

UNREDACTED = [
    re.compile(r"access_token=(?!\[redacted\])"),
    re.compile(r"q-signature=(?!\[redacted\])"),
    re.compile(r"q-sign-time=(?!\[redacted\])"),
    re.compile(r"[?&]sign=(?!\[redacted\])"),
    re.compile(r"[?&]code=(?!\[redacted\])"),
    re.compile(r"Bearer (?!\[redacted\])"),
    re.compile(r"(?:authorizer_refresh_token|component_verify_ticket)=(?!\[redacted\])"),
    re.compile(r"(?:Credential|Signature)=(?!\[redacted\])"),  # TC3 Authorization
    re.compile(r"sign_key\W{0,3}[0-9a-f]{32}"),  # the COS SDK's DEBUG signing key
]


def assert_no_secrets(text: str, secrets: list[str]) -> None:
    for secret in secrets:
        assert secret not in text
    for pattern in UNREDACTED:
        assert not pattern.search(text), pattern.pattern
