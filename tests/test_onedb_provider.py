"""The OneDB provider against the emulator: signed tokens, paging, error classes."""

from __future__ import annotations

import json
import time
from typing import Any

import jwt
import pytest

from devkit.emulators.onedb import OneDBEmulator, generated_row
from shared.config import parse_config
from shared.domain.errors import Fatal, RateLimited, Retryable, TokenRejected
from shared.logs import redact
from shared.platforms import registry
from shared.platforms.onedb.platform import OneDBClient, TableUnknown, classify
from shared.platforms.onedb.settings import OneDBSource
from shared.ports import Page, PagedPlatform, PlatformServices
from tests.fakes import MemoryState
from tests.support.onedb import APP, ENV_ID, KEY_ID, KEY_SECRET

SERVICES = PlatformServices(tokens=MemoryState(), retry_base_seconds=0.01)


def _source(emulator: OneDBEmulator, **overrides: Any) -> OneDBSource:
    document = {
        "destination": {"bucket": "b-1250000000", "region": "ap-guangzhou"},
        "sources": [{"type": "onedb", "name": "crm", "region": "cn-east-1", "envid": ENV_ID,
                     "keyid": KEY_ID, "key_secret": "${SECRET}", "app_id": APP,
                     "keys": ["userId", "seq"], "tables": ["events"],
                     "api_base": emulator.base_url, **overrides}],
    }
    source = parse_config(document, environ={"SECRET": KEY_SECRET}).sources[0]
    assert isinstance(source, OneDBSource)
    return source


def _rows(provider: OneDBClient, page: Page) -> list[Any]:
    data, count = provider.encode_page(page)
    rows = [json.loads(line) for line in data.decode("utf-8").splitlines()]
    assert len(rows) == count
    return rows


def _all_rows(provider: OneDBClient, target: str = "events") -> list[Any]:
    rows: list[Any] = []
    cursor = None
    while True:
        page = provider.fetch_page(target, cursor)
        rows.extend(_rows(provider, page))
        if page.next_cursor is None:
            return rows
        cursor = page.next_cursor


def test_is_a_paged_provider(onedb_emulator: OneDBEmulator) -> None:
    provider = OneDBClient(_source(onedb_emulator), SERVICES)
    assert isinstance(provider, PagedPlatform)
    assert provider.collections() == ["events"]
    assert registry.entry("onedb").kind == "paged"  # no export jobs: the finisher pages it


def test_pages_the_whole_key_range(onedb_emulator: OneDBEmulator) -> None:
    onedb_emulator.add_generated_table(ENV_ID, APP, "events", 10_001)
    provider = OneDBClient(_source(onedb_emulator), SERVICES)
    assert _all_rows(provider) == [generated_row(i) for i in range(10_001)]
    assert onedb_emulator.calls["getMany"] == 3  # 5000 rows a call
    page = provider.fetch_page("events", None)
    assert isinstance(page.answer, bytes)  # rows decoded later, off the reading thread
    first = provider.request_for("events", None)
    assert first["ids"] == {"userId": "CDB:tableMinId", "seq": "CDB:tableMinId"}
    assert first["endIds"] == {"userId": "CDB:tableMaxId", "seq": "CDB:tableMaxId"}
    assert first["orderType"] == "asc" and first["rowsLimit"] == 5000


def test_tokens_are_short_lived_hs256_jwts_signed_again_before_expiry(
    onedb_emulator: OneDBEmulator,
) -> None:
    onedb_emulator.add_generated_table(ENV_ID, APP, "events", 10)
    provider = OneDBClient(_source(onedb_emulator), SERVICES, token_ttl=3, token_renew=1)
    provider.fetch_page("events", None)
    provider.fetch_page("events", None)  # iat is whole seconds: at least 2 s are left
    time.sleep(2.1)  # under a second left: the next call signs a new token
    provider.fetch_page("events", None)
    tokens = onedb_emulator.tokens
    assert len(tokens) == 3 and tokens[0] == tokens[1] != tokens[2]
    header = jwt.get_unverified_header(tokens[0])
    assert header["alg"] == "HS256"
    claims = jwt.decode(tokens[0], KEY_SECRET, algorithms=["HS256"],
                        options={"verify_exp": False})
    assert claims["identity"] == "cdb" and claims["exp"] - claims["iat"] == 3
    default = OneDBClient(_source(onedb_emulator), SERVICES)
    default.fetch_page("events", None)
    claims = jwt.decode(onedb_emulator.tokens[-1], KEY_SECRET, algorithms=["HS256"])
    assert claims["exp"] - claims["iat"] <= 300
    assert redact(f"token {onedb_emulator.tokens[-1]} and {KEY_SECRET}") == (
        "token [redacted] and [redacted]")


