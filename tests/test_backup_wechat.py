"""End to end over real HTTP: WeChat emulator -> pipeline -> real COS SDK -> S3 server."""

from __future__ import annotations

import json
import re
import socket
import time

import pytest

from devkit.compare import assert_object_equals_docs
from devkit.sample_data import make_docs
from shared.domain.errors import Retryable
from shared.domain.jobs import JobStatus, RunStatus
from shared.domain.layout import data_key
from shared.platforms.wechat.platform import WeChatClient
from tests.support.backup import ENV_ID, LocalBackup, backup_now


@pytest.mark.parametrize("file_type", ["json", "csv"])
def test_every_object_equals_its_collection(local: LocalBackup, file_type: str) -> None:
    collections = {
        "orders": make_docs(300, seed=1),
        "用户 users/../x": make_docs(40, seed=2, prefix="u"),
        "empty": [],
    }
    for name, docs in collections.items():
        local.seed(name, docs)
    config = local.config(local.wechat_source(collections=list(collections), file_type=file_type))
    ctx = local.context(config)

    run = backup_now(ctx)

    assert run.status is RunStatus.SUCCEEDED
    jobs = {j.collection: j for j in ctx.state.list_jobs(run.run_id)}
    for name, docs in collections.items():
        job = jobs[name]
        assert job.status is JobStatus.DONE and job.result is not None
        assert job.result.key.startswith(f"{config.destination.prefix}/runs/{run.run_id}/shop/")
        assert "/../" not in job.result.key
        data = local.objects.read(job.result.key)
        assert_object_equals_docs(data, docs, file_type)
        manifest = json.loads(local.objects.read(job.result.manifest_key))
        assert manifest["collection"] == name
        assert manifest["records"] == len(docs) == job.result.records
        assert manifest["bytes"] == len(data)
        assert manifest["run_id"] == run.run_id
        assert manifest["platform_job_id"] == job.platform_job_id
    run_manifest = json.loads(local.objects.read(run.manifest_key or ""))
    assert run_manifest["status"] == "succeeded"
    assert {j["collection"] for j in run_manifest["jobs"]} == set(collections)


@pytest.mark.parametrize("file_type", ["json", "csv"])
def test_large_collection_is_copied_exactly(local: LocalBackup, file_type: str) -> None:
    docs = make_docs(200_000, seed=3)
    local.seed("orders", docs)
    ctx = local.context(local.config(local.wechat_source(file_type=file_type)))

    run = backup_now(ctx)

    (job,) = ctx.state.list_jobs(run.run_id)
    assert job.status is JobStatus.DONE and job.result is not None
    assert job.result.records == 200_000
    assert job.result.objects[0].upload_parts > 1  # really went through a multipart upload
    assert_object_equals_docs(local.objects.read(job.result.key), docs, file_type)


def test_failed_export_fails_only_its_job(local: LocalBackup) -> None:
    local.seed("orders", make_docs(10))
    local.seed("users", make_docs(5, prefix="u"))
    local.emulator.fail_export(ENV_ID, "users", "导出失败: collection locked")
    ctx = local.context(local.config(local.wechat_source(collections=["orders", "users"])))

    run = backup_now(ctx)

    assert run.status is RunStatus.FAILED
    jobs = {j.collection: j for j in ctx.state.list_jobs(run.run_id)}
    assert jobs["orders"].status is JobStatus.DONE
    assert jobs["users"].status is JobStatus.FAILED
    assert "导出失败: collection locked" in (jobs["users"].error or "")
    manifest = json.loads(local.objects.read(run.manifest_key or ""))
    failed = [j for j in manifest["jobs"] if j["status"] == "failed"]
    assert failed[0]["collection"] == "users" and "collection locked" in failed[0]["error"]


