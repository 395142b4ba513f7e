"""The OneDB emulator answers like the API document says, over real HTTP."""

from __future__ import annotations

import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

import httpx
import jwt
import pytest

from devkit.emulators.onedb import MAX_ID, MIN_ID, OneDBEmulator, generated_row
from tests.support.onedb import APP, ENV_ID, KEY_ID, KEY_SECRET, ROOT

POSTS = [
    {"ids": {"userId": "b", "postId": 1}, "columns": {"n": 1}},
    {"ids": {"userId": "a", "postId": 10}, "columns": {"n": 2}},
    {"ids": {"userId": "a", "postId": 9}, "columns": {"n": 3}},
    {"ids": {"userId": "a", "postId": "x"}, "columns": {"n": 4}},  # strings after numbers
    {"ids": {"userId": "c", "postId": 0}, "columns": {"n": 5}},
]


def _token(secret: str = KEY_SECRET, **claims: Any) -> str:
    now = int(time.time())
    body = {"identity": "cdb", "iat": now, "exp": now + 60, **claims}
    return jwt.encode({k: v for k, v in body.items() if v is not None}, secret, algorithm="HS256")


def _call(emulator: OneDBEmulator, body: dict[str, Any], token: str | None = None,
          keyid: str = KEY_ID, envid: str = ENV_ID) -> Any:
    headers = {"envid": envid, "keyid": keyid, "Authorization": f"Bearer {token or _token()}"}
    response = httpx.post(f"{emulator.base_url}/cdb", json=body, headers=headers, timeout=10)
    assert response.status_code == 200
    return response.json()


def _many(table: str = "posts", **extra: Any) -> dict[str, Any]:
    return {"appId": APP, "tableId": table, "action": "getMany",
            "ids": {"userId": MIN_ID, "postId": MIN_ID},
            "endIds": {"userId": MAX_ID, "postId": MAX_ID}, "orderType": "asc", **extra}


@pytest.fixture
def posts(onedb_emulator: OneDBEmulator) -> OneDBEmulator:
    onedb_emulator.add_table(ENV_ID, APP, "posts", ["userId", "postId"], POSTS)
    return onedb_emulator


def test_composite_keys_page_in_order_with_next_id(posts: OneDBEmulator) -> None:
    first = _call(posts, _many(rowsLimit=2))
    assert [r["columns"]["n"] for r in first["data"]] == [3, 2]
    assert first["nextId"] == {"ids": {"userId": "a", "postId": "x"}}
    second = _call(posts, _many(rowsLimit=2, ids=first["nextId"]["ids"]))
    assert [r["columns"]["n"] for r in second["data"]] == [4, 1]
    last = _call(posts, _many(rowsLimit=2, ids=second["nextId"]["ids"]))
    assert [r["columns"]["n"] for r in last["data"]] == [5] and last["nextId"] is None


def test_descending_is_the_default_order(posts: OneDBEmulator) -> None:
    body = _many(rowsLimit=3, ids={"userId": MAX_ID, "postId": MAX_ID},
                 endIds={"userId": MIN_ID, "postId": MIN_ID})
    del body["orderType"]
    answer = _call(posts, body)
    assert [r["columns"]["n"] for r in answer["data"]] == [5, 1, 4]
    assert answer["nextId"] == {"ids": {"userId": "a", "postId": 10}}


def test_range_within_one_user(posts: OneDBEmulator) -> None:
    answer = _call(posts, _many(ids={"userId": "a", "postId": MIN_ID},
                                endIds={"userId": "a", "postId": MAX_ID}))
    assert [r["columns"]["n"] for r in answer["data"]] == [3, 2, 4]


def test_filter_applies_to_scanned_rows_and_get_columns(onedb_emulator: OneDBEmulator) -> None:
    onedb_emulator.add_generated_table(ENV_ID, APP, "events", 100)
    body = {"appId": APP, "tableId": "events", "action": "getMany", "orderType": "asc",
            "ids": {"userId": MIN_ID, "seq": MIN_ID}, "endIds": {"userId": MAX_ID, "seq": MAX_ID},
            "rowsLimit": 10, "getColumns": ["city"],
            "filter": {"conditionList": [{"column": "city", "symbol": "=", "value": "北京"}]}}
    answer = _call(onedb_emulator, body)
    assert answer["data"] == [{"ids": generated_row(i)["ids"], "columns": {"city": "北京"}}
                              for i in (1, 6)]
    assert answer["nextId"] == {"ids": generated_row(10)["ids"]}
    body["filter"] = {"conditionList": [{"column": "city", "symbol": "=", "value": "北京"}],
                      "conditionLogical": "not"}
    assert len(_call(onedb_emulator, body)["data"]) == 8


def test_page_cap_returns_short_pages(posts: OneDBEmulator) -> None:
    posts.page_cap = 1
    answer = _call(posts, _many(rowsLimit=5000))
    assert len(answer["data"]) == 1 and answer["nextId"] is not None


