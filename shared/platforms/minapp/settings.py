"""Settings of MinApp (知晓云) sources (`type: minapp`)."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import (
    BeforeValidator,
    Field,
    field_validator,
    model_validator,
)

from shared.config.fields import (
    ConfigModel,
    EnvStr,
    Secret,
    SourceSettings,
)


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


class MinAppTable(ConfigModel):
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


class MinAppSource(SourceSettings):
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
    export_interval_seconds: float = Field(
        default=60.0, ge=0,
        description="MinApp allows one export job per table per minute: the parts of a split "
        "table are started this far apart; change only if MinApp changes it.",
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
    def base_url(cls, value: str) -> str:
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
