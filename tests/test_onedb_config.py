"""The OneDB source's config: what it accepts, and what it says about what it does not."""

from __future__ import annotations

from typing import Any

import pytest

from shared.config import ConfigError, config_json_schema, parse_config
from shared.platforms.onedb.settings import OneDBSource

ENVIRON = {"ONEDB_KEY_SECRET": "key-secret-value-1234"}


def _parse(**source: Any) -> OneDBSource:
    document = {
        "destination": {"bucket": "b-1250000000", "region": "ap-guangzhou"},
        "sources": [{"type": "onedb", "name": "crm", "region": "cn-east-1", "envid": "env-1",
                     "keyid": "key-1", "key_secret": "${ONEDB_KEY_SECRET}", "app_id": "user",
                     "keys": ["id"], "tables": ["User"], **source}],
    }
    parsed = parse_config(document, environ=ENVIRON).sources[0]
    assert isinstance(parsed, OneDBSource)
    return parsed


def _problems(**source: Any) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        _parse(**source)
    return caught.value.problems


def test_a_full_source() -> None:
    source = _parse(tables=["User", {
        "name": "Order", "keys": ["userId", "orderId"], "getColumns": ["total"],
        "filter": {"conditionList": [{"column": "status", "symbol": "=", "value": "paid"},
                                     {"column": "total", "symbol": ">=", "value": 10.5}],
                   "conditionLogical": "or"}}])
    assert source.endpoint == "https://cn-east-1.baasapi.com/cdb"
    assert source.key_secret.get_secret_value() == ENVIRON["ONEDB_KEY_SECRET"]
    assert [t.name for t in source.tables] == ["User", "Order"]
    order = source.table("Order")
    assert order.keys == ["userId", "orderId"] and order.getColumns == ["total"]
    assert order.filter is not None and order.filter.conditionList[1].value == 10.5
    assert source.table("User").keys is None  # the source's keys apply


def test_api_base_for_private_clouds_and_tests() -> None:
    assert _parse(api_base="https://db.example.cn/").endpoint == "https://db.example.cn/cdb"
    assert _parse(api_base="http://127.0.0.1:8123").endpoint == "http://127.0.0.1:8123/cdb"
    assert any("http:// only for 127.0.0.1" in p for p in _problems(api_base="http://db.example.cn"))


def test_the_key_secret_must_come_from_the_environment() -> None:
    problems = _problems(key_secret="key-secret-value-1234")
    assert problems == ["sources[0].key_secret: secrets may not be written into the config; "
                        "put it in an environment variable and write ${VAR_NAME} here"]
    assert "key-secret-value-1234" not in "".join(problems)


def test_problems_name_the_field_and_the_fix() -> None:
    problems = _problems(keys=None, tables=["User", "User", {"name": "Order", "filtr": {}}],
                         region="East 1")
    assert "sources[0].tables[2].filtr: unknown field; did you mean 'filter'?" in problems
    assert any(p.startswith("sources[0].region:") for p in problems)
    assert "tables listed twice" in " ".join(_problems(tables=["User", "User"]))
    assert "primary key columns unknown for table(s) User" in " ".join(_problems(keys=None))


def test_filters_are_checked() -> None:
    problems = _problems(tables=[{"name": "User", "filter": {
        "conditionList": [{"column": "a", "symbol": "like", "value": 1},
                          {"column": "b", "symbol": "=", "value": 2}],
        "conditionLogical": "not"}}])
    text = " ".join(problems)
    assert "symbol: Input should be '=', '!=', '>', '>=', '<' or '<='" in text
    problems = _problems(tables=[{"name": "User", "filter": {
        "conditionList": [{"column": "a", "symbol": "=", "value": 1},
                          {"column": "b", "symbol": "=", "value": 2}],
        "conditionLogical": "not"}}])
    assert "'not' takes exactly one condition" in " ".join(problems)


def test_schema_describes_the_source() -> None:
    schema = config_json_schema()
    onedb = schema["$defs"]["OneDBSource"]
    assert {"region", "envid", "keyid", "key_secret", "app_id", "tables"} <= set(onedb["required"])
    assert onedb["properties"]["key_secret"]["writeOnly"] is True
