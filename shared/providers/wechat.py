"""WeChat Cloud Development (CloudBase/TCB) over its HTTP API.

Token from `cgi-bin/stable_token` (never the legacy `cgi-bin/token`, which breaks the
user's other servers), export with `tcb/databasemigrateexport`, progress with
`tcb/databasemigratequeryinfo`, then a download of the pre-signed `file_url`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import httpx

from shared.config import Timing, WeChatSource
from shared.errors import Fatal, Forgotten, PlatformError, Retryable, RetryLater, TokenRejected
from shared.http import describe_transport_error, make_client
from shared.logs import register_secret
from shared.providers.base import Progress, TokenCache, with_retries

log = logging.getLogger(__name__)

FILE_TYPES = {"json": 1, "csv": 2}
TOKEN_ERRCODES = {40001, 40014, 41001, 42001}
BUSY_ERRCODES = {-1, -1000}
LATER_ERRCODES = {-501003, -501004, -501015, 45009, 45011}
INVALID_REQUEST_ERRCODES = {40097, 40101, 43002, 44002, 47001}
TOKEN_EARLY_REFRESH = timedelta(minutes=5)
DOWNLOAD_CHUNK = 1 << 20
QUERY_INFO = "/tcb/databasemigratequeryinfo"


def _errcode_error(path: str, errcode: int, errmsg: str, source: WeChatSource) -> PlatformError:
    """Map a WeChat errcode to what the pipeline should do about it."""
    where = f"WeChat {path} errcode {errcode} ({errmsg})"
    if errcode in BUSY_ERRCODES:
        return Retryable(f"{where}: platform busy, will retry")
    if errcode in LATER_ERRCODES:
        return RetryLater(f"{where}: quota or concurrency limit, will try again later")
    if errcode in TOKEN_ERRCODES:
        return TokenRejected(where)
    if errcode == 40164:
        return Fatal(
            f"{where}: this function's outbound IP is not on the mini program's IP allow-list. "
            "Give the SCF functions a fixed egress IP (VPC + NAT gateway, or SCF's fixed public "
            "egress IP setting) and add it under WeChat console > Development > API IP allow-list"
        )
    if errcode in (40013, 40125, 41002, 41004):
        return Fatal(f"{where}: appid or app secret of source {source.name!r} is wrong; fix them")
    if errcode == 85088:
        return Fatal(
            f"{where}: cloud development is not enabled for appid {source.appid}; "
            "enable it or fix the appid"
        )
    if errcode == -502005:
        return Fatal(
            f"{where}: the collection does not exist in env {source.env!r}; "
            "create it or remove it from the source's collections"
        )
    if errcode == 40097 and path == QUERY_INFO:
        return Forgotten(f"{where}: WeChat no longer knows this export job")
    if errcode in INVALID_REQUEST_ERRCODES:
        return Fatal(f"{where}: the request was rejected as invalid; check env and query")
    return Fatal(f"{where}: not a known retryable error")


class WeChatProvider:
    def __init__(
        self,
        source: WeChatSource,
        cache: TokenCache,
        timing: Timing,
        client: httpx.Client | None = None,
    ) -> None:
        self.source = source
        self.file_type = source.file_type
        self._cache = cache
        self._timing = timing
        self._http = client or make_client()
        self._cache_key = f"wechat:stable_token:{source.appid}"
        register_secret(source.secret.get_secret_value())

    # discovery and export ------------------------------------------------------
    def targets(self) -> list[str]:
        return list(self.source.collections)

    def query_for(self, target: str) -> str:
        default = f"db.collection({json.dumps(target, ensure_ascii=False)}).get()"
        return self.source.queries.get(target, default)

    def start(self, target: str, job_id: str) -> str:
        body = {
            "env": self.source.env,
            "file_path": f"baas-backup/{job_id}.{'csv' if self.file_type == 'csv' else 'json'}",
            "file_type": FILE_TYPES[self.file_type],
            "query": self.query_for(target),
        }
        answer = self._call("/tcb/databasemigrateexport", body)
        job = answer.get("job_id")
        if job in (None, ""):
            raise Retryable("WeChat databasemigrateexport answered without a job_id")
        return str(job)

    def check(self, target: str, remote_id: str) -> Progress:
        info = self._query_info(remote_id)
        status = info.get("status")
        if status in ("waiting", "migrating", "pending", "running"):
            return Progress("running")
        if status == "success":
            failed = int(info.get("record_fail") or 0)
            if failed:
                return Progress(
                    "failed",
                    message=f"WeChat exported {target!r} with {failed} failed records: "
                    f"{info.get('error_msg') or 'no message'}",
                )
            return Progress("ready", expected_records=int(info.get("record_success") or 0))
        if status == "fail":
            return Progress(
                "failed",
                message=f"WeChat export job {remote_id} failed: {info.get('error_msg') or 'no message'}",
            )
        raise Retryable(f"WeChat export job {remote_id} has an unknown status {status!r}")

    def open(self, target: str, remote_id: str, part: int = 0) -> Iterator[bytes]:
        """Stream the export; a link that expired (403) is replaced once by a fresh one."""
        if part:
            raise Fatal(f"WeChat exports come in one part; part {part} does not exist")
        for attempt in range(2):
            url = self._file_url(remote_id)
            with self._http.stream("GET", url) as response:
                if response.status_code == 403 and attempt == 0:
                    log.info("download link expired; asking WeChat for a fresh one")
                    continue
                if response.status_code != 200:
                    raise Retryable(
                        f"download of WeChat export {remote_id} answered HTTP {response.status_code}"
                    )
                received = 0
                try:
                    for chunk in response.iter_bytes(DOWNLOAD_CHUNK):
                        received += len(chunk)
                        yield chunk
                except httpx.TransportError as exc:
                    raise Retryable(
                        f"download of WeChat export {remote_id} was cut off after {received} "
                        f"bytes ({describe_transport_error(exc)})"
                    ) from None
                return
        raise Retryable(f"WeChat gave an expired download link twice for export {remote_id}")

    # platform calls ------------------------------------------------------------
    def _query_info(self, remote_id: str) -> dict[str, Any]:
        return self._call(QUERY_INFO, {"env": self.source.env, "job_id": int(remote_id)})

    def _file_url(self, remote_id: str) -> str:
        info = self._query_info(remote_id)
        url = info.get("file_url")
        if info.get("status") != "success" or not url:
            raise Retryable(f"WeChat export {remote_id} has no download link yet")
        return str(url)

    def _call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST with the access token; busy answers are retried, a rejected token is
        refreshed once."""

        def attempt() -> dict[str, Any]:
            try:
                return self._post(path, body, self._token())
            except TokenRejected:
                rejected = self._cache.cache_get(self._cache_key, _now())
                self._cache.cache_delete(self._cache_key)
                log.warning("WeChat rejected the access token; fetching a new one once")
                try:
                    return self._post(path, body, self._token(avoid=rejected))
                except TokenRejected as again:
                    raise Fatal(f"{again}: a freshly issued token was rejected too") from None

        return with_retries(
            attempt, attempts=3, base_seconds=self._timing.retry_base_seconds
        )

    def _post(self, path: str, body: dict[str, Any], token: str) -> dict[str, Any]:
        url = f"{self.source.api_base}{path}"
        try:
            response = self._http.post(url, params={"access_token": token}, json=body)
        except httpx.TransportError as exc:
            raise Retryable(f"WeChat {path}: {describe_transport_error(exc)}") from None
        if response.status_code >= 500:
            raise Retryable(f"WeChat {path}: HTTP {response.status_code}")
        try:
            answer: dict[str, Any] = response.json()
        except ValueError:
            raise Retryable(f"WeChat {path}: answer is not JSON (HTTP {response.status_code})") from None
        errcode = int(answer.get("errcode") or 0)
        if errcode:
            raise _errcode_error(path, errcode, str(answer.get("errmsg", "")), self.source)
        return answer

    def _token(self, avoid: str | None = None) -> str:
        cached = self._cache.cache_get(self._cache_key, _now())
        if cached and cached != avoid:
            register_secret(cached)
            return cached
        token, expires_in = self._fetch_token(force_refresh=False)
        if token == avoid:
            # stable_token hands back the same token while it thinks it valid; force once
            token, expires_in = self._fetch_token(force_refresh=True)
        expires_at = _now() + timedelta(seconds=expires_in) - TOKEN_EARLY_REFRESH
        self._cache.cache_put(self._cache_key, token, expires_at)
        return token

    def _fetch_token(self, *, force_refresh: bool) -> tuple[str, int]:
        body = {
            "grant_type": "client_credential",
            "appid": self.source.appid,
            "secret": self.source.secret.get_secret_value(),
            "force_refresh": force_refresh,
        }
        path = "/cgi-bin/stable_token"
        try:
            response = self._http.post(f"{self.source.api_base}{path}", json=body)
        except httpx.TransportError as exc:
            raise Retryable(f"WeChat {path}: {describe_transport_error(exc)}") from None
        if response.status_code >= 500:
            raise Retryable(f"WeChat {path}: HTTP {response.status_code}")
        answer = response.json()
        errcode = int(answer.get("errcode") or 0)
        if errcode:
            error = _errcode_error(path, errcode, str(answer.get("errmsg", "")), self.source)
            raise Fatal(str(error)) if isinstance(error, TokenRejected) else error
        token = str(answer["access_token"])
        register_secret(token)
        return token, int(answer.get("expires_in") or 7200)


def _now() -> datetime:
    return datetime.now(timezone.utc)
