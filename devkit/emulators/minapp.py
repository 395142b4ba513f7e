"""Local emulator of the MinApp (知晓云) OpenAPI calls a table backup needs.

A real HTTP server (stdlib ``ThreadingHTTPServer`` in a background thread, bound to
127.0.0.1) answering like ``https://cloud.minapp.com``:

- ``POST /api/oauth2/hydrogen/openapi/authorize/`` (JSON ``client_id``, ``client_secret``):
  sets a session cookie and redirects (302) to ``GET /api/oauth2/authorize/``, which
  answers ``{code, expires_in}`` only to a client that kept the cookie;
- ``POST /api/oauth2/access_token/`` (multipart/form-data ``client_id``, ``client_secret``,
  ``code``, ``grant_type=authorization_code``): ``{access_token, token_type, expires_in,
  refresh_token, scope}``; a code works once;
- ``POST /oserve/v1.5/table/:table_id/export/`` → 201 ``{status: ok, job_id}``; 400 for a
  second job on the table within ``job_window`` seconds, for more than
  ``max_export_rows`` rows, and for malformed options; 404 for an unknown table;
- ``GET /oserve/v1.5/table/:table_id/export/:job_id/``: ``pending`` → ``ready`` →
  ``finish`` with a ``download_url``; 404 for a job it does not know; 401/403 when
  reading job status is not enabled (``deny_status_access``);
- ``GET /oserve/v1.5/table/:table_id/export/``: the table's jobs, newest first, with
  ``meta`` (``limit``/``offset`` paging);
- ``GET /oserve/v2.4/table/:table_id/record/``: records with ``where`` (JSON),
  ``order_by``, ``limit`` (≤ 1000), ``offset``, ``keys``, ``return_total_count``;
- ``GET /_files/:job_id/:file_name?e=EXPIRY&sign=SIG``: the export file, a signed link
  that expires after ``link_ttl`` seconds (403 then, like a CDN);
- ``GET /oserve/v1.8/table/``: the app's tables (``?name=`` an exact name), with their
  schema and permissions; ``GET /oserve/v1.8/table/:table_id/``: one table (404 unknown);
  ``POST /oserve/v1.8/table/`` (JSON ``name``, ``schema``, ``row_read_perm``,
  ``row_write_perm``, ``write_perm``) → 201 the new table; 400 for a name taken or invalid
  data;
- ``POST /oserve/v1/table/:table_id/import/`` (multipart/form-data, the file in ``file``,
  read as a stream, ``Content-Length`` or chunked) → 201 ``{status: ok}``, 400 for an
  invalid file; the records appear ``import_delay`` seconds later, and what MinApp would
  e-mail is kept (``import_reports``). See ``devkit.emulators.minapp_import`` for how a
  file is read.

Every ``/oserve`` call needs ``Authorization: Bearer <token>``; the optional
``X-Hydrogen-Env-ID`` header selects a test environment (``add_env``). Errors are
HTTP status codes with a small JSON body (``{"error_msg": ...}``; OAuth calls answer
``{"error": ..., "error_description": ...}``).

Export files: JSON is one record per line (JSON Lines); CSV has a header row (``id``
first, then every other field in order of first appearance, or
``csv_customize_headers``) and one row per record. ``mode: all`` exports every record;
``mode: part`` applies ``where``. ``include_keys``/``exclude_keys`` select fields,
``order_by`` sorts; ``timestamp_convert_keys`` is accepted and checked, not applied.

Tests drive it in-process through :class:`MinAppEmulator`; a separate process can be
started with ``python -m devkit.emulators.minapp --port 8082 --client ID:SECRET
--table 1001:orders.jsonl``.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import csv
import email.parser
import email.policy
import hashlib
import hmac
import io
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
from urllib.parse import parse_qs, quote, unquote, urlencode, urlsplit

from devkit.emulators.http_base import (
    DispatchHandler,
    EmulatorServer,
    LocalEmulator,
    json_bytes,
    serve_until_terminated,
)
from devkit.emulators.minapp_import import (
    FIELD_TYPES,
    ImportFileError,
    MultipartError,
    check_import_file,
    infer_schema,
    is_builtin,
    read_import_records,
    receive_multipart,
    valid_name,
)

__all__ = [
    "DEFAULT_ENV",
    "MinAppEmulator",
    "WhereError",
    "main",
    "matches_where",
    "render_export",
    "sort_records",
]

DEFAULT_ENV = ""  # the production environment: no X-Hydrogen-Env-ID header
AUTHORIZE = "/api/oauth2/hydrogen/openapi/authorize/"
AUTHORIZE_REDIRECT = "/api/oauth2/authorize/"
ACCESS_TOKEN = "/api/oauth2/access_token/"
FILES_PREFIX = "/_files/"
CDN_PREFIX = "/_cdn/"  # a hop that redirects (302) to the file, like a CDN in front of it
SESSION_COOKIE = "sessionid"
ENV_HEADER = "X-Hydrogen-Env-ID"
MAX_BODY = 16 * 1024 * 1024
MAX_RECORD_LIMIT = 1000
CHUNK_SIZE = 1024 * 1024
JSON_CONTENT_TYPE = "application/json; charset=utf-8"
BASE_CREATED_AT = 1_700_000_000

_EXPORT_RE = re.compile(r"^/oserve/v1\.5/table/([^/]+)/export/$")
_JOB_RE = re.compile(r"^/oserve/v1\.5/table/([^/]+)/export/([^/]+)/$")
_RECORDS_RE = re.compile(r"^/oserve/v2\.4/table/([^/]+)/record/$")
_TABLE_RE = re.compile(r"^/oserve/v1\.8/table/([^/]+)/$")
IMPORT_RE = re.compile(r"^/oserve/v1/table/([^/]+)/import/$")
DEFAULT_PERM = ["user:*"]

# Names under which `calls` counts requests and faults are injected.
ROUTES = ("authorize", "authorize_redirect", "access_token", "export", "job", "jobs",
          "records", "download", "tables", "table", "create_table", "import")
_TABLES = "/oserve/v1.8/table/"


# --------------------------------------------------------------------------- errors


class _HttpError(Exception):
    """An answer other than success: an HTTP status and a JSON body."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(f"{status} {body}")
        self.status = status
        self.body = body


def _error(status: int, message: str) -> _HttpError:
    return _HttpError(status, {"error_msg": message})


def _oauth_error(status: int, error: str, description: str) -> _HttpError:
    return _HttpError(status, {"error": error, "error_description": description})


# --------------------------------------------------------------------------- queries


class WhereError(ValueError):
    """A ``where`` the emulator (and, we assume, the platform) cannot evaluate."""


_MISSING = object()
_COMPARISONS: dict[str, Callable[[Any, Any], bool]] = {
    "$lt": lambda a, b: bool(a < b),
    "$lte": lambda a, b: bool(a <= b),
    "$gt": lambda a, b: bool(a > b),
    "$gte": lambda a, b: bool(a >= b),
}


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _comparable(a: Any, b: Any) -> bool:
    return (_number(a) and _number(b)) or (isinstance(a, str) and isinstance(b, str))


