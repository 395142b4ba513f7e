"""The WeChat CloudBase emulator, exercised over real HTTP with httpx."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from devkit.emulators.wechat import (
    QueryError,
    WeChatEmulator,
    parse_query,
    render_export,
)

APPID = "wx0123456789abcdef"
SECRET = "s3cr3t-app-secret"
ENV = "prod-1a2b3c"
REPO_ROOT = Path(__file__).resolve().parents[1]

RICH_DOCS: list[dict[str, Any]] = [
    {
        "_id": "a1",
        "name": "张三",
        "note": "hello 👋 world",
        "tags": ["备份", "🎉"],
        "profile": {"city": "深圳", "age": 30, "vip": True},
        "score": 9.5,
        "active": True,
    },
    {
        "_id": "a2",
        "name": 'O\'Brien, "Bob"',
        "note": "line1\nline2",
        "score": 7,
        "active": False,
        "deleted": None,
    },
    {"_id": "a3", "name": "李四", "extra": {"list": [1, {"k": "v"}], "empty": {}}},
]

RICH_JSONL = "\n".join(
    [
        r'{"_id":"a1","name":"张三","note":"hello 👋 world","tags":["备份","🎉"],'
        r'"profile":{"city":"深圳","age":30,"vip":true},"score":9.5,"active":true}',
        r'{"_id":"a2","name":"O'
        + "'"
        + r'Brien, \"Bob\"","note":"line1\nline2","score":7,"active":false,"deleted":null}',
        r'{"_id":"a3","name":"李四","extra":{"list":[1,{"k":"v"}],"empty":{}}}',
        "",
    ]
).encode("utf-8")

RICH_CSV = (
    "_id,name,note,tags,profile,score,active,deleted,extra\n"
    'a1,张三,hello 👋 world,"[""备份"",""🎉""]",'
    '"{""city"":""深圳"",""age"":30,""vip"":true}",9.5,true,,\n'
    'a2,"O\'Brien, ""Bob""","line1\nline2",,,7,false,,\n'
    'a3,李四,,,,,,,"{""list"":[1,{""k"":""v""}],""empty"":{}}"\n'
).encode()


class Api:
    """A tiny client for the emulated API (the product's own client is tested elsewhere)."""

    def __init__(self, emulator: WeChatEmulator) -> None:
        self.emulator = emulator
        self.client = httpx.Client(base_url=emulator.base_url, timeout=10)
        self.token = ""

    def stable_token(self, *, force: bool = False, **overrides: Any) -> dict[str, Any]:
        body = {
            "grant_type": "client_credential",
            "appid": APPID,
            "secret": SECRET,
            "force_refresh": force,
            **overrides,
        }
        result: dict[str, Any] = self.client.post("/cgi-bin/stable_token", json=body).json()
        return result

    def call(self, path: str, body: Any, token: str | None = None) -> dict[str, Any]:
        params = {"access_token": self.token if token is None else token}
        response = self.client.post(path, params=params, json=body)
        assert response.status_code == 200
        result: dict[str, Any] = response.json()
        return result

    def export(self, collection: str, file_type: int = 1, query: str | None = None) -> int:
        body = {
            "env": ENV,
            "file_path": f"backup/{collection}.{'json' if file_type == 1 else 'csv'}",
            "file_type": file_type,
            "query": query or f"db.collection('{collection}').get()",
        }
        result = self.call("/tcb/databasemigrateexport", body)
        assert result["errcode"] == 0, result
        job_id: int = result["job_id"]
        return job_id

    def poll(self, job_id: int) -> dict[str, Any]:
        return self.call("/tcb/databasemigratequeryinfo", {"env": ENV, "job_id": job_id})

    def finish(self, job_id: int) -> dict[str, Any]:
        for _ in range(20):
            info = self.poll(job_id)
            if info["status"] in ("success", "fail"):
                return info
        raise AssertionError("export never finished")

    def export_bytes(self, collection: str, file_type: int = 1, query: str | None = None) -> bytes:
        info = self.finish(self.export(collection, file_type, query))
        assert info["status"] == "success", info
        response = httpx.get(info["file_url"])
        assert response.status_code == 200
        return response.content


