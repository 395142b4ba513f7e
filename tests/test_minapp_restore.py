"""MinApp restore over real HTTP against the emulator: the target table (exists, create
with the original's columns, count), the streamed multipart import, its refusals, and a
backup made by the pipeline imported back equal (JSON, CSV, a split backup)."""

from __future__ import annotations

import io
import json
import logging
import os
import time
import tracemalloc
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from devkit.emulators.minapp import MinAppEmulator, render_export
from devkit.sample_data import make_docs
from shared.config import parse_config
from shared.domain.errors import Fatal, RateLimited, Retryable
from shared.logs import configure_logging
from shared.platforms.minapp.platform import MinAppClient
from shared.platforms.minapp.restore import restore_table_name, upload_name
from shared.platforms.minapp.settings import MinAppSource
from shared.ports import FileImportPlatform, PlatformServices, RestorablePlatform
from tests.fakes import MemoryState
from tests.support.backup import LocalBackup
from tests.support.leaks import assert_no_secrets
from tests.support.minapp import (
    CLIENT_ID,
    CLIENT_SECRET,
    assert_export_equals_records,
    backup_jumping,
)

PERMS = {"write_perm": ["gid:561"], "row_read_perm": ["user:anonymous"],
         "row_write_perm": ["user:{created_by}"]}


def records(count: int, seed: int = 31) -> list[dict[str, Any]]:
    """Sample records without WeChat's `_id`: MinApp gives each its own `id`."""
    return [{k: v for k, v in doc.items() if k != "_id"} for doc in make_docs(count, seed)]


def make_client(emulator: MinAppEmulator, **overrides: Any) -> MinAppClient:
    document = {
        "destination": {"bucket": "b-1250000000", "region": "ap-guangzhou"},
        "sources": [{"type": "minapp", "name": "app", "client_id": CLIENT_ID,
                     "client_secret": "${SECRET}", "tables": [1001],
                     "api_base": emulator.base_url, **overrides}],
    }
    source = parse_config(document, environ={"SECRET": CLIENT_SECRET}).sources[0]
    assert isinstance(source, MinAppSource)
    return MinAppClient(source, PlatformServices(tokens=MemoryState(), retry_base_seconds=0.01))


@pytest.fixture
def client(minapp_emulator: MinAppEmulator) -> MinAppClient:
    minapp_emulator.import_delay = 0.05
    return make_client(minapp_emulator)


def pieces(data: bytes, size: int = 1000) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start:start + size]


def send(client: MinAppClient, table: str, data: bytes, file_type: str = "json",
         name: str = "1001.jsonl", mode: str = "new") -> str | None:
    return client.send_import(table, mode, file_type=file_type, name=name, chunks=pieces(data), size=len(data))  # type: ignore[arg-type]


