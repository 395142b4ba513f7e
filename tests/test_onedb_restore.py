"""OneDB restore (shared/platforms/onedb/restore.py) against the emulator over loopback
HTTP: each backup line goes back with `create` (or `update`), from many threads at once."""

from __future__ import annotations

import io
import json
import logging
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from devkit.emulators.onedb import OneDBEmulator, generated_row
from shared.config import parse_config
from shared.domain.errors import Fatal, RateLimited, Retryable
from shared.logs import configure_logging
from shared.platforms.onedb.platform import OneDBClient
from shared.platforms.onedb.settings import OneDBSource
from shared.ports import PlatformServices, RestorablePlatform, RowImportPlatform
from tests.fakes import MemoryState
from tests.support.leaks import assert_no_secrets
from tests.support.onedb import APP, ENV_ID, KEY_ID, KEY_SECRET

SERVICES = PlatformServices(tokens=MemoryState(), retry_base_seconds=0.01)
KEYS = ["userId", "seq"]


def _source(emulator: OneDBEmulator, **overrides: Any) -> OneDBSource:
    document = {
        "destination": {"bucket": "b-1250000000", "region": "ap-guangzhou"},
        "sources": [{"type": "onedb", "name": "crm", "region": "cn-east-1", "envid": ENV_ID,
                     "keyid": KEY_ID, "key_secret": "${SECRET}", "app_id": APP,
                     "keys": KEYS, "tables": ["events"], "api_base": emulator.base_url,
                     **overrides}],
    }
    source = parse_config(document, environ={"SECRET": KEY_SECRET}).sources[0]
    assert isinstance(source, OneDBSource)
    return source


def _client(emulator: OneDBEmulator, **overrides: Any) -> OneDBClient:
    return OneDBClient(_source(emulator, **overrides), SERVICES)


def _backup_lines(client: OneDBClient, table: str = "events") -> list[bytes]:
    """The table as its backup holds it: fetch_page + encode_page, one line per row."""
    lines: list[bytes] = []
    cursor = None
    while True:
        page = client.fetch_page(table, cursor)
        data, _ = client.encode_page(page)
        lines.extend(data.splitlines(keepends=True))
        if page.next_cursor is None:
            return lines
        cursor = page.next_cursor


def _line(row: dict[str, Any]) -> bytes:
    return (json.dumps(row, ensure_ascii=False, separators=(",", ":")) + "\n").encode()


def _rows(emulator: OneDBEmulator, table: str) -> list[dict[str, Any]]:
    return emulator.table_rows(ENV_ID, APP, table)


# the protocol ---------------------------------------------------------------------------
def test_is_a_row_import_platform_with_every_mode(onedb_emulator: OneDBEmulator) -> None:
    client = _client(onedb_emulator)
    assert isinstance(client, RowImportPlatform) and isinstance(client, RestorablePlatform)
    assert client.restore_modes == frozenset({"new", "insert", "upsert"})


def test_target_exists_asks_for_one_row(onedb_emulator: OneDBEmulator) -> None:
    onedb_emulator.add_generated_table(ENV_ID, APP, "events", 20)
    onedb_emulator.add_table(ENV_ID, APP, "events_copy", KEYS, [])
    client = _client(onedb_emulator)
    assert client.target_exists("events") and client.target_exists("events_copy")
    assert not client.target_exists("nowhere")
    assert onedb_emulator.calls["getMany"] == 3


def test_target_exists_fails_on_anything_but_a_missing_table(onedb_emulator: OneDBEmulator) -> None:
    onedb_emulator.add_key(ENV_ID, "no-cdb", KEY_SECRET, cdb=False)
    client = _client(onedb_emulator, keyid="no-cdb")
    with pytest.raises(Fatal, match="AppHub"):
        client.target_exists("events")


def test_create_target_says_to_make_the_table_in_the_console(onedb_emulator: OneDBEmulator) -> None:
    client = _client(onedb_emulator)
    with pytest.raises(Fatal) as caught:
        client.create_target("events_restored", "events")
    message = str(caught.value)
    assert "console" in message and "'events_restored'" in message and "userId, seq" in message
    assert "--into events_restored --mode new" in message
    assert sum(onedb_emulator.calls.values()) == 0