def test_a_rejected_token_is_signed_again_once(onedb_emulator: OneDBEmulator) -> None:
    onedb_emulator.add_generated_table(ENV_ID, APP, "events", 10)
    provider = OneDBClient(_source(onedb_emulator), SERVICES)
    provider.fetch_page("events", None)
    onedb_emulator.revoke_tokens()
    assert len(_rows(provider, provider.fetch_page("events", None))) == 10
    assert len(set(onedb_emulator.tokens)) == 2
    onedb_emulator.set_key_secret(ENV_ID, KEY_ID, "rotated-000000000")
    with pytest.raises(Fatal, match="freshly signed token was rejected too"):
        provider.fetch_page("events", None)


def test_errors_keeping_their_own_http_status_are_told_apart_by_their_title(
        onedb_emulator: OneDBEmulator) -> None:
    """The document changes only 400 to 200 (返回内容 → 失败), so a refusal may come as 401,
    403 or 404 with the errCode body. Each was taken by its status alone: a key without the
    cdb app, or an unknown key, was told to check key_secret and the clock; a table that
    does not exist, to check region and api_base."""
    onedb_emulator.problem_status = True
    onedb_emulator.add_generated_table(ENV_ID, APP, "events", 10)
    onedb_emulator.add_key(ENV_ID, "no-cdb", KEY_SECRET, cdb=False)
    with pytest.raises(Fatal, match="AppHub"):
        OneDBClient(_source(onedb_emulator, keyid="no-cdb"), SERVICES).fetch_page("events", None)
    with pytest.raises(Fatal, match="fix keyid"):
        OneDBClient(_source(onedb_emulator, keyid="no-such-key"), SERVICES).fetch_page("events", None)
    with pytest.raises(TableUnknown, match="has no table 'orderz'"):
        OneDBClient(_source(onedb_emulator, tables=["orderz"]), SERVICES).fetch_page("orderz", None)
    provider = OneDBClient(_source(onedb_emulator), SERVICES)
    onedb_emulator.inject("reject_token")  # a 401 about the token: signed again once
    assert len(_rows(provider, provider.fetch_page("events", None))) == 10
    onedb_emulator.set_key_secret(ENV_ID, KEY_ID, "rotated-000000000")
    with pytest.raises(Fatal, match="freshly signed token was rejected too"):
        provider.fetch_page("events", None)


def test_busy_is_retried_in_the_call(onedb_emulator: OneDBEmulator) -> None:
    onedb_emulator.add_generated_table(ENV_ID, APP, "events", 10)
    onedb_emulator.inject("busy")
    onedb_emulator.inject("drop")
    provider = OneDBClient(_source(onedb_emulator), SERVICES)
    assert len(_rows(provider, provider.fetch_page("events", None))) == 10
    onedb_emulator.inject("busy", 3)
    with pytest.raises(Retryable, match="busy"):
        provider.fetch_page("events", None)


def _answer(title: str) -> dict[str, Any]:
    return {"errCode": 1, "type": "cdb/getMany", "title": title, "detail": "{}",
            "instance": json.dumps({"requestId": "req-123"})}


@pytest.mark.parametrize(("title", "kind", "says"), [
    ("token无效 (invalid token)", TokenRejected, "req-123"),
    ("jwt expired", TokenRejected, "jwt expired"),
    ("该密匙未开通云数据库应用权限", Fatal, "AppHub"),
    ("环境密匙不存在", Fatal, "fix keyid"),
    ("环境不存在", Fatal, "fix envid or region"),
    ("数据表不存在", TableUnknown, "has no table 'events'"),
    ("请求过于频繁", RateLimited, "rate limited"),
    ("系统繁忙，请稍后重试", Retryable, "busy"),
    ("参数错误: rowsLimit", Fatal, "check its keys"),
    ("something new", Retryable, "not a known OneDB error"),
])
def test_err_codes_are_classified(onedb_emulator: OneDBEmulator, title: str, kind: type,
                                  says: str) -> None:
    error = classify(_answer(title), _source(onedb_emulator), "events")
    assert type(error) is kind and says in str(error)


def test_rows_are_written_as_compact_json_lines(onedb_emulator: OneDBEmulator) -> None:
    huge = 2**70  # beyond orjson: parsed and written by the standard library instead
    rows: list[dict[str, Any]] = [
        {"ids": {"id": "a"}, "columns": {"t": "换行\n🐼", "big": huge, "f": 0.1}},
        {"ids": {"id": "b"}, "columns": {}}]
    onedb_emulator.add_table(ENV_ID, APP, "odd", ["id"], rows)
    provider = OneDBClient(_source(onedb_emulator, tables=[{"name": "odd", "keys": ["id"]}]),
                             SERVICES)
    data, _ = provider.encode_page(provider.fetch_page("odd", None))
    assert data.decode("utf-8").splitlines() == [
        '{"ids":{"id":"a"},"columns":{"t":"换行\\n🐼","big":1180591620717411303424,"f":0.1}}',
        '{"ids":{"id":"b"},"columns":{}}',
    ]
    plain = provider.encode_rows([generated_row(0)])
    assert plain == (json.dumps(generated_row(0), ensure_ascii=False, separators=(",", ":"))
                     + "\n").encode()


