"""清林云 OneDB (cloud database API, `POST https://<region>.baasapi.com/cdb`).

OneDB has no export job: the finisher pages through each table with `getMany` over the
whole key range (`CDB:tableMinId` … `CDB:tableMaxId`, 5000 rows a call, ascending) and
follows the `nextId` cursor; see shared/paged.py. Every call carries `envid`, `keyid` and a
bearer JWT (HS256, `{"identity": "cdb"}`) signed here with the environment key's secret,
short-lived and signed again before it expires.

Errors come as HTTP 200 with an `errCode` (usually 1) and a `title` saying what went
wrong; they are classified from the title. The platform's exact titles are not
documented: anything not recognised is retried a bounded number of times and then fails
with OneDB's own words, so a wrong guess is loud, never silent.
"""

from __future__ import annotations

import email.utils
import json
import logging
import time
import uuid
import warnings
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import httpx
import jwt
import jwt.warnings
import orjson

from shared.adapters.http import describe_transport_error, make_client
from shared.domain.errors import BackupError, Fatal, RateLimited, Retryable, TokenRejected
from shared.logs import register_secret
from shared.platforms.onedb.settings import OneDBSource, OneDBTable
from shared.ports import Page, PlatformServices
from shared.retry import with_retries

log = logging.getLogger(__name__)

MIN_ID = "CDB:tableMinId"
MAX_ID = "CDB:tableMaxId"
ROWS_LIMIT = 5000  # getMany's maximum
TOKEN_TTL_SECONDS = 300  # "short expiry": a leaked token is useless within minutes
TOKEN_RENEW_SECONDS = 60  # signed again when less than this is left

# OneDB hands out the key secrets; their length is not the user's to choose.
_SHORT_KEY = getattr(jwt.warnings, "InsecureKeyLengthWarning", None)
if _SHORT_KEY is not None:
    warnings.filterwarnings("ignore", category=_SHORT_KEY)

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
        return Fatal(f"{where}: app {source.app_id!r} has no table {table!r}; fix app_id or "
                     "remove the table from the source's tables")
    if _has(text, _TOKEN):
        return TokenRejected(where)
    if _has(text, _LATER):
        return RateLimited(f"{where}: rate limited, will try again later")
    if _has(text, _BUSY):
        return Retryable(f"{where}: platform busy, will retry")
    if _has(text, _BAD_REQUEST):
        return Fatal(f"{where}: OneDB rejected the request for table {table!r}; check its "
                     "keys (the primary key columns, in order), filter and getColumns")
    return Retryable(f"{where}: not a known OneDB error; retried, then the job fails with it")