def test_get_one_row(posts: OneDBEmulator) -> None:
    body = {"appId": APP, "tableId": "posts", "action": "get", "ids": {"userId": "a", "postId": 9}}
    assert _call(posts, body) == POSTS[2]
    body["ids"] = {"userId": "a", "postId": 8}
    assert _call(posts, body) is None


@pytest.mark.parametrize(("change", "title"), [
    ({"rowsLimit": 5001}, "rowsLimit"),
    ({"ids": {"userId": MIN_ID}}, "缺少主键列 postId"),
    ({"endIds": {"userId": MAX_ID, "postId": MAX_ID, "x": 1}}, "非主键列 x"),
    ({"orderType": "up"}, "orderType"),
    ({"filter": {"conditionList": [{"column": "n", "symbol": "~", "value": 1}]}}, "symbol"),
    ({"tableId": "nope"}, "数据表不存在"),
    ({"action": "search"}, "not emulated"),
])
def test_bad_requests_answer_err_code(posts: OneDBEmulator, change: dict[str, Any], title: str) -> None:
    answer = _call(posts, {**_many(), **change})
    assert answer["errCode"] == 1 and title in answer["title"]
    assert "requestId" in answer["instance"] and "tableId" in answer["detail"]


@pytest.mark.parametrize(("token", "title"), [  # signed when the test runs, not collected
    (lambda: _token(secret="not-the-secret"), "token无效"),
    (lambda: _token(identity="user"), "身份不是cdb"),
    (lambda: _token(exp=int(time.time()) - 10), "已过期"),
    (lambda: _token(exp=None), "过期时间"),
    (lambda: "not-a-jwt", "token无效"),
])
def test_tokens_are_verified(posts: OneDBEmulator, token: Callable[[], str], title: str) -> None:
    assert title in _call(posts, _many(), token=token())["title"]


def test_unknown_env_key_and_missing_permission(posts: OneDBEmulator) -> None:
    assert "环境不存在" in _call(posts, _many(), envid="other")["title"]
    assert "密匙不存在" in _call(posts, _many(), keyid="other")["title"]
    posts.add_key(ENV_ID, "no-cdb", KEY_SECRET, cdb=False)
    assert "权限" in _call(posts, _many(), keyid="no-cdb")["title"]
    response = httpx.post(f"{posts.base_url}/cdb", json=_many(), headers={"envid": ENV_ID,
                                                                        "keyid": KEY_ID})
    assert "缺少访问token" in response.json()["title"]


def test_revoked_tokens_and_rotated_secrets(posts: OneDBEmulator) -> None:
    token = _token()
    assert "data" in _call(posts, _many(), token=token)
    posts.revoke_tokens()
    assert "token无效" in _call(posts, _many(), token=token)["title"]
    posts.set_key_secret(ENV_ID, KEY_ID, "new-secret-0000000")
    assert "token无效" in _call(posts, _many())["title"]
    assert "data" in _call(posts, _many(), token=_token(secret="new-secret-0000000"))


def test_latency_is_a_floor_per_call(posts: OneDBEmulator) -> None:
    posts.latency = 0.2
    began = time.monotonic()
    _call(posts, _many())
    assert 0.2 <= time.monotonic() - began < 1.0


def test_faults(posts: OneDBEmulator) -> None:
    posts.inject("busy")
    posts.inject("http_502")
    posts.inject("drop")
    assert "繁忙" in _call(posts, _many())["title"]
    headers = {"envid": ENV_ID, "keyid": KEY_ID, "Authorization": f"Bearer {_token()}"}
    assert httpx.post(f"{posts.base_url}/cdb", json=_many(), headers=headers).status_code == 502
    with pytest.raises(httpx.TransportError):
        httpx.post(f"{posts.base_url}/cdb", json=_many(), headers=headers)
    assert "data" in _call(posts, _many())


def test_generated_tables_cost_no_memory(onedb_emulator: OneDBEmulator) -> None:
    tracemalloc.start()
    try:
        onedb_emulator.add_generated_table(ENV_ID, APP, "huge", 1_000_000_000)
        assert tracemalloc.get_traced_memory()[0] < 1 << 20
    finally:
        tracemalloc.stop()
    start = generated_row(999_999_990)["ids"]
    body = {"appId": APP, "tableId": "huge", "action": "getMany", "orderType": "asc",
            "ids": start, "endIds": {"userId": MAX_ID, "seq": MAX_ID}, "rowsLimit": 5000}
    answer = _call(onedb_emulator, body)
    assert answer["data"] == [generated_row(i) for i in range(999_999_990, 1_000_000_000)]
    assert answer["nextId"] is None


