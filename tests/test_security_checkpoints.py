"""What an export copy takes on trust: a checkpoint's "already copied" parts only at the
key they belong at and still in the bucket at their size; and no streaming copy runs
past the invocation's time. WeChat emulator, real COS SDK against the S3 server."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from typing import Any

import orjson

from devkit.compare import assert_object_equals_docs
from devkit.emulators.onedb import OneDBEmulator, generated_row
from devkit.sample_data import make_docs
from shared.domain.jobs import Job, JobStatus
from shared.domain.layout import data_key
from shared.service.context import Context
from shared.service.finish import finish
from shared.service.poll import poll
from shared.service.start import start_run
from tests.fakes import RecordingDispatcher
from tests.support.backup import ENV_ID, LocalBackup
from tests.support.hostile import Hostile, drip, every_path
from tests.support.onedb import APP, onedb_source
from tests.support.onedb import ENV_ID as ONEDB_ENV


def ready_job(local: LocalBackup, docs: int = 40) -> tuple[Context, Job]:
    """A run whose one job is exported and ready, not yet copied."""
    local.seed("orders", make_docs(docs, seed=5))
    dispatcher = RecordingDispatcher()
    ctx = local.context(local.config(), dispatcher=dispatcher)
    start_run(ctx, idempotency_key="t", trigger="test")
    deadline = time.monotonic() + 30
    while not dispatcher.dispatched and time.monotonic() < deadline:
        poll(ctx)
        time.sleep(0.01)
    [job_id] = dispatcher.dispatched
    job = ctx.state.get_job(job_id)
    assert job is not None and job.status is JobStatus.READY
    return ctx, job


def with_checkpoint(ctx: Context, job: Job, copied: list[dict[str, Any]]) -> Job:
    saved = ctx.state.save_job(job.model_copy(update={"checkpoint": {"copied": copied}}))
    assert saved is not None
    return saved


def expected_key(ctx: Context, job: Job) -> str:
    return data_key(ctx.config.destination.prefix, job.run_id, job.source, job.collection, "json")


def test_a_part_recorded_at_another_key_is_copied_again(local: LocalBackup) -> None:
    ctx, job = ready_job(local)
    forged = {"key": "baas-backup/runs/elsewhere/shop/orders.jsonl", "bytes": 10,
              "sha256": "0" * 64, "records": 40}
    job = with_checkpoint(ctx, job, [forged])

    assert finish(ctx, job.job_id) == "done"

    done = ctx.state.get_job(job.job_id)
    assert done is not None and done.result is not None
    assert [o.key for o in done.result.objects] == [expected_key(ctx, job)]
    assert done.result.objects[0].sha256 != "0" * 64
    assert_object_equals_docs(local.objects.read(expected_key(ctx, job)),
                              local.emulator.docs(ENV_ID, "orders"), "json")


def test_a_part_at_its_key_with_another_size_is_copied_again(local: LocalBackup) -> None:
    ctx, job = ready_job(local)
    key = expected_key(ctx, job)
    local.objects.put_stream(key, [b'{"planted": true}\n'], content_type="text/plain")
    job = with_checkpoint(ctx, job, [{"key": key, "bytes": 4096, "sha256": "1" * 64,
                                      "records": 40}])

    assert finish(ctx, job.job_id) == "done"

    assert_object_equals_docs(local.objects.read(key), local.emulator.docs(ENV_ID, "orders"), "json")


def test_a_part_that_holds_up_is_kept_without_downloading_again(local: LocalBackup) -> None:
    ctx, job = ready_job(local)
    assert finish(ctx, job.job_id) == "done"
    done = ctx.state.get_job(job.job_id)
    assert done is not None and done.result is not None
    again = ctx.state.save_job(done.model_copy(update={
        "status": JobStatus.READY, "result": None, "next_check_at": ctx.clock(),
        "checkpoint": {"copied": [o.model_dump() for o in done.result.objects]}}))
    assert again is not None
    downloads = local.emulator.calls["/_files"]

    assert finish(ctx, job.job_id) == "done"

    assert local.emulator.calls["/_files"] == downloads
    final = ctx.state.get_job(job.job_id)
    assert final is not None and final.result == done.result


def test_a_slow_download_stops_at_the_invocations_time_limit(
        local: LocalBackup, hostile: Hostile) -> None:
    ctx, job = ready_job(local, docs=3)
    local.emulator.link_base = hostile.base
    body = b"".join(b'{"_id": "%d", "n": 1}\n' % i for i in range(3))
    hostile.answers = every_path(drip(body, every=0.2))  # ~12 s for the whole file
    started = time.monotonic()
    limited = dataclasses.replace(ctx, stop_by=started + 2.0)

    outcome = finish(limited, job.job_id)

    elapsed = time.monotonic() - started
    assert outcome == "retry"
    assert elapsed < 5, f"the copy ran {elapsed:.1f} s against a 2 s limit"
    after = ctx.state.get_job(job.job_id)
    assert after is not None and after.status is JobStatus.READY
    assert "time ran out" in (after.error or "")
    assert local.objects.head(expected_key(ctx, job)) is None



def test_a_slow_download_stops_before_its_copy_lease_runs_out(
        local: LocalBackup, hostile: Hostile) -> None:
    """Once the lease runs out the poller hands the job to a second finisher: the first
    must have stopped by then, whatever SCF's time limit (here: none) would allow."""
    ctx, job = ready_job(local, docs=3)
    local.emulator.link_base = hostile.base
    body = b"".join(b'{"_id": "%d", "n": 1}\n' % i for i in range(3))
    hostile.answers = every_path(drip(body, every=0.2))  # ~12 s for the whole file
    timing = ctx.config.timing.model_copy(update={"copy_lease_seconds": 3.0})
    leased = dataclasses.replace(ctx, config=ctx.config.model_copy(update={"timing": timing}))
    started = time.monotonic()

    outcome = finish(leased, job.job_id)

    elapsed = time.monotonic() - started
    assert elapsed < 3.0, f"the copy ran {elapsed:.1f} s under a 3 s lease"
    assert outcome == "retry"
    after = ctx.state.get_job(job.job_id)
    assert after is not None and after.status is JobStatus.READY
    assert local.objects.head(expected_key(ctx, job)) is None


