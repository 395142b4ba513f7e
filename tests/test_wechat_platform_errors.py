"""Token caching and refresh, busy retries, and errcodes that must fail loudly."""

from __future__ import annotations

import logging
from datetime import timedelta

import pytest

from devkit.compare import assert_object_equals_docs
from devkit.emulators.wechat import MISSING
from devkit.sample_data import make_docs
from shared.domain.errors import Fatal, Retryable, RetryLater
from shared.domain.jobs import JobStatus, RunStatus
from shared.platforms.wechat import platform as wechat_platform
from shared.platforms.wechat.api import InvalidRequest, Scope, classify
from tests.support.backup import ENV_ID, LocalBackup, backup_now
from tests.support.minapp import backup_jumping

TOKEN = "/cgi-bin/stable_token"


def test_token_is_cached_and_shared_across_invocations(local: LocalBackup) -> None:
    local.seed("orders", make_docs(3))
    config = local.config()

    backup_now(local.context(config), key="first")
    backup_now(local.context(config), key="second")  # a new "invocation": fresh objects

    assert local.emulator.calls[TOKEN] == 1


@pytest.mark.parametrize("fault", ["expire_tokens", "invalidate_tokens"])
def test_rejected_token_is_refreshed_once(local: LocalBackup, fault: str) -> None:
    local.seed("orders", make_docs(3))
    config = local.config()
    backup_now(local.context(config), key="first")
    getattr(local.emulator, fault)()

    run = backup_now(local.context(config), key="second")

    assert run.status is RunStatus.SUCCEEDED
    assert local.emulator.calls[TOKEN] == 2


def test_token_rejected_twice_fails_with_a_clear_message(local: LocalBackup) -> None:
    """A renewed token that is rejected too fails at once. legacy_token issues a new token at
    each fetch; stable_token hands back the same one, which is waited for instead (its tests
    are in test_wechat_tokens.py)."""
    local.seed("orders", make_docs(3))
    local.emulator.inject_errcode("/tcb/databasemigrateexport", 40014, times=10, errmsg="invalid credential")
    ctx = local.context(local.config(local.wechat_source(token="legacy_token")))

    run = backup_now(ctx)

    (job,) = ctx.state.list_jobs(run.run_id)
    assert job.status is JobStatus.FAILED
    assert "40014" in (job.error or "") and "freshly issued token" in (job.error or "")
    assert local.emulator.calls["/tcb/databasemigrateexport"] == 2


def test_busy_errcode_is_retried_with_backoff(local: LocalBackup) -> None:
    docs = make_docs(7)
    local.seed("orders", docs)
    local.emulator.inject_errcode("/tcb/databasemigrateexport", -1, times=2)
    ctx = local.context(local.config())

    run = backup_now(ctx)

    assert run.status is RunStatus.SUCCEEDED
    assert local.emulator.calls["/tcb/databasemigrateexport"] == 3
    assert len(local.emulator.export_jobs()) == 1


def test_an_export_start_whose_answer_was_lost_is_started_again_and_says_so(
        local: LocalBackup, caplog: pytest.LogCaptureFixture) -> None:
    """WeChat carried the start out, but its answer never came (the connection closed): the
    start is tried again, which WeChat carries out a second time. The backup is taken from
    the export whose id came back, and the retry is logged, naming the call and why."""
    docs = make_docs(9)
    local.seed("orders", docs)
    local.emulator.lose_answers("/tcb/databasemigrateexport")
    ctx = local.context(local.config())

    with caplog.at_level(logging.WARNING, logger="shared.retry"):
        run = backup_now(ctx)

    assert run.status is RunStatus.SUCCEEDED
    exports = local.emulator.export_jobs()
    assert [e["collection"] for e in exports] == ["orders", "orders"]
    (job,) = ctx.state.list_jobs(run.run_id)
    assert job.platform_job_id == str(exports[1]["job_id"]) and job.result is not None
    assert_object_equals_docs(local.objects.read(job.result.key), docs, "json")
    (retry,) = [r for r in caplog.records if r.name == "shared.retry"]
    assert retry.getMessage() == "transient failure; trying again"
    assert "/tcb/databasemigrateexport" in retry.__dict__["reason"]
    assert retry.__dict__["reason"].endswith("RemoteProtocolError")


@pytest.mark.parametrize("errcode", [-501001, -501002])
def test_transient_cloud_errors_are_retried_not_fatal(local: LocalBackup, errcode: int) -> None:
    local.seed("orders", make_docs(4))
    local.emulator.inject_errcode("/tcb/databasemigrateexport", errcode, times=2, errmsg="cloud")
    ctx = local.context(local.config())

    run = backup_now(ctx)

    assert run.status is RunStatus.SUCCEEDED
    assert local.emulator.calls["/tcb/databasemigrateexport"] == 3


