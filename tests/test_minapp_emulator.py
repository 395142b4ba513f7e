"""The MinApp OpenAPI emulator, exercised over real HTTP with httpx."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from devkit.emulators.minapp import MinAppEmulator, WhereError, matches_where, sort_records
from tests.support.minapp import CLIENT_ID, CLIENT_SECRET

REPO_ROOT = Path(__file__).resolve().parents[1]
AUTHORIZE = "/api/oauth2/hydrogen/openapi/authorize/"
ACCESS_TOKEN = "/api/oauth2/access_token/"


def sign_in(base_url: str, client_id: str = CLIENT_ID, secret: str = CLIENT_SECRET) -> str:
    with httpx.Client(follow_redirects=True) as client:
        answer = client.post(f"{base_url}{AUTHORIZE}",
                             json={"client_id": client_id, "client_secret": secret})
        assert answer.status_code == 200, answer.text
        fields = {"client_id": client_id, "client_secret": secret,
                  "code": answer.json()["code"], "grant_type": "authorization_code"}
        answer = client.post(f"{base_url}{ACCESS_TOKEN}",
                             files={k: (None, v) for k, v in fields.items()})
        assert answer.status_code == 200, answer.text
        token: str = answer.json()["access_token"]
        return token


class Api:
    def __init__(self, emulator: MinAppEmulator, env: str | None = None) -> None:
        self.base = emulator.base_url
        self.headers = {"Authorization": f"Bearer {sign_in(emulator.base_url)}"}
        if env:
            self.headers["X-Hydrogen-Env-ID"] = env

    def export(self, table: int | str, **body: Any) -> httpx.Response:
        return httpx.post(f"{self.base}/oserve/v1.5/table/{table}/export/",
                          json={"file_type": "json", "mode": "all", **body}, headers=self.headers)

    def job(self, table: int | str, job_id: str) -> httpx.Response:
        return httpx.get(f"{self.base}/oserve/v1.5/table/{table}/export/{job_id}/",
                         headers=self.headers)

    def jobs(self, table: int | str, **params: Any) -> httpx.Response:
        return httpx.get(f"{self.base}/oserve/v1.5/table/{table}/export/", params=params,
                         headers=self.headers)

    def records(self, table: int | str, **params: Any) -> httpx.Response:
        return httpx.get(f"{self.base}/oserve/v2.4/table/{table}/record/", params=params,
                         headers=self.headers)

    def finished(self, table: int | str, job_id: str) -> dict[str, Any]:
        for _ in range(10):
            info: dict[str, Any] = self.job(table, job_id).json()
            if info["status"] == "finish":
                return info
        raise AssertionError("export never finished")


# sign-in ------------------------------------------------------------------------------
def test_sign_in_redirects_and_needs_the_cookie(minapp_emulator: MinAppEmulator) -> None:
    base = minapp_emulator.base_url
    first = httpx.post(f"{base}{AUTHORIZE}",
                       json={"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET})
    assert first.status_code == 302
    assert "sessionid=" in first.headers["set-cookie"]
    location = first.headers["location"]
    assert location.startswith("/api/oauth2/authorize/?")

    without_cookie = httpx.get(f"{base}{location}")
    assert without_cookie.status_code == 401

    with httpx.Client(follow_redirects=True) as client:
        answer = client.post(f"{base}{AUTHORIZE}",
                             json={"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET})
    assert answer.status_code == 200 and [r.status_code for r in answer.history] == [302]
    assert set(answer.json()) == {"code", "expires_in"}


def test_wrong_client_secret_is_401(minapp_emulator: MinAppEmulator) -> None:
    answer = httpx.post(f"{minapp_emulator.base_url}{AUTHORIZE}",
                        json={"client_id": CLIENT_ID, "client_secret": "nope"})
    assert answer.status_code == 401 and answer.json()["error"] == "invalid_client"


def test_access_token_needs_multipart_and_a_fresh_code(minapp_emulator: MinAppEmulator) -> None:
    base = minapp_emulator.base_url
    with httpx.Client(follow_redirects=True) as client:
        code = client.post(f"{base}{AUTHORIZE}", json={
            "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET}).json()["code"]
    fields = {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET, "code": code,
              "grant_type": "authorization_code"}
    as_form = httpx.post(f"{base}{ACCESS_TOKEN}", data=fields)
    assert as_form.status_code == 400 and "multipart" in as_form.json()["error_description"]
    multipart = {k: (None, v) for k, v in fields.items()}
    answer = httpx.post(f"{base}{ACCESS_TOKEN}", files=multipart)
    assert answer.status_code == 200
    assert set(answer.json()) == {"access_token", "token_type", "expires_in", "refresh_token",
                                  "scope"}
    again = httpx.post(f"{base}{ACCESS_TOKEN}", files=multipart)
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"


def test_data_api_needs_a_valid_bearer_token(minapp_emulator: MinAppEmulator) -> None:
    minapp_emulator.add_table(1001, [{"a": 1}])
    url = f"{minapp_emulator.base_url}/oserve/v2.4/table/1001/record/"
    assert httpx.get(url).status_code == 401
    token = sign_in(minapp_emulator.base_url)
    assert httpx.get(url, headers={"Authorization": f"Bearer {token}"}).status_code == 200
    minapp_emulator.expire_tokens()
    assert httpx.get(url, headers={"Authorization": f"Bearer {token}"}).status_code == 401


# exports ------------------------------------------------------------------------------
def test_export_moves_through_its_states_and_downloads(minapp_emulator: MinAppEmulator) -> None:
    minapp_emulator.add_table(1001, [{"name": "张三", "tags": ["🎉"]}, {"name": "b"}])
    api = Api(minapp_emulator)
    created = api.export(1001)
    assert created.status_code == 201 and created.json()["status"] == "ok"
    job_id = created.json()["job_id"]

    states = [api.job(1001, job_id).json()["status"] for _ in range(4)]

    assert states == ["pending", "ready", "ready", "finish"]
    info = api.job(1001, job_id).json()
    assert info["operation"] == "export" and info["file_type"] == "json" and info["file_name"]
    data = httpx.get(info["download_url"]).content
    assert [json.loads(line) for line in data.decode().splitlines()] == \
        minapp_emulator.records(1001)


def test_one_export_per_table_per_window(minapp_emulator: MinAppEmulator) -> None:
    minapp_emulator.job_window = 60  # the refusals hold however slow the machine is
    minapp_emulator.add_table(1001, [{"a": 1}])
    minapp_emulator.add_table(1002, [{"a": 2}])
    api = Api(minapp_emulator)
    assert api.export(1001).status_code == 201
    assert api.export(1001).status_code == 400
    assert api.export(1002).status_code == 201  # the limit is per table
    minapp_emulator.job_window = 0.3  # a load can only lengthen the wait past it
    time.sleep(0.35)
    assert api.export(1001).status_code == 201
    assert len(minapp_emulator.export_jobs(1001)) == 2


def test_row_limit_and_bad_options_are_400_unknown_table_404(
        minapp_emulator: MinAppEmulator) -> None:
    minapp_emulator.max_export_rows = 3
    minapp_emulator.job_window = 0
    minapp_emulator.add_table(1001, [{"n": i} for i in range(5)])
    api = Api(minapp_emulator)
    assert api.export(1001).status_code == 400
    part = api.export(1001, mode="part", where={"n": {"$lt": 3}})
    assert part.status_code == 201
    assert api.export(1001, mode="part", where={"n": {"$near": 1}}).status_code == 400
    assert api.export(1001, file_type="xml").status_code == 400
    assert api.export(1001, csv_customize_headers=["x"]).status_code == 400  # json export
    assert api.export(1001, colour="red").status_code == 400
    assert api.export(4040).status_code == 404
    info = api.finished(1001, part.json()["job_id"])
    lines = httpx.get(info["download_url"]).content.decode().splitlines()
    assert [json.loads(line)["n"] for line in lines] == [0, 1, 2]


def test_csv_export_with_options(minapp_emulator: MinAppEmulator) -> None:
    minapp_emulator.add_table(1001, [{"name": "a,b", "n": 2}, {"name": 'say "hi"', "n": 1}])
    api = Api(minapp_emulator)
    created = api.export(1001, file_type="csv", include_keys=["name", "n"], order_by=["n"],
                         csv_customize_headers=["名字", "数量"])
    info = api.finished(1001, created.json()["job_id"])
    assert httpx.get(info["download_url"]).text == '名字,数量\n"say ""hi""",1\n"a,b",2\n'