@pytest.fixture
def api(wechat_emulator: WeChatEmulator) -> Iterator[Api]:
    wechat_emulator.add_app(APPID, SECRET)
    wechat_emulator.add_env(APPID, ENV)
    client = Api(wechat_emulator)
    token = client.stable_token()
    client.token = token["access_token"]
    yield client
    client.client.close()


# --------------------------------------------------------------------------- tokens


def test_stable_token_is_stable_until_force_refresh(api: Api) -> None:
    first = api.stable_token()
    assert first["access_token"] == api.token
    assert 7190 <= first["expires_in"] <= 7200
    assert api.stable_token()["access_token"] == api.token

    rotated = api.stable_token(force=True)
    assert rotated["access_token"] != api.token
    assert rotated["expires_in"] == 7200
    old = api.call("/tcb/databasecollectionget", {"env": ENV})
    assert old["errcode"] == 40014
    new = api.call("/tcb/databasecollectionget", {"env": ENV}, token=rotated["access_token"])
    assert new["errcode"] == 0
    assert api.emulator.calls["/cgi-bin/stable_token"] == 4


def test_token_rejects_wrong_credentials(api: Api) -> None:
    assert api.stable_token(appid="wxnope")["errcode"] == 40013
    assert api.stable_token(secret="wrong") == {"errcode": 40125, "errmsg": "invalid appsecret"}
    assert api.stable_token(grant_type="password")["errcode"] == 40002
    response = api.client.get("/cgi-bin/stable_token")
    assert response.json()["errcode"] == 43002


def test_legacy_token_issues_a_new_token_per_call(api: Api) -> None:
    params = {"grant_type": "client_credential", "appid": APPID, "secret": SECRET}
    first = api.client.get("/cgi-bin/token", params=params).json()
    second = api.client.get("/cgi-bin/token", params=params).json()
    assert first["access_token"] != second["access_token"]
    assert second["expires_in"] == 7200
    assert api.emulator.calls["/cgi-bin/token"] == 2
    bad = api.client.get("/cgi-bin/token", params={**params, "secret": "x"}).json()
    assert bad["errcode"] == 40125
    # The previous token keeps working for a grace period, like the real platform.
    for token in (first["access_token"], second["access_token"]):
        assert api.call("/tcb/databasecollectionget", {"env": ENV}, token=token)["errcode"] == 0


def test_access_token_errors(api: Api) -> None:
    body = {"env": ENV}
    missing = api.client.post("/tcb/databasecollectionget", json=body).json()
    assert missing["errcode"] == 41001
    assert api.call("/tcb/databasecollectionget", body, token="bogus")["errcode"] == 40014

    api.emulator.expire_tokens()
    assert api.call("/tcb/databasecollectionget", body) == {
        "errcode": 42001,
        "errmsg": "access_token expired",
    }
    renewed = api.stable_token()["access_token"]
    assert renewed != api.token
    assert api.call("/tcb/databasecollectionget", body, token=renewed)["errcode"] == 0

    api.emulator.invalidate_tokens()
    assert api.call("/tcb/databasecollectionget", body, token=renewed)["errcode"] == 40014

    api.emulator.token_ttl = 0
    short_lived = api.stable_token()["access_token"]
    assert api.call("/tcb/databasecollectionget", body, token=short_lived)["errcode"] == 42001


# --------------------------------------------------------------------------- request errors


def test_request_errors(api: Api) -> None:
    emulator = api.emulator
    emulator.add_collection(ENV, "orders", [{"_id": "1"}])
    url = "/tcb/databasemigrateexport"
    params = {"access_token": api.token}
    good = {
        "env": ENV,
        "file_path": "x.json",
        "file_type": 1,
        "query": "db.collection('orders').get()",
    }

    assert api.client.get(url, params=params).json()["errcode"] == 43002
    assert api.client.post(url, params=params).json()["errcode"] == 44002
    assert api.client.post(url, params=params, content=b"{nope").json()["errcode"] == 47001
    assert api.client.post(url, params=params, content=b"[1, 2]").json()["errcode"] == 47001
    missing = api.call(url, {k: v for k, v in good.items() if k != "query"})
    assert missing == {"errcode": 40101, "errmsg": "missing parameter: query"}
    unknown_env = api.call(url, {**good, "env": "nope-env"})
    assert unknown_env == {"errcode": 40097, "errmsg": "invalid args: env nope-env not found"}
    assert api.call(url, {**good, "file_type": 3})["errcode"] == 40097
    assert api.call(url, {**good, "file_path": "../etc/passwd"})["errcode"] == 40097
    no_coll = api.call(url, {**good, "query": "db.collection('ghost').get()"})
    assert no_coll == {"errcode": -502005, "errmsg": "database collection not exists"}
    unknown_job = api.call("/tcb/databasemigratequeryinfo", {"env": ENV, "job_id": 42})
    assert unknown_job["errcode"] == 40097
    assert api.client.post("/tcb/nosuchapi", params=params, json={}).status_code == 404


