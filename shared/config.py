"""Settings: one YAML file validated with pydantic, secrets only as ${ENV_VAR} references.

Every validation problem becomes one line naming the field, the bad value (never for
secret fields) and the fix, so a user can repair a config without reading code.
"""

from __future__ import annotations

import difflib
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

CONFIG_PATH_ENV = "BAAS_BACKUP_CONFIG"
DEFAULT_CONFIG_PATH = "backup.yaml"

_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_WHOLE_REFERENCE = re.compile(r"^\$\{([A-Za-z_][A-Za-z0-9_]*)\}$")


class ConfigError(ValueError):
    """An invalid config; `problems` holds one human-readable line per problem."""

    def __init__(self, problems: list[str], source: str = "config") -> None:
        self.problems = problems
        super().__init__(f"{source} is invalid:\n" + "\n".join(f"  - {p}" for p in problems))


def _environ(info: ValidationInfo) -> Mapping[str, str]:
    context = info.context or {}
    environ = context.get("environ")
    return environ if environ is not None else os.environ


def _expand_references(value: Any, info: ValidationInfo) -> Any:
    """Replace ${NAME} inside plain strings with the variable's value."""
    if not isinstance(value, str):
        return value
    environ = _environ(info)

    def substitute(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in environ:
            raise ValueError(f"environment variable {name} is not set; export it or edit the value")
        return environ[name]

    return _REFERENCE.sub(substitute, value)


def _resolve_secret(value: Any, info: ValidationInfo) -> Any:
    """Secrets must be a single ${NAME} reference, so no secret is ever committed."""
    if isinstance(value, SecretStr):
        return value
    if not isinstance(value, str):
        raise ValueError("must be a ${ENV_VAR} reference string")
    match = _WHOLE_REFERENCE.match(value.strip())
    if match is None:
        raise ValueError(
            "secrets may not be written into the config; put it in an environment "
            "variable and write ${VAR_NAME} here"
        )
    name = match.group(1)
    secret = _environ(info).get(name)
    if not secret:
        raise ValueError(f"environment variable {name} is not set or empty; export it")
    return SecretStr(secret)


EnvStr = Annotated[str, BeforeValidator(_expand_references)]
Secret = Annotated[
    SecretStr,
    BeforeValidator(_resolve_secret),
    Field(json_schema_extra={"writeOnly": True, "pattern": _WHOLE_REFERENCE.pattern}),
]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Destination(_Model):
    """Where backups land: a COS bucket (or any S3-compatible server for local runs)."""

    bucket: EnvStr = Field(description="COS bucket, named `name-APPID`.")
    region: EnvStr = Field(description="COS region, e.g. ap-guangzhou.")
    prefix: EnvStr = Field(
        default="baas-backup", description="Every object key starts with this folder."
    )
    endpoint: EnvStr | None = Field(
        default=None,
        description="Override for an S3/COS-compatible server, e.g. http://127.0.0.1:9000.",
    )
    anonymous: bool = Field(
        default=False, description="Send unsigned requests (only for local test servers)."
    )
    secret_id: Secret | None = Field(
        default=None,
        description="API key id; omit to use the SCF execution role's temporary keys.",
    )
    secret_key: Secret | None = Field(default=None, description="API key secret.")
    part_size_mb: int = Field(
        default=8, ge=5, le=1024, description="Multipart part size; memory use is about one part."
    )
    server_side_encryption: Literal["AES256"] | None = Field(
        default="AES256", description="COS server-side encryption; null to turn it off."
    )

    @field_validator("prefix")
    @classmethod
    def _clean_prefix(cls, value: str) -> str:
        parts = [p for p in value.split("/") if p]
        if any(p in (".", "..") for p in parts):
            raise ValueError("must not contain '.' or '..' segments; use a plain folder name")
        return "/".join(parts)

    @field_validator("endpoint")
    @classmethod
    def _check_endpoint(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^https?://[^/\s]+/?$", value):
            raise ValueError("must look like http(s)://host[:port] with no path")
        return value.rstrip("/") if value else value

    @model_validator(mode="after")
    def _keys_come_in_pairs(self) -> Destination:
        if (self.secret_id is None) != (self.secret_key is None):
            raise ValueError("secret_id and secret_key go together; set both or neither")
        return self


_STATE_URL_FORMS = (
    "cos:// (the default: in destination.bucket under <prefix>/_state/), sqlite:///PATH "
    "(one machine), or mysql+pymysql://USER:${PASSWORD_VAR}@HOST:3306/DATABASE"
)
_MYSQL_PASSWORD = re.compile(r"^(mysql\+pymysql://[^:@/]*:)([^@]*)(@)")
_PASSWORD_SLOT = "baas-backup-password-slot"  # noqa: S105 (a placeholder)


def _resolve_state_url(url: str, environ: Mapping[str, str]) -> str:
    """Expand ${VAR}s in a state URL and check its form. Messages never quote the URL: a
    misplaced literal password must not end up in an error."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    from shared.logs import register_secret

    scheme = url.split("://", 1)[0] if "://" in url else ""
    if url == "cos://":
        return url
    if scheme == "cos":
        raise ValueError("url: cos:// takes no bucket or path; the state always goes into "
                         "destination.bucket under <prefix>/_state/, so write just cos://")
    if scheme == "sqlite":
        if not url.startswith("sqlite:///") or url == "sqlite:///":
            raise ValueError("url: write sqlite:///PATH, e.g. sqlite:////tmp/state.sqlite3")
        return str(_expand_with(url, environ))
    if scheme in ("mysql", "mysql+mysqldb", "mariadb", "mariadb+pymysql"):
        raise ValueError(f"url: use the PyMySQL driver: mysql+pymysql://... instead of {scheme}://")
    if scheme != "mysql+pymysql":
        shown = f"a {scheme}:// URL" if scheme and scheme.isascii() and len(scheme) < 20 else "that"
        raise ValueError(f"url must be one of {_STATE_URL_FORMS}; got {shown}")
    password: str | None = None
    match = _MYSQL_PASSWORD.match(url)
    if match:
        reference = _WHOLE_REFERENCE.match(match.group(2))
        if reference is None:
            raise ValueError("url: the MySQL password may not be written into the config; put it "
                             "in an environment variable and write USER:${VAR_NAME}@HOST")
        password = environ.get(reference.group(1))
        if not password:
            raise ValueError(f"url: environment variable {reference.group(1)} (the MySQL "
                             "password) is not set or empty; export it")
        register_secret(password)
        url = match.group(1) + _PASSWORD_SLOT + match.group(3) + url[match.end():]
    expanded = _expand_with(url, environ)
    try:
        parsed = make_url(expanded)
    except (ArgumentError, ValueError):
        raise ValueError("url: not a valid mysql+pymysql://USER:${PASSWORD_VAR}@HOST:PORT/DATABASE "
                         "URL") from None
    if parsed.password not in (None, _PASSWORD_SLOT):
        raise ValueError("url: the MySQL password may not be written into the config; put it "
                         "in an environment variable and write USER:${VAR_NAME}@HOST")
    if not parsed.host or not parsed.database:
        raise ValueError("url: a MySQL URL needs a host and a database: "
                         "mysql+pymysql://USER:${PASSWORD_VAR}@HOST:3306/DATABASE")
    return parsed.set(password=password).render_as_string(hide_password=False)


def _expand_with(value: str, environ: Mapping[str, str]) -> str:
    def substitute(match: re.Match[str]) -> str:
        if match.group(1) not in environ:
            raise ValueError(f"url: environment variable {match.group(1)} is not set; export it "
                             "or edit the value")
        return environ[match.group(1)]

    return _REFERENCE.sub(substitute, value)


class StateSettings(_Model):
    """The state table: runs, jobs, cached tokens.

    `url` keeps what was written (${VAR} references, never a password); the resolved URL is
    private, so neither repr() nor an error can show the password.
    """

    url: str = Field(
        default="cos://",
        description="Where runs, jobs and cached tokens live: cos:// (the default: in "
        "destination.bucket under <prefix>/_state/, nothing else to run), sqlite:///PATH (one "
        "machine: local runs and tests) or mysql+pymysql://USER:${PASSWORD_VAR}@HOST:3306/DATABASE "
        "(TencentDB for MySQL, TDSQL-C). ${VAR} works anywhere in it; a password must be one.",
    )
    _resolved: SecretStr = PrivateAttr(default_factory=lambda: SecretStr(""))

    @model_validator(mode="after")
    def _resolve(self, info: ValidationInfo) -> StateSettings:
        # Checked here rather than on the field, so no error line can echo the URL's password.
        self._resolved = SecretStr(_resolve_state_url(self.url.strip(), _environ(info)))
        return self

    @property
    def backend(self) -> Literal["cos", "sqlite", "mysql"]:
        url = self.resolved_url()
        return "cos" if url.startswith("cos:") else "sqlite" if url.startswith("sqlite:") else "mysql"

    def resolved_url(self) -> str:
        """The URL to connect with, password included: for open_store, never for display."""
        return self._resolved.get_secret_value()


class Timing(_Model):
    """How patient the product is with platforms; the defaults suit SCF's one-minute timer."""

    first_check_seconds: float = Field(default=5, ge=0, description="Wait before the first check.")
    max_check_interval_seconds: float = Field(
        default=300, gt=0, description="Backoff cap between status checks of one export."
    )
    export_deadline_minutes: float = Field(
        default=360, gt=0, description="An export still unfinished after this is failed."
    )
    copy_lease_seconds: float = Field(
        default=960, gt=0, description="A copy not finished within this is handed out again."
    )
    max_attempts: int = Field(
        default=5, ge=1, description="Tries per job for starting and copying before failing."
    )
    retry_base_seconds: float = Field(
        default=1.0, ge=0, description="First in-call retry delay; doubles each try."
    )
    start_budget_seconds: float = Field(
        default=60, gt=0,
        description="How long the trigger starts exports before leaving the rest to the poller.",
    )
    poll_budget_seconds: float = Field(
        default=240, gt=0,
        description="How long one poller tick works; keep it below the poller's SCF timeout.",
    )
    finish_budget_seconds: float = Field(
        default=720, gt=0,
        description="How long one finisher invocation pages a table (OneDB) before leaving the "
        "rest to the next; keep it well below the finisher's SCF timeout.",
    )


WECHAT_APPID = r"^wx[0-9a-f]{16}$"
WECHAT_API_BASE = "https://api.weixin.qq.com"
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
    names = [_expand_references(name, info) for name in value]
    dupes = sorted({c for c in names if names.count(c) > 1})
    if dupes:
        raise ValueError(f"collections listed twice: {', '.join(dupes)}; list each once")
    if any(not c for c in names):
        raise ValueError("empty collection name; remove it")
    return names


Collections = Annotated[Union[Literal["all"], list[str]], BeforeValidator(_collections)]  # noqa: UP007


class _WeChatCollections(_Model):
    """One cloud environment of one mini program and what to back up in it."""

    name: EnvStr = Field(
        pattern=r"^[a-z0-9][a-z0-9-]{0,62}$", description="Short id used in object keys: a-z 0-9 -."
    )
    appid: EnvStr = Field(pattern=WECHAT_APPID, description="Mini program appid.")
    env: EnvStr = Field(min_length=1, description="Cloud environment id.")
    collections: Collections = Field(
        description="Collections to back up: a list, or `all` (listed anew at every run)."
    )
    include: list[str] = Field(
        default_factory=list,
        description="With `collections: all`: only collections matching one of these glob "
        "patterns (`*`, `?`, `[abc]`), e.g. `order*`.",
    )
    exclude: list[str] = Field(
        default_factory=list,
        description="With `collections: all`: skip collections matching one of these glob "
        "patterns, e.g. `tmp_*`.",
    )
    file_type: Literal["json", "csv"] = Field(default="json", description="Export format.")
    queries: dict[str, str] = Field(
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
            if not re.match(rf"""^\s*db\.collection\(\s*(['"]){re.escape(collection)}\1\s*\)""", query):
                raise ValueError(
                    f"query for {collection!r} must start with db.collection('{collection}')"
                )
            if self.collections == "all" and not self.wanted(collection):
                raise ValueError(
                    f"a query is given for {collection!r}, but include/exclude leave it out; "
                    "remove the query or change the patterns"
                )
        return self


def _base_url(value: str) -> str:
    if not re.match(r"^https?://[^\s]+$", value):
        raise ValueError("must be an http(s):// URL")
    return value.rstrip("/")


class TokenService(_Model):
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
        return None if value is None else _base_url(value)

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


class WeChatSource(_WeChatCollections):
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
        return _base_url(value)

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


class WeChatPlatformSource(_Model):
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
        return _base_url(value)

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


class OneDBCondition(_Model):
    """One getMany filter condition: `column symbol value`."""

    column: str = Field(min_length=1, description="Column compared.")
    symbol: Literal["=", "!=", ">", ">=", "<", "<="] = Field(description="Comparison.")
    value: bool | int | float | str = Field(description="Value compared with.")


class OneDBFilter(_Model):
    """A getMany `filter`, sent to OneDB as written (same field names as its API)."""

    conditionList: list[OneDBCondition] = Field(min_length=1, description="Conditions.")
    conditionLogical: Literal["and", "or", "not"] = Field(
        default="and", description="and: all hold; or: any holds; not: the one condition fails."
    )

    @model_validator(mode="after")
    def _not_takes_one(self) -> OneDBFilter:
        if self.conditionLogical == "not" and len(self.conditionList) != 1:
            raise ValueError("conditionLogical 'not' takes exactly one condition; split the rest")
        return self


class OneDBTable(_Model):
    """One OneDB table to back up; a plain string in `tables` is the same as `{name: ...}`."""

    name: EnvStr = Field(min_length=1, description="Table id (tableId).")
    keys: list[str] | None = Field(
        default=None, min_length=1,
        description="Primary key columns, in key order; default: the source's keys.",
    )
    filter: OneDBFilter | None = Field(default=None, description="Back up only matching rows.")
    getColumns: list[str] | None = Field(
        default=None, min_length=1, description="Back up only these columns (ids always)."
    )


def _table_entry(value: Any) -> Any:
    return {"name": value} if isinstance(value, str) else value


ONEDB_REGION = r"^[a-z0-9][a-z0-9-]{0,62}$"


class OneDBSource(_Model):
    """Tables of a 清林云 OneDB environment, paged through by the finisher itself."""

    type: Literal["onedb"]
    name: EnvStr = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$", description="Short id for keys.")
    region: EnvStr = Field(
        pattern=ONEDB_REGION,
        description="Region code from the console overview, e.g. cn-east-1; the API is "
        "https://<region>.baasapi.com/cdb.",
    )
    envid: EnvStr = Field(min_length=1, description="Environment id.")
    keyid: EnvStr = Field(min_length=1, description="Environment key id (with the cdb app granted).")
    key_secret: Secret = Field(description="The environment key's secret, as ${ENV_VAR}.")
    app_id: EnvStr = Field(min_length=1, description="The app owning the tables (appId), e.g. user.")
    keys: list[str] | None = Field(
        default=None, min_length=1,
        description="Primary key columns shared by the tables that do not list their own.",
    )
    tables: list[Annotated[OneDBTable, BeforeValidator(_table_entry)]] = Field(
        min_length=1, description="Tables to back up: names, or {name, keys, filter, getColumns}."
    )
    api_base: EnvStr | None = Field(
        default=None,
        description="API base URL for private clouds or tests; default https://<region>.baasapi.com.",
    )

    @property
    def endpoint(self) -> str:
        return f"{self.api_base or f'https://{self.region}.baasapi.com'}/cdb"

    def table(self, name: str) -> OneDBTable:
        for table in self.tables:
            if table.name == name:
                return table
        raise KeyError(name)

    @field_validator("api_base")
    @classmethod
    def _https_only(cls, value: str | None) -> str | None:
        if value is None:
            return None
        # The token can read and delete every table: never send it in clear over a network.
        if not re.match(r"^(https://[^\s/]+|http://(127\.0\.0\.1|localhost)(:[0-9]+)?)/?$", value):
            raise ValueError(
                "must be https://host[:port] with no path (http:// only for 127.0.0.1 or "
                "localhost); /cdb is added"
            )
        return value.rstrip("/")

    @model_validator(mode="after")
    def _tables_are_complete(self) -> OneDBSource:
        names = [t.name for t in self.tables]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"tables listed twice: {', '.join(dupes)}; list each once")
        keyless = [t.name for t in self.tables if not (t.keys or self.keys)]
        if keyless:
            raise ValueError(
                f"primary key columns unknown for table(s) {', '.join(keyless)}; add "
                "keys: [<key column>, ...] to the source or to each of those tables"
            )
        return self


def _minapp_table_id(value: Any) -> Any:
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, str) and re.fullmatch(r"\s*[1-9][0-9]*\s*", value):
        return value.strip()
    raise ValueError(
        "must be a MinApp table id, a number such as 1001 (console: 数据表 → the table's ID); "
        "table names are not accepted by the export API"
    )


def _minapp_table_entry(value: Any) -> Any:
    return {"id": value} if isinstance(value, (int, str)) and not isinstance(value, bool) else value


MinAppTableId = Annotated[str, BeforeValidator(_minapp_table_id)]


def _plain_ids_too(schema: dict[str, Any]) -> None:
    """The schema of `tables`: an item is a table object or a plain id."""
    schema["items"] = {"anyOf": [schema["items"], {"type": "integer", "minimum": 1},
                                 {"type": "string", "pattern": r"^[1-9][0-9]*$"}]}
MINAPP_MAX_EXPORT_ROWS = 1_000_000


class MinAppSplit(_Model):
    """Export a table over MinApp's per-job row limit in parts cut by ranges of `key`."""

    key: EnvStr = Field(
        min_length=1,
        description="Field the parts are cut by: a number or string every record has, ideally "
        "(nearly) unique, e.g. created_at or id.",
    )
    rows_per_part: int = Field(
        default=900_000, ge=1, le=MINAPP_MAX_EXPORT_ROWS,
        description="Rows per part; keep some room below the limit for records added meanwhile.",
    )


class MinAppTable(_Model):
    """One MinApp table; a plain id in `tables` is the same as `{id: ...}`. The export
    options are passed to MinApp's export API as written."""

    id: MinAppTableId = Field(
        description="Table id (a number).", json_schema_extra={"type": ["integer", "string"]}
    )
    mode: Literal["all", "part"] | None = Field(
        default=None, description="all: every record; part: those matching where. Default: part "
        "when where is given, else all.",
    )
    where: dict[str, Any] | None = Field(
        default=None, description='Query, e.g. {"status": {"$eq": "paid"}}; needs mode part.'
    )
    include_keys: list[str] | None = Field(default=None, min_length=1, description="Only these fields.")
    exclude_keys: list[str] | None = Field(default=None, min_length=1, description="Leave these fields out.")
    order_by: list[str] | None = Field(
        default=None, min_length=1, description="Sort fields; -field for descending."
    )
    csv_customize_headers: list[str] | None = Field(
        default=None, min_length=1, description="Column names of a CSV export."
    )
    timestamp_convert_keys: list[str] | None = Field(
        default=None, min_length=1, description="Fields whose timestamps MinApp converts to dates."
    )
    split: MinAppSplit | None = Field(
        default=None, description="Export in parts; needed for tables over 1,000,000 rows."
    )

    @model_validator(mode="after")
    def _where_needs_part(self) -> MinAppTable:
        if self.where is not None and self.mode == "all":
            raise ValueError(f"table {self.id}: where only applies with mode: part; set mode: "
                             "part or remove where")
        return self


class MinAppSource(_Model):
    """Tables of a MinApp (知晓云) app, exported through its OpenAPI."""

    type: Literal["minapp"]
    name: EnvStr = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$", description="Short id for keys.")
    client_id: EnvStr = Field(min_length=1, description="OpenAPI client ID.")
    client_secret: Secret = Field(description="OpenAPI client secret, as ${ENV_VAR}.")
    env_id: EnvStr | None = Field(
        default=None, description="Test environment id (X-Hydrogen-Env-ID); omit for production."
    )
    tables: list[Annotated[MinAppTable, BeforeValidator(_minapp_table_entry)]] = Field(
        min_length=1, description="Tables to back up: ids, or {id, export options, split}.",
        json_schema_extra=_plain_ids_too,
    )
    file_type: Literal["json", "csv"] = Field(default="json", description="Export format.")
    max_export_rows: int = Field(
        default=MINAPP_MAX_EXPORT_ROWS, ge=1,
        description="MinApp's row limit per export job; change only if MinApp changes it.",
    )
    api_base: EnvStr = Field(
        default="https://cloud.minapp.com", description="API base URL (private gateways, tests)."
    )

    def table(self, table_id: str) -> MinAppTable:
        for table in self.tables:
            if table.id == table_id:
                return table
        raise KeyError(table_id)

    @field_validator("tables", mode="before")
    @classmethod
    def _no_listing(cls, value: Any) -> Any:
        if isinstance(value, str) and value.strip().lower() == "all":
            raise ValueError(
                "MinApp's documented OpenAPI has no table listing, so 'all' cannot be "
                "discovered; list the table ids (console: 数据表 → each table's ID)"
            )
        return value

    @field_validator("api_base")
    @classmethod
    def _base_url(cls, value: str) -> str:
        if not re.match(r"^https?://[^\s/]+/?$", value):
            raise ValueError("must be http(s)://host[:port] with no path")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _tables_are_consistent(self) -> MinAppSource:
        ids = [t.id for t in self.tables]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"tables listed twice: {', '.join(dupes)}; list each once")
        for table in self.tables:
            if table.csv_customize_headers and self.file_type != "csv":
                raise ValueError(f"table {table.id}: csv_customize_headers needs file_type: csv; "
                                 "remove it or export CSV")
            if table.split and table.split.rows_per_part > self.max_export_rows:
                raise ValueError(
                    f"table {table.id}: split.rows_per_part {table.split.rows_per_part} is over "
                    f"max_export_rows {self.max_export_rows}; lower it"
                )
        return self