@pytest.mark.parametrize(
    ("errcode", "kind", "words"),
    [
        (-501016, RetryLater, "quota, concurrency limit or resource unavailable"),
        (-501018, RetryLater, "quota, concurrency limit or resource unavailable"),
        (-502011, Retryable, "platform busy"),
        (-501005, Fatal, "check the source's env id"),
        (-502003, Fatal, "permission sets"),
        (-501017, Fatal, "no storage left"),
        (-502002, InvalidRequest, "rejected as invalid"),
    ],
)
def test_cloud_errcodes_are_classified_by_meaning(errcode: int, kind: type, words: str) -> None:
    scope = Scope(source="shop", appid="wx1", env="env-1", credentials="appid", allow_list="x")

    error = classify("/tcb/databasemigrateexport", errcode, "msg", scope)

    assert type(error) is kind and words in str(error), error


def test_busy_beyond_in_call_retries_is_retried_by_later_polls(local: LocalBackup) -> None:
    local.seed("orders", make_docs(7))
    local.emulator.inject_errcode("/tcb/databasemigratequeryinfo", -1000, times=4)
    ctx = local.context(local.config())

    run = backup_now(ctx)

    assert run.status is RunStatus.SUCCEEDED


@pytest.mark.parametrize(
    ("errcode", "words"),
    [
        (85088, "cloud development is not enabled"),
        (40164, "fixed egress IP"),
        (40097, "rejected as invalid"),
    ],
)
def test_configuration_errors_fail_without_retry(local: LocalBackup, errcode: int, words: str) -> None:
    local.seed("orders", make_docs(3))
    local.emulator.inject_errcode("/tcb/databasemigrateexport", errcode, times=10, errmsg="x")
    ctx = local.context(local.config())

    run = backup_now(ctx)

    (job,) = ctx.state.list_jobs(run.run_id)
    assert job.status is JobStatus.FAILED and words in (job.error or "")
    assert local.emulator.calls["/tcb/databasemigrateexport"] == 1


def test_missing_collection_says_how_to_fix(local: LocalBackup) -> None:
    ctx = local.context(local.config(local.wechat_source(collections=["nope"])))

    run = backup_now(ctx)

    (job,) = ctx.state.list_jobs(run.run_id)
    assert job.status is JobStatus.FAILED
    assert "does not exist" in (job.error or "") and "remove it" in (job.error or "")


def test_wrong_app_secret_says_so(local: LocalBackup) -> None:
    local.seed("orders", make_docs(3))
    local.environ["WECHAT_SECRET"] = "not-the-secret"
    ctx = local.context(local.config())

    run = backup_now(ctx)

    (job,) = ctx.state.list_jobs(run.run_id)
    assert job.status is JobStatus.FAILED and "appid or app secret" in (job.error or "")
    assert "not-the-secret" not in (job.error or "")


def test_export_past_its_deadline_is_failed(local: LocalBackup) -> None:
    local.seed("orders", make_docs(3))
    local.emulator.polls_until_ready = 10_000
    ctx = local.context(local.config(export_deadline_minutes=0.01))

    run = backup_now(ctx)

    (job,) = ctx.state.list_jobs(run.run_id)
    assert job.status is JobStatus.FAILED
    assert "did not finish within" in (job.error or "") and str(job.platform_job_id) in (job.error or "")


def test_an_empty_export_whose_success_lacks_record_success_is_not_a_verified_backup(
    local: LocalBackup,
) -> None:
    """databasemigratequeryinfo documents record_success on every answer; a success without
    it is not "0 records": an empty file must not pass as a verified empty backup."""
    local.seed("orders", [])
    local.emulator.reshape_export_success(ENV_ID, "orders", record_success=MISSING)
    ctx = local.context(local.config())

    run = backup_now(ctx)

    (job,) = ctx.state.list_jobs(run.run_id)
    assert run.status is RunStatus.FAILED and job.status is JobStatus.FAILED
    assert "record_success" in (job.error or "") and "check" in (job.error or "")


@pytest.mark.parametrize(("field", "value"), [
    *(("record_success", value) for value in (MISSING, None, "", "many", 2.5, True)),
    ("record_success", "²"), ("record_fail", "²"),  # str.isdigit() holds, int() refuses
])
def test_a_success_without_an_integer_record_count_fails_naming_the_field(
    local: LocalBackup, field: str, value: object,
) -> None:
    local.seed("orders", make_docs(3))
    local.emulator.reshape_export_success(ENV_ID, "orders", **{field: value})
    ctx = local.context(local.config())

    run = backup_now(ctx)

    (job,) = ctx.state.list_jobs(run.run_id)
    error = job.error or ""
    assert job.status is JobStatus.FAILED
    assert field in error and "api_base" in error
    assert "mismatch" not in error and "internal error" not in error


