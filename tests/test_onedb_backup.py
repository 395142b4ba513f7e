"""OneDB backups end to end: the emulator over real HTTP, the real COS SDK against moto,
SQLite state, the pipeline's own poller and finisher (in-process here; killed processes
are in test_onedb_resume.py)."""

from __future__ import annotations

import io
import json
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import crcmod
import pytest

from devkit.cos_layer import CosLayer
from devkit.emulators.onedb import OneDBEmulator, generated_row
from shared.config.model import Config
from shared.domain.jobs import JobStatus
from shared.domain.layout import data_key
from shared.logs import configure_logging
from shared.service.context import Context
from shared.service.finish import finish
from shared.service.poll import poll
from shared.service.start import start_run
from tests.support.backup import LocalBackup, backup_now, drive
from tests.support.onedb import APP, ENV_ID, KEY_SECRET, onedb_source

# CRC64-ECMA as COS reports it (the COS SDK's parameters), independent of the product's code
crc64_of = crcmod.mkCrcFun(0x142F0E1EBA9EA3693, initCrc=0, xorOut=0xFFFFFFFFFFFFFFFF, rev=True)

POSTS = [
    {"ids": {"userId": "u2", "postId": 1}, "columns": {"title": "第二个 🐼", "likes": 3}},
    {"ids": {"userId": "u1", "postId": 10}, "columns": {"title": "ten\nlines", "likes": 0}},
    {"ids": {"userId": "u1", "postId": 2}, "columns": {"title": "two", "likes": 7,
                                                       "tags": ["a", {"b": None}]}},
]
SORTED_POSTS = [POSTS[2], POSTS[1], POSTS[0]]  # (userId, postId) ascending, numbers as numbers


def _lines(local: LocalBackup, key: str) -> list[dict[str, Any]]:
    data = local.objects.read(key)
    assert data == b"" or data.endswith(b"\n")
    return [json.loads(line) for line in data.decode("utf-8").splitlines()]


def _object_key(ctx: Context, run_id: str, target: str) -> str:
    job = next(j for j in ctx.state.list_jobs(run_id) if j.collection == target)
    assert job.status is JobStatus.DONE, job.error
    assert job.result is not None
    return job.result.key


class AfterFirstPause:
    """A dispatcher finishing each job at once; after a copy paused, `act` is given the
    job's paged checkpoint, until it answers True (then never again)."""

    def __init__(self, act: Callable[[dict[str, Any]], bool]) -> None:
        self.act = act
        self.ctx: Context | None = None
        self.acted = False

    def dispatch(self, job_id: str) -> None:
        assert self.ctx is not None
        if finish(self.ctx, job_id) != "paused" or self.acted:
            return
        job = self.ctx.state.get_job(job_id)
        assert job is not None
        self.acted = self.act((job.checkpoint or {})["paged"])


def paused_context(local: LocalBackup, config: Config, act: Callable[[dict[str, Any]], bool]
                   ) -> Context:
    """A context whose hand-offs finish at once, with `act` run after the first pause."""
    dispatcher = AfterFirstPause(act)
    dispatcher.ctx = local.context(config, dispatcher=dispatcher)
    return dispatcher.ctx


def test_tables_are_backed_up_in_key_order(local: LocalBackup, onedb_emulator: OneDBEmulator) -> None:
    onedb_emulator.add_table(ENV_ID, APP, "posts", ["userId", "postId"], POSTS)
    onedb_emulator.add_generated_table(ENV_ID, APP, "events", 12_345)
    onedb_emulator.add_table(ENV_ID, APP, "empty", ["id"], [])
    source = onedb_source(local, onedb_emulator, tables=[
        "events", {"name": "posts", "keys": ["userId", "postId"]}, {"name": "empty", "keys": ["id"]}])
    ctx = local.context(local.config(source))
    run = backup_now(ctx)
    assert run.status.value == "succeeded"
    assert _lines(local, _object_key(ctx, run.run_id, "posts")) == SORTED_POSTS
    assert _lines(local, _object_key(ctx, run.run_id, "events")) == [
        generated_row(i) for i in range(12_345)]
    assert local.objects.read(_object_key(ctx, run.run_id, "empty")) == b""
    events = next(j for j in ctx.state.list_jobs(run.run_id) if j.collection == "events")
    assert events.result is not None and events.result.records == 12_345
    assert events.progress_records == 12_345
    manifest = json.loads(local.objects.read(events.result.manifest_key))
    assert manifest["platform"] == "onedb" and manifest["records"] == 12_345
    assert manifest["sha256"] == events.result.sha256
    assert onedb_emulator.calls["getMany"] >= 3 + 1 + 1  # 5000 rows a call


