"""Putting a backup back into WeChat Cloud Development (the `FileImportPlatform` side of
`WeChatClient`, which mixes this class in).

1. `tcb/databasecollectionadd` makes the target collection when the restore goes into a new one;
2. `tcb/uploadfile` hands out a COS form upload into the env's own storage, and the backup
   object is POSTed there as multipart/form-data, streamed (never held whole);
3. `tcb/databasemigrateimport` imports that file; `tcb/databasemigratequeryinfo` says how far.

A mini program reached through a third-party platform uses the same `/tcb/*` calls with its
authorizer_access_token ("第三方调用 ... 可通过使用 authorizer_access_token 代商家进行调用" on each
page below), or with only the platform's component_access_token the `componenttcb/*` forms:
`componenttcb/dbcollection?action=add`, `componenttcb/uploadfile`, `componenttcb/dbimport` and
`componenttcb/dbmigrationstate` (open platform pages "数据库集合管理", "获取上传文件链接",
"数据库导入").
"""

from __future__ import annotations

import logging
import re
import secrets
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import httpx

from shared.adapters.http import describe_transport_error, is_loopback_url
from shared.domain.errors import Fatal, Forgotten, Retryable
from shared.logs import register_secret
from shared.platforms.wechat.api import AnswerLost, shown_url, whole_number
from shared.ports import ImportProgress, RestoreMode

if TYPE_CHECKING:
    from shared.platforms.wechat.api import WeChatApi
    from shared.platforms.wechat.platform import Routes
    from shared.platforms.wechat.settings import WeChatSource

log = logging.getLogger(__name__)

RESTORE_DIR = "baas-backup-restores"  # where restore files go in the env's cloud storage
MODES = frozenset({"new", "insert", "upsert"})
# databasemigrateimport's conflict_mode: 1 INSERT, 2 UPSERT
# (https://developers.weixin.qq.com/miniprogram/dev/wxcloud/reference-http-api/database/databaseMigrateImport.html).
# A new collection was made for this restore, so nothing of the user's can be overwritten
# there: upsert makes a file sent again (a retried start) converge instead of refusing
# every document it already wrote.
CONFLICT_MODES = {"new": 2, "insert": 1, "upsert": 2}
FILE_TYPES = {"json": 1, "csv": 2}  # same page: file_type 1 JSON, 2 CSV
RUNNING = ("waiting", "migrating", "pending", "running")
ERROR_BODY_LIMIT = 64 * 1024
_NAME_RE = re.compile(r"[^\x00-\x1f\x7f\"\\]+")


@dataclass(frozen=True)
class RestoreRoutes:
    add: str
    add_action: bool  # componenttcb/dbcollection does several things; "add" creates
    upload: str
    import_: str


# https://developers.weixin.qq.com/miniprogram/dev/wxcloud/reference-http-api/database/databaseCollectionAdd.html,
# .../reference-http-api/storage/uploadFile.html, .../reference-http-api/database/databaseMigrateImport.html
TCB_RESTORE = RestoreRoutes("/tcb/databasecollectionadd", False, "/tcb/uploadfile",
                            "/tcb/databasemigrateimport")
# https://developers.weixin.qq.com/doc/oplatform/openApi/cloudbase-common/db-management/api_dbcollectionmanage,
# .../openApi/cloudbase-batch/file-mgnt/api_getuploadfilelink.html, .../cloudbase-batch/db-mgnt/api_dbimport
COMPONENT_RESTORE = RestoreRoutes("/componenttcb/dbcollection", True, "/componenttcb/uploadfile",
                                  "/componenttcb/dbimport")


@dataclass(frozen=True)
class UploadForm:
    """What uploadfile answered: where to POST the file and the form's credentials."""

    url: str
    token: str
    authorization: str
    cos_file_id: str | None