def test_runs_as_a_process_of_its_own() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "devkit.emulators.onedb", "--key", f"{ENV_ID}:{KEY_ID}:{KEY_SECRET}",
         "--generated", f"{ENV_ID}:{APP}:events:12", "--latency", "0.01"],
        cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        base_url = process.stdout.readline().strip()
        body = {"appId": APP, "tableId": "events", "action": "getMany", "orderType": "asc",
                "ids": {"userId": MIN_ID, "seq": MIN_ID},
                "endIds": {"userId": MAX_ID, "seq": MAX_ID}, "rowsLimit": 100}
        headers = {"envid": ENV_ID, "keyid": KEY_ID, "Authorization": f"Bearer {_token()}"}
        answer = httpx.post(f"{base_url}/cdb", json=body, headers=headers).json()
        assert answer["data"] == [generated_row(i) for i in range(12)]
    finally:
        process.terminate()
        process.wait(timeout=10)


# writes (restore) -------------------------------------------------------------------------
def _write(action: str, ids: dict[str, Any], columns: dict[str, Any] | None = None,
           **condition: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"appId": APP, "tableId": "posts", "action": action, "ids": ids}
    if columns is not None:
        body["columns"] = columns
    if condition:
        body["condition"] = condition
    return body


def test_create_follows_its_condition(posts: OneDBEmulator) -> None:
    there, new = {"userId": "a", "postId": 9}, {"userId": "a", "postId": 11}
    refused = _call(posts, _write("create", there, {"n": 0}, type="notExist"))
    assert refused["errCode"] == 1 and "已存在" in refused["title"]
    assert refused["type"] == "cdb/create"
    refused = _call(posts, _write("create", new, {"n": 0}, type="exist"))
    assert refused["errCode"] == 1 and "不存在" in refused["title"]
    assert _call(posts, _write("create", new, {"n": 6}, type="notExist")) == {"ids": new}
    assert _call(posts, _write("create", there, {"m": 1})) == {"ids": there}  # ignore: default
    rows = posts.table_rows(ENV_ID, APP, "posts")
    assert {"ids": there, "columns": {"m": 1}} in rows  # overwritten whole
    assert {"ids": new, "columns": {"n": 6}} in rows and len(rows) == 6
    made = _call(posts, _write("create", {"userId": "z", "postId": "CDB:nanoId"}, {}))
    assert len(made["ids"]["postId"]) == 21
    odd = _call(posts, _write("create", new, {}, type="sometimes"))
    assert odd["errCode"] == 1 and "condition.type" in odd["title"]


def test_update_merges_columns_and_delete_removes(posts: OneDBEmulator) -> None:
    row = {"userId": "b", "postId": 1}
    assert _call(posts, _write("update", row, {"k": 2})) == {"ids": row}
    assert {"ids": row, "columns": {"n": 1, "k": 2}} in posts.table_rows(ENV_ID, APP, "posts")
    skipped = _call(posts, _write("update", row, {"k": 3}, type="ignore",
                                  conditionList=[{"column": "n", "symbol": "=", "value": 9}]))
    assert skipped["errCode"] == 1
    missing = {"userId": "q", "postId": 1}
    assert _call(posts, _write("update", missing, {"k": 1}, type="exist"))["errCode"] == 1
    assert _call(posts, _write("update", missing, {"k": 1})) == {"ids": missing}  # upsert
    assert _call(posts, _write("delete", missing)) == {"success": True}
    assert _call(posts, _write("delete", missing)) == {"success": True}  # ignore: fine
    assert _call(posts, _write("delete", missing, type="exist"))["errCode"] == 1
    assert len(posts.table_rows(ENV_ID, APP, "posts")) == 5
    assert posts.wipe(ENV_ID, APP, "posts") == 5
    assert _call(posts, _many())["data"] == []


def test_the_rate_limit_counts_writes_too(posts: OneDBEmulator) -> None:
    posts.rate_limit = 2
    posts.clock = lambda: 100.0  # the four calls fall in one second, however slow the host
    headers = {"envid": ENV_ID, "keyid": KEY_ID, "Authorization": f"Bearer {_token()}"}
    statuses = [httpx.post(f"{posts.base_url}/cdb", headers=headers, timeout=10,
                           json=_write("create", {"userId": "r", "postId": i}, {})).status_code
                for i in range(4)]
    assert statuses == [200, 200, 429, 429] and posts.refused == 2


def test_a_process_of_its_own_holds_an_empty_target_table() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "devkit.emulators.onedb", "--key", f"{ENV_ID}:{KEY_ID}:{KEY_SECRET}",
         "--table", f"{ENV_ID}:{APP}:posts:userId,postId"],
        cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        base_url = process.stdout.readline().strip()
        headers = {"envid": ENV_ID, "keyid": KEY_ID, "Authorization": f"Bearer {_token()}"}
        created = httpx.post(f"{base_url}/cdb", headers=headers, timeout=10,
                             json=_write("create", {"userId": "a", "postId": 1}, {"n": 1}))
        assert created.json() == {"ids": {"userId": "a", "postId": 1}}
        answer = httpx.post(f"{base_url}/cdb", json=_many(), headers=headers, timeout=10).json()
        assert answer["data"] == [{"ids": {"userId": "a", "postId": 1}, "columns": {"n": 1}}]
    finally:
        process.terminate()
        process.wait(timeout=10)
