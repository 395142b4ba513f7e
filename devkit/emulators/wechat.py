"""Local emulator of the WeChat Cloud Development (CloudBase / TCB) HTTP API.

A real HTTP server (stdlib ``ThreadingHTTPServer`` in a background thread, bound
to 127.0.0.1) that answers the calls a backup needs:

- ``POST /cgi-bin/stable_token`` and the legacy ``GET /cgi-bin/token``;
- ``POST /tcb/databasecollectionget``;
- ``POST /tcb/databasemigrateexport`` and ``POST /tcb/databasemigratequeryinfo``;
- restoring: ``POST /tcb/databasecollectionadd``, ``POST /tcb/uploadfile`` (a COS-style form
  upload to ``POST /_cos/{env}/{path}`` on this emulator, which stands for the env's storage)
  and ``POST /tcb/databasemigrateimport`` (polled with databasemigratequeryinfo), plus their
  component-token forms ``/componenttcb/uploadfile``, ``/componenttcb/dbimport`` and
  ``/componenttcb/dbcollection`` (``action=add``);
- third-party platforms: ``POST /cgi-bin/component/api_component_token``,
  ``POST /cgi-bin/component/api_authorizer_token`` (refresh), and the component-token
  calls ``POST /componenttcb/dbexport``, ``/componenttcb/dbmigrationstate`` and
  ``/componenttcb/dbcollection`` (``action=get``); authorizer tokens work on ``/tcb/*``;
- ``GET /_files/{job_id}/{file_path}?q-sign-...``: pre-signed, COS-style download
  links for finished exports, streamed from disk in 1 MiB chunks.

Errors are answered like the real API: HTTP 200 with a non-zero ``errcode``.
Downloads fail like COS: HTTP 403/404 with an XML ``<Error>`` body.

Tests drive it in-process through :class:`WeChatEmulator`; a separate process can
be started with ``python -m devkit.emulators.wechat --port 8081 --app APPID:SECRET
--env APPID:ENV --jsonl ENV:NAME:PATH:COUNT``.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import csv
import hashlib
import hmac
import io
import itertools
import json
import os
import re
import secrets
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

from devkit.emulators.http_base import (
    DispatchHandler,
    EmulatorServer,
    LocalEmulator,
    json_bytes,
    serve_until_terminated,
)

__all__ = [
    "FILE_TYPE_CSV",
    "FILE_TYPE_JSON",
    "ExportQuery",
    "QueryError",
    "WeChatEmulator",
    "main",
    "parse_query",
    "render_export",
]

FILE_TYPE_JSON = 1
FILE_TYPE_CSV = 2

CHUNK_SIZE = 1024 * 1024
LEGACY_TOKEN_GRACE = 300.0
EXPORT_DONE_MESSAGE = "导出完成."
SIGN_ACCESS_KEY = "AKIDemulator"
MAX_BODY = 16 * 1024 * 1024
JSON_CONTENT_TYPE = "application/json; encoding=utf-8"

FILES_PREFIX = "/_files/"
COS_PREFIX = "/_cos/"  # the env's own storage: where uploadfile's form POSTs go
REDIRECTED_PREFIX = "/_redirected/"  # where `redirect_uploads` sends an upload (never followed)
IMPORT_DONE_MESSAGE = "导入完成."
AUTHORIZER_TOKEN = "/cgi-bin/component/api_authorizer_token"
FILES_CALL_KEY = "/_files"
MISSING: Any = object()  # `reshape_export_success`: leave the field out of the answer


# --------------------------------------------------------------------------- errors


class _ApiError(Exception):
    """An API answer with a non-zero errcode (sent as HTTP 200 unless told)."""

    def __init__(self, errcode: int, errmsg: str, http_status: int = 200) -> None:
        super().__init__(f"{errcode} {errmsg}")
        self.errcode = errcode
        self.errmsg = errmsg
        self.http_status = http_status


def _missing(name: str) -> _ApiError:
    return _ApiError(40101, f"missing parameter: {name}")


def _reshaped(info: dict[str, Any], fields: dict[str, Any]) -> dict[str, Any]:
    """`info` with `fields` set, those given as MISSING left out."""
    changed = {**info, **fields}
    return {name: value for name, value in changed.items() if value is not MISSING}


def _invalid(detail: str) -> _ApiError:
    return _ApiError(40097, f"invalid args: {detail}")


# --------------------------------------------------------------------------- query parser


class QueryError(ValueError):
    """The export ``query`` string could not be understood."""


@dataclass(frozen=True)
class ExportQuery:
    """A parsed ``db.collection('x').where({...}).skip(n).limit(n).get()``."""

    collection: str
    where: dict[str, Any] = field(default_factory=dict)
    skip: int = 0
    limit: int | None = None

    def apply(self, docs: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        """Filter (where), then skip, then limit, like the database does."""
        selected: Iterator[dict[str, Any]] = (d for d in docs if self.matches(d))
        stop = None if self.limit is None else self.skip + self.limit
        return itertools.islice(selected, self.skip, stop)

    def matches(self, doc: dict[str, Any]) -> bool:
        for key, wanted in self.where.items():
            if wanted is None:
                if doc.get(key) is not None:
                    return False
                continue
            if key not in doc:
                return False
            actual = doc[key]
            if isinstance(actual, list):
                if not any(_values_equal(item, wanted) for item in actual):
                    return False
            elif not _values_equal(actual, wanted):
                return False
        return True

    @property
    def is_plain(self) -> bool:
        """True when the query selects the whole collection unchanged."""
        return not self.where and self.skip == 0 and self.limit is None


def _values_equal(actual: Any, wanted: Any) -> bool:
    if isinstance(actual, bool) or isinstance(wanted, bool):
        return isinstance(actual, bool) and isinstance(wanted, bool) and actual == wanted
    if isinstance(actual, (int, float)) and isinstance(wanted, (int, float)):
        return actual == wanted
    return type(actual) is type(wanted) and bool(actual == wanted)


_IDENT_RE = re.compile(r"[A-Za-z_$][A-Za-z0-9_$]*")
# A name declared before db.collection(...), as the dbExport page's sample query does with
# "const Point = db.Geo.Point" (seeds/wechat-componenttcb-dbexport.en.txt): db member chains
# only, so no call (no other collection) can come before the query's own.
_DECLARATION_RE = re.compile(
    r"(?:const|let|var)\s+[A-Za-z_$][A-Za-z0-9_$]*\s*=\s*db(?:\.[A-Za-z_$][A-Za-z0-9_$]*)+\s*;?")
_NUMBER_RE = re.compile(r"-?(?:0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?")
_UINT_RE = re.compile(r"[0-9]+")
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "b": "\b", "f": "\f", "0": "\0", "\n": ""}
_SUPPORTED_VALUES = "only equality with a string, number, true, false or null is supported"


class _QueryParser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def error(self, message: str, pos: int | None = None) -> QueryError:
        where = self.pos if pos is None else pos
        return QueryError(f"{message} at position {where}")

    def skip_ws(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1

    def peek(self) -> str:
        self.skip_ws()
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def expect(self, token: str) -> None:
        self.skip_ws()
        if not self.text.startswith(token, self.pos):
            found = self.text[self.pos : self.pos + 12] or "end of query"
            raise self.error(f"expected {token!r} but found {found!r}")
        self.pos += len(token)

    def ident(self) -> str:
        self.skip_ws()
        match = _IDENT_RE.match(self.text, self.pos)
        if match is None:
            raise self.error("expected a name")
        self.pos = match.end()
        return match.group()

    def string(self) -> str:
        self.skip_ws()
        quote_char = self.peek()
        if quote_char not in ("'", '"'):
            raise self.error("expected a quoted string")
        start = self.pos
        self.pos += 1
        out: list[str] = []
        while True:
            if self.pos >= len(self.text):
                raise self.error("unterminated string", start)
            char = self.text[self.pos]
            if char == quote_char:
                self.pos += 1
                return "".join(out)
            if char == "\\":
                self.pos += 1
                if self.pos >= len(self.text):
                    raise self.error("unterminated string", start)
                esc = self.text[self.pos]
                if esc == "u":
                    digits = self.text[self.pos + 1 : self.pos + 5]
                    if not re.fullmatch(r"[0-9A-Fa-f]{4}", digits):
                        raise self.error("bad \\u escape")
                    out.append(chr(int(digits, 16)))
                    self.pos += 5
                    continue
                out.append(_ESCAPES.get(esc, esc))
                self.pos += 1
                continue
            out.append(char)
            self.pos += 1

    def uint(self, what: str) -> int:
        self.skip_ws()
        match = _UINT_RE.match(self.text, self.pos)
        if match is None:
            raise self.error(f"{what} needs a non-negative integer")
        self.pos = match.end()
        return int(match.group())

    def value(self, key: str) -> Any:
        char = self.peek()
        start = self.pos
        if char in ("'", '"'):
            return self.string()
        match = _NUMBER_RE.match(self.text, self.pos)
        if match is not None:
            self.pos = match.end()
            if match.group(1) or match.group(2):
                return float(match.group())
            return int(match.group())
        ident = _IDENT_RE.match(self.text, self.pos)
        if ident is not None:
            literals: dict[str, Any] = {"true": True, "false": False, "null": None}
            self.pos = ident.end()
            if ident.group() in literals and self.peek() in (",", "}"):
                return literals[ident.group()]
        raise self.error(f"unsupported value for field {key!r} ({_SUPPORTED_VALUES})", start)

    def where_object(self) -> dict[str, Any]:
        self.expect("{")
        result: dict[str, Any] = {}
        while True:
            if self.peek() == "}":
                self.pos += 1
                return result
            key_pos = self.pos
            key = self.string() if self.peek() in ("'", '"') else self.ident()
            if not key or "." in key:
                raise self.error(
                    f"unsupported field {key!r} (only top-level fields are supported)", key_pos
                )
            self.expect(":")
            result[key] = self.value(key)
            if self.peek() == ",":
                self.pos += 1
            elif self.peek() != "}":
                raise self.error("expected ',' or '}' in where()")

    def parse(self) -> ExportQuery:
        self.skip_ws()
        while (declared := _DECLARATION_RE.match(self.text, self.pos)) is not None:
            self.pos = declared.end()  # nothing they name is evaluated here
            self.skip_ws()
        start = self.pos
        if _IDENT_RE.match(self.text, self.pos) is None or self.ident() != "db":
            raise self.error("query must start with db.collection('NAME')", start)
        self.expect(".")
        method_pos = self.pos
        if self.ident() != "collection":
            raise self.error("query must start with db.collection('NAME')", method_pos)
        self.expect("(")
        name = self.string()
        if not name:
            raise self.error("collection name is empty")
        self.expect(")")
        where: dict[str, Any] | None = None
        skip: int | None = None
        limit: int | None = None
        while True:
            if self.peek() != ".":
                if self.pos >= len(self.text):
                    raise self.error("query must end with .get()")
                raise self.error("expected '.' before the next method")
            self.pos += 1
            method_pos = self.pos
            method = self.ident()
            self.expect("(")
            if method == "get":
                self.expect(")")
                if self.peek() == ";":
                    self.pos += 1
                if self.peek():
                    raise self.error("unexpected text after .get()")
                return ExportQuery(name, where or {}, skip or 0, limit)
            if method == "where":
                if where is not None:
                    raise self.error("duplicate .where()", method_pos)
                where = self.where_object()
            elif method == "skip":
                if skip is not None:
                    raise self.error("duplicate .skip()", method_pos)
                skip = self.uint("skip()")
            elif method == "limit":
                if limit is not None:
                    raise self.error("duplicate .limit()", method_pos)
                limit = self.uint("limit()")
                if limit == 0:
                    raise self.error("limit() needs a positive integer", method_pos)
            else:
                raise self.error(
                    f"unsupported method .{method}() (supported: where, skip, limit, get)",
                    method_pos,
                )
            self.expect(")")


def parse_query(text: str) -> ExportQuery:
    """Parse an export query; raise :class:`QueryError` naming the problem."""
    return _QueryParser(text).parse()


# --------------------------------------------------------------------------- export formats


def _jsonl_line(doc: dict[str, Any]) -> str:
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")) + "\n"


def _csv_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        return json.dumps(value)
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _csv_header(docs: Iterable[dict[str, Any]]) -> list[str]:
    seen: dict[str, None] = {}
    for doc in docs:
        for key in doc:
            seen.setdefault(key, None)
    header = list(seen)
    if "_id" in seen:
        header.remove("_id")
        header.insert(0, "_id")
    return header


def _write_jsonl(out: io.TextIOBase, docs: Iterable[dict[str, Any]]) -> int:
    count = 0
    for doc in docs:
        out.write(_jsonl_line(doc))
        count += 1
    return count


def _write_csv(out: io.TextIOBase, docs_factory: Callable[[], Iterable[dict[str, Any]]]) -> int:
    header = _csv_header(docs_factory())
    if not header:
        return 0
    writer = csv.writer(out, quoting=csv.QUOTE_MINIMAL, lineterminator="\n")
    writer.writerow(header)
    count = 0
    for doc in docs_factory():
        writer.writerow([_csv_cell(doc.get(key)) for key in header])
        count += 1
    return count


def _write_export(
    out: io.TextIOBase, docs_factory: Callable[[], Iterable[dict[str, Any]]], file_type: int
) -> int:
    if file_type == FILE_TYPE_CSV:
        return _write_csv(out, docs_factory)
    return _write_jsonl(out, docs_factory())


def render_export(docs: Iterable[dict[str, Any]], file_type: int) -> bytes:
    """The exact bytes an export of ``docs`` produces (1 = JSON Lines, 2 = CSV)."""
    materialised = list(docs)
    buffer = io.StringIO(newline="")
    _write_export(buffer, lambda: materialised, file_type)
    return buffer.getvalue().encode("utf-8")


def _iter_jsonl_file(path: str, stop: threading.Event | None = None) -> Iterator[dict[str, Any]]:
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if stop is not None and stop.is_set():
                raise RuntimeError("emulator stopped")
            if not line.strip():
                continue
            doc = json.loads(line)
            if not isinstance(doc, dict):
                raise ValueError(f"line {number} is not a JSON object")
            yield doc


# --------------------------------------------------------------------------- import formats

_TYPE_NAMES = {FILE_TYPE_JSON: "JSON Lines", FILE_TYPE_CSV: "CSV"}


def _bad_key(key: str) -> bool:
    """WeChat's import guide: a key may not start or end with '.' nor hold '..'
    (https://developers.weixin.qq.com/miniprogram/dev/wxcloud/guide/database/import.html)."""
    return key.startswith(".") or key.endswith(".") or ".." in key


def _csv_value(cell: str) -> Any:
    """A CSV cell as a value: the guide's CSV example (`_id,age` / `xxxxxx,45`) stands for the
    same records as its JSON example (`"age": 45`), so a cell that is a number is one; every
    other cell is a string. Only a cell that the export would write back identically is read
    as a number, so a CSV export, imported and exported again, gives the same cells."""
    if _NUMBER_RE.fullmatch(cell):
        number: int | float = float(cell) if any(c in cell for c in ".eE") else int(cell)
        if json.dumps(number) == cell:
            return number
    return cell


def _read_import_file(path: str, file_type: int) -> Iterator[dict[str, Any] | str]:
    """Each record of an import file: a document, or a string saying why the record is
    refused. JSON is JSON Lines (blank lines skipped); CSV's first row names the keys, and
    an empty cell leaves its key out (CSV cannot tell null, "" and a missing key apart)."""
    with open(path, encoding="utf-8", newline="") as handle:
        if file_type == FILE_TYPE_CSV:
            rows = csv.reader(handle)
            header = next(rows, None)
            if header is None:
                return
            for row in rows:
                if not row:
                    continue
                if len(row) != len(header):
                    yield f"{len(row)} cells under a header of {len(header)}"
                    continue
                yield {key: (cell if key == "_id" else _csv_value(cell))
                       for key, cell in zip(header, row, strict=True) if cell != ""}
            return
        for line in handle:
            if not line.strip():
                continue
            try:
                doc = json.loads(line)
            except ValueError as exc:
                yield f"not JSON ({exc})"
                continue
            if not isinstance(doc, dict):
                yield "not a JSON object"
            elif any(_bad_key(key) for key in doc):
                yield "a key starts or ends with '.' or holds '..'"
            else:
                yield doc


# --------------------------------------------------------------------------- COS-style signing


def _hmac_sha1(key: str, message: str) -> str:
    return hmac.new(key.encode("utf-8"), message.encode("utf-8"), hashlib.sha1).hexdigest()


def _cos_signature(secret_key: str, key_time: str, path: str, method: str = "get") -> str:
    sign_key = _hmac_sha1(secret_key, key_time)
    http_string = f"{method}\n{path}\n\n\n"
    string_to_sign = f"sha1\n{key_time}\n{hashlib.sha1(http_string.encode('utf-8')).hexdigest()}\n"
    return _hmac_sha1(sign_key, string_to_sign)


def _cos_error_xml(code: str, message: str, resource: str) -> bytes:
    request_id = secrets.token_hex(16)
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        "<Error>\n"
        f"  <Code>{code}</Code>\n"
        f"  <Message>{message}</Message>\n"
        f"  <Resource>{_xml_escape(resource)}</Resource>\n"
        f"  <RequestId>{request_id}</RequestId>\n"
        "</Error>\n"
    ).encode()