class WeChatRestore:
    """`RestorablePlatform` and `FileImportPlatform` for `WeChatClient`."""

    if TYPE_CHECKING:  # provided by WeChatClient
        source: WeChatSource
        _api: WeChatApi
        _download: httpx.Client
        _counts: dict[str, int] | None
        _counts_lock: threading.Lock
        routes: Routes

        def _list_collections(self) -> list[str]: ...

        def _status(self, platform_job_id: str) -> dict[str, Any]: ...

        def _undocumented_status(self, kind: str, platform_job_id: str, status: str) -> str: ...

    @property
    def restore_modes(self) -> frozenset[str]:
        return MODES

    @property
    def _restore_routes(self) -> RestoreRoutes:
        return COMPONENT_RESTORE if self.routes.listing_action else TCB_RESTORE

    # the target --------------------------------------------------------------------------
    def target_exists(self, collection: str) -> bool:
        with self._counts_lock:
            return collection in self._list_collections()

    def count(self, collection: str) -> int:
        """The collection's document `count` from the listing (databasecollectionget pages
        until offset >= pager.Total; each collection comes with name, count, size, ...)."""
        with self._counts_lock:
            names = self._list_collections()
            counts = dict(self._counts or {})
        if collection not in names:
            raise Fatal(f"collection {collection!r} does not exist in env {self.source.env!r} "
                        f"(WeChat {self.routes.listing} does not list it)")
        value = counts.get(collection)
        if value is None:
            raise Fatal(f"WeChat {self.routes.listing} listed collection {collection!r} of env "
                        f"{self.source.env!r} without a numeric `count`; this product does not "
                        "recognise that answer")
        return value

    def create_target(self, collection: str, like: str) -> None:
        """databasecollectionadd {env, collection_name}. Collections are schemaless, so `like`
        gives nothing to copy (its indexes are not recreated). WeChat's errcode for a name
        that exists is not documented for this call (wx-server-sdk users see -502006): any
        refusal is checked against the listing, and a collection that is there is success."""
        routes = self._restore_routes
        body: dict[str, Any] = {"env": self.source.env, "collection_name": collection}
        params = None
        if routes.add_action:
            body["action"] = "add"
            params = {"action": "add"}
        try:
            self._api.call(routes.add, body, params)
        except Fatal as refused:
            if not self.target_exists(collection):
                raise Fatal(f"could not create collection {collection!r} in env "
                            f"{self.source.env!r}: {refused}") from None
            log.info("the target collection exists already", extra={"collection": collection})
            return
        log.info("target collection created", extra={"collection": collection})

    # the import --------------------------------------------------------------------------
    def send_import(self, collection: str, mode: RestoreMode, *, file_type: str, name: str,
                    chunks: Iterable[bytes], size: int) -> str | None:
        """Upload the file to `baas-backup-restores/<collection>/<name>` in the env's storage
        (the same name again overwrites it) and start importing it; WeChat's import job id.

        Not idempotent once WeChat accepted the import: a second call starts a second job
        (insert mode then counts the documents already written as rejected; upsert and
        new rewrite them with the same content)."""
        if mode not in MODES:
            raise Fatal(f"WeChat restores in mode new, insert or upsert, not {mode!r}")
        if file_type not in FILE_TYPES:
            raise Fatal(f"WeChat imports JSON Lines or CSV files, not {file_type!r}")
        path = storage_path(collection, name)
        form = self._upload_form(path)
        self._post_form(form, path, chunks, size)
        routes = self._restore_routes
        body = {"env": self.source.env, "collection_name": collection, "file_path": path,
                "file_type": FILE_TYPES[file_type], "stop_on_error": False,
                "conflict_mode": CONFLICT_MODES[mode]}
        try:
            # Each call WeChat carries out starts an import job: one repeated here after a
            # lost answer would leave the id of a job that (in mode insert) rejects every
            # record the first one wrote. The caller sends the part again instead, knowing
            # an earlier import of it may have run.
            answer = self._api.call(routes.import_, body, repeatable=False)
        except AnswerLost as lost:
            raise Retryable(f"{lost}: the import of {path} into {collection!r} may have "
                            "started; its answer was lost") from None
        job = answer.get("job_id")
        if whole_number(job) is None:
            # The import may have started: never start another one blindly.
            raise Fatal(f"WeChat {routes.import_} answered without a numeric job_id (fields: "
                        f"{', '.join(sorted(answer)) or 'none'}); the import of {path} into "
                        f"{collection!r} may have started: check the env's database console")
        log.info("WeChat import started", extra={"collection": collection, "bytes": size,
                                                 "platform_job_id": str(job)})
        return str(job)

    def check_import(self, collection: str, import_id: str) -> ImportProgress:
        """databasemigratequeryinfo: waiting / migrating run on; success reports
        record_success and record_fail; fail reports error_msg."""
        if whole_number(import_id) is None:
            raise Fatal(f"{import_id!r} is not a WeChat import job id")
        try:
            info = self._status(import_id)
        except Forgotten:
            raise Forgotten(f"WeChat no longer knows import job {import_id}") from None
        status = info.get("status")
        message = str(info.get("error_msg") or info.get("err_msg") or "")
        if status in RUNNING:
            return ImportProgress("running")
        if status == "success":
            return ImportProgress("done", imported=_record_count(info, "record_success"),
                                  rejected=_record_count(info, "record_fail"), message=message)
        if status == "fail":
            return ImportProgress(
                "failed", imported=_record_count(info, "record_success"),
                rejected=_record_count(info, "record_fail"),
                message=f"WeChat import job {import_id} into {collection!r} failed: "
                        f"{message or 'no message'}")
        if not isinstance(status, str) or not status:  # status: a string, on every answer
            said = "without status" if "status" not in info else f"status = {status!r}"
            raise Fatal(
                f"WeChat {self.routes.status} answered {said} for import job {import_id} "
                f"(fields: {', '.join(sorted(info)) or 'none'}; expected status: waiting, "
                "migrating, success or fail); check that the source's api_base is WeChat's API "
                "and not a proxy that rewrites answers, and report the answer's fields if it is")
        # as an export's: waited for, then failed naming it (DOCUMENTED_STATUSES, platform.py)
        return ImportProgress("failed", message=self._undocumented_status("import", import_id, status))

    # upload ------------------------------------------------------------------------------
    def _upload_form(self, path: str) -> UploadForm:
        answer = self._api.call(self._restore_routes.upload, {"env": self.source.env, "path": path})
        fields = {name: answer.get(name) for name in ("url", "token", "authorization")}
        if not all(isinstance(v, str) and v and "\r" not in v and "\n" not in v
                   for v in fields.values()) or not str(fields["url"]).startswith(("https://", "http://")):
            raise Fatal(
                f"WeChat {self._restore_routes.upload} for env {self.source.env!r} answered in a "
                f"shape this product does not recognise (fields: {', '.join(sorted(answer)) or 'none'}; "
                "expected `url`, `token` and `authorization` as strings)")
        if str(fields["url"]).startswith("http://") and not is_loopback_url(self.source.api_base):
            raise Fatal(f"WeChat {self._restore_routes.upload} handed out a plain-http upload URL "
                        f"({shown_url(str(fields['url']))}); the form's credentials are sent only "
                        "over https")
        token, authorization = str(fields["token"]), str(fields["authorization"])
        register_secret(token)
        register_secret(authorization)
        register_secret(_signature_of(authorization))
        cos_file_id = answer.get("cos_file_id")
        # componenttcb/uploadfile's answer lists no cos_file_id although its usage table
        # sends one as x-cos-meta-fileid: without it, the field is left out.
        return UploadForm(str(fields["url"]), token, authorization,
                          cos_file_id if isinstance(cos_file_id, str) and cos_file_id else None)

    def _post_form(self, form: UploadForm, path: str, chunks: Iterable[bytes], size: int) -> None:
        """The multipart POST that uploadfile's page describes: fields key (the path),
        Signature (authorization), x-cos-security-token (token), x-cos-meta-fileid
        (cos_file_id) and file. The URL is COS, not WeChat: no access token goes there, it
        is reached only at a public address (loopback for the local emulator), and a
        redirect is not followed (the form carries credentials)."""
        body = MultipartBody(form, path, chunks, size)
        where = shown_url(form.url)
        try:
            with self._download.stream(
                    "POST", form.url, content=body.stream(), follow_redirects=False,
                    headers={"Content-Type": body.content_type,
                             "Content-Length": str(body.length)}) as response:
                status = response.status_code
                detail = _cos_error(response) if status >= 300 else ""
        except httpx.TransportError as exc:
            raise Retryable(f"upload of the restore file to {where} failed after "
                            f"{body.sent} of {size} bytes ({describe_transport_error(exc)})") from None
        if 200 <= status < 300:
            log.info("restore file uploaded", extra={"bytes": size, "path": path})
            return
        what = f"upload of the restore file to {where} answered HTTP {status}{detail}"
        if status in (401, 403) or status >= 500 or status in (408, 409, 429):
            # 403: the signature ran out (or the clock is off): a fresh uploadfile next time
            raise Retryable(f"{what}; it will be asked for a fresh upload link and sent again")
        if 300 <= status < 400:
            raise Fatal(f"{what}: a redirect, not followed since the form carries the "
                        "upload credentials; WeChat's upload URL should take the file itself")
        raise Fatal(f"{what}: COS refused the file (e.g. too large for the env's storage, or "
                    "storage not enabled); check the env's cloud storage in its console")


