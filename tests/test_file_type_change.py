"""A source's `file_type` changed in the config (a redeploy) while a run's exports are in
flight: the copy follows the type each export was started with, end to end over real
HTTP (emulators -> pipeline -> real COS SDK -> S3 server, SQLite state)."""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest

from devkit.compare import assert_object_equals_docs
from devkit.emulators import minapp
from devkit.emulators.minapp import MinAppEmulator
from devkit.sample_data import make_docs
from shared.domain.jobs import Job, JobStatus, RunStatus
from shared.domain.layout import data_key
from shared.service.start import start_run
from tests.support.backup import LocalBackup, drive
from tests.support.minapp import assert_export_equals_records

OTHER = {"json": "csv", "csv": "json"}


def _copied_after_switch(local: LocalBackup, started: dict[str, Any],
                         switched: dict[str, Any]) -> Job:
    """A run started with the source `started`, then driven to its end after a redeploy
    with the source `switched` (the other file_type): its one job, which succeeded."""
    before = local.context(local.config(started))
    run, _ = start_run(before, idempotency_key="k", trigger="test")
    (job,) = before.state.list_jobs(run.run_id)
    assert job.status is JobStatus.EXPORTING  # its export started with the old type

    after = local.context(local.config(switched))
    closed = drive(after, run)

    (job,) = after.state.list_jobs(run.run_id)
    assert closed.status is RunStatus.SUCCEEDED, job.error
    assert job.result is not None
    return job


def _stored_as(local: LocalBackup, job: Job, collection: str, file_type: str) -> None:
    """The job's object is named, and its manifest says it is, of `file_type`."""
    assert job.result is not None
    assert job.result.key == data_key(local.config().destination.prefix, job.run_id,
                                      job.source, collection, file_type)
    manifest = json.loads(local.objects.read(job.result.manifest_key))
    assert manifest["file_type"] == file_type


@pytest.mark.parametrize("started", ["json", "csv"])
def test_wechat_copy_follows_the_type_its_export_was_started_with(
        local: LocalBackup, started: str) -> None:
    docs = make_docs(120, seed=5)
    local.seed("orders", docs)
    job = _copied_after_switch(local, local.wechat_source(file_type=started),
                               local.wechat_source(file_type=OTHER[started]))

    assert job.result is not None and job.result.records == len(docs)
    _stored_as(local, job, "orders", started)
    assert_object_equals_docs(local.objects.read(job.result.key), docs, started)


def _records(count: int) -> list[dict[str, Any]]:
    return [{k: v for k, v in doc.items() if k != "_id"} for doc in make_docs(count, seed=9)]


@pytest.mark.parametrize("started", ["json", "csv"])
def test_minapp_copy_follows_the_type_its_export_was_started_with(
        local: LocalBackup, minapp_emulator: MinAppEmulator, started: str) -> None:
    minapp_emulator.add_table(1001, _records(80))
    job = _copied_after_switch(local, local.minapp_source(minapp_emulator, file_type=started),
                               local.minapp_source(minapp_emulator, file_type=OTHER[started]))

    assert job.result is not None and job.result.records == 80
    _stored_as(local, job, "1001", started)
    assert_export_equals_records(local.objects.read(job.result.key),
                                 minapp_emulator.records(1001), started)


def test_a_job_recorded_before_the_field_counts_its_file_as_configured() -> None:
    recorded = {"job_id": "r.shop.x", "run_id": "r", "source": "shop", "collection": "orders",
                "status": "ready", "next_check_at": "2026-01-01T00:00:00Z",
                "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z",
                "platform_job_id": "7"}
    job = Job.model_validate(recorded)
    assert job.export_file_type("csv") == "csv"
    assert job.model_copy(update={"file_type": "json"}).export_file_type("csv") == "json"


@pytest.mark.parametrize("started", ["json", "csv"])
def test_minapp_split_parts_started_after_the_change_keep_the_first_parts_type(
        local: LocalBackup, minapp_emulator: MinAppEmulator, started: str) -> None:
    minapp_emulator.max_export_rows = 1000
    minapp_emulator.job_window = 0.4
    minapp_emulator.add_table(1001, _records(1100))
    table = {"id": 1001, "split": {"key": "created_at", "rows_per_part": 400}}

    def source(file_type: str) -> dict[str, Any]:
        return local.minapp_source(minapp_emulator, tables=[table], file_type=file_type,
                                   max_export_rows=1000, export_interval_seconds=0.4)

    job = _copied_after_switch(local, source(started), source(OTHER[started]))

    assert job.result is not None and len(job.result.objects) == 3
    assert {j["file_type"] for j in minapp_emulator.export_jobs(1001)} == {started}
    everything, start = minapp_emulator.records(1001), 0
    for stored in job.result.objects:
        piece = everything[start:start + stored.records]
        assert_export_equals_records(local.objects.read(stored.key), piece, started)
        start += stored.records
    assert start == 1100


def test_minapp_part_whose_create_answer_was_lost_after_the_change_is_adopted_not_made_twice(
        local: LocalBackup, minapp_emulator: MinAppEmulator,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A lost answer is matched against the table's jobs by the type the create asked for
    (the first part's), not the type the config has now, nor taken from another part."""
    # ids in creation order: part 1's job, listed in the same second (created_at is whole
    # seconds), sorts before the one part 2's lost create made
    numbers = itertools.count(1)
    monkeypatch.setattr(minapp, "_random_id", lambda: f"job{next(numbers):029d}")
    minapp_emulator.max_export_rows = 1000
    minapp_emulator.job_window = 0.0  # a second create would be taken: only the client can refuse it
    minapp_emulator.add_table(1001, _records(900))
    table = {"id": 1001, "split": {"key": "created_at", "rows_per_part": 400}}

    def source(file_type: str) -> dict[str, Any]:
        return local.minapp_source(minapp_emulator, tables=[table], file_type=file_type,
                                   max_export_rows=1000, export_interval_seconds=0.05)

    before = local.context(local.config(source("json")))
    run, _ = start_run(before, idempotency_key="k", trigger="test")  # part 1 of 3 started
    minapp_emulator.lose_create_answers(1)  # part 2's create: made, its answer lost
    after = local.context(local.config(source("csv")))
    closed = drive(after, run)

    (job,) = after.state.list_jobs(run.run_id)
    assert closed.status is RunStatus.SUCCEEDED, job.error
    made = minapp_emulator.export_jobs(1001)
    assert len(made) == 3 and {j["file_type"] for j in made} == {"json"}
    assert job.result is not None and len(job.result.objects) == 3
    everything, start = minapp_emulator.records(1001), 0
    for stored in job.result.objects:
        piece = everything[start:start + stored.records]
        assert_export_equals_records(local.objects.read(stored.key), piece, "json")
        start += stored.records
    assert start == 900
