"""What travels on the wire to and from OneDB's cloud database API, without a client:
range markers, error classification, answer parsing and the getMany cursor. Shared by
the client (platform.py) and its restore half (restore.py)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import orjson

from shared.domain.errors import BackupError, Fatal, RateLimited, Retryable, TokenRejected
from shared.domain.records import may_hold_long_integer
from shared.platforms.onedb.settings import OneDBSource

MIN_ID = "CDB:tableMinId"
MAX_ID = "CDB:tableMaxId"
ROWS_LIMIT = 5000  # getMany's maximum

# What OneDB's titles say, in Chinese or English, checked in this order.
_PERMISSION = ("权限", "permission", "forbidden")
_KEY_UNKNOWN = ("密匙不存在", "密钥不存在", "key not found", "unknown key")
_ENV_UNKNOWN = ("环境不存在", "environment not found", "unknown environment")
_TABLE_UNKNOWN = ("表不存在", "应用不存在", "table not found", "app not found", "no such table")
_TOKEN = ("token", "jwt", "令牌", "签名", "signature", "authorization", "过期", "expired")
_LATER = ("频繁", "限流", "配额", "too many", "rate limit", "quota", "throttl")
_BUSY = ("繁忙", "稍后", "超时", "内部错误", "busy", "timeout", "timed out", "internal", "unavailable")
_BAD_REQUEST = ("参数", "argument", "invalid", "filter", "getcolumns", "rowslimit")


def _has(text: str, words: tuple[str, ...]) -> bool:
    return any(word in text for word in words)


class TableUnknown(Fatal):
    """OneDB answered that the app has no such table."""


def known_refusal(answer: dict[str, Any]) -> bool:
    """Is this errCode answer one classify() recognises as being about the environment, the
    key, the table, the token or the platform's load (not about the request itself)?"""
    text = f"{answer.get('title') or ''} {answer.get('type') or ''}".lower()
    return any(_has(text, words) for words in
               (_PERMISSION, _KEY_UNKNOWN, _ENV_UNKNOWN, _TABLE_UNKNOWN, _TOKEN, _LATER, _BUSY))


def classify(answer: dict[str, Any], source: OneDBSource, table: str) -> BackupError:
    """Map an errCode answer to what the service layer should do about it."""
    title = str(answer.get("title") or "")
    where = f"OneDB {answer.get('type') or 'cdb'} errCode {answer.get('errCode')} ({title})"
    request_id = _request_id(answer.get("instance"))
    if request_id:
        where += f" [requestId {request_id}]"
    text = f"{title} {answer.get('type') or ''}".lower()
    if _has(text, _PERMISSION):
        return Fatal(
            f"{where}: key {source.keyid!r} may not use the cloud database. Install the cloud "
            "database app (应用 ID: cdb) from AppHub, then grant it to this key under the "
            "environment's key management (分应用权限)"
        )
    if _has(text, _KEY_UNKNOWN):
        return Fatal(f"{where}: environment {source.envid!r} has no key {source.keyid!r}; fix keyid")
    if _has(text, _ENV_UNKNOWN):
        return Fatal(f"{where}: environment {source.envid!r} does not exist in region "
                     f"{source.region!r}; fix envid or region")
    if _has(text, _TABLE_UNKNOWN):
        return TableUnknown(f"{where}: app {source.app_id!r} has no table {table!r}; fix app_id "
                            "or remove the table from the source's tables")
    if _has(text, _TOKEN):
        return TokenRejected(where)
    if _has(text, _LATER):
        return RateLimited(f"{where}: rate limited")
    if _has(text, _BUSY):
        return Retryable(f"{where}: platform busy")
    if _has(text, _BAD_REQUEST):
        return Fatal(f"{where}: OneDB rejected the request for table {table!r}; check its "
                     "keys (the primary key columns, in order), filter and getColumns")
    return Retryable(f"{where}: not a known OneDB error; retried, then the job fails with it")


def _request_id(instance: Any) -> str | None:
    """The requestId OneDB support asks for (instance is a JSON string)."""
    try:
        parsed = json.loads(instance) if isinstance(instance, str) else instance
    except ValueError:
        return None
    value = parsed.get("requestId") if isinstance(parsed, dict) else None
    return str(value) if value else None


def _failed(answer: dict[str, Any]) -> bool:
    return answer.get("errCode") not in (None, 0, "0", "")


def problem(content: bytes) -> dict[str, Any] | None:
    """The errCode body of an answer in another HTTP status than 200, or None."""
    try:
        answer = json.loads(content)
    except ValueError:
        return None
    return answer if isinstance(answer, dict) and _failed(answer) else None


@dataclass(frozen=True)
class _Answer:
    """A successful getMany: decoded, or still raw with its nextId read from the tail."""

    body: dict[str, Any] | bytes | None  # None: `get` found no row
    next_id: Any


ROW_FIELDS = frozenset({"ids", "columns"})


