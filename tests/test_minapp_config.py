"""MinApp sources in the config: every mistake named with its field, value and fix."""

from __future__ import annotations

import copy
from typing import Any

import jsonschema
import pytest

from shared.config import ConfigError, config_json_schema, parse_config
from shared.platforms.minapp.settings import MinAppSource

ENV = {"MINAPP_SECRET": "client-secret-value-42"}
GOOD: dict[str, Any] = {
    "destination": {"bucket": "backups-1250000000", "region": "ap-guangzhou"},
    "sources": [{
        "type": "minapp", "name": "app", "client_id": "a4d2d62965ddb57fa4d6",
        "client_secret": "${MINAPP_SECRET}", "env_id": "f1eb0f4c7a3d",
        "tables": [1001, "1002", {
            "id": 1003, "where": {"status": {"$eq": "paid"}}, "include_keys": ["id", "total"],
            "order_by": ["-created_at"], "timestamp_convert_keys": ["created_at"],
            "split": {"key": "created_at", "rows_per_part": 500000},
        }],
        "file_type": "json",
    }],
}


def problems(mutate: Any) -> list[str]:
    document = copy.deepcopy(GOOD)
    mutate(document["sources"][0])
    with pytest.raises(ConfigError) as info:
        parse_config(document, environ=ENV)
    return info.value.problems


def test_valid_minapp_source() -> None:
    source = parse_config(GOOD, environ=ENV).sources[0]
    assert isinstance(source, MinAppSource)
    assert [t.id for t in source.listed] == ["1001", "1002", "1003"]
    assert source.client_secret.get_secret_value() == "client-secret-value-42"
    table = source.table("1003")
    assert table.split is not None and table.split.rows_per_part == 500000
    assert table.mode is None and table.where == {"status": {"$eq": "paid"}}
    assert source.api_base == "https://cloud.minapp.com" and source.max_export_rows == 1_000_000
    assert "client-secret-value-42" not in repr(source)


def test_all_tables_and_table_names() -> None:
    document = copy.deepcopy(GOOD)
    document["sources"][0].update(tables="all", include=["order*"], exclude=["*_tmp"])
    source = parse_config(document, environ=ENV).sources[0]
    assert isinstance(source, MinAppSource) and source.tables == "all" and source.listed == []
    assert source.wanted("orders") and not source.wanted("orders_tmp") and not source.wanted("users")
    document["sources"][0].update(tables=["orders", 1002, {"name": "users", "mode": "all"}],
                                  include=None, exclude=None)
    del document["sources"][0]["include"], document["sources"][0]["exclude"]
    source = parse_config(document, environ=ENV).sources[0]
    assert isinstance(source, MinAppSource)
    assert [(t.id, t.name) for t in source.listed] == [(None, "orders"), ("1002", None), (None, "users")]


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda s: s.update(tables=["0"]),
         "sources[0].tables[0].id: must be a MinApp table id, a number such as 1001"),
        (lambda s: s.update(tables=[{"id": 1001, "name": "orders"}]),
         "a table needs exactly one of id and name"),
        (lambda s: s.update(include=["o*"]), "include/exclude apply to tables: all"),
        (lambda s: s.update(tables=["orders", {"name": "orders"}]),
         "tables listed twice: 'orders'; list each once"),
        (lambda s: s.update(tables=[]), "sources[0].tables: Value should have at least 1 item"),
        (lambda s: s.update(tables=[1001, "1001"]), "tables listed twice: 1001; list each once"),
        (lambda s: s["tables"][2].update(mode="all"),
         "table 1003: where only applies with mode: part; set mode: part or remove where"),
        (lambda s: s["tables"][2].update(csv_customize_headers=["a"]),
         "table 1003: csv_customize_headers needs file_type: csv"),
        (lambda s: s["tables"][2]["split"].update(rows_per_part=2_000_000),
         "sources[0].tables[2].split.rows_per_part: Input should be less than or equal to 1000000"),
        (lambda s: s.update(max_export_rows=1000),
         "table 1003: split.rows_per_part 500000 is over max_export_rows 1000; lower it"),
        (lambda s: s["tables"][2]["split"].update(kye="x"),
         "sources[0].tables[2].split.kye: unknown field; did you mean 'key'?"),
        (lambda s: s["tables"][2].update(inclde_keys=["a"]),
         "sources[0].tables[2].inclde_keys: unknown field; did you mean 'include_keys'?"),
        (lambda s: s.update(tabels=[1]), "sources[0].tabels: unknown field; did you mean 'tables'?"),
        (lambda s: s["tables"][2].update(mode="some"),
         "sources[0].tables[2].mode: Input should be 'all' or 'part' (got \"some\")"),
        (lambda s: s.update(file_type="xlsx"), "sources[0].file_type: Input should be 'json' or 'csv'"),
        (lambda s: s.update(api_base="ftp://x"), "sources[0].api_base: must be https://host"),
        (lambda s: s.pop("client_id"), "sources[0].client_id: required field is missing"),
        (lambda s: s.update(client_secret="${NOT_SET}"),
         "sources[0].client_secret: environment variable NOT_SET is not set"),
    ],
)
def test_mistakes_are_named_with_the_fix(mutate: Any, expected: str) -> None:
    found = problems(mutate)
    assert any(expected in p for p in found), found


def test_literal_client_secret_is_refused_and_never_echoed() -> None:
    found = problems(lambda s: s.update(client_secret="literal-client-secret-99"))
    assert any(p.startswith("sources[0].client_secret: secrets may not be written into the config")
               for p in found), found
    assert "literal-client-secret-99" not in "\n".join(found)


def test_schema_knows_minapp_sources() -> None:
    schema = config_json_schema()
    definition = schema["$defs"]["MinAppSource"]
    assert definition["properties"]["type"]["const"] == "minapp"
    assert definition["properties"]["client_secret"]["writeOnly"] is True
    assert schema["$defs"]["MinAppTable"]["properties"]["id"]["type"] == ["integer", "string"]


def test_a_minapp_config_validates_against_the_schema() -> None:
    document = copy.deepcopy(GOOD)
    jsonschema.validate(document, config_json_schema())
    document["sources"][0]["tables"].append({"id": 1004, "colour": "red"})
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(document, config_json_schema())