def test_expired_link_forgotten_job_and_denied_status(minapp_emulator: MinAppEmulator) -> None:
    minapp_emulator.add_table(1001, [{"a": 1}])
    minapp_emulator.link_ttl = -1
    api = Api(minapp_emulator)
    job_id = api.export(1001).json()["job_id"]
    info = api.finished(1001, job_id)
    assert httpx.get(info["download_url"]).status_code == 403
    assert httpx.get(info["download_url"].replace("sign=", "sign=0")).status_code == 403

    minapp_emulator.deny_status_access(403)
    assert api.job(1001, job_id).status_code == 403
    assert api.jobs(1001).status_code == 403
    minapp_emulator.allow_status_access()
    minapp_emulator.forget_jobs()
    assert api.job(1001, job_id).status_code == 404
    assert api.job(1001, "no-such-job").status_code == 404


def test_job_list_is_newest_first_and_pages(minapp_emulator: MinAppEmulator) -> None:
    minapp_emulator.job_window = 0
    minapp_emulator.add_table(1001, [{"a": 1}])
    api = Api(minapp_emulator)
    made = [api.export(1001).json()["job_id"] for _ in range(3)]
    page = api.jobs(1001, limit=2).json()
    assert page["meta"]["total_count"] == 3 and page["meta"]["next"]
    rest = api.jobs(1001, limit=2, offset=2).json()
    listed = [j["job_id"] for j in page["objects"] + rest["objects"]]
    assert sorted(listed) == sorted(made)
    created = [j["created_at"] for j in page["objects"] + rest["objects"]]
    assert created == sorted(created, reverse=True)


