"""`collections: all`: every run lists the environment anew (include/exclude applied), the run
manifest says what was found and left out, and a listing that fails is never silent."""

from __future__ import annotations

import itertools
import json
import logging
from typing import Any

import pytest

from devkit.compare import assert_object_equals_docs
from devkit.sample_data import make_docs
from shared.config import Notify
from shared.domain.errors import StateError
from shared.domain.jobs import JobStatus, Run, RunStatus
from shared.service.context import Context
from shared.service.start import UnknownSource, start_run
from tests.support.backup import ENV_ID, LocalBackup, backup_now, drive
from tests.support.webhook import WebhookReceiver

LISTING = "/tcb/databasecollectionget"


def run_manifest(local: LocalBackup, run: Run) -> dict[str, Any]:
    manifest: dict[str, Any] = json.loads(local.objects.read(run.manifest_key or ""))
    return manifest


def assert_backed_up(local: LocalBackup, ctx: Context, run: Run, expected: dict[str, list[Any]]) -> None:
    jobs = {j.collection: j for j in ctx.state.list_jobs(run.run_id)}
    assert set(jobs) == set(expected)
    for name, docs in expected.items():
        result = jobs[name].result
        assert jobs[name].status is JobStatus.DONE and result is not None, jobs[name].error
        assert_object_equals_docs(local.objects.read(result.key), docs, "json")


def test_every_run_backs_up_the_collections_that_exist_then(local: LocalBackup) -> None:
    data = {"orders": make_docs(30, seed=1), "商品 products": make_docs(5, seed=2, prefix="p"),
            "users": make_docs(3, seed=3, prefix="u"), "tmp_import": make_docs(2, seed=4),
            "tmp_old": []}
    for name, docs in data.items():
        local.seed(name, docs)
    config = local.config(local.wechat_source(collections="all", exclude=["tmp_*"]))

    first = backup_now(local.context(config), key="night-1")

    kept = {name: docs for name, docs in data.items() if not name.startswith("tmp_")}
    assert first.status is RunStatus.SUCCEEDED
    assert_backed_up(local, local.context(config), first, kept)
    discovery = run_manifest(local, first)["discovery"]["shop"]
    assert discovery == {"found": sorted(data), "excluded": ["tmp_import", "tmp_old"]}

    reviews = make_docs(7, seed=5, prefix="r")
    local.seed("reviews", reviews)  # created during the day
    ctx = local.context(config)
    second = backup_now(ctx, key="night-2")

    assert second.status is RunStatus.SUCCEEDED
    assert_backed_up(local, ctx, second, {**kept, "reviews": reviews})
    assert "reviews" in run_manifest(local, second)["discovery"]["shop"]["found"]


def test_include_patterns_and_a_query_for_a_discovered_collection(local: LocalBackup) -> None:
    orders = make_docs(40, seed=1)
    for name, docs in {"orders": orders, "orders_2024": make_docs(3), "users": make_docs(2),
                       "logs": make_docs(2)}.items():
        local.seed(name, docs)
    source = local.wechat_source(
        collections="all", include=["order*", "user?"], exclude=["*_2024"],
        queries={"orders": "db.collection('orders').where({paid: true}).get()"})
    ctx = local.context(local.config(source))

    run = backup_now(ctx)

    assert run.status is RunStatus.SUCCEEDED
    assert_backed_up(local, ctx, run, {"orders": [d for d in orders if d["paid"]], "users": make_docs(2)})
    assert run_manifest(local, run)["discovery"]["shop"]["excluded"] == ["logs", "orders_2024"]


def test_listing_pages_until_the_total(local: LocalBackup) -> None:
    for index in range(250):
        local.seed(f"c{index:03d}", [{"_id": f"d{index}"}])
    ctx = local.context(local.config(local.wechat_source(collections="all", include=["c00?"])))

    run = backup_now(ctx)

    assert run.status is RunStatus.SUCCEEDED
    assert sorted(j.collection for j in ctx.state.list_jobs(run.run_id)) == [f"c00{i}" for i in range(10)]
    assert len(run_manifest(local, run)["discovery"]["shop"]["found"]) == 250
    assert local.emulator.calls[LISTING] == 3  # pages of 100


def test_a_refused_page_size_falls_back_to_wechats_default(local: LocalBackup) -> None:
    for index in range(25):
        local.seed(f"c{index:02d}", [])
    local.emulator.max_listing_page = 10
    ctx = local.context(local.config(local.wechat_source(collections="all")))

    run = backup_now(ctx)

    assert run.status is RunStatus.SUCCEEDED
    assert len(ctx.state.list_jobs(run.run_id)) == 25
    assert local.emulator.calls[LISTING] == 1 + 3  # the refused page, then 10 + 10 + 5