def test_count_pages_the_key_columns_of_the_whole_table(onedb_emulator: OneDBEmulator) -> None:
    onedb_emulator.add_generated_table(ENV_ID, APP, "events", 12_345)
    onedb_emulator.add_table(ENV_ID, APP, "empty", KEYS, [])
    # the backup's filter and getColumns do not apply: count is what the table holds
    client = _client(onedb_emulator, tables=[{
        "name": "events", "getColumns": ["name"],
        "filter": {"conditionList": [{"column": "vip", "symbol": "=", "value": True}]}}])
    assert client.count("events") == 12_345
    assert onedb_emulator.calls["getMany"] == 3
    assert client.count("empty") == 0
    with pytest.raises(Fatal, match="create 'gone' in the 清林云 console"):
        client.count("gone")


def test_count_waits_out_a_rate_limit(onedb_emulator: OneDBEmulator) -> None:
    onedb_emulator.add_generated_table(ENV_ID, APP, "events", 6_000)
    onedb_emulator.inject("rate_limit")  # errCode "too many requests": no Retry-After
    client = _client(onedb_emulator)
    began = time.monotonic()
    assert client.count("events") == 6_000
    assert time.monotonic() - began >= 0.9


def test_count_of_a_page_in_an_unknown_shape_fails_at_once_saying_what_to_check(
        onedb_emulator: OneDBEmulator) -> None:
    """The count reads getMany's answer as the backup does (`{data: [{ids, columns}],
    nextId}`, cloud database API, 返回内容): another shape is not retried as a busy
    platform, it fails naming what came and what to check."""
    onedb_emulator.add_generated_table(ENV_ID, APP, "events", 10)
    onedb_emulator.inject("no_data_list", times=20)
    with pytest.raises(Fatal, match=r"shape this product does not recognise.*api_base"):
        _client(onedb_emulator).count("events")
    assert onedb_emulator.calls["getMany"] == 1


# writing rows ---------------------------------------------------------------------------
TRICKY: list[dict[str, Any]] = [
    {"ids": {"userId": "u-中文", "seq": 1},
     "columns": {"t": "换行\n🐼", "big": 2**70, "f": 0.1, "nested": {"a": [1, {"b": None}]}}},
    {"ids": {"userId": "u-empty", "seq": 2}, "columns": {}},
    {"ids": {"userId": "u-big-key", "seq": 2**64 + 3}, "columns": {"n": -1}},
]


def test_a_backup_goes_back_row_for_row_into_a_new_table(onedb_emulator: OneDBEmulator) -> None:
    onedb_emulator.add_generated_table(ENV_ID, APP, "events", 5_200)  # two pages
    onedb_emulator.add_table(ENV_ID, APP, "tricky", KEYS, TRICKY)
    onedb_emulator.add_table(ENV_ID, APP, "events_restored", KEYS, [])
    onedb_emulator.add_table(ENV_ID, APP, "tricky_restored", KEYS, [])
    client = _client(onedb_emulator, tables=["events", "tricky"])
    for table in ("events", "tricky"):
        lines = _backup_lines(client, table)
        outcomes = Counter(client.write_row(f"{table}_restored", "new", line) for line in lines)
        assert outcomes == {"written": len(lines)}
        assert _rows(onedb_emulator, f"{table}_restored") == _rows(onedb_emulator, table)
        assert client.count(f"{table}_restored") == len(lines)
        # read back for the final comparison: the same lines as the backup
        assert _backup_lines(client, f"{table}_restored") == lines
    assert onedb_emulator.calls["create"] == 5_203


def test_many_threads_write_at_once_and_a_row_sent_twice_stays_one(
    onedb_emulator: OneDBEmulator,
) -> None:
    onedb_emulator.add_table(ENV_ID, APP, "events_restored", KEYS, [])
    client = OneDBClient(_source(onedb_emulator), SERVICES, token_ttl=62, token_renew=61)
    lines = [_line(generated_row(i)) for i in range(1_200)]
    sent = lines + lines[::-1]  # a resumed restore re-sends rows, maybe at the same time
    with ThreadPoolExecutor(max_workers=24) as pool:
        outcomes = list(pool.map(lambda ln: client.write_row("events_restored", "new", ln), sent))
    assert _rows(onedb_emulator, "events_restored") == [generated_row(i) for i in range(1_200)]
    # On a loaded machine an answer can be lost after the emulator wrote the row: the call
    # is tried again and finds the row its first try wrote, "kept" (an answer alone cannot
    # tell that from a row already there). Whatever the timing: every row stored once,
    # every outcome counted once, and a row reported written only by the call that wrote
    # it, so "written" falls short of 1,200 by at most the calls made again.
    counted = Counter(outcomes)
    retried = onedb_emulator.calls["create"] - 2_400
    assert set(counted) <= {"written", "kept"} and counted.total() == 2_400
    assert retried >= 0 and 1_200 - retried <= counted["written"] <= 1_200
    assert len(onedb_emulator.claims) == onedb_emulator.calls["create"]  # every token taken