@pytest.mark.parametrize("value", [MISSING, None, 3, ""])
def test_a_status_answer_without_a_status_fails_naming_the_field(
    local: LocalBackup, value: object,
) -> None:
    """databasemigratequeryinfo answers `status`, a string (Return parameters of
    seeds/wechat-databasemigratequeryinfo.en.txt): an answer without one is not a job
    still running, and says what to check."""
    local.seed("orders", make_docs(3))
    local.emulator.reshape_export_success(ENV_ID, "orders", status=value)
    ctx = local.context(local.config())

    run = backup_now(ctx)

    (job,) = ctx.state.list_jobs(run.run_id)
    error = job.error or ""
    assert job.status is JobStatus.FAILED, error
    assert "/tcb/databasemigratequeryinfo" in error and "status" in error and "api_base" in error


def test_an_undocumented_export_status_waits_naming_it_then_goes_on(local: LocalBackup) -> None:
    """databaseMigrateQueryInfo documents waiting, migrating, success and fail; another status
    may be a new in-between state, so the job waits without spending its tries, as MinApp's
    jobs do (UNDOCUMENTED_STATUS_WAIT there)."""
    docs = make_docs(3)
    local.seed("orders", docs)
    local.emulator.answer_with("/tcb/databasemigratequeryinfo",
                               {"errcode": 0, "errmsg": "ok", "status": "queued"},
                               times=6)  # more checks than max_attempts (3)
    ctx = local.context(local.config())

    run = backup_jumping(ctx)

    (job,) = ctx.state.list_jobs(run.run_id)
    assert run.status is RunStatus.SUCCEEDED, job.error
    assert job.result is not None
    assert_object_equals_docs(local.objects.read(job.result.key), docs, "json")


def test_an_undocumented_export_status_waits_only_a_bounded_time(
    local: LocalBackup, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(wechat_platform, "UNDOCUMENTED_STATUS_WAIT", timedelta(seconds=1),
                        raising=False)
    local.seed("orders", make_docs(3))
    local.emulator.reshape_export_success(ENV_ID, "orders", status="queued")
    ctx = local.context(local.config())

    run = backup_jumping(ctx)  # the pipeline's waits jumped; the bound runs on real time

    (job,) = ctx.state.list_jobs(run.run_id)
    error = job.error or ""
    assert job.status is JobStatus.FAILED
    assert "'queued'" in error and "api_base" in error and "still so after" in error
    assert "waiting, migrating, success" in error and "did not finish within" not in error


@pytest.mark.parametrize("answer", [{}, {"job_id": None}, {"job_id": ""}, {"job_id": "abc"},
                                    {"job_id": True}, {"job_id": 1.5}, {"job_id": [1]},
                                    {"job_id": "²"}])
def test_an_export_start_without_a_numeric_job_id_fails_naming_the_field(
    local: LocalBackup, answer: dict[str, object],
) -> None:
    """databasemigrateexport documents job_id as a number; anything else is not an export
    this product can follow, and says where to look instead of retrying or crashing."""
    local.seed("orders", make_docs(3))
    local.emulator.answer_with("/tcb/databasemigrateexport", {"errcode": 0, "errmsg": "ok", **answer})
    ctx = local.context(local.config())

    run = backup_now(ctx)

    (job,) = ctx.state.list_jobs(run.run_id)
    error = job.error or ""
    assert job.status is JobStatus.FAILED, error
    assert "/tcb/databasemigrateexport" in error and "job_id" in error and "api_base" in error
    assert ("without job_id" if "job_id" not in answer else repr(answer["job_id"])) in error
    assert "internal error" not in error


@pytest.mark.parametrize("value", [MISSING, None, "", 42, ["https://x"], "file:///etc/passwd",
                                   "ftp://127.0.0.1/export.json"])
def test_a_success_without_a_usable_file_url_fails_naming_the_field(
    local: LocalBackup, value: object,
) -> None:
    local.seed("orders", make_docs(3))
    local.emulator.reshape_export_success(ENV_ID, "orders", file_url=value)
    ctx = local.context(local.config())

    run = backup_now(ctx)

    (job,) = ctx.state.list_jobs(run.run_id)
    error = job.error or ""
    assert job.status is JobStatus.FAILED, error
    assert "/tcb/databasemigratequeryinfo" in error and "file_url" in error and "api_base" in error
    assert "internal error" not in error and "https://x" not in error  # a link is never shown
