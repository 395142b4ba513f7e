"""Settings of MinApp (知晓云) sources (`type: minapp`)."""

from __future__ import annotations

import fnmatch
import re
from typing import Annotated, Any, Literal

from pydantic import (
    BeforeValidator,
    Field,
    field_validator,
    model_validator,
)

from shared.config.fields import (
    HTTPS_ONLY,
    SHORT_ID,
    ConfigModel,
    EnvStr,
    Secret,
    SourceSettings,
    is_secure_url,
    refuse_userinfo,
)


def _minapp_table_id(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, str) and re.fullmatch(r"\s*[1-9][0-9]*\s*", value):
        return value.strip()
    raise ValueError(
        "must be a MinApp table id, a number such as 1001 (console: 数据表 → the table's ID); "
        "for a table name write {name: ...} or the name itself"
    )


def _minapp_table_entry(value: Any) -> Any:
    """A plain number is a table id, any other plain string a table name."""
    if isinstance(value, int) and not isinstance(value, bool):
        return {"id": value}
    if isinstance(value, str):
        return {"id": value} if re.fullmatch(r"\s*[0-9]+\s*", value) else {"name": value}
    return value


MinAppTableId = Annotated[str, BeforeValidator(_minapp_table_id)]


def _plain_ids_too(schema: dict[str, Any]) -> None:
    """The schema of `tables`: "all", or items that are a table object, a plain id or a
    plain name."""
    listed = next((s for s in schema.get("anyOf", []) if s.get("type") == "array"), None)
    if listed is not None:
        listed["items"] = {"anyOf": [listed["items"], {"type": "integer", "minimum": 1},
                                     {"type": "string", "minLength": 1}]}
def _id_schema(schema: dict[str, Any]) -> None:
    """A table id is written as a number or a digit string (and may be left out for name)."""
    schema.pop("anyOf", None)
    schema["type"] = ["integer", "string"]


MINAPP_MAX_EXPORT_ROWS = 1_000_000


class MinAppSplit(ConfigModel):
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


# Export options whose backup MinApp's import does not take back as the table was. The
# export writes them (seeds/minapp-table-export-import.zh.txt, 数据导出: csv_customize_headers
# "导出数据为 CSV 时,可指定列名", timestamp_convert_keys "需要进行时间类型转换的字段列表"); the import
# (数据导入) takes the file as it is, with no column mapping, and MinApp keeps a value only
# under a field the table has, of its type ("对于不合法的数据, 知晓云会进行过滤", js-sdk
# create-record docs; our reading, as devkit/emulators/minapp_import.py): the records come
# back, those values do not, and the record count cannot tell.
UNRESTORABLE_OPTIONS = {
    "csv_customize_headers": (
        "the CSV's columns carry these names, not the table's field names, and MinApp's import "
        "fills fields by column name, so a restore leaves those values out while the record "
        "count still matches; remove csv_customize_headers from the table's options for "
        "backups that restore"
    ),
    "timestamp_convert_keys": (
        "MinApp writes these fields converted from timestamps to dates, and its import takes "
        "the dates as they are, so a restore drops or changes the values of those fields; "
        "remove timestamp_convert_keys from the table's options for backups that restore"
    ),
}


class MinAppTable(ConfigModel):
    """One MinApp table; a plain id in `tables` is the same as `{id: ...}`. The export
    options are passed to MinApp's export API as written."""

    id: MinAppTableId | None = Field(
        default=None, description="Table id (a number); or give name instead.",
        json_schema_extra=_id_schema,
    )
    name: EnvStr | None = Field(
        default=None, min_length=1,
        description="Table name, resolved to its id at each run (MinApp's table list).",
    )
    mode: Literal["all", "part"] | None = Field(
        default=None, description="all: every record; part: those matching where. Default: part "
        "when where is given, else all.",
    )
    where: dict[str, Any] | None = Field(
        default=None, description='Query, e.g. {"status": {"$eq": "paid"}}; needs mode part.'
    )
    include_keys: list[EnvStr] | None = Field(default=None, min_length=1, description="Only these fields.")
    exclude_keys: list[EnvStr] | None = Field(default=None, min_length=1, description="Leave these fields out.")
    order_by: list[EnvStr] | None = Field(
        default=None, min_length=1, description="Sort fields; -field for descending."
    )
    csv_customize_headers: list[EnvStr] | None = Field(
        default=None, min_length=1, description="Column names of a CSV export."
    )
    timestamp_convert_keys: list[EnvStr] | None = Field(
        default=None, min_length=1, description="Fields whose timestamps MinApp converts to dates."
    )
    split: MinAppSplit | None = Field(
        default=None, description="Export in parts; needed for tables over 1,000,000 rows."
    )

    @property
    def label(self) -> str:
        return self.id or f"{self.name!r}"

    def restore_caveats(self) -> list[dict[str, Any]]:
        """The options set here that keep a backup from restoring as the table was: each
        with its value and why (UNRESTORABLE_OPTIONS); [] for a table that restores."""
        return [{"option": name, "value": list(value), "why": why}
                for name, why in UNRESTORABLE_OPTIONS.items()
                if (value := getattr(self, name))]

    @model_validator(mode="after")
    def _where_needs_part(self) -> MinAppTable:
        if (self.id is None) == (self.name is None):
            raise ValueError("a table needs exactly one of id and name")
        if self.where is not None and self.mode == "all":
            raise ValueError(f"table {self.label}: where only applies with mode: part; set mode: "
                             "part or remove where")
        return self


