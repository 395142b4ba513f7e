"""Reading MinApp's HTTP answers: its own words from an error, and a JSON object body."""

from __future__ import annotations

import json
from typing import Any

import httpx

from shared.domain.errors import Retryable


def error_text(response: httpx.Response) -> str:
    """The platform's own words from an error answer, short."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:200] or "no message"
    if isinstance(body, dict):
        for name in ("error_msg", "message", "detail", "error_description", "error"):
            if body.get(name):
                return str(body[name])[:200]
    return json.dumps(body, ensure_ascii=False)[:200]


def json_object(response: httpx.Response) -> dict[str, Any]:
    """The answer's JSON object; anything else is a transient fault of the platform."""
    try:
        body = response.json()
    except ValueError:
        raise Retryable(f"MinApp answered HTTP {response.status_code} with something other "
                        "than JSON") from None
    if not isinstance(body, dict):
        raise Retryable(f"MinApp answered HTTP {response.status_code} with unexpected JSON")
    return body
