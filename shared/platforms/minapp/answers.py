"""Reading MinApp's HTTP answers: its own words from an error, and a JSON object body."""

from __future__ import annotations

import json
from typing import Any

import httpx

from shared.domain.errors import Fatal, Retryable


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


# What to check when an answer's shape is not MinApp's documented one: where the answers
# come from, then the answer itself.
CHECK_API_BASE = ("check that the source's api_base is MinApp's OpenAPI "
                  "(https://cloud.minapp.com) and not a proxy that rewrites answers, and report "
                  "the answer's fields if it is")
_JSON_KINDS = ((bool, "boolean"), (int, "number"), (float, "number"), (str, "string"),
               (list, "array"), (dict, "object"))


def wrong_field(call: str, field: str, expected: str, value: Any) -> Fatal:
    """A field of a MinApp answer that is missing or not of its documented type. Only the
    value's JSON type is named: answers may carry tokens."""
    kind = next((name for cls, name in _JSON_KINDS if isinstance(value, cls)), "nothing")
    got = "missing or null" if value is None else f"a {kind}"
    return Fatal(f"MinApp {call} answered with {field} {got}, expected {expected}; "
                 f"{CHECK_API_BASE}")


def meta_of(answer: dict[str, Any], call: str) -> dict[str, Any]:
    """A list answer's `meta` object ({limit, offset, next, previous, total_count})."""
    meta = answer.get("meta")
    if not isinstance(meta, dict):
        raise wrong_field(call, "meta", "an object", meta)
    return meta


def count_of(container: dict[str, Any], field: str, call: str) -> int:
    """A whole, non-negative number (`expires_in`)."""
    value = container.get(field)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise wrong_field(call, field, "a whole number", value)
    return value


def objects_of(answer: dict[str, Any], call: str) -> list[dict[str, Any]]:
    """A list answer's `objects`: an array of objects."""
    objects = answer.get("objects")
    if not isinstance(objects, list) or not all(isinstance(o, dict) for o in objects):
        raise wrong_field(call, "objects", "an array of objects", objects)
    return objects
