"""Config: plain http is refused wherever a secret travels (http only to this machine),
and errors show what was written (`${VAR}`), never what it expanded to."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from shared.config import ConfigError, parse_config

ENV = {"WECHAT_SECRET": "s3cr3t-value-123", "MINAPP_SECRET": "minapp-secret-456",
       "ROBOT": "", "TOKEN_AUTH": "Basic dXNlcjpwYXNz"}
BASE: dict[str, Any] = {
    "destination": {"bucket": "backups-1250000000", "region": "ap-guangzhou"},
    "sources": [
        {"type": "wechat", "name": "shop", "appid": "wx0123456789abcdef",
         "secret": "${WECHAT_SECRET}", "env": "shop-1a2b", "collections": ["orders"]},
        {"type": "minapp", "name": "app", "client_id": "a4d2d62965ddb57fa4d6",
         "client_secret": "${MINAPP_SECRET}", "tables": [1001]},
    ],
}

Place = Callable[[dict[str, Any], str], None]
PLACES: dict[str, tuple[Place, str]] = {
    "wechat api_base": (lambda d, url: d["sources"][0].update(api_base=url), "sources[0].api_base"),
    "minapp api_base": (lambda d, url: d["sources"][1].update(api_base=url), "sources[1].api_base"),
    "token service": (lambda d, url: d["sources"][0].update(secret=None, token={
        "mode": "external", "url": url + "/token", "authorization": "${TOKEN_AUTH}"}),
        "sources[0].token"),
    "webhook": (lambda d, url: d.update(notify={"webhooks": [{"url": "${ROBOT}"}]}),
                "notify.webhooks[0].url"),
    "heartbeat": (lambda d, url: d.update(notify={"heartbeat": {"url": "${ROBOT}"}}),
                  "notify.heartbeat.url"),
    "COS endpoint": (lambda d, url: d["destination"].update(endpoint=url), "destination.endpoint"),
    "SCF endpoint": (lambda d, url: d.update(dispatch={"endpoint": url}), "dispatch.endpoint"),
}


def parse(place: Place, url: str) -> Any:
    document = copy.deepcopy(BASE)
    place(document, url)
    return parse_config(document, environ={**ENV, "ROBOT": url + "/send?key=robot-key-1"})


@pytest.mark.parametrize("name", PLACES)
def test_plain_http_to_another_host_is_refused(name: str) -> None:
    place, field = PLACES[name]
    with pytest.raises(ConfigError) as info:
        parse(place, "http://api.example.com")
    [problem] = info.value.problems
    assert problem.startswith(field) and "must be https://" in problem
    assert "http:// only for 127.0.0.1 or localhost" in problem
    assert "robot-key-1" not in str(info.value)


@pytest.mark.parametrize("name", PLACES)
@pytest.mark.parametrize("url", ["https://api.example.com", "http://127.0.0.1:8080",
                                 "http://localhost:9000"])
def test_https_and_local_http_are_accepted(name: str, url: str) -> None:
    parse(PLACES[name][0], url)


def test_errors_show_the_text_as_written_not_the_expanded_value() -> None:
    document = copy.deepcopy(BASE)
    document["sources"][0].update(name="${NAME}", appid="${APPID}")
    environ = {**ENV, "NAME": "Private Name!", "APPID": "not-an-appid-but-a-secret"}
    with pytest.raises(ConfigError) as info:
        parse_config(document, environ=environ, source="/srv/app/backup.yaml")
    text = "\n".join(info.value.problems)
    assert '(got "${NAME}")' in text and '(got "${APPID}")' in text
    assert "Private Name" not in str(info.value) and "not-an-appid" not in str(info.value)


USERINFO_PLACES = {**{name: PLACES[name] for name in PLACES if name not in ("webhook", "heartbeat")},
                   "onedb api_base": (lambda d, url: d["sources"].append({
                       "type": "onedb", "name": "crm", "region": "cn-east-1", "envid": "env-1",
                       "keyid": "key-1", "key_secret": "${WECHAT_SECRET}", "app_id": "user",
                       "keys": ["id"], "tables": ["User"], "api_base": url}),
                                      "sources[2].api_base")}


@pytest.mark.parametrize("name", USERINFO_PLACES)
def test_a_password_in_a_shown_url_is_refused_without_echoing_it(name: str) -> None:
    """A URL's user:password@ travels as Basic auth and is part of the URL wherever it is
    shown (errors, logs); credentials have fields of their own. Webhook and heartbeat URLs
    are secrets as a whole and never shown, so they may carry it."""
    place, field = USERINFO_PLACES[name]
    with pytest.raises(ConfigError) as info:
        parse(place, "https://ops:pa55-w0rd-77@api.example.com")
    [problem] = info.value.problems
    assert problem.startswith(field) and "must not carry a user name or password" in problem
    assert "pa55-w0rd-77" not in str(info.value)


def test_a_token_service_url_with_a_password_says_where_credentials_go() -> None:
    with pytest.raises(ConfigError) as info:
        parse(PLACES["token service"][0], "https://ops:pa55-w0rd-77@tokens.example")
    [problem] = info.value.problems
    assert problem.startswith("sources[0].token.url")
    assert "authorization field as ${ENV_VAR}" in problem and "pa55-w0rd-77" not in problem


def test_a_heartbeat_url_without_a_scheme_is_refused_without_echoing_it() -> None:
    """Every ping to it would fail, and a monitor never pinged may never alert: the
    dead-man switch left unarmed."""
    place, field = PLACES["heartbeat"]
    with pytest.raises(ConfigError) as info:
        parse(place, "hc-ping.com")
    [problem] = info.value.problems
    assert problem.startswith(field) and "must be https://" in problem
    assert "robot-key-1" not in str(info.value)
