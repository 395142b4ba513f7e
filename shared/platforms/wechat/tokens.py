"""Where a WeChat source's access token comes from, and who may renew it.

- `stable_token` (default): `cgi-bin/stable_token` hands every caller the same token, so
  fetching it never disturbs the user's other servers. It is never forced (force_refresh
  would retire their token): a rejected token handed back again is waited for.
- `legacy_token`: `cgi-bin/token`; each call invalidates the previous token about five minutes
  later, breaking every other server of the mini program. Only when chosen explicitly.
- an external token the user owns (${ENV} or their token service's URL): read, never renewed;
  if WeChat rejects it the job fails saying so.
- third-party platform: the `component_access_token` (from the platform's appid, secret and
  verify ticket, or external), and a mini program's `authorizer_access_token` (from its
  refresh token with the component token, or external).

Tokens the product fetches itself are shared through the state table's cache by all three
functions, until five minutes before they expire, and fetched by one function at a time.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta, timezone
from typing import Any

import httpx

from shared.adapters.http import describe_transport_error
from shared.domain.errors import BackupError, Fatal, Retryable, TokenRejected
from shared.logs import register_secret
from shared.platforms.wechat.api import (
    PLATFORM_ALLOW_LIST,
    WECHAT_ALLOW_LIST,
    AuthorizationRefused,
    Scope,
    TokenSource,
    exchange,
    shown_url,
)
from shared.platforms.wechat.settings import (
    VERIFY_TICKET_ENV,
    PlatformAccess,
    TokenService,
    WeChatSource,
)
from shared.ports import TokenCache

log = logging.getLogger(__name__)

EARLY_REFRESH = timedelta(minutes=5)
DEFAULT_TTL = 7200
# "只要商家不解除授权，authorizer_refresh_token 一直有效" (a new authorization replaces it):
# https://developers.weixin.qq.com/doc/knowledge/07e2d7fc2d6a1edf.html. A kept refresh token
# is therefore kept for good; a shorter life would fall back to the configured one, which
# WeChat retired when it handed this one back. A refused kept one still falls back.
REFRESH_TOKEN_TTL = timedelta(days=100 * 365)


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _credential_error(error: BackupError, scope: Scope) -> BackupError:
    """At a token endpoint a "token" errcode means the credentials themselves are wrong."""
    if isinstance(error, TokenRejected):
        return Fatal(f"{error}: the {scope.credentials} is wrong; fix it")
    return error


def _issued(answer: dict[str, Any], field: str, path: str, scope: Scope) -> tuple[str, int]:
    """The token in `field` and its lifetime, from an answer documented as `{field,
    expires_in}` (e.g. https://developers.weixin.qq.com/miniprogram/dev/OpenApiDoc/
    mp-access-token/getStableAccessToken.html); one without the token is not an answer this
    product knows, and is not taken for a token."""
    token = answer.get(field)
    if not isinstance(token, str) or not token:
        fields = ", ".join(sorted(answer)) or "none"
        raise Fatal(
            f"WeChat {path} answered without {field} (fields: {fields}; expected {field} and "
            f"expires_in) for source {scope.source!r}: check its api_base (another service may "
            "be answering there); if that is right, WeChat's answer changed: report these fields"
        )
    return token, _lifetime(answer, path, scope)


def _lifetime(answer: dict[str, Any], path: str, scope: Scope) -> int:
    """expires_in: the token's remaining life in seconds, a number (as digits too), 0 for a
    token about to lapse (getStableAccessToken hands back the current token with what is
    left of it, page cited at _issued). Only an absent one means WeChat's usual 7200."""
    value = answer.get("expires_in")
    if value is None:
        return DEFAULT_TTL
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str) and value.isascii() and value.isdigit():
        return int(value)
    raise Fatal(
        f"WeChat {path} answered expires_in = {value!r} (expected the token's remaining life "
        f"in seconds, a whole number) for source {scope.source!r}: check its api_base (another "
        "service may be answering there); if that is right, WeChat's answer changed: report it"
    )


