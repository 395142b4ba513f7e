"""Restore round trips, end to end as on SCF: back up through the HTTP API, wipe the
source in its emulator, restore through the HTTP API (POST /restores), let the poller and
the finisher carry it out, and find the emulator's data equal to the original, record for
record. Every answer is checked against docs/openapi.yaml on the way."""

from __future__ import annotations

import json
import signal
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from devkit.compare import docs_as_csv_rows
from devkit.emulators.minapp import MinAppEmulator
from devkit.emulators.onedb import OneDBEmulator
from devkit.sample_data import make_docs
from shared.domain.jobs import Run, RunStatus, run_id_for, utcnow
from shared.service.poll import poll
from tests.fakes import RecordingDispatcher
from tests.support.api import Api, deploy, deploy_sources
from tests.support.backup import ENV_ID as ENV_ID_WECHAT
from tests.support.backup import LocalBackup, drive
from tests.support.minapp import assert_export_equals_records, drive_jumping
from tests.support.onedb import APP, ENV_ID, finisher_process, onedb_source, stored_job


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
               monkeypatch: pytest.MonkeyPatch, file_type: str = "json", **table: Any) -> Api:
    emulator.import_delay = 0.05
    emulator.max_export_rows = 1000
    emulator.job_window = 0.05
    return deploy_sources(local, tmp_path, monkeypatch, local.minapp_source(
        emulator, tables=[{"id": 1001, **table}], max_export_rows=1000,
        export_interval_seconds=0.05, file_type=file_type))


def minapp_wiped(local: LocalBackup, emulator: MinAppEmulator, tmp_path: Path,
                 monkeypatch: pytest.MonkeyPatch, rows: int) -> tuple[Api, str, list[dict[str, Any]]]:
    """Table 1001 of `rows` records backed up, then emptied as an accident would: the API,
    the backup's run id and the records the table held."""
    emulator.add_table(1001, records(rows))
    api = minapp_api(local, emulator, tmp_path, monkeypatch)
    run_id = backed_up(api, "app", "1001")
    original = emulator.records(1001)
    assert emulator.wipe_table(1001) == rows
    return api, run_id, original


