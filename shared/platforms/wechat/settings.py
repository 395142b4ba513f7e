"""Settings of WeChat Cloud Development sources: one mini program's environment
(`type: wechat`) or a third-party platform's authorized mini programs (`wechat-platform`)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Annotated, Any, Literal, Union

from pydantic import (
    BeforeValidator,
    Field,
    PrivateAttr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from shared.config.fields import (
    SHORT_ID,
    ConfigModel,
    EnvStr,
    Secret,
    SourceSettings,
    base_url,
    expand_references,
    pattern_in_words,
    refuse_userinfo,
)

WECHAT_APPID = pattern_in_words(r"^wx[0-9a-f]{16}$",
                                "must be wx and 16 of 0-9 and a-f, e.g. wx0123456789abcdef")
WECHAT_API_BASE = "https://api.weixin.qq.com"
# Names a query may declare before db.collection(...): only db.<member>.<member> chains, as
# in the dbExport page's sample "const Point = db.Geo.Point" (seeds/wechat-componenttcb-
# dbexport.en.txt, Sample Request Data; also `const _ = db.command`). No call is allowed in
# them, so no other collection can be named ahead of the one the query is for.
QUERY_DECLARATIONS = r"(?:\s*(?:const|let|var)\s+[A-Za-z_$][\w$]*\s*=\s*db(?:\.[A-Za-z_$][\w$]*)+\s*;?)*"
COLLECTIONS_HELP = "a list of collection names, or all (every collection, listed anew at each run)"


def _collections(value: Any, info: ValidationInfo) -> Any:
    """`all`, or a list of distinct names (${VAR} allowed in each)."""
    if isinstance(value, str):
        if value.strip() == "all":
            return "all"
        raise ValueError(f"must be {COLLECTIONS_HELP}")
    if not isinstance(value, list):
        raise ValueError(f"must be {COLLECTIONS_HELP}")
    if not value:
        raise ValueError("List should have at least 1 item; list the collections or write all")
    if not all(isinstance(name, str) for name in value):
        raise ValueError("collection names must be strings; quote names that look like numbers")
    names = [expand_references(name, info) for name in value]
    dupes = sorted({c for c in names if names.count(c) > 1})
    if dupes:
        raise ValueError(f"collections listed twice: {', '.join(dupes)}; list each once")
    if any(not c for c in names):
        raise ValueError("empty collection name; remove it")
    return names


Collections = Annotated[Union[Literal["all"], list[str]], BeforeValidator(_collections)]  # noqa: UP007


class _WeChatCollections(ConfigModel):
    """One cloud environment of one mini program and what to back up in it."""

    name: EnvStr = Field(
        pattern=SHORT_ID, description="Short id used in object keys: a-z 0-9 -."
    )
    appid: EnvStr = Field(pattern=WECHAT_APPID, description="Mini program appid.")
    env: EnvStr = Field(min_length=1, description="Cloud environment id.")
    collections: Collections = Field(
        description="Collections to back up: a list, or `all` (listed anew at every run)."
    )
    include: list[EnvStr] = Field(
        default_factory=list,
        description="With `collections: all`: only collections matching one of these glob "
        "patterns (`*`, `?`, `[abc]`), e.g. `order*`.",
    )
    exclude: list[EnvStr] = Field(
        default_factory=list,
        description="With `collections: all`: skip collections matching one of these glob "
        "patterns, e.g. `tmp_*`.",
    )
    file_type: Literal["json", "csv"] = Field(default="json", description="Export format.")
    queries: dict[EnvStr, EnvStr] = Field(
        default_factory=dict,
        description="Per-collection export query, e.g. db.collection('orders').where({...}).get().",
    )

    @field_validator("include", "exclude")
    @classmethod
    def _patterns(cls, value: list[str]) -> list[str]:
        if any(not isinstance(p, str) or not p.strip() for p in value):
            raise ValueError("empty pattern; remove it")
        return value

    def wanted(self, collection: str) -> bool:
        """Whether a discovered collection passes `include` and `exclude`."""
        included = not self.include or any(fnmatchcase(collection, p) for p in self.include)
        return included and not any(fnmatchcase(collection, p) for p in self.exclude)

    @model_validator(mode="after")
    def _filters_and_queries(self) -> _WeChatCollections:
        if self.collections != "all" and (self.include or self.exclude):
            raise ValueError(
                "include and exclude filter the collections found at each run; use them with "
                "collections: all, or edit the collections list instead"
            )
        if self.collections != "all":
            unknown = sorted(set(self.queries) - set(self.collections))
            if unknown:
                raise ValueError(
                    f"queries given for collections not listed: {', '.join(unknown)}; "
                    "add them to collections or remove the query"
                )
        for collection, query in self.queries.items():
            if not re.match(rf"""^{QUERY_DECLARATIONS}\s*db\.collection\(\s*(['"]){re.escape(collection)}\1\s*\)""",
                            query):
                raise ValueError(
                    f"query for {collection!r} must start with db.collection('{collection}')"
                )
            if self.collections == "all" and not self.wanted(collection):
                raise ValueError(
                    f"a query is given for {collection!r}, but include/exclude leave it out; "
                    "remove the query or change the patterns"
                )
        return self


class TokenService(ConfigModel):
    """Where a token that another system owns comes from. This product only reads it: it
    never renews or rotates it, and a token WeChat rejects fails the job loudly."""

    access_token: Secret | None = Field(
        default=None, description="The token itself, as ${ENV_VAR} (kept fresh by its owner)."
    )
    url: EnvStr | None = Field(
        default=None,
        description='Your token service: a GET answering {"access_token": "...", "expires_in": 7200}.',
    )
    authorization: Secret | None = Field(
        default=None, description="Authorization header sent to `url`, as ${ENV_VAR}."
    )

    @field_validator("url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        refuse_userinfo(value, "remove them from url and give them in the token settings' "
                               "authorization field as ${ENV_VAR} (e.g. Basic <base64 of "
                               "user:password>)")
        return base_url(value)

    def _external_problem(self, others: str = "") -> str | None:
        given = [f for f in ("access_token", "url") if getattr(self, f) is not None]
        if len(given) != 1:
            return f"give exactly one of access_token or url{others}"
        if self.authorization is not None and self.url is None:
            return "authorization is sent to url; add url or remove authorization"
        return None


class ExternalToken(TokenService):
    """A token that another system owns: given as ${ENV_VAR} or fetched from `url`."""

    @model_validator(mode="after")
    def _one_way(self) -> ExternalToken:
        problem = self._external_problem()
        if problem:
            raise ValueError(problem)
        return self


def _token_shorthand(value: Any) -> Any:
    """`token: legacy_token` means {mode: legacy_token}; {access_token|url: ...} is external."""
    if isinstance(value, str):
        return {"mode": value}
    if isinstance(value, dict) and "mode" not in value and ({"access_token", "url"} & set(value)):
        return {**value, "mode": "external"}
    return value


class WeChatToken(TokenService):
    """How the source gets its access token."""

    mode: Literal["stable_token", "legacy_token", "external"] = Field(
        default="stable_token",
        description="stable_token (default: never disturbs your other servers), legacy_token "
        "(cgi-bin/token: breaks your other servers' tokens; only if you must), or external "
        "(a token you own, from access_token or url).",
    )

    @model_validator(mode="after")
    def _fields_fit_mode(self) -> WeChatToken:
        if self.mode == "external":
            problem = self._external_problem(" with mode external")
            if problem:
                raise ValueError(problem)
        elif self.access_token or self.url or self.authorization:
            raise ValueError(
                f"access_token, url and authorization are for mode external, not {self.mode}; "
                "remove them or set mode: external"
            )
        return self


class WeChatSource(_WeChatCollections, SourceSettings):
    """A WeChat Cloud Development (CloudBase) environment reached with the mini program's own
    access token."""

    type: Literal["wechat"]
    secret: Secret | None = Field(
        default=None,
        description="App secret, as ${ENV_VAR}; needed by token modes stable_token and legacy_token.",
    )
    token: Annotated[WeChatToken, BeforeValidator(_token_shorthand)] = Field(
        default_factory=WeChatToken,
        description="stable_token (default), legacy_token, or a token you own: "
        "{access_token: ${VAR}} or {url: https://..., authorization: ${VAR}}.",
    )
    api_base: EnvStr = Field(
        default=WECHAT_API_BASE, description="API base URL (private gateways, tests)."
    )
    # Set only on the per-app sources a `wechat-platform` entry expands into.
    _platform: PlatformAccess | None = PrivateAttr(default=None)

    @property
    def platform(self) -> PlatformAccess | None:
        """The third-party platform this mini program is reached through, if any."""
        return self._platform

    @field_validator("api_base")
    @classmethod
    def _api_base(cls, value: str) -> str:
        return base_url(value)

    @model_validator(mode="after")
    def _secret_for_mode(self) -> WeChatSource:
        if self.token.mode != "external" and self.secret is None:
            raise ValueError(
                f"secret is required with token mode {self.token.mode}; add secret: ${{VAR}}, "
                "or use a token you own (token: {access_token: ${VAR}})"
            )
        return self


class AuthorizerToken(TokenService):
    """An authorized mini program's authorizer_access_token, for the plain /tcb/* calls."""

    refresh_token: Secret | None = Field(
        default=None,
        description="authorizer_refresh_token, as ${ENV_VAR}: the token is then obtained "
        "with the platform's component token (cgi-bin/component/api_authorizer_token).",
    )

    @model_validator(mode="after")
    def _one_way(self) -> AuthorizerToken:
        if self.refresh_token is not None:
            if self.access_token or self.url or self.authorization:
                raise ValueError(
                    "give exactly one of refresh_token, access_token or url; remove the others"
                )
            return self
        problem = self._external_problem(", or refresh_token")
        if problem:
            raise ValueError(problem)
        return self


class WeChatPlatformApp(_WeChatCollections):
    """A mini program that authorized the third-party platform; a source of its own."""

    authorizer_token: AuthorizerToken | None = Field(
        default=None,
        description="Omit to use componenttcb/* with the platform's component token; or "
        "{refresh_token: ${VAR}} / {access_token: ${VAR}} / {url: ...} for /tcb/* calls "
        "with an authorizer_access_token.",
    )


@dataclass(frozen=True)
class PlatformAccess:
    """How a mini program under a `wechat-platform` source is reached."""

    platform: WeChatPlatformSource
    authorizer_token: AuthorizerToken | None  # None: componenttcb/* with the component token


VERIFY_TICKET_ENV = "WECHAT_COMPONENT_VERIFY_TICKET"


class WeChatPlatformSource(SourceSettings):
    """A WeChat third-party platform (开放平台 component) backing up the mini programs that
    authorized it. Each entry of `apps` is a source of its own in runs, keys and manifests."""

    type: Literal["wechat-platform"]
    component_appid: EnvStr = Field(pattern=WECHAT_APPID, description="The platform's appid.")
    component_secret: Secret | None = Field(
        default=None, description="The platform's appsecret, as ${ENV_VAR}."
    )
    verify_ticket: Secret | None = Field(
        default=None,
        description="component_verify_ticket, as ${ENV_VAR}. If omitted, read from "
        f"${VERIFY_TICKET_ENV} when a component token has to be fetched.",
    )
    component_token: ExternalToken | None = Field(
        default=None,
        description="Instead of component_secret: a component_access_token you own "
        "({access_token: ${VAR}} or {url: ...}).",
    )
    api_base: EnvStr = Field(
        default=WECHAT_API_BASE, description="API base URL (private gateways, tests)."
    )
    apps: list[WeChatPlatformApp] = Field(
        min_length=1, description="The authorized mini programs to back up."
    )

    @field_validator("api_base")
    @classmethod
    def _api_base(cls, value: str) -> str:
        return base_url(value)

    @model_validator(mode="after")
    def _component_credentials(self) -> WeChatPlatformSource:
        if self.component_secret is not None and self.component_token is not None:
            raise ValueError(
                "give component_secret (the product fetches component tokens) or "
                "component_token (a token you own), not both"
            )
        if self.verify_ticket is not None and self.component_secret is None:
            raise ValueError("verify_ticket goes with component_secret; add component_secret or remove it")
        needing = [a.name for a in self.apps if a.authorizer_token is None
                   or a.authorizer_token.refresh_token is not None]
        if needing and self.component_secret is None and self.component_token is None:
            raise ValueError(
                f"apps {', '.join(needing)} need the platform's component_access_token; add "
                "component_secret: ${VAR} (and verify_ticket), or component_token"
            )
        return self

    def expand(self) -> list[SourceSettings]:
        return list(self.app_sources())

    def app_sources(self) -> list[WeChatSource]:
        """One `wechat` source per app, reached through this platform."""
        sources = []
        for app in self.apps:
            fields = {name: getattr(app, name) for name in _WeChatCollections.model_fields}
            source = WeChatSource.model_construct(
                type="wechat", secret=None, token=WeChatToken(), api_base=self.api_base, **fields
            )
            source._platform = PlatformAccess(self, app.authorizer_token)
            sources.append(source)
        return sources