def test_filter_and_get_columns(local: LocalBackup, onedb_emulator: OneDBEmulator) -> None:
    onedb_emulator.add_generated_table(ENV_ID, APP, "events", 20_000)
    onedb_emulator.page_cap = 3000  # short pages, some with no matching row at all
    source = onedb_source(local, onedb_emulator, tables=[{
        "name": "events", "getColumns": ["score", "city"],
        "filter": {"conditionList": [{"column": "city", "symbol": "=", "value": "上海"},
                                     {"column": "score", "symbol": "<", "value": 100}]}}])
    ctx = local.context(local.config(source))
    run = backup_now(ctx)
    expected = []
    for i in range(20_000):
        row = generated_row(i)
        if row["columns"]["city"] == "上海" and row["columns"]["score"] < 100:
            expected.append({"ids": row["ids"], "columns": {
                "score": row["columns"]["score"], "city": "上海"}})
    assert 0 < len(expected) < 1000
    assert _lines(local, _object_key(ctx, run.run_id, "events")) == expected


def test_parts_budget_pauses_and_resumes_without_burning_attempts(
    local: LocalBackup, onedb_emulator: OneDBEmulator
) -> None:
    """A finisher out of time parks what it read and leaves the job to the next one."""
    onedb_emulator.add_generated_table(ENV_ID, APP, "events", 120_000)  # ~12 MB: 3 parts
    onedb_emulator.latency = 0.02
    source = onedb_source(local, onedb_emulator)
    config = local.config(source, finish_budget_seconds=0.15)
    config = config.model_copy(update={"destination": config.destination.model_copy(
        update={"part_size_mb": 5})})
    outcomes: list[str] = []
    parked: list[int] = []  # rows read but not in a part when a finisher paused

    class Counting:
        def dispatch(self, job_id: str) -> None:
            outcomes.append(finish(ctx, job_id))
            job = ctx.state.get_job(job_id)
            assert job is not None
            state = (job.checkpoint or {}).get("paged") or {}
            if outcomes[-1] == "paused" and state.get("parked"):
                assert local.objects.head(state["parked"]["key"]) is not None
                parked.append(state["parked"]["rows"])
                assert job.progress_records == sum(p["rows"] for p in state["parts"]) + parked[-1]

    ctx = local.context(config, dispatcher=Counting())
    run, _ = start_run(ctx, idempotency_key="budget", trigger="test")
    run = drive(ctx, run)
    assert run.status.value == "succeeded", [j.error for j in ctx.state.list_jobs(run.run_id)]
    assert outcomes.count("paused") >= 3 and outcomes[-1] == "done"
    assert parked and all(rows > 0 for rows in parked)
    job = ctx.state.list_jobs(run.run_id)[0]
    assert job.attempts == 0
    assert job.result is not None and job.result.objects[0].upload_parts == 3
    assert _lines(local, job.result.key) == [generated_row(i) for i in range(120_000)]
    assert local.objects.head(job.result.key + ".parked") is None