def test_cloud_development_disabled_and_foreign_env(api: Api) -> None:
    emulator = api.emulator
    emulator.add_app("wxdisabled", "pw", tcb_enabled=False)
    emulator.add_app("wxother", "pw2")
    emulator.add_env("wxother", "other-env")
    disabled = api.stable_token(appid="wxdisabled", secret="pw")["access_token"]
    answer = api.call("/tcb/databasecollectionget", {"env": ENV}, token=disabled)
    assert answer == {"errcode": 85088, "errmsg": "no qbase privilege"}
    # An env of another app is invisible to this app's token.
    assert api.call("/tcb/databasecollectionget", {"env": "other-env"})["errcode"] == 40097


@pytest.mark.parametrize(
    ("query", "problem"),
    [
        ("", "must start with db.collection"),
        ("db.collection(orders).get()", "expected a quoted string"),
        ("db.collection('orders')", "must end with .get()"),
        ("db.collection('orders').orderBy('a', 'asc').get()", "unsupported method .orderBy()"),
        ("db.collection('orders').where({age: _.gt(10)}).get()", "unsupported value"),
        ("db.collection('orders').where({a: {b: 1}}).get()", "unsupported value"),
        ("db.collection('orders').where({'a.b': 1}).get()", "only top-level fields"),
        ("db.collection('orders').limit(-1).get()", "limit() needs a non-negative integer"),
        ("db.collection('orders').get().count()", "unexpected text after .get()"),
        ("db.collection('orders).get()", "unterminated string"),
    ],
)
def test_unparseable_queries_answer_40097(api: Api, query: str, problem: str) -> None:
    api.emulator.add_collection(ENV, "orders", [])
    body = {"env": ENV, "file_path": "x.json", "file_type": 1, "query": query}
    answer = api.call("/tcb/databasemigrateexport", body)
    assert answer["errcode"] == 40097
    assert answer["errmsg"].startswith("invalid args: query: ")
    assert problem in answer["errmsg"]


def test_query_parser_accepts_the_supported_syntax() -> None:
    parsed = parse_query(
        " db . collection( \"orders\" )\n.where({ status: \"paid\", 'city': '深圳', n: -1.5,"
        " ok: true, gone: null, }).skip(5).limit(10).get();"
    )
    assert parsed.collection == "orders"
    assert parsed.where == {"status": "paid", "city": "深圳", "n": -1.5, "ok": True, "gone": None}
    assert (parsed.skip, parsed.limit) == (5, 10)
    assert parse_query("db.collection('a').limit(3).skip(1).get()").skip == 1
    with pytest.raises(QueryError):
        parse_query("db.collection('a').where({}).where({}).get()")


def test_query_parser_skips_the_declarations_wechats_example_opens_with() -> None:
    """seeds/wechat-componenttcb-dbexport.en.txt: `const Point = db.Geo.Point` precedes
    db.collection(...) in the documented sample query."""
    parsed = parse_query("const Point = db.Geo.Point\nconst _ = db.command;\n"
                         "db.collection('orders').where({paid: true}).get()")
    assert parsed.collection == "orders" and parsed.where == {"paid": True}
    for hiding in ("const c = db.collection('users')\ndb.collection('orders').get()",
                   "const x = 1\ndb.collection('orders').get()"):
        with pytest.raises(QueryError, match=r"must start with db\.collection"):
            parse_query(hiding)


# --------------------------------------------------------------------------- exports


