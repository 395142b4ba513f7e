"""Local emulator of 清林云 OneDB, the cloud database API (``POST /cdb``).

A real HTTP server (stdlib ``ThreadingHTTPServer`` in a background thread, bound to
127.0.0.1) answering what a backup needs, the way the API document describes it:

- headers ``envid``, ``keyid`` and ``Authorization: Bearer <JWT>``; the JWT must be
  HS256-signed with the environment key's secret over ``{"identity": "cdb"}`` and carry
  an expiry (checked with PyJWT: signature, identity, ``exp``);
- ``action: getMany`` over a key range (``ids`` … ``endIds``, with the special values
  ``CDB:tableMinId`` / ``CDB:tableMaxId``), ``orderType`` asc/desc, ``rowsLimit`` ≤ 5000,
  ``filter`` (applied to the scanned rows, so a page may come back short or empty with a
  ``nextId``), ``getColumns``, and the ``nextId`` cursor (``{"ids": ...}`` of the next row,
  null after the last page; ``next_id_last_row``: of the page's last row instead, and
  ``start_exclusive``: ``ids`` read as exclusive, the other readings the document allows);
  ``action: get`` for one row;
- writes: ``create`` (``condition.type`` ignore / exist / notExist, the id values
  ``CDB:nanoId`` and ``CDB:timeId``), ``update`` (the same conditions plus column
  conditions; columns merged into the row) and ``delete``, as the API document describes
  them; a failed condition answers errCode 1 with ``conflict_title`` / ``missing_title``;
- composite primary keys, compared column by column (numbers before strings);
- errors as HTTP 200 with ``errCode`` 1 and a ``title``/``type``/``detail``/``instance``
  body (bad or expired tokens, unknown environment/key/table, missing permission, bad
  arguments; ``problem_status``: in the HTTP status each names instead, 401, 403, 404,
  409, 429 or 503, as the document allows by changing only 400 to 200), plus injectable
  faults (busy, rate limit, HTTP 502, dropped connection, a write applied and then its
  connection dropped, a getMany answer in another shape), per action;
- a rate limit (calls a second, every action counted) answered with HTTP 429 and
  ``Retry-After``.

Generated tables cost no memory: row ``i`` is computed from ``i`` (:func:`generated_row`),
so a 1,000,000-row table is as cheap as an empty one, until its first write: the rows are
then computed once and held (keep written generated tables to a few hundred thousand rows;
``wipe`` first when the table is to be restored, which holds nothing). ``latency`` makes every call take at
least that long (work included), like a platform with a fixed answer time.

Tests drive it in-process through :class:`OneDBEmulator`; a separate process:
``python -m devkit.emulators.onedb --key ENV:KEYID:SECRET --generated ENV:APP:TABLE:COUNT``
(prints the base URL, serves until killed).
"""

from __future__ import annotations

import argparse
import bisect
import collections
import contextlib
import json
import secrets
import socket
import string
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, overload

import jwt
import jwt.warnings
import orjson

from devkit.emulators.http_base import (
    EmulatorServer,
    LocalEmulator,
    QuietHandler,
    json_bytes,
    serve_until_terminated,
)

# Key secrets are the platform's to choose; PyJWT would warn about short ones on every call.
if hasattr(jwt.warnings, "InsecureKeyLengthWarning"):
    warnings.filterwarnings("ignore", category=jwt.warnings.InsecureKeyLengthWarning)

__all__ = ["MAX_ID", "MIN_ID", "OneDBEmulator", "generated_row", "main"]

MIN_ID = "CDB:tableMinId"
MAX_ID = "CDB:tableMaxId"
MAX_ROWS_LIMIT = 5000
MAX_BODY = 1 << 20
GENERATED_KEYS = ("userId", "seq")
MAX_GENERATED = 8 * 10**10  # userId keeps its 10 digits, so string order is row order
_CITIES = ("上海", "北京", "深圳", "杭州", "成都")
DROP = 0  # _handle status: close the connection without answering
RETRY_AFTER = 1  # seconds a 429 asks the caller to wait (HTTP allows whole seconds only)
FAULTS = ("busy", "rate_limit", "http_502", "drop", "reject_token", "stuck_cursor",
          "drop_after_write", "rows_reshaped", "no_data_list")