def test_an_upload_aborted_while_the_copy_was_paused_starts_over(
    local: LocalBackup, onedb_emulator: OneDBEmulator
) -> None:
    """A paused copy's multipart upload can vanish before it resumes (the bucket's lifecycle
    rule for stale parts, or an abort by hand): the copy starts over and ends with every
    row, instead of failing on every try at its next part."""
    onedb_emulator.add_generated_table(ENV_ID, APP, "events", 120_000)  # ~12 MB: 3 parts
    onedb_emulator.latency = 0.02
    config = local.config(onedb_source(local, onedb_emulator), finish_budget_seconds=0.15)
    config = config.model_copy(update={"destination": config.destination.model_copy(
        update={"part_size_mb": 5})})
    aborted: list[str] = []

    def abort(state: dict[str, Any]) -> bool:
        if state["parts"] and not state["exhausted"]:
            local.objects.abort_upload(state["key"], state["upload_id"])
            aborted.append(state["upload_id"])
        return bool(aborted)

    ctx = paused_context(local, config, abort)
    run, _ = start_run(ctx, idempotency_key="aborted", trigger="test")
    run = drive(ctx, run)
    assert aborted
    job = ctx.state.list_jobs(run.run_id)[0]
    assert job.status is JobStatus.DONE and job.result is not None, job.error
    assert _lines(local, job.result.key) == [generated_row(i) for i in range(120_000)]


def test_lost_parked_rows_are_read_again(local: LocalBackup, onedb_emulator: OneDBEmulator) -> None:
    onedb_emulator.add_generated_table(ENV_ID, APP, "events", 60_000)
    onedb_emulator.latency = 0.02
    config = local.config(onedb_source(local, onedb_emulator), finish_budget_seconds=0.1)
    deleted: list[str] = []

    def lose(state: dict[str, Any]) -> bool:
        if state.get("parked"):
            local.objects.delete(state["parked"]["key"])
            deleted.append(state["parked"]["key"])
        return bool(deleted)

    ctx = paused_context(local, config, lose)
    run, _ = start_run(ctx, idempotency_key="lost", trigger="test")
    run = drive(ctx, run)
    assert deleted
    job = ctx.state.list_jobs(run.run_id)[0]
    assert job.status is JobStatus.DONE and job.result is not None, job.error
    assert _lines(local, job.result.key) == [generated_row(i) for i in range(60_000)]


@pytest.mark.parametrize(("fault", "error"), [
    ("rows_reshaped", "attributeColumns"),  # fails at once (Fatal)
    ("http_502", "after 1 tries"),  # fails after its last try
])
def test_a_failed_paged_copy_leaves_no_parked_rows_behind(
    local: LocalBackup, onedb_emulator: OneDBEmulator, fault: str, error: str
) -> None:
    """A copy that paused with rows parked, then failed: nobody will read those rows again,
    so the side object goes too; the run's folder holds only what a manifest names."""
    onedb_emulator.add_generated_table(ENV_ID, APP, "events", 60_000)
    onedb_emulator.latency = 0.02
    config = local.config(onedb_source(local, onedb_emulator), finish_budget_seconds=0.1,
                          max_attempts=1)
    parked: list[str] = []

    def fail_next(state: dict[str, Any]) -> bool:
        if state.get("parked"):  # the next invocation fails
            assert local.objects.head(state["parked"]["key"]) is not None
            parked.append(state["parked"]["key"])
            onedb_emulator.inject(fault, 100)
        return bool(parked)

    ctx = paused_context(local, config, fail_next)
    run, _ = start_run(ctx, idempotency_key=f"failed-{fault}", trigger="test")
    run = drive(ctx, run)
    (job,) = ctx.state.list_jobs(run.run_id)
    assert parked and job.status is JobStatus.FAILED and error in (job.error or ""), job.error
    assert local.objects.head(parked[0]) is None
    folder = run.manifest_key.rpartition("/")[0] if run.manifest_key else ""
    assert [o.key for o in local.objects.list(folder + "/")] == [run.manifest_key]


def test_transient_platform_errors_are_retried(local: LocalBackup, onedb_emulator: OneDBEmulator) -> None:
    onedb_emulator.add_generated_table(ENV_ID, APP, "events", 11_000)
    onedb_emulator.inject("busy", 2)
    onedb_emulator.inject("http_502")
    onedb_emulator.inject("drop")
    onedb_emulator.inject("reject_token")  # signed again once
    ctx = local.context(local.config(onedb_source(local, onedb_emulator)))
    run = backup_now(ctx)
    assert _lines(local, _object_key(ctx, run.run_id, "events")) == [
        generated_row(i) for i in range(11_000)]