# getStableAccessToken (https://developers.weixin.qq.com/miniprogram/dev/OpenApiDoc/
# mp-access-token/getStableAccessToken.html): normal mode hands every caller the token it holds
# valid and renews it itself 5 minutes before it lapses (注意事项); force_refresh "会导致上次获取的
# access_token 失效" (retires the token every other server holds) and is limited to 20 a day,
# 30 s apart. So a rejected token normal mode hands back again is waited for, never forced.
class _StableTokenHandedBack(Retryable):
    """Normal-mode stable_token handed back the token WeChat just rejected."""

    def __init__(self) -> None:
        super().__init__(
            "cgi-bin/stable_token hands back the same token, which it holds valid; baas-backup "
            "does not force a refresh (force_refresh retires the token your other servers hold, "
            "and is limited to 20 a day) and tries again later. If this persists, check that "
            "api_base is WeChat's and that no other server of the mini program forces refreshes"
        )


_FETCH_LOCKS: dict[str, threading.Lock] = {}
_FETCH_LOCKS_GUARD = threading.Lock()

# The trigger, the poller and the finisher are separate SCF functions, so separate
# processes: a fetch is claimed in the state table (cache_claim, create-only on every
# backend), one function fetches and the others wait for what it stores. Each cgi-bin/token
# call retires the token before it (API-NOTES.md, WeChat, "Token, legacy"), and an
# authorizer refresh token WeChat replaces in an exchange (the authorizer_refresh_token of
# https://developers.weixin.qq.com/doc/oplatform/Third-party_Platforms/2.0/api/ThirdParty/
# token/api_authorizer_token.html) is refused to the exchanges racing it. The claim
# outlives a fetch (at most a component token and an authorizer exchange, each renewed
# once: four requests, each given up after 60 s without an answer, shared/adapters/http.py),
# so it is not taken from a function still fetching; one left by a function stopped
# mid-fetch lapses.
FETCH_CLAIM_FOR = timedelta(minutes=5)
FETCH_WAIT_SECONDS = 30.0  # a fetch takes a second or two; then the call is tried again
FETCH_POLL_SECONDS = 0.2


def _fetch_lock(key: str) -> threading.Lock:
    """One fetch of a cached token at a time in this process, whichever source's client
    asks (the poller calls them from several threads; two sources may be two envs of one
    mini program): they queue here rather than each polling the state table's claim."""
    with _FETCH_LOCKS_GUARD:
        return _FETCH_LOCKS.setdefault(key, threading.Lock())


class _FetchedElsewhere(Retryable):
    """Another function held the fetch claim for longer than this one waits."""

    def __init__(self, claim: str) -> None:
        super().__init__(
            f"another baas-backup function has been fetching this token for over "
            f"{FETCH_WAIT_SECONDS:g} s (claim {claim!r} in the state table's cache); the call "
            f"is tried again later. A function stopped mid-fetch leaves the claim for at most "
            f"{FETCH_CLAIM_FOR.total_seconds() / 60:g} minutes")