ACTIONS = ("get", "getMany", "create", "update", "delete")
CONDITIONS = ("ignore", "exist", "notExist")
NANO_ID = "CDB:nanoId"  # create: a 21-character random id
TIME_ID = "CDB:timeId"  # create: 13-digit milliseconds and 10 random characters
_NANO_ALPHABET = string.ascii_letters + string.digits + "_-"


def generated_row(index: int) -> dict[str, Any]:
    """Row `index` of a generated table, in key order: composite key (userId, seq)."""
    return {
        "ids": {"userId": f"u{index // 8:010d}", "seq": index % 8},
        "columns": {
            "name": f"用户{index}",
            "score": index * 7919 % 10007,
            "vip": index % 3 == 0,
            "city": _CITIES[index % 5],
        },
    }


# --------------------------------------------------------------------------- errors


class _CdbError(Exception):
    """An answer with errCode (HTTP 200, as the API does)."""

    def __init__(self, title: str, err_code: int = 1, status: int | None = None) -> None:
        super().__init__(title)
        self.title = title
        self.err_code = err_code
        self.status = status  # with problem_status: this answer's own HTTP status


def _bad_args(detail: str) -> _CdbError:
    return _CdbError(f"参数错误 (invalid argument): {detail}")


TOKEN_MISSING = "缺少访问token (Authorization missing)"
TOKEN_INVALID = "token无效 (invalid token)"
TOKEN_EXPIRED = "token已过期 (token expired)"
TOKEN_NO_EXPIRY = "token必须设置过期时间 (token must carry exp)"
TOKEN_IDENTITY = "token身份不是cdb (token identity is not cdb)"
ENV_UNKNOWN = "环境不存在 (environment not found)"
KEY_UNKNOWN = "环境密匙不存在 (environment key not found)"
NO_PERMISSION = "该密匙未开通云数据库应用权限 (key has no permission for app cdb)"
TABLE_UNKNOWN = "数据表不存在 (table not found)"
# The document does not give these titles; Tablestore-like words are our guess.
ROW_EXISTS = "条件检查失败：该ID的数据已存在 (condition check failed: the row already exists)"
ROW_MISSING = "条件检查失败：该ID的数据不存在 (condition check failed: no such row)"
BUSY = "系统繁忙，请稍后重试 (system busy, try again later)"
RATE_LIMITED = "请求过于频繁 (too many requests)"
# The HTTP status each error keeps when only 400 is answered as 200 (problem_status).
PROBLEM_STATUS = {
    TOKEN_MISSING: 401, TOKEN_INVALID: 401, TOKEN_EXPIRED: 401, TOKEN_NO_EXPIRY: 401,
    TOKEN_IDENTITY: 401, ENV_UNKNOWN: 401, KEY_UNKNOWN: 401, NO_PERMISSION: 403,
    TABLE_UNKNOWN: 404, BUSY: 503, RATE_LIMITED: 429,
}


# --------------------------------------------------------------------------- tables


def _value_rank(value: Any, *, markers: bool = False) -> tuple[int, Any]:
    """Orders key values like the database: min < numbers < strings < max. `markers`: a
    range's ends as asked (getMany's ids/endIds), where CDB:tableMinId/MaxId mean the ends;
    a stored key holding those words is a string like any other."""
    if markers and value == MIN_ID:
        return (0, 0)
    if markers and value == MAX_ID:
        return (9, 0)
    if isinstance(value, bool):
        return (3, int(value))
    if isinstance(value, (int, float)):
        return (1, value)
    return (2, str(value))