def test_rate_limit_waits_without_failing(local: LocalBackup, onedb_emulator: OneDBEmulator) -> None:
    onedb_emulator.add_generated_table(ENV_ID, APP, "events", 6_000)
    onedb_emulator.inject("rate_limit", 4)  # more than max_attempts (3) tries
    ctx = local.context(local.config(onedb_source(local, onedb_emulator)))
    run = backup_now(ctx)
    job = ctx.state.list_jobs(run.run_id)[0]
    assert job.status is JobStatus.DONE, job.error
    assert job.attempts == 0


def _finishing_at_once(local: LocalBackup, emulator: OneDBEmulator,
                       **timing: Any) -> tuple[Context, list[str]]:
    """A context whose hand-offs run the finisher at once, in this process; the outcomes
    of its invocations, in order."""
    outcomes: list[str] = []

    class Direct:
        def dispatch(self, job_id: str) -> None:
            outcomes.append(finish(ctx, job_id))

    ctx = local.context(local.config(onedb_source(local, emulator), **timing),
                        dispatcher=Direct())
    return ctx, outcomes


def test_a_rate_limited_table_is_copied_in_one_go_at_about_the_allowed_rate(
    local: LocalBackup, onedb_emulator: OneDBEmulator
) -> None:
    """Refused pages are asked again in place: no aborted attempt, no restart."""
    onedb_emulator.add_generated_table(ENV_ID, APP, "events", 30_000)
    onedb_emulator.page_cap = 1_000  # 30 calls
    onedb_emulator.rate_limit = 10  # calls a second
    ctx, outcomes = _finishing_at_once(local, onedb_emulator)
    began = time.monotonic()
    run, _ = start_run(ctx, idempotency_key="limited", trigger="test")
    seconds = time.monotonic() - began

    assert outcomes == ["done"]  # one finisher invocation, no restart from a checkpoint
    assert onedb_emulator.refused > 0  # the limit did push back
    assert onedb_emulator.calls["getMany"] == 30  # each page read once (refusals not counted)
    job = ctx.state.list_jobs(run.run_id)[0]
    assert job.result is not None and job.result.records == 30_000
    assert seconds < 30 / 10 * 3  # close to the allowed rate, not stalled


def test_a_refusal_that_persists_leaves_the_copy_to_a_later_invocation(
    local: LocalBackup, onedb_emulator: OneDBEmulator
) -> None:
    onedb_emulator.add_generated_table(ENV_ID, APP, "events", 6_000)
    onedb_emulator.rate_limit = 0  # every call refused, Retry-After: 1
    ctx, outcomes = _finishing_at_once(local, onedb_emulator, finish_budget_seconds=0.5)
    run, _ = start_run(ctx, idempotency_key="refused", trigger="test")

    (job,) = ctx.state.list_jobs(run.run_id)
    assert outcomes == ["retry"] and job.status is JobStatus.READY
    assert job.attempts == 0 and "429" in (job.error or "")  # waiting is not a failed try

    onedb_emulator.rate_limit = None
    run = drive(ctx, run)
    assert run.status.value == "succeeded" and outcomes[-1] == "done"


def test_the_paged_copys_crc64_is_recorded_and_a_damaged_object_never_done(
    local: LocalBackup, onedb_emulator: OneDBEmulator, cos_layer: CosLayer
) -> None:
    onedb_emulator.add_generated_table(ENV_ID, APP, "events", 12_000)
    onedb_emulator.add_generated_table(ENV_ID, APP, "damaged", 3_000)
    source = onedb_source(local, onedb_emulator, tables=["events", "damaged"])
    config = local.config(source)

    class Later:
        def dispatch(self, job_id: str) -> None:
            """The test drives the finisher itself, once the damage is set up."""

    ctx = local.context(config, dispatcher=Later())
    run, _ = start_run(ctx, idempotency_key="crc", trigger="test")
    for job in ctx.state.list_jobs(run.run_id):
        if job.collection == "damaged":
            cos_layer.corrupt_crc.add(data_key(config.destination.prefix, run.run_id, "crm",
                                               "damaged", "json"))
        finish(ctx, job.job_id)

    jobs = {j.collection: j for j in ctx.state.list_jobs(run.run_id)}
    done = jobs["events"].result
    assert done is not None
    data = local.objects.read(done.key)
    manifest = json.loads(local.objects.read(done.manifest_key))
    assert manifest["objects"][0]["crc64"] == str(crc64_of(data))
    damaged = jobs["damaged"]
    assert damaged.status is not JobStatus.DONE and "CRC64" in (damaged.error or ""), damaged.error


