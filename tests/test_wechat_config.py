"""WeChat config shapes: `collections: all` with include/exclude, token ownership modes and
the third-party platform; every mistake named with its field, value and fix."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from shared.config import ConfigError, config_json_schema, parse_config
from shared.platforms.wechat.settings import WeChatSource

ENV = {"S": "app-secret-123456", "T": "token-value-123456", "R": "refresh-123456"}
BASE: dict[str, Any] = {"destination": {"bucket": "b-1250000000", "region": "ap-guangzhou"},
                        "state": {"url": "sqlite:////tmp/unused.sqlite3"}}
WECHAT: dict[str, Any] = {"type": "wechat", "name": "shop", "appid": "wx0123456789abcdef",
                          "secret": "${S}", "env": "shop-1a2b", "collections": "all"}
PLATFORM: dict[str, Any] = {
    "type": "wechat-platform", "component_appid": "wx00000000000000c1",
    "component_secret": "${S}", "verify_ticket": "${T}",
    "apps": [
        {"name": "shop-a", "appid": "wx000000000000000a", "env": "a-1", "collections": "all",
         "exclude": ["tmp_*"]},
        {"name": "shop-b", "appid": "wx000000000000000b", "env": "b-1", "collections": ["orders"],
         "authorizer_token": {"refresh_token": "${R}"}},
    ],
}


def sources(*entries: dict[str, Any]) -> list[WeChatSource]:
    config = parse_config({**BASE, "sources": list(entries)}, environ=ENV)
    found = list(config.sources)
    assert all(isinstance(s, WeChatSource) for s in found)
    return found  # type: ignore[return-value]


def problems(*entries: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config({**BASE, "sources": [copy.deepcopy(e) for e in entries]}, environ=ENV)
    return info.value.problems


def test_all_collections_with_patterns() -> None:
    (source,) = sources({**WECHAT, "include": ["order*", "user?"], "exclude": ["*_old"]})
    assert source.collections == "all"
    assert [c for c in ["orders", "orders_old", "users", "user", "logs"] if source.wanted(c)] == [
        "orders", "users"]


def test_token_modes_and_shorthands() -> None:
    default, legacy, given, served = sources(
        {**WECHAT, "name": "a"}, {**WECHAT, "name": "b", "token": "legacy_token"},
        {**WECHAT, "name": "c", "secret": None, "token": {"access_token": "${T}"}},
        {**WECHAT, "name": "d", "token": {"mode": "external", "url": "https://tokens.example/x",
                                           "authorization": "${T}"}})
    assert default.token.mode == "stable_token" and legacy.token.mode == "legacy_token"
    assert given.token.mode == "external" and given.token.access_token is not None
    assert given.token.access_token.get_secret_value() == ENV["T"]
    assert served.token.url == "https://tokens.example/x"


def test_a_platform_is_one_source_per_mini_program() -> None:
    shop_a, shop_b, own = sources(PLATFORM, {**WECHAT, "name": "own"})
    assert [shop_a.name, shop_b.name, own.name] == ["shop-a", "shop-b", "own"]
    assert shop_a.platform is not None and shop_a.platform.authorizer_token is None
    assert shop_a.exclude == ["tmp_*"] and shop_a.type == "wechat"
    assert shop_b.platform is not None and shop_b.platform.authorizer_token is not None
    assert shop_b.platform.platform.component_appid == "wx00000000000000c1"
    assert own.platform is None


def app(**changes: Any) -> dict[str, Any]:
    platform = copy.deepcopy(PLATFORM)
    platform["apps"][0].update(changes)
    return platform


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ({**WECHAT, "collections": "everything"},
         'sources[0].collections: must be a list of collection names, or all (every collection, '
         'listed anew at each run) (got "everything")'),
        ({**WECHAT, "collections": ["orders"], "exclude": ["tmp_*"]},
         "sources[0]: include and exclude filter the collections found at each run; use them "
         "with collections: all"),
        ({**WECHAT, "exclude": ["tmp_*"], "queries": {"tmp_a": "db.collection('tmp_a').get()"}},
         "sources[0]: a query is given for 'tmp_a', but include/exclude leave it out"),
        ({**WECHAT, "exclude": [""]}, "sources[0].exclude: empty pattern; remove it"),
        ({**WECHAT, "token": "stabel_token"},
         "sources[0].token.mode: Input should be 'stable_token', 'legacy_token' or 'external' "
         '(got "stabel_token")'),
        ({**WECHAT, "token": {"acess_token": "${T}"}},
         "sources[0].token.acess_token: unknown field; did you mean 'access_token'?"),
        ({**WECHAT, "token": {"access_token": "raw-token-value"}},
         "sources[0].token.access_token: secrets may not be written into the config"),
        ({**WECHAT, "token": {"access_token": "${T}", "url": "https://t.example"}},
         "sources[0].token: give exactly one of access_token or url with mode external"),
        ({**WECHAT, "token": {"mode": "legacy_token", "url": "https://t.example"}},
         "sources[0].token: access_token, url and authorization are for mode external, "
         "not legacy_token"),
        ({**WECHAT, "token": {"url": "ftp://t.example"}}, "sources[0].token.url: must be an https:// URL"),
        ({**WECHAT, "secret": None},
         "sources[0]: secret is required with token mode stable_token; add secret: ${VAR}, or "
         "use a token you own"),
        ({**PLATFORM, "component_secret": None, "verify_ticket": None},
         "sources[0]: apps shop-a, shop-b need the platform's component_access_token; add "
         "component_secret: ${VAR} (and verify_ticket), or component_token"),
        ({**PLATFORM, "component_token": {"access_token": "${T}"}},
         "sources[0]: give component_secret (the product fetches component tokens) or "
         "component_token (a token you own), not both"),
        (app(colections=["x"]), "sources[0].apps[0].colections: unknown field; did you mean 'collections'?"),
        (app(appid="wxNOPE"), 'sources[0].apps[0].appid: must be wx and 16 of 0-9 and a-f'),
        (app(authorizer_token={"refresh_token": "${R}", "access_token": "${T}"}),
         "sources[0].apps[0].authorizer_token: give exactly one of refresh_token, access_token or url"),
        (app(authorizer_token={"refresh_token": "${NOT_SET}"}),
         "sources[0].apps[0].authorizer_token.refresh_token: environment variable NOT_SET is not set"),
        ({**PLATFORM, "verify_tikcet": "${T}"},
         "sources[0].verify_tikcet: unknown field; did you mean 'verify_ticket'?"),
        ({**PLATFORM, "type": "wechat-platfrom"},
         "sources[0]: type must be one of: wechat, "),
    ],
)
def test_mistakes_name_field_value_and_fix(entry: dict[str, Any], expected: str) -> None:
    found = problems(entry)
    assert any(expected in p for p in found), found


def test_app_names_clash_with_other_sources() -> None:
    found = problems(PLATFORM, {**WECHAT, "name": "shop-b"})
    assert found == ["sources: source names must be unique; rename shop-b"]


def test_secret_values_are_never_echoed() -> None:
    found = problems({**WECHAT, "token": {"access_token": "raw-token-value", "x": 1}},
                     app(authorizer_token={"refresh_token": "raw-refresh-value"}))
    assert not any("raw-" in p for p in found)


def test_schema_offers_the_platform_type() -> None:
    schema = config_json_schema()
    assert "WeChatPlatformSource" in schema["$defs"]
    assert schema["$defs"]["WeChatSource"]["properties"]["collections"]["anyOf"][0] == {"const": "all", "type": "string"}


GEO_QUERY = ("const Point = db.Geo.Point\nconst _ = db.command;\n"
             "db.collection('geo').where({name: 'x', age: _.gt(10).and(_.lt(20)), "
             "loc: new Point(113,23)}).limit(10).get()")


def test_a_query_may_declare_constants_first_as_wechats_example_does() -> None:
    """The dbExport page's sample query opens with `const Point = db.Geo.Point` before
    db.collection('geo')... (seeds/wechat-componenttcb-dbexport.en.txt, Sample Request Data)."""
    (source,) = sources({**WECHAT, "collections": ["geo"], "queries": {"geo": GEO_QUERY}})
    assert source.queries["geo"] == GEO_QUERY


@pytest.mark.parametrize("query", [
    "const c = db.collection('users')\ndb.collection('geo').get()",
    "const Point = db.Geo.Point\ndb.collection('users').get()",
    "const x = 1\ndb.collection('geo').get()",
])
def test_a_declaration_cannot_hide_another_collection_or_other_code(query: str) -> None:
    found = problems({**WECHAT, "collections": ["geo"], "queries": {"geo": query}})
    assert any("must start with db.collection('geo')" in p for p in found), found