def test_insert_never_overwrites(onedb_emulator: OneDBEmulator) -> None:
    changed = {"ids": generated_row(1)["ids"], "columns": {"name": "changed since"}}
    onedb_emulator.add_table(ENV_ID, APP, "events", KEYS, [generated_row(0), changed])
    client = _client(onedb_emulator)
    assert client.write_row("events", "insert", _line(generated_row(1))) == "kept"
    assert client.write_row("events", "insert", _line(generated_row(2))) == "written"
    assert client.write_row("events", "insert", _line(generated_row(2))) == "kept"
    assert _rows(onedb_emulator, "events") == [generated_row(0), changed, generated_row(2)]


def test_refusals_keeping_their_own_http_status_restore_alike(onedb_emulator: OneDBEmulator) -> None:
    """Only 400 is answered as 200 (API doc, 返回内容 → 失败): a notExist create of a row that
    is there may come as 409, a missing table as 404, with the errCode body. Both were taken
    for a wrong address ("check region and api_base"): an insert into a table holding some
    of the rows failed, and a missing target was not recognised as missing."""
    onedb_emulator.problem_status = True
    onedb_emulator.add_table(ENV_ID, APP, "events", KEYS, [generated_row(0)])
    client = _client(onedb_emulator)
    assert client.write_row("events", "insert", _line(generated_row(0))) == "kept"
    assert client.write_row("events", "insert", _line(generated_row(1))) == "written"
    assert _rows(onedb_emulator, "events") == [generated_row(0), generated_row(1)]
    assert not client.target_exists("nowhere")


def test_upsert_overwrites_the_whole_row(onedb_emulator: OneDBEmulator) -> None:
    changed = {"ids": generated_row(1)["ids"], "columns": {"name": "changed", "added": 1}}
    onedb_emulator.add_table(ENV_ID, APP, "events", KEYS, [changed])
    client = _client(onedb_emulator)
    assert client.write_row("events", "upsert", _line(generated_row(1))) == "written"
    assert client.write_row("events", "upsert", _line(generated_row(1))) == "written"
    assert client.write_row("events", "upsert", _line(generated_row(2))) == "written"
    assert _rows(onedb_emulator, "events") == [generated_row(1), generated_row(2)]
    assert onedb_emulator.calls["create"] == 3 and onedb_emulator.calls["update"] == 0


def test_upsert_of_a_partial_backup_keeps_the_columns_it_does_not_hold(
    onedb_emulator: OneDBEmulator,
) -> None:
    now = {"ids": {"userId": "u1", "seq": 0}, "columns": {"name": "new name", "score": 7}}
    onedb_emulator.add_table(ENV_ID, APP, "events", KEYS, [now])
    client = _client(onedb_emulator, tables=[{"name": "events", "getColumns": ["name"]}])
    backed_up = {"ids": {"userId": "u1", "seq": 0}, "columns": {"name": "old name"}}
    missing = {"ids": {"userId": "u2", "seq": 0}, "columns": {"name": "gone"}}
    assert client.write_row("events", "upsert", _line(backed_up)) == "written"
    assert client.write_row("events", "upsert", _line(missing)) == "written"
    assert _rows(onedb_emulator, "events") == [
        {"ids": {"userId": "u1", "seq": 0}, "columns": {"name": "old name", "score": 7}}, missing]
    assert onedb_emulator.calls["update"] == 2 and onedb_emulator.calls["create"] == 0