def _failed_with(local: LocalBackup, ctx: Context) -> str:
    run = backup_now(ctx)
    assert run.status.value == "failed"
    job = ctx.state.list_jobs(run.run_id)[0]
    assert job.status is JobStatus.FAILED
    assert job.error is not None
    manifest = json.loads(local.objects.read(run.manifest_key or ""))
    assert manifest["jobs"][0]["error"] == job.error
    return job.error


def test_missing_table_fails_with_what_to_fix(local: LocalBackup, onedb_emulator: OneDBEmulator) -> None:
    ctx = local.context(local.config(onedb_source(local, onedb_emulator, tables=["orderz"])))
    error = _failed_with(local, ctx)
    assert "has no table 'orderz'" in error and "app_id" in error


def test_wrong_key_secret_fails_after_one_fresh_token(local: LocalBackup, onedb_emulator: OneDBEmulator) -> None:
    onedb_emulator.add_generated_table(ENV_ID, APP, "events", 10)
    onedb_emulator.set_key_secret(ENV_ID, "key-2f9a41", "rotated-secret-000000")
    ctx = local.context(local.config(onedb_source(local, onedb_emulator)))
    error = _failed_with(local, ctx)
    assert "freshly signed token was rejected too" in error and "key_secret" in error
    assert KEY_SECRET not in error


def test_key_without_cdb_permission(local: LocalBackup, onedb_emulator: OneDBEmulator) -> None:
    onedb_emulator.add_key(ENV_ID, "key-no-cdb", KEY_SECRET, cdb=False)
    onedb_emulator.add_generated_table(ENV_ID, APP, "events", 10)
    ctx = local.context(local.config(onedb_source(local, onedb_emulator, keyid="key-no-cdb")))
    assert "AppHub" in _failed_with(local, ctx)


def test_wrong_primary_key_columns(local: LocalBackup, onedb_emulator: OneDBEmulator) -> None:
    onedb_emulator.add_generated_table(ENV_ID, APP, "events", 10)
    ctx = local.context(local.config(onedb_source(local, onedb_emulator, keys=["id"])))
    error = _failed_with(local, ctx)
    assert "keys (the primary key columns" in error and "userId" in error


@pytest.mark.parametrize(("fault", "fields"), [
    ("rows_reshaped", "attributeColumns"),  # each row's columns under another name
    ("no_data_list", "rows"),  # the rows under another key than `data`
])
def test_a_page_in_an_unknown_shape_fails_at_once_saying_what_to_check(
        local: LocalBackup, onedb_emulator: OneDBEmulator, fault: str, fields: str) -> None:
    """getMany's answer is `{data: [{ids, columns}], nextId}` (cloud database API, 返回内容):
    anything else stops the copy, naming what came and what to check, and never stores
    rows without their columns."""
    onedb_emulator.add_generated_table(ENV_ID, APP, "events", 10)
    onedb_emulator.inject(fault, times=20)
    ctx = local.context(local.config(onedb_source(local, onedb_emulator)))

    error = _failed_with(local, ctx)

    assert "shape" in error and fields in error and "`columns`" in error
    assert "api_base" in error  # what to check
    assert onedb_emulator.calls["getMany"] == 1  # a shape is not retried