class MinAppSource(SourceSettings):
    """Tables of a MinApp (知晓云) app, exported through its OpenAPI."""

    type: Literal["minapp"]
    name: EnvStr = Field(pattern=SHORT_ID, description="Short id for keys.")
    client_id: EnvStr = Field(min_length=1, description="OpenAPI client ID.")
    client_secret: Secret = Field(description="OpenAPI client secret, as ${ENV_VAR}.")
    env_id: EnvStr | None = Field(
        default=None, description="Test environment id (X-Hydrogen-Env-ID); omit for production."
    )
    tables: Literal["all"] | list[Annotated[MinAppTable, BeforeValidator(_minapp_table_entry)]] = Field(
        min_length=1, description="Tables to back up: all (every table the app has at each run, "
        "filtered by include/exclude), or ids, names, or {id or name, export options, split}.",
        json_schema_extra=_plain_ids_too,
    )
    include: list[EnvStr] | None = Field(
        default=None, min_length=1,
        description="With tables: all, only table names matching one of these globs.",
    )
    exclude: list[EnvStr] | None = Field(
        default=None, min_length=1,
        description="With tables: all, leave out table names matching one of these globs.",
    )
    file_type: Literal["json", "csv"] = Field(default="json", description="Export format.")
    max_export_rows: int = Field(
        default=MINAPP_MAX_EXPORT_ROWS, ge=1,
        description="MinApp's row limit per export job; change only if MinApp changes it.",
    )
    export_interval_seconds: float = Field(
        default=60.0, ge=0,
        description="MinApp allows one export job per table per minute: the parts of a split "
        "table are started this far apart; change only if MinApp changes it.",
    )
    api_base: EnvStr = Field(
        default="https://cloud.minapp.com", description="API base URL (private gateways, tests)."
    )

    def table(self, table_id: str) -> MinAppTable:
        for table in self.listed:
            if table.id == table_id:
                return table
        raise KeyError(table_id)

    @property
    def listed(self) -> list[MinAppTable]:
        """The tables written in the config ([] with tables: all)."""
        return [] if self.tables == "all" else self.tables

    def wanted(self, name: str) -> bool:
        """Does include/exclude keep the table called `name` (tables: all)?"""
        if self.include and not any(fnmatch.fnmatchcase(name, p) for p in self.include):
            return False
        return not (self.exclude and any(fnmatch.fnmatchcase(name, p) for p in self.exclude))

    @field_validator("tables", mode="before")
    @classmethod
    def _all_is_a_word(cls, value: Any) -> Any:
        return "all" if isinstance(value, str) and value.strip().lower() == "all" else value

    @field_validator("api_base")
    @classmethod
    def base_url(cls, value: str) -> str:
        if not re.match(r"^https?://[^\s/]+/?$", value):
            raise ValueError("must be https://host[:port] with no path")
        refuse_userinfo(value)
        if not is_secure_url(value):  # the client secret and bearer token go there
            raise ValueError(HTTPS_ONLY)
        return value.rstrip("/")

    @model_validator(mode="after")
    def _tables_are_consistent(self) -> MinAppSource:
        if (self.include or self.exclude) and self.tables != "all":
            raise ValueError("include/exclude apply to tables: all; list the tables or use all")
        ids = [t.label for t in self.listed]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"tables listed twice: {', '.join(dupes)}; list each once")
        for table in self.listed:
            if table.csv_customize_headers and self.file_type != "csv":
                raise ValueError(f"table {table.label}: csv_customize_headers needs file_type: csv; "
                                 "remove it or export CSV")
            if table.split and table.split.rows_per_part > self.max_export_rows:
                raise ValueError(
                    f"table {table.label}: split.rows_per_part {table.split.rows_per_part} is over "
                    f"max_export_rows {self.max_export_rows}; lower it"
                )
        return self


# What a run backs up: validation turns each wechat-platform entry into one WeChatSource per
# mini program, so the validated `Config.sources` holds only these.