def test_minapp_json_backup_wiped_and_restored_over_http(
        local: LocalBackup, minapp_emulator: MinAppEmulator, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    api, run_id, original = minapp_wiped(local, minapp_emulator, tmp_path, monkeypatch, 300)

    view = restored(api, run_id=run_id, source="app", collection="1001", into="1001")

    assert view["status"] == "succeeded" and view["step"] == "done", view
    assert view["progress"]["records_before"] == 0 and view["progress"]["records_after"] == 300
    assert minapp_emulator.records(1001) == original


def test_a_minapp_import_refusing_the_token_once_signs_in_again_and_restores(
        local: LocalBackup, minapp_emulator: MinAppEmulator, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A token MinApp refuses (401) on the import, e.g. one that ran out while a big file
    went up, is replaced once, as README's Sign-in says, and the file is sent again."""
    api, run_id, original = minapp_wiped(local, minapp_emulator, tmp_path, monkeypatch, 40)
    signed_in = minapp_emulator.calls["access_token"]
    minapp_emulator.inject("import", 401, body={"error_msg": "Authentication credentials were not provided."})

    view = restored(api, run_id=run_id, source="app", collection="1001", into="1001")

    assert view["status"] == "succeeded" and view["step"] == "done", view
    assert minapp_emulator.calls["access_token"] == signed_in + 1  # once, not in a loop
    assert minapp_emulator.records(1001) == original


def test_a_minapp_import_refusing_a_fresh_token_too_fails_saying_so(
        local: LocalBackup, minapp_emulator: MinAppEmulator, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    api, run_id, _ = minapp_wiped(local, minapp_emulator, tmp_path, monkeypatch, 10)
    signed_in = minapp_emulator.calls["access_token"]
    minapp_emulator.inject("import", 401, times=5)

    view = restored(api, run_id=run_id, source="app", collection="1001", into="1001")

    assert view["status"] == "failed", view
    assert "freshly issued token was refused" in json.dumps(view, ensure_ascii=False)
    assert minapp_emulator.calls["access_token"] == signed_in + 1  # once, not in a loop
    assert minapp_emulator.calls["import"] == 2
    assert minapp_emulator.records(1001) == []


def _renamed_headers_backup(local: LocalBackup, minapp_emulator: MinAppEmulator, tmp_path: Path,
                            monkeypatch: pytest.MonkeyPatch) -> tuple[Api, str]:
    """A MinApp table backed up with csv_customize_headers (its import would drop the
    values): the API and the run."""
    minapp_emulator.import_delay = 0.05
    minapp_emulator.add_table(1001, records(20), name="orders")
    table = {"id": 1001, "csv_customize_headers": ["编号", "名字"]}
    api = deploy_sources(local, tmp_path, monkeypatch, local.minapp_source(
        minapp_emulator, file_type="csv", tables=[table]))
    return api, backed_up(api, "app", "1001")


def test_a_minapp_backup_an_import_cannot_restore_is_refused_naming_why_unless_forced(
        local: LocalBackup, minapp_emulator: MinAppEmulator, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """csv_customize_headers renames the CSV's columns: MinApp's import would keep the
    records and drop their values, so the count after a restore would still look right."""
    api, run_id = _renamed_headers_backup(local, minapp_emulator, tmp_path, monkeypatch)
    ask = {"run_id": run_id, "source": "app", "collection": "1001"}

    status, refused, _ = api.call("POST", "/restores", body={**ask, "preview": True})
    assert status == 409 and refused["field"] == "force", refused
    assert "csv_customize_headers" in refused["error"] and "force" in refused["error"]
    assert "remove csv_customize_headers" in refused["error"]

    status, forced, _ = api.call("POST", "/restores", body={**ask, "preview": True, "force": True})
    assert status == 200, forced
    assert forced["plan"]["forced"] is True
    assert [c["option"] for c in forced["plan"]["restore_caveats"]] == ["csv_customize_headers"]


def test_a_minapp_backup_whose_manifest_predates_restore_caveats_still_restores(
        local: LocalBackup, minapp_emulator: MinAppEmulator, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    minapp_emulator.add_table(1001, records(20), name="orders")
    api = minapp_api(local, minapp_emulator, tmp_path, monkeypatch)
    run_id = backed_up(api, "app", "1001")
    (job,) = api.context().state.list_jobs(run_id)
    assert job.result is not None
    manifest = json.loads(local.objects.read(job.result.manifest_key))
    del manifest["restore_caveats"]  # as written before the field existed
    local.objects.put_json(job.result.manifest_key, manifest)

    status, body, _ = api.call("POST", "/restores", body={
        "run_id": run_id, "source": "app", "collection": "1001", "preview": True})

    assert status == 200, body
    assert body["plan"]["restore_caveats"] == [] and body["plan"]["forced"] is False


def test_a_minapp_backup_from_before_restore_caveats_is_refused_when_its_config_has_them(
        local: LocalBackup, minapp_emulator: MinAppEmulator, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A manifest written before restore_caveats existed cannot say the backup was made
    with csv_customize_headers; the table's current config does, and the backup is refused
    unless forced as if its manifest said so. A manifest that records none restores."""
    api, run_id = _renamed_headers_backup(local, minapp_emulator, tmp_path, monkeypatch)
    (job,) = api.context().state.list_jobs(run_id)
    assert job.result is not None
    manifest = json.loads(local.objects.read(job.result.manifest_key))
    del manifest["restore_caveats"]  # as written before the field existed
    local.objects.put_json(job.result.manifest_key, manifest)
    ask = {"run_id": run_id, "source": "app", "collection": "1001", "preview": True}

    status, refused, _ = api.call("POST", "/restores", body=ask)
    assert status == 409 and refused["field"] == "force", refused
    assert "remove csv_customize_headers" in refused["error"] and "(force)" in refused["error"]
    assert "current config" in refused["error"], refused
    status, forced, _ = api.call("POST", "/restores", body={**ask, "force": True})
    assert status == 200 and forced["plan"]["forced"] is True, forced
    assert [c["option"] for c in forced["plan"]["restore_caveats"]] == ["csv_customize_headers"]

    local.objects.put_json(job.result.manifest_key, {**manifest, "restore_caveats": []})
    status, body, _ = api.call("POST", "/restores", body=ask)
    assert status == 200 and body["plan"]["restore_caveats"] == [], body
    assert body["plan"]["forced"] is False


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


def _backup_then_switched(local: LocalBackup, emulator: MinAppEmulator, tmp_path: Path,
                          monkeypatch: pytest.MonkeyPatch, made: str, now: str) -> tuple[Api, str]:
    """Table 1001 backed up with file_type `made`, then the source's config switched to
    `now` (README advises JSON for backups you may restore): the API as deployed now, and
    the run."""
    emulator.add_table(1001, records(30), name="orders")
    api = minapp_api(local, emulator, tmp_path, monkeypatch, file_type=made)
    run_id = backed_up(api, "app", "1001")
    return minapp_api(local, emulator, tmp_path, monkeypatch, file_type=now), run_id


def _restored_as_made(api: Api, ask: dict[str, Any], made: str, *, confirm: str) -> dict[str, Any]:
    """The restore `ask` carried to its end, after its preview showed the backup's own
    file type `made`; its view."""
    status, preview, _ = api.call("POST", "/restores", body={**ask, "preview": True})
    assert status == 200 and preview["plan"]["file_type"] == made, preview
    return restored(api, **ask, confirm=confirm)


@pytest.mark.parametrize(("made", "now"), [("csv", "json"), ("json", "csv")])
def test_a_minapp_backup_restores_in_its_own_file_type_after_the_source_switched_type(
        local: LocalBackup, minapp_emulator: MinAppEmulator, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, made: str, now: str) -> None:
    api, run_id = _backup_then_switched(local, minapp_emulator, tmp_path, monkeypatch, made, now)
    (job,) = api.context().state.list_jobs(run_id)
    assert job.result is not None
    data = local.objects.read(job.result.key)
    minapp_emulator.wipe_table(1001)
    ask: dict[str, Any] = {"run_id": run_id, "source": "app", "collection": "1001",
                           "into": "1001", "mode": "insert"}

    view = _restored_as_made(api, ask, made, confirm="1001")

    assert view["status"] == "succeeded" and view["progress"]["records_after"] == 30, view
    assert_export_equals_records(data, minapp_emulator.records(1001), made)


def test_a_minapp_backup_whose_manifest_omits_its_file_type_restores_by_its_key_extension(
        local: LocalBackup, minapp_emulator: MinAppEmulator, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    api, run_id = _backup_then_switched(local, minapp_emulator, tmp_path, monkeypatch,
                                        "csv", "json")
    (job,) = api.context().state.list_jobs(run_id)
    assert job.result is not None and job.result.key.endswith(".csv")
    manifest = json.loads(local.objects.read(job.result.manifest_key))
    del manifest["file_type"]  # a manifest that does not say: the key's .csv does
    local.objects.put_json(job.result.manifest_key, manifest)
    minapp_emulator.wipe_table(1001)

    view = restored(api, run_id=run_id, source="app", collection="1001", into="1001",
                    mode="insert", confirm="1001")

    assert view["status"] == "succeeded" and view["progress"]["records_after"] == 30, view


# OneDB ----------------------------------------------------------------------------------
LEASE = 2.0


def _rows_saved(state_url: str, job_id: str) -> tuple[str, int]:
    doc = stored_job(state_url, job_id)
    return str(doc["status"]), int((doc.get("checkpoint") or {}).get("rows", 0))


def test_onedb_100k_rows_restore_killed_mid_way_resumes_without_losing_or_doubling_a_row(
        local: LocalBackup, onedb_emulator: OneDBEmulator, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    rows = 100_000
    onedb_emulator.add_generated_table(ENV_ID, APP, "events", rows)
    api = deploy_sources(local, tmp_path, monkeypatch, onedb_source(local, onedb_emulator),
                         copy_lease_seconds=LEASE, restore_row_concurrency=16)
    run_id = backed_up(api, "crm", "events")
    original = onedb_emulator.table_rows(ENV_ID, APP, "events")
    assert onedb_emulator.wipe(ENV_ID, APP, "events") == rows

    status, body, _ = api.call("POST", "/restores", body={
        "run_id": run_id, "source": "crm", "collection": "events", "into": "events"})
    assert status == 202, body  # an emptied table takes mode new: nothing to overwrite
    recorder = RecordingDispatcher()  # the test starts each finisher as a process, as SCF
    ctx = api.local.context(api.context().config, dispatcher=recorder)
    poll(ctx)
    [job_id] = recorder.dispatched

    process = finisher_process(api.config_path, job_id, local.environ)
    try:
        deadline = time.monotonic() + 300
        while _rows_saved(local.state_url, job_id)[1] < 30_000:
            assert process.poll() is None, process.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "no 30,000 rows saved within 300 s"
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait(timeout=30)
    step, saved = _rows_saved(local.state_url, job_id)
    assert step == "copying" and 30_000 <= saved < rows

    time.sleep(LEASE + 0.1)  # the dead finisher's lease runs out; the poller hands it on
    poll(ctx)
    assert recorder.dispatched == [job_id, job_id]
    last = finisher_process(api.config_path, job_id, local.environ)
    assert last.wait(timeout=600) == 0, last.stderr.read().decode()[-2000:]
    poll(ctx)  # closes the restore

    status, view, _ = api.call("GET", body["status_url"])
    assert status == 200 and view["status"] == "succeeded", view
    assert view["attempts"] == 0  # resumed after progress: no try burnt
    progress = view["progress"]
    assert progress["rows_written"] == rows and progress["records_after"] == rows
    assert onedb_emulator.table_rows(ENV_ID, APP, "events") == original  # once each, in order


# WeChat ---------------------------------------------------------------------------------
COMPONENT, COMPONENT_SECRET = "wx00000000000000c1", "component-secret-8a7b6c"
TICKET = "ticket@@@5f4e3d2c1b"
APP_A, ENV_A = "wx000000000000000a", "shop-a-prod-1a"


@pytest.mark.parametrize(("source", "file_type"), [("shop", "json"), ("archive", "csv")])
def test_wechat_backup_wiped_and_restored_over_http_into_a_new_collection_and_the_original(
        local: LocalBackup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: str,
        file_type: str) -> None:
    api = deploy(local, tmp_path, monkeypatch)  # shop: JSON Lines; archive: CSV
    original = local.emulator.docs(ENV_ID_WECHAT, "orders")
    run_id = backed_up(api, source, "orders")
    local.emulator.clear_collection(ENV_ID_WECHAT, "orders")

    def same(docs: list[dict[str, Any]]) -> bool:  # CSV keeps cells, not types
        if file_type == "json":
            return docs == original
        return docs_as_csv_rows(docs) == docs_as_csv_rows(original)

    status, preview, _ = api.call("POST", "/restores", body={
        "run_id": run_id, "source": source, "collection": "orders", "preview": True})
    assert status == 200 and preview["plan"]["target"] == f"orders_r{run_id[:8]}{run_id[9:13]}"
    assert preview["plan"]["records"] == 20 and not preview["plan"]["target_exists"]
    assert api.runs()[0].run_id == run_id  # a preview starts nothing

    fresh = restored(api, run_id=run_id, source=source, collection="orders")
    assert fresh["status"] == "succeeded" and fresh["progress"]["imported"] == 20, fresh
    assert same(local.emulator.docs(ENV_ID_WECHAT, fresh["target"]))
    assert local.emulator.docs(ENV_ID_WECHAT, "orders") == []  # the original untouched

    back = restored(api, run_id=run_id, source=source, collection="orders", mode="upsert",
                    confirm="orders")
    assert back["status"] == "succeeded" and back["target"] == "orders", back
    assert same(local.emulator.docs(ENV_ID_WECHAT, "orders"))
    status, listed, _ = api.call("GET", "/restores")
    assert [r["restore_id"] for r in listed["restores"]][:2] == [back["restore_id"],
                                                                fresh["restore_id"]]
    status, runs, _ = api.call("GET", "/runs")
    assert [r["run_id"] for r in runs["runs"]] == [run_id]  # restores are not backup runs


@pytest.mark.parametrize(("made", "now"), [("csv", "json"), ("json", "csv")])
def test_a_wechat_backup_restores_in_its_own_file_type_after_the_source_switched_type(
        local: LocalBackup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, made: str,
        now: str) -> None:
    """The import is told the backup's file type (databasemigrateimport file_type 1 JSON,
    2 CSV), not the one the source's config exports in now."""
    local.seed("orders", make_docs(20))
    original = local.emulator.docs(ENV_ID_WECHAT, "orders")
    api = deploy_sources(local, tmp_path, monkeypatch, local.wechat_source(file_type=made))
    run_id = backed_up(api, "shop", "orders")
    api = deploy_sources(local, tmp_path, monkeypatch, local.wechat_source(file_type=now))
    local.emulator.clear_collection(ENV_ID_WECHAT, "orders")
    ask: dict[str, Any] = {"run_id": run_id, "source": "shop", "collection": "orders",
                           "into": "orders", "mode": "upsert"}

    view = _restored_as_made(api, ask, made, confirm="orders")

    assert view["status"] == "succeeded" and view["progress"]["imported"] == 20, view
    (job,) = local.emulator.import_jobs()
    assert job["file_type"] == {"json": 1, "csv": 2}[made]
    docs = local.emulator.docs(ENV_ID_WECHAT, "orders")
    assert (docs == original if made == "json"  # CSV keeps cells, not types
            else docs_as_csv_rows(docs) == docs_as_csv_rows(original))


def test_an_undocumented_wechat_import_status_is_waited_for_without_spending_tries(
        local: LocalBackup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """databaseMigrateQueryInfo documents waiting, migrating, success and fail; another status
    may be a new in-between state, so the import waits as an export does, not failing after
    max_attempts (3) answers of it."""
    api = deploy(local, tmp_path, monkeypatch)
    original = local.emulator.docs(ENV_ID_WECHAT, "orders")
    run_id = backed_up(api, "shop", "orders")
    local.emulator.answer_with("/tcb/databasemigratequeryinfo",
                               {"errcode": 0, "errmsg": "ok", "status": "queued"}, times=6)

    status, body, _ = api.call("POST", "/restores", headers={"Idempotency-Key": "queued"},
                               body={"run_id": run_id, "source": "shop", "collection": "orders"})
    assert status == 202, body
    ctx = api.context()
    restore = ctx.state.get_run(body["restore_id"])
    assert restore is not None
    drive_jumping(ctx, restore)  # the pipeline's one-minute waits jumped

    status, view, _ = api.call("GET", body["status_url"])
    assert view["status"] == "succeeded" and view["progress"]["imported"] == 20, view
    assert local.emulator.docs(ENV_ID_WECHAT, view["target"]) == original


def test_a_third_party_platform_app_is_restored_over_http(
        local: LocalBackup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    emulator = local.emulator
    emulator.add_component(COMPONENT, COMPONENT_SECRET, TICKET)
    emulator.add_app(APP_A, "own-secret-never-used")
    emulator.add_env(APP_A, ENV_A)
    emulator.add_collection(ENV_A, "orders", make_docs(60, seed=3))
    emulator.authorize(COMPONENT, APP_A)
    local.environ.update(COMPONENT_SECRET=COMPONENT_SECRET, COMPONENT_TICKET=TICKET)
    api = deploy_sources(local, tmp_path, monkeypatch, {
        "type": "wechat-platform", "component_appid": COMPONENT,
        "component_secret": "${COMPONENT_SECRET}", "verify_ticket": "${COMPONENT_TICKET}",
        "api_base": emulator.base_url,
        "apps": [{"name": "shop-a", "appid": APP_A, "env": ENV_A, "collections": ["orders"]}]})
    original = emulator.docs(ENV_A, "orders")
    run_id = backed_up(api, "shop-a", "orders")
    emulator.clear_collection(ENV_A, "orders")

    view = restored(api, run_id=run_id, source="shop-a", collection="orders", into="orders")
    assert view["status"] == "succeeded", view
    assert emulator.docs(ENV_A, "orders") == original


def test_restore_requests_are_checked_before_anything_is_written(
        local: LocalBackup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    api = deploy(local, tmp_path, monkeypatch)
    run_id = backed_up(api, "shop", "orders")
    ask = {"run_id": run_id, "source": "shop", "collection": "orders"}
    cases: list[tuple[dict[str, Any], int, str | None, str]] = [
        ({"mode": "upsert"}, 400, "confirm", '"confirm": "orders"'),
        ({"mode": "upsert", "confirm": "order"}, 400, "confirm", "confirm"),
        ({"into": "users"}, 409, "into", "holds records"),
        ({"into": "a/b"}, 400, "into", "into 'a/b': a collection/table name is 1 to 255"),
        ({"source": "nope"}, 400, "source", "configured sources are: shop, archive"),
        ({"collection": "users"}, 404, "collection", "has no backup of shop/users"),
        ({"run_id": "20261121T020000123Z-1a2b3c4d"}, 404, "run_id", "no backup run"),
        ({"mode": "replace"}, 400, "mode", "mode"),
        ({"colection": "x"}, 400, "colection", "unknown field"),
    ]
    for change, status, field, words in cases:
        code, body, _ = api.call("POST", "/restores", body={**ask, **change})
        assert (code, body["field"]) == (status, field), (change, body)
        assert words in body["error"], (change, body)
    code, body, _ = api.call("POST", "/restores", body={"source": "shop"})
    assert (code == 400 and body["field"] == "collection") or body["field"] == "run_id"
    assert [r.operation for r in api.runs()] == ["backup"]  # nothing was started

    key = {"Idempotency-Key": "restore-once"}
    code, first, _ = api.call("POST", "/restores", body=ask, headers=key)
    code_again, again, _ = api.call("POST", "/restores", body=ask, headers=key)
    assert (code, code_again) == (202, 202) and again["restore_id"] == first["restore_id"]
    assert again["created"] is False
    code, other, _ = api.call("POST", "/restores", body={**ask, "into": "elsewhere"},
                              headers=key)
    assert code == 409 and other["field"] == "Idempotency-Key"
    for gone in ({"collection": "users"}, {"run_id": "20261121T020000123Z-1a2b3c4d"}):
        # the key's conflict is the answer, not that the other backup does not exist
        code, other, _ = api.call("POST", "/restores", body={**ask, **gone}, headers=key)
        assert (code, other["field"]) == (409, "Idempotency-Key"), (gone, other)
        assert first["restore_id"] in other["error"], other
    code, busy, _ = api.call("POST", "/restores", body=ask)
    assert code == 409 and "right now" in busy["error"]
    code, missing, _ = api.call("GET", "/restores/20261121T020000123Z-1a2b3c4d")
    assert code == 404 and missing["field"] == "restore_id"
    code, missing, _ = api.call("GET", f"/restores/{run_id}")  # a backup run is no restore
    assert code == 404


def test_a_restore_request_resent_after_the_restore_wrote_its_data_is_the_same_restore(
        local: LocalBackup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A phone that lost the 202 sends POST /restores again with the same Idempotency-Key;
    meanwhile the restore filled its new collection. The answer is that restore, not a 409
    saying the target holds records (which reads as: nothing was restored)."""
    api = deploy(local, tmp_path, monkeypatch)
    run_id = backed_up(api, "shop", "orders")
    ask = {"run_id": run_id, "source": "shop", "collection": "orders"}
    key = {"Idempotency-Key": "phone-lost-the-answer"}
    status, first, _ = api.call("POST", "/restores", body=ask, headers=key)
    assert status == 202, first
    ctx = api.context()
    run = ctx.state.get_run(first["restore_id"])
    assert run is not None and drive(ctx, run).status is RunStatus.SUCCEEDED
    assert len(local.emulator.docs(ENV_ID_WECHAT, first["plan"]["target"])) == 20

    status, again, _ = api.call("POST", "/restores", body=ask, headers=key)
    assert status == 202, again
    assert again["restore_id"] == first["restore_id"] and again["created"] is False
    status, other, _ = api.call("POST", "/restores", body={**ask, "into": "elsewhere"},
                                headers=key)
    assert status == 409 and other["field"] == "Idempotency-Key", other
    assert [r.operation for r in api.runs()].count("restore") == 1


def test_a_platform_that_cannot_answer_a_restore_preview_is_a_503_naming_it(
        local: LocalBackup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Planning asks the platform whether the target exists; WeChat answering "system busy"
    was a 500 "internal error" (the phone's user learned nothing, and nothing to retry)."""
    api = deploy(local, tmp_path, monkeypatch)
    run_id = backed_up(api, "shop", "orders")
    local.emulator.inject_errcode("/tcb/databasecollectionget", -1, times=100)  # the listing
    for preview in (True, False):
        status, body, _ = api.call("POST", "/restores", body={
            "run_id": run_id, "source": "shop", "collection": "orders", "preview": preview})
        assert (status, body["field"]) == (503, "source"), body
        assert "errcode -1" in body["error"] and "try again" in body["error"], body
    assert [r.operation for r in api.runs()] == ["backup"]  # nothing was started


def test_a_restore_id_under_runs_is_no_backup_run_and_points_to_restores(
        local: LocalBackup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """GET /restores/{backup run id} is a 404; GET /runs/{restore id} answered 200 with the
    restore dressed as a backup run (0 records, 0 bytes), and acknowledge said "the backup
    of <its target> is not suspect"."""
    api = deploy(local, tmp_path, monkeypatch)
    run_id = backed_up(api, "shop", "orders")
    status, started, _ = api.call("POST", "/restores", body={
        "run_id": run_id, "source": "shop", "collection": "orders"})
    assert status == 202, started
    restore_id, target = started["restore_id"], started["plan"]["target"]
    for method, path, body in (
            ("GET", f"/runs/{restore_id}", None),
            ("POST", f"/runs/{restore_id}/acknowledge", {"source": "shop", "collection": target}),
            ("POST", f"/runs/{restore_id}/verify", {})):
        status, answer, _ = api.call(method, path, body=body)
        assert (status, answer["field"]) == (404, "run_id"), (method, path, answer)
        assert f"/restores/{restore_id}" in answer["error"], answer


def test_a_restore_older_than_201_backup_runs_is_still_listed(
        local: LocalBackup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """GET /restores looked for restores among the newest 200 runs only: on a deployment
    backing up hourly, a restore vanished from the list after about eight days."""
    api = deploy(local, tmp_path, monkeypatch)
    run_id = backed_up(api, "shop", "orders")
    status, started, _ = api.call("POST", "/restores", body={
        "run_id": run_id, "source": "shop", "collection": "orders"})
    assert status == 202, started
    state, later = api.context().state, utcnow()
    for hour in range(1, 202):  # 201 backups recorded after the restore
        at = later + timedelta(hours=hour)
        state.create_run(Run(run_id=run_id_for(f"timer-{hour}", at), idempotency_key=f"timer-{hour}",
                             trigger="timer", status=RunStatus.SUCCEEDED, created_at=at,
                             finished_at=at), [])
    status, listed, _ = api.call("GET", "/restores")
    assert status == 200
    assert [r["restore_id"] for r in listed["restores"]] == [started["restore_id"]], listed
    assert listed["restores"][0]["backup_run_id"] == run_id


def test_a_finished_onedb_restore_says_its_objects_were_all_written(
        local: LocalBackup, onedb_emulator: OneDBEmulator, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """OneDB writes rows, not files: its restore keeps its place as `object`, never `sent`.
    GET /restores/{id} (and so the status page) said "objects sent 0/1" for a restore that
    had written every row of its one object."""
    onedb_emulator.add_generated_table(ENV_ID, APP, "events", 50)
    api = deploy_sources(local, tmp_path, monkeypatch, onedb_source(local, onedb_emulator))
    run_id = backed_up(api, "crm", "events")
    assert onedb_emulator.wipe(ENV_ID, APP, "events") == 50

    view = restored(api, run_id=run_id, source="crm", collection="events", into="events")

    assert view["status"] == "succeeded", view
    progress = view["progress"]
    assert progress["rows_written"] == 50 and progress["objects"] == 1, progress
    assert progress["objects_sent"] == 1, progress


def test_a_onedb_row_holding_half_an_emoji_is_restored_and_found_as_backed_up(
        local: LocalBackup, onedb_emulator: OneDBEmulator, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A lone surrogate (`\\ud83d`, valid JSON, as JSON.stringify writes it) and an integer
    beyond 64 bits: written back exactly, then found in the table paged back. The check
    that pages it back failed on the surrogate (orjson refuses it) and the restore with it."""
    rows: list[dict[str, Any]] = [
        {"ids": {"userId": "u1", "seq": 1}, "columns": {"nick": "cut \ud83d", "n": 2**70 + 1}},
        {"ids": {"userId": "u2", "seq": 1}, "columns": {"nick": "whole 🐼", "n": None}}]
    onedb_emulator.add_table(ENV_ID, APP, "events", ["userId", "seq"], rows)
    api = deploy_sources(local, tmp_path, monkeypatch, onedb_source(local, onedb_emulator))
    run_id = backed_up(api, "crm", "events")
    assert onedb_emulator.wipe(ENV_ID, APP, "events") == 2

    view = restored(api, run_id=run_id, source="crm", collection="events", into="events")

    assert view["status"] == "succeeded", view
    assert view["progress"]["rows_written"] == 2, view["progress"]
    assert onedb_emulator.table_rows(ENV_ID, APP, "events") == rows


def test_a_onedb_upsert_of_a_partial_backup_is_checked_on_what_it_wrote(
        local: LocalBackup, onedb_emulator: OneDBEmulator, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A backup of only some columns (getColumns) goes back with `update`, which sets the
    backed-up columns and keeps the others. A row that lacked one of them at backup time
    and has it now keeps it: the read-back found the row unlike its backup line and the
    restore could never pass. It judges only the columns the restore wrote."""
    u1, u2 = {"userId": "u1", "seq": 1}, {"userId": "u2", "seq": 1}
    then: list[dict[str, Any]] = [
        {"ids": u1, "columns": {"name": "Ann", "note": "x"}},  # no score yet
        {"ids": u2, "columns": {"name": "Bo", "score": 2, "note": "y"}}]
    onedb_emulator.add_table(ENV_ID, APP, "events", ["userId", "seq"], then)
    api = deploy_sources(local, tmp_path, monkeypatch, onedb_source(
        local, onedb_emulator, tables=[{"name": "events", "getColumns": ["name", "score"]}]))
    run_id = backed_up(api, "crm", "events")
    onedb_emulator.add_table(ENV_ID, APP, "events", ["userId", "seq"], [
        {"ids": u1, "columns": {"name": "Ann B.", "score": 9, "note": "x2"}},
        {"ids": u2, "columns": {"name": "Bob", "score": 3, "note": "y2"}}])

    view = restored(api, run_id=run_id, source="crm", collection="events", mode="upsert",
                    confirm="events")

    assert view["status"] == "succeeded", view
    assert onedb_emulator.table_rows(ENV_ID, APP, "events") == [
        {"ids": u1, "columns": {"name": "Ann", "score": 9, "note": "x2"}},
        {"ids": u2, "columns": {"name": "Bo", "score": 2, "note": "y2"}}]


def test_a_used_idempotency_key_is_a_409_even_for_a_source_not_configured(
        local: LocalBackup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """README (Restoring): a key already used for another restore is answered 409 "before
    anything else about the request is checked"; naming a source that is not configured
    was a 400 about the source instead, hiding that the key was the thing to fix."""
    api = deploy(local, tmp_path, monkeypatch)
    run_id = backed_up(api, "shop", "orders")
    ask = {"run_id": run_id, "source": "shop", "collection": "orders"}
    key = {"Idempotency-Key": "restore-once"}
    status, first, _ = api.call("POST", "/restores", body=ask, headers=key)
    assert status == 202, first

    status, other, _ = api.call("POST", "/restores", body={**ask, "source": "nope"}, headers=key)

    assert (status, other["field"]) == (409, "Idempotency-Key"), other
    assert first["restore_id"] in other["error"], other
    status, fresh, _ = api.call("POST", "/restores", body={**ask, "source": "nope"})
    assert (status, fresh["field"]) == (400, "source"), fresh  # a new request: the source


def test_a_onedb_restore_into_a_table_not_made_yet_is_refused_by_its_preview(
        local: LocalBackup, onedb_emulator: OneDBEmulator, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """OneDB tables cannot be created through its API. The preview (the status page's
    "what will be written where") said the new table "will be created", the restore was
    recorded and only then failed: the preview now says to make the table first, and
    nothing is started."""
    onedb_emulator.add_generated_table(ENV_ID, APP, "events", 5)
    api = deploy_sources(local, tmp_path, monkeypatch, onedb_source(local, onedb_emulator))
    run_id = backed_up(api, "crm", "events")
    ask = {"run_id": run_id, "source": "crm", "collection": "events"}

    for preview in (True, False):
        status, body, _ = api.call("POST", "/restores", body={**ask, "preview": preview})
        assert (status, body["field"]) == (409, "into"), body
        assert "create the empty table" in body["error"] and "console" in body["error"], body
    assert [r for r in api.runs() if r.operation == "restore"] == []


def test_a_minapp_restore_into_a_name_minapp_cannot_take_is_refused_before_it_starts(
        local: LocalBackup, minapp_emulator: MinAppEmulator, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """It was accepted and failed only once started, when the table was to be made."""
    minapp_emulator.add_table(1001, records(5))
    api = minapp_api(local, minapp_emulator, tmp_path, monkeypatch)
    run_id = backed_up(api, "app", "1001")

    status, body, _ = api.call("POST", "/restores", body={
        "run_id": run_id, "source": "app", "collection": "1001", "into": "9-lives"})

    assert (status, body["field"]) == (400, "into"), body
    assert body["error"].startswith("into '9-lives': ") and "starts with a letter" in body["error"]
    assert [r.operation for r in api.runs()] == ["backup"]  # nothing was started