def test_upsert_of_a_partial_backup_into_another_table_keeps_its_other_columns(
    onedb_emulator: OneDBEmulator,
) -> None:
    """`--into` a table not in `tables`: the backup still holds only the getColumns of the
    table it came from, so the rows go back with `update` (a whole-row `create` would drop
    the target's other columns), and the target is read back as that backup holds it."""
    now = {"ids": {"userId": "u1", "seq": 0}, "columns": {"name": "new name", "score": 7}}
    onedb_emulator.add_table(ENV_ID, APP, "events", KEYS, [])
    onedb_emulator.add_table(ENV_ID, APP, "events_copy", KEYS, [now])
    client = _client(onedb_emulator, tables=[{"name": "events", "getColumns": ["name"]}])
    client.restoring_into("events_copy", "events")  # what the restore service tells it
    backed_up = {"ids": {"userId": "u1", "seq": 0}, "columns": {"name": "old name"}}
    assert client.write_row("events_copy", "upsert", _line(backed_up)) == "written"
    assert _rows(onedb_emulator, "events_copy") == [
        {"ids": {"userId": "u1", "seq": 0}, "columns": {"name": "old name", "score": 7}}]
    assert onedb_emulator.calls["update"] == 1 and onedb_emulator.calls["create"] == 0
    assert [json.loads(x) for x in _backup_lines(client, "events_copy")] == [backed_up]


def test_a_partial_upsert_is_read_back_as_the_columns_it_wrote(onedb_emulator: OneDBEmulator) -> None:
    """What the restore's read-back judges (shared/service/restore/rows.py): a target row
    cut to the columns its backup line set, its ids matched key order aside and exactly."""
    onedb_emulator.add_table(ENV_ID, APP, "events", KEYS, [])
    client = _client(onedb_emulator, tables=[{"name": "events", "getColumns": ["name", "n"]}])
    assert client.writes_part("events", "upsert")
    assert not client.writes_part("events", "insert")
    assert not _client(onedb_emulator).writes_part("events", "upsert")  # whole rows
    backed_up = b'{"ids":{"userId":"u1","seq":1},"columns":{"name":"Ann"}}'
    found = b'{"ids":{"seq":1,"userId":"u1"},"columns":{"n":123456789012345678901,"name":"Ann"}}'
    key, columns = client.written("events", backed_up)
    assert client.written("events", found)[0] == key and columns == {"name"}
    assert json.loads(client.written_part("events", found, columns)) == json.loads(backed_up)
    wrong = found.replace(b'"Ann"', b'"Bob"')
    assert json.loads(client.written_part("events", wrong, columns))["columns"] == {"name": "Bob"}
    whole = client.written_part("events", found, frozenset({"name", "n"}))
    assert b"123456789012345678901" in whole  # exact, not a float


def test_a_conflict_in_other_words_is_confirmed_with_a_get(onedb_emulator: OneDBEmulator) -> None:
    onedb_emulator.add_table(ENV_ID, APP, "events", KEYS, [generated_row(0)])
    onedb_emulator.conflict_title = "操作失败 (operation failed)"  # a title we cannot read
    client = _client(onedb_emulator)
    assert client.write_row("events", "insert", _line(generated_row(0))) == "kept"
    assert onedb_emulator.calls["get"] == 1
    # a refusal of a row that is not there is raised as classified (a bad key value here)
    odd = {"ids": {"userId": True, "seq": 0}, "columns": {}}
    with pytest.raises(Fatal, match="rejected the request"):
        client.write_row("events", "insert", _line(odd))
    assert onedb_emulator.calls["get"] == 2
    assert _rows(onedb_emulator, "events") == [generated_row(0)]


def test_a_write_whose_answer_was_lost_is_kept_when_sent_again(onedb_emulator: OneDBEmulator) -> None:
    onedb_emulator.add_table(ENV_ID, APP, "events", KEYS, [])
    onedb_emulator.inject("drop_after_write", action="create")
    client = _client(onedb_emulator)
    assert client.write_row("events", "new", _line(generated_row(5))) == "kept"
    assert _rows(onedb_emulator, "events") == [generated_row(5)]
    assert onedb_emulator.calls["create"] == 2


