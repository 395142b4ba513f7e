"""What travels on the wire to and from OneDB's cloud database API, without a client:
range markers, error classification, answer parsing and the getMany cursor. Shared by
the client (platform.py) and its restore half (restore.py)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import orjson

from shared.domain.errors import BackupError, Fatal, RateLimited, Retryable, TokenRejected
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


# orjson reads integers beyond 64 bits as floats, silently: any run of 19 digits (perhaps
# only inside a string) sends the page to the exact, slower standard library instead.
# Found by mapping every digit to 0 and looking for 19 zeros: far faster than a regex.
_DIGITS_TO_ZERO = bytes.maketrans(b"123456789", b"000000000")
_LONG_RUN = b"0" * 19


def _parse(content: bytes) -> Any:
    if content.translate(_DIGITS_TO_ZERO).find(_LONG_RUN) < 0:
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


def check_next_id(rows: list[dict[str, Any]], following: dict[str, Any] | None) -> None:
    """The next page starts at nextId, inclusive (getMany: "ids 即查询范围的起始 id"; nextId
    read as the ids of the row after the page, as Tablestore's next start key is). The
    document's sample (返回内容, getMany: `"nextId": {"ids": "idsValue"}`) also reads as the
    ids of the page's own last row: read that way, the row would be read again at every
    page edge and stored twice. Unverified, so that reading stops the copy, loudly."""
    if following is None or not rows or rows[-1].get("ids") != following:
        return
    raise Fatal(f"OneDB getMany answered a nextId that names the last row of its own page "
                f"({following}); started from it, the next page would read that row again "
                "and the backup would hold it twice. OneDB's nextId reading differs from this "
                "product's: report it. Nothing of this page was stored")
