"""MinApp answers in a shape other than the documented one fail naming the call, the field
and what to check, never as an internal error nor read as something else."""

from __future__ import annotations

import json
from typing import Any

import pytest

from devkit.emulators.minapp import MinAppEmulator
from devkit.sample_data import make_docs
from shared.domain.jobs import JobStatus, RunStatus
from tests.support.backup import LocalBackup, backup_now

TABLE = {"id": 1001, "name": "orders"}


@pytest.mark.parametrize("meta", [None, "next", [1], 5])
def test_a_table_list_whose_meta_is_not_an_object_fails_the_source(
        local: LocalBackup, minapp_emulator: MinAppEmulator, meta: Any) -> None:
    minapp_emulator.add_table(1001, make_docs(3), name="orders")
    minapp_emulator.inject("tables", 200, body={"objects": [TABLE], "meta": meta})
    ctx = local.context(local.config(local.minapp_source(minapp_emulator, tables="all")))

    run = backup_now(ctx)

    assert run.status is RunStatus.FAILED
    error = json.loads(local.objects.read(run.manifest_key or ""))["discovery"]["app"]["error"]
    assert "/oserve/v1.8/table/" in error and "meta" in error and "api_base" in error


@pytest.mark.parametrize("body", [
    {"objects": [], "meta": None},
    {"objects": [], "meta": {"total_count": "many"}},
    {"objects": "jobs", "meta": {"total_count": 0}},
    {"objects": [{"job_id": "j1", "created_at": "yesterday"}], "meta": {"total_count": 1}},
])
def test_an_export_job_list_in_another_shape_fails_the_job_naming_the_field(
        local: LocalBackup, minapp_emulator: MinAppEmulator, body: dict[str, Any]) -> None:
    """The job list is read when MinApp refuses a create with 400 (was another export
    started within the minute?)."""
    minapp_emulator.add_table(1001, make_docs(3))
    minapp_emulator.inject("export", 400, body={"error_msg": "请求失败"})
    minapp_emulator.inject("jobs", 200, body=body)
    ctx = local.context(local.config(local.minapp_source(minapp_emulator)))

    run = backup_now(ctx)

    (job,) = ctx.state.list_jobs(run.run_id)
    error = job.error or ""
    assert job.status is JobStatus.FAILED, error
    assert "/export/" in error and "api_base" in error and "internal error" not in error
    assert any(field in error for field in ("meta", "total_count", "objects", "created_at"))


@pytest.mark.parametrize("body", [
    {"access_token": "tok-1", "expires_in": "soon"},
    {"access_token": {"value": "tok-1"}, "expires_in": 3600},
])
def test_a_token_answer_in_another_shape_fails_naming_the_field(
        local: LocalBackup, minapp_emulator: MinAppEmulator, body: dict[str, Any]) -> None:
    minapp_emulator.add_table(1001, make_docs(3))
    minapp_emulator.inject("access_token", 200, body=body, times=10)
    ctx = local.context(local.config(local.minapp_source(minapp_emulator)))

    run = backup_now(ctx)

    (job,) = ctx.state.list_jobs(run.run_id)
    error = job.error or ""
    assert job.status is JobStatus.FAILED, error
    assert "/api/oauth2/access_token/" in error and "api_base" in error
    assert ("expires_in" in error or "access_token" in error) and "tok-1" not in error
