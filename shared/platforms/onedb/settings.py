"""Settings of 清林云 OneDB sources (`type: onedb`)."""

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
    SHORT_ID,
    ConfigModel,
    EnvStr,
    Secret,
    SourceSettings,
    refuse_userinfo,
)


class OneDBCondition(ConfigModel):
    """One getMany filter condition: `column symbol value`."""

    column: EnvStr = Field(min_length=1, description="Column compared.")
    symbol: Literal["=", "!=", ">", ">=", "<", "<="] = Field(description="Comparison.")
    value: bool | int | float | str = Field(description="Value compared with.")


class OneDBFilter(ConfigModel):
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


class OneDBTable(ConfigModel):
    """One OneDB table to back up; a plain string in `tables` is the same as `{name: ...}`."""

    name: EnvStr = Field(min_length=1, description="Table id (tableId).")
    keys: list[EnvStr] | None = Field(
        default=None, min_length=1,
        description="Primary key columns, in key order; default: the source's keys.",
    )
    filter: OneDBFilter | None = Field(default=None, description="Back up only matching rows.")
    getColumns: list[EnvStr] | None = Field(
        default=None, min_length=1, description="Back up only these columns (ids always)."
    )


def _table_entry(value: Any) -> Any:
    return {"name": value} if isinstance(value, str) else value


ONEDB_REGION = SHORT_ID  # region codes such as cn-east-1


class OneDBSource(SourceSettings):
    """Tables of a 清林云 OneDB environment, paged through by the finisher itself."""

    type: Literal["onedb"]
    name: EnvStr = Field(pattern=SHORT_ID, description="Short id for keys.")
    region: EnvStr = Field(
        pattern=ONEDB_REGION,
        description="Region code from the console overview, e.g. cn-east-1; the API is "
        "https://<region>.baasapi.com/cdb.",
    )
    envid: EnvStr = Field(min_length=1, description="Environment id.")
    keyid: EnvStr = Field(min_length=1, description="Environment key id (with the cdb app granted).")
    key_secret: Secret = Field(description="The environment key's secret, as ${ENV_VAR}.")
    app_id: EnvStr = Field(min_length=1, description="The app owning the tables (appId), e.g. user.")
    keys: list[EnvStr] | None = Field(
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
        refuse_userinfo(value)
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