def test_a_row_holding_half_an_emoji_is_backed_up_as_it_is(
        local: LocalBackup, onedb_emulator: OneDBEmulator) -> None:
    """A text cut in the middle of an emoji (a lone surrogate, which a JavaScript string
    may hold and JSON.stringify writes as `\\ud83d`) is valid JSON: the row is stored with
    the rest, the escape kept. The read-back took that line for a broken one and deleted
    the object ("holds 1 rows instead of 2"), every night."""
    rows = [{"ids": {"id": "a"}, "columns": {"nick": "cut \ud83d", "n": 1}},
            {"ids": {"id": "b"}, "columns": {"nick": "whole 🐼", "n": 2}}]
    onedb_emulator.add_table(ENV_ID, APP, "nicks", ["id"], rows)
    source = onedb_source(local, onedb_emulator, tables=[{"name": "nicks", "keys": ["id"]}])
    ctx = local.context(local.config(source))

    run = backup_now(ctx)

    assert run.status.value == "succeeded", [j.error for j in ctx.state.list_jobs(run.run_id)]
    key = _object_key(ctx, run.run_id, "nicks")
    assert local.objects.read(key).splitlines()[0] == (
        b'{"ids":{"id":"a"},"columns":{"nick":"cut \\ud83d","n":1}}')
    assert _lines(local, key) == rows


@pytest.mark.parametrize("exclusive", [False, True], ids=["inclusive", "exclusive"])
def test_a_next_id_naming_its_own_last_row_backs_up_every_row_once(
        local: LocalBackup, onedb_emulator: OneDBEmulator, exclusive: bool) -> None:
    """The API document's nextId sample (getMany, `"nextId": {"ids": "idsValue"}`) also
    reads as the ids of the page's last row; sent back as the next page's start (`ids`),
    that row is read again (inclusive) or not (exclusive): stored once either way."""
    onedb_emulator.add_generated_table(ENV_ID, APP, "events", 12_000)
    onedb_emulator.next_id_last_row = True
    onedb_emulator.start_exclusive = exclusive
    ctx = local.context(local.config(onedb_source(local, onedb_emulator)))
    run = backup_now(ctx)
    assert run.status.value == "succeeded", [j.error for j in ctx.state.list_jobs(run.run_id)]
    job = ctx.state.list_jobs(run.run_id)[0]
    assert job.result is not None and job.result.records == 12_000
    assert _lines(local, job.result.key) == [generated_row(i) for i in range(12_000)]


def test_a_paused_copy_remembers_that_its_cursor_row_is_stored(
        local: LocalBackup, onedb_emulator: OneDBEmulator) -> None:
    """nextId naming the page's last row, read again (inclusive start): the checkpoint
    saved by a finisher that paused says so, so the next invocation drops that row too."""
    onedb_emulator.add_generated_table(ENV_ID, APP, "events", 60_000)
    onedb_emulator.next_id_last_row = True
    onedb_emulator.latency = 0.02
    config = local.config(onedb_source(local, onedb_emulator), finish_budget_seconds=0.1)
    outcomes: list[str] = []

    class Counting:
        def dispatch(self, job_id: str) -> None:
            outcomes.append(finish(ctx, job_id))

    ctx = local.context(config, dispatcher=Counting())
    run, _ = start_run(ctx, idempotency_key="stored-cursor", trigger="test")
    run = drive(ctx, run)
    assert run.status.value == "succeeded", [j.error for j in ctx.state.list_jobs(run.run_id)]
    assert outcomes.count("paused") >= 2 and outcomes[-1] == "done"
    job = ctx.state.list_jobs(run.run_id)[0]
    assert job.result is not None and job.result.records == 60_000
    assert _lines(local, job.result.key) == [generated_row(i) for i in range(60_000)]


def test_a_start_read_as_exclusive_fails_rather_than_lose_a_row_at_every_page_edge(
        local: LocalBackup, onedb_emulator: OneDBEmulator) -> None:
    """nextId naming the next page's first row, sent back as an exclusive start (getMany's
    `ids`, "查询范围的起始 id", says not which): that row would be missing, the backup pass."""
    onedb_emulator.add_generated_table(ENV_ID, APP, "events", 12_000)
    onedb_emulator.start_exclusive = True
    ctx = local.context(local.config(onedb_source(local, onedb_emulator)))

    error = _failed_with(local, ctx)

    assert "exclusive" in error and "lost" in error and "u0000000625" in error