def test_collections_created_while_listing_are_not_missed(local: LocalBackup) -> None:
    for index in range(150):
        local.seed(f"c{index:03d}", [])
    # created right after the first page: they sort first, shifting every later offset
    local.emulator.create_while_listing(ENV_ID, ["a-new-1", "a-new-2"])
    ctx = local.context(local.config(local.wechat_source(collections="all", include=["a-*", "c149"])))

    run = backup_now(ctx)

    assert sorted(j.collection for j in ctx.state.list_jobs(run.run_id)) == ["a-new-1", "a-new-2", "c149"]
    assert len(run_manifest(local, run)["discovery"]["shop"]["found"]) == 152
    assert local.emulator.calls[LISTING] == 2 + 2  # one inconsistent listing, then a clean one


def test_a_collection_dropped_and_one_created_while_listing_miss_no_other(
    local: LocalBackup,
) -> None:
    """databasecollectionget pages by offset (limit, offset; pager.Total: databaseCollectionGet's
    Request parameters). A collection dropped ahead of the next page's offset shifts every
    later one back by one: the first of them falls between the pages. One created after
    them keeps the total as it was, so only the pages' seams can tell."""
    for index in range(150):
        local.seed(f"c{index:03d}", [])
    local.emulator.create_while_listing(ENV_ID, ["zz-new"])  # sorts last: after the seam
    local.emulator.drop_while_listing(ENV_ID, ["c000"])  # sorts first: ahead of the seam
    ctx = local.context(local.config(local.wechat_source(collections="all", include=["c1??"])))

    run = backup_now(ctx)

    assert run.status is RunStatus.SUCCEEDED
    jobs = sorted(j.collection for j in ctx.state.list_jobs(run.run_id))
    assert jobs == [f"c{index}" for index in range(100, 150)]  # c100 first among them
    assert "zz-new" in run_manifest(local, run)["discovery"]["shop"]["found"]


def test_a_source_that_cannot_be_listed_fails_the_run_while_others_are_backed_up(
    local: LocalBackup,
) -> None:
    orders = make_docs(12)
    local.seed("orders", orders)
    local.emulator.inject_errcode(LISTING, 85088, times=10, errmsg="no qbase privilege")
    config = local.config(local.wechat_source("listed"),
                          local.wechat_source("discovering", collections="all"))
    ctx = local.context(config)

    run = backup_now(ctx)

    assert run.status is RunStatus.FAILED
    assert_backed_up(local, ctx, run, {"orders": orders})
    manifest = run_manifest(local, run)
    assert manifest["status"] == "failed"
    assert "cloud development is not enabled" in manifest["discovery"]["discovering"]["error"]
    assert manifest["summary"]["sources_not_listed"] == ["discovering"]
    # a configuration error is not retried: one listing by the discovering source, one by the
    # listed source for its count cross-check (which costs only the cross-check)
    assert local.emulator.calls[LISTING] == 2


def test_a_discovering_source_that_finds_nothing_fails_loudly_everywhere(
    local: LocalBackup, webhook: WebhookReceiver,
) -> None:
    local.environ["ROBOT_URL"] = webhook.url
    config = local.config(local.wechat_source(collections="all"))
    notify = Notify.model_validate({"on": "failure", "webhooks": [{"url": "${ROBOT_URL}",
                                                                   "format": "json"}]},
                                   context={"environ": local.environ})
    ctx = local.context(config.model_copy(update={"notify": notify}))

    run = backup_now(ctx)  # the env has no collection at all

    assert run.status is RunStatus.FAILED and ctx.state.list_jobs(run.run_id) == []
    error = run_manifest(local, run)["discovery"]["shop"]["error"]
    assert "'shop'" in error and ENV_ID in error and LISTING in error and "permission sets" in error
    (message,) = webhook.messages
    assert message["failures"] == [{"source": "shop", "collection": "*", "error": error}]
    assert "nothing backed up" in message["text"] and ENV_ID in message["text"]


def test_include_exclude_that_leave_nothing_say_so(local: LocalBackup) -> None:
    local.seed("tmp_a", [])
    ctx = local.context(local.config(local.wechat_source(collections="all", exclude=["tmp_*"])))

    run = backup_now(ctx)

    assert run.status is RunStatus.FAILED
    error = run_manifest(local, run)["discovery"]["shop"]["error"]
    assert "tmp_a" in error and "include/exclude" in error


def test_a_listing_answer_of_unknown_shape_fails_the_source_naming_its_fields(
    local: LocalBackup,
) -> None:
    local.seed("orders", make_docs(2))
    local.emulator.listing_answer = lambda answer: {"collection_list": answer["collections"],
                                                    "count": 1}
    ctx = local.context(local.config(local.wechat_source(collections="all")))

    run = backup_now(ctx)

    assert run.status is RunStatus.FAILED and ctx.state.list_jobs(run.run_id) == []
    error = run_manifest(local, run)["discovery"]["shop"]["error"]
    assert "collection_list" in error and "does not recognise" in error and ENV_ID in error