# What a run backs up: validation turns each wechat-platform entry into one WeChatSource per
# mini program, so the validated `Config.sources` holds only these.
RunSource = Union[WeChatSource, OneDBSource, MinAppSource]  # noqa: UP007
# What the config file's `sources` may hold.
Source = Annotated[
    Union[RunSource, WeChatPlatformSource],  # noqa: UP007
    Field(discriminator="type"),
]


class Webhook(_Model):
    """A chat robot or any HTTPS endpoint that is told how a run ended."""

    url: Secret = Field(description="Webhook URL as ${ENV_VAR}: robot URLs carry their key.")
    format: Literal["wecom", "dingtalk", "feishu", "json"] = Field(
        default="json", description="wecom/dingtalk/feishu robot message, or the run summary as JSON."
    )


class Notify(_Model):
    """Who is told when a run ends, and when."""

    on: Literal["failure", "always"] = Field(
        default="failure", description="Notify only runs with failed jobs, or every run."
    )
    webhooks: list[Webhook] = Field(default_factory=list)


_SCF_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,58}[A-Za-z0-9]$")


class DispatchSettings(_Model):
    """How the poller hands a ready export to the finisher."""

    mode: Literal["auto", "local", "scf"] = Field(
        default="auto",
        description="local: the finisher runs inside the poller; scf: async Invoke of the finisher "
        "function; auto: scf when running on SCF (SCF_FUNCTIONNAME is set), local otherwise.",
    )
    finisher_function: EnvStr = Field(
        default="baas-backup-finisher", description="Name of the finisher's SCF function."
    )
    namespace: EnvStr = Field(default="default", description="SCF namespace of the finisher.")
    region: EnvStr | None = Field(
        default=None,
        description="Region of the finisher; default: the poller's own (TENCENTCLOUD_REGION on "
        "SCF), else destination.region.",
    )
    endpoint: EnvStr | None = Field(
        default=None,
        description="Tencent Cloud API endpoint override, e.g. https://scf.internal.tencentcloudapi.com "
        "inside a VPC, or http://127.0.0.1:PORT for a local fake.",
    )

    @field_validator("finisher_function", "namespace")
    @classmethod
    def _scf_name(cls, value: str) -> str:
        if not _SCF_NAME.match(value):
            raise ValueError(
                "must be an SCF name: 2-60 letters, digits, '-' or '_', starting with a letter "
                "and ending with a letter or digit"
            )
        return value

    @field_validator("region")
    @classmethod
    def _region(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^[a-z]{2,}(-[a-z0-9]+)+$", value):
            raise ValueError("must be a Tencent Cloud region such as ap-guangzhou")
        return value

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^https?://[^/\s]+/?$", value):
            raise ValueError("must look like https://host[:port] with no path")
        return value.rstrip("/") if value else value


class Config(_Model):
    """The whole backup configuration."""

    destination: Destination
    state: StateSettings = Field(default_factory=StateSettings)
    timing: Timing = Field(default_factory=Timing)
    notify: Notify = Field(default_factory=Notify)
    dispatch: DispatchSettings = Field(default_factory=DispatchSettings)
    if TYPE_CHECKING:  # see RunSource
        sources: list[RunSource]
    else:
        sources: list[Source] = Field(min_length=1)

    @field_validator("sources")
    @classmethod
    def _one_source_per_platform_app(cls, value: list[Source]) -> list[RunSource]:
        """Each mini program under a wechat-platform entry is a source of its own."""
        return [app for source in value for app in (
            source.app_sources() if isinstance(source, WeChatPlatformSource) else [source])]

    @field_validator("sources")
    @classmethod
    def _unique_names(cls, value: list[RunSource]) -> list[RunSource]:
        names = [s.name for s in value]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"source names must be unique; rename {', '.join(dupes)}")
        return value

    def source(self, name: str) -> RunSource:
        for source in self.sources:
            if source.name == name:
                return source
        raise KeyError(name)