def page_rows(answer: Any) -> list[dict[str, Any]]:
    """The rows of a getMany answer, `{"data": [{"ids": {...}, "columns": {...}}], "nextId"}`
    as the cloud database API document shows it (返回内容 → 成功, action getMany). Any other
    shape stops the copy: a field this product does not know would otherwise be dropped
    from every row, or the page read as holding none, and the backup still pass."""
    rows = answer.get("data") if isinstance(answer, dict) else None
    if isinstance(rows, list):
        odd = next((row for row in rows if not _is_row(row)), None)
        if odd is None:
            return rows
        seen = f"a row with fields {_fields(odd)}"
    else:
        seen = f"fields {_fields(answer)}"
    raise Fatal(
        f"OneDB getMany answered a page in a shape this product does not recognise ({seen}; "
        "expected `data`: a list of rows with `ids` and `columns`, and `nextId`). Check the "
        "source's region and api_base (another service may be answering); if they are right, "
        "OneDB's answer changed: report these fields. Nothing of this page was stored"
    )


def _is_row(row: Any) -> bool:
    return (isinstance(row, dict) and isinstance(row.get("ids"), dict) and row.keys() <= ROW_FIELDS
            and isinstance(row.get("columns") or {}, dict))


def _fields(value: Any) -> str:
    if not isinstance(value, dict):
        return type(value).__name__
    return ", ".join(sorted(map(str, value))) or "none"


def _tail_next_id(content: bytes) -> tuple[bool, Any]:
    """nextId read from the end of the answer without decoding its 5000 rows, so the next
    call goes out at once. Only a top-level `"nextId":` key leaves a tail that decodes as an
    object on its own (one inside a row leaves closing brackets over), so whatever the rows
    hold, a tail that decodes is the real one. (False, None): decode the whole answer."""
    if b'"errCode"' in content:
        return False, None
    at = content.rfind(b'"nextId":')
    if at < 0:
        return False, None
    try:
        tail = _parse(b"{" + content[at:])
    except ValueError:
        return False, None
    if not isinstance(tail, dict) or set(tail) != {"nextId"}:
        return False, None
    return True, tail["nextId"]


class _ParsedByStdlib(list):  # type: ignore[type-arg]
    """Rows orjson would change or refuse (integers beyond 64 bits, NaN, lone surrogates):
    parsed and written back with the standard library, so no value changes on the way."""


def _parse(content: bytes) -> Any:
    if not may_hold_long_integer(content):
        try:
            return orjson.loads(content)
        except orjson.JSONDecodeError:
            pass  # NaN, lone surrogates, or not JSON at all
    answer = json.loads(content)
    if isinstance(answer, dict) and isinstance(answer.get("data"), list):
        answer["data"] = _ParsedByStdlib(answer["data"])
    return answer


def _stdlib_line(item: dict[str, Any]) -> bytes:
    try:
        text = json.dumps(item, ensure_ascii=False, separators=(",", ":"))
        return (text + "\n").encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: keep it as its \u escape
        return (json.dumps(item, separators=(",", ":")) + "\n").encode("ascii")


def request_body(body: dict[str, Any]) -> bytes:
    """A request as httpx's `json=` sends it (compact, UTF-8), except that a lone surrogate
    (half an emoji in a key value a cursor or a row names; JSON.stringify writes it as
    `\\ud83d`) goes as its escape instead of failing the call with UnicodeEncodeError."""
    try:
        return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(body, separators=(",", ":")).encode("ascii")


def _next_ids(value: Any, collection: str, keys: list[str]) -> dict[str, Any] | None:
    """nextId while rows follow, null (or absent) after the last page. The document's sample
    (cloud database API, getMany: "nextId") can be read as `{"ids": {...}}` or as the bare
    ids object; either is taken when its keys are exactly the table's key columns, anything
    else stops the backup rather than guess where the next page starts."""
    if value in (None, {}, ""):
        return None
    wanted = set(keys)
    if isinstance(value, dict) and isinstance(value.get("ids"), dict) and (
            set(value["ids"]) == wanted or (not wanted and value["ids"])) and set(value) == {"ids"}:
        return dict(value["ids"])
    if isinstance(value, dict) and wanted and set(value) == wanted:
        return dict(value)
    shape = sorted(value) if isinstance(value, dict) else type(value).__name__
    raise Fatal(f"OneDB getMany of {collection!r} answered a nextId of an unknown shape "
                f"(fields {shape}; expected {{\"ids\": {{...}}}} or the ids themselves, keyed "
                f"by the key columns {sorted(wanted)}); check the table's keys in the config. "
                "The backup stops rather than guess where the next page starts")


# Where the next page starts. The document says only that getMany's `ids` is "查询范围的起始
# id" (getMany) and shows `"nextId": {"ids": "idsValue"}` (返回内容 → getMany): nextId may
# name the next page's first row (the start read inclusive), or the last row of its own
# page, the start then read inclusive (that row comes again) or exclusive (it does not).
# An answer whose nextId is its own last row says which of the two it is; the cursor then
# remembers that the row is stored, and the next page drops it if it starts with it. The
# memory is part of the cursor, so it survives in a paged copy's checkpoint; a cursor
# saved before it (the bare ids) names a row not yet stored, as it always did.
STORED = "@stored"  # not a column name: a cursor {STORED: ids} names a row already stored