def test_status_progression_and_json_lines_bytes(api: Api) -> None:
    api.emulator.add_collection(ENV, "users", RICH_DOCS)
    job_id = api.export("users")
    statuses = []
    for _ in range(4):
        info = api.poll(job_id)
        statuses.append(info["status"])
        if info["status"] != "success":
            assert info["file_url"] == ""
            assert info["record_success"] == 0
    assert statuses == ["waiting", "migrating", "migrating", "success"]
    assert info["record_success"] == 3
    assert info["record_fail"] == 0
    url = urlsplit(info["file_url"])
    assert url.path == f"/_files/{job_id}/backup/users.json"
    query = parse_qs(url.query, keep_blank_values=True)
    assert query["q-sign-algorithm"] == ["sha1"]
    assert query["q-ak"] == ["AKIDemulator"]
    start, end = (int(x) for x in query["q-sign-time"][0].split(";"))
    assert end - start == 3600
    assert query["q-key-time"] == query["q-sign-time"]
    assert len(query["q-signature"][0]) == 40

    response = httpx.get(info["file_url"])
    assert response.status_code == 200
    assert response.headers["content-length"] == str(len(RICH_JSONL))
    assert response.content == RICH_JSONL
    assert render_export(RICH_DOCS, 1) == RICH_JSONL
    assert api.emulator.export_jobs() == [
        {
            "job_id": job_id,
            "env": ENV,
            "collection": "users",
            "file_type": 1,
            "file_path": "backup/users.json",
            "query": "db.collection('users').get()",
            "status": "success",
            "polls": 4,
        }
    ]


def test_csv_bytes(api: Api) -> None:
    api.emulator.add_collection(ENV, "users", RICH_DOCS)
    assert api.export_bytes("users", file_type=2) == RICH_CSV
    assert render_export(RICH_DOCS, 2) == RICH_CSV


def test_missing_ids_are_assigned_and_listed(api: Api) -> None:
    api.emulator.add_collection(ENV, "logs", [{"msg": "一"}, {"msg": "二"}])
    docs = api.emulator.docs(ENV, "logs")
    assert [list(doc) for doc in docs] == [["_id", "msg"], ["_id", "msg"]]
    assert len({doc["_id"] for doc in docs}) == 2
    assert api.export_bytes("logs") == render_export(docs, 1)


def test_query_filters_are_applied(api: Api) -> None:
    docs: list[dict[str, Any]] = [
        {"_id": str(i), "kind": "a" if i % 2 else "b", "n": i, "tags": ["x"] if i < 3 else []}
        for i in range(10)
    ]
    docs[4]["note"] = None
    api.emulator.add_collection(ENV, "items", docs)

    def ids(query: str) -> list[str]:
        content = api.export_bytes("items", query=query).decode()
        return [line.split('"')[3] for line in content.splitlines()]

    assert ids("db.collection('items').where({kind: 'a'}).get()") == ["1", "3", "5", "7", "9"]
    assert ids('db.collection("items").where({"n": 4}).get()') == ["4"]
    assert ids("db.collection('items').where({tags: 'x'}).get()") == ["0", "1", "2"]
    assert ids("db.collection('items').where({kind: 'b', n: 4.0}).get()") == ["4"]
    assert ids("db.collection('items').where({n: true}).get()") == []
    assert ids("db.collection('items').skip(2).limit(3).get()") == ["2", "3", "4"]
    assert ids("db.collection('items').where({kind: 'b'}).limit(2).skip(1).get()") == ["2", "4"]
    # null matches both a null value and a missing field
    assert len(ids("db.collection('items').where({note: null}).get()")) == 10


def test_empty_collection_exports_an_empty_file(api: Api) -> None:
    api.emulator.add_collection(ENV, "empty", [])
    for file_type in (1, 2):
        info = api.finish(api.export("empty", file_type))
        assert info["status"] == "success"
        assert info["record_success"] == 0
        response = httpx.get(info["file_url"])
        assert response.status_code == 200
        assert response.headers["content-length"] == "0"
        assert response.content == b""


def test_export_is_a_snapshot_taken_at_job_creation(api: Api) -> None:
    api.emulator.add_collection(ENV, "orders", [{"_id": "1", "v": "old"}])
    job_id = api.export("orders")
    api.emulator.add_collection(ENV, "orders", [{"_id": "1", "v": "new"}, {"_id": "2"}])
    info = api.finish(job_id)
    assert info["record_success"] == 1
    assert httpx.get(info["file_url"]).content == b'{"_id":"1","v":"old"}\n'


def test_polls_until_ready_is_configurable(api: Api) -> None:
    api.emulator.add_collection(ENV, "orders", [{"_id": "1"}])
    api.emulator.polls_until_ready = 0
    job_id = api.export("orders")
    assert [api.poll(job_id)["status"] for _ in range(3)] == ["waiting", "success", "success"]


