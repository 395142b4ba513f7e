"""清林云 OneDB (cloud database API, `POST https://<region>.baasapi.com/cdb`).

OneDB has no export job: the finisher pages through each table with `getMany` over the
whole key range (`CDB:tableMinId` … `CDB:tableMaxId`, 5000 rows a call, ascending) and
follows the `nextId` cursor; see shared/paged.py. Every call carries `envid`, `keyid` and a
bearer JWT (HS256, `{"identity": "cdb"}`) signed here with the environment key's secret,
short-lived and signed again before it expires.

Errors come as HTTP 200 with an `errCode` (usually 1) and a `title` saying what went
wrong; they are classified from the title. The platform's exact titles are not
documented: anything not recognised is retried a bounded number of times and then fails
with OneDB's own words, so a wrong guess is loud, never silent (wire.py: markers, error
classes, answer parsing, the cursor). Restoring writes the rows back one by one with
`create` (restore.py, mixed into the client).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import jwt
import jwt.warnings
import orjson

from shared.adapters.http import describe_transport_error, make_client, retry_after_seconds
from shared.domain.errors import Fatal, RateLimited, Retryable, TokenRejected
from shared.logs import register_secret
from shared.platforms.onedb.restore import RowRestore
from shared.platforms.onedb.settings import OneDBSource, OneDBTable
from shared.platforms.onedb.wire import (
    MAX_ID,
    MIN_ID,
    ROWS_LIMIT,
    TableUnknown,
    _Answer,
    _failed,
    _next_ids,
    _parse,
    _ParsedByStdlib,
    _stdlib_line,
    _tail_last_ids,
    _tail_next_id,
    before_marker,
    check_cursor,
    classify,
    cursor_start,
    drop_stored,
    known_refusal,
    names_marker,
    next_cursor,
    page_rows,
    problem,
    request_body,
    skipped,
    skipped_row,
    stored_cursor,
)
from shared.ports import Page, PlatformServices
from shared.retry import with_retries

__all__ = ["MAX_ID", "MIN_ID", "ROWS_LIMIT", "OneDBClient", "TableUnknown", "classify"]

log = logging.getLogger(__name__)

TOKEN_TTL_SECONDS = 300  # "short expiry": a leaked token is useless within minutes
TOKEN_RENEW_SECONDS = 60  # signed again when less than this is left

# OneDB hands out the key secrets; their length is not the user's to choose.
_SHORT_KEY = getattr(jwt.warnings, "InsecureKeyLengthWarning", None)
if _SHORT_KEY is not None:
    warnings.filterwarnings("ignore", category=_SHORT_KEY)


@dataclass(frozen=True)
class _Asked:
    """A page asked from a row (a cursor), to check how the page starts (wire.STORED)."""

    body: dict[str, Any] | bytes | None
    collection: str
    start: dict[str, Any]
    stored: dict[str, Any] | None  # the start, a row already stored


class OneDBClient(RowRestore):
    """A paged platform (see `shared.ports.PagedPlatform`): `fetch_page` and `encode_page`;
    restored row by row (`shared.ports.RowImportPlatform`, in restore.py)."""

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
        self._token_lock = threading.Lock()  # restores write rows from many threads
        self._target_keys: dict[str, list[str]] = {}  # restore targets not in tables
        self._backed_up_as: dict[str, OneDBTable] = {}  # such a target: the table its rows came from
        register_secret(source.key_secret.get_secret_value())

    # the PagedPlatform protocol ---------------------------------------------------
    def discovery(self) -> dict[str, Any] | None:
        return None  # tables are listed in the config

    def collections(self) -> list[str]:
        return [t.name for t in self.source.tables]

    def request_for(self, collection: str, cursor: dict[str, Any] | None) -> dict[str, Any]:
        """The getMany body for the page starting at `cursor` (None: the first row)."""
        table = self._table(collection)
        keys = self._keys(table)
        start, _ = cursor_start(cursor)
        body: dict[str, Any] = {
            "appId": self.source.app_id,
            "tableId": table.name,
            "action": "getMany",
            "ids": start if start is not None else {k: MIN_ID for k in keys},
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
        following = _next_ids(answer.next_id, collection, self._keys(table))
        start, stored = cursor_start(cursor)
        if following is not None and following == start:
            raise Fatal(f"OneDB getMany of {collection!r} gave back the cursor it was asked for "
                        "(nextId did not move); paging would never end")
        body, following = self._next_cursor(answer.body, following)
        if following is not None and names_marker(cursor_start(following)[0]):
            body = self._decoded(body)
            following = stored_cursor(before_marker(collection, page_rows(body), start, following))
        return Page(answer=body if start is None else _Asked(body, collection, start, stored),
                    next_cursor=following)

    @staticmethod
    def _next_cursor(body: dict[str, Any] | bytes | None, following: dict[str, Any] | None
                     ) -> tuple[dict[str, Any] | bytes | None, dict[str, Any] | None]:
        """(the answer, the next cursor): nextId, marked stored when it names the page's
        own last row (wire.STORED), found from the tail, else by decoding the page here."""
        if following is None:
            return body, None
        if isinstance(body, bytes):
            found, last = _tail_last_ids(body)
            if found:
                return body, stored_cursor(following) if last == following else following
            try:
                body = _parse(body)
            except ValueError:
                raise Retryable("OneDB getMany answered a page that is not JSON") from None
        return body, next_cursor(page_rows(body), following)

    @staticmethod
    def _decoded(body: dict[str, Any] | bytes | None) -> dict[str, Any] | None:
        if not isinstance(body, bytes):
            return body
        try:
            answer: dict[str, Any] | None = _parse(body)
        except ValueError:
            raise Retryable("OneDB getMany answered a page that is not JSON") from None
        return answer

    def encode_page(self, page: Page) -> tuple[bytes, int]:
        asked = page.answer if isinstance(page.answer, _Asked) else None
        answer: Any = page.answer if asked is None else asked.body
        if isinstance(answer, bytes):  # decoded here, off the thread that reads pages
            try:
                answer = _parse(answer)
            except ValueError:
                raise Retryable("OneDB getMany answered a page that is not JSON") from None
        rows = page_rows(answer)
        check_cursor(rows, page.next_cursor)
        if asked is not None:
            self._check_start(asked, rows)
            drop_stored(rows, asked.stored)
        return self.encode_rows(rows), len(rows)

    def _check_start(self, asked: _Asked, rows: list[dict[str, Any]]) -> None:
        """A page that should start with its start row and does not: the row was deleted
        meanwhile, or lost (wire.skipped). With a filter the row may just not match."""
        if (skipped(rows, asked.start, asked.stored)
                and self._table(asked.collection).filter is None
                and self._exists(asked.collection, asked.start)):
            raise skipped_row(asked.collection, asked.start)

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
        """The table's settings; a table not in `tables` (a restore's target) is read with
        the key columns `restore_keys` finds for it, whole, or only the columns the backup
        restored into it holds (its table's getColumns: what a restore compares)."""
        try:
            return self.source.table(collection)
        except KeyError:
            pass
        keys = self.restore_keys(collection)
        if keys is None:
            raise Fatal(f"table {collection!r} is not in source {self.source.name!r} and its "
                        "primary key columns are unknown; add it to tables with its keys "
                        f"({{name: {collection}, keys: [...]}}) or set keys on the source")
        original = self._backed_up_as.get(collection)
        return OneDBTable(name=collection, keys=keys,
                          getColumns=original.getColumns if original is not None else None)

    def _keys(self, table: OneDBTable) -> list[str]:
        return list(table.keys or self.source.keys or [])

    def _call(self, body: dict[str, Any], collection: str,
              accept: Callable[[dict[str, Any]], bool] | None = None, *,
              raw: bytes | None = None) -> _Answer:
        """POST with a bearer token; busy answers are retried, a rejected token is signed
        again once. An errCode answer `accept` returns True for is returned, not raised.
        `raw`: `body` already encoded (restore.py writes rows exactly as they were read)."""

        def attempt() -> _Answer:
            try:
                return self._post(body, collection, self._token(), accept, raw)
            except TokenRejected:
                log.warning("OneDB rejected the token; signing a new one once")
                try:
                    return self._post(body, collection, self._token(fresh=True), accept, raw)
                except TokenRejected as again:
                    raise Fatal(
                        f"{again}: a freshly signed token was rejected too. Check that "
                        f"key_secret is the secret of key {self.source.keyid!r} in environment "
                        f"{self.source.envid!r}, and that this machine's clock is right"
                    ) from None

        return with_retries(attempt, attempts=3, base_seconds=self._retry_base)

    def _post(self, body: dict[str, Any], collection: str, token: str,
              accept: Callable[[dict[str, Any]], bool] | None = None,
              raw: bytes | None = None) -> _Answer:
        headers = {"envid": self.source.envid, "keyid": self.source.keyid,
                   "Authorization": f"Bearer {token}"}
        call = f"OneDB {body.get('action')} of {collection!r}"
        sent = raw if raw is not None else request_body(body)
        try:
            response = self._http.post(self.source.endpoint, content=sent,
                                       headers={**headers, "Content-Type": "application/json"})
        except httpx.TransportError as exc:
            raise Retryable(f"{call}: {describe_transport_error(exc)}") from None
        status = response.status_code
        taken = self._titled_refusal(response, collection, accept)
        if taken is not None:
            return taken
        if status >= 500:
            raise Retryable(f"{call}: HTTP {status}")
        if status == 429:  # RFC 9110 §10.2.3: Retry-After is seconds or an HTTP date
            raise RateLimited(f"{call}: HTTP 429, rate limited",
                              retry_after=retry_after_seconds(response.headers.get("Retry-After")))
        if status in (401, 403):
            raise TokenRejected(f"{call}: HTTP {status}")
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
            raise Retryable(f"{call}: answer is not JSON") from None
        if answer is None and body.get("action") == "get":
            return _Answer(None, None)  # "如果没有该条数据，则会返回null" (API doc, get)
        if not isinstance(answer, dict):
            raise Retryable(f"{call}: answer is not a JSON object")
        if _failed(answer):
            return self._refused(answer, collection, accept)
        return _Answer(answer, answer.get("nextId"))

    def _titled_refusal(self, response: httpx.Response, collection: str,
                        accept: Callable[[dict[str, Any]], bool] | None) -> _Answer | None:
        """A 4xx other than 429 carrying the errCode body. The API document changes only 400
        to 200 ("遵循最新的通用 HTTP 异常返回标准草案,但是更改了状态码 400 为 200",
        https://www.baasapi.com/docs/cdb, 返回内容 → 失败), so 401, 403, 404, 409 may stay,
        each with its title. A title this product knows (or `accept` takes) says more than
        the status; None: judge by the status."""
        if not 400 <= response.status_code < 500 or response.status_code == 429:
            return None
        answer = problem(response.content)
        if answer is None or not (known_refusal(answer) or (accept is not None and accept(answer))):
            return None
        return self._refused(answer, collection, accept)

    def _refused(self, answer: dict[str, Any], collection: str,
                 accept: Callable[[dict[str, Any]], bool] | None) -> _Answer:
        """An errCode answer: returned when `accept` takes it, else raised as classified."""
        if accept is not None and accept(answer):
            return _Answer(answer, None)
        raise classify(answer, self.source, collection)

    def _token(self, *, fresh: bool = False) -> str:
        """The bearer token, signed again when it is close to expiring (or when asked)."""
        with self._token_lock:
            now = time.time()
            if fresh or self._bearer is None or now >= self._bearer_expires - self._token_renew:
                issued = int(now)
                claims = {"identity": "cdb", "iat": issued, "exp": issued + int(self._token_ttl),
                          "jti": uuid.uuid4().hex}
                bearer = jwt.encode(claims, self.source.key_secret.get_secret_value(),
                                    algorithm="HS256")
                register_secret(bearer)  # masked in logs before any call carries it
                self._bearer, self._bearer_expires = bearer, issued + self._token_ttl
            return self._bearer