def stored_cursor(ids: dict[str, Any]) -> dict[str, Any]:
    return {STORED: ids}


def cursor_start(cursor: dict[str, Any] | None) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """(the ids to send as getMany's `ids`, the ids of a row already stored or None)."""
    if cursor is not None and set(cursor) == {STORED} and isinstance(cursor[STORED], dict):
        return cursor[STORED], cursor[STORED]
    return cursor, None


def ends_with(rows: list[dict[str, Any]], ids: dict[str, Any]) -> bool:
    return bool(rows) and rows[-1].get("ids") == ids


def drop_stored(rows: list[dict[str, Any]], stored: dict[str, Any] | None) -> None:
    """The page asked from a stored row starts with it again (an inclusive start): drop it."""
    if stored is not None and rows and rows[0].get("ids") == stored:
        del rows[0]  # in place: keeps a _ParsedByStdlib list what it is


def next_cursor(rows: list[dict[str, Any]], following: dict[str, Any] | None) -> dict[str, Any] | None:
    """The cursor for nextId `following`, given the page's rows."""
    if following is not None and ends_with(rows, following):
        return stored_cursor(following)
    return following


def check_cursor(rows: list[dict[str, Any]], following: dict[str, Any] | None) -> None:
    """The cursor chosen before the page was decoded (from its tail) agrees with its rows."""
    ids, stored = cursor_start(following)
    if ids is not None and ends_with(rows, ids) != (stored is not None):
        raise Fatal(f"OneDB getMany's last row, read from the end of the answer, is not the "
                    f"one decoded (nextId {ids}); the answer's layout is not what this product "
                    "reads: report it. Nothing of this page was stored")


def skipped(rows: list[dict[str, Any]], start: dict[str, Any] | None,
            stored: dict[str, Any] | None) -> bool:
    """Does a page asked from a row not yet stored start after it? Read as the next page's
    first row (getMany, "查询范围的起始 id"), the start should come back first; a page
    without it lost that row if the start is exclusive, or the row was deleted meanwhile."""
    return start is not None and stored is None and bool(rows) and rows[0].get("ids") != start


def skipped_row(collection: str, start: dict[str, Any]) -> Fatal:
    return Fatal(f"OneDB getMany of {collection!r} asked from row {start} (its nextId) answered "
                 "rows after it without it, and the row exists: this platform reads getMany's "
                 "start ids as exclusive while its nextId names the next page's first row, so "
                 "a row would be lost at every page edge. Report it; nothing of this page was "
                 "stored")


# getMany reads these `ids` values as range ends (API doc, getMany: "CDB:tableMaxId" 特殊值,
# 代表最大; "CDB:tableMinId" 特殊值,代表最小), and gives no way to mean the string itself,
# nor says a key cannot hold it. A nextId naming a row keyed so, sent back as `ids`, would
# start the next page at a range end: the copy would end early (or start over), silently.
RANGE_MARKERS = frozenset({MIN_ID, MAX_ID})


def names_marker(ids: dict[str, Any] | None) -> bool:
    return ids is not None and any(isinstance(v, str) and v in RANGE_MARKERS for v in ids.values())


def before_marker(collection: str, rows: list[dict[str, Any]], start: dict[str, Any] | None,
                  following: dict[str, Any]) -> dict[str, Any]:
    """The cursor to use instead of a nextId naming a range marker: the page's last row,
    stored already (the next page drops it if it starts with it, wire.STORED)."""
    last = rows[-1].get("ids") if rows else None
    if not isinstance(last, dict) or names_marker(last) or last == start:
        raise Fatal(f"OneDB getMany of {collection!r} answered nextId {following}, a key value "
                    "getMany reads as a range end (CDB:tableMinId/CDB:tableMaxId), and the page "
                    "gives no other row to go on from; rows keyed so cannot be paged past. "
                    "Change that key value in the table (or report it); nothing of this page "
                    "was stored")
    return dict(last)


def _tail_last_ids(content: bytes, tries: int = 4) -> tuple[bool, Any]:
    """The ids of the page's last row, read from just before `,"nextId":` without decoding
    the page, as _tail_next_id reads nextId: only the last row's own `{"ids":` leaves a
    segment that decodes as one row (a nested one leaves closing brackets over; an earlier
    row's leaves two values). (False, None): decode the whole answer."""
    head = content[:content.rfind(b'"nextId":')].rstrip()
    if not head.endswith(b","):
        return False, None
    head = head[:-1].rstrip()
    if not head.endswith(b"]"):
        return False, None
    end = at = len(head) - 1
    for _ in range(tries):
        at = head.rfind(b'{"ids":', 0, at)
        if at < 0:
            break
        try:
            row = _parse(head[at:end])
        except ValueError:
            continue
        return (True, row["ids"]) if _is_row(row) else (False, None)
    return False, None