@pytest.mark.parametrize("reshape", [
    pytest.param(lambda answer: {"collections": answer["collections"][:10]}, id="no pager"),
    pytest.param(lambda answer: {**answer, "collections": answer["collections"][:10],
                                 "pager": {"Offset": 0, "Limit": 10}}, id="pager without Total"),
])
def test_a_listing_without_its_total_fails_rather_than_missing_collections(
    local: LocalBackup, reshape: Any,
) -> None:
    """databaseCollectionGet answers pager.Total (componenttcb/dbcollection: total), the only
    way to know the listing is complete: a page cut short by the server without one must not
    pass as "that is every collection"."""
    for index in range(25):
        local.seed(f"c{index:02d}", [])
    local.emulator.listing_answer = reshape
    ctx = local.context(local.config(local.wechat_source(collections="all")))

    run = backup_now(ctx)

    assert run.status is RunStatus.FAILED and ctx.state.list_jobs(run.run_id) == []
    error = run_manifest(local, run)["discovery"]["shop"]["error"]
    assert "does not recognise" in error and "pager.Total" in error and ENV_ID in error


def test_a_listing_that_never_reaches_its_total_says_so_and_what_to_check(
    local: LocalBackup,
) -> None:
    """A server that lists fewer collections than its pager.Total, the same each time, is
    not an environment that "kept changing": the error says what it saw and where to look."""
    for index in range(5):
        local.seed(f"c{index:02d}", [])
    local.emulator.listing_answer = lambda answer: {
        **answer, "collections": [c for c in answer["collections"] if c["name"] != "c03"]}
    ctx = local.context(local.config(local.wechat_source(collections="all")))

    run = backup_now(ctx)

    assert run.status is RunStatus.FAILED and ctx.state.list_jobs(run.run_id) == []
    error = run_manifest(local, run)["discovery"]["shop"]["error"]
    assert "kept changing" not in error and "busy" not in error
    assert "listed 4" in error and "total of 5" in error and "api_base" in error


def test_a_listing_whose_total_moves_every_time_says_what_changed(local: LocalBackup) -> None:
    for index in range(5):
        local.seed(f"c{index:02d}", [])
    totals = itertools.count(100)
    local.emulator.listing_answer = lambda answer: {
        **answer, "pager": {**answer["pager"], "Total": next(totals)}}
    ctx = local.context(local.config(local.wechat_source(collections="all")))

    run = backup_now(ctx)

    assert run.status is RunStatus.FAILED and ctx.state.list_jobs(run.run_id) == []
    error = run_manifest(local, run)["discovery"]["shop"]["error"]
    assert "listed 5" in error and "created or dropped" in error and "api_base" in error
    # the wrapper must not name a cause the platform's message contradicts
    assert "busy" not in error and "unreachable" not in error and "outage" not in error, error


def test_the_collections_own_count_is_recorded_and_a_far_one_warned_about(
    local: LocalBackup,
) -> None:
    local.seed("orders", make_docs(100))
    local.seed("users", make_docs(20, seed=2, prefix="u"))
    local.seed("paid", make_docs(30, seed=3))
    local.emulator.listing_answer = lambda answer: {**answer, "collections": [
        {**c, "count": c["count"] + (500 if c["name"] == "users" else 0)}
        for c in answer["collections"]]}
    source = local.wechat_source(collections=["orders", "users", "paid"], queries={
        "paid": "db.collection('paid').where({paid: true}).get()"})
    ctx = local.context(local.config(source))

    run = backup_now(ctx)

    assert run.status is RunStatus.SUCCEEDED
    manifests = {j.collection: json.loads(local.objects.read(j.result.manifest_key))
                 for j in ctx.state.list_jobs(run.run_id) if j.result}
    assert manifests["orders"]["platform_collection_count"] == 100
    assert manifests["orders"]["count_warning"] is None
    assert manifests["users"]["platform_collection_count"] == 520
    assert "reported 20 records" in manifests["users"]["count_warning"]
    assert "counts 520" in manifests["users"]["count_warning"]
    assert manifests["paid"]["platform_collection_count"] is None  # filtered: not comparable
    summary = run_manifest(local, run)["summary"]
    assert list(summary["count_warnings"]) == ["shop/users"]