class _Table:
    """Rows in key order, either held (explicit rows) or computed from the index."""

    def __init__(self, keys: tuple[str, ...], rows: list[dict[str, Any]] | None, count: int) -> None:
        self.keys = keys
        self._rows = rows
        self.count = len(rows) if rows is not None else count

    def row(self, index: int) -> dict[str, Any]:
        return self._rows[index] if self._rows is not None else generated_row(index)

    def sort_key(self, ids: dict[str, Any], *, markers: bool = False) -> tuple[tuple[int, Any], ...]:
        return tuple(_value_rank(ids[k], markers=markers) for k in self.keys)

    # writes (the caller holds the emulator's lock) ---------------------------------
    def find(self, ids: dict[str, Any]) -> tuple[int, bool]:
        """(index of the first row >= ids, whether that row has these ids)."""
        wanted = self.sort_key(ids)
        index = bisect.bisect_left(_SortKeys(self), wanted)
        return index, index < self.count and self.sort_key(self.row(index)["ids"]) == wanted

    def _held(self) -> list[dict[str, Any]]:
        """The rows as a list, computing a generated table's rows on its first write."""
        if self._rows is None:
            self._rows = [generated_row(i) for i in range(self.count)]
        return self._rows

    def put(self, row: dict[str, Any]) -> None:
        """Insert the row, or replace the row with the same ids."""
        index, found = self.find(row["ids"])
        rows = self._held()
        if found:
            rows[index] = row
        else:
            rows.insert(index, row)
            self.count += 1

    def remove(self, ids: dict[str, Any]) -> bool:
        index, found = self.find(ids)
        if found:
            del self._held()[index]
            self.count -= 1
        return found

    def clear(self) -> None:
        self._rows, self.count = [], 0


class _SortKeys(Sequence[tuple[tuple[int, Any], ...]]):
    """The table's sort keys as a virtual sequence, for bisect (no list of a million keys)."""

    def __init__(self, table: _Table) -> None:
        self._table = table

    def __len__(self) -> int:
        return self._table.count

    @overload
    def __getitem__(self, index: int) -> tuple[tuple[int, Any], ...]: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[tuple[tuple[int, Any], ...]]: ...

    def __getitem__(self, index: int | slice) -> Any:
        if isinstance(index, slice):
            raise TypeError("no slices")
        return self._table.sort_key(self._table.row(index)["ids"])


def _matches(columns: dict[str, Any], condition: dict[str, Any]) -> bool:
    column, symbol, wanted = condition["column"], condition["symbol"], condition["value"]
    if column not in columns:
        return False
    actual = columns[column]
    numeric = (int, float)
    comparable = (
        (isinstance(actual, bool) and isinstance(wanted, bool))
        or (isinstance(actual, numeric) and isinstance(wanted, numeric)
            and not isinstance(actual, bool) and not isinstance(wanted, bool))
        or (isinstance(actual, str) and isinstance(wanted, str))
    )
    if not comparable:
        return bool(symbol == "!=")
    return bool({
        "=": actual == wanted, "!=": actual != wanted, ">": actual > wanted,
        ">=": actual >= wanted, "<": actual < wanted, "<=": actual <= wanted,
    }[symbol])


def _check_filter(spec: Any) -> dict[str, Any] | None:
    if spec in (None, {}):
        return None
    if not isinstance(spec, dict) or not isinstance(spec.get("conditionList"), list):
        raise _bad_args("filter.conditionList 必须是数组 (must be a list)")
    logical = spec.get("conditionLogical", "and")
    if logical not in ("and", "or", "not"):
        raise _bad_args(f"filter.conditionLogical {logical!r} 无效 (must be and, or or not)")
    conditions = spec["conditionList"]
    if not conditions or (logical == "not" and len(conditions) != 1):
        raise _bad_args("filter.conditionList 条件数量错误 (wrong number of conditions)")
    for condition in conditions:
        if not isinstance(condition, dict) or set(condition) != {"column", "symbol", "value"}:
            raise _bad_args("filter 条件需要 column, symbol, value (condition needs them)")
        if condition["symbol"] not in ("=", "!=", ">", ">=", "<", "<="):
            raise _bad_args(f"filter symbol {condition['symbol']!r} 无效 (invalid symbol)")
    return {"conditions": conditions, "logical": logical}


def _passes(columns: dict[str, Any], checked: dict[str, Any] | None) -> bool:
    if checked is None:
        return True
    results = (_matches(columns, c) for c in checked["conditions"])
    if checked["logical"] == "or":
        return any(results)
    if checked["logical"] == "not":
        return not all(results)
    return all(results)


# --------------------------------------------------------------------------- emulator


@dataclass
class _Key:
    secret: str
    cdb: bool = True


@dataclass
class _Env:
    keys: dict[str, _Key] = field(default_factory=dict)
    tables: dict[tuple[str, str], _Table] = field(default_factory=dict)