def test_a_cursor_that_does_not_move_stops_the_copy(onedb_emulator: OneDBEmulator) -> None:
    onedb_emulator.add_generated_table(ENV_ID, APP, "events", 10_000)
    provider = OneDBClient(_source(onedb_emulator), SERVICES)
    cursor = provider.fetch_page("events", None).next_cursor
    onedb_emulator.inject("stuck_cursor")
    with pytest.raises(Fatal, match="nextId did not move"):
        provider.fetch_page("events", cursor)


def test_next_id_is_read_both_ways_and_anything_else_stops_the_copy() -> None:
    from shared.platforms.onedb.wire import _next_ids

    keys = ["userId", "seq"]
    assert _next_ids(None, "events", keys) is None
    assert _next_ids({"ids": {"userId": "u", "seq": 1}}, "events", keys) == {"userId": "u", "seq": 1}
    assert _next_ids({"userId": "u", "seq": 1}, "events", keys) == {"userId": "u", "seq": 1}
    for odd in ({"id": "x"}, {"userId": "u"}, {"ids": {"userId": "u"}},
                {"ids": {"userId": "u", "seq": 1}, "more": 1}, ["u", 1]):
        with pytest.raises(Fatal, match="unknown shape") as caught:
            _next_ids(odd, "events", keys)
        assert "userId" in str(caught.value)  # names the key columns expected


@pytest.mark.parametrize("bare", [False, True])
def test_a_table_pages_to_its_end_with_either_next_id_reading(
    onedb_emulator: OneDBEmulator, bare: bool,
) -> None:
    onedb_emulator.add_generated_table(ENV_ID, APP, "events", 12_000)
    onedb_emulator.bare_next_id = bare
    provider = OneDBClient(_source(onedb_emulator), SERVICES)

    rows = _all_rows(provider, "events")

    assert len(rows) == 12_000 and onedb_emulator.calls["getMany"] == 3


def test_tricky_rows_and_keys_page_exactly(onedb_emulator: OneDBEmulator) -> None:
    """A column called nextId, and integer keys beyond 64 bits in the cursor itself."""
    rows = [{"ids": {"id": 2**64 + i}, "columns": {"nextId": {"ids": {"id": 1}}, "n": i}}
            for i in range(6)]
    rows.append({"ids": {"id": 5}, "columns": {"nextId": "\"nextId\":{}", "n": -1}})
    onedb_emulator.add_table(ENV_ID, APP, "tricky", ["id"], rows)
    onedb_emulator.page_cap = 2  # every page ends with a cursor
    provider = OneDBClient(_source(onedb_emulator, tables=[{"name": "tricky", "keys": ["id"]}]),
                             SERVICES)
    assert _all_rows(provider, "tricky") == [rows[-1], *rows[:-1]]
    assert onedb_emulator.calls["getMany"] == 4


def test_a_key_holding_half_an_emoji_at_a_page_edge_is_sent_back_as_the_next_start(
        onedb_emulator: OneDBEmulator) -> None:
    """A key value cut in the middle of an emoji (a lone surrogate; JSON.stringify writes it
    as `\\ud83d`) named by nextId goes back as the next page's `ids`, escaped. The request
    body could not be encoded (UnicodeEncodeError) and the table could not be copied."""
    rows = [{"ids": {"id": key}, "columns": {"n": n}}
            for n, key in enumerate(["a", "b \ud83d", "c", "d"])]
    onedb_emulator.add_table(ENV_ID, APP, "nicks", ["id"], rows)
    onedb_emulator.page_cap = 1  # every row opens a page: its key is a nextId
    provider = OneDBClient(_source(onedb_emulator, tables=[{"name": "nicks", "keys": ["id"]}]),
                           SERVICES)
    assert _all_rows(provider, "nicks") == rows
    assert provider.count("nicks") == 4


@pytest.mark.parametrize("exclusive", [False, True], ids=["inclusive", "exclusive"])
def test_a_next_id_naming_its_own_last_row_pages_every_row_once(
        onedb_emulator: OneDBEmulator, exclusive: bool) -> None:
    """The document's nextId sample (getMany, `"nextId": {"ids": "idsValue"}`) also reads as
    the ids of the page's own last row, and its start `ids` (查询范围的起始 id) as inclusive
    or exclusive: the row is read again or not, and either way held once (and counted once)."""
    onedb_emulator.add_generated_table(ENV_ID, APP, "events", 12_000)
    onedb_emulator.next_id_last_row = True
    onedb_emulator.start_exclusive = exclusive
    provider = OneDBClient(_source(onedb_emulator), SERVICES)
    assert _all_rows(provider) == [generated_row(i) for i in range(12_000)]
    assert provider.count("events") == 12_000


