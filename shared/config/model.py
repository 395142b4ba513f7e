"""Settings: one YAML file validated with pydantic, secrets only as ${ENV_VAR} references.

Every validation problem becomes one line naming the field, the bad value (never for
secret fields) and the fix, so a user can repair a config without reading code.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import (
    BaseModel,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    ValidationInfo,
    create_model,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo

from shared.config.fields import (
    HTTPS_ONLY,
    REFERENCE,
    WHOLE_REFERENCE,
    ConfigJsonSchema,
    ConfigModel,
    EnvStr,
    Secret,
    SourceSettings,
    environ_of,
    is_secure_url,
    or_null,
    pattern_words,
    refuse_userinfo,
    without_userinfo,
)
from shared.platforms import registry

CONFIG_PATH_ENV = "BAAS_BACKUP_CONFIG"
DEFAULT_CONFIG_PATH = "backup.yaml"

class ConfigError(ValueError):
    """An invalid config; `problems` holds one human-readable line per problem."""

    def __init__(self, problems: list[str], source: str = "config") -> None:
        self.problems = problems
        super().__init__(f"{source} is invalid:\n" + "\n".join(f"  - {p}" for p in problems))


# COS's storage classes (cloud.tencent.com/document/product/436/33417, 存储类型概述).
StorageClass = Literal["STANDARD", "STANDARD_IA", "INTELLIGENT_TIERING", "ARCHIVE", "DEEP_ARCHIVE",
                       "MAZ_STANDARD", "MAZ_STANDARD_IA", "MAZ_INTELLIGENT_TIERING"]


class Destination(ConfigModel):
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
        default=8,
        ge=5,
        le=1024,
        description="Multipart part size. The finisher holds about "
        "(part_concurrency + 1) * part_size_mb in memory.",
    )
    part_concurrency: int = Field(
        default=4,
        ge=1,
        le=32,
        description="Multipart parts uploaded at once by the finisher (measured: 4 is about "
        "as fast as more, see README Benchmarks).",
    )
    storage_class: StorageClass | None = Field(
        default=None,
        description="COS storage class of new backup objects (default: the bucket's, STANDARD). "
        "ARCHIVE and DEEP_ARCHIVE objects must be restored before they can be read.",
    )
    server_side_encryption: Literal["AES256"] | None = Field(
        default="AES256", description="COS server-side encryption; null to turn it off."
    )

    @field_validator("storage_class")
    @classmethod
    def _readable_class(cls, value: str | None) -> str | None:
        if value in ("ARCHIVE", "DEEP_ARCHIVE"):
            raise ValueError("new backups are read back to be verified, which an archived object "
                             "cannot be; use STANDARD_IA here and retention.cold_after_days to "
                             "archive the backups you keep")
        return value

    @field_validator("bucket")
    @classmethod
    def _bucket_name(cls, value: str) -> str:
        # COS bucket names: lower-case letters, digits and '-', not starting or ending with
        # '-', followed by -APPID (cloud.tencent.com/document/product/436/13312, 存储桶命名规范)
        if not re.match(r"^[a-z0-9](?:[a-z0-9-]*[a-z0-9])?-[0-9]+$", value):
            raise ValueError("must be the bucket's full name, name-APPID, e.g. "
                             "mybackups-1250000000 (lower-case letters, digits and '-'), as the "
                             "COS console's bucket list shows it")
        return value

    @field_validator("region")
    @classmethod
    def _region(cls, value: str) -> str:
        # COS region ids such as ap-guangzhou (cloud.tencent.com/document/product/436/6224, 地域和访问域名)
        if not re.match(r"^[a-z]{2,}(-[a-z0-9]+)+$", value):
            raise ValueError("must be a COS region such as ap-guangzhou or ap-shanghai, as the "
                             "COS console shows it for the bucket")
        return value

    @field_validator("prefix")
    @classmethod
    def _clean_prefix(cls, value: str) -> str:
        parts = [p for p in value.split("/") if p]
        if any(p in (".", "..") for p in parts):
            raise ValueError("must not contain '.' or '..' segments; use a plain folder name")
        # The CAM policy grants `<prefix>/*`: in a resource `*` is a wildcard
        # (cloud.tencent.com/document/product/598/10606, 资源描述方式), and string_like
        # conditions such as cos:prefix also match `?` (product/598/10608, 条件), so
        # `backups*` would grant other folders of the bucket too.
        if wild := sorted({c for c in value if c in "*?"}):
            raise ValueError(f"must not contain {', '.join(map(repr, wild))}: CAM reads it as a "
                             "wildcard, widening the functions' grant beyond this folder; use "
                             "a plain folder name")
        return "/".join(parts)

    @field_validator("endpoint")
    @classmethod
    def _check_endpoint(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^https?://[^/\s]+/?$", value):
            raise ValueError("must look like https://host[:port] with no path")
        if value is not None:
            refuse_userinfo(value)
        if value is not None and not is_secure_url(value):  # signed requests, object data
            raise ValueError(HTTPS_ONLY)
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
    # Only a MySQL URL needs SQLAlchemy's parser (about 0.2 s to import: a cold start with
    # the default cos:// state must not pay it).
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    password: str | None = None
    match = _MYSQL_PASSWORD.match(url)
    if match:
        reference = WHOLE_REFERENCE.match(match.group(2))
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

    return REFERENCE.sub(substitute, value)


class StateSettings(ConfigModel):
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
        self._resolved = SecretStr(_resolve_state_url(self.url.strip(), environ_of(info)))
        return self

    @property
    def backend(self) -> Literal["cos", "sqlite", "mysql"]:
        url = self.resolved_url()
        return "cos" if url.startswith("cos:") else "sqlite" if url.startswith("sqlite:") else "mysql"

    def resolved_url(self) -> str:
        """The URL to connect with, password included: for open_store, never for display."""
        return self._resolved.get_secret_value()


class KeepRules(ConfigModel):
    """restic's `forget --keep-*` rules, per collection (README "Keeping backups")."""

    keep_last: int | None = Field(default=None, ge=0, description="Keep the n newest good backups.")
    keep_daily: int | None = Field(
        default=None, ge=0, description="Keep the newest good backup of each of the last n days.")
    keep_weekly: int | None = Field(
        default=None, ge=0, description="Keep the newest good backup of each of the last n ISO weeks.")
    keep_monthly: int | None = Field(
        default=None, ge=0, description="Keep the newest good backup of each of the last n months.")