# errors ------------------------------------------------------------------------------------
def test_a_rate_limit_is_raised_for_the_service_to_pace(onedb_emulator: OneDBEmulator) -> None:
    onedb_emulator.add_table(ENV_ID, APP, "events", KEYS, [])
    onedb_emulator.rate_limit = 5  # calls a second, creates included
    client = _client(onedb_emulator)
    refused: list[RateLimited] = []
    for i in range(12):
        try:
            client.write_row("events", "new", _line(generated_row(i)))
        except RateLimited as exc:
            refused.append(exc)
    assert refused and all(exc.retry_after == 1 for exc in refused)
    assert len(_rows(onedb_emulator, "events")) == 12 - len(refused) <= 5
    onedb_emulator.rate_limit = None
    onedb_emulator.inject("rate_limit", action="create")  # errCode "too many requests"
    with pytest.raises(RateLimited):
        client.write_row("events", "new", _line(generated_row(99)))


def test_transient_errors_are_retried_and_then_raised(onedb_emulator: OneDBEmulator) -> None:
    onedb_emulator.add_table(ENV_ID, APP, "events", KEYS, [])
    client = _client(onedb_emulator)
    onedb_emulator.inject("busy", action="create")
    onedb_emulator.inject("http_502", action="create")
    onedb_emulator.inject("reject_token", action="create")  # signed again once
    assert client.write_row("events", "new", _line(generated_row(0))) == "written"
    onedb_emulator.inject("busy", 3, action="create")
    with pytest.raises(Retryable, match=r"cdb/create errCode 1.*busy"):
        client.write_row("events", "new", _line(generated_row(1)))
    onedb_emulator.inject("drop", 3, action="create")
    with pytest.raises(Retryable, match="OneDB create of 'events'"):
        client.write_row("events", "new", _line(generated_row(1)))
    assert _rows(onedb_emulator, "events") == [generated_row(0)]


def test_what_retrying_cannot_fix_is_fatal(onedb_emulator: OneDBEmulator) -> None:
    onedb_emulator.add_table(ENV_ID, APP, "events", KEYS, [])
    client = _client(onedb_emulator)
    with pytest.raises(Fatal, match="create 'gone' in the 清林云 console"):
        client.write_row("gone", "new", _line(generated_row(0)))
    onedb_emulator.set_key_secret(ENV_ID, KEY_ID, "rotated-000000000")
    with pytest.raises(Fatal, match="freshly signed token was rejected too"):
        client.write_row("events", "new", _line(generated_row(0)))
    onedb_emulator.add_key(ENV_ID, "no-cdb", KEY_SECRET, cdb=False)
    with pytest.raises(Fatal, match="AppHub"):
        _client(onedb_emulator, keyid="no-cdb").write_row("events", "new", _line(generated_row(0)))


@pytest.mark.parametrize(("line", "says"), [
    (b"{not json\n", "not JSON"),
    (b"[1, 2]\n", "not a OneDB row"),
    (b'{"ids": {}, "columns": {}}\n', "not a OneDB row"),
    (b'{"ids": {"userId": "u", "seq": 1}, "columns": {}, "extra": 1}\n', "not a OneDB row"),
    (b'{"ids": {"userId": "u", "seq": 1}, "columns": [1]}\n', "not a OneDB row"),
    (b'{"ids": {"userId": "u"}, "columns": {}}\n', "keyed by ['userId', 'seq']"),
    (b'{"ids": {"userId": "CDB:nanoId", "seq": 1}, "columns": {}}\n', "special values"),
])
def test_a_line_that_is_not_a_row_of_the_table_is_fatal(
    onedb_emulator: OneDBEmulator, line: bytes, says: str,
) -> None:
    onedb_emulator.add_table(ENV_ID, APP, "events", KEYS, [])
    with pytest.raises(Fatal, match=says.replace("[", r"\[")):
        _client(onedb_emulator).write_row("events", "new", line)
    assert onedb_emulator.calls["create"] == 0


def test_an_unknown_mode_is_fatal(onedb_emulator: OneDBEmulator) -> None:
    with pytest.raises(Fatal, match="new, insert or upsert"):
        _client(onedb_emulator).write_row("events", "merge", _line(generated_row(0)))  # type: ignore[arg-type]