# Field names holding secrets: their typed value is never echoed in an error.
SECRET_FIELDS = frozenset({"secret", "secret_id", "secret_key", "url", "key_secret",
                           "client_secret", "access_token", "refresh_token", "authorization",
                           "component_secret", "verify_ticket"})
SOURCE_TYPES: dict[str, type[BaseModel]] = {"wechat": WeChatSource, "onedb": OneDBSource,
                                            "wechat-platform": WeChatPlatformSource,
                                            "minapp": MinAppSource}


def _location(loc: tuple[int | str, ...]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        elif part in SOURCE_TYPES:
            continue  # the discriminator tag adds nothing for a reader
        else:
            text += f".{part}" if text else part
    return text or "(top level)"


def _model_at(loc: tuple[int | str, ...]) -> type[BaseModel] | None:
    """The model that owns the last element of `loc`, for "did you mean" hints."""
    model: type[BaseModel] = Config
    for part in loc[:-1]:
        if isinstance(part, int) or part == "sources":
            continue
        if part in SOURCE_TYPES:
            model = SOURCE_TYPES[part]
            continue
        annotation = model.model_fields[part].annotation if part in model.model_fields else None
        nested = _nested_model(annotation)
        if nested is None:
            return None
        model = nested
    return model


def _nested_model(annotation: Any) -> type[BaseModel] | None:
    """The model in `X`, `X | None`, `list[X]` or `Annotated[X, ...]` (e.g. OneDB tables)."""
    if get_origin(annotation) is None:
        is_model = isinstance(annotation, type) and issubclass(annotation, BaseModel)
        return annotation if is_model else None
    for argument in get_args(annotation):
        found = _nested_model(argument)
        if found is not None:
            return found
    return None


def _describe(error: Mapping[str, Any]) -> str:
    loc = tuple(error["loc"])
    where = _location(loc)
    kind = error["type"]
    message = str(error["msg"]).removeprefix("Value error, ")
    if kind == "missing":
        return f"{where}: required field is missing; add it"
    if kind == "extra_forbidden":
        name = str(loc[-1])
        model = _model_at(loc)
        close = difflib.get_close_matches(name, list(model.model_fields) if model else [], n=1)
        hint = f"did you mean {close[0]!r}?" if close else "remove it"
        return f"{where}: unknown field; {hint}"
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        return f"{where}: type must be one of: {', '.join(SOURCE_TYPES)}"
    last = str(loc[-1]) if loc else ""
    if last in SECRET_FIELDS:
        return f"{where}: {message}"  # never echo what was typed into a secret field
    value = error.get("input")
    if isinstance(value, (dict, list)):
        return f"{where}: {message}"  # a whole section could carry a literal secret
    shown = json.dumps(value, ensure_ascii=False, default=str)
    if len(shown) > 80:
        shown = shown[:77] + "..."
    return f"{where}: {message} (got {shown})"


def parse_config(
    data: Any, *, environ: Mapping[str, str] | None = None, source: str = "config"
) -> Config:
    """Validate an already-loaded YAML document."""
    if not isinstance(data, dict):
        raise ConfigError(["(top level): expected a mapping with destination and sources"], source)
    try:
        return Config.model_validate(data, context={"environ": environ})
    except ValidationError as exc:
        raise ConfigError([_describe(e) for e in exc.errors(include_url=False)], source) from None


def load_config(path: str | os.PathLike[str] | None = None, *, environ: Mapping[str, str] | None = None) -> Config:
    """Load the config from `path`, else $BAAS_BACKUP_CONFIG, else ./backup.yaml."""
    env = environ if environ is not None else os.environ
    chosen = Path(path or env.get(CONFIG_PATH_ENV) or DEFAULT_CONFIG_PATH)
    try:
        text = chosen.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            [f"file not found; create it or set {CONFIG_PATH_ENV} to its path"], str(chosen)
        ) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "somewhere"
        raise ConfigError([f"not valid YAML at {where}: {getattr(exc, 'problem', exc)}"], str(chosen)) from None
    return parse_config(data, environ=env, source=str(chosen))


def config_json_schema() -> dict[str, Any]:
    """JSON Schema of the config file, for editors (yaml-language-server)."""
    schema = Config.model_json_schema(mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "baas-backup configuration"
    return schema