def _no_such_key(path: str) -> bytes:
    return _cos_error_xml("NoSuchKey", "The specified key does not exist.", path)


def _xml_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


# --------------------------------------------------------------------------- state


@dataclass
class _Token:
    value: str
    appid: str  # the mini program's, or the platform's for a component token
    kind: str  # "stable", "legacy", "component" or "authorizer"
    expires_at: float
    revoked: bool = False
    revoke_at: float | None = None
    force_expired: bool = False

    def problem(self, now: float) -> _ApiError | None:
        if self.revoked or (self.revoke_at is not None and now >= self.revoke_at):
            return _ApiError(40014, "invalid access_token")
        if self.force_expired or now >= self.expires_at:
            return _ApiError(42001, "access_token expired")
        return None


@dataclass
class _App:
    appid: str
    secret: str
    tcb_enabled: bool
    stable_token: str | None = None
    legacy_token: str | None = None


@dataclass
class _Component:
    """A third-party platform and the mini programs that authorized it."""

    appid: str
    secret: str
    ticket: str
    ticket_expired: bool = False
    refresh_tokens: dict[str, str] = field(default_factory=dict)  # authorizer appid -> token


APP_TOKEN_KINDS = frozenset({"stable", "legacy", "authorizer"})
COMPONENT_PATHS = ("/componenttcb/dbexport", "/componenttcb/dbmigrationstate", "/componenttcb/dbcollection",
                   "/componenttcb/uploadfile", "/componenttcb/dbimport")
FINAL_STATUSES = frozenset({"success", "fail"})


@dataclass
class _Collection:
    name: str
    count: int
    size: int
    docs: list[dict[str, Any]] | None = None
    path: str | None = None


@dataclass
class _Env:
    env: str
    appid: str
    collections: dict[str, _Collection] = field(default_factory=dict)


@dataclass
class _Job:
    job_id: int
    env: str
    collection: str
    file_type: int
    file_path: str
    query: str
    polls_until_ready: int
    count_delta: int
    fail_message: str | None
    ready: threading.Event = field(default_factory=threading.Event)
    polls: int = 0
    status: str = "waiting"
    data_path: str | None = None
    record_count: int = 0
    error: str | None = None

    @property
    def running(self) -> bool:
        """Holds an export slot until its end (success or fail) has been reported."""
        return self.status not in FINAL_STATUSES