def test_a_last_row_the_answers_tail_cannot_tell_is_found_by_decoding_the_page(
        onedb_emulator: OneDBEmulator) -> None:
    """Rows holding many `{"ids": ...}` objects of their own: the page's last row is not
    read from the answer's end but from the decoded page; still each row held once."""
    nested = {f"c{n}": {"ids": {"id": -n}} for n in range(6)}
    rows = [{"ids": {"id": i}, "columns": {**nested, "n": i}} for i in range(7)]
    onedb_emulator.add_table(ENV_ID, APP, "nested", ["id"], rows)
    onedb_emulator.page_cap = 2
    onedb_emulator.next_id_last_row = True
    provider = OneDBClient(_source(onedb_emulator, tables=[{"name": "nested", "keys": ["id"]}]),
                           SERVICES)
    assert _all_rows(provider, "nested") == rows


def test_a_start_read_as_exclusive_losing_a_row_at_every_page_edge_stops_the_paging(
        onedb_emulator: OneDBEmulator) -> None:
    """nextId naming the next page's first row, but the start `ids` exclusive (the document
    says only "查询范围的起始 id", getMany): that row would be skipped, silently."""
    onedb_emulator.add_generated_table(ENV_ID, APP, "events", 12_000)
    onedb_emulator.start_exclusive = True
    provider = OneDBClient(_source(onedb_emulator), SERVICES)
    with pytest.raises(Fatal, match="exclusive") as caught:
        _all_rows(provider)
    assert "u0000000625" in str(caught.value)  # the row, to report
    with pytest.raises(Fatal, match="exclusive"):
        provider.count("events")


def test_a_start_row_deleted_between_two_pages_is_not_taken_for_a_lost_one(
        onedb_emulator: OneDBEmulator) -> None:
    rows = [{"ids": {"id": i}, "columns": {"n": i}} for i in range(5)]
    onedb_emulator.add_table(ENV_ID, APP, "live", ["id"], rows)
    onedb_emulator.page_cap = 2
    provider = OneDBClient(_source(onedb_emulator, tables=[{"name": "live", "keys": ["id"]}]),
                           SERVICES)
    first = provider.fetch_page("live", None)
    assert first.next_cursor == {"id": 2}
    onedb_emulator._env(ENV_ID).tables[(APP, "live")].remove({"id": 2})  # deleted meanwhile
    second = provider.fetch_page("live", first.next_cursor)
    assert _rows(provider, first) + _rows(provider, second) == [rows[0], rows[1], rows[3], rows[4]]
    assert provider.count("live") == 4


@pytest.mark.parametrize("exclusive", [False, True])
def test_a_next_id_naming_a_range_marker_pages_on_from_the_row_before(
        onedb_emulator: OneDBEmulator, exclusive: bool) -> None:
    """A key value that is literally `CDB:tableMaxId` (the API doc gives it no escape, and
    does not say a key cannot hold it): a nextId naming that row, sent back as getMany's
    `ids`, reads as "the largest" and the copy ended there, its rows silently left out.
    The next page is asked from the page's last row instead (stored already)."""
    rows = [{"ids": {"userId": u, "seq": 1}, "columns": {"n": i}}
            for i, u in enumerate(["A", "B", "CDB:tableMaxId", "D"])]  # in key order
    onedb_emulator.add_table(ENV_ID, APP, "events", ["userId", "seq"], rows)
    onedb_emulator.page_cap = 2  # the marker row is the next page's first
    onedb_emulator.start_exclusive = exclusive
    provider = OneDBClient(_source(onedb_emulator), SERVICES)
    assert _all_rows(provider) == rows
    assert provider.count("events") == 4


def test_a_range_marker_row_with_no_row_before_it_on_its_page_stops_the_copy_loudly(
        onedb_emulator: OneDBEmulator) -> None:
    """nextId naming the page's own last row, keyed by a marker: no other row of the page to
    go on from, so the copy stops saying why rather than end early."""
    rows = [{"ids": {"userId": u, "seq": 1}, "columns": {}} for u in ["A", "CDB:tableMinId", "D"]]
    onedb_emulator.add_table(ENV_ID, APP, "events", ["userId", "seq"], rows)
    onedb_emulator.page_cap, onedb_emulator.next_id_last_row = 2, True
    provider = OneDBClient(_source(onedb_emulator), SERVICES)
    with pytest.raises(Fatal, match="CDB:tableMinId/CDB:tableMaxId"):
        _all_rows(provider)
    with pytest.raises(Fatal, match="range end"):
        provider.count("events")
