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
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
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


class StateSettings(_Model):
    """The state table: runs, jobs, cached tokens."""

    url: EnvStr = Field(
        default="sqlite:///baas-backup-state.sqlite3",
        description="SQLAlchemy URL of the state table, e.g. sqlite:////tmp/state.sqlite3.",
    )

    @field_validator("url")
    @classmethod
    def _known_scheme(cls, value: str) -> str:
        if not value.startswith("sqlite:///"):
            raise ValueError("only sqlite:///PATH is supported; e.g. sqlite:////tmp/state.sqlite3")
        return value


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


class WeChatSource(_Model):
    """A WeChat Cloud Development (CloudBase) environment."""

    type: Literal["wechat"]
    name: EnvStr = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$", description="Short id for keys.")
    appid: EnvStr = Field(pattern=r"^wx[0-9a-f]{16}$", description="Mini program appid.")
    secret: Secret = Field(description="App secret, as ${ENV_VAR}.")
    env: EnvStr = Field(min_length=1, description="Cloud environment id.")
    collections: list[EnvStr] = Field(min_length=1, description="Collections to back up.")
    file_type: Literal["json", "csv"] = Field(default="json", description="Export format.")
    queries: dict[str, str] = Field(
        default_factory=dict,
        description="Per-collection export query, e.g. db.collection('orders').where({...}).get().",
    )
    api_base: EnvStr = Field(
        default="https://api.weixin.qq.com", description="API base URL (private gateways, tests)."
    )

    @field_validator("collections")
    @classmethod
    def _unique(cls, value: list[str]) -> list[str]:
        dupes = sorted({c for c in value if value.count(c) > 1})
        if dupes:
            raise ValueError(f"collections listed twice: {', '.join(dupes)}; list each once")
        if any(not c for c in value):
            raise ValueError("empty collection name; remove it")
        return value

    @field_validator("api_base")
    @classmethod
    def _base_url(cls, value: str) -> str:
        if not re.match(r"^https?://[^\s]+$", value):
            raise ValueError("must be an http(s):// URL")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _queries_match_collections(self) -> WeChatSource:
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
        return self


Source = Annotated[Union[WeChatSource], Field(discriminator="type")]  # noqa: UP007


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


class Config(_Model):
    """The whole backup configuration."""

    destination: Destination
    state: StateSettings = Field(default_factory=StateSettings)
    timing: Timing = Field(default_factory=Timing)
    notify: Notify = Field(default_factory=Notify)
    sources: list[Source] = Field(min_length=1)

    @field_validator("sources")
    @classmethod
    def _unique_names(cls, value: list[Source]) -> list[Source]:
        names = [s.name for s in value]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"source names must be unique; rename {', '.join(dupes)}")
        return value

    def source(self, name: str) -> Source:
        for source in self.sources:
            if source.name == name:
                return source
        raise KeyError(name)


# Field names holding secrets: their typed value is never echoed in an error.
SECRET_FIELDS = frozenset({"secret", "secret_id", "secret_key", "url"})
SOURCE_TYPES: dict[str, type[BaseModel]] = {"wechat": WeChatSource}


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
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        model = annotation
    return model


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
