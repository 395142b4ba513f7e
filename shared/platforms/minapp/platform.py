"""MinApp (知晓云) tables over its OpenAPI.

Sign-in is two steps: `authorize` (JSON; the platform may redirect, so a client of its
own follows redirects and keeps cookies) gives a code, `access_token` (multipart form)
turns it into a bearer token, cached in the state table until shortly before it
expires. Export: create a job per table, poll its status (pending → ready → finish),
download `download_url` (a signed link: no token is sent to it).

The platform allows one export job per table per minute and at most 1,000,000 rows
per job. A table configured with `split` is exported in several `part` jobs cut by
`where` ranges on a key; the boundaries come from the record API sorted by that key,
and each range is counted before anything starts, so every part is known to fit. The
part jobs start one per allowed minute from `check()`; their ids travel in the job's
remote id (a JSON handle), and a marker in the state table keeps a job started but
not yet recorded from being started twice.
"""

from __future__ import annotations

import itertools
import json
import logging
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from typing import Any, TypeVar

import httpx

from shared.adapters.http import (
    OffOrigin,
    describe_transport_error,
    download_chunks,
    make_client,
    make_download_client,
    retry_after_seconds,
    same_origin_only,
)
from shared.domain.errors import BackupError, Fatal, Forgotten, RateLimited, Retryable, RetryLater
from shared.logs import register_secret
from shared.platforms.minapp.answers import (
    count_of,
    error_text,
    json_object,
    meta_of,
    objects_of,
    wrong_field,
)
from shared.platforms.minapp.restore import MinAppRestore
from shared.platforms.minapp.settings import MinAppSource, MinAppTable
from shared.platforms.statuses import wait_for_documented
from shared.ports import PlatformServices, Progress
from shared.retry import with_retries

log = logging.getLogger(__name__)

AUTHORIZE = "/api/oauth2/hydrogen/openapi/authorize/"
ACCESS_TOKEN = "/api/oauth2/access_token/"  # noqa: S105 (a path)
EXPORT = "/oserve/v1.5/table/{table}/export/"
EXPORT_JOB = "/oserve/v1.5/table/{table}/export/{job}/"
RECORDS = "/oserve/v2.4/table/{table}/record/"
TABLES = "/oserve/v1.8/table/"  # the app's tables; `?name=` finds one by exact name
TABLE_PAGE = 100
TABLE_LIST_TRIES = 3  # listings of the app's tables while they keep changing
ENV_HEADER = "X-Hydrogen-Env-ID"
PROBE_JOB = "0" * 32  # shaped like MinApp's job ids; none is all zeros
LIST_OPTIONS = ("include_keys", "exclude_keys", "order_by", "csv_customize_headers",
                "timestamp_convert_keys")

# One job per table per minute; a job the platform lists as younger than this (with
# room for clock skew) explains a 400 on create.
RECENT_JOB_SECONDS = 90
ADOPT_SKEW_SECONDS = 10  # our clock vs the platform's when adopting a job a lost answer made
TOKEN_EARLY_REFRESH = timedelta(minutes=5)
# Markers bridge the moment between creating a platform job and the service recording
# it (at most a poller's start claim, two minutes); an hour is plenty.
MARKER_TTL = timedelta(hours=1)
# 获取单个导出任务信息 (GET /oserve/v1.5/table/:table_id/export/:job_id/, MinApp's 数据导入导出
# docs) lists a job's status as pending (等待处理), ready (正在处理) or finish (已完成).
DOCUMENTED_STATUSES = "pending, ready, finish"
# How long a job answering another status is waited for (from the first such answer),
# within MARKER_TTL, which keeps that moment: a new in-between state would pass by then.
UNDOCUMENTED_STATUS_WAIT = timedelta(minutes=30)
STATUS_ACCESS_HINT = (
    "reading export job status through the API must be enabled in the MinApp console "
    "(设置 → SDK → 通用 / settings → SDK → general); enable it and run again"
)

# MinApp's OpenAPI docs name no rate-limit answer; HTTP 429 is the generic one (RFC 6585
# section 4), possibly with Retry-After (RFC 9110 section 10.2.3), and this adapter's export
# create and restore already read it as "wait". A read refused so is asked again within
# the call; one still refused raises RateLimited, which the poller waits out.
READ_TRIES = 3
READ_MAX_WAIT = 30.0  # a longer Retry-After is left to the next poller tick, not slept here

T = TypeVar("T")


def _now() -> datetime:
    return datetime.now(timezone.utc)


# MinApp's refusal of an export over its row limit, e.g. "导出数据量超过 100W" (the console's
# data export notes cap one export at 1,000,000 rows); matched on the words, not the number.
_TOO_LARGE = ("超过", "超出", "上限", "exceed", "too large", "too many")


def _says_too_large(said: str) -> bool:
    text = said.lower()
    return any(word in text for word in _TOO_LARGE)