# --------------------------------------------------------------------------- downloads


def test_links_expire_and_signatures_are_checked(api: Api) -> None:
    api.emulator.add_collection(ENV, "orders", RICH_DOCS)
    job_id = api.export("orders")
    api.emulator.link_ttl = 0
    expired = api.finish(job_id)["file_url"]
    response = httpx.get(expired)
    assert response.status_code == 403
    assert "<Code>AccessDenied</Code>" in response.text
    assert "<Message>Request has expired</Message>" in response.text

    api.emulator.link_ttl = 3600
    fresh = api.poll(job_id)["file_url"]
    tampered = fresh[:-4] + ("0000" if not fresh.endswith("0000") else "1111")
    response = httpx.get(tampered)
    assert response.status_code == 403
    assert "SignatureDoesNotMatch" in response.text
    start, end = parse_qs(urlsplit(fresh).query)["q-sign-time"][0].split(";")
    longer = fresh.replace(f"{start};{end}", f"{start};{int(end) + 999}")
    assert longer != fresh  # a longer window breaks the signature
    assert httpx.get(longer).status_code == 403
    unsigned = fresh.split("?")[0]
    assert httpx.get(unsigned).status_code == 403
    assert httpx.get(fresh).content == RICH_JSONL

    api.emulator.link_ttl = 2  # windows are whole seconds: at least one second still left
    short = api.poll(job_id)["file_url"]
    assert httpx.get(short).status_code == 200
    end = int(parse_qs(urlsplit(short).query)["q-sign-time"][0].split(";")[1])
    time.sleep(max(0.0, end - time.time()) + 0.05)
    assert httpx.get(short).status_code == 403


def test_expire_next_links_and_download_statuses(api: Api) -> None:
    api.emulator.add_collection(ENV, "orders", RICH_DOCS)
    job_id = api.export("orders")
    api.emulator.expire_next_links(1)
    expired = api.finish(job_id)["file_url"]
    assert httpx.get(expired).status_code == 403
    assert httpx.get(api.poll(job_id)["file_url"]).content == RICH_JSONL
    assert api.emulator.download_statuses == [403, 200]


def test_an_expired_link_is_the_next_download_not_the_next_link_signed(api: Api) -> None:
    """A status query whose link nobody fetches (the poller's) must not use the expiry up:
    it is the next download that is refused, however many links were signed before it
    and in whichever second (two links signed in one second are the same link, so the
    first version of this emulator refused the finisher's link only when the poller's
    and the finisher's queries fell in the same second: a flaky test)."""
    api.emulator.add_collection(ENV, "orders", RICH_DOCS)
    job_id = api.export("orders")
    api.emulator.expire_next_links(1)
    api.finish(job_id)  # the poller sees the export done; its link is never fetched
    time.sleep(1.1)  # the finisher's query comes a second later: another signature
    assert httpx.get(api.poll(job_id)["file_url"]).status_code == 403
    assert httpx.get(api.poll(job_id)["file_url"]).content == RICH_JSONL


def test_truncated_download_is_detected(api: Api) -> None:
    docs = [{"_id": str(i), "text": "数据" * 50} for i in range(200)]
    api.emulator.add_collection(ENV, "big", docs)
    url = api.finish(api.export("big"))["file_url"]
    api.emulator.truncate_downloads()
    with pytest.raises(httpx.TransportError):
        httpx.get(url)
    with httpx.Client() as client, client.stream("GET", url) as response:
        assert response.status_code == 200
        assert response.read() == render_export(docs, 1)


def test_range_requests(api: Api) -> None:
    api.emulator.add_collection(ENV, "users", RICH_DOCS)
    url = api.finish(api.export("users"))["file_url"]
    part = httpx.get(url, headers={"Range": "bytes=10-19"})
    assert part.status_code == 206
    assert part.content == RICH_JSONL[10:20]
    assert part.headers["content-range"] == f"bytes 10-19/{len(RICH_JSONL)}"
    assert httpx.get(url, headers={"Range": "bytes=100-"}).content == RICH_JSONL[100:]
    assert httpx.get(url, headers={"Range": "bytes=99999-"}).status_code == 416