def test_env_header_selects_a_test_environment(minapp_emulator: MinAppEmulator) -> None:
    minapp_emulator.add_env("test-1")
    minapp_emulator.add_table(1001, [{"a": 1}])
    minapp_emulator.add_table(1001, [{"a": 2}, {"a": 3}], env="test-1")
    prod, test = Api(minapp_emulator), Api(minapp_emulator, env="test-1")
    count = {"limit": 1, "return_total_count": 1}
    assert prod.records(1001, **count).json()["meta"]["total_count"] == 1
    assert test.records(1001, **count).json()["meta"]["total_count"] == 2
    assert Api(minapp_emulator, env="nope").records(1001).status_code == 400


# records ------------------------------------------------------------------------------
def test_records_filter_sort_page_and_count(minapp_emulator: MinAppEmulator) -> None:
    minapp_emulator.add_table(1001, [{"n": n, "s": f"x{n % 3}"} for n in range(10)])
    api = Api(minapp_emulator)
    answer = api.records(1001, where=json.dumps({"n": {"$gte": 3}}), order_by="-n", limit=2,
                         offset=1, keys="n", return_total_count=1).json()
    assert answer["meta"]["total_count"] == 7
    assert answer["objects"] == [{"n": 8}, {"n": 7}]
    assert "total_count" not in api.records(1001).json()["meta"]
    assert api.records(1001, limit=1001).status_code == 400
    assert api.records(1001, where="{not json").status_code == 400


def test_records_come_newest_first_without_order_by(minapp_emulator: MinAppEmulator) -> None:
    """open-api/data/record.md, 排序返回查询数据: 查询接口默认按创建时间倒序."""
    minapp_emulator.add_table(1001, [{"n": n, "created_at": 1_700_000_000 + n} for n in range(5)])
    answer = Api(minapp_emulator).records(1001, keys="n").json()
    assert answer["objects"] == [{"n": n} for n in (4, 3, 2, 1, 0)]


def test_where_semantics() -> None:
    record = {"n": 5, "s": "abc", "tags": ["x", "y"], "none": None, "flag": True}
    assert matches_where(record, {"n": 5, "s": {"$eq": "abc"}})
    assert matches_where(record, {"n": {"$gte": 5, "$lt": 6}})
    assert not matches_where(record, {"n": {"$gt": "4"}})  # no cross-type comparisons
    assert matches_where(record, {"$or": [{"n": 1}, {"s": {"$contains": "b"}}]})
    assert matches_where(record, {"$and": [{"tags": {"$contains": "y"}}, {"flag": True}]})
    assert matches_where(record, {"missing": {"$exists": False}, "none": {"$isnull": True}})
    assert matches_where(record, {"n": {"$in": [1, 5]}, "s": {"$nin": ["z"]}})
    assert not matches_where(record, {"missing": {"$gte": 0}})
    with pytest.raises(WhereError):
        matches_where(record, {"n": {"$near": 1}})
    ordered = sort_records([{"k": 2}, {"k": None}, {"k": "a"}, {}, {"k": 1}], ["k"])
    assert [r.get("k") for r in ordered] == [None, None, 1, 2, "a"]


def test_faults_are_injected_per_route(minapp_emulator: MinAppEmulator) -> None:
    minapp_emulator.add_table(1001, [{"a": 1}])
    api = Api(minapp_emulator)
    minapp_emulator.inject("records", 503, times=2)
    assert [api.records(1001).status_code for _ in range(3)] == [503, 503, 200]
    minapp_emulator.lose_create_answers(1)
    assert api.export(1001).status_code == 502
    assert len(minapp_emulator.export_jobs(1001)) == 1  # created all the same
    minapp_emulator.job_window = 0.0
    minapp_emulator.lose_create_answers(1, status=201, raw=b"<html>OK</html>")
    garbled = api.export(1001)
    assert (garbled.status_code, garbled.content) == (201, b"<html>OK</html>")
    assert len(minapp_emulator.export_jobs(1001)) == 2
    with pytest.raises(ValueError, match="unknown route"):
        minapp_emulator.inject("nope", 500)


# a separate process ----------------------------------------------------------------------
def test_main_serves_until_terminated(tmp_path: Path) -> None:
    table = tmp_path / "orders.jsonl"
    table.write_text('{"name": "张三"}\n{"name": "b"}\n', encoding="utf-8")
    process = subprocess.Popen(
        [sys.executable, "-m", "devkit.emulators.minapp", "--client", f"{CLIENT_ID}:{CLIENT_SECRET}",
         "--table", f"1001:{table}"],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        base_url = process.stdout.readline().strip()
        assert base_url.startswith("http://127.0.0.1:")
        token = sign_in(base_url)
        answer = httpx.get(f"{base_url}/oserve/v2.4/table/1001/record/",
                           params={"return_total_count": 1},
                           headers={"Authorization": f"Bearer {token}"})
        assert answer.json()["meta"]["total_count"] == 2
    finally:
        process.terminate()
        assert process.wait(timeout=10) == 0