def _rows_per_part(limit: int) -> int:
    """A part size with room under the limit (rows added while a part exports)."""
    return max(1, limit * 9 // 10)


def _and(*conditions: dict[str, Any]) -> dict[str, Any]:
    present = [c for c in conditions if c]
    if len(present) <= 1:
        return present[0] if present else {}
    return {"$and": present}


def split_ranges(base: dict[str, Any], key: str, bounds: list[Any]) -> list[dict[str, Any]]:
    """`where` of each part: key < b1, b1 <= key < b2, ..., key >= bn (within `base`)."""
    edges: list[Any] = [None, *bounds, None]
    ranges = []
    for low, high in itertools.pairwise(edges):
        ranges.append(_and(base,
                           {key: {"$gte": low}} if low is not None else {},
                           {key: {"$lt": high}} if high is not None else {}))
    return ranges


class MinAppClient(MinAppRestore):
    """A MinApp source: backups here, restores in shared.platforms.minapp.restore."""

    def __init__(
        self,
        source: MinAppSource,
        services: PlatformServices,
        client: httpx.Client | None = None,
    ) -> None:
        self.source = source
        self.file_type = source.file_type
        self._cache = services.tokens
        self._retry_base = services.retry_base_seconds
        self._http = client or make_client()
        # download_url is chosen by MinApp: fetched only from public addresses, never
        # inflated without a bound (see shared.adapters.http)
        self._download = make_download_client(api_base=source.api_base)
        self._token_key = f"minapp:access_token:{source.api_base}:{source.client_id}"
        register_secret(source.client_secret.get_secret_value())
        self._discovery: dict[str, Any] | None = None

    # discovery and export ------------------------------------------------------
    def discovery(self) -> dict[str, Any] | None:
        """What the last `collections()` found (None: only ids were configured)."""
        return self._discovery

    def start_blocked(self) -> str | None:
        return None

    def restore_caveats(self, collection: str) -> list[dict[str, Any]]:
        """The export options of table `collection` its backup cannot be restored past."""
        return self._options(collection).restore_caveats()

    def configured_caveats(self) -> list[str]:
        return [f"table {table.label}: exported with {c['option']} {c['value']}: {c['why']}"
                for table in self.source.listed for c in table.restore_caveats()]

    def collections(self) -> list[str]:
        """Table ids for this run: `tables: all` lists the app's tables (include/exclude on
        their names), and a table given by name is resolved to its id, each run anew."""
        self._discovery = None
        if self.source.tables == "all":
            found = self._list_tables()
            kept = {name: table for name, table in found.items() if self.source.wanted(name)}
            self._discovery = {"found": sorted(found), "excluded": sorted(set(found) - set(kept)),
                               "ids": {name: found[name] for name in sorted(found)}}
            if not found:
                raise Fatal(f"source {self.source.name!r}: MinApp {TABLES} listed no table"
                            f"{self._env_note()}; check the client's data permissions and env_id")
            if not kept:
                raise Fatal(f"source {self.source.name!r}: include/exclude left none of the "
                            f"{len(found)} tables MinApp {TABLES} found ({', '.join(sorted(found)[:20])})"
                            "; fix the source's include/exclude patterns")
            return list(kept.values())
        ids, resolved = [], {}
        for table in self.source.listed:
            if table.id is not None:
                ids.append(table.id)
                continue
            assert table.name is not None
            resolved[table.name] = self._table_id(table.name)
            ids.append(resolved[table.name])
        if resolved:
            self._discovery = {"resolved": resolved}
        return ids

    def _env_note(self) -> str:
        return f" in test environment {self.source.env_id!r}" if self.source.env_id else ""

    def _list_tables(self) -> dict[str, str]:
        """Every table of the app, name -> id. The list is paged by offset, so a table
        created or deleted between two pages shifts the others and one at a page's edge
        can be missed: a listing whose `meta.total_count` moved is read again."""
        for _ in range(TABLE_LIST_TRIES):
            found, totals = self._list_tables_once()
            if len(totals) <= 1:
                return found
            log.warning("the app's tables changed while they were listed; listing again",
                        extra={"total_counts": sorted(totals)})
        log.warning("the app's tables kept changing while they were listed; this run backs "
                    "up the last listing", extra={"tables": len(found)})
        return found

    def _list_tables_once(self) -> tuple[dict[str, str], set[int]]:
        """One listing, paged by `meta.next` (MinApp OpenAPI table list, ifanrx/hydrogen-
        sdk-doc open-api/data/table.md: {meta: {limit, offset, next, total_count},
        objects: [{id, name, ...}]}), and the `total_count`s its pages gave."""
        found: dict[str, str] = {}
        totals: set[int] = set()
        offset = 0
        while True:
            answer = self._read(TABLES, {"limit": TABLE_PAGE, "offset": offset}, "list tables")
            objects = self._listed_tables(answer)
            found.update({str(o["name"]): str(o["id"]) for o in objects})
            meta = meta_of(answer, TABLES)
            following = meta.get("next")
            if following is not None and not isinstance(following, str):
                raise wrong_field(TABLES, "meta.next", "a link or null", following)
            if meta.get("total_count") is not None:
                totals.add(_total_count(answer, TABLES))
            offset += len(objects)
            if not objects or not following:
                return found, totals

    def _table_id(self, name: str) -> str:
        """The id of the table called exactly `name` (`?name=` is an exact match)."""
        objects = self._listed_tables(self._read(TABLES, {"name": name}, f"find table {name!r}"))
        ids = [str(o["id"]) for o in objects if o.get("name") == name]
        if len(ids) != 1:
            raise Fatal(f"source {self.source.name!r}: MinApp has {'no' if not ids else len(ids)} "
                        f"table(s) named {name!r}{self._env_note()}; check the name (console: "
                        "数据表) or give the table's id")
        return ids[0]

    def _listed_tables(self, answer: dict[str, Any]) -> list[dict[str, Any]]:
        objects = answer.get("objects")
        if not isinstance(objects, list) or not all(
                isinstance(o, dict) and isinstance(o.get("name"), str)
                and isinstance(o.get("id"), (int, str)) for o in objects):
            fields = ", ".join(sorted(answer)) or "none"
            raise Fatal(f"source {self.source.name!r}: MinApp {TABLES} answered in a shape this "
                        f"product does not recognise (fields: {fields}; expected `objects`: "
                        "tables with `id` and `name`, and `meta`)")
        return objects

    def start(self, collection: str, job_id: str) -> str:
        """Create the table's export (its first part when split). A job already started
        for this job (whose start was not recorded) is handed back instead."""
        marker = f"minapp:started:{job_id}"
        known = self._cache.cache_get(marker, _now())
        if known and not self._forgotten(known):
            log.info("export already started for this job; not starting another",
                     extra={"collection": collection})
            return known
        options = self._options(collection)
        plan = self._plan(collection, options) if options.split else None
        if plan is None:
            handle = self._create(collection, self._body(options), job_id)
        else:
            first = self._create(collection, self._body(options, plan[0]), f"{job_id}:1")
            window_at = time.time()  # after MinApp's own clock started the table's window
            self._cache.cache_put(self._part_marker(job_id, 0), first, _now() + MARKER_TTL)
            parts: list[dict[str, Any]] = [{"where": w, "id": None, "done": False} for w in plan]
            parts[0]["id"] = first
            # the later parts are created by `check`, maybe after a redeploy changed
            # file_type: they keep the type the first part was created with
            handle = _dump({"job": job_id, "key": options.split.key if options.split else "",
                            "parts": parts, "window_at": window_at,
                            "file_type": self.file_type})
        self._cache.cache_put(marker, handle, _now() + MARKER_TTL)
        return handle

    def check(self, collection: str, platform_job_id: str) -> Progress:
        if platform_job_id.startswith("{"):
            return self._check_parts(collection, json.loads(platform_job_id))
        return self._progress(collection, platform_job_id, self._status(collection, platform_job_id))

    def open(self, collection: str, platform_job_id: str, part: int = 0, *,
             file_type: str | None = None) -> Iterator[bytes]:
        """Stream a finished export; a link refused as expired is replaced once. Its first
        bytes are checked as `file_type` (the type it was started with), else as configured."""
        job = self._part_job(platform_job_id, part)
        for attempt in range(2):
            url = self._download_url(collection, job)
            # The link is signed and may point at (or redirect to) another host, such as
            # a CDN: no token goes with it.
            try:
                with self._download.stream("GET", url) as response:
                    if response.status_code in (403, 404, 410):
                        if attempt == 0:
                            log.info("download link refused; asking MinApp for a fresh one",
                                     extra={"http_status": response.status_code})
                            continue
                        raise Retryable(f"MinApp gave a refused download link twice for export "
                                        f"{job} (HTTP {response.status_code} the second time)")
                    if response.status_code != 200:
                        raise Retryable(f"download of MinApp export {job} answered HTTP "
                                        f"{response.status_code}")
                    yield from self._checked_bytes(response, job, file_type or self.file_type)
                    return
            except httpx.TransportError as exc:  # connecting (the body's own are caught below)
                raise Retryable(f"download of MinApp export {job} failed before its first byte "
                                f"({describe_transport_error(exc)}); the link's host could not "
                                "be reached") from None

    # split exports -------------------------------------------------------------
    def _plan(self, collection: str, options: MinAppTable) -> list[dict[str, Any]] | None:
        """The `where` of each part, or None when the table fits in one export."""
        split = options.split
        assert split is not None
        base = options.where or {}
        total = self._count(collection, base)
        if total <= split.rows_per_part:
            return None
        bounds: list[Any] = []
        for offset in range(split.rows_per_part, total, split.rows_per_part):
            value = self._value_at(collection, base, split.key, offset)
            if not bounds or value != bounds[-1]:
                bounds.append(value)
        wheres = split_ranges(base, split.key, bounds)
        counts = [self._count(collection, where) for where in wheres]
        limit = self.source.max_export_rows
        for index, count in enumerate(counts):
            if count > limit:
                raise Fatal(
                    f"split of MinApp table {collection} on {split.key!r}: part {index + 1} would hold "
                    f"{count} rows, over MinApp's {limit} per export, because too many records "
                    f"share one value of {split.key!r}; split on a key with (nearly) unique "
                    "values, e.g. id or created_at"
                )
        self._check_coverage(collection, base, split.key, total, sum(counts))
        log.info("table split into parts", extra={"collection": collection, "rows": total,
                                                  "parts": len(wheres), "part_rows": counts})
        return wheres

    def _check_coverage(self, collection: str, base: dict[str, Any], key: str, total: int,
                        covered: int) -> None:
        """Every record is in a part. The ranges hold every record with a value of `key` (a
        column has one type: table.md, 数据表列的元信息), so those they miss are the ones
        where it is null, counted with `$isnull` (open-api/data/record.md, 查询操作符), not
        inferred from `total`: the app writes while the split is planned, and records it
        adds would hide missed ones, records it deletes look missed."""
        missing = self._count(collection, _and(base, {key: {"$isnull": True}}))
        if missing:
            raise Fatal(
                f"split of MinApp table {collection} on {key!r}: {missing} record(s) have no "
                f"value for {key!r} and would be in no part; split on a key every record has, "
                "e.g. created_at"
            )
        if covered < total and self._count(collection, base) == total:
            raise Fatal(
                f"split of MinApp table {collection} on {key!r} would cover {covered} of {total} "
                f"rows, and no record lacks {key!r}; split on created_at or id instead"
            )
        if covered < total:
            log.info("records were deleted while the split was planned",
                     extra={"collection": collection, "rows": total, "covered": covered})

    def _check_parts(self, collection: str, handle: dict[str, Any]) -> Progress:
        parts: list[dict[str, Any]] = handle["parts"]
        for index, part in enumerate(parts):
            if not part["id"] or part["done"]:
                continue
            try:
                progress = self._progress(collection, part["id"], self._status(collection, part["id"]))
            except Forgotten as exc:
                log.warning("MinApp forgot a part's export; starting that part again",
                            extra={"part": index + 1, "reason": str(exc)})
                self._cache.cache_delete(self._part_marker(handle["job"], index))
                part["id"] = None
                continue
            if progress.state == "failed":
                return Progress("failed", platform_job_id=_dump(handle),
                                message=f"part {index + 1} of {len(parts)}: {progress.message}")
            part["done"] = progress.state == "ready"
        waiting = next((i for i, p in enumerate(parts) if not p["id"]), None)
        reopens = None
        if waiting is not None:
            reopens = self._window_reopens(handle)
            if reopens <= 0:
                self._start_part(collection, handle, waiting)
                reopens = self._window_reopens(handle)
        if all(p["done"] for p in parts):
            for index in range(len(parts)):
                self._cache.cache_delete(self._part_marker(handle["job"], index))
            return Progress("ready", part_records=[None] * len(parts), platform_job_id=_dump(handle))
        return Progress("running", platform_job_id=_dump(handle),
                        check_within_seconds=reopens if waiting is not None else None)

    def _window_reopens(self, handle: dict[str, Any]) -> float:
        """Seconds until the table may take its next export job: MinApp refuses a second
        one within a minute (data export API, 400: "1min 内多次创建任务"; see
        ifanrx/hydrogen-sdk-doc open-api/data/table export). 0 or less: now."""
        started = float(handle.get("window_at") or 0.0)
        return started + self.source.export_interval_seconds - time.time()

    def _start_part(self, collection: str, handle: dict[str, Any], index: int) -> None:
        part = handle["parts"][index]
        marker = self._part_marker(handle["job"], index)
        known = self._cache.cache_get(marker, _now())
        if known and not self._forgotten(known):
            part["id"] = known
            return
        body = self._body(self._options(collection), part["where"],
                          file_type=handle.get("file_type") or self.file_type)
        # created_at is in whole seconds (获取单个导出任务信息): another part's job can look
        # as new as this one's, and is never this part's
        taken = frozenset(str(p["id"]) for p in handle["parts"] if p["id"])
        try:
            part["id"] = self._create(collection, body, f"{handle['job']}:{index + 1}", taken)
        except RetryLater as exc:
            log.info("next part waits for MinApp's one export per table per minute",
                     extra={"part": index + 1, "reason": str(exc)})
            return
        finally:  # taken after MinApp's own clock started the window; a refusal used it too
            handle["window_at"] = time.time()
        self._cache.cache_put(marker, part["id"], _now() + MARKER_TTL)
        log.info("part export started", extra={"part": index + 1, "parts": len(handle["parts"]),
                                               "platform_job_id": part["id"]})

    @staticmethod
    def _part_marker(job_id: str, index: int) -> str:
        return f"minapp:part:{job_id}:{index}"

    @staticmethod
    def _part_job(platform_job_id: str, part: int) -> str:
        if not platform_job_id.startswith("{"):
            if part:
                raise Fatal(f"MinApp export {platform_job_id} has one part; part {part + 1} does not exist")
            return platform_job_id
        parts = json.loads(platform_job_id)["parts"]
        if not 0 <= part < len(parts) or not parts[part]["id"]:
            raise Fatal(f"MinApp split export has no started part {part + 1}")
        return str(parts[part]["id"])

    # one platform job ------------------------------------------------------------
    def _options(self, collection: str) -> MinAppTable:
        """The configured options of table id `collection`: by id, by a name that resolves
        to it, or none at all (tables: all)."""
        try:
            return self.source.table(collection)
        except KeyError:
            pass
        for table in self.source.listed:
            if table.name is not None and self._table_id(table.name) == collection:
                return table
        if self.source.tables == "all":
            return MinAppTable(id=collection)
        raise Fatal(f"table {collection} is not in source {self.source.name!r} any more; was "
                    "the config changed during the run?")

    def _body(self, options: MinAppTable, part_where: dict[str, Any] | None = None, *,
              file_type: str | None = None) -> dict[str, Any]:
        if part_where is not None:
            mode, where = "part", part_where
        else:
            where = options.where or {}
            mode = options.mode or ("part" if where else "all")
        body: dict[str, Any] = {"file_type": file_type or self.file_type, "mode": mode}
        if mode == "part" and where:
            body["where"] = where
        for name in LIST_OPTIONS:
            value = getattr(options, name)
            if value:
                body[name] = list(value)
        return body

    def _create(self, collection: str, body: dict[str, Any], attempt: str,
                taken: frozenset[str] = frozenset()) -> str:
        """Create one export job. When an earlier try's answer was lost or unreadable, the
        job it made (or may have made) is adopted rather than a second one made; never one
        of `taken` (the jobs of the split's other parts)."""

        def once() -> str:
            adopted = self._adopt(collection, body, attempt, taken)
            if adopted:
                return adopted
            self._token()  # sign in first, so a failure below is the export call's own
            sent_at = time.time()
            try:
                response = self._api("POST", EXPORT.format(table=collection), json_body=body)
            except Retryable:
                # The platform may have created the job before the answer was lost.
                self._cache.cache_put(f"minapp:unsure:{attempt}", repr(sent_at), _now() + MARKER_TTL)
                raise
            if response.status_code in (200, 201):
                return self._created(collection, response, attempt, sent_at)
            raise self._create_refused(collection, body, response)

        return self._retrying(once)

    def _created(self, collection: str, response: httpx.Response, attempt: str,
                 sent_at: float) -> str:
        """The job id of a create MinApp accepted. 201 is 导出任务创建成功 (data export API,
        状态码说明): without a readable job_id the job still exists, so it is looked for in
        the table's job list from now on and no other is made for this attempt."""
        job = _created_job_id(response)
        if job is None:
            self._cache.cache_put(f"minapp:made:{attempt}", repr(sent_at), _now() + MARKER_TTL)
            raise Retryable(f"MinApp created an export of table {collection} (HTTP "
                            f"{response.status_code}) but its answer has no readable job_id")
        self._cache.cache_delete(f"minapp:unsure:{attempt}")
        log.info("MinApp export job created", extra={"platform_job_id": job,
                                                     "collection": collection})
        return job

    def _adopt(self, collection: str, body: dict[str, Any], attempt: str,
               taken: frozenset[str]) -> str | None:
        """The job an earlier try of `attempt` made (its answer unreadable) or may have made
        (its answer lost), from the table's export job list: the oldest made since that try
        in the file type it asked for. None: no such try, or nothing found after a lost
        answer (so none was made). A job known made but not listed yet is waited for."""
        made = self._cache.cache_get(f"minapp:made:{attempt}", _now())
        sent_at = made or self._cache.cache_get(f"minapp:unsure:{attempt}", _now())
        if not sent_at:
            return None
        # matched on what this create asked for: a split's later parts keep the type of
        # its first (see `start`), whatever the config says now
        adopted = self._job_created_since(collection, float(sent_at) - ADOPT_SKEW_SECONDS,
                                          str(body["file_type"]), taken)
        if adopted:
            log.info("adopting the export job an earlier request created",
                     extra={"platform_job_id": adopted, "collection": collection})
            self._cache.cache_delete(f"minapp:made:{attempt}")
            self._cache.cache_delete(f"minapp:unsure:{attempt}")
            return adopted
        if made:
            raise Retryable(
                f"MinApp said it created an export of table {collection} but gave no readable "
                f"job_id, and the job is not in the table's export job list "
                f"({EXPORT.format(table=collection)}) yet; it is looked for again rather "
                "than a second export started")
        return None

    def _create_refused(self, collection: str, body: dict[str, Any],
                        response: httpx.Response) -> BackupError:
        status, said = response.status_code, error_text(response)
        where = f"MinApp refused to export table {collection} (HTTP {status}: {said})"
        if status == 400:
            return self._bad_request(collection, body, where, said)
        if status == 401:
            return Fatal(f"{where}: a freshly issued token was refused; check that the client "
                         f"{self.source.client_id!r} may use the OpenAPI")
        if status == 403:
            return Fatal(f"{where}: the client {self.source.client_id!r} may not export this "
                         "table; grant it data access in the MinApp console")
        if status == 404:
            env = f" in test environment {self.source.env_id!r}" if self.source.env_id else ""
            return Fatal(f"{where}: no table {collection}{env}; fix the table id in the source's tables")
        if status == 429:
            return RetryLater(f"{where}: rate limited")
        return Fatal(f"{where}: not a known answer")

    def _bad_request(self, collection: str, body: dict[str, Any], where: str,
                     said: str) -> BackupError:
        """MinApp's 400 on create has three causes (data export API, 状态码说明: "1min 内多次
        创建任务;数据量超过 100W;数据格式错误"): a wait, a split, or the options to fix."""
        recent = self._recent_jobs(collection)
        if recent:
            return RetryLater(
                f"{where}: another export of this table started within the last minute "
                f"(platform job {recent[0]}); MinApp allows one a minute"
            )
        limit = self.source.max_export_rows
        try:
            rows: int | None = self._count(collection, body.get("where") or {})
        except (Retryable, RetryLater) as exc:
            if not _says_too_large(said):
                # Which of the three causes it is needs the count: unknown, so not
                # "fix the options" but ask again once the count can be read.
                return RetryLater(
                    f"{where}: MinApp gives HTTP 400 for another export of the table within "
                    f"a minute, more than {limit} rows, or bad options (data export API, "
                    f"状态码说明), and the row count that tells them apart could not be "
                    f"read ({exc}); the export is asked for again after a wait")
            rows = None
        except BackupError as exc:
            log.warning("could not count the table's rows", extra={"reason": str(exc)})
            rows = None
        over = rows is not None and rows > limit
        if over or _says_too_large(said):
            holds = f"it holds {rows} rows, more" if rows is not None else "it holds more"
            return Fatal(
                f"{where}: {holds} than MinApp exports in one job "
                f"({limit} by this source's max_export_rows). Split it: in source "
                f"{self.source.name!r} write the table as "
                f"{{id: {collection}, split: {{key: created_at, rows_per_part: "
                f"{_rows_per_part(limit)}}}}} (key: a field every record has, ideally "
                "unique, e.g. id or created_at), and set max_export_rows to MinApp's limit "
                "if it is lower"
            )
        return Fatal(f"{where}: check the table's export options (where, include_keys, "
                     "exclude_keys, order_by, csv_customize_headers, timestamp_convert_keys)")

    def _status(self, collection: str, job: str) -> dict[str, Any]:
        response = self._get(EXPORT_JOB.format(table=collection, job=job), None,
                             f"read the status of export job {job} of table {collection}")
        if response.status_code == 200:
            return json_object(response)
        where = (f"MinApp export job {job} of table {collection}: HTTP {response.status_code} "
                 f"({error_text(response)})")
        if response.status_code == 404:
            self._cache.cache_put(f"minapp:forgotten:{job}", "1", _now() + MARKER_TTL)
            raise Forgotten(f"{where}: MinApp no longer knows this job")
        if response.status_code in (401, 403):
            raise Fatal(f"{where}: {STATUS_ACCESS_HINT}")
        raise Fatal(f"{where}: not a known answer")

    def _progress(self, collection: str, job: str, info: dict[str, Any]) -> Progress:
        status = info.get("status")
        if status in ("pending", "ready"):
            return Progress("running")
        if status == "finish":
            return Progress("ready")
        if status in ("fail", "failed", "error"):
            said = info.get("error_msg") or info.get("message") or "no message"
            return Progress("failed", message=f"MinApp export job {job} of table {collection} "
                                              f"failed: {said}")
        return self._undocumented_status(collection, job, status)

    def _undocumented_status(self, collection: str, job: str, status: object) -> Progress:
        """A status the docs do not list (see DOCUMENTED_STATUSES): waited for without
        spending the job's tries, saying so in its error, for UNDOCUMENTED_STATUS_WAIT."""
        said = (f"MinApp export job {job} of table {collection} answered status "
                f"{repr(status)[:80]}, which MinApp's export job docs do not list "
                f"({DOCUMENTED_STATUSES}); check the job in the MinApp console, and that source "
                f"{self.source.name!r}'s api_base is MinApp's API and not a proxy that rewrites "
                "answers")
        return Progress("failed", message=wait_for_documented(
            self._cache, f"minapp:odd-status:{job}", said, _now(), UNDOCUMENTED_STATUS_WAIT))

    def _download_url(self, collection: str, job: str) -> str:
        info = self._status(collection, job)
        url = info.get("download_url")
        if info.get("status") != "finish" or not url:
            raise Retryable(f"MinApp export {job} has no download link yet")
        if not isinstance(url, str):
            raise wrong_field(EXPORT_JOB.format(table=collection, job=job), "download_url",
                              "a link", url)
        return url

    def _checked_bytes(self, response: httpx.Response, job: str,
                       file_type: str) -> Iterator[bytes]:
        received = 0
        try:
            # MinApp reports no record count: only the transport can prove the file whole
            for chunk in download_chunks(response, require_length=True):
                if not received and chunk:
                    self._check_format(chunk, job, file_type)
                received += len(chunk)
                yield chunk
        except httpx.TransportError as exc:  # counted off the wire, not per handed-on chunk
            raise Retryable(f"download of MinApp export {job} was cut off after "
                            f"{response.num_bytes_downloaded} "
                            f"bytes ({describe_transport_error(exc)})") from None

    def _check_format(self, head: bytes, job: str, file_type: str) -> None:
        """The format is taken on trust from MinApp's docs; a file that is not what the
        record counter expects stops the copy instead of being stored miscounted."""
        if head.startswith((b"PK\x03\x04", b"\x1f\x8b")):
            raise Fatal(f"MinApp sent export {job} compressed (zip/gzip); this version stores "
                        "plain JSON Lines or CSV only")
        first = head.lstrip(b"\xef\xbb\xbf \t\r\n")[:1]
        if file_type == "json" and first and first != b"{":
            raise Fatal(f"MinApp's JSON export {job} is not one JSON object per line (it starts "
                        f"with {first.decode('latin-1')!r}); this version cannot count its records")

    # doctor --------------------------------------------------------------------------
    def probe(self) -> str:
        """`doctor`: a sign-in (the doctor's token cache starts empty), a count of the first
        table's records, and a status read of a job id that cannot exist (GET
        /oserve/v1.5/table/:table_id/export/:job_id/, 获取单个导出任务信息 in MinApp's data
        import/export docs): 404 means job status may be read through the API, 401/403
        that it is not enabled in the console."""
        tables = self.collections()
        if not tables:
            raise Fatal(f"source {self.source.name!r} lists no tables; add some to tables")
        table = tables[0]
        records = self._count(table, {})
        path = EXPORT_JOB.format(table=table, job=PROBE_JOB)
        response = self._get(path, None, "read an export job's status")
        if response.status_code in (401, 403):
            raise Fatal(f"MinApp refused to read an export job's status (HTTP "
                        f"{response.status_code}: {error_text(response)}): {STATUS_ACCESS_HINT}")
        if response.status_code not in (200, 404):
            raise Fatal(f"MinApp answered HTTP {response.status_code} to a job status read "
                        f"({error_text(response)}); expected 404 for a job that does not "
                        "exist; check api_base")
        return (f"signed in as client {self.source.client_id}; table {table} has {records} "
                "record(s); export job status can be read through the API")

    # platform job list and records ---------------------------------------------------
    def _jobs(self, collection: str) -> list[dict[str, Any]]:
        """The table's export jobs: the first page and, when there are more, the last."""
        path = EXPORT.format(table=collection)
        pages = [self._read(path, {"limit": 20, "offset": 0}, "list its export jobs")]
        total = _total_count(pages[0], path)
        if total > 20:
            pages.append(self._read(path, {"limit": 20, "offset": total - 20},
                                    "list its export jobs"))
        return [_listed_job(job, path) for page in pages for job in objects_of(page, path)]

    def _recent_jobs(self, collection: str) -> list[str]:
        since = time.time() - RECENT_JOB_SECONDS
        return [str(j["job_id"]) for j in self._jobs(collection) if j["created_at"] >= since]

    def _job_created_since(self, collection: str, since: float, file_type: str,
                           taken: frozenset[str]) -> str | None:
        found = sorted((j["created_at"], str(j["job_id"])) for j in self._jobs(collection)
                       if j["created_at"] >= since and j.get("file_type") in (None, file_type)
                       and str(j["job_id"]) not in taken)
        return found[0][1] if found else None

    def _count(self, collection: str, where: dict[str, Any]) -> int:
        params: dict[str, Any] = {"limit": 1, "return_total_count": 1}
        if where:
            params["where"] = json.dumps(where, ensure_ascii=False)
        path = RECORDS.format(table=collection)
        return _total_count(self._read(path, params, "count its records"), path)

    def _value_at(self, collection: str, where: dict[str, Any], key: str, offset: int) -> Any:
        params: dict[str, Any] = {"order_by": key, "limit": 1, "offset": offset, "keys": key}
        if where:
            params["where"] = json.dumps(where, ensure_ascii=False)
        path = RECORDS.format(table=collection)
        records = objects_of(self._read(path, params, "read split boundaries"), path)
        value = records[0].get(key) if records and isinstance(records[0], dict) else None
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise Fatal(f"split of MinApp table {collection} on {key!r}: the record at position "
                        f"{offset} has {'no value' if value is None else 'a non-scalar value'} "
                        f"for {key!r}; split on a number or string field every record has, "
                        "e.g. created_at")
        return value

    def _read(self, path: str, params: dict[str, Any], purpose: str) -> dict[str, Any]:
        response = self._get(path, params, purpose)
        if response.status_code == 200:
            return json_object(response)
        where = (f"MinApp refused to {purpose} ({path}: HTTP {response.status_code}: "
                 f"{error_text(response)})")
        if response.status_code in (401, 403) and "/export/" in path:
            raise Fatal(f"{where}: {STATUS_ACCESS_HINT}")
        if response.status_code == 404:
            raise Fatal(f"{where}: check the table id")
        raise Fatal(where)

    # HTTP and tokens -------------------------------------------------------------
    def _retrying(self, call: Callable[[], T]) -> T:
        return with_retries(call, attempts=3, base_seconds=self._retry_base)

    def _get(self, path: str, params: dict[str, Any] | None, purpose: str) -> httpx.Response:
        """A GET whose 429 is asked again after a backoff (or the Retry-After asked for,
        when longer); RateLimited when the platform still refuses. Any other answer goes
        back to the caller."""
        attempt = 1
        while True:
            response = self._retrying(lambda: self._api("GET", path, params=params))
            if response.status_code != 429:
                return response
            asked = retry_after_seconds(response.headers.get("Retry-After"))
            wait = max(asked or 0.0, self._retry_base * 2 ** (attempt - 1))
            if attempt >= READ_TRIES or wait > READ_MAX_WAIT:
                raise RateLimited(
                    f"MinApp rate-limited the request to {purpose} ({path}: HTTP 429: "
                    f"{error_text(response)}) {attempt} time(s) in a row"
                    + (f"; it asked to wait {asked:g} s" if asked is not None else ""),
                    retry_after=asked)
            log.warning("MinApp rate-limited a read; asking again", extra={
                "path": path, "attempt": attempt, "wait_seconds": round(wait, 2)})
            time.sleep(wait)
            attempt += 1

    def _api(self, method: str, path: str, *, params: dict[str, Any] | None = None,
             json_body: dict[str, Any] | None = None) -> httpx.Response:
        """One OpenAPI call; a token refused with 401 is replaced once. Network errors
        and 5xx are Retryable; every other answer goes back to the caller."""
        token = self._token()
        response = self._send(method, path, token, params, json_body)
        if response.status_code == 401:
            log.warning("MinApp refused the access token; signing in again once")
            self._cache.cache_delete(self._token_key)
            response = self._send(method, path, self._token(avoid=token), params, json_body)
        return response

    def _send(self, method: str, path: str, token: str, params: dict[str, Any] | None,
              json_body: dict[str, Any] | None) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"}
        if self.source.env_id:
            headers[ENV_HEADER] = self.source.env_id
        try:
            response = self._http.request(method, f"{self.source.api_base}{path}", params=params,
                                          json=json_body, headers=headers)
        except httpx.TransportError as exc:
            raise Retryable(f"MinApp {method} {path}: {describe_transport_error(exc)}") from None
        if response.status_code >= 500:
            raise Retryable(f"MinApp {method} {path}: HTTP {response.status_code}")
        return response

    def _forgotten(self, job: str) -> bool:
        return self._cache.cache_get(f"minapp:forgotten:{job}", _now()) is not None

    def _token(self, avoid: str | None = None) -> str:
        cached = self._cache.cache_get(self._token_key, _now())
        if cached and cached != avoid:
            register_secret(cached)
            return cached
        token, expires_in = self._retrying(self._sign_in)
        early = min(TOKEN_EARLY_REFRESH, timedelta(seconds=expires_in / 10))
        self._cache.cache_put(self._token_key, token,
                              _now() + timedelta(seconds=expires_in) - early)
        return token

    def _sign_in(self) -> tuple[str, int]:
        """authorize → code → access_token, in a client of its own that follows the
        platform's redirects and keeps its cookies for this one sign-in."""
        source = self.source
        secret = source.client_secret.get_secret_value()
        with make_client(follow_redirects=True) as auth:
            # MinApp's OpenAPI authorization (授权) may answer with redirects that set a
            # cookie; followed within api_base's origin only, since a 307/308 re-posts the
            # body, client secret included (RFC 9110 section 15.4.8).
            auth.event_hooks["request"] = [same_origin_only(source.api_base)]
            answer = self._oauth(AUTHORIZE, lambda url: auth.post(
                url, json={"client_id": source.client_id, "client_secret": secret}))
            code = answer.get("code")
            if not code:
                raise Retryable("MinApp authorize answered without a code")
            if not isinstance(code, str):
                raise wrong_field(AUTHORIZE, "code", "a string", code)
            register_secret(str(code))
            fields = {"client_id": source.client_id, "client_secret": secret,
                      "code": str(code), "grant_type": "authorization_code"}
            answer = self._oauth(ACCESS_TOKEN, lambda url: auth.post(
                url, files={name: (None, value) for name, value in fields.items()}))
        token = answer.get("access_token")
        if not token:
            raise Retryable("MinApp access_token answered without an access_token")
        if not isinstance(token, str):
            raise wrong_field(ACCESS_TOKEN, "access_token", "a string", token)
        register_secret(token)
        register_secret(str(answer.get("refresh_token") or ""))
        # absent: an hour, as before (the token's life is not documented as optional)
        expires_in = (count_of(answer, "expires_in", ACCESS_TOKEN)
                      if answer.get("expires_in") is not None else 3600)
        log.info("signed in to MinApp", extra={"expires_in": expires_in})
        return token, expires_in

    def _oauth(self, path: str, send: Callable[[str], httpx.Response]) -> dict[str, Any]:
        try:
            response = send(f"{self.source.api_base}{path}")
        except httpx.TransportError as exc:
            raise Retryable(f"MinApp {path}: {describe_transport_error(exc)}") from None
        except OffOrigin as exc:
            raise Fatal(
                f"MinApp sign-in ({path}) was {exc}, another origin; the client secret is not "
                f"sent there. Check api_base of source {self.source.name!r} (MinApp's own is "
                "https://cloud.minapp.com)") from None
        step = f"MinApp sign-in ({path}) answered HTTP {response.status_code} ({error_text(response)})"
        if response.status_code >= 500:
            raise Retryable(step)
        if response.status_code in (401, 403) or (
                response.status_code == 400 and "client" in error_text(response)):
            raise Fatal(f"{step}: client_id or client_secret of source {self.source.name!r} is "
                        "wrong; copy them from the MinApp console")
        if response.status_code != 200:
            raise Retryable(step)  # e.g. a code that expired on the way: sign in again
        return json_object(response)


def _total_count(answer: dict[str, Any], call: str) -> int:
    """`meta.total_count` of a list answer (MinApp's OpenAPI list answers are {meta: {limit,
    offset, next, previous, total_count}, objects}; ifanrx/hydrogen-sdk-doc open-api/data)."""
    total = meta_of(answer, call).get("total_count")
    if isinstance(total, bool) or not isinstance(total, int) or total < 0:
        raise wrong_field(call, "meta.total_count", "a whole number", total)
    return total


def _listed_job(job: dict[str, Any], call: str) -> dict[str, Any]:
    """An export job of the list, with the `job_id` and `created_at` (Unix seconds) read to
    find the job a lost answer made (MinApp data export API, 获取导出任务列表)."""
    if isinstance(job.get("job_id"), bool) or not isinstance(job.get("job_id"), (str, int)):
        raise wrong_field(call, "objects[].job_id", "a string", job.get("job_id"))
    created = job.get("created_at")
    if isinstance(created, bool) or not isinstance(created, (int, float)):
        raise wrong_field(call, "objects[].created_at", "a number (Unix seconds)", created)
    return {**job, "created_at": float(created)}


def _created_job_id(response: httpx.Response) -> str | None:
    """`job_id` of a create's answer ({"status": "ok", "job_id": ...}, data export API,
    返回示例); None when the body is not JSON or has no usable id."""
    try:
        job = json_object(response).get("job_id")
    except Retryable:
        return None
    if isinstance(job, bool) or not isinstance(job, (str, int)) or not job:
        return None
    return str(job)


def _dump(handle: dict[str, Any]) -> str:
    return json.dumps(handle, ensure_ascii=False, separators=(",", ":"))