@dataclass(frozen=True)
class _Refusal:
    status: int
    body: bytes


@dataclass(frozen=True)
class _Grant:
    file_path: str
    truncate: bool


@dataclass
class _Injection:
    errcode: int
    errmsg: str
    answer: dict[str, Any] | None = None  # set: answered as is (HTTP 200), not as an errcode


@dataclass(frozen=True)
class _UploadGrant:
    """What one uploadfile answer allows: a form POST of `path` into `env`'s storage."""

    env: str
    path: str
    token: str
    cos_file_id: str
    expires_at: float


@dataclass
class _ImportJob:
    job_id: int
    env: str
    collection: str
    file_type: int
    file_path: str
    stop_on_error: bool
    conflict_mode: int
    polls_until_ready: int
    fail_message: str | None
    polls: int = 0
    status: str = "waiting"
    record_success: int = 0
    record_fail: int = 0
    error: str = ""


def _token_value() -> str:
    return f"{secrets.randbelow(90) + 10}_{secrets.token_urlsafe(96)}"


def _default_id(env: str, name: str, index: int) -> str:
    return hashlib.sha256(f"{env}/{name}/{index}".encode()).hexdigest()[:32]


# --------------------------------------------------------------------------- the emulator


class WeChatEmulator(LocalEmulator):
    """The emulated platform: apps, environments, collections, tokens and export jobs.

    All methods are thread-safe. ``link_ttl``, ``token_ttl`` and ``polls_until_ready``
    are plain attributes and may be changed at any time; they apply to links, tokens
    and jobs created afterwards.

    - An export job answers ``waiting`` to its first query, ``migrating`` to the next
      ``polls_until_ready`` queries, then ``success`` (or ``fail``) from then on, each
      time with a freshly signed ``file_url`` valid ``link_ttl`` seconds.
    - ``calls`` counts requests per path; every download counts under ``"/_files"``.
    - Collections are listed sorted by name.
    - ``export_concurrency_limit``: at most this many exports run at once per environment
      (an export runs until its end has been reported); one more is refused with
      ``export_limit_errcode`` (-501004), like the real platform's concurrency limit.
    - ``max_listing_page``: a collection listing asking for more is refused (40097).
    - ``listing_answer``: rewrites each collection-listing answer (a platform whose answer
      has another shape).
    - ``rotate_refresh_tokens``: ``api_authorizer_token`` hands back a new refresh token
      each time and the old one stops working.
    - ``latency``: seconds every API call (not a download) takes before it is answered, like
      a distant platform; ``api_in_flight``/``api_most_in_flight`` count API calls being
      answered at once, and ``api_spans`` keeps each call's (start, end) monotonic times.

    Restoring (see "restore" below): ``uploadfile`` hands out a form upload into the env's
    storage (this emulator, under ``/_cos/``) signed for ``upload_ttl`` seconds; an import job
    moves like an export (``waiting``, ``migrating`` for ``polls_until_ready`` queries, then
    ``success``/``fail``) and writes its documents into the collection when it ends.
    ``upload_requests`` keeps each form upload's path, query string and headers (for leak
    tests); ``redirect_uploads`` answers every upload with a 307 to ``/_redirected/...``
    (counted under ``"/_redirected"`` in ``calls`` if anyone follows it); ``upload_answer``
    rewrites each uploadfile answer (a platform whose answer has another shape).
    """

    thread_name = "wechat-emulator"
    tmp_prefix = "wechat-emulator-"

    def __init__(
        self,
        *,
        polls_until_ready: int = 2,
        token_ttl: int = 7200,
        link_ttl: int = 3600,
        port: int = 0,
    ) -> None:
        self.polls_until_ready = polls_until_ready
        self.token_ttl = token_ttl
        self.link_ttl = link_ttl
        self.port = port
        self.export_concurrency_limit: int | None = None
        self.export_limit_errcode = -501004
        self.max_listing_page: int | None = None
        self.listing_answer: Callable[[dict[str, Any]], dict[str, Any]] | None = None
        self.rotate_refresh_tokens = False
        self.latency = 0.0
        self.api_in_flight = self.api_most_in_flight = 0
        self.api_spans: list[tuple[float, float]] = []
        self.base_url = ""
        self.link_base: str | None = None  # where file_url points; None: this emulator
        self.calls: collections.Counter[str] = collections.Counter()
        self._lock = threading.RLock()
        self._apps: dict[str, _App] = {}
        self._envs: dict[str, _Env] = {}
        self._tokens: dict[str, _Token] = {}
        self._components: dict[str, _Component] = {}
        self._created_while_listing: dict[str, list[str]] = {}
        self._dropped_while_listing: dict[str, list[str]] = {}
        self._jobs: dict[int, _Job] = {}
        self._next_job_id = 100_000_001
        self._injections: dict[str, collections.deque[_Injection]] = {}
        self._answers_to_lose: collections.Counter[str] = collections.Counter()
        self._failing: dict[tuple[str, str], str] = {}
        self._count_deltas: dict[tuple[str, str], int] = {}
        self._success_reshapes: dict[tuple[str, str], dict[str, Any]] = {}
        self._truncate_left = 0
        self._expire_links_left = 0
        self.download_statuses: list[int] = []
        self._secret_key = secrets.token_hex(20)
        self._stopping = threading.Event()
        # restoring
        self.upload_ttl = 3600
        self.redirect_uploads = False
        self.upload_answer: Callable[[dict[str, Any]], dict[str, Any]] | None = None
        self.upload_requests: list[dict[str, Any]] = []
        self._grants: dict[str, _UploadGrant] = {}  # by the authorization's q-signature
        self._stored: dict[tuple[str, str], str] = {}  # (env, path) -> file on disk
        self._imports: dict[int, _ImportJob] = {}
        self._failing_imports: dict[tuple[str, str], str] = {}
        self._upload_refusals: collections.deque[int] = collections.deque()

    # ----------------------------------------------------------------- lifecycle

    def _make_server(self, address: tuple[str, int]) -> _Server:
        return _Server(address, _Handler, self)

    def _on_start(self) -> None:
        self._stopping.clear()
        self._stored.clear()  # the files lived in the temporary directory of the last start

    def _on_stop(self) -> None:
        self._stopping.set()

    # ----------------------------------------------------------------- data

    def add_app(self, appid: str, secret: str, *, tcb_enabled: bool = True) -> None:
        with self._lock:
            self._apps[appid] = _App(appid, secret, tcb_enabled)

    def add_component(self, component_appid: str, secret: str, verify_ticket: str) -> None:
        """A third-party platform with its appsecret and current component_verify_ticket."""
        with self._lock:
            self._components[component_appid] = _Component(component_appid, secret, verify_ticket)

    def set_verify_ticket(self, component_appid: str, ticket: str, *, expired: bool = False) -> None:
        """WeChat pushed a new ticket (or the current one ran out: ``expired=True``)."""
        with self._lock:
            component = self._components[component_appid]
            component.ticket, component.ticket_expired = ticket, expired

    def authorize(self, component_appid: str, appid: str) -> str:
        """The mini program ``appid`` (added with ``add_app``) authorizes the platform;
        returns its authorizer_refresh_token."""
        with self._lock:
            if appid not in self._apps:
                raise KeyError(f"unknown appid {appid!r}: call add_app first")
            refresh = f"refreshtoken@@@{secrets.token_urlsafe(32)}"
            self._components[component_appid].refresh_tokens[appid] = refresh
            return refresh

    def revoke_authorization(self, component_appid: str, appid: str) -> None:
        with self._lock:
            self._components[component_appid].refresh_tokens.pop(appid, None)

    def token_info(self, value: str) -> dict[str, Any]:
        """What the emulator knows about an issued token (kind, appid, whether and when it
        stops working), for tests about who breaks whose token."""
        with self._lock:
            token = self._tokens[value]
            problem = token.problem(time.time())
            return {"kind": token.kind, "appid": token.appid, "valid": problem is None,
                    "revoke_at": token.revoke_at, "expires_at": token.expires_at}

    def running_exports(self, env: str) -> int:
        with self._lock:
            return sum(1 for job in self._jobs.values() if job.env == env and job.running)

    def add_env(self, appid: str, env: str) -> None:
        with self._lock:
            if appid not in self._apps:
                raise KeyError(f"unknown appid {appid!r}: call add_app first")
            if env in self._envs and self._envs[env].appid != appid:
                raise ValueError(f"env {env!r} already belongs to {self._envs[env].appid!r}")
            self._envs.setdefault(env, _Env(env, appid))

    def add_collection(self, env: str, name: str, docs: list[dict[str, Any]]) -> None:
        """Create or replace a collection. Documents without ``_id`` get a stable one."""
        copied: list[dict[str, Any]] = json.loads(json.dumps(docs))
        normalised: list[dict[str, Any]] = []
        for index, doc in enumerate(copied):
            if not isinstance(doc, dict):
                raise TypeError(f"document {index} is not a dict")
            if "_id" in doc:
                normalised.append(doc)
            else:
                normalised.append({"_id": _default_id(env, name, index), **doc})
        size = sum(len(_jsonl_line(doc).encode("utf-8")) for doc in normalised)
        with self._lock:
            target = self._env(env)
            target.collections[name] = _Collection(name, len(normalised), size, docs=normalised)

    def add_collection_file(self, env: str, name: str, jsonl_path: str, count: int) -> None:
        """Create a (big) collection backed by a JSON Lines file that stays on disk.

        A plain JSON export of it is that file byte for byte (hard-linked, or served in
        place when a link is impossible); CSV or filtered exports stream through it.
        """
        path = os.path.abspath(jsonl_path)
        size = os.path.getsize(path)
        with self._lock:
            target = self._env(env)
            target.collections[name] = _Collection(name, count, size, path=path)

    def docs(self, env: str, name: str) -> list[dict[str, Any]]:
        """A copy of the collection's documents (read from disk for file collections)."""
        with self._lock:
            coll = self._env(env).collections.get(name)
            if coll is None:
                raise KeyError(f"unknown collection {name!r} in env {env!r}")
            docs, path = coll.docs, coll.path
        if docs is not None:
            result: list[dict[str, Any]] = json.loads(json.dumps(docs))
            return result
        assert path is not None
        return list(_iter_jsonl_file(path))

    # ----------------------------------------------------------------- restore

    def clear_collection(self, env: str, name: str) -> None:
        """Delete every document of the collection (it stays, empty): a wiped source."""
        with self._lock:
            coll = self._env(env).collections.get(name)
            if coll is None:
                raise KeyError(f"unknown collection {name!r} in env {env!r}")
            coll.docs, coll.path, coll.count, coll.size = [], None, 0, 0

    def drop_collection(self, env: str, name: str) -> None:
        """Delete the collection itself (a later import into it is refused with -502005)."""
        with self._lock:
            self._env(env).collections.pop(name, None)

    def has_collection(self, env: str, name: str) -> bool:
        with self._lock:
            return name in self._env(env).collections

    def stored_file(self, env: str, path: str) -> bytes:
        """The bytes a form upload stored at `path` in the env's storage."""
        with self._lock:
            disk = self._stored[(env, path.lstrip("/"))]
        with open(disk, "rb") as handle:
            return handle.read()

    def stored_paths(self, env: str) -> list[str]:
        with self._lock:
            return sorted(path for (owner, path) in self._stored if owner == env)

    def import_jobs(self) -> list[dict[str, Any]]:
        with self._lock:
            return [
                {"job_id": job.job_id, "env": job.env, "collection": job.collection,
                 "file_type": job.file_type, "file_path": job.file_path,
                 "conflict_mode": job.conflict_mode, "stop_on_error": job.stop_on_error,
                 "status": job.status, "polls": job.polls,
                 "record_success": job.record_success, "record_fail": job.record_fail}
                for job in self._imports.values()
            ]

    def fail_import(self, env: str, collection: str, message: str) -> None:
        """Imports into this collection started from now on end in ``fail`` with `message`
        and write nothing."""
        with self._lock:
            self._failing_imports[(env, collection)] = message

    def refuse_next_uploads(self, times: int = 1, status: int = 403) -> None:
        """The next `times` form uploads are refused with this HTTP status and a COS-style
        XML error (403: the signature ran out between uploadfile and the upload)."""
        with self._lock:
            self._upload_refusals.extend([status] * times)

    def issued_upload_secrets(self) -> list[str]:
        """Every upload token and authorization handed out (tests look for leaks of them)."""
        with self._lock:
            return [value for signature, grant in self._grants.items()
                    for value in (grant.token, signature)]

    def export_jobs(self) -> list[dict[str, Any]]:
        with self._lock:
            return [
                {
                    "job_id": job.job_id,
                    "env": job.env,
                    "collection": job.collection,
                    "file_type": job.file_type,
                    "file_path": job.file_path,
                    "query": job.query,
                    "status": job.status,
                    "polls": job.polls,
                }
                for job in self._jobs.values()
            ]

    # ----------------------------------------------------------------- faults

    def inject_errcode(
        self, path: str, errcode: int, times: int = 1, errmsg: str = "system error"
    ) -> None:
        """The next ``times`` calls to ``path`` answer ``errcode``/``errmsg``.

        For ``"/_files"`` (downloads) the errcode is used as the HTTP status
        (a value outside 400-599 becomes 500) with a COS-style XML body.
        """
        with self._lock:
            queue = self._injections.setdefault(path, collections.deque())
            queue.extend(_Injection(errcode, errmsg) for _ in range(times))

    def answer_with(self, path: str, answer: dict[str, Any], times: int = 1) -> None:
        """The next ``times`` calls to ``path`` answer HTTP 200 with ``answer`` as is: a
        shape other than the documented one, as a changed API or a proxy might give."""
        with self._lock:
            queue = self._injections.setdefault(path, collections.deque())
            queue.extend(_Injection(0, "ok", dict(answer)) for _ in range(times))

    def lose_answers(self, path: str, times: int = 1) -> None:
        """The next ``times`` calls to ``path`` are carried out, then the connection is
        closed without an answer (the caller cannot tell whether it happened)."""
        with self._lock:
            self._answers_to_lose[path] += times

    def _answer_lost(self, path: str) -> bool:
        with self._lock:
            if self._answers_to_lose[path] <= 0:
                return False
            self._answers_to_lose[path] -= 1
            return True

    def fail_export(self, env: str, collection: str, message: str) -> None:
        with self._lock:
            self._failing[(env, collection)] = message

    def misreport_count(self, env: str, collection: str, delta: int) -> None:
        with self._lock:
            self._count_deltas[(env, collection)] = delta

    def reshape_export_success(self, env: str, collection: str, **fields: Any) -> None:
        """Exports of this collection then answer `success` with these fields changed (a
        value of ``MISSING`` leaves the field out): a changed API or a proxy's answer."""
        with self._lock:
            self._success_reshapes[(env, collection)] = fields

    def truncate_downloads(self, times: int = 1) -> None:
        with self._lock:
            self._truncate_left += times

    def expire_next_links(self, times: int = 1) -> None:
        """The next ``times`` downloads with a valid link are refused as expired (403).

        The links' ``q-sign-time`` window is normal, so a client cannot tell in advance:
        this stands for a link that runs out between the status query and the download.
        Counted at the download, not when a link is signed: a status query whose link
        nobody fetches (the poller's) must not use one up, and two links signed in the
        same second are the same link.
        """
        with self._lock:
            self._expire_links_left += times

    def create_while_listing(self, env: str, names: list[str]) -> None:
        """The next listing page answered for ``env`` is followed at once by the creation of
        these (empty) collections: the environment changes while a client pages through it."""
        with self._lock:
            self._created_while_listing.setdefault(env, []).extend(names)

    def release_jobs(self) -> None:
        """Every export and import job not yet ready gets ready at its next query: the end
        of a job a test held open with a large ``polls_until_ready``."""
        with self._lock:
            for job in self._jobs.values():
                job.polls_until_ready = 0
            for restore in self._imports.values():
                restore.polls_until_ready = 0

    def drop_while_listing(self, env: str, names: list[str]) -> None:
        """The next listing page answered for ``env`` is followed at once by the drop of
        these collections (with ``create_while_listing``: the total can stay the same)."""
        with self._lock:
            self._dropped_while_listing.setdefault(env, []).extend(names)

    def clear_faults(self) -> None:
        """Forget injected errcodes, failing exports and imports, misreported counts,
        truncations, doomed links, refused uploads and pending collection creations and drops."""
        with self._lock:
            self._failing_imports.clear()
            self._upload_refusals.clear()
            self._created_while_listing.clear()
            self._dropped_while_listing.clear()
            self._injections.clear()
            self._answers_to_lose.clear()
            self._failing.clear()
            self._count_deltas.clear()
            self._success_reshapes.clear()
            self._truncate_left = 0
            self._expire_links_left = 0

    def issued_tokens(self) -> list[str]:
        """Every access token handed out so far (tests look for leaks of them)."""
        with self._lock:
            return list(self._tokens)

    def expire_tokens(self) -> None:
        with self._lock:
            for token in self._tokens.values():
                token.force_expired = True

    def invalidate_tokens(self) -> None:
        with self._lock:
            for token in self._tokens.values():
                token.revoked = True

    # ----------------------------------------------------------------- helpers

    def _env(self, env: str) -> _Env:
        target = self._envs.get(env)
        if target is None:
            raise KeyError(f"unknown env {env!r}: call add_env first")
        return target

    def _answer_api(
        self, method: str, path: str, params: dict[str, list[str]], body: bytes
    ) -> tuple[int, dict[str, Any]]:
        """One API call, after `latency` seconds, counted while in flight."""
        started = time.monotonic()
        with self._lock:
            self.api_in_flight += 1
            self.api_most_in_flight = max(self.api_most_in_flight, self.api_in_flight)
        try:
            if self.latency:
                time.sleep(self.latency)
            return self._handle_api(method, path, params, body)
        finally:
            with self._lock:
                self.api_in_flight -= 1
                self.api_spans.append((started, time.monotonic()))

    def _count(self, path: str) -> None:
        with self._lock:
            self.calls[path] += 1

    def _record_download(self, status: int) -> None:
        with self._lock:
            self.download_statuses.append(status)

    def _take_injection(self, path: str) -> _Injection | None:
        with self._lock:
            queue = self._injections.get(path)
            if not queue:
                return None
            return queue.popleft()

    def _issue_token(self, app: _App | _Component, kind: str, now: float) -> _Token:
        token = _Token(_token_value(), app.appid, kind, now + self.token_ttl)
        self._tokens[token.value] = token
        return token

    def _sign_url(self, job: _Job) -> str:
        start = int(time.time())
        end = start + int(self.link_ttl)
        key_time = f"{start};{end}"
        path = f"{FILES_PREFIX}{job.job_id}/{job.file_path}"
        signature = _cos_signature(self._secret_key, key_time, path)
        return (
            f"{self.link_base or self.base_url}{quote(path)}?q-sign-algorithm=sha1&q-ak={SIGN_ACCESS_KEY}"
            f"&q-sign-time={key_time}&q-key-time={key_time}&q-url-param-list="
            f"&q-signature={signature}"
        )

    # ----------------------------------------------------------------- API dispatch

    def _handle_api(
        self, method: str, path: str, params: dict[str, list[str]], body: bytes
    ) -> tuple[int, dict[str, Any]]:
        self._count(path)
        try:
            injected = self._take_injection(path)
            if injected is not None and injected.answer is not None:
                return 200, injected.answer
            if injected is not None:
                raise _ApiError(injected.errcode, injected.errmsg)
            if path == "/cgi-bin/token":
                if method != "GET":
                    raise _ApiError(43001, "require GET method")
                return 200, self._api_legacy_token(params)
            handlers: dict[str, Callable[[_App, dict[str, Any]], dict[str, Any]]] = {
                "/tcb/databasecollectionget": self._api_collection_get,
                "/tcb/databasemigrateexport": self._api_export,
                "/tcb/databasemigratequeryinfo": self._api_query_info,
                "/componenttcb/dbexport": self._api_export,
                "/componenttcb/dbmigrationstate": self._api_query_info,
                "/componenttcb/dbcollection": self._api_component_collections,
                "/tcb/databasecollectionadd": self._api_collection_add,
                "/tcb/uploadfile": self._api_upload_file,
                "/tcb/databasemigrateimport": self._api_import,
                "/componenttcb/uploadfile": self._api_upload_file,
                "/componenttcb/dbimport": self._api_import,
            }
            token_calls: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
                "/cgi-bin/stable_token": self._api_stable_token,
                "/cgi-bin/component/api_component_token": self._api_component_token,
            }
            if path not in token_calls and path not in handlers and path != AUTHORIZER_TOKEN:
                return 404, {"errcode": 404, "errmsg": f"no such api {path}"}
            if method != "POST":
                raise _ApiError(43002, "require POST method")
            if path in token_calls:
                return 200, token_calls[path](self._json_body(body))
            if path == AUTHORIZER_TOKEN:
                return 200, self._api_authorizer_token(params, self._json_body(body))
            payload = self._json_body(body)
            if "action" in params and "action" not in payload:  # dbcollection takes it either way
                payload["action"] = params["action"][0]
            if path in COMPONENT_PATHS:
                app = self._component_target(self._check_token(params, {"component"}), payload)
            else:
                app = self._apps[self._check_token(params, APP_TOKEN_KINDS).appid]
            if not app.tcb_enabled:
                raise _ApiError(85088, "no qbase privilege")
            result = handlers[path](app, payload)
            if self.listing_answer and path in ("/tcb/databasecollectionget",
                                                "/componenttcb/dbcollection"):
                result = self.listing_answer(result)
            if self.upload_answer and path in ("/tcb/uploadfile", "/componenttcb/uploadfile"):
                result = self.upload_answer(result)
            return 200, {"errcode": 0, "errmsg": "ok", **result}
        except _ApiError as err:
            return err.http_status, {"errcode": err.errcode, "errmsg": err.errmsg}

    @staticmethod
    def _json_body(body: bytes) -> dict[str, Any]:
        if not body.strip():
            raise _ApiError(44002, "empty post data")
        try:
            payload = json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise _ApiError(47001, "data format error") from exc
        if not isinstance(payload, dict):
            raise _ApiError(47001, "data format error")
        return payload

    def _check_token(
        self, params: dict[str, list[str]], kinds: frozenset[str] | set[str], name: str = "access_token"
    ) -> _Token:
        value = (params.get(name) or [""])[0]
        if not value:
            raise _ApiError(41001, f"{name} missing")
        with self._lock:
            token = self._tokens.get(value)
            if token is None:
                raise _ApiError(40014, f"invalid {name}")
            problem = token.problem(time.time())
            if problem is not None:
                raise problem
            if token.kind not in kinds:
                raise _ApiError(48001, "api unauthorized")
            return token

    def _component_target(self, token: _Token, payload: dict[str, Any]) -> _App:
        """The mini program owning ``payload["env"]``, if it authorized the token's platform."""
        with self._lock:
            name = payload.get("env")
            if name is None:
                raise _missing("env")
            env = self._envs.get(name) if isinstance(name, str) else None
            if env is None:
                raise _invalid(f"env {name} not found")
            if env.appid not in self._components[token.appid].refresh_tokens:
                raise _ApiError(61003, "component is not authorized by this account")
            return self._apps[env.appid]

    def _api_component_token(self, payload: dict[str, Any]) -> dict[str, Any]:
        now = time.time()
        with self._lock:
            component = self._components.get(str(payload.get("component_appid") or ""))
            if component is None:
                raise _ApiError(61011, "invalid component")
            secret = payload.get("component_appsecret")
            if not isinstance(secret, str) or not hmac.compare_digest(component.secret, secret):
                raise _ApiError(40125, "invalid appsecret")
            ticket = payload.get("component_verify_ticket")
            if not isinstance(ticket, str) or not hmac.compare_digest(component.ticket, ticket):
                raise _ApiError(61006, "component ticket is invalid")
            if component.ticket_expired:
                raise _ApiError(61005, "component ticket is expired")
            token = self._issue_token(component, "component", now)
            return {"component_access_token": token.value, "expires_in": int(self.token_ttl)}

    def _api_authorizer_token(
        self, params: dict[str, list[str]], payload: dict[str, Any]
    ) -> dict[str, Any]:
        name = "component_access_token" if "component_access_token" in params else "access_token"
        token = self._check_token(params, {"component"}, name)
        now = time.time()
        with self._lock:
            component = self._components[token.appid]
            if payload.get("component_appid") != component.appid:
                raise _invalid("component_appid does not match the component_access_token")
            appid = str(payload.get("authorizer_appid") or "")
            current = component.refresh_tokens.get(appid)
            if current is None:
                raise _ApiError(61003, "component is not authorized by this account")
            offered = payload.get("authorizer_refresh_token")
            if not isinstance(offered, str) or not hmac.compare_digest(current, offered):
                raise _ApiError(61023, "refresh_token is invalid")
            if self.rotate_refresh_tokens:
                current = f"refreshtoken@@@{secrets.token_urlsafe(32)}"
                component.refresh_tokens[appid] = current
            issued = self._issue_token(self._apps[appid], "authorizer", now)
            return {"authorizer_access_token": issued.value, "expires_in": int(self.token_ttl),
                    "authorizer_refresh_token": current}

    def _check_app(self, appid: Any, secret: Any, grant_type: Any) -> _App:
        if grant_type != "client_credential":
            raise _ApiError(40002, "invalid grant_type")
        if not appid:
            raise _ApiError(41002, "appid missing")
        if not secret:
            raise _ApiError(41004, "appsecret missing")
        app = self._apps.get(appid) if isinstance(appid, str) else None
        if app is None:
            raise _ApiError(40013, "invalid appid")
        if not isinstance(secret, str) or not hmac.compare_digest(app.secret, secret):
            raise _ApiError(40125, "invalid appsecret")
        return app

    def _api_stable_token(self, payload: dict[str, Any]) -> dict[str, Any]:
        force = payload.get("force_refresh", False)
        if not isinstance(force, bool):
            raise _invalid("force_refresh must be a boolean")
        now = time.time()
        with self._lock:
            app = self._check_app(
                payload.get("appid"), payload.get("secret"), payload.get("grant_type")
            )
            current = self._tokens.get(app.stable_token or "")
            if current is not None and not force and current.problem(now) is None:
                return {
                    "access_token": current.value,
                    "expires_in": max(0, int(current.expires_at - now)),
                }
            if current is not None and force:
                current.revoked = True  # a forced refresh invalidates the old token at once
            token = self._issue_token(app, "stable", now)
            app.stable_token = token.value
            return {"access_token": token.value, "expires_in": int(self.token_ttl)}

    def _api_legacy_token(self, params: dict[str, list[str]]) -> dict[str, Any]:
        def first(name: str) -> str:
            return (params.get(name) or [""])[0]

        now = time.time()
        with self._lock:
            app = self._check_app(first("appid"), first("secret"), first("grant_type"))
            previous = self._tokens.get(app.legacy_token or "")
            if previous is not None:
                # The real platform keeps the previous token alive for about 5 minutes.
                deadline = now + LEGACY_TOKEN_GRACE
                if previous.revoke_at is None or previous.revoke_at > deadline:
                    previous.revoke_at = deadline
            token = self._issue_token(app, "legacy", now)
            app.legacy_token = token.value
            return {"access_token": token.value, "expires_in": int(self.token_ttl)}

    def _require_env(self, app: _App, payload: dict[str, Any], *required: str) -> _Env:
        for name in ("env", *required):
            if payload.get(name) is None:
                raise _missing(name)
        env = payload["env"]
        if not isinstance(env, str):
            raise _invalid("env must be a string")
        target = self._envs.get(env)
        if target is None or target.appid != app.appid:
            raise _invalid(f"env {env} not found")
        return target

    @staticmethod
    def _int_param(payload: dict[str, Any], name: str, default: int, minimum: int) -> int:
        value = payload.get(name, default)
        if value is None:
            value = default
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise _invalid(f"{name} must be an integer >= {minimum}")
        return value

    def _api_component_collections(self, app: _App, payload: dict[str, Any]) -> dict[str, Any]:
        """componenttcb/dbcollection: ``action`` get (default limit 20) answers ``total``;
        ``add`` creates a collection like databasecollectionadd."""
        if payload.get("action") == "add":
            return self._api_collection_add(app, payload)
        if payload.get("action") != "get":
            raise _invalid("action must be get or add (del is not emulated)")
        listing = self._api_collection_get(app, payload, default_limit=20)
        return {"collections": listing["collections"], "total": listing["pager"]["Total"]}

    def _api_collection_get(
        self, app: _App, payload: dict[str, Any], default_limit: int = 10
    ) -> dict[str, Any]:
        with self._lock:
            env = self._require_env(app, payload)
            limit = self._int_param(payload, "limit", default_limit, 1)
            offset = self._int_param(payload, "offset", 0, 0)
            if self.max_listing_page is not None and limit > self.max_listing_page:
                raise _invalid(f"limit must be at most {self.max_listing_page}")
            ordered = sorted(env.collections.values(), key=lambda c: c.name)
            page = ordered[offset : offset + limit]
            for name in self._created_while_listing.pop(env.env, []):
                env.collections[name] = _Collection(name, 0, 0, docs=[])  # after this page
            for name in self._dropped_while_listing.pop(env.env, []):
                env.collections.pop(name, None)
            return {
                "collections": [
                    {
                        "name": coll.name,
                        "count": coll.count,
                        "size": coll.size,
                        "index_count": 1,
                        "index_size": 4096 * (1 + coll.count // 100),
                    }
                    for coll in page
                ],
                "pager": {"Offset": offset, "Limit": limit, "Total": len(ordered)},
            }

    def _api_collection_add(self, app: _App, payload: dict[str, Any]) -> dict[str, Any]:
        """databasecollectionadd {env, collection_name}. An existing name is refused with
        -502006, the code WeChat's cloud database uses for a collection that already exists
        (read from wx-server-sdk users' code; WeChat's errcode page is not explicit)."""
        with self._lock:
            env = self._require_env(app, payload, "collection_name")
            name = payload["collection_name"]
            if not isinstance(name, str) or not name.strip():
                raise _invalid("collection_name must be a non-empty string")
            if name in env.collections:
                raise _ApiError(-502006, "database collection already exists")
            env.collections[name] = _Collection(name, 0, 0, docs=[])
            return {}

    @staticmethod
    def _storage_path(value: Any, what: str) -> str:
        if not isinstance(value, str) or not value.strip("/"):
            raise _invalid(f"{what} must be a non-empty string")
        path = value.lstrip("/")
        if "\\" in path or any(part in ("", ".", "..") for part in path.split("/")):
            raise _invalid(f"{what} {path!r} is not a valid path")
        return path

    def _api_upload_file(self, app: _App, payload: dict[str, Any]) -> dict[str, Any]:
        """uploadfile {env, path} -> a COS form upload into the env's storage
        (https://developers.weixin.qq.com/miniprogram/dev/wxcloud/reference-http-api/storage/uploadFile.html)."""
        with self._lock:
            env = self._require_env(app, payload, "path")
            path = self._storage_path(payload["path"], "path")
            start = int(time.time())
            key_time = f"{start};{start + int(self.upload_ttl)}"
            cos_path = f"{COS_PREFIX}{env.env}/{path}"
            signature = _cos_signature(self._secret_key, key_time, cos_path, "post")
            grant = _UploadGrant(env.env, path, secrets.token_urlsafe(48),
                                 secrets.token_urlsafe(24), start + int(self.upload_ttl))
            self._grants[signature] = grant
            return {
                "url": f"{self.base_url}{quote(cos_path)}",
                "token": grant.token,
                "authorization": (f"q-sign-algorithm=sha1&q-ak={SIGN_ACCESS_KEY}&q-sign-time="
                                  f"{key_time}&q-key-time={key_time}&q-header-list="
                                  f"&q-url-param-list=&q-signature={signature}"),
                "file_id": f"cloud://{env.env}.emulator/{path}",
                "cos_file_id": grant.cos_file_id,
            }

    def _api_import(self, app: _App, payload: dict[str, Any]) -> dict[str, Any]:
        """databasemigrateimport {env, collection_name, file_path, file_type, stop_on_error,
        conflict_mode} -> job_id (all six are required by WeChat's page)."""
        with self._lock:
            env = self._require_env(app, payload, "collection_name", "file_path", "file_type",
                                    "stop_on_error", "conflict_mode")
            name, file_type = payload["collection_name"], payload["file_type"]
            stop, mode = payload["stop_on_error"], payload["conflict_mode"]
            path = self._storage_path(payload["file_path"], "file_path")
            if not isinstance(name, str) or not name:
                raise _invalid("collection_name must be a non-empty string")
            if type(file_type) is not int or file_type not in (FILE_TYPE_JSON, FILE_TYPE_CSV):
                raise _invalid("file_type must be 1 (JSON) or 2 (CSV)")
            if not isinstance(stop, bool):
                raise _invalid("stop_on_error must be a boolean")
            if type(mode) is not int or mode not in (1, 2):
                raise _invalid("conflict_mode must be 1 (INSERT) or 2 (UPSERT)")
            if name not in env.collections:
                raise _ApiError(-502005, "database collection not exists")
            job = _ImportJob(self._next_job_id, env.env, name, file_type, path, stop, mode,
                             max(0, int(self.polls_until_ready)),
                             self._failing_imports.get((env.env, name)))
            self._next_job_id += 1
            self._imports[job.job_id] = job
            return {"job_id": job.job_id}

    def _import_info(self, job: _ImportJob) -> dict[str, Any]:
        """One status query of an import: it ends (and writes its documents) at the query
        an export would end at."""
        job.polls += 1
        if job.status not in FINAL_STATUSES:
            if job.polls == 1:
                job.status = "waiting"
            elif job.polls <= 1 + job.polls_until_ready:
                job.status = "migrating"
            else:
                self._run_earlier_imports(job)
                self._run_import(job)
        return {"status": job.status, "record_success": job.record_success,
                "record_fail": job.record_fail, "error_msg": job.error, "file_url": ""}

    def _run_earlier_imports(self, job: _ImportJob) -> None:
        """WeChat runs an import job on its own, whether or not anyone asks about it: one
        started earlier in the same env (say, one whose answer was lost, so nobody knows
        its id) has run by the time a later one does."""
        for earlier in sorted(self._imports.values(), key=lambda j: j.job_id):
            if earlier.job_id >= job.job_id:
                break
            if earlier.env == job.env and earlier.status not in FINAL_STATUSES:
                self._run_import(earlier)

    def _run_import(self, job: _ImportJob) -> None:
        if job.fail_message is not None:
            job.status, job.error = "fail", job.fail_message
            return
        disk = self._stored.get((job.env, job.file_path))
        coll = self._envs[job.env].collections.get(job.collection)
        if disk is None or coll is None:
            job.status = "fail"
            job.error = (f"file {job.file_path} not found in storage" if disk is None
                         else f"collection {job.collection} not exists")
            return
        if coll.docs is None:  # a file-backed collection becomes an in-memory one
            assert coll.path is not None
            coll.docs, coll.path = list(_iter_jsonl_file(coll.path)), None
        position = {doc.get("_id"): index for index, doc in enumerate(coll.docs)}
        try:
            records = list(_read_import_file(disk, job.file_type))
        except (UnicodeDecodeError, csv.Error) as exc:
            job.status, job.error = "fail", f"file is not UTF-8 {_TYPE_NAMES[job.file_type]}: {exc}"
            return
        problems: list[str] = []
        for number, record in enumerate(records, start=1):
            problem = record if isinstance(record, str) else None
            if isinstance(record, dict):
                doc = record if "_id" in record else {"_id": secrets.token_hex(16), **record}
                at = position.get(doc["_id"])
                if at is None:
                    position[doc["_id"]] = len(coll.docs)
                    coll.docs.append(doc)
                elif job.conflict_mode == 2:
                    coll.docs[at] = doc
                else:
                    problem = f"duplicate _id {doc['_id']!r}"
            if problem is None:
                job.record_success += 1
                continue
            job.record_fail += 1
            problems.append(f"record {number}: {problem}")
            if job.stop_on_error:
                break
        coll.count = len(coll.docs)
        coll.size = sum(len(_jsonl_line(doc).encode("utf-8")) for doc in coll.docs)
        if problems and job.stop_on_error:
            job.status, job.error = "fail", f"import stopped at {problems[0]}"
            return
        job.status = "success"
        job.error = IMPORT_DONE_MESSAGE + (f" {len(problems)} failed, first: {problems[0]}"
                                           if problems else "")

    def _take_upload_refusal(self) -> int | None:
        with self._lock:
            return self._upload_refusals.popleft() if self._upload_refusals else None

    def _check_upload(self, cos_path: str, fields: dict[str, str]) -> _Refusal | _UploadGrant:
        """A form upload's fields against the grant its Signature names."""
        refused = self._take_upload_refusal()
        if refused is not None:
            return _Refusal(refused, _cos_error_xml("AccessDenied", "Request has expired", cos_path))
        authorization = fields.get("Signature", "")
        signature = (parse_qs(authorization).get("q-signature") or [""])[0]
        with self._lock:
            grant = self._grants.get(signature)
        denied = _Refusal(403, _cos_error_xml(
            "SignatureDoesNotMatch", "The Signature you specified is invalid.", cos_path))
        if grant is None or cos_path != f"{COS_PREFIX}{grant.env}/{grant.path}":
            return denied
        if fields.get("key") != grant.path:
            return _Refusal(400, _cos_error_xml("InvalidArgument", "key does not match", cos_path))
        if not hmac.compare_digest(fields.get("x-cos-security-token", ""), grant.token):
            return _Refusal(403, _cos_error_xml("InvalidAccessKeyId", "invalid security token", cos_path))
        fileid = fields.get("x-cos-meta-fileid")
        if fileid is not None and fileid != grant.cos_file_id:  # optional metadata, but not wrong
            return _Refusal(400, _cos_error_xml("InvalidArgument", "bad x-cos-meta-fileid", cos_path))
        if time.time() > grant.expires_at:
            return _Refusal(403, _cos_error_xml("AccessDenied", "Request has expired", cos_path))
        return grant

    def _store_upload(self, grant: _UploadGrant, spooled: str) -> None:
        assert self._tmpdir is not None
        with self._lock:
            target = self._stored.get((grant.env, grant.path))
            if target is None:
                target = os.path.join(self._tmpdir, "storage", secrets.token_hex(8))
                os.makedirs(os.path.dirname(target), exist_ok=True)
            os.replace(spooled, target)
            self._stored[(grant.env, grant.path)] = target

    def _record_upload_request(self, path: str, query: str, headers: dict[str, str]) -> None:
        with self._lock:
            self.upload_requests.append({"path": path, "query": query, "headers": headers})

    def _api_export(self, app: _App, payload: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            env = self._require_env(app, payload, "file_path", "file_type", "query")
            file_path, file_type, query_text = (
                payload["file_path"],
                payload["file_type"],
                payload["query"],
            )
            if not isinstance(file_path, str) or not file_path.strip("/"):
                raise _invalid("file_path must be a non-empty string")
            file_path = file_path.lstrip("/")
            if "\\" in file_path or any(part in ("", ".", "..") for part in file_path.split("/")):
                raise _invalid(f"file_path {file_path!r} is not a valid path")
            if type(file_type) is not int or file_type not in (FILE_TYPE_JSON, FILE_TYPE_CSV):
                raise _invalid("file_type must be 1 (JSON) or 2 (CSV)")
            if not isinstance(query_text, str):
                raise _invalid("query must be a string")
            try:
                query = parse_query(query_text)
            except QueryError as exc:
                raise _invalid(f"query: {exc}") from exc
            coll = env.collections.get(query.collection)
            if coll is None:
                raise _ApiError(-502005, "database collection not exists")
            limit = self.export_concurrency_limit
            if limit is not None and sum(
                1 for j in self._jobs.values() if j.env == env.env and j.running
            ) >= limit:
                raise _ApiError(self.export_limit_errcode, "exceed max concurrent export limit")
            if self._tmpdir is None:
                raise _ApiError(-1, "system error")
            key = (env.env, coll.name)
            job = _Job(
                job_id=self._next_job_id,
                env=env.env,
                collection=coll.name,
                file_type=file_type,
                file_path=file_path,
                query=query_text,
                polls_until_ready=max(0, int(self.polls_until_ready)),
                count_delta=self._count_deltas.get(key, 0),
                fail_message=self._failing.get(key),
            )
            self._next_job_id += 1
            self._jobs[job.job_id] = job
            job_dir = os.path.join(self._tmpdir, "jobs", str(job.job_id))
            os.makedirs(job_dir)
            dest = os.path.join(job_dir, "export")
        # The snapshot is taken now: in-memory lists are never mutated in place.
        self._materialise(job, coll, query, dest)
        return {"job_id": job.job_id}

    def _materialise(self, job: _Job, coll: _Collection, query: ExportQuery, dest: str) -> None:
        if coll.docs is not None:
            snapshot = list(query.apply(coll.docs))
            self._write_job_file(job, dest, lambda: snapshot)
            return
        source = coll.path
        assert source is not None
        if query.is_plain and job.file_type == FILE_TYPE_JSON:
            try:
                os.link(source, dest)
                data_path = dest
            except OSError:
                data_path = source  # served in place, never copied
            with self._lock:
                job.data_path = data_path
                job.record_count = coll.count
            job.ready.set()
            return
        stop = self._stopping
        threading.Thread(
            target=self._write_job_file,
            args=(job, dest, lambda: query.apply(_iter_jsonl_file(source, stop))),
            name=f"wechat-export-{job.job_id}",
            daemon=True,
        ).start()

    def _write_job_file(
        self, job: _Job, dest: str, docs_factory: Callable[[], Iterable[dict[str, Any]]]
    ) -> None:
        try:
            with open(dest, "w", encoding="utf-8", newline="") as out:
                count = _write_export(out, docs_factory, job.file_type)
        except Exception as exc:
            with self._lock:
                job.error = f"export failed: {exc}"
        else:
            with self._lock:
                job.data_path = dest
                job.record_count = count
        finally:
            job.ready.set()

    def _api_query_info(self, app: _App, payload: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            env = self._require_env(app, payload, "job_id")
            job_id = payload["job_id"]
            if isinstance(job_id, bool) or not isinstance(job_id, int):
                raise _invalid("job_id must be a number")
            imported = self._imports.get(job_id)
            if imported is not None and imported.env == env.env:
                return self._import_info(imported)
            job = self._jobs.get(job_id)
            if job is None or job.env != env.env:
                raise _invalid(f"job_id {job_id} not found")
            job.polls += 1
            final = job.polls > 1 + job.polls_until_ready and job.ready.is_set()
            if job.polls == 1:
                job.status = "waiting"
            elif not final:
                job.status = "migrating"
            else:
                failure = job.fail_message or job.error
                job.status = "fail" if failure else "success"
                if failure:
                    return self._job_info(job, "fail", 0, failure, "")
                info = self._job_info(
                    job,
                    "success",
                    job.record_count + job.count_delta,
                    EXPORT_DONE_MESSAGE,
                    self._sign_url(job),
                )
                return _reshaped(info, self._success_reshapes.get((job.env, job.collection), {}))
            return self._job_info(job, job.status, 0, "", "")

    @staticmethod
    def _job_info(job: _Job, status: str, records: int, message: str, url: str) -> dict[str, Any]:
        return {
            "status": status,
            "record_success": records,
            "record_fail": 0,
            "error_msg": message,
            "file_url": url,
        }

    # ----------------------------------------------------------------- downloads

    def _authorize_download(self, path: str, params: dict[str, list[str]]) -> _Refusal | _Grant:
        """Check a download link: refuse it (COS-style XML) or grant a file on disk."""
        self._count(FILES_CALL_KEY)
        injected = self._take_injection(FILES_CALL_KEY)
        if injected is not None:
            status = injected.errcode if 400 <= injected.errcode <= 599 else 500
            return _Refusal(status, _cos_error_xml("InternalError", injected.errmsg, path))

        def first(name: str) -> str:
            return (params.get(name) or [""])[0]

        sign_time, key_time, signature = (
            first("q-sign-time"),
            first("q-key-time"),
            first("q-signature"),
        )
        match = re.fullmatch(r"([0-9]+);([0-9]+)", sign_time)
        if (
            not signature
            or match is None
            or first("q-sign-algorithm") != "sha1"
            or key_time != sign_time
        ):
            return _Refusal(403, _cos_error_xml("AccessDenied", "Access Denied.", path))
        if first("q-ak") != SIGN_ACCESS_KEY or not hmac.compare_digest(
            signature, _cos_signature(self._secret_key, key_time, path)
        ):
            return _Refusal(
                403,
                _cos_error_xml(
                    "SignatureDoesNotMatch", "The Signature you specified is invalid.", path
                ),
            )
        with self._lock:
            doomed = self._expire_links_left > 0
            if doomed:
                self._expire_links_left -= 1
        if doomed or time.time() > int(match.group(2)):
            return _Refusal(403, _cos_error_xml("AccessDenied", "Request has expired", path))
        job_part, _, rest = path[len(FILES_PREFIX) :].partition("/")
        with self._lock:
            job = self._jobs.get(int(job_part)) if job_part.isdigit() else None
            data_path = job.data_path if job is not None else None
            if job is None or rest != job.file_path or data_path is None:
                return _Refusal(404, _no_such_key(path))
            truncate = self._truncate_left > 0 and os.path.getsize(data_path) > 0
            if truncate:
                self._truncate_left -= 1
            return _Grant(data_path, truncate)


# --------------------------------------------------------------------------- HTTP layer


_Server = EmulatorServer[WeChatEmulator]


_RANGE_RE = re.compile(r"bytes=([0-9]*)-([0-9]*)")
_UNSATISFIABLE = (-1, -1)


MAX_FORM_FIELD = 64 * 1024


class _FormReader:
    """A multipart/form-data body read as it arrives (never held whole): the small fields
    in memory, the ``file`` field written to disk."""

    def __init__(self, stream: Any, length: int, boundary: bytes) -> None:
        self._stream = stream
        self._left = length
        self._buffer = bytearray()
        self._delimiter = b"--" + boundary

    def _fill(self, wanted: int) -> None:
        while len(self._buffer) < wanted and self._left > 0:
            data = self._stream.read(min(CHUNK_SIZE, self._left))
            if not data:
                raise ValueError("the body ended before its Content-Length")
            self._left -= len(data)
            self._buffer += data

    def drain(self) -> None:
        self._buffer.clear()
        while self._left > 0:
            data = self._stream.read(min(CHUNK_SIZE, self._left))
            if not data:
                return
            self._left -= len(data)

    def _until(self, marker: bytes, sink: Callable[[bytes], object], limit: int | None) -> None:
        """Hand `sink` everything up to `marker` and drop the marker."""
        given = 0
        while True:
            self._fill(len(marker) + CHUNK_SIZE)
            at = self._buffer.find(marker)
            end = at if at >= 0 else max(0, len(self._buffer) - len(marker) + 1)
            if end:
                given += end
                if limit is not None and given > limit:
                    raise ValueError("a form field is too long")
                sink(bytes(self._buffer[:end]))
                del self._buffer[:end]
            if at >= 0:
                del self._buffer[: len(marker)]
                return
            if self._left == 0:
                raise ValueError("a form part has no closing boundary")

    def parse(self, file_path: str) -> tuple[dict[str, str], bool]:
        """The text fields, and whether a ``file`` field was written to `file_path`."""
        fields: dict[str, str] = {}
        got_file = False
        self._until(self._delimiter, lambda _: None, MAX_FORM_FIELD)
        while True:
            self._fill(2)
            ending = bytes(self._buffer[:2])
            del self._buffer[:2]
            if ending == b"--":
                self.drain()
                return fields, got_file
            if ending != b"\r\n":
                raise ValueError("malformed boundary line")
            head = bytearray()
            self._until(b"\r\n\r\n", head.extend, MAX_FORM_FIELD)
            disposition = next((line for line in head.decode("utf-8").split("\r\n")
                                if line.lower().startswith("content-disposition:")), "")
            match = re.search(r'\bname="([^"]*)"', disposition)
            if match is None:
                raise ValueError("a form part has no name")
            closing = b"\r\n" + self._delimiter
            if match.group(1) == "file":
                with open(file_path, "wb") as out:
                    self._until(closing, out.write, None)
                got_file = True
            else:
                value = bytearray()
                self._until(closing, value.extend, MAX_FORM_FIELD)
                fields[match.group(1)] = value.decode("utf-8")


class _Handler(DispatchHandler):
    server_version = "wechat-emulator"
    server: _Server

    def _dispatch(self, method: str) -> None:
        split = urlsplit(self.path)
        params = parse_qs(split.query, keep_blank_values=True)
        if method == "POST" and split.path.startswith((COS_PREFIX, REDIRECTED_PREFIX)):
            self._upload(split.path, split.query)
            return
        try:
            body = self._read_body()
        except ValueError:
            self.close_connection = True
            self._send(400, b"bad request", "text/plain")
            return
        emulator = self.server.emulator
        if split.path.startswith(FILES_PREFIX):
            if method != "GET":
                emulator._count(FILES_CALL_KEY)
                xml = _cos_error_xml(
                    "MethodNotAllowed", "The specified method is not allowed.", split.path
                )
                self._send(405, xml, "application/xml")
                return
            self._download(unquote(split.path), params)
            return
        try:
            status, payload = emulator._answer_api(method, split.path, params, body)
        except Exception:
            status, payload = 500, {"errcode": -1, "errmsg": "system error"}
        if emulator._answer_lost(split.path):
            self.close_connection = True  # done, but the caller never hears of it
            return
        self._send(status, json_bytes(payload), JSON_CONTENT_TYPE)

    def _upload(self, raw_path: str, query: str) -> None:
        """A COS-style form upload (PostObject) into the env's storage: 204 when stored."""
        emulator = self.server.emulator
        path = unquote(raw_path)
        if path.startswith(REDIRECTED_PREFIX):
            emulator._count(REDIRECTED_PREFIX.rstrip("/"))
        else:
            emulator._count(COS_PREFIX.rstrip("/"))
            emulator._record_upload_request(path, query, {k.lower(): v for k, v in self.headers.items()})
        length_header = self.headers.get("Content-Length")
        if length_header is None or not length_header.isdigit():
            self.close_connection = True
            self._send(411, _cos_error_xml("MissingContentLength", "Content-Length is required", path),
                       "application/xml")
            return
        match = re.search(r"boundary=\"?([^\";]+)\"?", self.headers.get("Content-Type") or "")
        reader = _FormReader(self.rfile, int(length_header), (match.group(1) if match else "").encode())
        if emulator.redirect_uploads and not path.startswith(REDIRECTED_PREFIX):
            reader.drain()
            self._send(307, b"", "application/xml",
                       {"Location": f"{emulator.base_url}{REDIRECTED_PREFIX}{path[len(COS_PREFIX):]}"})
            return
        if match is None or path.startswith(REDIRECTED_PREFIX):
            reader.drain()
            self._send(400, _cos_error_xml("MalformedPOSTRequest", "not a form upload", path),
                       "application/xml")
            return
        assert emulator._tmpdir is not None
        spooled = os.path.join(emulator._tmpdir, f"upload-{secrets.token_hex(8)}")
        try:
            fields, got_file = reader.parse(spooled)
        except (ValueError, UnicodeDecodeError) as exc:
            self.close_connection = True
            with contextlib.suppress(OSError):
                os.remove(spooled)
            self._send(400, _cos_error_xml("MalformedPOSTRequest", str(exc), path), "application/xml")
            return
        decision = emulator._check_upload(path, fields) if got_file else _Refusal(
            400, _cos_error_xml("MalformedPOSTRequest", "no file field", path))
        if isinstance(decision, _Refusal):
            with contextlib.suppress(OSError):
                os.remove(spooled)
            self._send(decision.status, decision.body, "application/xml")
            return
        emulator._store_upload(decision, spooled)
        self._send(204, b"", "application/xml", {"x-cos-request-id": secrets.token_hex(16)})

    def _read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            parts: list[bytes] = []
            total = 0
            while True:
                size_line = self.rfile.readline(1024).split(b";", 1)[0].strip()
                size = int(size_line, 16)
                if size == 0:
                    while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(parts)
                total += size
                if total > MAX_BODY:
                    raise ValueError("body too large")
                parts.append(self.rfile.read(size))
                self.rfile.readline(1024)
        length = int(self.headers.get("Content-Length") or 0)
        if length < 0 or length > MAX_BODY:
            raise ValueError("bad Content-Length")
        return self.rfile.read(length) if length else b""

    def _download(self, path: str, params: dict[str, list[str]]) -> None:
        decision = self.server.emulator._authorize_download(path, params)
        if isinstance(decision, _Refusal):
            self.server.emulator._record_download(decision.status)
            self._send(decision.status, decision.body, "application/xml")
            return
        try:
            self._stream(decision.file_path, decision.truncate)
        except FileNotFoundError:
            self.server.emulator._record_download(404)
            self._send(404, _no_such_key(path), "application/xml")

    def _stream(self, file_path: str, truncate: bool) -> None:
        with open(file_path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            start, end, status = 0, size - 1, 200
            requested = self._parse_range(self.headers.get("Range"), size)
            if requested == _UNSATISFIABLE:
                self.server.emulator._record_download(416)
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            if requested is not None:
                start, end = requested
                status = 206
            length = max(0, end - start + 1)
            self.server.emulator._record_download(status)
            self.send_response(status)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(length))
            self.send_header("Accept-Ranges", "bytes")
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
            self.send_header("x-cos-request-id", secrets.token_hex(16))
            self.end_headers()
            to_send = length // 2 if truncate else length
            handle.seek(start)
            try:
                while to_send > 0:
                    chunk = handle.read(min(CHUNK_SIZE, to_send))
                    if not chunk:
                        break
                    self.wfile.write(chunk)
                    to_send -= len(chunk)
                self.wfile.flush()
            except (ConnectionError, TimeoutError):
                self.close_connection = True
                return
        if truncate or to_send > 0:
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)

    @staticmethod
    def _parse_range(header: str | None, size: int) -> tuple[int, int] | None:
        if not header:
            return None
        match = _RANGE_RE.fullmatch(header.strip())
        if match is None or (not match.group(1) and not match.group(2)):
            return None  # not a single byte range: ignore it, like many servers do
        first, last = match.group(1), match.group(2)
        if first:
            start = int(first)
            end = min(int(last), size - 1) if last else size - 1
            if start >= size or (last and int(last) < start):
                return _UNSATISFIABLE
            return start, end
        suffix = int(last)
        if suffix == 0 or size == 0:
            return _UNSATISFIABLE
        return max(0, size - suffix), size - 1


# --------------------------------------------------------------------------- command line


def _split_pair(value: str, what: str) -> tuple[str, str]:
    first, sep, second = value.partition(":")
    if not sep or not first or not second:
        raise argparse.ArgumentTypeError(f"expected {what}, got {value!r}")
    return first, second


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m devkit.emulators.wechat",
        description="Run the WeChat CloudBase API emulator until killed.",
    )
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: any)")
    parser.add_argument("--app", action="append", default=[], metavar="APPID:SECRET")
    parser.add_argument(
        "--disabled-app",
        action="append",
        default=[],
        metavar="APPID:SECRET",
        help="an app without cloud development (answers 85088)",
    )
    parser.add_argument("--env", action="append", default=[], metavar="APPID:ENV")
    parser.add_argument(
        "--jsonl",
        action="append",
        default=[],
        metavar="ENV:NAME:PATH:COUNT",
        help="a collection kept on disk as JSON Lines",
    )
    parser.add_argument(
        "--docs",
        action="append",
        default=[],
        metavar="ENV:NAME:PATH",
        help="a collection loaded into memory from a JSON Lines file",
    )
    parser.add_argument("--polls-until-ready", type=int, default=2)
    parser.add_argument("--token-ttl", type=int, default=7200)
    parser.add_argument("--link-ttl", type=int, default=3600)
    parser.add_argument("--latency-ms", type=float, default=0.0,
                        help="milliseconds every API call takes before it is answered")
    parser.add_argument("--export-concurrency-limit", type=int, default=None,
                        help="answer -501004 to exports beyond this many running per env")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    emulator = WeChatEmulator(
        polls_until_ready=args.polls_until_ready,
        token_ttl=args.token_ttl,
        link_ttl=args.link_ttl,
        port=args.port,
    )
    emulator.export_concurrency_limit = args.export_concurrency_limit
    emulator.latency = args.latency_ms / 1000
    for spec in args.app:
        emulator.add_app(*_split_pair(spec, "APPID:SECRET"))
    for spec in args.disabled_app:
        emulator.add_app(*_split_pair(spec, "APPID:SECRET"), tcb_enabled=False)
    for spec in args.env:
        emulator.add_env(*_split_pair(spec, "APPID:ENV"))
    for spec in args.jsonl:
        head, _, count = spec.rpartition(":")
        env, name, path = [*head.split(":", 2), "", "", ""][:3]
        if not (env and name and path and count.isdigit()):
            raise SystemExit(f"--jsonl expects ENV:NAME:PATH:COUNT, got {spec!r}")
        emulator.add_collection_file(env, name, path, int(count))
    for spec in args.docs:
        env, name, path = ([*spec.split(":", 2), "", "", ""])[:3]
        if not (env and name and path):
            raise SystemExit(f"--docs expects ENV:NAME:PATH, got {spec!r}")
        emulator.add_collection(env, name, list(_iter_jsonl_file(path)))

    return serve_until_terminated(emulator)


if __name__ == "__main__":
    sys.exit(main())
