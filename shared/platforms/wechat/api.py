"""One conversation with the WeChat API: a POST carrying a token, its errcode classified for
the service layer, and a rejected token renewed once by whoever owns it.

Every WeChat answer is HTTP 200 with `{"errcode": 0, ...}` or a non-zero errcode. URLs carry
tokens, so no URL with a query string ever goes into a message.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

import httpx

from shared.adapters.http import describe_transport_error
from shared.domain.errors import BackupError, Fatal, Forgotten, Retryable, RetryLater, TokenRejected
from shared.retry import with_retries

log = logging.getLogger(__name__)

# The cloud-development codes (-50xxxx, -60xxxx) as WeChat's errcode page describes them:
# https://developers.weixin.qq.com/miniprogram/dev/wxcloud/reference/errcode.html
TOKEN_ERRCODES = {40001, 40014, 41001, 42001}
BUSY_ERRCODES = {
    -1, -1000,
    -501001,  # 云资源通用错误：云端系统错误 (cloud system error)
    -501002,  # 云资源通用错误：云端响应超时 (cloud response timed out)
    -502001,  # 云资源数据库错误：数据库请求失败 (database request failed)
    -502011,  # 云资源数据库错误：操作超时 (database operation timed out)
    -601001,  # 微信后台通用错误：系统错误 (WeChat back-end system error)
    -601003,  # 微信后台通用错误：系统网络错误 (WeChat back-end network error)
}
LATER_ERRCODES = {
    -501003,  # 请求次数超出环境配额 (requests over the env's quota)
    -501004,  # 请求并发数超出环境配额 (concurrent requests over the env's quota)
    -501015,  # 读请求次数配额耗尽 (read quota used up)
    -501016,  # 写请求次数配额耗尽 (write quota used up: an export writes its file)
    -501018,  # 资源不可用 (resource unavailable, e.g. an env being set up or suspended)
    45009, 45011,
}
INVALID_REQUEST_ERRCODES = {
    40097, 40101, 43002, 44002, 47001,
    -501007,  # 云资源通用错误：参数错误 (parameter error)
    -501020,  # 云资源通用错误：未知参数错误 (unknown parameter error)
    -502002,  # 云资源数据库错误：非法的数据库指令 (invalid database command: the query)
    -601002,  # 微信后台通用错误：系统参数错误 (system parameter error)
}
PERMISSION_ERRCODES = {
    -501019,  # 云资源通用错误：未授权操作 (unauthorised operation)
    -502003,  # 云资源数据库错误：无权限操作数据库 (no permission on the database)
}
CREDENTIAL_ERRCODES = {40013, 40125, 41002, 41004, 61011}
STATUS_PATHS = {"/tcb/databasemigratequeryinfo", "/componenttcb/dbmigrationstate"}


@dataclass(frozen=True)
class Scope:
    """Who is calling, so that an error can say exactly what to fix."""

    source: str
    appid: str
    env: str
    credentials: str  # what a wrong appid/secret means here, e.g. "appid or secret of source 'shop'"
    allow_list: str  # where a fixed egress IP has to be allow-listed


WECHAT_ALLOW_LIST = "the mini program's API IP allow-list (WeChat console > Development > Development settings)"
PLATFORM_ALLOW_LIST = (
    "the third-party platform's IP allow-list (open platform console > your platform > "
    "development settings)"
)


class InvalidRequest(Fatal):
    """WeChat refused the request itself (40097 invalid args, 40101 missing parameter, ...)."""

    def __init__(self, message: str, errcode: int) -> None:
        super().__init__(message)
        self.errcode = errcode


class AuthorizationRefused(Fatal):
    """WeChat refused a mini program's authorization of the platform or its
    authorizer_refresh_token (61023, 61003): the one answer that says a refresh token is no
    good, as opposed to a failure on the way to using it (ticket, IP allow-list, ...)."""


class AnswerLost(Retryable):
    """The request went out but no answer came (connection dropped or timed out after it
    was sent): WeChat may have carried it out."""


class _NotRepeated(Exception):
    """Carries an AnswerLost of a call that must not be sent twice past `with_retries`."""

    def __init__(self, lost: AnswerLost) -> None:
        super().__init__(str(lost))
        self.lost = lost


# httpx's errors raised before a request is on the wire: it cannot have been carried out.
UNSENT_ERRORS = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


class TokenSource(Protocol):
    """Hands out the token a call needs; `renew` is asked once when WeChat rejects it."""

    def token(self) -> str: ...

    def renew(self, rejected: str, reason: str) -> str:
        """A token other than `rejected`, or Fatal when there is none to be had (e.g. a token
        another system owns: this product never renews those)."""


def classify(path: str, errcode: int, errmsg: str, scope: Scope) -> BackupError:
    """Map a WeChat errcode to what the service layer should do about it."""
    where = f"WeChat {path} errcode {errcode} ({errmsg})"
    if errcode in BUSY_ERRCODES:
        return Retryable(f"{where}: platform busy")
    if errcode in LATER_ERRCODES:
        return RetryLater(f"{where}: quota, concurrency limit or resource unavailable")
    if errcode in TOKEN_ERRCODES:
        return TokenRejected(where)
    if errcode in (40164, 61004):
        return Fatal(
            f"{where}: this function's outbound IP is not on {scope.allow_list}. Give the SCF "
            "functions a fixed egress IP (`eip: true` in all three scf-*/serverless.yml, or a "
            "VPC with a NAT gateway), deploy, and add that IP (SCF console: function -> network "
            "configuration) to the allow-list"
        )
    if errcode in CREDENTIAL_ERRCODES:
        return Fatal(f"{where}: the {scope.credentials} is wrong; fix it")
    if errcode == 85088:
        return Fatal(
            f"{where}: cloud development is not enabled for appid {scope.appid}; "
            "enable it or fix the appid"
        )
    if errcode in (-501005, -501009):  # 环境信息异常 / 操作的资源对象非法或不存在
        return Fatal(
            f"{where}: WeChat does not recognise env {scope.env!r} (or what was asked of it) "
            f"for appid {scope.appid}; check the source's env id in the cloud development console"
        )
    if errcode in PERMISSION_ERRCODES:
        return Fatal(
            f"{where}: the caller may not use the database of env {scope.env!r}; check that "
            f"appid {scope.appid} owns the env and, for a third-party platform, that the mini "
            "program granted the platform its cloud development permission sets"
        )
    if errcode == -501017:  # 云资源通用错误：磁盘耗尽 (disk exhausted)
        return Fatal(
            f"{where}: env {scope.env!r} has no storage left for the export file; free space "
            "in its cloud storage or raise its plan"
        )
    if errcode == -501021:  # 云资源通用错误：操作不支持 (operation not supported)
        return Fatal(f"{where}: env {scope.env!r} does not support this operation; check its plan")
    if errcode == -502005:
        return Fatal(
            f"{where}: the collection does not exist in env {scope.env!r}; "
            "create it or remove it from the source's collections"
        )
    if errcode in (61005, 61006):
        return Fatal(
            f"{where}: the component_verify_ticket is expired or invalid. WeChat pushes a new one "
            "every 10 minutes to the platform's authorization event URL; put the latest in "
            "verify_ticket (or $WECHAT_COMPONENT_VERIFY_TICKET)"
        )
    if errcode in (61023, 61003):
        return AuthorizationRefused(
            f"{where}: mini program {scope.appid} has not authorized the platform, or its "
            "authorizer_refresh_token is no longer valid; have it authorize the platform again "
            "and update authorizer_token.refresh_token"
        )
    if errcode == 48001:
        return Fatal(
            f"{where}: this token may not call this API; for a third-party platform, the mini "
            f"program {scope.appid} must grant the platform its cloud development permissions"
        )
    if errcode == 40097 and path in STATUS_PATHS:
        return Forgotten(f"{where}: WeChat no longer knows this export job")
    if errcode in INVALID_REQUEST_ERRCODES:
        return InvalidRequest(f"{where}: the request was rejected as invalid; check env and query", errcode)
    return Fatal(f"{where}: not a known retryable error")


def shown_url(url: str) -> str:
    """A URL fit for a message: no query string (it may carry a key) and no userinfo
    (user:password@, which the config refuses but a platform's URL could carry)."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return f"{parts.scheme}://{host}{parts.path}"


def exchange(
    http: httpx.Client,
    method: str,
    url: str | httpx.URL,
    *,
    path: str,
    scope: Scope,
    params: dict[str, str] | None = None,
    json: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One request to WeChat: network trouble and 5xx are Retryable, errcodes classified."""
    try:
        response = http.request(method, url, params=params, json=json)
    except UNSENT_ERRORS as exc:
        raise Retryable(f"WeChat {path}: {describe_transport_error(exc)}") from None
    except httpx.TransportError as exc:
        raise AnswerLost(f"WeChat {path}: {describe_transport_error(exc)}") from None
    if response.status_code >= 500:
        raise Retryable(f"WeChat {path}: HTTP {response.status_code}")
    try:
        answer = response.json()
    except ValueError:
        raise Retryable(f"WeChat {path}: answer is not JSON (HTTP {response.status_code})") from None
    if not isinstance(answer, dict):
        raise Retryable(f"WeChat {path}: answer is not a JSON object")
    errcode = _errcode(answer, path, scope)
    if errcode:
        raise classify(path, errcode, str(answer.get("errmsg", "")), scope)
    return answer


def _errcode(answer: dict[str, Any], path: str, scope: Scope) -> int:
    """errcode: a number, 0 for ok (absent too), else one of the codes each page tables
    (e.g. "Error code" of seeds/wechat-componenttcb-dbexport.en.txt); its digits are the
    same code. Anything else is not an answer to classify, so it fails naming it."""
    value = answer.get("errcode")
    if value is None:
        return 0
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer():  # a JSON number written as 0.0
        return int(value)
    digits = value.removeprefix("-") if isinstance(value, str) else ""
    if digits.isascii() and digits.isdigit():
        return int(value)
    raise Fatal(
        f"WeChat {path} answered errcode = {str(value)[:80]!r} (expected a number) for source "
        f"{scope.source!r}: check its api_base (another service may be answering there); if "
        "that is right, WeChat's answer changed: report it"
    )


class WeChatApi:
    """POSTs to one API base with tokens from one `TokenSource`."""

    def __init__(
        self,
        base: str,
        tokens: TokenSource,
        scope: Scope,
        http: httpx.Client,
        *,
        retry_base_seconds: float,
    ) -> None:
        self._base = base
        self._tokens = tokens
        self.scope = scope
        self._http = http
        self._retry_base = retry_base_seconds

    def call(
        self, path: str, body: dict[str, Any], params: dict[str, str] | None = None, *,
        repeatable: bool = True,
    ) -> dict[str, Any]:
        """Busy answers are retried with backoff; a rejected token is renewed once. A call
        that is not `repeatable` (it starts something each time it is carried out) is not
        sent again when its answer was lost: the AnswerLost goes to the caller, who knows
        what a second one would mean."""

        def attempt() -> dict[str, Any]:
            try:
                return self._attempt(path, body, params)
            except AnswerLost as lost:
                if repeatable:
                    raise
                raise _NotRepeated(lost) from None

        try:
            return with_retries(attempt, attempts=3, base_seconds=self._retry_base)
        except _NotRepeated as stop:
            raise stop.lost from None

    def _attempt(
        self, path: str, body: dict[str, Any], params: dict[str, str] | None
    ) -> dict[str, Any]:
        token = self._tokens.token()
        try:
            return self._post(path, body, token, params)
        except TokenRejected as exc:
            log.warning("WeChat rejected the access token; asking its owner for another once")
            fresh = self._tokens.renew(token, str(exc))
            try:
                return self._post(path, body, fresh, params)
            except TokenRejected as again:
                raise Fatal(f"{again}: a freshly issued token was rejected too") from None

    def _post(
        self, path: str, body: dict[str, Any], token: str, params: dict[str, str] | None
    ) -> dict[str, Any]:
        query = tuple({**(params or {}), "access_token": token}.items())
        return exchange(self._http, "POST", _request_url(f"{self._base}{path}", query),
                        path=path, scope=self.scope, json=body)


@functools.lru_cache(maxsize=32)
def _request_url(url: str, query: tuple[tuple[str, str], ...]) -> httpx.URL:
    """The URL of a call, parsed once for its token. httpx parses a URL and its query again
    on every request given as text and parameters, and with a token's 150 characters that
    was half of a status check's CPU: a poller checking a thousand exports sends the same
    few URLs a thousand times."""
    return httpx.URL(url, params=dict(query))


def whole_number(value: Any) -> int | None:
    """A count or job id in an answer: a JSON number or the same number as its ASCII digits
    (str.isdigit alone also takes "²", which int() refuses). The pages
    name the fields without a usable type (databaseCollectionGet lists each collection's
    `count`, https://developers.weixin.qq.com/miniprogram/dev/wxcloud/reference-http-api/database/databaseCollectionGet.html;
    seeds/wechat-databasemigratequeryinfo.en.txt types record_success as "初始值"), so both
    readings are taken; `true`/`false` and anything else is no count."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value >= 0 else None
    if isinstance(value, str) and value.isascii() and value.isdigit():
        return int(value)
    return None