def test_no_secret_or_token_leaks(local: LocalBackup, onedb_emulator: OneDBEmulator) -> None:
    onedb_emulator.add_generated_table(ENV_ID, APP, "events", 7_000)
    onedb_emulator.inject("reject_token")
    onedb_emulator.inject("busy")
    logs = io.StringIO()
    configure_logging(logging.DEBUG, stream=logs)
    try:
        ctx = local.context(local.config(onedb_source(local, onedb_emulator)))
        run = backup_now(ctx)
        onedb_emulator.set_key_secret(ENV_ID, "key-2f9a41", "another-secret-11111")
        failed = backup_now(ctx, key="second")
    finally:
        logging.getLogger().handlers.clear()
    assert run.status.value == "succeeded" and failed.status.value == "failed"
    tokens = set(onedb_emulator.tokens)
    assert len(tokens) >= 3
    database = Path(local.state_url.removeprefix("sqlite:///"))
    state = "".join(p.read_bytes().decode("utf-8", "replace")
                    for p in database.parent.glob(database.name + "*"))  # with the WAL
    manifests = "".join(local.objects.read(o.key).decode() for o in local.objects.list("")
                        if o.key.endswith(".json"))
    for where, text in (("logs", logs.getvalue()), ("state", state), ("manifests", manifests)):
        assert KEY_SECRET not in text, where
        for token in tokens:
            assert token not in text, where


def test_reclaim_after_progress_does_not_burn_attempts(
    local: LocalBackup, onedb_emulator: OneDBEmulator
) -> None:
    """The poller hands out again a copy whose lease ran out; progress keeps the attempts."""
    onedb_emulator.add_generated_table(ENV_ID, APP, "events", 10)

    class Ignore:
        def dispatch(self, job_id: str) -> None:
            """The test plays the finisher itself."""

    ctx = local.context(local.config(onedb_source(local, onedb_emulator), copy_lease_seconds=60),
                        dispatcher=Ignore())
    run, _ = start_run(ctx, idempotency_key="reclaim", trigger="test")
    job = ctx.state.list_jobs(run.run_id)[0]
    assert job.status is JobStatus.READY  # no export job: ready at once
    stalled = ctx.state.save_job(job.moved_to(
        JobStatus.COPYING, lease_owner="gone", lease_until=job.created_at,
        next_check_at=job.created_at,
        checkpoint={"paged": {"key": "k", "steps": 4, "steps_at_claim": 1}}))
    assert stalled is not None
    poll(ctx)
    again = ctx.state.get_job(job.job_id)
    assert again is not None and again.status is JobStatus.READY and again.attempts == 0
    # The next finisher dies before saving anything (not even where it began): the
    # progress before excused one reclaim only, so this one is a failed try.
    assert again.checkpoint == {"paged": {"key": "k", "steps": 4, "steps_at_claim": 4}}
    stalled = ctx.state.save_job(again.moved_to(
        JobStatus.COPYING, lease_owner="gone", lease_until=job.created_at,
        next_check_at=job.created_at))
    assert stalled is not None
    poll(ctx)
    again = ctx.state.get_job(job.job_id)
    assert again is not None and again.status is JobStatus.READY and again.attempts == 1