class CachedToken:
    """A token this product fetches itself, shared through the state table's cache and
    fetched by one function at a time."""

    def __init__(self, cache: TokenCache, key: str,
                 fetch: Callable[[str | None], tuple[str, int]]) -> None:
        self._cache = cache
        self._key = key
        self._claim = f"{key}:fetching"
        self._fetch = fetch  # (token to avoid) -> (token, expires_in)
        self._fetching = _fetch_lock(key)

    def token(self) -> str:
        cached = self._cache.cache_get(self._key, _now())
        if cached:
            register_secret(cached)
            return cached
        with self._fetching:
            return self._fetched_once(None)

    def renew(self, rejected: str, reason: str) -> str:
        with self._fetching:
            try:
                return self._fetched_once(rejected)
            except _StableTokenHandedBack as exc:
                raise Retryable(f"{reason}: {exc}") from None  # with the errcode WeChat gave

    def _fetched_once(self, rejected: str | None) -> str:
        """The cached token unless it is `rejected`; else fetched by whichever function
        claims the fetch, and waited for by the others."""
        deadline = time.monotonic() + FETCH_WAIT_SECONDS
        while True:
            cached = self._cached(rejected)
            if cached:  # another thread or function fetched it meanwhile
                return cached
            now = _now()
            if self._cache.cache_claim(self._claim, "fetching", now + FETCH_CLAIM_FOR, now):
                try:  # the cache again: the previous holder may have stored it since
                    return self._cached(rejected) or self._fetch_and_store(rejected)
                finally:
                    self._cache.cache_delete(self._claim)
            if time.monotonic() >= deadline:
                raise _FetchedElsewhere(self._claim)
            time.sleep(FETCH_POLL_SECONDS)

    def _cached(self, rejected: str | None) -> str | None:
        cached = self._cache.cache_get(self._key, _now())
        if not cached or cached == rejected:
            return None
        register_secret(cached)
        return cached

    def _fetch_and_store(self, avoid: str | None) -> str:
        if avoid is not None:  # no function takes the rejected token while this one fetches
            self._cache.cache_delete(self._key)
        token, expires_in = self._fetch(avoid)
        register_secret(token)
        self._cache.cache_put(self._key, token, _now() + timedelta(seconds=expires_in) - EARLY_REFRESH)
        return token


class OwnedToken:
    """A token another system owns: from the config (${ENV}) or from the owner's token
    service. Never renewed here; a rejected token is asked for again only from its owner."""

    def __init__(self, settings: TokenService, what: str, http: httpx.Client) -> None:
        self._settings = settings
        self._what = what  # e.g. "the access token of source 'shop'"
        self._http = http
        self._held: str | None = None
        self._held_until = 0.0

    def token(self) -> str:
        if self._settings.access_token is not None:
            value = self._settings.access_token.get_secret_value()
            register_secret(value)
            return value
        if self._held is None or time.monotonic() >= self._held_until:
            return self._ask_service()
        return self._held

    def renew(self, rejected: str, reason: str) -> str:
        owner = "its ${ENV} variable" if self._settings.url is None else "your token service"
        advice = (f"{reason}: WeChat rejected {self._what}, which comes from {owner}. "
                  "baas-backup never renews a token it does not own; ")
        if self._settings.url is None:
            raise Fatal(advice + "put a valid token into the variable (it is read at each "
                                 "invocation) or let the product fetch one (token: stable_token)")
        fresh = self._ask_service()
        if fresh == rejected:
            raise Fatal(advice + "the token service handed back the same token; fix the "
                                 "service so that it serves a current token")
        return fresh

    def _ask_service(self) -> str:
        url = self._settings.url
        assert url is not None
        headers = {}
        if self._settings.authorization is not None:
            headers["Authorization"] = self._settings.authorization.get_secret_value()
            register_secret(headers["Authorization"])
            register_secret(headers["Authorization"].partition(" ")[2])  # without "Basic "
        where = f"token service {shown_url(url)}"
        try:
            response = self._http.get(url, headers=headers)
        except httpx.TransportError as exc:
            raise Retryable(f"{where}: {describe_transport_error(exc)}") from None
        if response.status_code >= 500:
            raise Retryable(f"{where}: HTTP {response.status_code}")
        if response.status_code != 200:
            raise Fatal(f"{where} answered HTTP {response.status_code}; check the url and "
                        "authorization of the token settings")
        try:
            answer = response.json()
            token = str(answer["access_token"])
            expires_in = int(answer.get("expires_in") or 300)
        except (ValueError, KeyError, TypeError):
            raise Fatal(f'{where} must answer JSON like {{"access_token": "...", "expires_in": '
                        "7200}; it did not") from None
        if not token:
            raise Fatal(f"{where} answered an empty access_token")
        register_secret(token)
        # Held for this invocation; asked again when its stated lifetime runs out or WeChat
        # rejects it, so a long invocation follows the owner's rotations.
        self._held, self._held_until = token, time.monotonic() + max(30, expires_in - 60)
        return token