def test_injected_errcodes(api: Api) -> None:
    api.emulator.add_collection(ENV, "orders", [{"_id": "1"}])
    api.emulator.inject_errcode("/tcb/databasemigrateexport", -1, times=2)
    body = {
        "env": ENV,
        "file_path": "o.json",
        "file_type": 1,
        "query": "db.collection('orders').get()",
    }
    for _ in range(2):
        assert api.call("/tcb/databasemigrateexport", body) == {
            "errcode": -1,
            "errmsg": "system error",
        }
    job_id = api.export("orders")
    api.emulator.inject_errcode("/tcb/databasemigratequeryinfo", -501003, errmsg="busy")
    assert api.poll(job_id)["errcode"] == -501003
    assert api.poll(job_id)["status"] == "waiting"
    api.emulator.inject_errcode("/cgi-bin/stable_token", 40164, errmsg="invalid ip")
    assert api.stable_token()["errcode"] == 40164
    url = api.finish(job_id)["file_url"]
    api.emulator.inject_errcode("/_files", 503)
    assert httpx.get(url).status_code == 503
    assert httpx.get(url).status_code == 200
    assert api.emulator.calls["/tcb/databasemigrateexport"] == 3
    assert api.emulator.calls["/_files"] == 2


def test_failed_export_and_misreported_count(api: Api) -> None:
    api.emulator.add_collection(ENV, "orders", [{"_id": "1"}, {"_id": "2"}])
    api.emulator.add_collection(ENV, "users", [{"_id": "u"}])
    api.emulator.fail_export(ENV, "orders", "export timeout")
    info = api.finish(api.export("orders"))
    assert info["status"] == "fail"
    assert info["error_msg"] == "export timeout"
    assert info["file_url"] == ""
    api.emulator.clear_faults()
    api.emulator.misreport_count(ENV, "orders", -1)
    info = api.finish(api.export("orders"))
    assert info["status"] == "success"
    assert info["record_success"] == 1
    assert httpx.get(info["file_url"]).content.count(b"\n") == 2
    assert api.finish(api.export("users"))["record_success"] == 1


def test_collection_listing_pages(api: Api) -> None:
    for i in range(23):
        api.emulator.add_collection(ENV, f"c{i:02d}", [{"_id": str(n)} for n in range(i)])
    first = api.call("/tcb/databasecollectionget", {"env": ENV})
    assert first["errcode"] == 0
    assert first["pager"] == {"Offset": 0, "Limit": 10, "Total": 23}
    names = [c["name"] for c in first["collections"]]
    offset = 10
    while offset < first["pager"]["Total"]:
        page = api.call("/tcb/databasecollectionget", {"env": ENV, "limit": 10, "offset": offset})
        assert page["pager"] == {"Offset": offset, "Limit": 10, "Total": 23}
        names += [c["name"] for c in page["collections"]]
        offset += 10
    assert names == [f"c{i:02d}" for i in range(23)]
    c05 = first["collections"][5]
    assert c05["count"] == 5
    assert c05["size"] == len(render_export(api.emulator.docs(ENV, "c05"), 1))
    assert set(c05) == {"name", "count", "size", "index_count", "index_size"}
    assert api.call("/tcb/databasecollectionget", {"env": ENV, "limit": "x"})["errcode"] == 40097


def test_collection_backed_by_a_file(api: Api, tmp_path: Path) -> None:
    source = tmp_path / "big.jsonl"
    lines = [f'{{"_id": "{i}", "n": {i}, "s": "é"}}\n' for i in range(50)]  # not compact
    source.write_text("".join(lines), encoding="utf-8")
    api.emulator.add_collection_file(ENV, "big", str(source), 50)
    listed = api.call("/tcb/databasecollectionget", {"env": ENV})["collections"][0]
    assert (listed["count"], listed["size"]) == (50, source.stat().st_size)

    info = api.finish(api.export("big"))
    assert info["record_success"] == 50
    assert httpx.get(info["file_url"]).content == source.read_bytes()
    assert api.export_bytes("big", query="db.collection('big').where({n: 7}).get()") == (
        b'{"_id":"7","n":7,"s":"\xc3\xa9"}\n'
    )
    csv_bytes = api.export_bytes("big", file_type=2)
    assert csv_bytes.startswith("_id,n,s\n0,0,é\n1,1,é\n".encode())
    assert api.emulator.docs(ENV, "big")[3] == {"_id": "3", "n": 3, "s": "é"}