def _entry_may_be_empty(schema: dict[str, Any]) -> None:
    """Editors read the schema: an entry left empty (null, see _empty_override_replaces_nothing)
    is accepted by the loader, so the schema says so too."""
    schema["additionalProperties"] = or_null(schema["additionalProperties"])


class Retention(KeepRules):
    """Which backups are kept; the rest are deleted after each run (and by `baas-backup
    prune`). Without this section nothing is ever deleted."""

    time_zone: EnvStr = Field(
        default="Asia/Shanghai", description="Days, weeks and months are counted in this zone.")
    sources: dict[str, KeepRules] = Field(
        default_factory=dict, description="Per source name: rules that replace the ones above.",
        json_schema_extra=_entry_may_be_empty)
    cold_after_days: float | None = Field(
        default=None, gt=0,
        description="Kept backups older than this move to cold_storage_class (their manifests "
        "stay where they are, so verify --quick still works).")
    cold_storage_class: StorageClass = Field(
        default="ARCHIVE", description="Where kept backups go after cold_after_days.")

    @field_validator("sources", mode="before")
    @classmethod
    def _empty_override_replaces_nothing(cls, value: Any) -> Any:
        # `shop:` with every line under it commented out is YAML null: like any section
        # left empty, it means its defaults, which for an override is replacing nothing
        if not isinstance(value, dict):
            return value
        return {name: {} if rules is None else rules for name, rules in value.items()}

    @field_validator("time_zone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError("must be an IANA time zone such as Asia/Shanghai or UTC") from None
        return value

    @model_validator(mode="after")
    def _cold_class_moves_something(self) -> Retention:
        """A cold class that could never be applied is a mistake, not a setting: said
        rather than ignored, like an unknown field."""
        chosen = self.cold_storage_class
        if "cold_storage_class" in self.model_fields_set and self.cold_after_days is None:
            raise ValueError(f"cold_storage_class {chosen} moves nothing without "
                             "cold_after_days; add cold_after_days (e.g. 30) or remove "
                             "cold_storage_class")
        # STANDARD is the class COS writes an object in when none is given, and the dearest
        # (cloud.tencent.com/document/product/436/33417, 存储类型概述): never a colder one.
        if self.cold_after_days is not None and chosen in ("STANDARD", "MAZ_STANDARD"):
            raise ValueError(f"cold_storage_class {chosen} is not a colder class than the one "
                             "backups are written in; use ARCHIVE (the default), DEEP_ARCHIVE "
                             "or STANDARD_IA")
        return self

    @model_validator(mode="after")
    def _keeps_something(self) -> Retention:
        for name in [None, *self.sources]:
            rules = self.rules_for(name)
            if not any((rules.keep_last, rules.keep_daily, rules.keep_weekly, rules.keep_monthly)):
                where = f"sources.{name}" if name else "the top level"
                raise ValueError(f"the policy at {where} would keep nothing, so every backup "
                                 "would be deleted; set keep_last, keep_daily, keep_weekly or "
                                 "keep_monthly to at least 1")
        return self

    def rules_for(self, source: str | None) -> KeepRules:
        """The top-level rules, with what the source's own entry sets instead."""
        override = self.sources.get(source or "")
        if override is None:
            return self
        return KeepRules.model_validate({**self.model_dump(include=set(KeepRules.model_fields)),
                                         **override.model_dump(exclude_unset=True)})


class VerifySettings(ConfigModel):
    """Checking each run's backups again as the run closes."""

    after_run: Literal["off", "quick", "full"] = Field(
        default="quick",
        description="quick: sizes (and CRC64) from a HEAD per object; full: read every object "
        "back (costs a download of the whole backup) within the closing invocation's time, "
        "what is left only quick-checked and listed in the run's summary; off. A failed "
        "check fails the run.",
    )


class Alerts(ConfigModel):
    """When a backup that succeeded is still worth a message."""

    drop_percent: float = Field(
        default=50, gt=0, le=100,
        description="A collection whose record count fell by at least this much since its "
        "newest good backup (or to zero) is marked suspect and reported.",
    )
    stale_after_hours: float = Field(
        default=26, gt=0,
        description="Alert (once, until it ends) when no run has succeeded for this long, or "
        "a run is still running this long after it started.",
    )


class Timing(ConfigModel):
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
    unclaimed_ready_hours: float = Field(
        default=12, gt=0,
        description="A job handed to the finisher that no finisher claims for this long fails "
        "(a finisher that crashes on start, or is never run). Keep it above the finisher's "
        "async retention (SCF: 6 hours unless changed) so a merely throttled finisher gets "
        "to it first.",
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
    poll_concurrency: int = Field(
        default=32, ge=1, le=256,
        description="Jobs one poller tick advances at once (each is mostly waiting on a "
        "platform or the state store).",
    )
    platform_calls_per_source: int = Field(
        default=16, ge=1, le=256,
        description="Platform calls in flight at once per source, so one slow or "
        "rate-limited source cannot take every poller worker.",
    )
    platform_calls_per_type: int = Field(
        default=32, ge=1, le=256,
        description="Platform calls in flight at once per platform type (wechat, minapp, "
        "...), across its sources.",
    )
    finish_budget_seconds: float = Field(
        default=720, gt=0,
        description="How long one finisher invocation pages a table (OneDB) before leaving the "
        "rest to the next; keep it well below the finisher's SCF timeout.",
    )
    restore_row_concurrency: int = Field(
        default=8, ge=1, le=64,
        description="Rows written at once by a restore into a row-by-row platform (OneDB), "
        "within its rate limit.",
    )

    @model_validator(mode="after")
    def _hand_out_again_before_failing(self) -> Timing:
        # a job is handed out again each copy lease: a bound under two leases would fail a
        # job its finisher merely had not reached yet
        if self.unclaimed_ready_hours * 3600 < 2 * self.copy_lease_seconds:
            raise ValueError(
                f"unclaimed_ready_hours ({self.unclaimed_ready_hours:g}) must be at least two "
                f"copy leases (copy_lease_seconds: {self.copy_lease_seconds:g}, so at least "
                f"{2 * self.copy_lease_seconds / 3600:.3g} hours); raise unclaimed_ready_hours "
                "(12 by default) or lower copy_lease_seconds")
        return self



class Webhook(ConfigModel):
    """A chat robot or any HTTPS endpoint that is told how a run ended."""

    url: Secret = Field(description="Webhook URL as ${ENV_VAR}: robot URLs carry their key.")
    format: Literal["wecom", "dingtalk", "feishu", "json"] = Field(
        default="json", description="wecom/dingtalk/feishu robot message, or the run summary as JSON."
    )
    secret: Secret | None = Field(
        default=None,
        description="Signing secret as ${ENV_VAR}, for a dingtalk robot with 加签 or a feishu "
        "robot with 签名校验 turned on: such a robot refuses every unsigned message.",
    )

    @field_validator("url")
    @classmethod
    def _https(cls, value: SecretStr) -> SecretStr:
        # a robot URL carries its key, and the message names what failed
        return _secure_secret_url(value)

    @model_validator(mode="after")
    def _signing_robot(self) -> Webhook:
        if self.secret is not None and self.format not in ("dingtalk", "feishu"):
            raise ValueError(f"secret: only dingtalk and feishu robots sign their messages; remove "
                             f"it, or set format (now {self.format}) to the robot's")
        return self


class Heartbeat(ConfigModel):
    """A dead-man switch: an outside monitor that alerts when the pings stop."""

    url: Secret = Field(description="Ping URL as ${ENV_VAR}: ping URLs carry their key.")
    style: Literal["healthchecks", "cronitor", "uptime-kuma"] = Field(
        default="healthchecks",
        description="healthchecks: the URL, or URL/fail; cronitor: ?state=complete|fail; "
        "uptime-kuma (push monitor): ?status=up|down&msg=...",
    )

    @field_validator("url")
    @classmethod
    def _https(cls, value: SecretStr) -> SecretStr:
        # a ping URL carries its key; one every ping fails on leaves the monitor unarmed
        return _secure_secret_url(value)


def _secure_secret_url(value: SecretStr) -> SecretStr:
    """An https:// URL (http:// only to this machine), checked without being shown."""
    if not is_secure_url(value.get_secret_value()):
        raise ValueError(HTTPS_ONLY)
    return value


class Notify(ConfigModel):
    """Who is told when a run ends, and when."""

    on: Literal["failure", "always"] = Field(
        default="failure", description="Notify only runs with failed jobs, or every run."
    )
    webhooks: list[Webhook] = Field(default_factory=list)
    heartbeat: Heartbeat | None = Field(
        default=None, description="Pinged after every run, success or failure form.")


_SCF_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,58}[A-Za-z0-9]$")


class DispatchSettings(ConfigModel):
    """How the poller hands a ready export to the finisher."""

    mode: Literal["auto", "local", "scf"] = Field(
        default="auto",
        description="local: the finisher runs inside the poller; scf: async Invoke of the finisher "
        "function; auto: scf when running on SCF (TENCENTCLOUD_RUNENV=SCF or SCF_FUNCTIONNAME is set), "
        "local otherwise.",
    )
    finisher_function: EnvStr = Field(
        default="baas-backup-finisher", description="Name of the finisher's SCF function."
    )
    # The names scf-poller/ and scf-trigger/serverless.yml give them (inputs.name): only
    # `doctor` invokes them, with {"doctor": ...} events that advance nothing.
    poller_function: EnvStr = Field(
        default="baas-backup-poller", description="Name of the poller's SCF function (doctor checks it)."
    )
    trigger_function: EnvStr = Field(
        default="baas-backup-trigger",
        description="Name of the trigger's SCF function (doctor asks it which config it runs).",
    )
    namespace: EnvStr = Field(default="default", description="SCF namespace of the functions.")
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

    @field_validator("finisher_function", "poller_function", "trigger_function", "namespace")
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
        if value is not None:
            refuse_userinfo(value)
        if value is not None and not is_secure_url(value):  # signed API requests
            raise ValueError(HTTPS_ONLY)
        return value.rstrip("/") if value else value


class Config(ConfigModel):
    """The whole backup configuration."""

    destination: Destination
    state: StateSettings = Field(default_factory=StateSettings)
    timing: Timing = Field(default_factory=Timing)
    notify: Notify = Field(default_factory=Notify)
    alerts: Alerts = Field(default_factory=Alerts)
    verify: VerifySettings = Field(default_factory=VerifySettings)
    retention: Retention | None = None
    dispatch: DispatchSettings = Field(default_factory=DispatchSettings)
    # Validated as the registered platforms' settings models (see `config_model`).
    sources: list[SourceSettings] = Field(min_length=1)
    _digest: str = PrivateAttr(default="")

    @property
    def digest(self) -> str:
        """Fingerprint of the document as written (${VAR}s unresolved, so no secret goes
        into it; comments and layout ignored): two functions with different ones were
        packaged from different backup.yaml files. Empty when not parsed from a document."""
        return self._digest

    @field_validator("sources")
    @classmethod
    def _one_entry_per_source(cls, value: list[SourceSettings]) -> list[SourceSettings]:
        """An entry may stand for several sources (each mini program of a third-party
        platform is a source of its own)."""
        return [source for entry in value for source in entry.expand()]

    @field_validator("sources")
    @classmethod
    def _unique_names(cls, value: list[SourceSettings]) -> list[SourceSettings]:
        names = [s.name for s in value]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"source names must be unique; rename {', '.join(dupes)}")
        return value

    @model_validator(mode="after")
    def _retention_names_sources(self) -> Config:
        unknown = sorted(set(self.retention.sources if self.retention else {})
                         - {s.name for s in self.sources})
        if unknown:
            raise ValueError(f"retention.sources names no configured source: {', '.join(unknown)}")
        return self

    @model_validator(mode="after")
    def _cold_class_is_another(self) -> Config:
        retention, written = self.retention, self.destination.storage_class
        if retention and retention.cold_after_days is not None and retention.cold_storage_class == written:
            raise ValueError(f"retention.cold_storage_class: {written} is the class "
                             "destination.storage_class says new backups are written in already, "
                             "so nothing would ever move; use a colder one (ARCHIVE, the default, "
                             "or DEEP_ARCHIVE)")
        return self

    def source(self, name: str) -> SourceSettings:
        for source in self.sources:
            if source.name == name:
                return source
        raise KeyError(name)