# app tokens ----------------------------------------------------------------------------
def app_token(source: WeChatSource, cache: TokenCache, http: httpx.Client, scope: Scope) -> TokenSource:
    """The token of a mini program reached with its own credentials."""
    mode = source.token.mode
    if mode == "external":
        return OwnedToken(source.token, f"the access token of source {source.name!r}", http)
    assert source.secret is not None  # config validation requires it for these modes
    secret = source.secret.get_secret_value()
    register_secret(secret)
    base = source.api_base

    def stable(avoid: str | None) -> tuple[str, int]:
        token, expires_in = _stable_token(http, base, source.appid, secret, scope, force=False)
        if token == avoid:
            raise _StableTokenHandedBack()
        return token, expires_in

    def legacy(avoid: str | None) -> tuple[str, int]:
        path = "/cgi-bin/token"
        params = {"grant_type": "client_credential", "appid": source.appid, "secret": secret}
        try:
            answer = exchange(http, "GET", f"{base}{path}", path=path, scope=scope, params=params)
        except BackupError as exc:
            raise _credential_error(exc, scope) from None
        log.warning("fetched a token with the legacy cgi-bin/token: the previous token of this "
                    "mini program stops working in about 5 minutes", extra={"appid": source.appid})
        return _issued(answer, "access_token", path, scope)

    if mode == "legacy_token":
        return CachedToken(cache, f"wechat:legacy_token:{source.appid}", legacy)
    return CachedToken(cache, f"wechat:stable_token:{source.appid}", stable)


def _stable_token(http: httpx.Client, base: str, appid: str, secret: str, scope: Scope, *,
                  force: bool) -> tuple[str, int]:
    path = "/cgi-bin/stable_token"
    body = {"grant_type": "client_credential", "appid": appid, "secret": secret,
            "force_refresh": force}
    try:
        answer = exchange(http, "POST", f"{base}{path}", path=path, scope=scope, json=body)
    except BackupError as exc:
        raise _credential_error(exc, scope) from None
    return _issued(answer, "access_token", path, scope)


def app_scope(source: WeChatSource) -> Scope:
    access = source.platform
    if access is None:
        return Scope(source.name, source.appid, source.env,
                     f"appid or app secret of source {source.name!r}", WECHAT_ALLOW_LIST)
    return Scope(source.name, source.appid, source.env,
                 f"component_appid or component_secret of the wechat-platform of source "
                 f"{source.name!r}", PLATFORM_ALLOW_LIST)


# third-party platform ------------------------------------------------------------------
def component_token(access: PlatformAccess, cache: TokenCache, http: httpx.Client, scope: Scope,
                    environ: Mapping[str, str] | None = None) -> TokenSource:
    """The platform's component_access_token: fetched with its secret and verify ticket, or
    one the user owns."""
    platform = access.platform
    if platform.component_token is not None:
        return OwnedToken(platform.component_token,
                          f"the component_access_token of platform {platform.component_appid}", http)
    assert platform.component_secret is not None  # config validation requires one of the two
    secret = platform.component_secret.get_secret_value()
    register_secret(secret)

    def fetch(avoid: str | None) -> tuple[str, int]:
        path = "/cgi-bin/component/api_component_token"
        body = {"component_appid": platform.component_appid, "component_appsecret": secret,
                "component_verify_ticket": _verify_ticket(access, environ)}
        try:
            answer = exchange(http, "POST", f"{platform.api_base}{path}", path=path, scope=scope,
                              json=body)
        except BackupError as exc:
            raise _credential_error(exc, scope) from None
        return _issued(answer, "component_access_token", path, scope)

    return CachedToken(cache, f"wechat:component_token:{platform.component_appid}", fetch)