def test_record_count_mismatch_fails_and_stores_nothing(local: LocalBackup) -> None:
    local.seed("orders", make_docs(50))
    local.emulator.misreport_count(ENV_ID, "orders", 1)
    config = local.config()
    ctx = local.context(config)

    run = backup_now(ctx)

    (job,) = ctx.state.list_jobs(run.run_id)
    assert job.status is JobStatus.FAILED
    assert "record count mismatch" in (job.error or "") and "51" in (job.error or "")
    key = data_key(config.destination.prefix, run.run_id, "shop", "orders", "json")
    assert local.objects.head(key) is None


def test_truncated_download_is_retried(local: LocalBackup) -> None:
    docs = make_docs(2000)
    local.seed("orders", docs)
    local.emulator.truncate_downloads(1)
    ctx = local.context(local.config())

    run = backup_now(ctx)

    (job,) = ctx.state.list_jobs(run.run_id)
    assert job.status is JobStatus.DONE and job.result is not None
    assert_object_equals_docs(local.objects.read(job.result.key), docs, "json")
    assert local.emulator.calls["/_files"] >= 2


def test_download_cut_every_time_is_never_stored_as_done(local: LocalBackup) -> None:
    local.seed("orders", make_docs(2000))
    local.emulator.truncate_downloads(100)
    config = local.config()
    ctx = local.context(config)

    run = backup_now(ctx)

    (job,) = ctx.state.list_jobs(run.run_id)
    assert job.status is JobStatus.FAILED
    assert "cut off" in (job.error or "")
    # counted over the whole stream, not per handed-on chunk (a short file is one chunk)
    said = re.search(r"cut off after (\d+) bytes", job.error or "")
    assert said is not None and int(said.group(1)) > 0, job.error
    assert local.objects.list(config.destination.prefix + "/runs/" + run.run_id + "/shop") == []


def test_expired_download_link_is_replaced(local: LocalBackup) -> None:
    docs = make_docs(100)
    local.seed("orders", docs)
    local.emulator.expire_next_links(1)
    ctx = local.context(local.config())

    run = backup_now(ctx)

    (job,) = ctx.state.list_jobs(run.run_id)
    assert job.status is JobStatus.DONE and job.result is not None
    assert_object_equals_docs(local.objects.read(job.result.key), docs, "json")
    assert local.emulator.download_statuses.count(403) == 1


def test_a_download_host_that_cannot_be_reached_is_a_named_transient_failure(
        local: LocalBackup) -> None:
    """file_url is WeChat's (its storage's host): a connection to it that fails is retried
    as a download that failed, named so, not reported as an internal error with a
    traceback, and the signed link is not in the message."""
    local.seed("orders", make_docs(5))
    provider = local.context(local.config()).platforms.get("shop")
    assert isinstance(provider, WeChatClient)
    job = provider.start("orders", "run-1.shop.abc")
    deadline = time.monotonic() + 10
    while provider.check("orders", job).state != "ready":
        assert time.monotonic() < deadline
        time.sleep(0.02)
    with socket.socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        local.emulator.link_base = f"http://127.0.0.1:{closed.getsockname()[1]}"

    with pytest.raises(Retryable, match=f"download of WeChat export {job}") as failed:
        b"".join(provider.open("orders", job))
    assert "q-sign" not in str(failed.value) and "127.0.0.1" not in str(failed.value)


def test_a_link_expired_twice_says_so(local: LocalBackup) -> None:
    local.seed("orders", make_docs(10))
    local.emulator.expire_next_links(100)
    ctx = local.context(local.config())

    run = backup_now(ctx)

    (job,) = ctx.state.list_jobs(run.run_id)
    assert job.status is JobStatus.FAILED
    assert "expired download link twice" in (job.error or ""), job.error


def test_the_manifest_records_the_objects_crc64_as_cos_reports_it(local: LocalBackup) -> None:
    local.seed("orders", make_docs(50))
    ctx = local.context(local.config())

    run = backup_now(ctx)

    (job,) = ctx.state.list_jobs(run.run_id)
    assert job.result is not None
    manifest = json.loads(local.objects.read(job.result.manifest_key))
    stored = local.objects.head(job.result.key)
    assert stored is not None and stored.crc64 is not None
    assert manifest["objects"][0]["crc64"] == stored.crc64