def _equal(a: Any, b: Any) -> bool:
    if _number(a) and _number(b):
        return bool(a == b)
    return type(a) is type(b) and bool(a == b)


def _apply_operator(op: str, value: Any, arg: Any) -> bool:
    present = value is not _MISSING
    if op in _COMPARISONS:
        if isinstance(arg, (dict, list)) or arg is None:
            raise WhereError(f"{op} needs a number or a string")
        return present and _comparable(value, arg) and _COMPARISONS[op](value, arg)
    if op == "$eq":
        return present and _equal(value, arg)
    if op == "$ne":
        return not (present and _equal(value, arg))
    if op in ("$in", "$nin"):
        if not isinstance(arg, list):
            raise WhereError(f"{op} needs a list")
        found = present and any(_equal(value, item) for item in arg)
        return found if op == "$in" else not found
    if op == "$exists":
        if not isinstance(arg, bool):
            raise WhereError("$exists needs true or false")
        return present == arg
    if op == "$isnull":
        if not isinstance(arg, bool):
            raise WhereError("$isnull needs true or false")
        return (not present or value is None) == arg
    if op == "$contains":
        if isinstance(value, str) and isinstance(arg, str):
            return arg in value
        if isinstance(value, list):
            return any(_equal(item, arg) for item in value)
        return False
    raise WhereError(f"unsupported operator {op}")


def matches_where(record: dict[str, Any], where: dict[str, Any]) -> bool:
    """MinApp query semantics for the operators a backup uses: ``{field: value}``,
    ``{field: {"$gte": v, ...}}``, ``$and``/``$or`` lists; anything else is a WhereError."""
    if not isinstance(where, dict):
        raise WhereError("where must be a JSON object")
    for key, condition in where.items():
        if key in ("$and", "$or"):
            if not isinstance(condition, list) or not condition:
                raise WhereError(f"{key} needs a non-empty list of conditions")
            results = [matches_where(record, part) for part in condition]
            if not (all(results) if key == "$and" else any(results)):
                return False
            continue
        if key.startswith("$"):
            raise WhereError(f"unsupported operator {key} at the top level")
        value = record.get(key, _MISSING)
        if isinstance(condition, dict) and condition and all(k.startswith("$") for k in condition):
            if not all(_apply_operator(op, value, arg) for op, arg in condition.items()):
                return False
        elif not (value is not _MISSING and _equal(value, condition)):
            return False
    return True


def _rank(value: Any) -> tuple[int, Any]:
    """Ascending order: missing and null first, then numbers, strings, booleans, others."""
    if value is _MISSING or value is None:
        return (0, 0)
    if _number(value):
        return (1, value)
    if isinstance(value, str):
        return (2, value)
    if isinstance(value, bool):
        return (3, value)
    return (4, json.dumps(value, sort_keys=True))


def sort_records(records: list[dict[str, Any]], order_by: Iterable[str]) -> list[dict[str, Any]]:
    """Stable sort by fields, ``-field`` for descending, last key first."""
    ordered = list(records)
    for spec in reversed([s for s in order_by if s]):
        ordered.sort(key=_sort_key(spec.lstrip("-")), reverse=spec.startswith("-"))
    return ordered


def _sort_key(name: str) -> Callable[[dict[str, Any]], tuple[int, Any]]:
    return lambda record: _rank(record.get(name, _MISSING))


# --------------------------------------------------------------------------- export files


def _jsonl_line(record: dict[str, Any]) -> str:
    return json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n"


def _csv_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def csv_columns(records: Iterable[dict[str, Any]]) -> list[str]:
    seen: dict[str, None] = {}
    for record in records:
        seen.update(dict.fromkeys(record))
    columns = list(seen)
    if "id" in seen:
        columns.remove("id")
        columns.insert(0, "id")
    return columns


def _write_export(out: io.TextIOBase, records: list[dict[str, Any]], file_type: str,
                  headers: list[str] | None = None, json_array: bool = False) -> int:
    if file_type == "json" and json_array:
        out.write(json.dumps(records, ensure_ascii=False))
        return len(records)
    if file_type == "json":
        for record in records:
            out.write(_jsonl_line(record))
        return len(records)
    columns = csv_columns(records)
    if not columns:
        return 0
    writer = csv.writer(out, quoting=csv.QUOTE_MINIMAL, lineterminator="\n")
    writer.writerow(headers or columns)
    for record in records:
        writer.writerow([_csv_cell(record.get(c)) for c in columns])
    return len(records)


def render_export(records: Iterable[dict[str, Any]], file_type: str) -> bytes:
    """The exact bytes an ``all`` export of ``records`` produces (json or csv)."""
    buffer = io.StringIO(newline="")
    _write_export(buffer, list(records), file_type)
    return buffer.getvalue().encode("utf-8")


def _project(record: dict[str, Any], include: list[str] | None,
             exclude: list[str] | None) -> dict[str, Any]:
    if include:
        return {k: v for k, v in record.items() if k in include}
    if exclude:
        return {k: v for k, v in record.items() if k not in exclude}
    return record


# --------------------------------------------------------------------------- state


@dataclass
class _Client:
    client_id: str
    secret: str


@dataclass
class _Token:
    value: str
    client_id: str
    expires_at: float
    revoked: bool = False


@dataclass
class _Table:
    table_id: str
    env: str
    records: list[dict[str, Any]]
    name: str = ""
    schema: dict[str, Any] = field(default_factory=lambda: {"fields": []})
    write_perm: list[str] = field(default_factory=lambda: list(DEFAULT_PERM))
    row_read_perm: list[str] = field(default_factory=lambda: list(DEFAULT_PERM))
    row_write_perm: list[str] = field(default_factory=lambda: list(DEFAULT_PERM))
    created_at: int = BASE_CREATED_AT

    def info(self) -> dict[str, Any]:
        """The table as table.md's list and detail answers show it."""
        return {"id": int(self.table_id) if self.table_id.isdigit() else self.table_id,
                "name": self.name, "protected_fields": None,
                "schema": json.loads(json.dumps(self.schema)), "write_perm": list(self.write_perm),
                "default_row_perm": {"_read_perm": list(self.row_read_perm),
                                     "_write_perm": list(self.row_write_perm)},
                "created_at": self.created_at, "updated_at": self.created_at}


@dataclass
class _Import:
    """An import task MinApp accepted; applied at `due_at`."""

    table: _Table
    path: str
    file_name: str
    file_type: str
    due_at: float
    fail: str | None = None  # fail as a whole with this message (fail_imports)


@dataclass
class _Job:
    job_id: str
    table: _Table
    client_id: str
    file_type: str
    mode: str
    created_at: float
    polls_until_ready: int
    stalled: bool
    file_name: str
    options: dict[str, Any]
    polls: int = 0
    status: str = "pending"
    data_path: str | None = None
    records: int = 0
    forgotten: bool = False
    updated_at: float = 0.0


@dataclass
class _Injection:
    status: int
    body: dict[str, Any]
    then_create: bool = False  # for "export": create the job, then answer the error
    raw: bytes | None = None  # an answer that is not JSON (e.g. a gateway's HTML page)
    headers: dict[str, str] = field(default_factory=dict)  # e.g. Retry-After with a 429


