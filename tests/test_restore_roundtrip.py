"""Restore round trips, end to end as on SCF: back up through the HTTP API, wipe the
source in its emulator, restore through the HTTP API (POST /restores), let the poller and
the finisher carry it out, and find the emulator's data equal to the original, record for
record. Every answer is checked against docs/openapi.yaml on the way."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from devkit.emulators.minapp import MinAppEmulator
from devkit.sample_data import make_docs
from shared.domain.jobs import RunStatus
from tests.support.api import Api, deploy_sources
from tests.support.backup import LocalBackup, drive


def backed_up(api: Api, source: str, collection: str) -> str:
    """A backup of one collection through POST /runs, driven to its end; the run id."""
    status, body, _ = api.call("POST", "/runs", body={"collections": {source: [collection]}})
    assert status == 202, body
    ctx = api.context()
    run = ctx.state.get_run(body["run_id"])
    assert run is not None
    assert drive(ctx, run).status is RunStatus.SUCCEEDED
    return str(body["run_id"])


def restored(api: Api, timeout: float = 120, **ask: Any) -> dict[str, Any]:
    """POST /restores, then the poller and finisher until it ends; GET /restores/{id}."""
    status, body, _ = api.call("POST", "/restores", body=ask,
                               headers={"Idempotency-Key": f"k-{time.monotonic_ns()}"})
    assert status == 202, body
    ctx = api.context()
    run = ctx.state.get_run(body["restore_id"])
    assert run is not None
    drive(ctx, run, timeout)
    status, view, _ = api.call("GET", body["status_url"])
    assert status == 200
    return dict(view)


# MinApp ---------------------------------------------------------------------------------
def records(count: int) -> list[dict[str, Any]]:
    return [{k: v for k, v in d.items() if k != "_id"} for d in make_docs(count, seed=5)]


def minapp_api(local: LocalBackup, emulator: MinAppEmulator, tmp_path: Path,
               monkeypatch: pytest.MonkeyPatch, **table: Any) -> Api:
    emulator.import_delay = 0.05
    emulator.max_export_rows = 1000
    emulator.job_window = 0.05
    return deploy_sources(local, tmp_path, monkeypatch, local.minapp_source(
        emulator, tables=[{"id": 1001, **table}], max_export_rows=1000,
        export_interval_seconds=0.05))


def test_minapp_json_backup_wiped_and_restored_over_http(
        local: LocalBackup, minapp_emulator: MinAppEmulator, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    minapp_emulator.add_table(1001, records(300))
    api = minapp_api(local, minapp_emulator, tmp_path, monkeypatch)
    run_id = backed_up(api, "app", "1001")
    original = minapp_emulator.records(1001)
    assert minapp_emulator.wipe_table(1001) == 300

    view = restored(api, run_id=run_id, source="app", collection="1001", into="1001")

    assert view["status"] == "succeeded" and view["step"] == "done", view
    assert view["progress"]["records_before"] == 0 and view["progress"]["records_after"] == 300
    assert minapp_emulator.records(1001) == original


def test_minapp_split_backup_restored_into_a_new_table_then_into_the_original(
        local: LocalBackup, minapp_emulator: MinAppEmulator, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    minapp_emulator.add_table(1001, records(2600), name="orders")
    api = minapp_api(local, minapp_emulator, tmp_path, monkeypatch,
                     split={"key": "created_at", "rows_per_part": 1000})
    run_id = backed_up(api, "app", "1001")
    original = minapp_emulator.records(1001)

    fresh = restored(api, run_id=run_id, source="app", collection="1001")  # a new table
    assert fresh["status"] == "succeeded", fresh
    assert fresh["target"] == f"orders_r{run_id[:15]}" and fresh["mode"] == "new"
    assert fresh["progress"]["objects_sent"] == fresh["progress"]["objects"] == 3
    assert minapp_emulator.records(minapp_emulator.table_id(fresh["target"])) == original

    minapp_emulator.add_table(1001, original[1000:], name="orders")  # 1000 records lost
    status, body, _ = api.call("POST", "/restores", body={
        "run_id": run_id, "source": "app", "collection": "1001", "mode": "insert"})
    assert status == 400 and body["field"] == "confirm" and '"confirm": "1001"' in body["error"]
    back = restored(api, run_id=run_id, source="app", collection="1001", mode="insert",
                    confirm="1001")
    assert back["status"] == "succeeded", back
    assert back["progress"]["records_before"] == 1600
    assert back["progress"]["records_after"] == 2600
    assert "kept as they were" in back["progress"]["note"]
    assert sorted(minapp_emulator.records(1001), key=lambda r: r["id"]) == sorted(
        original, key=lambda r: r["id"])