class MultipartBody:
    """A multipart/form-data body around a streamed file, its length known in advance."""

    def __init__(self, form: UploadForm, path: str, chunks: Iterable[bytes], size: int) -> None:
        self._boundary = f"baas-backup-{secrets.token_hex(16)}"
        fields = [("key", path), ("Signature", form.authorization),
                  ("x-cos-security-token", form.token)]
        if form.cos_file_id is not None:
            fields.append(("x-cos-meta-fileid", form.cos_file_id))
        head = "".join(f'--{self._boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'
                       f"{value}\r\n" for name, value in fields)
        filename = path.rsplit("/", 1)[-1]
        head += (f'--{self._boundary}\r\nContent-Disposition: form-data; name="file"; '
                 f'filename="{filename}"\r\nContent-Type: application/octet-stream\r\n\r\n')
        self._head = head.encode("utf-8")
        self._tail = f"\r\n--{self._boundary}--\r\n".encode()
        self._chunks = chunks
        self._size = size
        self.length = len(self._head) + size + len(self._tail)
        self.sent = 0  # file bytes handed to the connection so far

    @property
    def content_type(self) -> str:
        return f"multipart/form-data; boundary={self._boundary}"

    def stream(self) -> Iterator[bytes]:
        yield self._head
        for chunk in self._chunks:
            if not chunk:
                continue
            if self.sent + len(chunk) > self._size:
                raise Fatal(f"the backup object holds more than the {self._size} bytes it was "
                            "said to have; it changed since it was measured: verify the backup")
            self.sent += len(chunk)
            yield chunk
        if self.sent != self._size:
            raise Retryable(f"the backup object ended after {self.sent} of its {self._size} "
                            "bytes; the upload was abandoned and will be sent again")
        yield self._tail