def _random_id(length: int = 32) -> str:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
    return "".join(secrets.choice(alphabet) for _ in range(length))


def _record_id(table_id: str, index: int) -> str:
    return hashlib.sha256(f"{table_id}/{index}".encode()).hexdigest()[:24]


# --------------------------------------------------------------------------- the emulator


class MinAppEmulator(LocalEmulator):
    """The emulated platform: clients, environments, tables, tokens and export jobs.

    Thread-safe. ``polls_until_ready``, ``token_ttl``, ``code_ttl``, ``link_ttl``,
    ``job_window`` (seconds between two export jobs of one table) and
    ``max_export_rows`` are plain attributes and may be changed at any time.

    - An export job answers ``pending`` to its first status query, ``ready`` to the next
      ``polls_until_ready``, then ``finish`` with a download link valid ``link_ttl``
      seconds (a fresh one on every query); a stalled job stays ``ready`` forever.
    - ``calls`` counts requests per route name (see ``ROUTES``).
    """

    thread_name = "minapp-emulator"
    tmp_prefix = "minapp-emulator-"

    def __init__(
        self,
        *,
        polls_until_ready: int = 2,
        token_ttl: int = 7200,
        code_ttl: int = 600,
        link_ttl: int = 3600,
        job_window: float = 60.0,
        max_export_rows: int = 1_000_000,
        port: int = 0,
    ) -> None:
        self.polls_until_ready = polls_until_ready
        self.token_ttl = token_ttl
        self.code_ttl = code_ttl
        self.link_ttl = link_ttl
        self.job_window = job_window
        self.max_export_rows = max_export_rows
        # The docs do not show the JSON layout; JSON Lines is assumed. True writes one JSON
        # array instead, to prove a wrong assumption stops a backup rather than miscounts it.
        self.json_array_exports = False
        self.redirect_downloads = False  # True: download links go through a 302 first
        # An import task runs this long after MinApp accepted its file (a scheduled task).
        self.import_delay = 0.2
        self.port = port
        self.base_url = ""
        self.link_base: str | None = None  # where download_url points; None: this emulator
        self.calls: collections.Counter[str] = collections.Counter()
        self.download_statuses: list[int] = []
        self.download_authorization: list[str | None] = []
        self._lock = threading.RLock()
        self._clients: dict[str, _Client] = {}
        self._envs: set[str] = {DEFAULT_ENV}
        self._tables: dict[tuple[str, str], _Table] = {}
        self._tokens: dict[str, _Token] = {}
        self._sessions: dict[str, tuple[str, str]] = {}  # session id -> (client id, state)
        self._codes: dict[str, tuple[str, float]] = {}  # code -> (client id, expires at)
        self._issued_codes: list[str] = []
        self._refresh_tokens: list[str] = []
        self._jobs: dict[str, _Job] = {}
        self._last_job_at: dict[tuple[str, str], float] = {}
        self._injections: dict[str, collections.deque[_Injection]] = {}
        self._stalled: set[tuple[str, str]] = set()
        self._status_denied: int | None = None
        self._odd_statuses: collections.deque[str] = collections.deque()
        self._truncate_left = 0
        self._expire_links_left = 0
        self._sign_key = secrets.token_bytes(20)
        self._imports: list[_Import] = []
        self._import_reports: list[dict[str, Any]] = []
        self._fail_imports: collections.deque[str] = collections.deque()
        # (env, table) -> [record reads left before the change, records added, ids deleted]
        self._changes: dict[tuple[str, str], list[Any]] = {}

    # ----------------------------------------------------------------- lifecycle

    def _make_server(self, address: tuple[str, int]) -> _Server:
        return _Server(address, _Handler, self)

    # ----------------------------------------------------------------- data

    def add_client(self, client_id: str, client_secret: str) -> None:
        with self._lock:
            self._clients[client_id] = _Client(client_id, client_secret)

    def add_env(self, env_id: str) -> None:
        """A test environment, selected with the X-Hydrogen-Env-ID header."""
        with self._lock:
            self._envs.add(env_id)

    def add_table(self, table_id: int | str, records: list[dict[str, Any]], *,
                  env: str = DEFAULT_ENV, name: str | None = None,
                  schema: dict[str, Any] | None = None) -> None:
        """Create or replace a table. Records get MinApp's system fields when they lack
        them: a stable ``id``, ``created_at`` (three records per second, so the field has
        duplicates like a real table) and ``updated_at``. The schema is `schema`, or one
        inferred from the records (each field typed by its first non-null value)."""
        table = str(table_id)
        copied: list[dict[str, Any]] = json.loads(json.dumps(records))
        normalised = []
        for index, record in enumerate(copied):
            if not isinstance(record, dict):
                raise TypeError(f"record {index} is not a dict")
            created = record.get("created_at", BASE_CREATED_AT + index // 3)
            normalised.append({"id": _record_id(table, index), "created_at": created,
                               "updated_at": created, **record})
        with self._lock:
            if env not in self._envs:
                raise KeyError(f"unknown env {env!r}: call add_env first")
            self._tables[(env, table)] = _Table(
                table, env, normalised, name or f"table_{table}",
                json.loads(json.dumps(schema)) if schema is not None else infer_schema(normalised))

    def records(self, table_id: int | str, *, env: str = DEFAULT_ENV) -> list[dict[str, Any]]:
        """A copy of the table's records, as an ``all`` export holds them (imports that
        are due applied first)."""
        with self._lock:
            self._apply_due_imports()
            table = self._tables[(env, str(table_id))]
            copy: list[dict[str, Any]] = json.loads(json.dumps(table.records))
            return copy

    def wipe_table(self, table_id: int | str, *, env: str = DEFAULT_ENV) -> int:
        """Delete every record of the table (the table and its schema stay); how many."""
        with self._lock:
            self._apply_due_imports()
            table = self._tables[(env, str(table_id))]
            count = len(table.records)
            table.records = []
            return count

    def table_id(self, name: str, *, env: str = DEFAULT_ENV) -> str:
        """The id of the table called `name` (KeyError when none is)."""
        with self._lock:
            for (table_env, table_id), table in self._tables.items():
                if table_env == env and table.name == name:
                    return table_id
        raise KeyError(f"no table named {name!r} in env {env!r}")

    def table_info(self, table_id: int | str, *, env: str = DEFAULT_ENV) -> dict[str, Any]:
        """The table as the detail API answers: id, name, schema, permissions."""
        with self._lock:
            return self._tables[(env, str(table_id))].info()

    def pending_imports(self) -> int:
        """Import tasks accepted and not applied yet."""
        with self._lock:
            self._apply_due_imports()
            return len(self._imports)

    def settle_imports(self) -> None:
        """Apply every accepted import now, due or not."""
        with self._lock:
            self._apply_due_imports(everything=True)

    def import_reports(self) -> list[dict[str, Any]]:
        """What MinApp would e-mail for each applied import, oldest first: ``table``,
        ``env``, ``file_name``, ``file_type``, ``status`` (done | failed), ``imported``,
        ``skipped`` (the reasons), ``dropped_values``, ``message``."""
        with self._lock:
            self._apply_due_imports()
            copy: list[dict[str, Any]] = json.loads(json.dumps(self._import_reports))
            return copy

    def fail_imports(self, times: int = 1, message: str = "导入失败") -> None:
        """The next ``times`` accepted imports fail as a whole when they run (nothing is
        written; the report says `message`)."""
        with self._lock:
            self._fail_imports.extend([message] * times)

    def export_jobs(self, table_id: int | str | None = None) -> list[dict[str, Any]]:
        """Every export job created so far (forgotten ones too), oldest first."""
        with self._lock:
            return [
                {"job_id": j.job_id, "table": j.table.table_id, "env": j.table.env,
                 "client_id": j.client_id, "file_type": j.file_type, "mode": j.mode,
                 "status": j.status, "polls": j.polls, "records": j.records,
                 "options": j.options, "forgotten": j.forgotten, "created_at": j.created_at}
                for j in self._jobs.values()
                if table_id is None or j.table.table_id == str(table_id)
            ]

    def create_console_job(self, table_id: int | str, *, env: str = DEFAULT_ENV) -> str:
        """An export started by someone else (the console, another tool) right now: it
        takes the table's one job per ``job_window``."""
        with self._lock:
            table = self._table(env, str(table_id))
            job = self._new_job(table, "console", "json", "all", {})
        self._materialise(job, table.records)
        return job.job_id

    # ----------------------------------------------------------------- faults

    def inject(self, route: str, status: int, times: int = 1,
               body: dict[str, Any] | None = None,
               headers: dict[str, str] | None = None) -> None:
        """The next ``times`` requests to ``route`` (see ``ROUTES``) answer ``status``
        (with ``headers``, e.g. ``Retry-After``)."""
        if route not in ROUTES:
            raise ValueError(f"unknown route {route!r}; one of {', '.join(ROUTES)}")
        with self._lock:
            queue = self._injections.setdefault(route, collections.deque())
            answer = body or {"error_msg": "injected error"}
            queue.extend(_Injection(status, answer, headers=dict(headers or {}))
                         for _ in range(times))

    def lose_create_answers(self, times: int = 1, status: int = 502,
                            raw: bytes | None = None) -> None:
        """The next ``times`` export creations create the job, then answer ``status``,
        like a gateway that dropped the platform's answer; with ``raw``, that body (not
        JSON) instead, e.g. a 201 whose JSON a proxy replaced."""
        with self._lock:
            queue = self._injections.setdefault("export", collections.deque())
            queue.extend(_Injection(status, {"error_msg": "Bad Gateway"}, then_create=True,
                                    raw=raw)
                         for _ in range(times))

    def stall_exports(self, table_id: int | str, *, env: str = DEFAULT_ENV) -> None:
        """Jobs created for the table from now on never finish."""
        with self._lock:
            self._stalled.add((env, str(table_id)))

    def forget_jobs(self) -> None:
        """The platform loses every job it has: status queries answer 404."""
        with self._lock:
            for job in self._jobs.values():
                job.forgotten = True

    def answer_status(self, status: str, times: int = 1) -> None:
        """The next ``times`` reads of an export job's status answer ``status`` (one the
        docs do not list, as a changed API might), the job otherwise unchanged."""
        with self._lock:
            self._odd_statuses.extend(status for _ in range(times))

    def deny_status_access(self, status: int = 401) -> None:
        """Reading job status through the API is not enabled in the console."""
        with self._lock:
            self._status_denied = status

    def allow_status_access(self) -> None:
        with self._lock:
            self._status_denied = None

    def expire_tokens(self) -> None:
        with self._lock:
            for token in self._tokens.values():
                token.expires_at = 0.0

    def issued_tokens(self) -> list[str]:
        """Every access token, refresh token and code handed out (tests look for leaks)."""
        with self._lock:
            return [*self._tokens, *self._refresh_tokens, *self._issued_codes]

    def expire_next_links(self, times: int = 1) -> None:
        """The next ``times`` downloads with a valid link are refused as expired (403), as
        when a link runs out between the status query and the download."""
        with self._lock:
            self._expire_links_left += times

    def change_while_read(self, table_id: int | str, *, after_reads: int = 1,
                          add: list[dict[str, Any]] | None = None, delete: int = 0,
                          env: str = DEFAULT_ENV) -> None:
        """Other users write to the table while a backup reads it: once the record API
        has answered ``after_reads`` reads of it, ``add`` records are appended (with
        system fields, as ``add_table`` gives them) and the first ``delete`` removed."""
        with self._lock:
            self._changes[(env, str(table_id))] = [after_reads, list(add or []), delete]

    def _apply_change(self, table: _Table) -> None:
        """One more record read of `table`: the change waiting for it is made when due."""
        change = self._changes.get((table.env, table.table_id))
        if change is None:
            return
        change[0] -= 1
        if change[0] > 0:
            return
        del self._changes[(table.env, table.table_id)]
        added, delete = change[1], change[2]
        for record in json.loads(json.dumps(added)):
            created = record.get("created_at", int(time.time()))
            table.records.append({"id": secrets.token_hex(12), "created_at": created,
                                  "updated_at": created, **record})
        del table.records[:delete]

    def truncate_downloads(self, times: int = 1) -> None:
        with self._lock:
            self._truncate_left += times

    # ----------------------------------------------------------------- helpers

    def _count(self, route: str) -> None:
        with self._lock:
            self.calls[route] += 1

    def _take_injection(self, route: str) -> _Injection | None:
        with self._lock:
            queue = self._injections.get(route)
            return queue.popleft() if queue else None

    def _table(self, env: str, table_id: str) -> _Table:
        table = self._tables.get((env, table_id))
        if table is None:
            raise _error(404, f"table {table_id} not found")
        return table

    def _new_job(self, table: _Table, client_id: str, file_type: str, mode: str,
                 options: dict[str, Any]) -> _Job:
        now = time.time()
        job = _Job(
            job_id=_random_id(), table=table, client_id=client_id, file_type=file_type,
            mode=mode, created_at=now, updated_at=now,
            polls_until_ready=max(0, int(self.polls_until_ready)),
            stalled=(table.env, table.table_id) in self._stalled,
            file_name=f"table_{table.table_id}_{int(now)}_{secrets.token_hex(3)}.{file_type}",
            options=options,
        )
        self._jobs[job.job_id] = job
        self._last_job_at[(table.env, table.table_id)] = now
        return job

    def _materialise(self, job: _Job, records: list[dict[str, Any]]) -> None:
        assert self._tmpdir is not None
        path = os.path.join(self._tmpdir, f"{job.job_id}.{job.file_type}")
        with open(path, "w", encoding="utf-8", newline="") as out:
            count = _write_export(out, records, job.file_type,
                                  job.options.get("csv_customize_headers"), self.json_array_exports)
        with self._lock:
            job.data_path = path
            job.records = count

    def _sign(self, path: str, expires: int) -> str:
        return hmac.new(self._sign_key, f"{path}\n{expires}".encode(), hashlib.sha256).hexdigest()

    def _download_url(self, job: _Job) -> str:
        path = f"{FILES_PREFIX}{job.job_id}/{job.file_name}"
        expires = int(time.time() + self.link_ttl)
        signature = self._sign(path, expires)
        shown = CDN_PREFIX + path[len(FILES_PREFIX):] if self.redirect_downloads else path
        return f"{self.link_base or self.base_url}{quote(shown)}?{urlencode({'e': expires, 'sign': signature})}"

    # ----------------------------------------------------------------- OAuth

    def _authorize(self, body: bytes) -> tuple[int, dict[str, Any], dict[str, str]]:
        payload = _json_object(body)
        client_id, secret = payload.get("client_id"), payload.get("client_secret")
        with self._lock:
            client = self._clients.get(client_id) if isinstance(client_id, str) else None
            if client is None or not isinstance(secret, str) or not hmac.compare_digest(
                    client.secret, secret):
                raise _oauth_error(401, "invalid_client", "client_id or client_secret is wrong")
            session, state = secrets.token_hex(16), secrets.token_hex(8)
            self._sessions[session] = (client.client_id, state)
        query = urlencode({"client_id": client.client_id, "response_type": "code",
                           "state": state})
        return 302, {}, {
            "Location": f"{AUTHORIZE_REDIRECT}?{query}",
            "Set-Cookie": f"{SESSION_COOKIE}={session}; Path=/; HttpOnly; SameSite=Lax",
        }

    def _authorize_redirect(self, params: dict[str, list[str]],
                            cookies: dict[str, str]) -> dict[str, Any]:
        with self._lock:
            session = self._sessions.pop(cookies.get(SESSION_COOKIE, ""), None)
            if session is None:
                raise _oauth_error(401, "login_required",
                                   "no session: follow the redirect with the cookie it set")
            client_id, state = session
            if _first(params, "client_id") != client_id or _first(params, "state") != state:
                raise _oauth_error(400, "invalid_request", "client_id or state does not match")
            code = secrets.token_hex(16)
            self._codes[code] = (client_id, time.time() + self.code_ttl)
            self._issued_codes.append(code)
        return {"code": code, "expires_in": int(self.code_ttl)}

    def _access_token(self, content_type: str, body: bytes) -> dict[str, Any]:
        if not content_type.lower().startswith("multipart/form-data"):
            raise _oauth_error(400, "invalid_request", "send the fields as multipart/form-data")
        fields = _multipart_fields(content_type, body)
        if fields.get("grant_type") != "authorization_code":
            raise _oauth_error(400, "unsupported_grant_type", "grant_type must be authorization_code")
        with self._lock:
            client = self._clients.get(fields.get("client_id", ""))
            if client is None or not hmac.compare_digest(client.secret,
                                                         fields.get("client_secret", "")):
                raise _oauth_error(401, "invalid_client", "client_id or client_secret is wrong")
            grant = self._codes.pop(fields.get("code", ""), None)
            if grant is None or grant[0] != client.client_id or grant[1] < time.time():
                raise _oauth_error(400, "invalid_grant", "code is invalid, used or expired")
            token = _Token(secrets.token_hex(20), client.client_id, time.time() + self.token_ttl)
            self._tokens[token.value] = token
            refresh = secrets.token_hex(20)
            self._refresh_tokens.append(refresh)  # issued like the platform's; never accepted here
        return {"access_token": token.value, "token_type": "Bearer",
                "expires_in": int(self.token_ttl), "refresh_token": refresh,
                "scope": "read write"}

    def _bearer(self, headers: Any) -> _Token:
        value = str(headers.get("Authorization") or "")
        scheme, _, credential = value.partition(" ")
        with self._lock:
            token = self._tokens.get(credential.strip()) if scheme.lower() == "bearer" else None
            if token is None or token.revoked or token.expires_at <= time.time():
                raise _error(401, "Authentication credentials were not provided or are invalid.")
            return token

    def _env_of(self, headers: Any) -> str:
        env = str(headers.get(ENV_HEADER) or DEFAULT_ENV)
        with self._lock:
            if env not in self._envs:
                raise _error(400, f"invalid {ENV_HEADER}: {env}")
        return env

    # ----------------------------------------------------------------- data API

    def _create_export(self, token: _Token, env: str, table_id: str, body: bytes,
                       injected: _Injection | None) -> tuple[int, dict[str, Any] | bytes]:
        payload = _json_object(body)
        file_type = payload.get("file_type")
        if file_type not in ("json", "csv"):
            raise _error(400, "file_type must be csv or json")
        mode = payload.get("mode", "all")
        if mode not in ("all", "part"):
            raise _error(400, "mode must be all or part")
        options = _check_options(payload, file_type)
        with self._lock:
            table = self._table(env, table_id)
            last = self._last_job_at.get((env, table_id))
            if last is not None and time.time() - last < self.job_window:
                raise _error(400, "导出任务创建过于频繁,请 1 分钟后再试")
            try:
                selected = [r for r in table.records
                            if mode == "all" or matches_where(r, options.get("where") or {})]
            except WhereError as exc:
                raise _error(400, f"数据格式错误: where: {exc}") from None
            if len(selected) > self.max_export_rows:
                raise _error(400, f"导出数据量超过 {self.max_export_rows} 条")
            selected = sort_records(selected, options.get("order_by") or [])
            selected = [_project(r, options.get("include_keys"), options.get("exclude_keys"))
                        for r in selected]
            job = self._new_job(table, token.client_id, file_type, mode, options)
        self._materialise(job, selected)
        if injected is not None:
            return injected.status, injected.raw if injected.raw is not None else injected.body
        return 201, {"status": "ok", "job_id": job.job_id}

    def _job_info(self, job: _Job, status: str) -> dict[str, Any]:
        finished = status == "finish"
        return {
            "job_id": job.job_id, "status": status, "operation": "export",
            "file_name": job.file_name if finished else None, "file_type": job.file_type,
            "download_url": self._download_url(job) if finished else None,
            "created_at": int(job.created_at), "updated_at": int(job.updated_at),
        }

    def _job_status(self, env: str, table_id: str, job_id: str) -> dict[str, Any]:
        with self._lock:
            if self._status_denied is not None:
                raise _error(self._status_denied, "您没有权限通过 API 查询任务状态,请在控制台开启")
            self._table(env, table_id)
            job = self._jobs.get(job_id)
            if job is None or job.forgotten or job.table.table_id != table_id or job.table.env != env:
                raise _error(404, "Not found.")
            if self._odd_statuses:
                return self._job_info(job, self._odd_statuses.popleft())
            job.polls += 1
            if job.polls == 1:
                status = "pending"
            elif job.stalled or job.polls <= 1 + job.polls_until_ready or job.data_path is None:
                status = "ready"
            else:
                status = "finish"
            if status != job.status:
                job.status, job.updated_at = status, time.time()
            return self._job_info(job, status)

    def _job_list(self, env: str, table_id: str, params: dict[str, list[str]]) -> dict[str, Any]:
        limit = _int_param(params, "limit", 20, 1, 1000)
        offset = _int_param(params, "offset", 0, 0, None)
        with self._lock:
            if self._status_denied is not None:
                raise _error(self._status_denied, "您没有权限通过 API 查询任务状态,请在控制台开启")
            self._table(env, table_id)
            jobs = sorted((j for j in self._jobs.values() if not j.forgotten
                           and j.table.table_id == table_id and j.table.env == env),
                          key=lambda j: j.created_at, reverse=True)
            page = [self._job_info(j, j.status) for j in jobs[offset:offset + limit]]
        return {"meta": _meta(limit, offset, len(jobs)), "objects": page}

    def _table_list(self, env: str, params: dict[str, list[str]]) -> dict[str, Any]:
        """GET /oserve/v1.8/table/: the app's tables by id, paginated (default 20);
        ``name`` finds one by exact name (hydrogen-sdk-doc open-api/data/table.md)."""
        limit = _int_param(params, "limit", 20, 1, 1000)
        offset = _int_param(params, "offset", 0, 0, None)
        name = _first(params, "name")
        with self._lock:
            tables = sorted((t for (e, _), t in self._tables.items() if e == env),
                            key=lambda t: int(t.table_id) if t.table_id.isdigit() else 0)
            if name:
                tables = [t for t in tables if t.name == name]
            page = [t.info() for t in tables[offset:offset + limit]]
        return {"meta": _meta(limit, offset, len(tables)), "objects": page}

    def _table_detail(self, env: str, table_id: str) -> dict[str, Any]:
        with self._lock:
            return self._table(env, table_id).info()

    def _create_table(self, env: str, body: bytes) -> dict[str, Any]:
        """POST /oserve/v1.8/table/ (table.md 创建数据表): every parameter is required;
        400 for a name taken (表名已存在) or invalid data (不合法的数据)."""
        payload = _json_object(body)
        unknown = sorted(set(payload) - {"name", "schema", "row_read_perm", "row_write_perm",
                                         "write_perm"})
        if unknown:
            raise _error(400, f"不合法的数据: unknown parameter(s) {', '.join(unknown)}")
        name = payload.get("name")
        if not valid_name(name):
            raise _error(400, "不合法的数据: name must be a letter then letters, digits or _, "
                              "at most 32")
        perms = {}
        for key in ("row_read_perm", "row_write_perm", "write_perm"):
            value = payload.get(key)
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise _error(400, f"不合法的数据: {key} must be a list of strings")
            perms[key] = list(value)
        schema = payload.get("schema")
        fields = schema.get("fields") if isinstance(schema, dict) else None
        if not isinstance(fields, list):
            raise _error(400, "不合法的数据: schema must be {fields: [...]}")
        seen: set[str] = set()
        for entry in fields:
            if not isinstance(entry, dict) or not valid_name(entry.get("name")) \
                    or entry.get("type") not in FIELD_TYPES:
                raise _error(400, f"不合法的数据: field {entry!r} needs a valid name and type")
            field_name = str(entry["name"])
            if is_builtin(field_name) or field_name in seen:
                raise _error(400, f"不合法的数据: field {field_name!r} is built in or repeated")
            if entry["type"] == "array" and not isinstance(entry.get("items"), dict):
                raise _error(400, f"不合法的数据: array field {field_name!r} needs items")
            seen.add(field_name)
        with self._lock:
            if any(t.name == name for (e, _), t in self._tables.items() if e == env):
                raise _error(400, f"表名已存在: {name}")
            numbers = [int(t) for (_, t) in self._tables if t.isdigit()]
            table_id = str(max([1000, *numbers]) + 1)
            table = _Table(table_id, env, [], str(name), {"fields": json.loads(json.dumps(fields))},
                           perms["write_perm"], perms["row_read_perm"], perms["row_write_perm"],
                           int(time.time()))
            self._tables[(env, table_id)] = table
            return table.info()

    # ----------------------------------------------------------------- imports

    def _import_refusal(self, method: str, path: str, headers: Any) -> tuple[int, dict[str, Any]] | None:
        """The answer to an import request decided before its body is read, or None."""
        self._count("import")
        injected = self._take_injection("import")
        if injected is not None:
            return injected.status, injected.body
        try:
            if method != "POST":
                raise _error(405, f"{method} not allowed")
            self._bearer(headers)
            env = self._env_of(headers)
            match = IMPORT_RE.match(path)
            assert match is not None
            with self._lock:
                self._apply_due_imports()
                self._table(env, unquote(match.group(1)))
        except _HttpError as err:
            return err.status, err.body
        return None

    def _accept_import(self, path: str, headers: Any,
                       chunks: Iterable[bytes]) -> tuple[int, dict[str, Any]]:
        """Read the multipart body into a file, check it is a file the import can read,
        and schedule the import task."""
        match = IMPORT_RE.match(path)
        assert match is not None and self._tmpdir is not None
        env = self._env_of(headers)
        target = os.path.join(self._tmpdir, f"import-{secrets.token_hex(8)}")
        try:
            with open(target, "wb") as out:
                found, _ = receive_multipart(str(headers.get("Content-Type") or ""), chunks,
                                             "file", out)
        except MultipartError as exc:
            os.unlink(target)
            return 400, {"error_msg": f"无效的文件: {exc}"}
        except BaseException:  # the body ended early: nothing is kept
            os.unlink(target)
            raise
        if found is None:
            os.unlink(target)
            return 400, {"error_msg": "无效的文件: no file in the field `file`"}
        file_type = os.path.splitext(found.filename)[1].lower().lstrip(".")
        try:
            if file_type not in ("json", "csv"):
                raise ImportFileError(f"{found.filename!r} is neither .csv nor .json")
            check_import_file(target, file_type)
        except ImportFileError as exc:
            os.unlink(target)
            return 400, {"error_msg": f"无效的文件: {exc}"}
        with self._lock:
            table = self._table(env, unquote(match.group(1)))
            fail = self._fail_imports.popleft() if self._fail_imports else None
            self._imports.append(_Import(table, target, found.filename, file_type,
                                         time.time() + self.import_delay, fail))
        return 201, {"status": "ok"}

    def _apply_due_imports(self, everything: bool = False) -> None:
        """Run the import tasks whose time has come, in the order they were accepted."""
        with self._lock:
            now = time.time()
            while self._imports and (everything or self._imports[0].due_at <= now):
                task = self._imports.pop(0)
                table = task.table
                report: dict[str, Any] = {"table": table.table_id, "env": table.env,
                                          "file_name": task.file_name, "file_type": task.file_type,
                                          "status": "failed", "imported": 0, "skipped": [],
                                          "dropped_values": 0, "message": task.fail or ""}
                if task.fail is None and self._tables.get((table.env, table.table_id)) is table:
                    taken = {str(r.get("id")) for r in table.records}
                    outcome = read_import_records(task.path, task.file_type, table.schema, taken,
                                                  lambda: secrets.token_hex(12))
                    stamp = int(now)
                    for record in outcome.records:
                        record.setdefault("created_at", stamp)
                        record.setdefault("updated_at", stamp)
                    table.records.extend(outcome.records)
                    report.update(status="done", imported=len(outcome.records),
                                  skipped=outcome.skipped, dropped_values=outcome.dropped_values)
                elif task.fail is None:
                    report["message"] = "the table was deleted"
                self._import_reports.append(report)
                with contextlib.suppress(OSError):
                    os.unlink(task.path)

    def _records(self, env: str, table_id: str, params: dict[str, list[str]]) -> dict[str, Any]:
        limit = _int_param(params, "limit", 20, 1, MAX_RECORD_LIMIT)
        offset = _int_param(params, "offset", 0, 0, None)
        where_text = _first(params, "where")
        try:
            where = json.loads(where_text) if where_text else {}
        except ValueError:
            raise _error(400, "where is not valid JSON") from None
        with self._lock:
            table = self._table(env, table_id)
            try:
                selected = [r for r in table.records if matches_where(r, where)]
            except WhereError as exc:
                raise _error(400, f"where: {exc}") from None
            self._apply_change(table)  # after this read was answered
        # without order_by, newest first: 查询接口默认按创建时间倒序 (open-api/data/record.md)
        order = [s.strip() for s in _first(params, "order_by").split(",") if s.strip()]
        selected = sort_records(selected, order or ["-created_at"])
        keys = [k for k in _first(params, "keys").split(",") if k]
        page = [_project(r, keys or None, None) for r in selected[offset:offset + limit]]
        meta = _meta(limit, offset, len(selected))
        if _first(params, "return_total_count") not in ("1", "true"):
            meta.pop("total_count")
        return {"meta": meta, "objects": page}

    def _handle_api(self, method: str, path: str, params: dict[str, list[str]],
                    headers: Any, body: bytes,
                    cookies: dict[str, str]) -> tuple[int, dict[str, Any] | bytes, dict[str, str]]:
        route, match = _route(method, path)
        if route is None:
            return 404, {"error_msg": f"no such API: {method} {path}"}, {}
        self._count(route)
        self._apply_due_imports()
        injected = self._take_injection(route)
        if injected is not None and not injected.then_create:
            return injected.status, injected.body, injected.headers
        try:
            if route == "authorize":
                return self._authorize(body)
            if route == "authorize_redirect":
                return 200, self._authorize_redirect(params, cookies), {}
            if route == "access_token":
                return 200, self._access_token(str(headers.get("Content-Type") or ""), body), {}
            token = self._bearer(headers)
            env = self._env_of(headers)
            if route == "tables":
                return 200, self._table_list(env, params), {}
            if route == "create_table":
                return 201, self._create_table(env, body), {}
            assert match is not None
            table_id = unquote(match.group(1))
            if route == "export":
                status, answer = self._create_export(token, env, table_id, body, injected)
                return status, answer, {}
            if route == "job":
                return 200, self._job_status(env, table_id, unquote(match.group(2))), {}
            if route == "jobs":
                return 200, self._job_list(env, table_id, params), {}
            if route == "table":
                return 200, self._table_detail(env, table_id), {}
            return 200, self._records(env, table_id, params), {}
        except _HttpError as err:
            return err.status, err.body, {}

    # ----------------------------------------------------------------- downloads

    def _authorize_download(self, path: str, params: dict[str, list[str]],
                            authorization: str | None) -> tuple[int, str | None, bool]:
        """(status, file to send, truncate) for a download request."""
        self._count("download")
        with self._lock:
            self.download_authorization.append(authorization)
        injected = self._take_injection("download")
        if injected is not None:
            return injected.status, None, False
        expires, signature = _first(params, "e"), _first(params, "sign")
        if not expires.isdigit() or not hmac.compare_digest(signature,
                                                            self._sign(path, int(expires))):
            return 403, None, False
        with self._lock:
            doomed = self._expire_links_left > 0
            if doomed:
                self._expire_links_left -= 1
            if doomed or int(expires) < time.time():
                return 403, None, False
            job_id, _, name = path[len(FILES_PREFIX):].partition("/")
            job = self._jobs.get(job_id)
            if job is None or name != job.file_name or job.data_path is None:
                return 404, None, False
            truncate = self._truncate_left > 0 and os.path.getsize(job.data_path) > 0
            if truncate:
                self._truncate_left -= 1
            return 200, job.data_path, truncate

    def _record_download(self, status: int) -> None:
        with self._lock:
            self.download_statuses.append(status)


# --------------------------------------------------------------------------- request parsing


def _route(method: str, path: str) -> tuple[str | None, re.Match[str] | None]:
    if path == AUTHORIZE and method == "POST":
        return "authorize", None
    if path == AUTHORIZE_REDIRECT and method == "GET":
        return "authorize_redirect", None
    if path == ACCESS_TOKEN and method == "POST":
        return "access_token", None
    if path == _TABLES:
        return ("tables" if method == "GET" else "create_table" if method == "POST" else None), None
    match = _TABLE_RE.match(path)
    if match and method == "GET":
        return "table", match
    match = _EXPORT_RE.match(path)
    if match:
        return ("export" if method == "POST" else "jobs" if method == "GET" else None), match
    match = _JOB_RE.match(path)
    if match and method == "GET":
        return "job", match
    match = _RECORDS_RE.match(path)
    if match and method == "GET":
        return "records", match
    return None, None


def _first(params: dict[str, list[str]], name: str) -> str:
    return (params.get(name) or [""])[0]


def _int_param(params: dict[str, list[str]], name: str, default: int, minimum: int,
               maximum: int | None) -> int:
    text = _first(params, name)
    if not text:
        return default
    if not text.isdigit() or int(text) < minimum or (maximum is not None and int(text) > maximum):
        bound = f" and <= {maximum}" if maximum is not None else ""
        raise _error(400, f"{name} must be an integer >= {minimum}{bound}")
    return int(text)


def _meta(limit: int, offset: int, total: int) -> dict[str, Any]:
    return {"limit": limit, "offset": offset, "total_count": total,
            "next": f"?limit={limit}&offset={offset + limit}" if offset + limit < total else None,
            "previous": f"?limit={limit}&offset={max(0, offset - limit)}" if offset else None}


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        payload = json.loads(body.decode("utf-8")) if body.strip() else None
    except (UnicodeDecodeError, ValueError):
        payload = None
    if not isinstance(payload, dict):
        raise _error(400, "the body must be a JSON object")
    return payload


def _multipart_fields(content_type: str, body: bytes) -> dict[str, str]:
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode()
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
    if not message.is_multipart():
        raise _oauth_error(400, "invalid_request", "the multipart body could not be read")
    fields: dict[str, str] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if isinstance(name, str):
            payload = part.get_payload(decode=True)
            fields[name] = payload.decode("utf-8") if isinstance(payload, bytes) else ""
    return fields


_LIST_OPTIONS = ("include_keys", "exclude_keys", "order_by", "csv_customize_headers",
                 "timestamp_convert_keys")


def _check_options(payload: dict[str, Any], file_type: str) -> dict[str, Any]:
    known = {"file_type", "mode", "where", *_LIST_OPTIONS}
    unknown = sorted(set(payload) - known)
    if unknown:
        raise _error(400, f"unknown parameter(s): {', '.join(unknown)}")
    options: dict[str, Any] = {}
    for name in _LIST_OPTIONS:
        value = payload.get(name)
        if value is None:
            continue
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise _error(400, f"{name} must be a list of field names")
        options[name] = value
    if "csv_customize_headers" in options and file_type != "csv":
        raise _error(400, "csv_customize_headers only applies to csv exports")
    where = payload.get("where")
    if where is not None:
        if not isinstance(where, dict):
            raise _error(400, "where must be a JSON object")
        options["where"] = where
    return options


# --------------------------------------------------------------------------- HTTP layer


_Server = EmulatorServer[MinAppEmulator]


class _Handler(DispatchHandler):
    server_version = "minapp-emulator"
    server: _Server

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def _dispatch(self, method: str) -> None:
        split = urlsplit(self.path)
        params = parse_qs(split.query, keep_blank_values=True)
        if IMPORT_RE.match(split.path):
            self._import(method, split.path)
            return
        length = int(self.headers.get("Content-Length") or 0)
        if length < 0 or length > MAX_BODY:
            self.close_connection = True
            self._send(400, b'{"error_msg": "bad Content-Length"}', JSON_CONTENT_TYPE)
            return
        body = self.rfile.read(length) if length else b""
        emulator = self.server.emulator
        if split.path.startswith(CDN_PREFIX) and method == "GET":
            location = FILES_PREFIX + split.path[len(CDN_PREFIX):] + "?" + split.query
            self._send(302, b"", "text/plain", {"Location": location})
            return
        if split.path.startswith(FILES_PREFIX):
            if method != "GET":
                self._send(405, b"", "text/plain")
                return
            path = unquote(split.path)
            status, file_path, truncate = emulator._authorize_download(
                path, params, self.headers.get("Authorization"))
            if file_path is None:
                emulator._record_download(status)
                self._send(status, b"<Error><Code>AccessDenied</Code></Error>", "application/xml")
                return
            emulator._record_download(200)
            self._stream(file_path, truncate)
            return
        cookies = _cookies(self.headers.get("Cookie") or "")
        try:
            status, payload, extra = emulator._handle_api(method, split.path, params,
                                                          self.headers, body, cookies)
        except Exception:
            status, payload, extra = 500, {"error_msg": "Internal Server Error"}, {}
        if isinstance(payload, bytes):  # an injected answer that is not JSON
            self._send(status, payload, "text/html; charset=utf-8", extra)
            return
        data = json_bytes(payload) if payload else b""
        self._send(status, data, JSON_CONTENT_TYPE, extra)

    def _import(self, method: str, path: str) -> None:
        """An import: its body is read as a stream (never whole), also when refused."""
        emulator = self.server.emulator
        try:
            refused = emulator._import_refusal(method, path, self.headers)
            if refused is None:
                status, payload = emulator._accept_import(path, self.headers, self._body_chunks())
            else:
                for _ in self._body_chunks():  # read and drop it, so the answer is heard
                    pass
                status, payload = refused
        except (ValueError, ConnectionError):
            self.close_connection = True
            status, payload = 400, {"error_msg": "the request body could not be read"}
        except Exception:
            self.close_connection = True
            status, payload = 500, {"error_msg": "Internal Server Error"}
        self._send(status, json_bytes(payload), JSON_CONTENT_TYPE)

    def _body_chunks(self) -> Iterator[bytes]:
        """The request body in pieces: Content-Length or chunked transfer coding."""
        if "chunked" in str(self.headers.get("Transfer-Encoding") or "").lower():
            while True:
                size = int(self.rfile.readline(1024).split(b";")[0].strip() or b"x", 16)
                if size == 0:
                    while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                        pass
                    return
                yield from self._exactly(size)
                self.rfile.readline(8)
        else:
            yield from self._exactly(int(self.headers.get("Content-Length") or 0))

    def _exactly(self, length: int) -> Iterator[bytes]:
        left = length
        while left > 0:
            piece = self.rfile.read(min(CHUNK_SIZE, left))
            if not piece:
                raise ConnectionError("the body ended early")
            left -= len(piece)
            yield piece

    def _stream(self, file_path: str, truncate: bool) -> None:
        with open(file_path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(size))
            self.end_headers()
            to_send = size // 2 if truncate else size
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
        if truncate:
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)