_models: dict[tuple[int, frozenset[str] | None], type[Config]] = {}


def config_model(types: frozenset[str] | None = None) -> type[Config]:
    """`Config` with `sources` validated against the registered platforms' settings
    models, told apart by `type`: all of them, or only `types` (a cold start then imports
    and builds just the platforms its config uses); rebuilt when the registry changes."""
    key = (registry.version(), types)
    if key not in _models:
        models = tuple(e.settings_model() for e in registry.entries()
                       if types is None or e.type in types)
        entry_type: Any = (models[0] if len(models) == 1 else
                           Annotated[Union[models], Field(discriminator="type")])  # noqa: UP007
        if any(version != key[0] for version, _ in _models):
            _models.clear()
        _models[key] = create_model(
            "Config", __base__=Config, __doc__=Config.__doc__,
            sources=(list[entry_type], Field(min_length=1)))
    return _models[key]


def _types_used(data: dict[str, Any]) -> frozenset[str] | None:
    """The registered source types `data` uses, or None when it names none or one that
    is not registered (the whole model then says what is wrong)."""
    sources = data.get("sources")
    if not isinstance(sources, list) or not sources:
        return None
    known = {e.type for e in registry.entries()}
    types = {s.get("type") if isinstance(s, dict) else None for s in sources}
    return frozenset(t for t in types if isinstance(t, str)) if types <= known else None