def wait_for_count(client: MinAppClient, table: str, wanted: int, timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while client.count(table) != wanted:
        assert time.monotonic() < deadline, f"table {table} holds {client.count(table)}, not {wanted}"
        time.sleep(0.02)


# the target table ---------------------------------------------------------------------
def test_client_is_a_file_import_platform_without_upsert(client: MinAppClient) -> None:
    assert isinstance(client, RestorablePlatform) and isinstance(client, FileImportPlatform)
    assert client.restore_modes == frozenset({"new", "insert"})


def test_target_exists_by_id_and_by_exact_name(client: MinAppClient,
                                               minapp_emulator: MinAppEmulator) -> None:
    minapp_emulator.add_table(1001, records(3), name="orders")

    assert client.target_exists("1001") and client.target_exists("orders")
    assert not client.target_exists("4040") and not client.target_exists("order")


def test_count_by_id_or_name_and_a_missing_table_fails(client: MinAppClient,
                                                       minapp_emulator: MinAppEmulator) -> None:
    minapp_emulator.add_table(1001, records(7), name="orders")

    assert client.count("1001") == client.count("orders") == 7
    with pytest.raises(Fatal, match="no table"):
        client.count("ghosts")
    # "\u00b2" passes str.isdigit but is no table id: it is looked up as the name it is
    with pytest.raises(Fatal, match="no table\\(s\\) named '\u00b2'"):
        client.count("\u00b2")


def test_create_target_copies_columns_and_permissions_without_built_in_fields(
        client: MinAppClient, minapp_emulator: MinAppEmulator) -> None:
    fields = [{"name": "title", "type": "string", "description": "标题",
               "constraints": {"required": True}, "acl": {"clientVisibile": True}},
              {"name": "tags", "type": "array", "items": {"type": "string"}},
              {"name": "place", "type": "geojson", "format": "default", "coordinate_type": "gcj02"}]
    built_in = [{"name": n, "type": "id" if n == "id" else "integer", "description": n}
                for n in ("id", "created_by", "created_at", "updated_at")]
    # a detail that lists the built-in fields too, as table.md's create answer does
    minapp_emulator.add_table(1001, [], name="orders", schema={"fields": built_in + fields})
    info = minapp_emulator.table_info(1001)
    minapp_emulator.add_table(1001, [], name="orders", schema={"fields": built_in + fields})
    with minapp_emulator._lock:  # the original's own permissions
        table = minapp_emulator._tables[("", "1001")]
        table.write_perm, table.row_read_perm = PERMS["write_perm"], PERMS["row_read_perm"]
        table.row_write_perm = PERMS["row_write_perm"]

    client.create_target("orders_restored", "1001")

    made = minapp_emulator.table_info(minapp_emulator.table_id("orders_restored"))
    assert made["schema"]["fields"] == fields
    assert made["write_perm"] == PERMS["write_perm"]
    assert made["default_row_perm"] == {"_read_perm": PERMS["row_read_perm"],
                                        "_write_perm": PERMS["row_write_perm"]}
    assert info["name"] == "orders" and client.target_exists("orders_restored")
    assert client.count("orders_restored") == 0


def test_create_target_again_after_a_lost_answer_takes_the_table_it_made(
        client: MinAppClient, minapp_emulator: MinAppEmulator) -> None:
    minapp_emulator.add_table(1001, records(3), name="orders")
    client.create_target("orders_r1", "orders")

    client.create_target("orders_r1", "orders")  # e.g. the first answer never arrived

    assert [t for t in ("orders", "orders_r1") if client.target_exists(t)] == ["orders", "orders_r1"]
    assert minapp_emulator.calls["create_table"] == 2


def test_create_target_refuses_a_table_that_holds_records_or_a_name_minapp_cannot_take(
        client: MinAppClient, minapp_emulator: MinAppEmulator) -> None:
    minapp_emulator.add_table(1001, records(3), name="orders")
    minapp_emulator.add_table(1002, records(2), name="orders_old")

    with pytest.raises(Fatal, match="exists already"):
        client.create_target("orders_old", "1001")
    for bad in ("1001_restored", "orders-restored", "订单", "x" * 33):
        with pytest.raises(Fatal, match="starts with a letter"):
            client.create_target(bad, "1001")
    with pytest.raises(Fatal, match="no table 4040"):
        client.create_target("orders_new", "4040")
    assert minapp_emulator.calls["create_table"] == 1


def test_create_target_refuses_a_detail_it_does_not_recognise(
        client: MinAppClient, minapp_emulator: MinAppEmulator) -> None:
    minapp_emulator.add_table(1001, records(3), name="orders")
    minapp_emulator.inject("table", 200, body={"id": 1001, "name": "orders"})

    with pytest.raises(Fatal, match="does not recognise"):
        client.create_target("orders_new", "1001")
    assert minapp_emulator.calls["create_table"] == 0


# the import ---------------------------------------------------------------------------
@pytest.mark.parametrize("file_type", ["json", "csv"])
def test_an_export_imports_back_equal_ids_included_after_the_task_ran(
        client: MinAppClient, minapp_emulator: MinAppEmulator, file_type: str) -> None:
    minapp_emulator.add_table(1001, records(250), name="orders")
    original = minapp_emulator.records(1001)
    data = render_export(original, file_type)  # the bytes an export of the table holds
    client.create_target("orders_new", "1001")
    minapp_emulator.import_delay = 0.3

    assert send(client, "orders_new", data, file_type) is None

    assert client.count("orders_new") == 0  # a scheduled task: not there at once
    wait_for_count(client, "orders_new", 250)
    restored = minapp_emulator.records(minapp_emulator.table_id("orders_new"))
    if file_type == "json":
        assert restored == original
    else:
        assert_export_equals_records(data, restored, "csv")
    (report,) = minapp_emulator.import_reports()
    assert report["status"] == "done" and report["imported"] == 250 and not report["skipped"]
    assert report["file_name"] == f"1001.{file_type}"


def test_the_body_is_streamed_with_a_content_length_and_read_only_while_sending(
        client: MinAppClient, minapp_emulator: MinAppEmulator) -> None:
    minapp_emulator.add_table(1001, records(40), name="orders")
    data = render_export(minapp_emulator.records(1001), "json")
    minapp_emulator.wipe_table(1001)
    read: list[int] = []
    seen: list[httpx.Request] = []

    def chunks() -> Iterator[bytes]:
        for piece in pieces(data, 97):
            read.append(len(piece))
            yield piece

    def on_request(request: httpx.Request) -> None:
        if request.url.path.endswith("/import/"):
            assert not read, "the file was read before the request went out"
            seen.append(request)

    client._http.event_hooks["request"] = [on_request]
    client.send_import("1001", "insert", file_type="json", name="runs/x/app/1001.jsonl", chunks=chunks(), size=len(data))

    (request,) = seen
    assert "transfer-encoding" not in request.headers
    assert int(request.headers["content-length"]) > len(data)
    assert request.headers["content-type"].startswith("multipart/form-data; boundary=")
    assert sum(read) == len(data) and len(read) > 10
    minapp_emulator.settle_imports()
    assert client.count("1001") == 40


def test_an_empty_backup_file_is_not_sent(client: MinAppClient,
                                          minapp_emulator: MinAppEmulator) -> None:
    minapp_emulator.add_table(1001, [], name="orders")

    assert send(client, "1001", b"") is None
    assert minapp_emulator.calls["import"] == 0


def test_upsert_is_refused_before_anything_is_sent(client: MinAppClient,
                                                   minapp_emulator: MinAppEmulator) -> None:
    minapp_emulator.add_table(1001, records(2), name="orders")

    with pytest.raises(Fatal, match="no conflict mode"):
        send(client, "1001", b'{"a":1}\n', mode="upsert")
    assert minapp_emulator.calls["import"] == 0


def test_an_invalid_file_fails_naming_the_table_and_the_file(
        client: MinAppClient, minapp_emulator: MinAppEmulator) -> None:
    minapp_emulator.add_table(1001, records(2), name="orders")

    with pytest.raises(Fatal, match=r"1001\.part-0002\.json into table 1001.*无效的文件"):
        send(client, "1001", b"[1, 2, 3]\n", name="1001.part-0002.jsonl")
    assert minapp_emulator.pending_imports() == 0


def test_a_missing_table_fails_before_the_file_is_read(client: MinAppClient,
                                                       minapp_emulator: MinAppEmulator) -> None:
    def never() -> Iterator[bytes]:
        raise AssertionError("read")
        yield b""

    with pytest.raises(Fatal, match="no table 4040"):
        client.send_import("4040", "new", file_type="json", name="x.jsonl", chunks=never(), size=10)
    with pytest.raises(Fatal, match="no table"):
        client.send_import("nothere", "new", file_type="json", name="x.jsonl", chunks=never(), size=10)
    assert minapp_emulator.calls["import"] == 0


@pytest.mark.parametrize(("status", "error", "words"), [
    (401, Retryable, "the next try signs in again"),
    (403, Fatal, "may not import data; grant it data access"),
    (429, RateLimited, "rate limited"),
    (502, Retryable, "HTTP 502"),
    (418, Fatal, "not a known answer"),
])
def test_refusals_of_the_import_are_classified(client: MinAppClient, minapp_emulator: MinAppEmulator,
                                               status: int, error: type[Exception], words: str) -> None:
    minapp_emulator.add_table(1001, records(2), name="orders")
    minapp_emulator.inject("import", status)

    with pytest.raises(error, match=words):
        send(client, "1001", render_export(minapp_emulator.records(1001), "json"))
    assert minapp_emulator.pending_imports() == 0


def test_a_refused_token_on_the_import_is_dropped_so_the_next_try_signs_in_again(
        client: MinAppClient, minapp_emulator: MinAppEmulator) -> None:
    minapp_emulator.add_table(1001, records(2), name="orders")
    data = render_export(minapp_emulator.records(1001), "json")
    minapp_emulator.wipe_table(1001)
    minapp_emulator.inject("import", 401)
    with pytest.raises(Retryable, match="the next try signs in again"):
        send(client, "1001", data)
    signed_in = minapp_emulator.calls["access_token"]

    send(client, "1001", data)

    assert minapp_emulator.calls["access_token"] == signed_in + 1
    minapp_emulator.settle_imports()
    assert client.count("1001") == 2


def test_a_fresh_token_refused_on_the_import_too_fails_naming_the_client(
        client: MinAppClient, minapp_emulator: MinAppEmulator) -> None:
    minapp_emulator.add_table(1001, records(2), name="orders")
    data = render_export(minapp_emulator.records(1001), "json")
    minapp_emulator.inject("import", 401, times=2)
    with pytest.raises(Retryable):
        send(client, "1001", data)
    signed_in = minapp_emulator.calls["access_token"]

    with pytest.raises(Fatal, match="freshly issued token was refused"):
        send(client, "1001", data)

    assert minapp_emulator.calls["access_token"] == signed_in + 1  # signed in once only
    assert minapp_emulator.pending_imports() == 0


def test_an_expired_token_is_renewed_by_the_check_before_the_body_goes(
        client: MinAppClient, minapp_emulator: MinAppEmulator) -> None:
    minapp_emulator.add_table(1001, records(5), name="orders")
    data = render_export(minapp_emulator.records(1001), "json")
    minapp_emulator.wipe_table(1001)
    client.count("1001")
    minapp_emulator.expire_tokens()

    send(client, "1001", data)

    minapp_emulator.settle_imports()
    assert client.count("1001") == 5 and minapp_emulator.calls["import"] == 1


def test_a_file_shorter_or_longer_than_its_size_is_not_imported(
        client: MinAppClient, minapp_emulator: MinAppEmulator) -> None:
    minapp_emulator.add_table(1001, records(20), name="orders")
    data = render_export(minapp_emulator.records(1001), "json")
    minapp_emulator.wipe_table(1001)

    with pytest.raises(Retryable, match=f"ended after {len(data) - 10} of {len(data)} bytes"):
        client.send_import("1001", "new", file_type="json", name="a.jsonl", chunks=pieces(data[:-10]), size=len(data))
    with pytest.raises(Fatal, match="longer than"):
        client.send_import("1001", "new", file_type="json", name="a.jsonl", chunks=pieces(data), size=len(data) - 10)

    minapp_emulator.settle_imports()
    assert minapp_emulator.pending_imports() == 0 and client.count("1001") == 0
    assert minapp_emulator._tmpdir is not None
    deadline = time.monotonic() + 5  # the emulator drops what it received of a cut body
    while any(n.startswith("import-") for n in os.listdir(minapp_emulator._tmpdir)):
        assert time.monotonic() < deadline, os.listdir(minapp_emulator._tmpdir)
        time.sleep(0.02)


def test_sending_the_same_file_twice_is_two_tasks_but_kept_ids_are_not_doubled(
        client: MinAppClient, minapp_emulator: MinAppEmulator) -> None:
    minapp_emulator.add_table(1001, records(30), name="orders")
    original = minapp_emulator.records(1001)
    data = render_export(original, "json")
    minapp_emulator.wipe_table(1001)

    send(client, "1001", data, mode="insert")
    send(client, "1001", data, mode="insert")  # e.g. a resent restore step

    minapp_emulator.settle_imports()
    assert minapp_emulator.calls["import"] == 2
    assert minapp_emulator.records(1001) == original
    first, second = minapp_emulator.import_reports()
    assert first["imported"] == 30 and second["imported"] == 0 and len(second["skipped"]) == 30


def test_a_test_environment_imports_into_its_own_table(minapp_emulator: MinAppEmulator) -> None:
    minapp_emulator.add_env("env-test")
    minapp_emulator.add_table(1001, records(4), name="orders")
    minapp_emulator.add_table(1001, [], name="orders", env="env-test",
                              schema=minapp_emulator.table_info(1001)["schema"])
    data = render_export(minapp_emulator.records(1001), "json")
    client = make_client(minapp_emulator, env_id="env-test")

    send(client, "orders", data)

    minapp_emulator.settle_imports()
    assert minapp_emulator.records(1001, env="env-test") == minapp_emulator.records(1001)
    assert client.count("1001") == 4


def test_check_import_says_minapp_reports_by_email(client: MinAppClient) -> None:
    with pytest.raises(Fatal, match="e-mail"):
        client.check_import("1001", "anything")


def test_upload_names_carry_the_export_extension() -> None:
    assert upload_name("runs/r1/app/1001.jsonl", "json") == "1001.json"
    assert upload_name("1001.part-0002.jsonl", "json") == "1001.part-0002.json"
    assert upload_name("订单 orders.csv", "csv") == "orders.csv"
    assert upload_name('a"b\r\n.jsonl', "json") == "a_b.json"
    assert upload_name("", "csv") == "backup.csv"


def test_an_import_into_a_table_without_the_columns_loses_their_values(
        client: MinAppClient, minapp_emulator: MinAppEmulator) -> None:
    """Why create_target copies the columns: MinApp keeps only fields the table has."""
    minapp_emulator.add_table(1001, records(3), name="orders")
    minapp_emulator.add_table(1002, [], name="bare", schema={"fields": []})
    data = render_export(minapp_emulator.records(1001), "json")

    send(client, "bare", data)

    minapp_emulator.settle_imports()
    (report,) = minapp_emulator.import_reports()
    assert report["imported"] == 3 and report["dropped_values"] > 0
    assert all(set(r) == {"id", "created_at", "updated_at"} for r in minapp_emulator.records(1002))


# round trips through the pipeline's own backups ----------------------------------------
@pytest.mark.parametrize("file_type", ["json", "csv"])
def test_a_backup_imports_back_equal_after_the_table_was_wiped(
        local: LocalBackup, minapp_emulator: MinAppEmulator, file_type: str) -> None:
    minapp_emulator.add_table(1001, records(300), name="orders")
    original = minapp_emulator.records(1001)
    config = local.config(local.minapp_source(minapp_emulator, file_type=file_type))
    run = backup_jumping(local.context(config))
    (job,) = local.context(config).state.list_jobs(run.run_id)
    assert job.result is not None
    (stored,) = job.result.objects
    client = local.context(config).platforms.get("app")
    assert isinstance(client, MinAppClient)
    minapp_emulator.wipe_table(1001)
    before = client.count("1001")

    client.send_import("1001", "insert", file_type=file_type, name=stored.key, chunks=local.objects.iter_read(stored.key, chunk_size=4096), size=stored.bytes)

    wait_for_count(client, "1001", before + stored.records)
    restored = minapp_emulator.records(1001)
    if file_type == "json":
        assert restored == original
    else:
        assert_export_equals_records(local.objects.read(stored.key), restored, "csv")


def test_a_split_backup_imports_each_part_into_a_new_table(
        local: LocalBackup, minapp_emulator: MinAppEmulator) -> None:
    minapp_emulator.max_export_rows = 1000
    minapp_emulator.job_window = 0.05
    minapp_emulator.add_table(1001, records(2600), name="orders")
    original = minapp_emulator.records(1001)
    table = {"id": 1001, "split": {"key": "created_at", "rows_per_part": 900}}
    config = local.config(local.minapp_source(minapp_emulator, tables=[table], max_export_rows=1000,
                                              export_interval_seconds=0.05))
    ctx = local.context(config)
    run = backup_jumping(ctx)
    (job,) = ctx.state.list_jobs(run.run_id)
    assert job.result is not None and len(job.result.objects) == 3
    client = ctx.platforms.get("app")
    assert isinstance(client, MinAppClient)
    client.create_target("orders_r", "1001")

    for stored in job.result.objects:
        client.send_import("orders_r", "new", file_type="json", name=stored.key, chunks=local.objects.iter_read(stored.key, chunk_size=65536), size=stored.bytes)

    wait_for_count(client, "orders_r", 2600)
    restored = minapp_emulator.records(minapp_emulator.table_id("orders_r"))
    by_id = {r["id"]: r for r in restored}
    assert len(by_id) == 2600 and all(by_id[r["id"]] == r for r in original)
    names = [r["file_name"] for r in minapp_emulator.import_reports()]
    assert names == [f"1001.part-000{n}.json" for n in (1, 2, 3)]


# no secret in the logs -----------------------------------------------------------------
def test_restore_logs_hold_no_secret(client: MinAppClient, minapp_emulator: MinAppEmulator) -> None:
    captured = io.StringIO()
    configure_logging(logging.DEBUG, stream=captured)
    minapp_emulator.add_table(1001, records(10), name="orders")
    data = render_export(minapp_emulator.records(1001), "json")
    client.create_target("orders_r", "orders")
    minapp_emulator.inject("import", 401)
    with pytest.raises(Retryable) as refused:
        send(client, "orders_r", data)
    minapp_emulator.expire_tokens()
    send(client, "orders_r", data)
    with pytest.raises(Fatal) as invalid:
        send(client, "orders_r", b"nope\n")

    logs = captured.getvalue()
    assert "HTTP Request" in logs and "/import/" in logs
    secrets = minapp_emulator.issued_tokens()
    assert len(secrets) >= 6
    for text in (logs, str(refused.value), str(invalid.value), json.dumps(minapp_emulator.import_reports())):
        assert_no_secrets(text, [CLIENT_SECRET, *secrets])


# bounded memory -----------------------------------------------------------------------
def test_a_file_larger_than_memory_budgets_is_sent_in_pieces(
        client: MinAppClient, minapp_emulator: MinAppEmulator) -> None:
    minapp_emulator.add_table(1001, [{"note": "x", "n": 1}], name="orders")
    minapp_emulator.wipe_table(1001)
    line = json.dumps({"note": "备注" * 100, "n": 7}, ensure_ascii=False).encode() + b"\n"
    rows = (24 << 20) // len(line)

    def chunks() -> Iterator[bytes]:
        for _ in range(rows // 64):
            yield line * 64

    size = len(line) * 64 * (rows // 64)
    tracemalloc.start()
    try:
        client.send_import("1001", "insert", file_type="json", name="1001.jsonl", chunks=chunks(), size=size)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert size > 20 << 20 and peak < 8 << 20  # client and emulator both stream
    assert minapp_emulator.pending_imports() + len(minapp_emulator.import_reports()) == 1


# a name for a new table -----------------------------------------------------------------
def test_default_target_is_a_name_minapp_takes(client: MinAppClient,
                                               minapp_emulator: MinAppEmulator) -> None:
    minapp_emulator.add_table(1001, records(2), name="orders")
    minapp_emulator.add_table(1002, records(2), name="_userprofile")
    run_id = "20261121T020000123Z-1a2b3c4d"

    assert client.default_target("1001", run_id) == "orders_r20261121T020000"
    assert client.default_target("1002", run_id) == "userprofile_r20261121T020000"
    assert restore_table_name("订单", run_id) == "table_r20261121T020000"
    assert restore_table_name("9lives" + "x" * 40, run_id) == "t9lives" + "x" * 8 + "_r20261121T020000"
    for original in ("orders", "a" * 40, "9", "订单"):
        name = restore_table_name(original, run_id)
        assert len(name) <= 32 and name[0].isalpha()
    client.create_target(client.default_target("1001", run_id), "1001")
    assert client.target_exists("orders_r20261121T020000")


# the emulator's reading of the import ---------------------------------------------------
def token_for(emulator: MinAppEmulator) -> dict[str, str]:
    with httpx.Client(follow_redirects=True) as auth:
        code = auth.post(f"{emulator.base_url}/api/oauth2/hydrogen/openapi/authorize/",
                         json={"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET}).json()["code"]
        fields = {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET, "code": code,
                  "grant_type": "authorization_code"}
        answer = auth.post(f"{emulator.base_url}/api/oauth2/access_token/",
                           files={k: (None, v) for k, v in fields.items()}).json()
    return {"Authorization": f"Bearer {answer['access_token']}"}


def test_emulator_import_reads_chunked_bodies_and_refuses_what_is_not_a_file(
        minapp_emulator: MinAppEmulator) -> None:
    minapp_emulator.add_table(1001, records(3), name="orders")
    data = render_export(minapp_emulator.records(1001), "json")
    minapp_emulator.wipe_table(1001)
    url = f"{minapp_emulator.base_url}/oserve/v1/table/1001/import/"
    headers = token_for(minapp_emulator)

    def body(name: str = "file", filename: str = "t.json") -> Iterator[bytes]:
        yield (f'--XyZ\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"'
               "\r\n\r\n").encode()
        yield from pieces(data, 7)
        yield b"\r\n--XyZ--\r\n"

    multipart = {**headers, "Content-Type": "multipart/form-data; boundary=XyZ"}
    chunked = httpx.post(url, headers=multipart, content=body())  # no length: chunked
    assert chunked.status_code == 201 and chunked.json() == {"status": "ok"}
    for status, kwargs in [
        (400, {"headers": multipart, "content": body(name="upload")}),
        (400, {"headers": multipart, "content": body(filename="t.txt")}),
        (400, {"headers": {**headers, "Content-Type": "application/json"}, "content": data}),
        (400, {"headers": headers, "files": {"file": ("t.csv", b"a,a\n1,2\n")}}),
        (400, {"headers": headers, "files": {"file": ("t.json", b"\xff\xfe{}\n")}}),
        (401, {"files": {"file": ("t.json", data)}}),
    ]:
        answer = httpx.post(url, **kwargs)  # type: ignore[arg-type]
        assert answer.status_code == status, answer.text
    assert httpx.post(url.replace("1001", "4040"), headers=headers,
                      files={"file": ("t.json", data)}).status_code == 404
    minapp_emulator.settle_imports()
    assert len(minapp_emulator.records(1001)) == 3 and len(minapp_emulator.import_reports()) == 1


def test_emulator_table_create_follows_table_md(minapp_emulator: MinAppEmulator) -> None:
    minapp_emulator.add_table(1001, [], name="orders")
    url = f"{minapp_emulator.base_url}/oserve/v1.8/table/"
    headers = token_for(minapp_emulator)
    good = {"name": "Table199", "schema": {"fields": [{"name": "String", "type": "string"}]},
            **PERMS}

    made = httpx.post(url, headers=headers, json=good)
    assert made.status_code == 201 and made.json()["name"] == "Table199"
    detail = httpx.get(f"{url}{made.json()['id']}/", headers=headers).json()
    assert detail["schema"] == good["schema"] and detail["write_perm"] == PERMS["write_perm"]
    assert httpx.get(f"{url}4040/", headers=headers).status_code == 404
    for bad in [{**good},  # the name is taken now
                {**good, "name": "9table"},
                {**good, "name": "t2", "schema": {"fields": [{"name": "id", "type": "string"}]}},
                {**good, "name": "t3", "schema": {"fields": [{"name": "a", "type": "array"}]}},
                {k: v for k, v in {**good, "name": "t4"}.items() if k != "write_perm"}]:
        assert httpx.post(url, headers=headers, json=bad).status_code == 400, bad


def test_emulator_fails_an_import_as_a_whole_when_told(client: MinAppClient,
                                                      minapp_emulator: MinAppEmulator) -> None:
    minapp_emulator.add_table(1001, records(3), name="orders")
    data = render_export(minapp_emulator.records(1001), "json")
    minapp_emulator.wipe_table(1001)
    minapp_emulator.fail_imports(1, "导入失败: 服务繁忙")

    send(client, "1001", data)

    minapp_emulator.settle_imports()
    (report,) = minapp_emulator.import_reports()
    assert report["status"] == "failed" and report["message"] == "导入失败: 服务繁忙"
    assert client.count("1001") == 0