class OneDBEmulator(LocalEmulator):
    """The emulated platform: environments, keys, tables, and the getMany cursor.

    Thread-safe. ``latency``, ``page_cap`` (at most this many rows scanned per call,
    whatever ``rowsLimit`` says, like a response-size cap), ``rate_limit`` (getMany calls
    a second the environment allows; beyond it HTTP 429 with ``Retry-After``, counted in
    ``refused``) and ``require_expiry`` are plain attributes and may be changed at any time. ``calls`` counts requests per action;
    ``tokens`` lists every bearer token received and ``claims`` their verified claims.
    ``conflict_title`` / ``missing_title`` are the titles of a failed write condition.
    For tests: :meth:`table_rows` (read a table back), :meth:`wipe` (delete its rows),
    :meth:`add_table` with no rows (an empty table, as made in the console).
    """

    thread_name = "onedb-emulator"

    def __init__(self, *, latency: float = 0.0, page_cap: int | None = None, port: int = 0) -> None:
        self.latency = latency
        self.page_cap = page_cap
        self.require_expiry = True
        self.rate_limit: float | None = None
        self.clock: Callable[[], float] = time.monotonic  # the rate limit's; a test may stop it
        self.bare_next_id = False  # nextId as the bare ids object (the other reading)
        # nextId as the ids of the page's last row scanned, not of the next one: the API
        # document's sample (getMany, "nextId": {"ids": "idsValue"}) allows this reading too
        self.next_id_last_row = False
        # getMany's start `ids` exclusive (the rows after it), not inclusive: the document
        # only says "即查询范围的起始 id" (getMany), so both readings are emulated
        self.start_exclusive = False
        # Errors in the HTTP status they name (401, 403, 404, 409, 429, 503), the body still
        # the errCode problem: the document changes only 400 to 200 ("失败": "更改了状态码 400
        # 为 200"), so the other statuses of the problem standard it follows may stay
        self.problem_status = False
        self.conflict_title = ROW_EXISTS  # create/update notExist on an existing row
        self.missing_title = ROW_MISSING  # create/update/delete exist on a missing row
        self.refused = 0
        self._admitted: collections.deque[float] = collections.deque()  # last second's calls
        self.port = port
        self.base_url = ""
        self.calls: collections.Counter[str] = collections.Counter()
        self.tokens: list[str] = []
        self.claims: list[dict[str, Any]] = []
        self._lock = threading.RLock()
        self._envs: dict[str, _Env] = {}
        self._revoked: set[str] = set()
        self._faults: dict[str, collections.deque[str]] = collections.defaultdict(collections.deque)

    # ----------------------------------------------------------------- lifecycle
    # start() returns the base URL (the API is at /cdb); see LocalEmulator.

    def _make_server(self, address: tuple[str, int]) -> _Server:
        return _Server(address, _Handler, self)

    # ----------------------------------------------------------------- data

    def add_key(self, envid: str, keyid: str, secret: str, *, cdb: bool = True) -> None:
        """An environment key; `cdb=False` is a key without the cloud database app granted."""
        with self._lock:
            self._envs.setdefault(envid, _Env()).keys[keyid] = _Key(secret, cdb)

    def set_key_secret(self, envid: str, keyid: str, secret: str) -> None:
        """Rotate a key's secret: tokens signed with the old one stop working."""
        with self._lock:
            self._envs[envid].keys[keyid].secret = secret

    def add_table(self, envid: str, app: str, table: str, keys: Sequence[str],
                  rows: list[dict[str, Any]]) -> None:
        """A table held in memory; rows are ``{"ids": {...}, "columns": {...}}`` in any order."""
        key_names = tuple(keys)
        for row in rows:
            if set(row["ids"]) != set(key_names):
                raise ValueError(f"row ids {row['ids']} do not match the keys {key_names}")
        holder = _Table(key_names, [], 0)
        ordered = sorted(rows, key=lambda r: holder.sort_key(r["ids"]))
        with self._lock:
            self._env(envid).tables[(app, table)] = _Table(key_names, ordered, 0)

    def add_generated_table(self, envid: str, app: str, table: str, count: int) -> None:
        """A table of `count` rows computed from their index (see :func:`generated_row`)."""
        if not 0 <= count <= MAX_GENERATED:
            raise ValueError(f"a generated table holds 0 to {MAX_GENERATED} rows")
        with self._lock:
            self._env(envid).tables[(app, table)] = _Table(GENERATED_KEYS, None, count)

    def rows(self, envid: str, app: str, table: str) -> Iterator[dict[str, Any]]:
        """Every row in ascending key order, as getMany returns them."""
        found = self._env(envid).tables[(app, table)]
        return (found.row(i) for i in range(found.count))

    def table_rows(self, envid: str, app: str, table: str) -> list[dict[str, Any]]:
        """A copy of every row of the table now, in ascending key order."""
        with self._lock:
            found = self._env(envid).tables[(app, table)]
            return [json.loads(json.dumps(found.row(i))) for i in range(found.count)]

    def wipe(self, envid: str, app: str, table: str) -> int:
        """Delete every row of the table (it stays, empty, with its keys); rows deleted."""
        with self._lock:
            found = self._env(envid).tables[(app, table)]
            deleted = found.count
            found.clear()
            return deleted

    def has_table(self, envid: str, app: str, table: str) -> bool:
        with self._lock:
            return (app, table) in self._env(envid).tables

    # ----------------------------------------------------------------- faults

    def inject(self, fault: str, times: int = 1, action: str = "getMany") -> None:
        """The next `times` calls of `action` fail with `fault` (one of FAULTS).
        ``drop_after_write``: the write is done, then the connection drops unanswered."""
        if fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}; one of {', '.join(FAULTS)}")
        if action not in ACTIONS:
            raise ValueError(f"unknown action {action!r}; one of {', '.join(ACTIONS)}")
        with self._lock:
            self._faults[action].extend([fault] * times)

    def revoke_tokens(self) -> None:
        """Every token received so far is rejected from now on."""
        with self._lock:
            self._revoked.update(self.tokens)

    # ----------------------------------------------------------------- internals

    def _env(self, envid: str) -> _Env:
        with self._lock:
            return self._envs.setdefault(envid, _Env())

    def _admit(self) -> bool:
        """A sliding one-second window of at most `rate_limit` calls."""
        with self._lock:
            if self.rate_limit is None:
                return True
            now = self.clock()
            while self._admitted and self._admitted[0] <= now - 1.0:
                self._admitted.popleft()
            if len(self._admitted) >= self.rate_limit:
                self.refused += 1
                return False
            self._admitted.append(now)
            return True

    def _take_fault(self) -> str | None:
        return self._take_action_fault("getMany")

    def _take_action_fault(self, action: Any) -> str | None:
        with self._lock:
            waiting = self._faults.get(str(action))
            return waiting.popleft() if waiting else None

    def _authenticate(self, headers: Any) -> _Env:
        envid, keyid = headers.get("envid"), headers.get("keyid")
        authorization = headers.get("Authorization") or ""
        with self._lock:
            env = self._envs.get(envid or "")
            if env is None:
                raise _CdbError(ENV_UNKNOWN)
            key = env.keys.get(keyid or "")
            if key is None:
                raise _CdbError(KEY_UNKNOWN)
            secret, granted = key.secret, key.cdb
        scheme, _, token = authorization.partition(" ")
        if scheme != "Bearer" or not token:
            raise _CdbError(TOKEN_MISSING)
        with self._lock:
            revoked = token in self._revoked
        options = {"require": ["exp"]} if self.require_expiry else {}
        try:
            claims = jwt.decode(token, secret, algorithms=["HS256"], options=options)  # type: ignore[arg-type]
        except jwt.ExpiredSignatureError:
            raise _CdbError(TOKEN_EXPIRED) from None
        except jwt.MissingRequiredClaimError:
            raise _CdbError(TOKEN_NO_EXPIRY) from None
        except jwt.InvalidTokenError:
            raise _CdbError(TOKEN_INVALID) from None
        if revoked:
            raise _CdbError(TOKEN_INVALID)
        if claims.get("identity") != "cdb":
            raise _CdbError(TOKEN_IDENTITY)
        with self._lock:
            self.claims.append(claims)
        if not granted:
            raise _CdbError(NO_PERMISSION)
        return env

    def _answer(self, headers: Any, body: dict[str, Any]) -> dict[str, Any]:
        action = body.get("action")
        with self._lock:
            self.calls[str(action)] += 1
        env = self._authenticate(headers)
        for name in ("appId", "tableId", "action"):
            if not isinstance(body.get(name), str) or not body[name]:
                raise _bad_args(f"缺少 {name} ({name} is required)")
        table = env.tables.get((body["appId"], body["tableId"]))
        if table is None:
            raise _CdbError(TABLE_UNKNOWN)
        columns = body.get("getColumns") or None
        if columns is not None and not (
            isinstance(columns, list) and all(isinstance(c, str) for c in columns)
        ):
            raise _bad_args("getColumns 必须是字符串数组 (must be a list of names)")
        with self._lock:  # a page or a write sees the table as one moment
            if action == "getMany":
                return self._get_many(table, body, columns)
            if action == "get":
                ids = self._ids(table, body.get("ids"), "ids", sentinels=False)
                index, found = table.find(ids)
                if found:
                    return _select(table.row(index), columns)
                return None  # type: ignore[return-value]  # the API answers null
            if action in ("create", "update", "delete"):
                return self._write(table, str(action), body)
        raise _bad_args(f"action {action!r} 不受模拟器支持 (not emulated)")

    def _write(self, table: _Table, action: str, body: dict[str, Any]) -> dict[str, Any]:
        """create / update / delete of one row, under its condition (API doc, each action)."""
        condition = body.get("condition") or {}
        if not isinstance(condition, dict):
            raise _bad_args("condition 必须是对象 (must be an object)")
        kind = condition.get("type", "ignore")
        if kind not in CONDITIONS:
            raise _bad_args(f"condition.type {kind!r} 无效 (ignore, exist or notExist)")
        value = body.get("ids")
        if action == "create" and isinstance(value, dict):
            value = {k: _made_up_id(v) for k, v in value.items()}
        ids = self._ids(table, value, "ids", sentinels=False)
        for name, key in ids.items():
            if isinstance(key, bool) or not isinstance(key, (str, int)):
                raise _bad_args(f"主键 {name} 的值必须是字符串或整数 (key values are strings or integers)")
        index, found = table.find(ids)
        if kind == "notExist" and found:
            raise _CdbError(self.conflict_title, status=409)
        if kind == "exist" and not found:
            raise _CdbError(self.missing_title, status=404)
        if action == "delete":
            table.remove(ids)
            return {"success": True}
        columns = body.get("columns")
        if not isinstance(columns, dict):
            raise _bad_args("columns 必须是对象 (columns is required, an object)")
        if action == "create":  # the whole row: an existing one is overwritten
            table.put({"ids": ids, "columns": columns})
            return {"ids": ids}
        if body.get("updateType"):
            raise _bad_args(f"updateType {body['updateType']!r} 不受模拟器支持 (not emulated)")
        checked = _check_filter({k: condition[k] for k in ("conditionList", "conditionLogical")
                                 if k in condition} or None)
        current = table.row(index)["columns"] if found else {}
        if found and not _passes(current, checked):
            raise _CdbError(self.missing_title, status=404)
        table.put({"ids": ids, "columns": {**current, **columns}})
        return {"ids": ids}

    @staticmethod
    def _ids(table: _Table, value: Any, name: str, *, sentinels: bool = True) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise _bad_args(f"{name} 必须是对象 (must be an object of key columns)")
        missing = [k for k in table.keys if k not in value]
        if missing:
            raise _bad_args(f"{name} 缺少主键列 {', '.join(missing)} (missing key columns)")
        extra = sorted(set(value) - set(table.keys))
        if extra:
            raise _bad_args(f"{name} 含有非主键列 {', '.join(extra)} (not key columns)")
        if not sentinels and any(v in (MIN_ID, MAX_ID) for v in value.values()):
            raise _bad_args(f"{name} 不能使用 {MIN_ID}/{MAX_ID}")
        return value

    @staticmethod
    def _position(table: _Table, ids: dict[str, Any], *, first: bool) -> int:
        """first=True: index of the first row >= ids; else index after the last row <= ids."""
        wanted = table.sort_key(ids, markers=True)
        finder = bisect.bisect_left if first else bisect.bisect_right
        return finder(_SortKeys(table), wanted)

    def _get_many(self, table: _Table, body: dict[str, Any], columns: list[str] | None) -> dict[str, Any]:
        start = self._ids(table, body.get("ids"), "ids")
        end = self._ids(table, body.get("endIds"), "endIds")
        order = body.get("orderType", "desc")
        if order not in ("asc", "desc"):
            raise _bad_args(f"orderType {order!r} 无效 (asc or desc)")
        limit = body.get("rowsLimit", 100)
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_ROWS_LIMIT:
            raise _bad_args(f"rowsLimit 必须在 1 到 {MAX_ROWS_LIMIT} 之间 (got {limit!r})")
        checked = _check_filter(body.get("filter"))
        scan = min(limit, self.page_cap or limit)
        if order == "asc":  # rows start .. end, both inclusive (start: unless start_exclusive)
            low = self._position(table, start, first=not self.start_exclusive)
            high = self._position(table, end, first=False)
            window = range(low, min(high, low + scan))
            following = window.stop if window.stop < high else None
        else:  # rows start .. end going down
            high, low = self._position(table, start, first=False), self._position(table, end, first=True)
            window = range(high - 1, max(low, high - scan) - 1, -1)
            following = window.stop if window.stop >= low else None
        data = []
        for index in window:
            row = table.row(index)
            if _passes(row["columns"], checked):
                data.append(_select(row, columns))
        next_id: dict[str, Any] | None = None
        if following is not None:
            ids = table.row(window[-1] if self.next_id_last_row else following)["ids"]
            next_id = ids if self.bare_next_id else {"ids": ids}
        return {"data": data, "nextId": next_id}

    def _handle(self, headers: Any, raw: bytes) -> tuple[int, dict[str, Any] | None]:
        """(HTTP status, answer); faults decide a status other than 200, or DROP."""
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            return 200, _error_body(_bad_args("请求体不是 JSON (body is not JSON)"), {})
        if not isinstance(body, dict):
            return 200, _error_body(_bad_args("请求体必须是对象 (body must be an object)"), {})
        scheme, _, token = (headers.get("Authorization") or "").partition(" ")
        if scheme == "Bearer" and token:
            with self._lock:
                self.tokens.append(token)
        action = body.get("action")
        fault = self._take_fault() if action == "getMany" else self._take_action_fault(action)
        if not self._admit():  # every action counts against the environment's rate
            return 429, {"message": "Too Many Requests", "retryAfter": RETRY_AFTER}
        if fault == "http_502":
            return 502, {"message": "bad gateway"}
        if fault == "drop":
            return DROP, None
        try:
            if fault == "busy":
                raise _CdbError(BUSY)
            if fault == "rate_limit":
                raise _CdbError(RATE_LIMITED)
            if fault == "reject_token":
                raise _CdbError(TOKEN_INVALID)
            answer = self._answer(headers, body)
            if fault == "drop_after_write":  # done, but the caller never hears of it
                return DROP, None
            if fault == "stuck_cursor":  # a platform bug: the cursor asked for comes back
                answer["nextId"] = {"ids": body.get("ids")}
            if fault in ("rows_reshaped", "no_data_list"):
                answer = _reshaped(answer, fault)
            return 200, answer
        except _CdbError as exc:
            return self._error_status(exc), _error_body(exc, body, headers)

    def _error_status(self, exc: _CdbError) -> int:
        if not self.problem_status:
            return 200
        return exc.status or PROBLEM_STATUS.get(exc.title, 200)