def _source_types() -> dict[str, type[BaseModel]]:
    return {e.type: e.settings_model() for e in registry.entries()}


# Field names holding secrets (every `SecretStr` field of every model, platforms' included):
# their typed value is never echoed in an error.
_GENERIC_SECRETS = frozenset({"secret", "secret_id", "secret_key", "url", "access_token",
                              "refresh_token", "authorization"})


def config_fields() -> Iterator[tuple[type[BaseModel], str, FieldInfo]]:
    """(model, field name, field) for every field of every model the config is made of,
    the platforms' sources included, each model once."""
    seen: set[type[BaseModel]] = set()
    pending: list[type[BaseModel]] = [config_model()]
    while pending:
        model = pending.pop()
        if model in seen:
            continue
        seen.add(model)
        for name, info in model.model_fields.items():
            yield model, name, info
            pending.extend(_models_in(info.annotation))


def _secret_fields() -> frozenset[str]:
    return _GENERIC_SECRETS | {name for _, name, info in config_fields()
                               if _mentions(info.annotation, SecretStr)}


def _mentions(annotation: Any, kind: type) -> bool:
    if annotation is kind:
        return True
    return any(_mentions(argument, kind) for argument in get_args(annotation))


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for argument in get_args(annotation) for m in _models_in(argument)]


