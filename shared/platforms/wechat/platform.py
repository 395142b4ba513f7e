"""WeChat Cloud Development (CloudBase/TCB) over its HTTP API.

Discovery with `tcb/databasecollectionget` (every run, for `collections: all`), export with
`tcb/databasemigrateexport`, progress with `tcb/databasemigratequeryinfo`, then a download
of the pre-signed `file_url`. Restoring is `restore.WeChatRestore`'s business. A mini program reached through a third-party platform with the
platform's component token uses the `componenttcb/*` equivalents instead. Where the token
comes from is `wechat_tokens`' business; errcodes are classified in `wechat_api`.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, NoReturn
from urllib.parse import urlsplit

import httpx

from shared.adapters.http import (
    describe_transport_error,
    download_chunks,
    is_loopback_url,
    make_client,
    make_download_client,
)
from shared.domain.errors import BackupError, Fatal, Retryable, RetryLater
from shared.platforms.statuses import wait_for_documented
from shared.platforms.wechat.api import InvalidRequest, WeChatApi, shown_url, whole_number
from shared.platforms.wechat.restore import WeChatRestore
from shared.platforms.wechat.settings import WeChatSource
from shared.platforms.wechat.tokens import app_scope, app_token, platform_app_token
from shared.ports import PlatformServices, Progress

log = logging.getLogger(__name__)

FILE_TYPES = {"json": 1, "csv": 2}
LISTING_PAGE = 100  # collections asked for per listing call (WeChat's own default is 10 or 20)
LISTING_TRIES = 3  # listings repeated while the environment changes under them
# databaseMigrateQueryInfo's `status` is "Export status", a string, its example "success"
# (seeds/wechat-databasemigratequeryinfo.en.txt); the statuses seen are waiting, migrating,
# success and fail (API-NOTES.md, WeChat). Another may be a new in-between state, so, as for
# MinApp's undocumented job statuses, it is waited for (from its first answer, kept in the
# state table's cache) without spending the job's tries, then fails naming it (statuses.py).
DOCUMENTED_STATUSES = "waiting, migrating, success, fail"
UNDOCUMENTED_STATUS_WAIT = timedelta(minutes=30)


@dataclass(frozen=True)
class Routes:
    """The same three operations, as plain TCB calls or as third-party platform calls."""

    export: str
    status: str
    listing: str
    listing_default_page: int
    listing_action: bool  # componenttcb/dbcollection does several things; "get" lists


TCB = Routes("/tcb/databasemigrateexport", "/tcb/databasemigratequeryinfo",
             "/tcb/databasecollectionget", 10, listing_action=False)
COMPONENT_TCB = Routes("/componenttcb/dbexport", "/componenttcb/dbmigrationstate",
                       "/componenttcb/dbcollection", 20, listing_action=True)


class WeChatClient(WeChatRestore):
    def __init__(
        self,
        source: WeChatSource,
        services: PlatformServices,
        client: httpx.Client | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.source = source
        self.file_type = source.file_type
        self._http = client or make_client()
        # file_url is chosen by WeChat: fetched only from public addresses, never inflated
        # without a bound (see shared.adapters.http)
        self._download = make_download_client(api_base=source.api_base)
        scope = app_scope(source)
        if source.platform is None:
            tokens, via_component = app_token(source, services.tokens, self._http, scope), False
        else:
            tokens, via_component = platform_app_token(source, services.tokens, self._http, scope, environ)
        self.routes = COMPONENT_TCB if via_component else TCB
        self._api = WeChatApi(source.api_base, tokens, scope, self._http,
                              retry_base_seconds=services.retry_base_seconds)
        self._discovery: dict[str, Any] | None = None
        self._counts: dict[str, int] | None = None  # per collection, from the last listing
        self._counts_lock = threading.Lock()  # the poller checks exports from several threads
        self._starts_paused: str | None = None
        self._cache = services.tokens  # the state table's cache, shared by every invocation

    # discovery -------------------------------------------------------------------------
    def collections(self) -> list[str]:
        """The listed collections, or with `collections: all` every collection the
        environment has right now that passes include/exclude."""
        if self.source.collections != "all":
            self._discovery = None
            return list(self.source.collections)
        found = self._list_collections()
        chosen = [name for name in found if self.source.wanted(name)]
        self._discovery = {
            "found": found,
            "excluded": [name for name in found if not self.source.wanted(name)],
        }
        log.info("collections discovered", extra={
            "source": self.source.name, "found": len(found), "chosen": len(chosen)})
        if not found:
            raise Fatal(
                f"source {self.source.name!r}: WeChat {self.routes.listing} listed no collection "
                f"in env {self.source.env!r}; check the env id, that the env has collections, "
                "and for a third-party platform that the mini program granted the platform its "
                "cloud development permission sets"
            )
        if not chosen:
            raise Fatal(
                f"source {self.source.name!r}: include/exclude left none of the {len(found)} "
                f"collections WeChat {self.routes.listing} found in env {self.source.env!r} "
                f"({', '.join(found[:20])}{', ...' if len(found) > 20 else ''}); fix the "
                "source's include/exclude patterns"
            )
        return chosen

    def discovery(self) -> dict[str, Any] | None:
        """What the last `collections()` found, for the run manifest (None: nothing discovered)."""
        return self._discovery

    def _list_collections(self) -> list[str]:
        """Page until the reported total; a listing during which the environment changed
        (collections created or dropped between pages) is taken again."""
        page = LISTING_PAGE
        listings: list[tuple[list[str], list[int]]] = []
        for _ in range(LISTING_TRIES):
            try:
                names, totals, consistent = self._one_listing(page)
            except InvalidRequest as exc:
                if page == self.routes.listing_default_page:
                    raise
                log.warning("WeChat refused the listing page size; using its default",
                            extra={"reason": str(exc), "page": page})
                page = self.routes.listing_default_page
                names, totals, consistent = self._one_listing(page)
            if consistent:
                return names
            listings.append((names, totals))
            log.info("the collection list did not add up to its total; reading it again")
        raise self._listing_short(listings)

    def _listing_short(self, listings: list[tuple[list[str], list[int]]]) -> BackupError:
        """No listing added up to its total. The same listing every time means the server
        lists fewer collections than its total (a proxy dropping items, or a changed API),
        which no retry fixes; different ones mean collections were created or dropped."""
        names, totals = listings[-1]
        seen = (f"WeChat {self.routes.listing} listed {len(names)} distinct collection(s) of "
                f"env {self.source.env!r} but reported a total of "
                f"{' then '.join(map(str, totals))}")
        if all(listing == listings[0] for listing in listings):
            return Fatal(
                f"{seen}, the same in all {len(listings)} listings, so the list is incomplete "
                f"and nothing is chosen from it; check that source {self.source.name!r}'s "
                "api_base is WeChat's API and not a proxy that drops items or pages, and "
                "report the answers if it is"
            )
        return Retryable(
            f"{seen} in the last of {len(listings)} listings, which all differed: collections "
            "were created or dropped while they were listed; start the backup again when that "
            f"has stopped, and if nothing changes them, check source {self.source.name!r}'s "
            "api_base (a proxy that drops items or pages)"
        )

    def _one_listing(self, page: int) -> tuple[list[str], list[int], bool]:
        """Pages by offset, each page after the first asked from one before the next offset:
        its first collection must be the last one read. Else a collection was dropped (or
        created) ahead of the offset and the list moved by it between the pages, which a
        total kept by a creation elsewhere would not show: a collection on the seam would be
        skipped without a sign (databaseCollectionGet pages by limit and offset, page cited
        at _listed_items)."""
        names: list[str] = []
        counts: dict[str, int] = {}
        totals: list[int] = []  # each page's, in order
        offset = 0
        seams_held = True
        while True:
            answer = self._listing_page(offset - 1 if names else 0, page)
            items = self._listed_items(answer)
            total = self._listed_total(answer)
            if total not in totals:
                totals.append(total)
            if names:
                if not items or items[0]["name"] != names[-1]:
                    seams_held = False  # the list moved between the pages: read it again
                    break
                items = items[1:]
            names.extend(str(item["name"]) for item in items)
            counts.update({str(item["name"]): count for item in items
                           if (count := whole_number(item.get("count"))) is not None})
            offset += len(items)
            if not items or offset >= total:
                break
        unique = list(dict.fromkeys(names))
        consistent = seams_held and len(totals) == 1 and len(unique) == len(names) == total
        self._counts = counts
        return unique, totals, consistent

    # doctor ------------------------------------------------------------------------------
    def probe(self) -> str:
        """`doctor`: a token (fetched now: the doctor's token cache starts empty) and one
        collection listing of the env (databasecollectionget, limit 1), from this network.
        An IP allow-list refusal (errcode 40164 / 61004) comes back as the egress-IP advice."""
        answer = self._listing_page(0, 1)
        self._listed_items(answer)
        total = self._listed_total(answer)
        return (f"token fetched for appid {self.source.appid}; env {self.source.env!r} answered "
                f"with {total} collection(s)")

    def _listed_items(self, answer: dict[str, Any]) -> list[dict[str, Any]]:
        """`collections: [{name, count, ...}]` as documented for databasecollectionget
        (https://developers.weixin.qq.com/miniprogram/dev/wxcloud/reference-http-api/database/databaseCollectionGet.html)
        and componenttcb/dbcollection; any other shape fails loudly rather than reading as
        "no collections"."""
        items = answer.get("collections", [] if "pager" in answer or "total" in answer else None)
        if not isinstance(items, list) or not all(
                isinstance(item, dict) and isinstance(item.get("name"), str) for item in items):
            self._unknown_listing(answer)
        return items

    def _listed_total(self, answer: dict[str, Any]) -> int:
        """How many collections the env has: `pager.Total` (databaseCollectionGet's Return
        parameters, page cited at _listed_items) or `total` (componenttcb/dbcollection). It
        is the only sign that the listing is complete: a page the server cut short would
        otherwise pass as the last one, and the collections after it would go unseen."""
        total = _total(answer)
        if total is None:
            self._unknown_listing(answer)
        return total

    def _unknown_listing(self, answer: dict[str, Any]) -> NoReturn:
        pager = answer.get("pager")
        fields = ", ".join(sorted(answer)) or "none"
        if isinstance(pager, dict):
            fields += f"; pager: {', '.join(sorted(pager)) or 'none'}"
        raise Fatal(
            f"source {self.source.name!r}: WeChat {self.routes.listing} for env "
            f"{self.source.env!r} answered in a shape this product does not recognise "
            f"(fields: {fields}; expected `collections`: a list of objects with `name`, and "
            "`pager.Total` or `total`: a whole number); check the env id and the platform's "
            "permission sets, and report the answer's fields if they are right"
        )

    def _listing_page(self, offset: int, limit: int) -> dict[str, Any]:
        body: dict[str, Any] = {"env": self.source.env, "limit": limit, "offset": offset}
        params = None
        if self.routes.listing_action:
            body["action"] = "get"
            params = {"action": "get"}
        return self._api.call(self.routes.listing, body, params)

    # export ------------------------------------------------------------------------------
    def query_for(self, collection: str) -> str:
        default = f"db.collection({json.dumps(collection, ensure_ascii=False)}).get()"
        return self.source.queries.get(collection, default)

    def start(self, collection: str, job_id: str) -> str:
        """Begin an export. Once WeChat says its export quota or concurrency is used up, the
        remaining starts of this invocation wait without asking until an export finishes."""
        if self._starts_paused:
            raise RetryLater(self._starts_paused)
        body = {
            "env": self.source.env,
            "file_path": f"baas-backup/{job_id}.{'csv' if self.file_type == 'csv' else 'json'}",
            "file_type": FILE_TYPES[self.file_type],
            "query": self.query_for(collection),
        }
        try:
            answer = self._api.call(self.routes.export, body)
        except RetryLater as exc:
            self._starts_paused = (f"{exc} (no further exports started in env "
                                   f"{self.source.env!r} until a running one finishes)")
            raise
        return self._export_job_id(answer)

    def _export_job_id(self, answer: dict[str, Any]) -> str:
        """The export's `job_id`, documented as a number (Return parameters of
        https://developers.weixin.qq.com/miniprogram/dev/wxcloud/reference-http-api/database/databaseMigrateExport.html
        and of the third-party platform's "Database export" (dbExport) page); anything else
        is not an export this product can follow, so it is not retried as one."""
        job = answer.get("job_id")
        if whole_number(job) is not None:
            return str(job)
        raise Fatal(
            f"WeChat {self.routes.export} answered {_said(answer, 'job_id')} (fields: "
            f"{', '.join(sorted(answer)) or 'none'}; expected job_id: a number) for source "
            f"{self.source.name!r}, so the export cannot be followed; check its api_base "
            "(another service may be answering there); if that is right, WeChat's answer "
            "changed: report these fields"
        )

    def start_blocked(self) -> str | None:
        """Why no export should be started now (WeChat's quota or concurrency limit was hit
        in this invocation and no export has finished since), or None."""
        return self._starts_paused

    def check(self, collection: str, platform_job_id: str) -> Progress:
        info = self._status(platform_job_id)
        status = info.get("status")
        if status in ("waiting", "migrating", "pending", "running"):
            return Progress("running")
        self._starts_paused = None  # a slot is free again
        message = info.get("error_msg") or info.get("err_msg") or "no message"
        if status == "success":
            failed = self._record_count(info, "record_fail", platform_job_id, required=False)
            if failed:
                return Progress(
                    "failed",
                    message=f"WeChat exported {collection!r} with {failed} failed records: {message}",
                )
            expected = self._record_count(info, "record_success", platform_job_id, required=True)
            return Progress("ready", expected_records=expected,
                            platform_count=self._count_of(collection))
        if status == "fail":
            return Progress("failed", message=f"WeChat export job {platform_job_id} failed: {message}")
        if not isinstance(status, str) or not status:
            raise Fatal(
                f"WeChat {self.routes.status} answered {_said(info, 'status')} for export job "
                f"{platform_job_id} (fields: {', '.join(sorted(info)) or 'none'}; expected "
                "status: waiting, migrating, success or fail, per databaseMigrateQueryInfo's "
                "Return parameters, cited at _record_count); check that source "
                f"{self.source.name!r}'s api_base is WeChat's API and not a proxy that rewrites "
                "answers, and report the answer's fields if it is"
            )
        return Progress("failed", message=self._undocumented_status("export", platform_job_id, status))

    def _undocumented_status(self, kind: str, platform_job_id: str, status: str) -> str:
        """A status not in DOCUMENTED_STATUSES for an export or import (`kind`) job: waited
        for, without spending the job's tries and saying so in its error (RetryLater), for
        UNDOCUMENTED_STATUS_WAIT from its first answer; then the message to fail it with."""
        said = (f"WeChat {kind} job {platform_job_id} answered status {status[:80]!r} (from "
                f"{self.routes.status}), which is not one WeChat's answers are known to give "
                f"({DOCUMENTED_STATUSES}); check the job in the env's database console, and that "
                f"source {self.source.name!r}'s api_base is WeChat's API and not a proxy that "
                "rewrites answers")
        return wait_for_documented(
            self._cache, f"wechat:odd-status:{kind}:{self.source.appid}:{platform_job_id}", said,
            _now(), UNDOCUMENTED_STATUS_WAIT)

    def _record_count(self, info: dict[str, Any], field: str, platform_job_id: str,
                      required: bool) -> int:
        """record_success / record_fail of a successful export: whole numbers (or digits).
        databasemigratequeryinfo returns both with every status answer, record_success being
        the number of records exported (Return parameters and example,
        https://developers.weixin.qq.com/miniprogram/dev/wxcloud/reference-http-api/database/databaseMigrateQueryInfo.html),
        so a success without record_success is never read as 0: an empty file would pass as
        a verified empty backup. An absent record_fail reports no failed record."""
        value = info.get(field)
        if value is None and not required:
            return 0
        if (count := whole_number(value)) is not None:
            return count
        said = f"without {field}" if field not in info else f"with {field} = {value!r}"
        raise Fatal(
            f"WeChat {self.routes.status} answered status 'success' for export job "
            f"{platform_job_id} {said} (fields: {', '.join(sorted(info)) or 'none'}; expected "
            f"{field}: the whole number of records, always given on success), so the export "
            "cannot be verified and is not stored; check that the source's api_base is WeChat's "
            "API and not a proxy that rewrites answers, and report the answer's fields if it is"
        )

    def open(self, collection: str, platform_job_id: str, part: int = 0, *,
             file_type: str | None = None) -> Iterator[bytes]:
        """Stream the export; a link that expired (403) is replaced once by a fresh one.
        The bytes are handed on as they come: `file_type` changes nothing here."""
        if part:
            raise Fatal(f"WeChat exports come in one part; part {part} does not exist")
        for attempt in range(2):
            url = self._file_url(platform_job_id)
            try:
                with self._download.stream("GET", url) as response:
                    if response.status_code == 403:
                        if attempt == 0:
                            log.info("download link expired; asking WeChat for a fresh one")
                            continue
                        raise Retryable(f"WeChat gave an expired download link twice for export "
                                        f"{platform_job_id} (HTTP 403 both times)")
                    if response.status_code != 200:
                        raise Retryable(
                            f"download of WeChat export {platform_job_id} answered HTTP {response.status_code}"
                        )
                    try:
                        yield from download_chunks(response)
                    except httpx.TransportError as exc:
                        # bytes off the wire so far, not only those already handed on in chunks
                        raise Retryable(
                            f"download of WeChat export {platform_job_id} was cut off after "
                            f"{response.num_bytes_downloaded} bytes ({describe_transport_error(exc)})"
                        ) from None
                    return
            except httpx.TransportError as exc:  # connecting (the body's own are caught above)
                raise Retryable(f"download of WeChat export {platform_job_id} failed before its "
                                f"first byte ({describe_transport_error(exc)}); the link's host "
                                "could not be reached") from None

    def _count_of(self, collection: str) -> int | None:
        """The collection's document `count` from databasecollectionget (WeChat's HTTP API
        page databaseCollectionGet documents each listed collection's name, count, size,
        index_count and index_size), for an unfiltered export only: a query of the user's own exports fewer on purpose. One
        listing serves every export that finishes in this invocation; a listing that fails
        only costs the cross-check."""
        if collection in self.source.queries:
            return None
        with self._counts_lock:  # one listing, whichever export asks first
            if self._counts is None or collection not in self._counts:
                try:
                    self._list_collections()
                except BackupError as exc:
                    log.warning("could not list collections to cross-check the export's count",
                                extra={"reason": str(exc)})
                    return None
            return (self._counts or {}).get(collection)

    def _status(self, platform_job_id: str) -> dict[str, Any]:
        return self._api.call(self.routes.status, {"env": self.source.env, "job_id": int(platform_job_id)})

    def _file_url(self, platform_job_id: str) -> str:
        """The export file's link: `file_url`, a string given with status success (Return
        parameters of databaseMigrateQueryInfo, cited at _record_count; its example and
        every link WeChat hands out are https COS URLs). A plain-http link is refused, as
        anyone on the path could read or swap the export, except to a loopback host when
        the API itself is on loopback (the local emulator serves plain HTTP)."""
        info = self._status(platform_job_id)
        if info.get("status") != "success":
            raise Retryable(f"WeChat export {platform_job_id} has no download link yet")
        url = info.get("file_url")
        if url is None or url == "":
            self._refuse_link(platform_job_id, _said(info, "file_url"), info)
        if not isinstance(url, str):  # its type only: it may hold a signed link
            self._refuse_link(platform_job_id, f"a file_url of type {type(url).__name__}", info)
        scheme = urlsplit(url).scheme.lower()
        local = scheme == "http" and is_loopback_url(url) and is_loopback_url(self.source.api_base)
        if scheme != "https" and not local:
            self._refuse_link(platform_job_id, f"a {scheme or 'schemeless'} file_url "
                              f"({shown_url(url)}), not https", info)
        return url

    def _refuse_link(self, platform_job_id: str, said: str, info: dict[str, Any]) -> NoReturn:
        raise Fatal(
            f"WeChat {self.routes.status} answered status 'success' for export job "
            f"{platform_job_id} with {said} (fields: {', '.join(sorted(info)) or 'none'}; "
            "expected file_url: the https link of the export file), so nothing is downloaded; "
            f"check that source {self.source.name!r}'s api_base is WeChat's API and not a "
            "proxy that rewrites answers, and report the answer's fields if it is"
        )


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _said(answer: dict[str, Any], field: str) -> str:
    """How `field` came in an answer, for a message: absent, or its value."""
    return f"without {field}" if field not in answer else f"{field} = {answer[field]!r}"


def _total(answer: dict[str, Any]) -> int | None:
    """How many collections the environment has: `pager.Total` (tcb) or `total` (componenttcb)."""
    pager = answer.get("pager")
    value = pager.get("Total") if isinstance(pager, dict) else answer.get("total")
    return whole_number(value)
