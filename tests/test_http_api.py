"""The HTTP API through the real trigger handler (functions/trigger/index.py) with
Function URL events (API Gateway events where a test's name says so), against the local setup (WeChat emulator, moto S3, SQLite). Every
answer is checked against docs/openapi.yaml on the way."""

from __future__ import annotations

import base64
import dataclasses
import json
import re
import socket
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from openapi_spec_validator import validate as validate_spec

import shared.entrypoints.http_api
from devkit.sample_data import make_docs
from shared.domain.jobs import Run, RunStatus, run_id_for, utcnow
from shared.entrypoints.http_api import MAX_BODY_BYTES, ROUTES, TOKEN_ENV
from shared.entrypoints.local_server import LocalApiServer
from tests.support.api import (
    SPEC,
    TOKEN,
    Api,
    check_response_shape,
    deploy,
    deploy_sources,
    gateway_event,
    url_event,
)
from tests.support.backup import ENV_ID, SECRET, LocalBackup, drive
from tests.support.deploy_rules import parse_dotenv


@pytest.fixture
def api(local: LocalBackup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Api:
    return deploy(local, tmp_path, monkeypatch)


def finish_run(api: Api, run_id: str) -> None:
    run = api.context().state.get_run(run_id)
    assert run is not None
    drive(api.context(), run)


# the contract -------------------------------------------------------------------------
def test_openapi_document_is_valid_and_matches_the_routes() -> None:
    validate_spec(SPEC)
    routed = {(route.pattern, method.lower()) for route in ROUTES for method in route.methods}
    documented = {(path, method) for path, item in SPEC["paths"].items() for method in item
                  if method in ("get", "post", "put", "patch", "delete", "head", "options")}
    assert routed == documented


# auth -----------------------------------------------------------------------------------
DATA_ROUTES = [("GET", "/runs"), ("POST", "/runs"), ("GET", "/runs/20261121T020000123Z-1a2b3c4d"),
               ("POST", "/runs/20261121T020000123Z-1a2b3c4d/acknowledge"), ("GET", "/collections"),
               ("POST", "/runs/20261121T020000123Z-1a2b3c4d/verify"), ("GET", "/restores"),
               ("POST", "/restores"), ("GET", "/restores/20261121T020000123Z-1a2b3c4d")]
EVERY_ROUTE = [("GET", "/"), *DATA_ROUTES]


NOT_SENDABLE = ["токен-которого-браузер-не-отправит", "a-long-enough-token-🔑-0000",
                "a-long-enough-tokén-0000", "a-long-enough-token\n0000"]
# The token .env.example ships (README, Deploying from zero, step 5): long enough, but
# published with the code, so anyone could use the API of a deploy that kept it.
TEMPLATE_TOKEN = parse_dotenv((Path(__file__).resolve().parent.parent / ".env.example")
                              .read_text(encoding="utf-8"))[TOKEN_ENV]


@pytest.mark.parametrize("value", [None, "", "   ", "short-token", TEMPLATE_TOKEN, *NOT_SENDABLE])
def test_every_route_is_closed_without_a_configured_token(
    api: Api, monkeypatch: pytest.MonkeyPatch, value: str | None
) -> None:
    if value is None:
        monkeypatch.delenv(TOKEN_ENV)
    else:
        monkeypatch.setenv(TOKEN_ENV, value)
    for method, path in [*EVERY_ROUTE, ("GET", "/nowhere")]:
        for token in (TOKEN, value or None, None):
            status, body, _ = api.call(method, path, token=token, body={} if method == "POST" else None)
            assert status == 503, (method, path)
            assert TOKEN_ENV in body["error"] and "set" in body["error"]
    # an oversized body is refused as closed too, not parsed first
    status, body, _ = api.call("POST", "/runs", raw_body="x" * (MAX_BODY_BYTES * 2))
    assert status == 503
    assert api.runs() == [] and api.exports() == 0


@pytest.mark.parametrize("value", NOT_SENDABLE)
def test_a_token_a_browser_cannot_send_closes_the_api_naming_the_fix(
    api: Api, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    """A browser's fetch refuses a header value with a character past U+00FF (and a line
    break), and sends U+0080-U+00FF as one byte where curl sends UTF-8: the status page
    could never use such a token. Closed, saying how to set one, without quoting it."""
    monkeypatch.setenv(TOKEN_ENV, value)
    status, body, _ = api.call("GET", "/runs", token=value)
    assert status == 503, body
    assert "ASCII" in body["error"] and "token_urlsafe" in body["error"], body
    assert value not in body["error"] and not {"🔑", "é", "т"} & set(body["error"])


@pytest.mark.parametrize("method,path", DATA_ROUTES)
def test_data_routes_refuse_a_missing_or_wrong_token(api: Api, method: str, path: str) -> None:
    attempts: list[dict[str, Any]] = [
        {"token": None},
        {"token": "wrong-token-of-some-length-0000"},
        {"token": TOKEN[:-1]},
        {"token": TOKEN + "x"},
        {"token": None, "headers": {"authorization": f"Basic {TOKEN}"}},
        {"token": None, "headers": {"authorization": "Bearer "}},
        {"token": None, "query": {"token": TOKEN}},  # only the header counts
    ]
    for attempt in attempts:
        status, body, headers = api.call(method, path, body={} if method == "POST" else None, **attempt)
        assert status == 401, attempt
        assert headers["www-authenticate"].startswith("Bearer")
        assert body["field"] == "Authorization"
        assert TOKEN not in json.dumps(body)
    assert api.runs() == [] and api.exports() == 0


def test_wrong_token_is_named_invalid(api: Api) -> None:
    _, body, headers = api.call("GET", "/runs", token="wrong-token-of-some-length-0000")
    assert 'error="invalid_token"' in headers["www-authenticate"]
    assert "wrong" in body["error"]
    _, body, headers = api.call("GET", "/runs", token=None)
    assert "invalid_token" not in headers["www-authenticate"]
    assert "Authorization: Bearer" in body["error"]


def test_the_bearer_scheme_is_case_insensitive(api: Api) -> None:
    status, _, _ = api.call("GET", "/runs", token=None, headers={"Authorization": f"bearer {TOKEN}"})
    assert status == 200


# POST /runs ----------------------------------------------------------------------------
def test_post_runs_backs_up_everything(api: Api) -> None:
    status, body, headers = api.call("POST", "/runs")

    assert status == 202 and body["created"] is True
    assert body["status_url"] == f"/runs/{body['run_id']}"
    assert headers["cache-control"] == "no-store"
    finish_run(api, body["run_id"])
    status, run, _ = api.call("GET", body["status_url"])
    assert status == 200
    assert run["status"] == "succeeded" and run["trigger"] == "http"
    assert {(j["source"], j["collection"]) for j in run["jobs"]} == {
        ("shop", "orders"), ("shop", "users"), ("archive", "orders")}
    for job in run["jobs"]:
        assert job["status"] == "done"
        assert job["records"] == (5 if job["collection"] == "users" else 20)
        assert job["bytes"] > 0 and len(job["sha256"]) == 64
        assert job["object_keys"] and job["object_keys"][0].startswith(f"backups/runs/{run['run_id']}/")
        assert api.local.objects.read(job["object_keys"][0])  # the key names a real object
        assert job["duration_seconds"] >= 0
    assert run["totals"] == {"jobs": 3, "done": 3, "failed": 0, "records": 45,
                             "bytes": sum(j["bytes"] for j in run["jobs"])}
    assert run["jobs_by_status"]["done"] == 3
    assert run["manifest_key"] and api.local.objects.read(run["manifest_key"])


def test_a_wiped_collection_is_flagged_and_acknowledged_over_http(api: Api) -> None:
    first = api.call("POST", "/runs", headers={"Idempotency-Key": "night-1"})[1]["run_id"]
    finish_run(api, first)
    api.local.emulator.add_collection(ENV_ID, "orders", [])  # wiped at the source
    second = api.call("POST", "/runs", headers={"Idempotency-Key": "night-2"})[1]["run_id"]
    finish_run(api, second)

    _, run, _ = api.call("GET", f"/runs/{second}")
    flags = {(j["source"], j["collection"]): (j["suspect"], j["previous_records"]) for j in run["jobs"]}
    assert flags == {("shop", "orders"): (True, 20), ("archive", "orders"): (True, 20),
                     ("shop", "users"): (False, 5)}
    _, listed, _ = api.call("GET", "/collections")
    shop_orders = next(c for c in listed["collections"]
                       if (c["source"], c["collection"]) == ("shop", "orders"))
    assert shop_orders["latest"]["suspect"] and shop_orders["latest"]["records"] == 0
    assert shop_orders["last_good"]["run_id"] == first and shop_orders["last_good"]["records"] == 20
    assert shop_orders["last_good"]["age_seconds"] >= 0 and listed["retention"] is False

    path = f"/runs/{second}/acknowledge"
    status, job, _ = api.call("POST", path, body={"source": "shop", "collection": "orders"})
    assert status == 200 and job["suspect"] is False and job["acknowledged_at"]
    assert api.call("POST", path, body={"source": "shop", "collection": "orders"})[0] == 200
    status, problem, _ = api.call("POST", path, body={"source": "shop", "collection": "users"})
    assert status == 409 and "not suspect" in problem["error"]
    status, problem, _ = api.call("POST", path, body={"source": "shop", "collection": "nope"})
    assert status == 404
    status, problem, _ = api.call("POST", path, body={"source": "shop"})
    assert status == 400 and problem["field"] == "collection"
    status, problem, _ = api.call("POST", "/runs/20200101T000000000Z-00000000/acknowledge",
                                  body={"source": "shop", "collection": "orders"})
    assert status == 404 and problem["field"] == "run_id"
    _, listed, _ = api.call("GET", "/collections")
    shop_orders = next(c for c in listed["collections"]
                       if (c["source"], c["collection"]) == ("shop", "orders"))
    assert shop_orders["last_good"]["run_id"] == second  # the acknowledged drop is good now


@pytest.mark.parametrize("path,body", [
    ("/runs/20261121T020000123Z-1a2b3c4d/acknowledge", {"source": "shop", "collection": "orders"}),
    ("/doctor", {"notify": True}),
])
def test_every_post_route_refuses_a_body_that_is_not_json_with_415(
        api: Api, path: str, body: dict[str, Any]) -> None:
    """Like POST /runs, /restores and /runs/{id}/verify: a body sent as a form or text is
    refused before the route acts on it (a doctor --notify would message every webhook)."""
    for content_type in ("text/plain", "application/x-www-form-urlencoded"):
        status, answer, _ = api.call("POST", path, raw_body=json.dumps(body),
                                     headers={"content-type": content_type})

        assert status == 415, answer
        assert answer["field"] == "Content-Type" and content_type in answer["error"]


def test_post_runs_with_a_subset(api: Api) -> None:
    _, by_source, _ = api.call("POST", "/runs", body={"sources": ["archive"]})
    _, by_collection, _ = api.call("POST", "/runs", body={"collections": {"shop": ["users"]}})
    _, both, _ = api.call("POST", "/runs", body={"sources": ["shop", "archive"],
                                                 "collections": {"shop": ["orders"]}})

    def targets(run_id: str) -> set[tuple[str, str]]:
        _, run, _ = api.call("GET", f"/runs/{run_id}")
        return {(j["source"], j["collection"]) for j in run["jobs"]}

    assert targets(by_source["run_id"]) == {("archive", "orders")}
    assert targets(by_collection["run_id"]) == {("shop", "users")}
    assert targets(both["run_id"]) == {("shop", "orders"), ("archive", "orders")}
    assert api.exports() == 4
    _, run, _ = api.call("GET", f"/runs/{by_source['run_id']}")
    assert run["sources"] == ["archive"]


def test_post_runs_answers_quickly_and_leaves_the_rest_to_the_poller(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(shared.entrypoints.http_api, "HTTP_START_BUDGET_SECONDS", 1e-9)

    status, body, _ = api.call("POST", "/runs")

    assert status == 202 and api.exports() == 0  # recorded, nothing started yet
    _, run, _ = api.call("GET", body["status_url"])
    assert run["jobs_by_status"]["pending"] == 3
    finish_run(api, body["run_id"])
    assert api.call("GET", body["status_url"])[1]["status"] == "succeeded"


LISTING = "/tcb/databasecollectionget"  # WeChat's collection list


def test_a_resend_is_the_same_run_even_when_the_platform_listing_failed_or_changed(
        local: LocalBackup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A phone resends after a lost answer: compared with the first request as recorded,
    not with what the platform lists now (it failed the first time, then came back)."""
    local.seed("orders", make_docs(5))
    api = deploy_sources(local, tmp_path, monkeypatch, local.wechat_source(collections="all"))
    key = {"Idempotency-Key": "phone-tap-1"}
    local.emulator.inject_errcode(LISTING, -1, times=100)  # WeChat's "system busy"

    first = api.call("POST", "/runs", headers=key)
    again = api.call("POST", "/runs", headers=key)  # the listing still fails
    local.emulator.clear_faults()
    back = api.call("POST", "/runs", headers=key)  # it lists again, with a new collection
    local.seed("users", make_docs(3, prefix="u"))
    later = api.call("POST", "/runs", headers=key)

    assert first[0] == 202 and first[1]["created"] is True
    for status, body, _ in (again, back, later):
        assert (status, body["run_id"], body["created"]) == (202, first[1]["run_id"], False)
    assert api.call("POST", "/runs", body={"collections": {"shop": ["orders"]}},
                    headers=key)[0] == 409  # another request under the same key


def test_a_resend_naming_collections_is_the_same_run_while_the_listing_fails_or_changed(
        local: LocalBackup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first request named its collections and started; its answer was lost. The
    resend was checked against the platform's listing again: 503 while WeChat was busy
    (the phone then sends a new key: a second run), 400 once the collection was gone."""
    local.seed("orders", make_docs(5))
    local.seed("users", make_docs(3, prefix="u"))
    api = deploy_sources(local, tmp_path, monkeypatch, local.wechat_source(collections="all"))
    key = {"Idempotency-Key": "phone-tap-2"}
    body = {"collections": {"shop": ["users"]}}
    first = api.call("POST", "/runs", body=body, headers=key)
    assert first[0] == 202 and first[1]["created"] is True

    local.emulator.inject_errcode(LISTING, -1, times=100)  # WeChat's "system busy"
    busy = api.call("POST", "/runs", body=body, headers=key)
    local.emulator.clear_faults()
    local.emulator.drop_collection(ENV_ID, "users")
    gone = api.call("POST", "/runs", body=body, headers=key)

    for status, answer, _ in (busy, gone):
        assert (status, answer.get("run_id"), answer.get("created")) == (
            202, first[1]["run_id"], False), answer
    assert len(api.runs()) == 1
    # another request under the same key is still refused
    assert api.call("POST", "/runs", body={"collections": {"shop": ["orders"]}},
                    headers=key)[0] == 409


def test_a_listing_that_fails_while_checking_named_collections_is_a_503(
        local: LocalBackup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    local.seed("orders", make_docs(5))
    api = deploy_sources(local, tmp_path, monkeypatch, local.wechat_source(collections="all"))
    local.emulator.inject_errcode(LISTING, -1, times=100)
    status, body, _ = api.call("POST", "/runs", body={"collections": {"shop": ["orders"]}})
    assert status == 503 and body["field"] == "collections.shop"
    assert "could not list its collections" in body["error"] and "try again" in body["error"]
    assert api.runs() == []


def test_a_resend_with_the_same_idempotency_key_returns_the_same_run(api: Api) -> None:
    key = {"Idempotency-Key": "3f1c7a52-5b1e-4f59-9d1d-4a0b6c7e8f90"}
    body = {"collections": {"shop": ["orders"]}}

    first = api.call("POST", "/runs", body=body, headers=key)
    again = api.call("POST", "/runs", body=body, headers=key)

    assert first[0] == again[0] == 202
    assert first[1]["created"] is True and again[1]["created"] is False
    assert first[1]["run_id"] == again[1]["run_id"]
    assert api.exports() == 1 and len(api.runs()) == 1
    assert api.runs()[0].idempotency_key == f"http:{key['Idempotency-Key']}"
    # the same key for another request is refused, not merged into the first run
    status, conflict, _ = api.call("POST", "/runs", body={"sources": ["archive"]}, headers=key)
    assert status == 409 and conflict["field"] == "Idempotency-Key"
    assert first[1]["run_id"] in conflict["error"]
    # without a key every POST is a new run
    assert api.call("POST", "/runs", body=body)[1]["run_id"] != api.call("POST", "/runs", body=body)[1]["run_id"]
    assert api.exports() == 3 and len(api.runs()) == 3


@pytest.mark.parametrize("body,field,words", [
    ({"sources": ["shop", "crm"]}, "sources[1]", ["'crm'", "shop, archive"]),
    ({"collections": {"crm": ["orders"]}}, "collections.crm", ["'crm'", "shop, archive"]),
    ({"collections": {"shop": ["orders", "payments"]}}, "collections.shop[1]",
     ["'payments'", "orders, users"]),
    ({"sources": ["archive"], "collections": {"shop": ["orders"]}}, "collections.shop",
     ["not in sources"]),
])
def test_unknown_sources_and_collections_name_the_configured_ones(
    api: Api, body: dict[str, Any], field: str, words: list[str]
) -> None:
    status, answer, _ = api.call("POST", "/runs", body=body)

    assert status == 400 and answer["field"] == field
    for word in words:
        assert word in answer["error"]
    assert api.runs() == [] and api.exports() == 0


@pytest.mark.parametrize("kwargs,status,field,words", [
    ({"raw_body": '{"sources": ["shop"'}, 400, "body", ["not valid JSON", "line 1"]),
    ({"raw_body": '["shop"]'}, 400, "body", ["JSON object"]),
    ({"raw_body": "null"}, 400, "body", ["JSON object"]),
    ({"body": {"sources": "shop"}}, 400, "sources", ["valid list", '"shop"']),
    ({"body": {"sources": [1]}}, 400, "sources[0]", ["valid string"]),
    ({"body": {"collections": {"shop": "orders"}}}, 400, "collections.shop", ["valid list"]),
    ({"body": {"collections": ["orders"]}}, 400, "collections", ["valid dictionary"]),
    ({"body": {"source": ["shop"]}}, 400, "source", ["unknown field", "'sources'"]),
    ({"body": {"sources": []}}, 400, "sources", ["must not be empty"]),
    ({"body": {"collections": {}}}, 400, "collections", ["must not be empty"]),
    ({"raw_body": '{"sources": ["shop"]}', "headers": {"content-type": "text/plain"}}, 415,
     "Content-Type", ["JSON"]),
    ({"raw_body": "not base64!", "headers": {}}, 400, "body", ["JSON"]),
    ({"raw_body": "eyJzb3VyY2VzIjogW119"}, 400, "body", ["not valid JSON"]),  # no base64 flag: text
    ({"body": {}, "headers": {"Idempotency-Key": "has spaces in it"}}, 400, "Idempotency-Key",
     ["visible ASCII"]),
    ({"body": {}, "headers": {"Idempotency-Key": "k" * 201}}, 400, "Idempotency-Key", ["200"]),
    ({"raw_body": json.dumps({"sources": ["shop"], "pad": "x" * MAX_BODY_BYTES})}, 413, "body",
     ["limit is 16384"]),
    ({"raw_body": json.dumps({"pad": "x" * MAX_BODY_BYTES}), "base64_body": True, "gateway": True},
     413, "body",
     ["limit"]),
])
def test_malformed_requests_start_nothing(
    api: Api, kwargs: dict[str, Any], status: int, field: str, words: list[str]
) -> None:
    answer_status, answer, _ = api.call("POST", "/runs", **kwargs)

    assert answer_status == status, answer
    assert answer["field"] == field
    for word in words:
        assert word in answer["error"]
    assert api.runs() == [] and api.exports() == 0


def test_api_gateway_bodies_in_base64_and_undecodable_ones(api: Api) -> None:
    status, body, _ = api.call("POST", "/runs", body={"sources": ["archive"]}, base64_body=True,
                               gateway=True)
    assert status == 202 and body["created"] is True

    event = gateway_event("POST", "/runs", raw_body="%%% not base64 %%%")
    event["isBase64Encoded"] = "true"  # some gateways send the flag as a string
    answer = api.trigger.main_handler(event, None)
    assert answer["statusCode"] == 400 and "base64" in json.loads(answer["body"])["error"]

    event = gateway_event("POST", "/runs")
    event["body"] = base64.b64encode(b'{"sources": ["\xff"]}').decode()
    event["isBase64Encoded"] = True
    answer = api.trigger.main_handler(event, None)
    assert answer["statusCode"] == 400 and "UTF-8" in json.loads(answer["body"])["error"]
    assert api.exports() == 1


# the two HTTP entries ---------------------------------------------------------------------
def test_the_documented_function_url_event_starts_a_run(api: Api) -> None:
    """The event of product/583/96099's example, with this API's path, token and body."""
    event = {
        "body": json.dumps({"sources": ["archive"]}),
        "headers": {"accept": "*/*", "accept-encoding": "gzip, deflate, br",
                    "cache-control": "no-cache", "connection": "keep-alive",
                    "content-length": "25", "content-type": "application/json",
                    "authorization": f"Bearer {TOKEN}", "x-scf-remote-addr": "111.206.96.145"},
        "httpMethod": "POST",
        "path": "/runs",
        "queryString": {},
    }
    answer = api.trigger.main_handler(event, None)
    assert set(answer) == {"statusCode", "headers", "body"}  # Function URL's response fields
    assert answer["statusCode"] == 202 and json.loads(answer["body"])["created"] is True


def test_api_gateway_events_still_work(api: Api) -> None:
    status, started, _ = api.call("POST", "/runs", body={"sources": ["archive"]}, gateway=True,
                                  headers={"Idempotency-Key": "gw-1"})
    assert status == 202
    status, listed, _ = api.call("GET", "/runs", query={"limit": "5"}, gateway=True)
    assert status == 200 and listed["runs"][0]["run_id"] == started["run_id"]
    status, one, _ = api.call("GET", started["status_url"], gateway=True)
    assert status == 200 and one["run_id"] == started["run_id"]
    status, _, headers = api.call("GET", "/", token=None, gateway=True)
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert api.call("GET", "/runs", token=None, gateway=True)[0] == 401


def test_a_function_url_path_is_not_treated_as_mounted(api: Api) -> None:
    """A Function URL serves the whole host: /backup/runs is not /runs there."""
    status, body, _ = api.call("GET", "/backup/runs")
    assert status == 404 and "/runs/{run_id}" in body["error"]


@pytest.mark.parametrize("field,value", [("path", None), ("path", 7), ("headers", ["a"]),
                                         ("queryString", "a=1"), ("httpMethod", 1)])
def test_an_unrecognised_event_shape_names_the_field_and_the_document(
    api: Api, field: str, value: Any
) -> None:
    event = url_event("GET", "/runs")
    if value is None:
        del event[field]
    else:
        event[field] = value
    answer = api.trigger.main_handler(event, None)
    error = json.loads(answer["body"])
    assert answer["statusCode"] == 500 and error["field"] == field
    assert "product/583/96099" in error["error"] and repr(field) in error["error"]


def test_the_scf_request_id_is_logged_for_function_url_requests(
    api: Api, capsys: pytest.CaptureFixture[str]
) -> None:
    api.trigger.main_handler(url_event("GET", "/runs"), {"request_id": "scf-req-42"})
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert any(e.get("request_id") == "scf-req-42" and e["message"] == "HTTP request" for e in lines)


# GET /runs, GET /runs/{id} -------------------------------------------------------------------
def test_runs_are_listed_newest_first_in_pages(api: Api) -> None:
    started = [api.call("POST", "/runs", body={"sources": ["archive"]})[1]["run_id"] for _ in range(3)]

    _, first, _ = api.call("GET", "/runs", query={"limit": "2"})
    _, second, _ = api.call("GET", "/runs", query={"limit": "2", "before": first["next"]})
    _, everything, _ = api.call("GET", "/runs")

    newest_first = sorted(started, reverse=True)
    assert [r["run_id"] for r in first["runs"]] == newest_first[:2]
    assert first["next"] == newest_first[1]
    assert [r["run_id"] for r in second["runs"]] == newest_first[2:]
    assert second["next"] is None
    assert [r["run_id"] for r in everything["runs"]] == newest_first and everything["next"] is None
    assert all(r["totals"]["jobs"] == 1 and r["trigger"] == "http" for r in everything["runs"])


def test_restores_are_listed_newest_first_in_pages_like_runs(api: Api) -> None:
    """GET /restores showed the 20 newest only: older restores could not be reached."""
    state, now = api.context().state, utcnow()
    made = []
    for index in range(3):  # with backup runs between them, which are not listed
        for operation in ("restore", "backup"):
            at, key = now + timedelta(minutes=2 * index), f"{operation}-{index}"
            if operation == "backup":
                at += timedelta(minutes=1)
            run = Run(run_id=run_id_for(key, at), idempotency_key=key, trigger="http",
                      status=RunStatus.SUCCEEDED, operation=operation, created_at=at)
            state.create_run(run, [])
            made += [run.run_id] if operation == "restore" else []
    newest_first = sorted(made, reverse=True)

    _, first, _ = api.call("GET", "/restores", query={"limit": "2"})
    _, second, _ = api.call("GET", "/restores", query={"limit": "2", "before": first["next"]})
    _, everything, _ = api.call("GET", "/restores")

    assert [r["restore_id"] for r in first["restores"]] == newest_first[:2]
    assert first["next"] == newest_first[1]
    assert [r["restore_id"] for r in second["restores"]] == newest_first[2:]
    assert second["next"] is None
    assert [r["restore_id"] for r in everything["restores"]] == newest_first
    assert everything["next"] is None
    for query, field in [({"limit": "0"}, "limit"), ({"limit": "101"}, "limit"),
                         ({"before": "yesterday"}, "before"),
                         ({"before": newest_first[0] + "\n"}, "before")]:
        status, body, _ = api.call("GET", "/restores", query=query)
        assert (status, body["field"]) == (400, field), body


@pytest.mark.parametrize("query,field", [
    ({"limit": "0"}, "limit"), ({"limit": "101"}, "limit"), ({"limit": "ten"}, "limit"),
    ({"limit": "-1"}, "limit"), ({"before": "yesterday"}, "before"), ({"page": "2"}, "page"),
    ({"limit": ["1", "2"]}, "limit"),
])
def test_bad_list_parameters_are_named(api: Api, query: dict[str, Any], field: str) -> None:
    status, body, _ = api.call("GET", "/runs", query=query)
    assert status == 400 and body["field"] == field


@pytest.mark.parametrize("method,path,query,field", [
    ("POST", "/runs", {"sources": "archive"}, "sources"),  # would back up everything
    ("POST", "/restores", {"preview": "true"}, "preview"),  # would start a real restore
    ("POST", "/runs/latest/verify", {"quick": "false"}, "quick"),
    ("GET", "/restores", {"page": "2"}, "page"),
    ("GET", "/collections", {"source": "shop"}, "source"),
    ("GET", "/runs/20261121T020000123Z-1a2b3c4d", {"jobs": "failed"}, "jobs"),
    ("POST", "/runs", {"limit": "5"}, "limit"),  # GET /runs' parameters only on GET
])
def test_query_parameters_a_route_does_not_take_are_refused_not_ignored(
    api: Api, method: str, path: str, query: dict[str, Any], field: str
) -> None:
    """A parameter sent in the query string where the route reads only its body (or takes
    none) was ignored: POST /runs?sources=archive backed up every source, and POST
    /restores?preview=true started the restore it meant to preview."""
    status, body, _ = api.call(method, path, query=query, body={} if method == "POST" else None)
    assert status == 400, body
    assert body["field"] == field and repr(field) in body["error"]
    assert api.runs() == [] and api.exports() == 0


def test_a_run_id_with_a_trailing_newline_is_no_run_id(api: Api) -> None:
    """`$` matches before a final newline: `before=<id>%0A` passed as a run id and the
    "next page" began with the run that ended the page before."""
    for _ in range(2):
        api.call("POST", "/runs", body={"sources": ["archive"]})
    _, first, _ = api.call("GET", "/runs", query={"limit": "1"})
    status, body, _ = api.call("GET", "/runs", query={"limit": "1", "before": first["next"] + "\n"})
    assert (status, body.get("field")) == (400, "before"), body
    status, body, _ = api.call("GET", f"/runs/{first['next']}\n")
    assert (status, body["field"]) == (404, "run_id"), body


def test_an_unknown_run_is_404(api: Api) -> None:
    for run_id in ("20261121T020000123Z-1a2b3c4d", "not-a-run", "..%2F..%2Fetc"):
        status, body, _ = api.call("GET", f"/runs/{run_id}")
        assert status == 404 and body["field"] == "run_id"


def test_a_failed_job_says_why_and_leaks_nothing(api: Api) -> None:
    api.local.emulator.fail_export(
        ENV_ID, "users",
        "export crashed; log at https://cos.example.com/x.log?q-signature=abcdef0123456789&token=zzz")
    _, started, _ = api.call("POST", "/runs", body={"sources": ["shop"]})
    finish_run(api, started["run_id"])

    _, run, _ = api.call("GET", f"/runs/{started['run_id']}")
    _, listing, _ = api.call("GET", "/runs")

    jobs = {j["collection"]: j for j in run["jobs"]}
    assert run["status"] == "failed" and run["totals"]["failed"] == 1
    assert jobs["orders"]["status"] == "done" and jobs["orders"]["error"] is None
    assert jobs["users"]["status"] == "failed"
    assert "export crashed" in jobs["users"]["error"]
    assert jobs["users"]["object_keys"] == [] and jobs["users"]["records"] is None
    everything = json.dumps([run, listing])
    for secret in [SECRET, TOKEN, "abcdef0123456789", *api.local.emulator.issued_tokens()]:
        assert secret not in everything
    assert "access_token" not in everything and "q-sign" not in everything
    for job in run["jobs"]:
        assert not {"lease_owner", "checkpoint", "lease_until"} & job.keys()


def test_errors_are_redacted_again_on_the_way_out(api: Api) -> None:
    """Should an unredacted error ever reach the state table, the API still masks it."""
    _, started, _ = api.call("POST", "/runs", body={"sources": ["archive"]})
    store = api.context().state
    (job,) = store.list_jobs(started["run_id"])
    leaky = "retrying https://dl.example.com/f.json?sign=s3cr3t-link-0000 with access_token=tok-123456"
    assert store.save_job(job.model_copy(update={"error": leaky})) is not None

    _, run, _ = api.call("GET", f"/runs/{started['run_id']}")

    error = run["jobs"][0]["error"]
    assert "https://dl.example.com/f.json" in error
    assert "s3cr3t-link-0000" not in error and "tok-123456" not in error


# routing --------------------------------------------------------------------------------------
@pytest.mark.parametrize("method,path,allow", [
    ("DELETE", "/runs", "GET, POST"), ("PUT", "/runs/20261121T020000123Z-1a2b3c4d", "GET"),
    ("POST", "/", "GET"), ("PATCH", "/runs", "GET, POST"),
])
def test_a_wrong_method_is_405_with_allow(api: Api, method: str, path: str, allow: str) -> None:
    status, body, headers = api.call(method, path)
    assert status == 405 and headers["allow"] == allow and allow in body["error"]
    assert api.runs() == []


def test_an_unknown_path_is_404_listing_the_routes(api: Api) -> None:
    status, body, _ = api.call("GET", "/admin", token=None)
    assert status == 404 and "/runs/{run_id}" in body["error"]


def test_an_api_gateway_api_can_be_mounted_below_a_path(api: Api) -> None:
    status, body, _ = api.call("GET", "/backup/runs", api_path="/backup", gateway=True)
    assert status == 200 and body == {"runs": [], "next": None}
    status, page, _ = api.call("GET", "/backup", api_path="/backup", token=None, gateway=True)
    assert status == 200 and "<html" in page


def test_the_page_shell_is_served_without_the_token_and_without_data(api: Api) -> None:
    _, started, _ = api.call("POST", "/runs", body={"sources": ["archive"]})

    status, html, headers = api.call("GET", "/", token=None)

    assert status == 200 and headers["content-type"].startswith("text/html")
    assert started["run_id"] not in html and "archive" not in html
    assert '<meta name="viewport" content="width=device-width' in html
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html), "no external assets"
    assert "sessionStorage" in html
    csp = headers["content-security-policy"]
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp
    assert "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
    assert headers["referrer-policy"] == "no-referrer"


def test_a_state_store_that_does_not_answer_is_a_503_saying_so(
        local: LocalBackup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """MySQL down (or out of the VPC's reach): its message says what to check, but every
    route answered a bare 500 "internal error" (the phone's user had no log to read)."""
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    api = deploy(dataclasses.replace(local, state_url=f"mysql+pymysql://baas@127.0.0.1:{port}/b"),
                 tmp_path, monkeypatch)
    status, body, _ = api.call("GET", "/runs")
    assert status == 503, body
    assert "state backend does not answer" in body["error"] and "state.url" in body["error"]
    for method, path in (("GET", "/runs"), ("POST", "/runs"), ("GET", "/collections")):
        status, body, _ = api.call(method, path, body={} if method == "POST" else None)
        assert status == 503, (method, path, body)
        assert "OperationalError" in body["error"] and "try again" in body["error"]


def test_an_invalid_config_is_reported_to_the_owner_only(api: Api) -> None:
    api.config_path.write_text("destination: {bucket: b}\nsources: []\n", encoding="utf-8")

    assert api.call("GET", "/runs", token=None)[0] == 401
    status, body, _ = api.call("GET", "/runs")
    assert status == 500 and "config" in body["error"] and "sources" in body["error"]


# real HTTP --------------------------------------------------------------------------------------
SEEN_EVENTS: list[dict[str, Any]] = []


@pytest.fixture
def server(api: Api) -> Iterator[str]:
    SEEN_EVENTS.clear()

    def handle(event: dict[str, Any]) -> dict[str, Any]:
        SEEN_EVENTS.append(event)
        answer: dict[str, Any] = api.trigger.main_handler(event, None)
        check_response_shape(answer, gateway=False)
        return answer

    local_server = LocalApiServer(handle)
    url = local_server.start()
    try:
        yield url
    finally:
        local_server.stop()


def test_the_local_server_speaks_real_http(api: Api, server: str) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with httpx.Client(base_url=server, timeout=30) as client:
        page = client.get("/")
        started = client.post("/runs", json={"sources": ["archive"]},
                              headers={**auth, "Idempotency-Key": "local-1"})
        resent = client.post("/runs", json={"sources": ["archive"]},
                             headers={**auth, "Idempotency-Key": "local-1"})
        listed = client.get("/runs", params={"limit": 5}, headers=auth)
        refused = client.get("/runs")
        too_big = client.post("/runs", content=b"{" + b" " * (MAX_BODY_BYTES * 4) + b"}",
                              headers={**auth, "Content-Type": "application/json"})
        binary = client.post("/runs", content=b'{"sources": ["\xff"]}',
                             headers={**auth, "Content-Type": "application/json"})

    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert started.status_code == 202 and resent.json()["run_id"] == started.json()["run_id"]
    assert listed.json()["runs"][0]["run_id"] == started.json()["run_id"]
    assert refused.status_code == 401 and refused.headers["www-authenticate"].startswith("Bearer")
    assert too_big.status_code == 413 and too_big.json()["field"] == "body"
    assert binary.status_code == 400 and "UTF-8" in binary.json()["error"]
    assert api.exports() == 1
    # what the local server sends is a Function URL event (product/583/96099)
    assert SEEN_EVENTS and all(set(e) == {"httpMethod", "path", "headers", "queryString", "body"}
                               for e in SEEN_EVENTS)
    assert SEEN_EVENTS[0]["headers"]["x-scf-remote-addr"] == "127.0.0.1"
    assert {"limit": "5"} in [e["queryString"] for e in SEEN_EVENTS]


def test_a_run_that_could_not_list_a_source_says_why(
        local: LocalBackup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """README "Being told": a source whose collections cannot be listed fails the run with
    the reason. A phone sees the run through GET /runs and GET /runs/{run_id}: the reason
    must be there, not only `failed` with no job at all."""
    local.seed("orders", make_docs(5))
    api = deploy_sources(local, tmp_path, monkeypatch, local.wechat_source(collections="all"))
    local.emulator.inject_errcode(LISTING, -1, times=100)
    status, started, _ = api.call("POST", "/runs")
    assert status == 202, started
    finish_run(api, started["run_id"])

    status, detail, _ = api.call("GET", started["status_url"])
    assert status == 200 and detail["status"] == "failed" and detail["jobs"] == []
    assert list(detail["sources_not_listed"]) == ["shop"], detail
    assert "errcode -1" in detail["sources_not_listed"]["shop"]
    status, page, _ = api.call("GET", "/runs")
    assert page["runs"][0]["sources_not_listed"] == detail["sources_not_listed"]


def test_an_oversized_acknowledge_body_gets_the_documented_413(api: Api) -> None:
    """Every answer is checked against docs/openapi.yaml on the way (Api.call)."""
    status, body, _ = api.call("POST", "/runs/20261121T020000123Z-1a2b3c4d/acknowledge",
                               raw_body=json.dumps({"source": "shop", "collection": "x" * 20_000}))
    assert status == 413 and body["field"] == "body", body


def test_a_runs_waiting_retention_alert_is_listed_as_documented(api: Api) -> None:
    """A prune that failed after the run closed leaves a "retention" alert on the run
    until a webhook takes it (shared/service/close.py): GET /runs and GET /runs/{run_id}
    list it under `undelivered_alerts`, in the shape docs/openapi.yaml gives (checked by
    Api.call), as they do a run's notification."""
    from shared.service.outbox import claimed, with_alert

    _, started, _ = api.call("POST", "/runs", body={"sources": ["shop"]})
    finish_run(api, started["run_id"])
    ctx = api.context()
    run = ctx.state.get_run(started["run_id"])
    assert run is not None
    assert ctx.state.save_run(with_alert(run, "retention", claimed(ctx.clock(), "⚠ retention ...")))

    status, detail, _ = api.call("GET", started["status_url"])
    _, page, _ = api.call("GET", "/runs")

    assert status == 200 and [a["kind"] for a in detail["undelivered_alerts"]] == ["retention"]
    assert page["runs"][0]["undelivered_alerts"] == detail["undelivered_alerts"]