def test_paged_rows_parked_at_another_key_are_read_again_not_taken(
        local: LocalBackup, onedb_emulator: OneDBEmulator) -> None:
    """A checkpoint naming some other object (with its true size and MD5) as the parked
    rows: the rows are read from OneDB again, never taken from that object."""
    onedb_emulator.add_generated_table(ONEDB_ENV, APP, "events", 50)
    dispatcher = RecordingDispatcher()
    ctx = local.context(local.config(onedb_source(local, onedb_emulator)), dispatcher=dispatcher)
    start_run(ctx, idempotency_key="p", trigger="test")
    [job_id] = dispatcher.dispatched
    job = ctx.state.get_job(job_id)
    assert job is not None
    planted = b'{"id": "planted", "note": "not from the table"}\n'
    local.objects.put_stream("elsewhere/planted.bin", [planted], content_type="text/plain")
    key = data_key(ctx.config.destination.prefix, job.run_id, job.source, job.collection, "json")
    parked = {"key": "elsewhere/planted.bin", "bytes": len(planted), "rows": 1,
              "md5": hashlib.md5(planted, usedforsecurity=False).hexdigest(), "cursor": None}
    assert ctx.state.save_job(job.model_copy(update={"checkpoint": {"paged": {
        "key": key, "parked": parked}}})) is not None

    assert finish(ctx, job_id) == "done"

    lines = local.objects.read(key).splitlines()
    assert len(lines) == 50 and b"planted" not in b"".join(lines)
    assert [json.loads(line) for line in lines] == [
        json.loads(orjson.dumps(generated_row(i))) for i in range(50)]


def test_a_part_of_the_right_size_whose_crc64_differs_is_copied_again(local: LocalBackup) -> None:
    ctx, job = ready_job(local)
    assert finish(ctx, job.job_id) == "done"
    done = ctx.state.get_job(job.job_id)
    assert done is not None and done.result is not None and done.result.objects[0].crc64
    key = done.result.key
    original = local.objects.read(key)
    swapped = original.replace(b"d", b"e", 1)  # same size, other content
    assert len(swapped) == len(original) and swapped != original
    local.objects.put_stream(key, [swapped], content_type="text/plain")
    again = ctx.state.save_job(done.model_copy(update={
        "status": JobStatus.READY, "result": None, "next_check_at": ctx.clock(),
        "checkpoint": {"copied": [o.model_dump() for o in done.result.objects]}}))
    assert again is not None
    downloads = local.emulator.calls["/_files"]

    assert finish(ctx, job.job_id) == "done"

    assert local.emulator.calls["/_files"] > downloads  # not trusted: copied again
    assert local.objects.read(key) == original
