"""Restoring a OneDB backup row by row (`shared.ports.RowImportPlatform`).

OneDB has no import job: each backup line (`{"ids": {...}, "columns": {...}}`, as
`OneDBClient.encode_rows` wrote it) goes back with the cloud database API's `create`
action, one call a row (https://www.baasapi.com/docs/cdb, "create"; the same text is in
seeds/onedb-cloud-database-api.zh.txt):

- modes new and insert: `condition.type` `notExist` (the row must not exist yet, else an
  error): a row already there is kept, never overwritten, and reported "kept" (a resumed
  restore re-sends the rows after its last checkpoint);
- mode upsert: `condition.type` `ignore` (written whatever is there, an existing row with
  the same ids is overwritten): the row becomes the backup's row, whole. When the table's
  backup holds only some columns (its `getColumns`), a whole-row overwrite would drop the
  others, so the row goes back with `update` and `ignore` instead (the given columns are
  set; a missing row is created): the backed-up columns are set, the others kept.

The document does not give the words of the error a `notExist` create answers when the
row exists: a title saying so (CONFLICT) is taken at once; any other refusal that is not
about the environment, key, table, token or load is checked with a `get` of the row, and
taken as "kept" only when the row is there. Otherwise the refusal is raised as classified.
Rate limits are raised (`RateLimited`, with Retry-After) for the service to pace.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from typing import TYPE_CHECKING, Any

import orjson

from shared.domain.errors import Fatal, RateLimited, Retryable
from shared.domain.records import may_hold_long_integer
from shared.platforms.onedb import wire
from shared.ports import RestoreMode, RowOutcome

if TYPE_CHECKING:
    from collections.abc import Callable

    from shared.platforms.onedb.settings import OneDBSource, OneDBTable

log = logging.getLogger(__name__)

MODES: frozenset[str] = frozenset({"new", "insert", "upsert"})
# The API doc's words (https://www.baasapi.com/docs/cdb), per action and condition type:
#   create notExist: 期待不存在该 ID 的数据，如果原先有该 ID 的数据，则会报错
#   create ignore:   忽略判断，直接新建数据，如果原先有该 ID 的数据，则会覆盖 (the default)
#   update ignore:   忽略判断，直接更新数据，如果原先没有该 ID 的数据，则会新建
CREATE_NEW, OVERWRITE = "notExist", "ignore"
# Values `create` reads as "make one up" or as range ends (API doc, "create" and "getMany"):
# a backed-up key holding one of them would come back as something else.
SPECIAL_IDS = frozenset({"CDB:tableMinId", "CDB:tableMaxId", "CDB:nanoId", "CDB:timeId",
                         "CDB:microsecondId"})
# What a refused notExist create may say (not documented; Tablestore, which OneDB's
# A-series tables resemble, answers "Condition check failed").
CONFLICT = ("已存在", "already exist", "条件检查失败", "条件不满足", "condition check fail",
            "conditioncheckfail", "duplicate", "重复")
COUNT_PATIENCE = 120.0  # seconds count() waits out rate limits before raising one
COUNT_WAIT = 1.0  # seconds between two tries when the platform gives no Retry-After


class RowRestore:
    """The restore half of `OneDBClient` (mixed in; uses its calls and settings)."""

    if TYPE_CHECKING:
        source: OneDBSource
        _target_keys: dict[str, list[str]]
        _backed_up_as: dict[str, OneDBTable]
        _told_conflict: bool

        def _call(self, body: dict[str, Any], collection: str,
                  accept: Callable[[dict[str, Any]], bool] | None = None, *,
                  raw: bytes | None = None) -> wire._Answer: ...

        def _table(self, collection: str) -> OneDBTable: ...

        def _keys(self, table: OneDBTable) -> list[str]: ...

    # RestorablePlatform --------------------------------------------------------------
    @property
    def restore_modes(self) -> frozenset[str]:
        return MODES

    def restore_keys(self, table: str) -> list[str] | None:
        """The primary key columns of `table`, in key order: its own (listed in `tables`),
        else those learnt for it (`restoring_into`, or the first row written to it), else
        the source's `keys`, else the keys every listed table shares (a restore's target
        has the keys of the table backed up, which is listed). None: unknown."""
        try:
            return self._keys(self.source.table(table))
        except KeyError:
            pass
        learnt = self._target_keys.get(table)
        if learnt:
            return list(learnt)
        if self.source.keys:
            return list(self.source.keys)
        shared = {tuple(t.keys or ()) for t in self.source.tables}
        return list(next(iter(shared))) if len(shared) == 1 and () not in shared else None

    def restoring_into(self, target: str, original: str) -> None:
        """Optional: `target` has the key columns of `original` (a listed table), for a
        source whose tables have different keys and no source-wide `keys`."""
        keys = self.restore_keys(original)
        if keys:
            self._target_keys[target] = keys
        with contextlib.suppress(KeyError):  # its getColumns: see _partial
            self._backed_up_as[target] = self.source.table(original)

    def target_exists(self, collection: str) -> bool:
        """One getMany of at most one row; "table not found" means it does not exist."""
        try:
            self._call(self._whole_range(collection, None, 1), collection)
        except wire.TableUnknown:
            return False
        return True

    def create_target(self, collection: str, like: str) -> None:
        """The cloud database API has no action that creates a table (API doc: get, getMany,
        create, update, delete, search): tables are made in the console."""
        raise Fatal(self.missing_target(collection, like))

    def missing_target(self, collection: str, like: str) -> str:
        keys = self.restore_keys(like) or self.restore_keys(collection)
        shape = f"primary key columns {', '.join(keys)}, in that order" if keys else \
            f"the same primary key columns as {like!r}"
        return (
            f"OneDB tables cannot be created through its API: create the empty table "
            f"{collection!r} in app {self.source.app_id!r} in the 清林云 console (the same table "
            f"type as {like!r}, {shape}), then start the restore again into it "
            f"(--into {collection} --mode new; over HTTP and on the status page, into "
            f"{collection!r})"
        )

    def count(self, collection: str) -> int:
        """Rows the table holds now (all of them: no filter), paged with getMany asking only
        for the key columns (`getColumns`, API doc "getMany"), 5000 rows a call."""
        rows, cursor = 0, None
        stored: dict[str, Any] | None = None  # the cursor's row, counted already (wire.STORED)
        waited_since: float | None = None
        while True:
            try:
                answer = self._call(self._whole_range(collection, cursor, wire.ROWS_LIMIT), collection)
            except RateLimited as exc:  # a count is a few calls: waited out here
                now = time.monotonic()
                waited_since = now if waited_since is None else waited_since
                if now - waited_since > COUNT_PATIENCE:
                    raise
                time.sleep(min(30.0, exc.retry_after or COUNT_WAIT))
                continue
            except wire.TableUnknown as exc:
                raise self._missing(collection, exc) from None
            waited_since = None
            body = answer.body
            if isinstance(body, bytes):
                try:
                    body = wire._parse(body)
                except ValueError:
                    raise Retryable(f"OneDB getMany of {collection!r} answered a page that "
                                    "is not JSON") from None
            page = wire.page_rows(body)  # another shape: Fatal, as in a backup
            following = wire._next_ids(answer.next_id, collection, self._range_keys(collection))
            if following is not None and wire.names_marker(following):
                following = wire.before_marker(collection, page, cursor, following)
            last_is_next = following is not None and wire.ends_with(page, following)
            if wire.skipped(page, cursor, stored) and self._exists(collection, cursor or {}):
                raise wire.skipped_row(collection, cursor or {})
            wire.drop_stored(page, stored)
            rows += len(page)
            if following is None:
                return rows
            if following == cursor:
                raise Fatal(f"OneDB getMany of {collection!r} gave back the cursor it was asked "
                            "for (nextId did not move); counting would never end")
            cursor, stored = following, following if last_is_next else None

    # RowImportPlatform ---------------------------------------------------------------
    def write_row(self, collection: str, mode: RestoreMode, line: bytes) -> RowOutcome:
        """One backup line back into `collection`; see the module doc for what each mode
        sends. Raises RateLimited (with the platform's Retry-After) for the caller to pace."""
        if mode not in MODES:
            raise Fatal(f"OneDB restores in mode new, insert or upsert, not {mode!r}")
        ids, columns, exact = _read_line(line, collection)
        ids = self._ordered_ids(collection, ids)
        if mode == "upsert":
            action, condition = ("update" if self._partial(collection) else "create"), OVERWRITE
        else:
            action, condition = "create", CREATE_NEW
        body = {"appId": self.source.app_id, "tableId": collection, "action": action,
                "ids": ids, "columns": columns, "condition": {"type": condition}}
        maybe_conflict = (lambda a: not wire.known_refusal(a)) if condition == CREATE_NEW else None
        try:
            answer = self._call(body, collection, maybe_conflict, raw=_encode(body, exact))
        except wire.TableUnknown as exc:
            raise self._missing(collection, exc) from None
        result = answer.body
        if isinstance(result, dict) and wire._failed(result):  # a refused notExist create
            title = f"{result.get('title') or ''}".lower()
            if wire._has(title, CONFLICT) or self._row_exists(collection, ids, result):
                return "kept"
            raise wire.classify(result, self.source, collection)
        if not isinstance(result, dict) or "ids" not in result:
            shape = sorted(result) if isinstance(result, dict) else type(result).__name__
            raise Retryable(f"OneDB {action} of {collection!r} answered {shape}, not the ids "
                            "of the row written")
        return "written"

    # PartialWrites: the read-back of an upsert that sets only the backed-up columns ------
    def writes_part(self, collection: str, mode: RestoreMode) -> bool:
        """Upsert of a backup made with getColumns goes back with `update`, which sets the
        given columns only (API doc, "update"; see write_row)."""
        return mode == "upsert" and self._partial(collection)

    def written(self, collection: str, line: bytes) -> tuple[bytes, frozenset[str]]:
        """(the row's ids, key order aside, exactly; the columns the line sets)."""
        ids, columns, _ = _read_line(line, collection)
        return _exact(ids), frozenset(columns)

    def written_part(self, collection: str, found: bytes, columns: frozenset[str]) -> bytes:
        """The target's line with only `columns`: a column the backup row lacked is one
        `update` never set, kept as the target had it."""
        ids, there, _ = _read_line(found, collection)
        return _exact({"ids": ids, "columns": {k: v for k, v in there.items() if k in columns}})

    # helpers -------------------------------------------------------------------------
    def _range_keys(self, collection: str) -> list[str]:
        return self._keys(self._table(collection))

    def _whole_range(self, collection: str, cursor: dict[str, Any] | None, limit: int) -> dict[str, Any]:
        """getMany over the whole table (no filter), the key columns only."""
        keys = self._range_keys(collection)
        return {
            "appId": self.source.app_id, "tableId": collection, "action": "getMany",
            "ids": cursor if cursor is not None else {k: wire.MIN_ID for k in keys},
            "endIds": {k: wire.MAX_ID for k in keys}, "orderType": "asc",
            "rowsLimit": limit, "getColumns": list(keys),
        }

    def _ordered_ids(self, collection: str, ids: dict[str, Any]) -> dict[str, Any]:
        """The line's ids in the table's key order, checked against its key columns."""
        keys = self.restore_keys(collection)
        if keys is None:  # learnt from the backup itself: its rows carry every key column
            keys = self._target_keys.setdefault(collection, list(ids))
        if set(ids) != set(keys):
            raise Fatal(f"a backup row's ids have columns {sorted(ids)}, but table "
                        f"{collection!r} is keyed by {keys}; restore into a table with the "
                        "backed-up table's primary key columns")
        special = sorted(str(v) for v in ids.values() if isinstance(v, str) and v in SPECIAL_IDS)
        if special:
            raise Fatal(f"a backup row of {collection!r} has the key value(s) {special}, which "
                        "OneDB's create reads as special values (a new random id, a range end); "
                        "that row cannot be restored as it was")
        return {k: ids[k] for k in keys}

    def _partial(self, collection: str) -> bool:
        """Does the backup written into `collection` hold only some columns (`getColumns` of
        the table, or of the listed table it was backed up from when restored elsewhere)?"""
        try:
            return bool(self.source.table(collection).getColumns)
        except KeyError:
            original = self._backed_up_as.get(collection)
            return original is not None and bool(original.getColumns)

    def _row_exists(self, collection: str, ids: dict[str, Any], refusal: dict[str, Any]) -> bool:
        """Is the row a notExist create was refused for there?"""
        if not self._exists(collection, ids):
            return False
        if not getattr(self, "_told_conflict", False):
            self._told_conflict = True
            log.info("OneDB refused a notExist create of a row that exists with an errCode "
                     "answer whose title is not a known conflict; taken as the row kept",
                     extra={"title": str(refusal.get("title") or "")[:200], "table": collection})
        return True

    def _exists(self, collection: str, ids: dict[str, Any]) -> bool:
        """Is the row there (`get`, API doc: null when not)?"""
        body = {"appId": self.source.app_id, "tableId": collection, "action": "get",
                "ids": ids, "getColumns": list(ids)}
        found = self._call(body, collection).body
        if found is None or found == {}:
            return False
        if isinstance(found, dict) and isinstance(found.get("ids"), dict):
            return True
        raise Retryable(f"OneDB get of a row of {collection!r} answered a shape that is not a row")

    def _missing(self, collection: str, exc: Exception) -> Fatal:
        return Fatal(f"{exc}. A restore writes into an existing table: create {collection!r} "
                     "in the 清林云 console with the backed-up table's primary key columns, or "
                     "choose another target")


def _read_line(line: bytes, collection: str) -> tuple[dict[str, Any], dict[str, Any], bool]:
    """(ids, columns, exact) of one backup line; exact: parsed by the standard library
    (integers beyond 64 bits, NaN, lone surrogates) and to be written back by it too."""
    text = line.strip()
    row: Any = None
    exact = False
    if not may_hold_long_integer(text):
        with contextlib.suppress(orjson.JSONDecodeError):  # NaN, lone surrogates
            row = orjson.loads(text)
    if row is None:
        exact = True
        try:
            row = json.loads(text)
        except ValueError:
            raise Fatal(f"a line of the backup of {collection!r} is not JSON; the backup object "
                        "is damaged (verify it)") from None
    if (not isinstance(row, dict) or not isinstance(row.get("ids"), dict) or not row["ids"]
            or not isinstance(row.get("columns", {}), dict) or set(row) - {"ids", "columns"}):
        shape = sorted(row) if isinstance(row, dict) else type(row).__name__
        raise Fatal(f"a line of the backup of {collection!r} is not a OneDB row (fields {shape}; "
                    'expected {"ids": {...}, "columns": {...}})')
    return row["ids"], row.get("columns") or {}, exact


def _encode(body: dict[str, Any], exact: bool) -> bytes:
    """The request body, every value as the backup line had it."""
    if not exact:
        return orjson.dumps(body)
    try:
        return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: kept as its \\u escape
        return json.dumps(body, separators=(",", ":")).encode("ascii")


def _exact(value: Any) -> bytes:
    """JSON with every value as read (integers beyond 64 bits, NaN, lone surrogates as
    their escapes) and keys sorted: the same row gives the same bytes."""
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode("ascii")