def test_stop_deletes_export_files() -> None:
    with WeChatEmulator(polls_until_ready=0) as emulator:
        emulator.add_app(APPID, SECRET)
        emulator.add_env(APPID, ENV)
        emulator.add_collection(ENV, "orders", RICH_DOCS)
        api = Api(emulator)
        api.token = api.stable_token()["access_token"]
        assert api.export_bytes("orders") == RICH_JSONL
        workdir = emulator._tmpdir
        assert workdir is not None
        assert os.path.isdir(workdir)
        api.client.close()
    assert not os.path.exists(workdir)
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{emulator.base_url}/cgi-bin/token", timeout=2)


def test_command_line_prints_base_url_and_serves(tmp_path: Path) -> None:
    source = tmp_path / "orders.jsonl"
    source.write_bytes(RICH_JSONL)
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "devkit.emulators.wechat",
            "--port",
            "0",
            "--app",
            f"{APPID}:{SECRET}",
            "--env",
            f"{APPID}:{ENV}",
            "--jsonl",
            f"{ENV}:orders:{source}:3",
            "--polls-until-ready",
            "0",
        ],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        base_url = process.stdout.readline().strip()
        assert base_url.startswith("http://127.0.0.1:")
        emulator = WeChatEmulator()  # only used as a holder for base_url
        emulator.base_url = base_url
        api = Api(emulator)
        api.token = api.stable_token()["access_token"]
        assert api.export_bytes("orders") == RICH_JSONL
        api.client.close()
    finally:
        process.terminate()
        assert process.wait(timeout=10) == 0


# --------------------------------------------------------------------------- third-party platform

COMPONENT = "wx00000000000000c1"
COMPONENT_SECRET = "component-secret-123"
TICKET = "ticket@@@current"
OTHER_APPID = "wx1111111111111111"
OTHER_ENV = "other-9z8y"


@pytest.fixture
def platform(api: Api) -> Api:
    """`api`'s mini program and another one, both authorizing one platform."""
    emulator = api.emulator
    emulator.add_component(COMPONENT, COMPONENT_SECRET, TICKET)
    emulator.add_app(OTHER_APPID, "unused-secret")
    emulator.add_env(OTHER_APPID, OTHER_ENV)
    emulator.add_collection(ENV, "orders", [{"_id": "o1", "n": 1}, {"_id": "o2", "n": 2}])
    emulator.add_collection(OTHER_ENV, "users", [{"_id": "u1"}])
    return api


def component_token(api: Api, **overrides: Any) -> dict[str, Any]:
    body = {"component_appid": COMPONENT, "component_appsecret": COMPONENT_SECRET,
            "component_verify_ticket": TICKET, **overrides}
    result: dict[str, Any] = api.client.post("/cgi-bin/component/api_component_token", json=body).json()
    return result


def authorizer_token(api: Api, component: str, appid: str, refresh: str) -> dict[str, Any]:
    body = {"component_appid": COMPONENT, "authorizer_appid": appid,
            "authorizer_refresh_token": refresh}
    result: dict[str, Any] = api.client.post(
        "/cgi-bin/component/api_authorizer_token",
        params={"component_access_token": component}, json=body).json()
    return result


def test_component_token_needs_secret_and_a_current_ticket(platform: Api) -> None:
    issued = component_token(platform)
    assert issued["expires_in"] == 7200 and issued["component_access_token"]
    assert component_token(platform, component_appsecret="x")["errcode"] == 40125
    assert component_token(platform, component_verify_ticket="old")["errcode"] == 61006
    assert component_token(platform, component_appid="wx9999999999999999")["errcode"] == 61011
    platform.emulator.set_verify_ticket(COMPONENT, TICKET, expired=True)
    assert component_token(platform)["errcode"] == 61005
    platform.emulator.set_verify_ticket(COMPONENT, "ticket@@@new")
    assert "component_access_token" in component_token(platform, component_verify_ticket="ticket@@@new")