def test_a_copy_slower_than_its_lease_is_not_handed_to_a_second_finisher(
    local: LocalBackup, onedb_emulator: OneDBEmulator
) -> None:
    """A part that takes longer than `timing.copy_lease_seconds` to read (a slow platform, a
    selective filter): the finisher keeps its lease while it reads, so the poller does not
    hand the job to another finisher beside it (a burnt try, and two finishers uploading
    the same part numbers into one upload)."""
    onedb_emulator.add_generated_table(ENV_ID, APP, "events", 60_000)  # ~6 MB: 2 parts
    onedb_emulator.latency = 0.4  # a 5 MiB part is ~11 pages: over 4 s, twice the lease
    handed: list[str] = []

    class Recording:
        def dispatch(self, job_id: str) -> None:
            handed.append(job_id)

    config = local.config(onedb_source(local, onedb_emulator), copy_lease_seconds=2)
    config = config.model_copy(update={"destination": config.destination.model_copy(
        update={"part_size_mb": 5})})
    ctx = local.context(config, dispatcher=Recording())
    run, _ = start_run(ctx, idempotency_key="slow", trigger="test")
    job = ctx.state.list_jobs(run.run_id)[0]
    handed.clear()
    outcome: list[str] = []
    finisher = threading.Thread(target=lambda: outcome.append(
        finish(local.context(config), job.job_id)))
    finisher.start()
    try:
        time.sleep(3.0)  # past the first lease, before the first part is saved
        poll(ctx)
    finally:
        finisher.join(timeout=120)
    assert handed == [] and outcome == ["done"]
    done = ctx.state.get_job(job.job_id)
    assert done is not None and done.attempts == 0 and done.result is not None
    assert _lines(local, done.result.key) == [generated_row(i) for i in range(60_000)]


def test_a_page_slower_than_the_lease_does_not_lose_it(
    local: LocalBackup, onedb_emulator: OneDBEmulator
) -> None:
    """The platform takes longer than the whole lease to answer one page: the finisher
    renews its lease while it waits for the page, not only once a page arrives, so the
    poller never finds the lease run out and never hands the job to a second finisher."""
    onedb_emulator.add_generated_table(ENV_ID, APP, "events", 10_000)  # two pages, one part
    onedb_emulator.latency = 3.0  # every call: one and a half leases
    handed: list[str] = []

    class Recording:
        def dispatch(self, job_id: str) -> None:
            handed.append(job_id)

    config = local.config(onedb_source(local, onedb_emulator), copy_lease_seconds=2)
    ctx = local.context(config, dispatcher=Recording())
    run, _ = start_run(ctx, idempotency_key="slow-page", trigger="test")
    job = ctx.state.list_jobs(run.run_id)[0]
    handed.clear()
    outcome: list[str] = []
    finisher = threading.Thread(target=lambda: outcome.append(
        finish(local.context(config), job.job_id)))
    finisher.start()
    try:
        while finisher.is_alive():  # the poller's ticks, while every page is outstanding
            time.sleep(0.5)
            poll(ctx)
    finally:
        finisher.join(timeout=120)
    assert handed == [] and outcome == ["done"]
    done = ctx.state.get_job(job.job_id)
    assert done is not None and done.attempts == 0 and done.result is not None
    assert _lines(local, done.result.key) == [generated_row(i) for i in range(10_000)]


def test_a_refusal_at_the_end_of_the_budget_keeps_the_rows_read(
    local: LocalBackup, onedb_emulator: OneDBEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The budget ends while the platform asks to wait (its Retry-After reaches past it): the
    rows read so far are parked like at any end of the budget, so the next invocation goes
    on from them. Else a rate-limited table that needs more than one budget per part (a
    selective filter) reads the same pages again in every invocation and never ends."""
    onedb_emulator.add_generated_table(ENV_ID, APP, "events", 20_000)  # 4 pages, one part
    onedb_emulator.rate_limit = 2  # two calls a second, then 429 with a Retry-After...
    monkeypatch.setattr("devkit.emulators.onedb.RETRY_AFTER", 60)  # ...past the budget
    ctx, outcomes = _finishing_at_once(local, onedb_emulator, finish_budget_seconds=20)
    run, _ = start_run(ctx, idempotency_key="refused-late", trigger="test")

    (job,) = ctx.state.list_jobs(run.run_id)
    assert outcomes == ["retry"] and job.attempts == 0 and "429" in (job.error or "")
    parked = (job.checkpoint or {})["paged"]["parked"]
    assert parked is not None and parked["rows"] == 10_000  # the two pages read
    assert job.progress_records == 10_000

    onedb_emulator.rate_limit = None
    run = drive(ctx, run)
    assert run.status.value == "succeeded" and outcomes[-1] == "done"
    assert _lines(local, _object_key(ctx, run.run_id, "events")) == [
        generated_row(i) for i in range(20_000)]