def _branch(part: int | str) -> bool:
    """A union's branch label in an error location, e.g. `literal['all']` or `list[...]`
    (MinApp's `tables: all | [...]`): it says nothing to a reader."""
    return isinstance(part, str) and re.match(r"^(literal|list|function-[a-z]+)\[", part) is not None


def _location(loc: tuple[int | str, ...]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        elif part in _source_types() or _branch(part):
            continue  # the discriminator tag adds nothing for a reader
        else:
            text += f".{part}" if text else part
    return text or "(top level)"


def _model_at(loc: tuple[int | str, ...]) -> type[BaseModel] | None:
    """The model that owns the last element of `loc`, for "did you mean" hints."""
    model: type[BaseModel] = Config
    keyed = False  # the next part is a key of a mapping of models (retention.sources.<name>)
    for part in loc[:-1]:
        if keyed or isinstance(part, int) or _branch(part) or (model is Config and part == "sources"):
            keyed = False
            continue
        if part in _source_types():
            model = _source_types()[part]
            continue
        annotation = model.model_fields[part].annotation if part in model.model_fields else None
        nested = _nested_model(annotation)
        if nested is None:
            return None
        model, keyed = nested, get_origin(annotation) is dict
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


_NOT_WRITTEN = object()


def _written(document: Any, loc: tuple[int | str, ...]) -> Any:
    """The value at `loc` as the config's text has it (`${VAR}` unexpanded), or
    `_NOT_WRITTEN` when `loc` names no single written value."""
    current = document
    for part in loc:
        listed = isinstance(current, list) and isinstance(part, int) and 0 <= part < len(current)
        if listed or (isinstance(current, dict) and part in current):
            current = current[part]
        elif isinstance(part, str) and (part in _source_types() or _branch(part)):
            continue  # a discriminator tag or union branch label: in the location only
        elif isinstance(current, str):
            return current  # a shorthand (token: legacy_token) stands for the section
        else:
            return _NOT_WRITTEN
    return current


def _required_in(loc: tuple[int | str, ...], kind: str) -> str:
    """` (bucket, region)`: the fields an empty section needs, when it is one model."""
    model = _model_at((*loc, "")) if kind == "model_type" else None
    needed = [name for name, field in (model.model_fields.items() if model else ())
              if field.is_required()]
    return f" ({', '.join(needed)})" if needed else ""


def _describe(error: Mapping[str, Any], document: Any = None) -> str:
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
    if error.get("input", "") is None and kind in ("model_type", "list_type", "dict_type"):
        return f"{where}: the section is empty; fill it in{_required_in(loc, kind)}"
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        return f"{where}: type must be one of: {', '.join(_source_types())}"
    if kind == "string_pattern_mismatch":
        message = pattern_words(str((error.get("ctx") or {}).get("pattern"))) or message
    last = str(loc[-1]) if loc else ""
    if last in _secret_fields():
        return f"{where}: {message}"  # never echo what was typed into a secret field
    # What was written, never what a ${VAR} expanded to (the variable may hold anything)
    value = _written(document, loc)
    if value is _NOT_WRITTEN or isinstance(value, (dict, list)):
        return f"{where}: {message}"  # a whole section could carry a literal secret
    if isinstance(value, str):  # a password written into a URL is not echoed either
        value = without_userinfo(value)
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
    model = config_model(_types_used(data))
    try:
        config = model.model_validate(data, context={"environ": environ})
        config._digest = _document_digest(data)
        return config
    except ValidationError as exc:
        problems = exc
    if model is not config_model():  # the problems worded as the whole model words them
        try:
            config_model().model_validate(data, context={"environ": environ})
        except ValidationError as exc:
            problems = exc
    errors = problems.errors(include_url=False)
    # `x: all | [...]` written as a list: the "should be 'all'" branch is noise
    meant = [e for e in errors if not any(str(p).startswith("literal[") for p in e["loc"])]
    raise ConfigError([_describe(e, data) for e in meant or errors], source) from None


def _document_digest(data: Any) -> str:
    try:
        canonical = json.dumps(data, sort_keys=True, default=str, ensure_ascii=False)
    except TypeError:  # keys of mixed types cannot be sorted: as they came
        canonical = json.dumps(data, default=str, ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


def _unique_key_loader() -> Any:
    """PyYAML's SafeLoader, refusing a key given twice in one mapping: PyYAML keeps the last
    silently, so a second `sources:` would drop every source of the first (YAML 1.2, 3.2.1.1:
    "The content of a mapping node is an unordered set of key/value node pairs, with the
    restriction that each of the keys is unique")."""
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        def construct_mapping(self, node: Any, deep: bool = False) -> Any:
            first: dict[Any, Any] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # `<<: *anchor`: the keys written beside it may override it
                key = self.construct_object(key_node, deep=deep)
                try:
                    seen = first.setdefault(key, key_node)
                except TypeError:
                    continue  # an unhashable key: SafeLoader itself says what is wrong
                if seen is not key_node:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"key {key!r} is given twice (first at line "
                        f"{seen.start_mark.line + 1}); keep one, merging what both say",
                        key_node.start_mark)
            return super().construct_mapping(node, deep=deep)

    return UniqueKeyLoader


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
    except UnicodeDecodeError as exc:  # e.g. saved as GBK by an editor on a Chinese system
        raise ConfigError([f"not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset "
                           f"{exc.start}); save it as UTF-8"], str(chosen)) from None
    except OSError as exc:  # a folder, or a file this user may not read
        raise ConfigError([f"cannot be read ({exc.strerror or exc}); give the path of the YAML "
                           f"file (--config or {CONFIG_PATH_ENV}) and make it readable"],
                          str(chosen)) from None
    import yaml  # here, not at the top: only loading a file needs it (cold start, issue 15)

    try:
        data = yaml.load(text, Loader=_unique_key_loader())  # noqa: S506 (a SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "somewhere"
        raise ConfigError([f"not valid YAML at {where}: {getattr(exc, 'problem', exc)}"], str(chosen)) from None
    return parse_config(data, environ=env, source=str(chosen))


def config_json_schema() -> dict[str, Any]:
    """JSON Schema of the config file, for editors (yaml-language-server)."""
    schema = config_model().model_json_schema(mode="validation", schema_generator=ConfigJsonSchema)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "baas-backup configuration"
    return schema