def test_a_listing_refused_for_quota_fails_the_run_without_promising_a_retry(
    local: LocalBackup,
) -> None:
    """Discovery is asked once per run: a "wait" answer to it must say that nothing will
    list the source again and what to do, not the "will try again later" of a job."""
    local.emulator.inject_errcode(LISTING, -501015, times=10, errmsg="read quota used up")
    ctx = local.context(local.config(local.wechat_source(collections="all")))

    run = backup_now(ctx)

    assert run.status is RunStatus.FAILED
    error = run_manifest(local, run)["discovery"]["shop"]["error"]
    assert "-501015" in error and "could not be listed" in error
    assert "start the backup again" in error and "again later" not in error


def test_a_listing_that_stays_busy_fails_the_run_without_promising_a_retry(
    local: LocalBackup,
) -> None:
    """A busy answer (-1, retried within the call) that lasts leaves the source unlisted for
    this run: the error says so and what to do, not the "will retry" of a job's step."""
    local.emulator.inject_errcode(LISTING, -1, times=10, errmsg="system busy")
    ctx = local.context(local.config(local.wechat_source(collections="all")))

    run = backup_now(ctx)

    assert run.status is RunStatus.FAILED
    error = run_manifest(local, run)["discovery"]["shop"]["error"]
    assert "errcode -1" in error and "could not be listed" in error
    assert "start the backup again" in error
    assert "will retry" not in error and "again later" not in error


def test_a_token_answer_without_a_token_fails_the_source_saying_what_to_check(
    local: LocalBackup,
) -> None:
    """stable_token answers `{access_token, expires_in}`; an answer without the token (a
    proxy at api_base, a changed API) fails the source loudly, naming the call, the fields
    that came and what to check, instead of crashing the start of the whole run."""
    local.emulator.answer_with("/cgi-bin/stable_token", {"errcode": 0, "errmsg": "ok"}, times=10)
    ctx = local.context(local.config(local.wechat_source(collections="all")))

    run = backup_now(ctx)

    assert run.status is RunStatus.FAILED
    error = run_manifest(local, run)["discovery"]["shop"]["error"]
    assert "/cgi-bin/stable_token" in error and "access_token" in error
    assert "errcode, errmsg" in error and "api_base" in error


def test_an_unexpected_error_in_one_sources_listing_fails_that_source_only(
    local: LocalBackup, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    """A bug or an unexpected library error while one source is listed must not stop the
    start of the whole run: that source fails for the run (recorded, announced and logged
    with its traceback) and the others are backed up."""
    orders = make_docs(4, seed=1)
    local.seed("orders", orders)
    config = local.config(local.wechat_source(),
                          local.wechat_source(name="broken", collections="all"))
    ctx = local.context(config)

    def listing_bug() -> list[str]:
        raise KeyError("pager")

    monkeypatch.setattr(ctx.platforms.get("broken"), "collections", listing_bug)
    caplog.set_level(logging.ERROR)

    run = backup_now(ctx)

    assert run.status is RunStatus.FAILED
    assert_backed_up(local, ctx, run, {"orders": orders})
    error = run_manifest(local, run)["discovery"]["broken"]["error"]
    assert "source 'broken'" in error and "KeyError" in error and "pager" in error
    assert (run.summary or {})["sources_not_listed"] == ["broken"]
    logged = [r for r in caplog.records if getattr(r, "source", None) == "broken"]
    assert logged and logged[0].exc_info is not None


def test_a_request_naming_a_collection_the_source_lacks_is_still_refused(local: LocalBackup) -> None:
    """Only a source's own failure is recorded on the run; a request's mistake is refused."""
    local.seed("orders", make_docs(2))
    ctx = local.context(local.config())

    with pytest.raises(UnknownSource, match="no collection"):
        start_run(ctx, idempotency_key="k", trigger="test", collections={"shop": ["nope"]})

    assert ctx.state.find_run("k") is None


def test_a_state_store_failure_while_listing_is_not_blamed_on_the_platform(
    local: LocalBackup, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The listing needs the source's token, cached in the state store: a state failure
    there (a locked database, a COS state outage) fails the source for the run, and the
    error names the state backend to check, not a busy platform to wait for."""
    local.seed("orders", make_docs(4, seed=1))
    ctx = local.context(local.config(local.wechat_source(collections="all")))
    read = ctx.state.cache_get
    failed: list[str] = []

    def cache_get(key: str, now: Any) -> str | None:
        failed.append(key)
        raise StateError("state table: cache_get failed: OperationalError: database is locked")

    monkeypatch.setattr(ctx.state, "cache_get", cache_get)
    started, _ = start_run(ctx, idempotency_key="test", trigger="test")
    monkeypatch.setattr(ctx.state, "cache_get", read)  # the state store is back
    run = drive(ctx, started)

    assert failed and run.status is RunStatus.FAILED
    error = run_manifest(local, run)["discovery"]["shop"]["error"]
    assert "could not be listed" in error and "database is locked" in error
    assert "state" in error.split("(")[0] and "state.url" in error
    assert "platform stayed busy" not in error and "rate limit" not in error