def _retry_after(value: str | None) -> float | None:
    """Seconds the platform asks to wait, from `Retry-After` (delay-seconds or HTTP-date)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return max(0.0, (moment - datetime.now(timezone.utc)).total_seconds())


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


class OneDBClient:
    """A paged platform (see `shared.ports.PagedPlatform`): `fetch_page` and `encode_page`."""

    file_type = "json"

    def __init__(self, source: OneDBSource, services: PlatformServices, client: httpx.Client | None = None,
                 *, token_ttl: float = TOKEN_TTL_SECONDS, token_renew: float = TOKEN_RENEW_SECONDS
                 ) -> None:
        self.source = source
        self._retry_base = services.retry_base_seconds
        self._http = client or make_client()
        self._token_ttl = token_ttl
        self._token_renew = token_renew
        self._bearer: str | None = None
        self._bearer_expires = 0.0
        register_secret(source.key_secret.get_secret_value())

    # the PagedPlatform protocol ---------------------------------------------------
    def discovery(self) -> dict[str, Any] | None:
        return None  # tables are listed in the config

    def collections(self) -> list[str]:
        return [t.name for t in self.source.tables]

    def request_for(self, collection: str, cursor: dict[str, Any] | None) -> dict[str, Any]:
        """The getMany body for the page starting at `cursor` (None: the first row)."""
        table = self._table(collection)
        keys = table.keys or self.source.keys or []
        body: dict[str, Any] = {
            "appId": self.source.app_id,
            "tableId": table.name,
            "action": "getMany",
            "ids": cursor if cursor is not None else {k: MIN_ID for k in keys},
            "endIds": {k: MAX_ID for k in keys},
            "orderType": "asc",
            "rowsLimit": ROWS_LIMIT,
        }
        if table.filter is not None:
            body["filter"] = table.filter.model_dump(mode="json")
        if table.getColumns:
            body["getColumns"] = list(table.getColumns)
        return body

    def fetch_page(self, collection: str, cursor: dict[str, Any] | None) -> Page:
        answer = self._call(self.request_for(collection, cursor), collection)
        table = self._table(collection)
        following = _next_ids(answer.next_id, collection, list(table.keys or self.source.keys or []))
        if following is not None and following == cursor:
            raise Fatal(f"OneDB getMany of {collection!r} gave back the cursor it was asked for "
                        "(nextId did not move); paging would never end")
        return Page(answer=answer.body, next_cursor=following)

    def encode_page(self, page: Page) -> tuple[bytes, int]:
        answer = page.answer
        if isinstance(answer, bytes):  # decoded here, off the thread that reads pages
            try:
                answer = _parse(answer)
            except ValueError:
                raise Retryable("OneDB getMany answered a page that is not JSON") from None
        rows = answer.get("data") if isinstance(answer, dict) else None
        if not isinstance(rows, list) or not all(isinstance(r, dict) and "ids" in r for r in rows):
            raise Retryable("OneDB getMany answered without a data list of rows")
        return self.encode_rows(rows), len(rows)

    def encode_rows(self, rows: list[Any]) -> bytes:
        """One JSON line per row: `{"ids": {...}, "columns": {...}}`, compact, UTF-8."""
        items = [{"ids": r["ids"], "columns": r.get("columns") or {}} for r in rows]
        if isinstance(rows, _ParsedByStdlib):
            return b"".join(_stdlib_line(item) for item in items)
        dumps, newline = orjson.dumps, orjson.OPT_APPEND_NEWLINE
        return b"".join([dumps(item, option=newline) for item in items])

    # doctor ----------------------------------------------------------------------
    def probe(self) -> str:
        """`doctor`: one getMany of one row of the first table, signed with the key: it
        fails with the AppHub advice when the key is not granted the cdb app."""
        table = self.collections()[0]
        body = {**self.request_for(table, None), "rowsLimit": 1}
        self._call(body, table)
        return (f"key {self.source.keyid!r} of environment {self.source.envid!r} read one row "
                f"of table {table!r} with getMany")

    # calls -----------------------------------------------------------------------
    def _table(self, collection: str) -> OneDBTable:
        try:
            return self.source.table(collection)
        except KeyError:
            raise Fatal(f"table {collection!r} is not in source {self.source.name!r}; add it to tables") from None

    def _call(self, body: dict[str, Any], collection: str) -> _Answer:
        """POST with a bearer token; busy answers are retried, a rejected token is signed
        again once."""

        def attempt() -> _Answer:
            try:
                return self._post(body, collection, self._token())
            except TokenRejected:
                log.warning("OneDB rejected the token; signing a new one once")
                try:
                    return self._post(body, collection, self._token(fresh=True))
                except TokenRejected as again:
                    raise Fatal(
                        f"{again}: a freshly signed token was rejected too. Check that "
                        f"key_secret is the secret of key {self.source.keyid!r} in environment "
                        f"{self.source.envid!r}, and that this machine's clock is right"
                    ) from None

        return with_retries(attempt, attempts=3, base_seconds=self._retry_base)

    def _post(self, body: dict[str, Any], collection: str, token: str) -> _Answer:
        headers = {"envid": self.source.envid, "keyid": self.source.keyid,
                   "Authorization": f"Bearer {token}"}
        try:
            response = self._http.post(self.source.endpoint, json=body, headers=headers)
        except httpx.TransportError as exc:
            raise Retryable(f"OneDB getMany of {collection!r}: {describe_transport_error(exc)}") from None
        status = response.status_code
        if status >= 500:
            raise Retryable(f"OneDB getMany of {collection!r}: HTTP {status}")
        if status == 429:  # RFC 9110 §10.2.3: Retry-After is seconds or an HTTP date
            raise RateLimited(f"OneDB getMany of {collection!r}: HTTP 429, rate limited",
                              retry_after=_retry_after(response.headers.get("Retry-After")))
        if status in (401, 403):
            raise TokenRejected(f"OneDB getMany of {collection!r}: HTTP {status}")
        if status != 200:
            raise Fatal(f"OneDB answered HTTP {status} at {self.source.endpoint}; check region "
                        "and api_base")
        content = response.content
        found, next_id = _tail_next_id(content)
        if found:  # a page of rows: decoded later, by encode_page
            return _Answer(content, next_id)
        try:
            answer = _parse(content)
        except ValueError:
            raise Retryable(f"OneDB getMany of {collection!r}: answer is not JSON") from None
        if not isinstance(answer, dict):
            raise Retryable(f"OneDB getMany of {collection!r}: answer is not a JSON object")
        if _failed(answer):
            raise classify(answer, self.source, collection)
        return _Answer(answer, answer.get("nextId"))

    def _token(self, *, fresh: bool = False) -> str:
        """The bearer token, signed again when it is close to expiring (or when asked)."""
        now = time.time()
        if fresh or self._bearer is None or now >= self._bearer_expires - self._token_renew:
            issued = int(now)
            claims = {"identity": "cdb", "iat": issued, "exp": issued + int(self._token_ttl),
                      "jti": uuid.uuid4().hex}
            self._bearer = jwt.encode(claims, self.source.key_secret.get_secret_value(),
                                      algorithm="HS256")
            self._bearer_expires = issued + self._token_ttl
            register_secret(self._bearer)
        return self._bearer


@dataclass(frozen=True)
class _Answer:
    """A successful getMany: decoded, or still raw with its nextId read from the tail."""

    body: dict[str, Any] | bytes
    next_id: Any


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