def _verify_ticket(access: PlatformAccess, environ: Mapping[str, str] | None) -> str:
    """From the config, else read now from the environment: the ticket changes every few
    hours, so it is wanted only when a component token must really be fetched."""
    if access.platform.verify_ticket is not None:
        ticket = access.platform.verify_ticket.get_secret_value()
    else:
        ticket = (environ if environ is not None else os.environ).get(VERIFY_TICKET_ENV, "")
    if not ticket:
        raise Fatal(
            "a component_access_token has to be fetched but there is no component_verify_ticket: "
            f"set verify_ticket: ${{VAR}} on the wechat-platform source or export {VERIFY_TICKET_ENV}"
        )
    register_secret(ticket)
    return ticket


class RefreshedAuthorizerToken(CachedToken):
    """A mini program's authorizer_access_token, obtained with its refresh token and the
    platform's component token. A refresh token WeChat hands back in exchange is kept in the
    cache and used from then on."""

    def __init__(self, access: PlatformAccess, component: TokenSource, cache: TokenCache,
                 http: httpx.Client, scope: Scope) -> None:
        assert access.authorizer_token is not None and access.authorizer_token.refresh_token
        platform = access.platform
        super().__init__(cache, f"wechat:authorizer_token:{platform.component_appid}:{scope.appid}",
                         self._exchange)
        self._configured_refresh = access.authorizer_token.refresh_token.get_secret_value()
        register_secret(self._configured_refresh)
        self._refresh_key = f"wechat:authorizer_refresh:{platform.component_appid}:{scope.appid}"
        self._component = component
        self._http = http
        self._scope = scope
        self._platform = platform

    def _exchange(self, avoid: str | None) -> tuple[str, int]:
        kept = self._cache.cache_get(self._refresh_key, _now())
        try:
            return self._exchange_with(kept or self._configured_refresh)
        except AuthorizationRefused:  # only WeChat refusing it retires the kept one
            if not kept or kept == self._configured_refresh:
                raise
            log.warning("the kept authorizer refresh token was refused; trying the configured one")
            self._cache.cache_delete(self._refresh_key)
            return self._exchange_with(self._configured_refresh)

    def _exchange_with(self, refresh: str) -> tuple[str, int]:
        path = "/cgi-bin/component/api_authorizer_token"
        body = {"component_appid": self._platform.component_appid,
                "authorizer_appid": self._scope.appid, "authorizer_refresh_token": refresh}

        def post(component_token: str) -> dict[str, Any]:
            return exchange(self._http, "POST", f"{self._platform.api_base}{path}", path=path,
                            scope=self._scope, params={"component_access_token": component_token},
                            json=body)

        component_token = self._component.token()
        try:
            answer = post(component_token)
        except TokenRejected as exc:
            try:
                answer = post(self._component.renew(component_token, str(exc)))
            except TokenRejected as again:
                raise Fatal(f"{again}: a freshly issued component token was rejected too") from None
        token, expires_in = _issued(answer, "authorizer_access_token", path, self._scope)
        handed_back = str(answer.get("authorizer_refresh_token") or "")
        if handed_back and handed_back != refresh:
            register_secret(handed_back)
            self._cache.cache_put(self._refresh_key, handed_back, _now() + REFRESH_TOKEN_TTL)
        return token, expires_in


def platform_app_token(source: WeChatSource, cache: TokenCache, http: httpx.Client, scope: Scope,
                       environ: Mapping[str, str] | None = None) -> tuple[TokenSource, bool]:
    """The token for a mini program under a wechat-platform, and whether it is the component
    token (used with componenttcb/*) rather than an authorizer token (plain /tcb/*)."""
    access = source.platform
    assert access is not None
    authorizer = access.authorizer_token
    if authorizer is not None and authorizer.refresh_token is None:
        return OwnedToken(authorizer, f"the authorizer_access_token of source {source.name!r}",
                          http), False
    component = component_token(access, cache, http, scope, environ)
    if authorizer is None:
        return component, True
    return RefreshedAuthorizerToken(access, component, cache, http, scope), False