def test_the_target_keys_come_from_the_table_backed_up(onedb_emulator: OneDBEmulator) -> None:
    """Tables with keys of their own and none for the source: a target not listed takes
    the original's keys (restoring_into), or learns them from the first row written."""
    posts = [{"ids": {"userId": "u", "postId": "p1"}, "columns": {"title": "标题"}}]
    onedb_emulator.add_table(ENV_ID, APP, "posts", ["userId", "postId"], posts)
    onedb_emulator.add_table(ENV_ID, APP, "posts_copy", ["userId", "postId"], [])
    onedb_emulator.add_table(ENV_ID, APP, "posts_other", ["userId", "postId"], [])
    tables = [{"name": "posts", "keys": ["userId", "postId"]}, {"name": "events", "keys": KEYS}]
    client = _client(onedb_emulator, keys=None, tables=tables)
    with pytest.raises(Fatal, match="primary key columns are unknown"):
        client.target_exists("posts_copy")
    client.restoring_into("posts_copy", "posts")
    assert client.target_exists("posts_copy") and client.count("posts_copy") == 0
    (line,) = _backup_lines(client, "posts")
    assert client.write_row("posts_copy", "new", line) == "written"
    assert client.write_row("posts_other", "new", line) == "written"  # keys from the row
    assert client.count("posts_other") == 1
    assert _rows(onedb_emulator, "posts_copy") == _rows(onedb_emulator, "posts_other") == posts


def test_tables_sharing_their_keys_give_them_to_any_target(onedb_emulator: OneDBEmulator) -> None:
    onedb_emulator.add_table(ENV_ID, APP, "copy", KEYS, [generated_row(3)])
    client = _client(onedb_emulator, keys=None, tables=[{"name": "events", "keys": KEYS}])
    assert client.restore_keys("copy") == KEYS and client.count("copy") == 1


def test_no_secret_or_token_in_the_logs(onedb_emulator: OneDBEmulator) -> None:
    onedb_emulator.add_table(ENV_ID, APP, "events", KEYS, [generated_row(0)])
    onedb_emulator.conflict_title = "操作失败 (operation failed)"
    logs = io.StringIO()
    configure_logging(logging.DEBUG, stream=logs)
    try:
        client = _client(onedb_emulator)
        onedb_emulator.inject("reject_token", action="create")
        assert client.write_row("events", "insert", _line(generated_row(0))) == "kept"
        onedb_emulator.inject("busy", 3, action="create")
        with pytest.raises(Retryable) as caught:
            client.write_row("events", "insert", _line(generated_row(1)))
        logging.getLogger("test").error("failed: %s", caught.value)
    finally:
        logging.getLogger().handlers.clear()
    text = logs.getvalue()
    assert "signing a new one once" in text and "taken as the row kept" in text
    assert_no_secrets(text, [KEY_SECRET, *set(onedb_emulator.tokens)])


def test_the_emulator_helpers_wipe_and_read_back(onedb_emulator: OneDBEmulator) -> None:
    onedb_emulator.add_generated_table(ENV_ID, APP, "events", 100)
    assert _rows(onedb_emulator, "events") == [generated_row(i) for i in range(100)]
    assert onedb_emulator.wipe(ENV_ID, APP, "events") == 100
    assert _rows(onedb_emulator, "events") == [] and onedb_emulator.has_table(ENV_ID, APP, "events")
    client = _client(onedb_emulator)
    assert client.count("events") == 0
    client.write_row("events", "new", _line(generated_row(7)))
    assert _rows(onedb_emulator, "events") == [generated_row(7)]


def test_writes_to_a_generated_table_and_concurrent_reads(onedb_emulator: OneDBEmulator) -> None:
    onedb_emulator.add_generated_table(ENV_ID, APP, "events", 10_000)
    client = _client(onedb_emulator)
    stop = threading.Event()
    counts: list[int] = []

    def count_meanwhile() -> None:
        while not stop.is_set():
            counts.append(client.count("events"))

    reader = threading.Thread(target=count_meanwhile)
    reader.start()
    try:
        new = [{"ids": {"userId": f"z{i:04d}", "seq": 0}, "columns": {"n": i}} for i in range(200)]
        with ThreadPoolExecutor(max_workers=8) as pool:
            assert set(pool.map(lambda r: client.write_row("events", "upsert", _line(r)), new)) == {
                "written"}
    finally:
        stop.set()
        reader.join()
    assert client.count("events") == 10_200
    assert all(10_000 <= c <= 10_200 for c in counts)
    assert _rows(onedb_emulator, "events")[-200:] == new