def storage_path(collection: str, name: str) -> str:
    """`baas-backup-restores/<collection, percent-encoded>/<name>`: the caller's name is
    unique per restore part; the target's folder keeps restores into different collections
    apart even when they share a name."""
    parts = name.split("/")
    if not name or not _NAME_RE.fullmatch(name) or any(p in ("", ".", "..") for p in parts):
        raise Fatal(f"{name!r} cannot name a restore file: use printable characters without "
                    "quotes or backslashes, and no empty, '.' or '..' path segment")
    folder = quote(collection, safe="")
    return f"{RESTORE_DIR}/{folder.replace('.', '%2E') if folder in ('.', '..') else folder}/{name}"


def _record_count(info: dict[str, Any], field: str) -> int | None:
    """record_success / record_fail: a number (or digits); absent means not reported."""
    value = info.get(field)
    if value is None:
        return None
    count = whole_number(value)
    if count is None:
        raise Fatal(f"WeChat databasemigratequeryinfo answered {field} = {value!r}, not a number; "
                    "this product does not recognise that answer")
    return count


def _signature_of(authorization: str) -> str | None:
    match = re.search(r"q-signature=([^&]+)", authorization)
    return match.group(1) if match else None


def _cos_error(response: httpx.Response) -> str:
    """COS's error code and message from its XML answer, e.g. ` (AccessDenied: Request has
    expired)`; empty when the body says nothing readable."""
    data = b""
    for piece in response.iter_raw():
        data += piece
        if len(data) >= ERROR_BODY_LIMIT:
            break
    text = data[:ERROR_BODY_LIMIT].decode("utf-8", "replace")
    found = [re.search(rf"<{tag}>([^<]{{0,200}})</{tag}>", text) for tag in ("Code", "Message")]
    code, message = (m.group(1).strip() if m else "" for m in found)
    return f" ({code}: {message})" if code or message else ""