def _cookies(header: str) -> dict[str, str]:
    jar: dict[str, str] = {}
    for item in header.split(";"):
        name, sep, value = item.strip().partition("=")
        if sep:
            jar[name] = value
    return jar


# --------------------------------------------------------------------------- command line


def _iter_jsonl(path: str) -> Iterator[dict[str, Any]]:
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                record = json.loads(line)
                if not isinstance(record, dict):
                    raise SystemExit(f"{path}: every line must be a JSON object")
                yield record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devkit.emulators.minapp",
                                     description="Run the MinApp OpenAPI emulator until killed.")
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: any)")
    parser.add_argument("--client", action="append", default=[], metavar="CLIENT_ID:SECRET")
    parser.add_argument("--env", action="append", default=[], metavar="ENV_ID",
                        help="a test environment (X-Hydrogen-Env-ID)")
    parser.add_argument("--table", action="append", default=[], metavar="[ENV:]TABLE_ID:PATH",
                        help="a table loaded from a JSON Lines file")
    parser.add_argument("--polls-until-ready", type=int, default=2)
    parser.add_argument("--token-ttl", type=int, default=7200)
    parser.add_argument("--link-ttl", type=int, default=3600)
    parser.add_argument("--job-window", type=float, default=60.0)
    parser.add_argument("--max-export-rows", type=int, default=1_000_000)
    parser.add_argument("--import-delay", type=float, default=0.2,
                        help="seconds before an accepted import's records appear")
    args = parser.parse_args(argv)
    emulator = MinAppEmulator(polls_until_ready=args.polls_until_ready, token_ttl=args.token_ttl,
                              link_ttl=args.link_ttl, job_window=args.job_window,
                              max_export_rows=args.max_export_rows, port=args.port)
    emulator.import_delay = args.import_delay
    for spec in args.client:
        client_id, sep, secret = spec.partition(":")
        if not (client_id and sep and secret):
            raise SystemExit(f"--client expects CLIENT_ID:SECRET, got {spec!r}")
        emulator.add_client(client_id, secret)
    for env in args.env:
        emulator.add_env(env)
    for spec in args.table:
        parts = spec.split(":")
        env, table, path = (parts[0], parts[1], ":".join(parts[2:])) if len(parts) > 2 and \
            not parts[0].isdigit() else (DEFAULT_ENV, parts[0], ":".join(parts[1:]))
        if not (table and path):
            raise SystemExit(f"--table expects [ENV:]TABLE_ID:PATH, got {spec!r}")
        emulator.add_table(table, list(_iter_jsonl(path)), env=env)

    return serve_until_terminated(emulator)


if __name__ == "__main__":
    sys.exit(main())