def test_componenttcb_calls_reach_only_authorized_mini_programs(platform: Api) -> None:
    component = component_token(platform)["component_access_token"]
    listing = platform.call("/componenttcb/dbcollection", {"env": ENV, "action": "get"}, component)
    assert listing["errcode"] == 61003  # not authorized yet
    platform.emulator.authorize(COMPONENT, APPID)

    listing = platform.call("/componenttcb/dbcollection", {"env": ENV, "action": "get"}, component)
    assert listing["total"] == 1 and [c["name"] for c in listing["collections"]] == ["orders"]
    assert "pager" not in listing
    by_query = platform.client.post("/componenttcb/dbcollection", json={"env": ENV},
                                    params={"access_token": component, "action": "get"}).json()
    assert by_query["total"] == 1
    body = {"env": ENV, "file_path": "x.json", "file_type": 1, "query": "db.collection('orders').get()"}
    job = platform.call("/componenttcb/dbexport", body, component)["job_id"]
    states = [platform.call("/componenttcb/dbmigrationstate", {"env": ENV, "job_id": job},
                            component)["status"] for _ in range(4)]
    assert states == ["waiting", "migrating", "migrating", "success"]
    # A component token is not an app token, and the other way round.
    assert platform.call("/tcb/databasecollectionget", {"env": ENV}, component)["errcode"] == 48001
    assert platform.call("/componenttcb/dbexport", body)["errcode"] == 48001
    other = platform.call("/componenttcb/dbcollection", {"env": OTHER_ENV, "action": "get"}, component)
    assert other["errcode"] == 61003


def test_authorizer_token_from_refresh_token_works_on_tcb(platform: Api) -> None:
    refresh = platform.emulator.authorize(COMPONENT, OTHER_APPID)
    component = component_token(platform)["component_access_token"]
    issued = authorizer_token(platform, component, OTHER_APPID, refresh)
    assert issued["authorizer_refresh_token"] == refresh and issued["expires_in"] == 7200
    token = issued["authorizer_access_token"]
    listing = platform.call("/tcb/databasecollectionget", {"env": OTHER_ENV}, token)
    assert [c["name"] for c in listing["collections"]] == ["users"]
    assert platform.call("/tcb/databasecollectionget", {"env": ENV}, token)["errcode"] == 40097
    assert platform.emulator.token_info(token)["kind"] == "authorizer"

    assert authorizer_token(platform, component, OTHER_APPID, "wrong")["errcode"] == 61023
    assert authorizer_token(platform, component, APPID, refresh)["errcode"] == 61003
    assert authorizer_token(platform, platform.token, OTHER_APPID, refresh)["errcode"] == 48001
    platform.emulator.rotate_refresh_tokens = True
    rotated = authorizer_token(platform, component, OTHER_APPID, refresh)["authorizer_refresh_token"]
    assert rotated != refresh
    assert authorizer_token(platform, component, OTHER_APPID, refresh)["errcode"] == 61023
    platform.emulator.revoke_authorization(COMPONENT, OTHER_APPID)
    assert authorizer_token(platform, component, OTHER_APPID, rotated)["errcode"] == 61003


def test_export_concurrency_limit_answers_501004_until_an_export_ends(api: Api) -> None:
    for name in ("a", "b", "c"):
        api.emulator.add_collection(ENV, name, [{"_id": name}])
    api.emulator.export_concurrency_limit = 2
    first, second = api.export("a"), api.export("b")
    body = {"env": ENV, "file_path": "c.json", "file_type": 1, "query": "db.collection('c').get()"}
    refused = api.call("/tcb/databasemigrateexport", body)
    assert refused["errcode"] == -501004
    assert api.emulator.running_exports(ENV) == 2
    assert api.finish(first)["status"] == "success"
    assert api.emulator.running_exports(ENV) == 1
    assert api.call("/tcb/databasemigrateexport", body)["errcode"] == 0
    assert api.finish(second)["status"] == "success"


def test_listing_page_limit_and_token_info(api: Api) -> None:
    api.emulator.max_listing_page = 10
    assert api.call("/tcb/databasecollectionget", {"env": ENV, "limit": 11})["errcode"] == 40097
    assert api.call("/tcb/databasecollectionget", {"env": ENV, "limit": 10})["errcode"] == 0
    params = {"grant_type": "client_credential", "appid": APPID, "secret": SECRET}
    legacy = api.client.get("/cgi-bin/token", params=params).json()["access_token"]
    assert api.emulator.token_info(legacy)["revoke_at"] is None
    api.client.get("/cgi-bin/token", params=params)
    info = api.emulator.token_info(legacy)
    assert info["valid"] and info["revoke_at"] is not None  # retired about 5 minutes later