def _reshaped(answer: dict[str, Any], fault: str) -> dict[str, Any]:
    """A getMany answer in a shape other than the API document's (`data`: rows of `ids`
    and `columns`), as a changed platform or a proxy might give: each row's columns under
    another name (Tablestore's, the engine underneath), or the rows under another key."""
    if fault == "rows_reshaped":
        rows = [{"ids": r["ids"], "attributeColumns": r["columns"]} for r in answer["data"]]
        return {**answer, "data": rows}
    return {"rows": answer["data"], "nextId": answer["nextId"]}


def _made_up_id(value: Any) -> Any:
    """create's special id values (API doc, "create"): a random id in place of the marker."""
    if value == NANO_ID:
        return "".join(secrets.choice(_NANO_ALPHABET) for _ in range(21))
    if value == TIME_ID:
        return f"{int(time.time() * 1000):013d}{secrets.token_hex(5)}"
    return value


def _select(row: dict[str, Any], columns: list[str] | None) -> dict[str, Any]:
    if columns is None:
        return row
    return {"ids": row["ids"], "columns": {k: v for k, v in row["columns"].items() if k in columns}}


def _error_body(exc: _CdbError, body: dict[str, Any], headers: Any = None) -> dict[str, Any]:
    get = headers.get if headers is not None else (lambda _name: None)
    detail = {"envId": get("envid"), "keyId": get("keyid"), "appId": body.get("appId"),
              "tableId": body.get("tableId"), "action": body.get("action")}
    instance = {"requestId": secrets.token_hex(8), "clientIP": "127.0.0.1", "referer": "",
                "userAgent": get("User-Agent") or "", "date": int(time.time() * 1000)}
    return {
        "errCode": exc.err_code,
        "type": f"cdb/{body.get('action') or 'unknown'}",
        "title": exc.title,
        "detail": json.dumps(detail, ensure_ascii=False),
        "instance": json.dumps(instance, ensure_ascii=False),
    }


# --------------------------------------------------------------------------- HTTP layer


_Server = EmulatorServer[OneDBEmulator]


class _Handler(QuietHandler):
    server_version = "onedb-emulator"
    server: _Server

    def do_POST(self) -> None:
        began = time.monotonic()
        length = int(self.headers.get("Content-Length") or 0)
        if not 0 <= length <= MAX_BODY:
            self.close_connection = True
            self._send(413, b'{"message": "body too large"}')
            return
        raw = self.rfile.read(length) if length else b""
        if self.path.split("?", 1)[0] != "/cdb":
            self._send(404, b'{"message": "not found"}')
            return
        emulator = self.server.emulator
        try:
            status, answer = emulator._handle(self.headers, raw)
        except Exception:  # an emulator bug: answer like a failing platform would
            status, answer = 500, {"message": "internal error"}
        try:
            data = orjson.dumps(answer)
        except TypeError:  # what orjson cannot write (integers beyond 64 bits, NaN)
            data = json_bytes(answer)
        rest = emulator.latency - (time.monotonic() - began)
        if rest > 0:
            time.sleep(rest)
        if status == DROP:  # the connection breaks before any answer
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        self._send(status, data)

    def do_GET(self) -> None:
        self._send(405, b'{"message": "use POST"}')

    def _send(self, status: int, data: bytes) -> None:
        self.send_response(status)
        if status == 429:
            self.send_header("Retry-After", str(RETRY_AFTER))
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


# --------------------------------------------------------------------------- command line


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m devkit.emulators.onedb",
        description="Run the OneDB cloud database API emulator until killed.",
    )
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: any)")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds every call takes at least")
    parser.add_argument("--page-cap", type=int, default=None, help="rows scanned per call at most")
    parser.add_argument("--rate-limit", type=float, default=None,
                        help="calls a second allowed, every action (beyond: HTTP 429)")
    parser.add_argument("--key", action="append", default=[], metavar="ENV:KEYID:SECRET")
    parser.add_argument("--generated", action="append", default=[], metavar="ENV:APP:TABLE:COUNT",
                        help="a table of COUNT rows computed from their index")
    parser.add_argument("--table", action="append", default=[], metavar="ENV:APP:TABLE:KEY[,KEY]",
                        help="an empty table with these primary key columns (a restore target)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    emulator = OneDBEmulator(latency=args.latency, page_cap=args.page_cap, port=args.port)
    emulator.rate_limit = args.rate_limit
    for spec in args.key:
        parts = spec.split(":", 2)
        if len(parts) != 3 or not all(parts):
            raise SystemExit(f"--key expects ENV:KEYID:SECRET, got {spec!r}")
        emulator.add_key(*parts)
    for spec in args.generated:
        parts = spec.split(":")
        if len(parts) != 4 or not all(parts) or not parts[3].isdigit():
            raise SystemExit(f"--generated expects ENV:APP:TABLE:COUNT, got {spec!r}")
        emulator.add_generated_table(parts[0], parts[1], parts[2], int(parts[3]))
    for spec in args.table:
        parts = spec.split(":")
        if len(parts) != 4 or not all(parts):
            raise SystemExit(f"--table expects ENV:APP:TABLE:KEY[,KEY], got {spec!r}")
        emulator.add_table(parts[0], parts[1], parts[2], parts[3].split(","), [])

    return serve_until_terminated(emulator)


if __name__ == "__main__":
    sys.exit(main())
