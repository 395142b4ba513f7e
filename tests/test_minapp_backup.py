"""MinApp tables end to end over real HTTP: MinApp emulator (and WeChat emulator) ->
pipeline -> real COS SDK -> S3 server."""

from __future__ import annotations

import io
import json
import logging
import math
import socket
import time
from datetime import timedelta
from typing import Any

import pytest

from devkit.compare import assert_object_equals_docs
from devkit.emulators.minapp import MinAppEmulator
from devkit.sample_data import make_docs
from shared.domain.errors import Retryable
from shared.domain.jobs import JobStatus, RunStatus, utcnow
from shared.domain.layout import data_key, part_key
from shared.logs import configure_logging
from shared.platforms.minapp import platform as minapp_platform
from shared.platforms.minapp.platform import READ_TRIES, MinAppClient
from shared.service.poll import poll
from shared.service.start import start_run
from tests.fakes import MovingClock
from tests.support.backup import LocalBackup, backup_now, drive
from tests.support.minapp import CLIENT_ID, JumpClock, assert_export_equals_records, backup_jumping


def records(count: int, seed: int = 21, prefix: str = "r") -> list[dict[str, Any]]:
    """Sample records without WeChat's `_id`: MinApp adds its own `id`."""
    return [{k: v for k, v in doc.items() if k != "_id"} for doc in make_docs(count, seed, prefix)]


def our_jobs(emulator: MinAppEmulator, table: int) -> list[dict[str, Any]]:
    return [j for j in emulator.export_jobs(table) if j["client_id"] == CLIENT_ID]


@pytest.mark.parametrize("file_type", ["json", "csv"])
def test_wechat_and_minapp_in_one_run_equal_their_sources(
        local: LocalBackup, minapp_emulator: MinAppEmulator, file_type: str) -> None:
    local.seed("orders", make_docs(250, seed=1))
    minapp_emulator.add_table(1001, records(300))
    minapp_emulator.add_table(1002, records(40, seed=22, prefix="u"))
    minapp_emulator.add_table(1003, [])
    config = local.config(
        local.wechat_source(file_type=file_type),
        local.minapp_source(minapp_emulator, tables=[1001, "1002", {"id": 1003}],
                            file_type=file_type),
    )
    ctx = local.context(config)

    run = backup_now(ctx)

    assert run.status is RunStatus.SUCCEEDED
    jobs = {(j.source, j.collection): j for j in ctx.state.list_jobs(run.run_id)}
    assert set(jobs) == {("shop", "orders"), ("app", "1001"), ("app", "1002"), ("app", "1003")}
    wechat = jobs[("shop", "orders")]
    assert wechat.result is not None
    assert_object_equals_docs(local.objects.read(wechat.result.key),
                              local.emulator.docs("shop-prod-1a2b3c", "orders"), file_type)
    for table in (1001, 1002, 1003):
        job = jobs[("app", str(table))]
        assert job.status is JobStatus.DONE and job.result is not None
        source = minapp_emulator.records(table)
        assert job.result.key == data_key(config.destination.prefix, run.run_id, "app",
                                          str(table), file_type)
        data = local.objects.read(job.result.key)
        assert_export_equals_records(data, source, file_type)
        manifest = json.loads(local.objects.read(job.result.manifest_key))
        assert manifest["platform"] == "minapp"
        assert manifest["records"] == len(source) == job.result.records
        assert manifest["bytes"] == len(data)
        assert manifest["platform_job_id"] == job.platform_job_id
        assert len(our_jobs(minapp_emulator, table)) == 1
    # the signed download link is all a download gets: no token goes with it
    assert minapp_emulator.download_authorization
    assert set(minapp_emulator.download_authorization) == {None}


def test_export_options_are_passed_through(local: LocalBackup,
                                           minapp_emulator: MinAppEmulator) -> None:
    source = records(60)
    minapp_emulator.add_table(1001, source)
    table = {"id": 1001, "where": {"paid": {"$eq": True}}, "include_keys": ["id", "total", "paid"],
             "order_by": ["-total"]}
    ctx = local.context(local.config(local.minapp_source(minapp_emulator, tables=[table])))

    run = backup_now(ctx)

    assert run.status is RunStatus.SUCCEEDED
    (job,) = ctx.state.list_jobs(run.run_id)
    (platform_job,) = our_jobs(minapp_emulator, 1001)
    assert platform_job["mode"] == "part"
    assert platform_job["options"] == {k: v for k, v in table.items() if k != "id"}
    paid = sorted((r for r in minapp_emulator.records(1001) if r["paid"]),
                  key=lambda r: -r["total"])
    expected = [{k: r[k] for k in ("id", "total", "paid")} for r in paid]
    assert job.result is not None
    assert_export_equals_records(local.objects.read(job.result.key), expected, "json")


def test_a_backup_made_with_options_an_import_cannot_undo_says_so_in_its_manifest(
        local: LocalBackup, minapp_emulator: MinAppEmulator) -> None:
    minapp_emulator.add_table(1001, records(5))
    minapp_emulator.add_table(1002, records(5))
    renamed = {"id": 1001, "csv_customize_headers": ["编号", "名字"],
               "timestamp_convert_keys": ["created_at"]}
    ctx = local.context(local.config(local.minapp_source(
        minapp_emulator, file_type="csv", tables=[renamed, 1002])))

    run = backup_now(ctx)

    assert run.status is RunStatus.SUCCEEDED
    jobs = {j.collection: j for j in ctx.state.list_jobs(run.run_id)}
    manifests = {}
    for table, job in jobs.items():
        assert job.result is not None
        manifests[table] = json.loads(local.objects.read(job.result.manifest_key))
    caveats = manifests["1001"]["restore_caveats"]
    assert [c["option"] for c in caveats] == ["csv_customize_headers", "timestamp_convert_keys"]
    assert caveats[0]["value"] == ["编号", "名字"] and caveats[1]["value"] == ["created_at"]
    assert all("remove" in c["why"] for c in caveats)  # each names its fix
    assert manifests["1002"]["restore_caveats"] == []


def test_a_run_of_a_source_whose_backups_cannot_be_restored_warns_naming_the_fix(
        local: LocalBackup, minapp_emulator: MinAppEmulator) -> None:
    captured = io.StringIO()
    configure_logging(logging.INFO, stream=captured)
    minapp_emulator.add_table(1001, records(5))
    table = {"id": 1001, "timestamp_convert_keys": ["created_at"]}
    ctx = local.context(local.config(local.minapp_source(minapp_emulator, tables=[table])))

    run = backup_now(ctx)

    assert run.status is RunStatus.SUCCEEDED
    warnings = [json.loads(line) for line in captured.getvalue().splitlines()
                if '"WARNING"' in line and "cannot be restored" in line]
    assert len(warnings) == 1, captured.getvalue()
    (warning,) = warnings
    assert warning["source"] == "app" and warning["run_id"] == run.run_id
    assert "table 1001" in warning["caveats"][0]
    assert "remove timestamp_convert_keys" in warning["caveats"][0]


def test_test_environment_is_chosen_by_env_id(local: LocalBackup,
                                              minapp_emulator: MinAppEmulator) -> None:
    minapp_emulator.add_env("test-env-7")
    minapp_emulator.add_table(1001, records(5))
    minapp_emulator.add_table(1001, records(9, seed=3, prefix="t"), env="test-env-7")
    ctx = local.context(local.config(local.minapp_source(minapp_emulator, env_id="test-env-7")))

    run = backup_now(ctx)

    (job,) = ctx.state.list_jobs(run.run_id)
    assert job.result is not None and job.result.records == 9
    assert_export_equals_records(local.objects.read(job.result.key),
                                 minapp_emulator.records(1001, env="test-env-7"), "json")


def test_one_job_per_minute_is_waited_for_not_duplicated(
        local: LocalBackup, minapp_emulator: MinAppEmulator) -> None:
    minapp_emulator.job_window = 1.5  # long enough that our first try surely falls inside
    minapp_emulator.add_table(1001, records(30))
    minapp_emulator.add_table(1002, records(10, prefix="u"))
    minapp_emulator.create_console_job(1001)  # someone just exported 1001 from the console
    ctx = local.context(local.config(local.minapp_source(minapp_emulator, tables=[1001, 1002])))

    run = backup_jumping(ctx)

    assert run.status is RunStatus.SUCCEEDED
    assert minapp_emulator.calls["export"] >= 3  # 1001 refused at least once, then created
    assert len(our_jobs(minapp_emulator, 1001)) == 1
    assert len(our_jobs(minapp_emulator, 1002)) == 1
    jobs = {j.collection: j for j in ctx.state.list_jobs(run.run_id)}
    assert jobs["1001"].attempts == 0  # waiting is not a failed try
    assert jobs["1001"].result is not None
    assert_export_equals_records(local.objects.read(jobs["1001"].result.key),
                                 minapp_emulator.records(1001), "json")


def test_lost_answer_to_create_adopts_the_job_it_made(
        local: LocalBackup, minapp_emulator: MinAppEmulator) -> None:
    minapp_emulator.add_table(1001, records(20))
    minapp_emulator.lose_create_answers(1)
    ctx = local.context(local.config(local.minapp_source(minapp_emulator)))

    run = backup_jumping(ctx)

    assert run.status is RunStatus.SUCCEEDED
    assert len(our_jobs(minapp_emulator, 1001)) == 1
    (job,) = ctx.state.list_jobs(run.run_id)
    assert job.platform_job_id == our_jobs(minapp_emulator, 1001)[0]["job_id"]


def test_a_created_answer_that_is_not_json_adopts_the_job_it_made(
        local: LocalBackup, minapp_emulator: MinAppEmulator) -> None:
    """201 is "导出任务创建成功" (MinApp's export docs): a body a gateway replaced with a page
    of its own still means a job exists, found in the table's job list, never made twice."""
    minapp_emulator.job_window = 0.0  # a second create would be taken: only the client can refuse it
    minapp_emulator.add_table(1001, records(5))
    minapp_emulator.lose_create_answers(1, status=201, raw=b"<html><body>OK</body></html>")
    provider = local.context(local.config(local.minapp_source(minapp_emulator))).platforms.get("app")
    assert isinstance(provider, MinAppClient)

    started = provider.start("1001", "run-1.app.abc")

    (made,) = our_jobs(minapp_emulator, 1001)
    assert started == made["job_id"]


def test_a_created_answer_without_a_job_id_never_starts_a_second_export(
        local: LocalBackup, minapp_emulator: MinAppEmulator) -> None:
    """Also while the job a 201 made cannot be found in the list yet: the start waits for it
    (a named, retried failure) rather than create another on the user's account."""
    minapp_emulator.job_window = 0.0
    minapp_emulator.add_table(1001, records(5))
    minapp_emulator.lose_create_answers(1, status=201, raw=b"")
    # the job list leaves it out for the start's two more tries (three in all)
    minapp_emulator.inject("jobs", 200, times=2, body={"meta": {"total_count": 0}, "objects": []})
    provider = local.context(local.config(local.minapp_source(minapp_emulator))).platforms.get("app")
    assert isinstance(provider, MinAppClient)

    with pytest.raises(Retryable, match="not in the table's export job list"):
        provider.start("1001", "run-1.app.abc")
    assert len(our_jobs(minapp_emulator, 1001)) == 1
    again = provider.start("1001", "run-1.app.abc")  # the list shows it now

    (made,) = our_jobs(minapp_emulator, 1001)
    assert again == made["job_id"]


def test_recorded_start_is_not_repeated_when_the_state_write_was_lost(
        local: LocalBackup, minapp_emulator: MinAppEmulator) -> None:
    minapp_emulator.add_table(1001, records(5))
    config = local.config(local.minapp_source(minapp_emulator))
    provider = local.context(config).platforms.get("app")
    assert isinstance(provider, MinAppClient)

    first = provider.start("1001", "run-1.app.abc")
    again = provider.start("1001", "run-1.app.abc")  # e.g. the poller died before saving

    assert again == first
    assert len(our_jobs(minapp_emulator, 1001)) == 1


def test_a_download_host_that_cannot_be_reached_is_a_named_transient_failure(
        local: LocalBackup, minapp_emulator: MinAppEmulator) -> None:
    """download_url is MinApp's (a CDN, say): a connection to it that fails is retried as a
    download that failed, named so, not reported as an internal error with a traceback."""
    minapp_emulator.add_table(1001, records(5))
    provider = local.context(local.config(local.minapp_source(minapp_emulator))).platforms.get("app")
    assert isinstance(provider, MinAppClient)
    job = provider.start("1001", "run-1.app.abc")
    while provider.check("1001", job).state != "ready":
        pass
    with socket.socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        minapp_emulator.link_base = f"http://127.0.0.1:{closed.getsockname()[1]}"

    with pytest.raises(Retryable, match=f"download of MinApp export {job}"):
        b"".join(provider.open("1001", job))


@pytest.mark.parametrize("file_type", ["json", "csv"])
def test_table_over_the_row_limit_is_split_into_parts(
        local: LocalBackup, minapp_emulator: MinAppEmulator, file_type: str) -> None:
    minapp_emulator.max_export_rows = 1000
    minapp_emulator.job_window = 0.05
    source = records(2600)
    minapp_emulator.add_table(1001, source)  # created_at: three records per second
    table = {"id": 1001, "split": {"key": "created_at", "rows_per_part": 400}}
    config = local.config(local.minapp_source(minapp_emulator, tables=[table],
                                              file_type=file_type, max_export_rows=1000, export_interval_seconds=0.05))
    ctx = local.context(config)

    run = backup_jumping(ctx)

    assert run.status is RunStatus.SUCCEEDED
    (job,) = ctx.state.list_jobs(run.run_id)
    assert job.result is not None
    parts = math.ceil(2600 / 400)
    assert len(job.result.objects) == parts
    platform_jobs = our_jobs(minapp_emulator, 1001)
    assert len(platform_jobs) == parts  # one platform job per part, none twice
    assert all(j["mode"] == "part" and j["records"] <= 1000 for j in platform_jobs)
    base = data_key(config.destination.prefix, run.run_id, "app", "1001", file_type)
    everything = minapp_emulator.records(1001)
    start = 0
    for number, stored in enumerate(job.result.objects, start=1):
        assert stored.key == part_key(base, number)
        assert 0 < stored.records <= 1000
        piece = everything[start:start + stored.records]
        assert_export_equals_records(local.objects.read(stored.key), piece, file_type)
        start += stored.records
    assert start == len(source) == job.result.records
    assert local.objects.head(base) is None  # parts only, no whole-table object
    manifest = json.loads(local.objects.read(job.result.manifest_key))
    assert [o["key"] for o in manifest["objects"]] == [o.key for o in job.result.objects]
    assert manifest["records"] == 2600


def test_the_next_part_is_created_when_the_tables_window_reopens_not_every_tick(
        local: LocalBackup, minapp_emulator: MinAppEmulator) -> None:
    minapp_emulator.max_export_rows = 1000
    minapp_emulator.job_window = 0.4
    minapp_emulator.add_table(1001, records(1100))
    table = {"id": 1001, "split": {"key": "created_at", "rows_per_part": 400}}
    config = local.config(local.minapp_source(
        minapp_emulator, tables=[table], max_export_rows=1000, export_interval_seconds=0.4))
    ctx = local.context(config)

    run = backup_now(ctx)

    assert run.status is RunStatus.SUCCEEDED
    (job,) = ctx.state.list_jobs(run.run_id)
    assert job.result is not None and len(job.result.objects) == 3
    assert minapp_emulator.calls["export"] == 3  # one create per part: none refused


def test_split_keeps_the_tables_own_where_and_options(
        local: LocalBackup, minapp_emulator: MinAppEmulator) -> None:
    minapp_emulator.max_export_rows = 1000
    minapp_emulator.job_window = 0.05
    minapp_emulator.add_table(1001, records(2600))
    table = {"id": 1001, "where": {"paid": {"$eq": True}}, "exclude_keys": ["items"],
             "split": {"key": "id", "rows_per_part": 600}}
    ctx = local.context(local.config(local.minapp_source(minapp_emulator, tables=[table],
                                                         max_export_rows=1000, export_interval_seconds=0.05)))

    run = backup_jumping(ctx)

    assert run.status is RunStatus.SUCCEEDED
    (job,) = ctx.state.list_jobs(run.run_id)
    assert job.result is not None and len(job.result.objects) > 2
    wanted = sorted((r for r in minapp_emulator.records(1001) if r["paid"]), key=lambda r: r["id"])
    expected = [{k: v for k, v in r.items() if k != "items"} for r in wanted]
    found: list[dict[str, Any]] = []
    for stored in job.result.objects:
        lines = local.objects.read(stored.key).decode().splitlines()
        found.extend(sorted((json.loads(line) for line in lines), key=lambda r: r["id"]))
    assert found == expected  # every paid record once, in key ranges, without `items`
    assert all(j["options"]["exclude_keys"] == ["items"] for j in our_jobs(minapp_emulator, 1001))


def test_split_on_a_key_with_too_many_equal_values_says_so(
        local: LocalBackup, minapp_emulator: MinAppEmulator) -> None:
    minapp_emulator.max_export_rows = 1000
    minapp_emulator.add_table(1001, [{"kind": "a" if i % 10 else "b"} for i in range(1500)])
    table = {"id": 1001, "split": {"key": "kind", "rows_per_part": 500}}
    ctx = local.context(local.config(local.minapp_source(minapp_emulator, tables=[table],
                                                         max_export_rows=1000, export_interval_seconds=0.05)))

    run = backup_now(ctx)

    (job,) = ctx.state.list_jobs(run.run_id)
    assert job.status is JobStatus.FAILED
    assert "too many records share one value of 'kind'" in (job.error or "")
    assert our_jobs(minapp_emulator, 1001) == []  # found out before exporting anything


def test_split_names_records_without_the_key_even_while_records_arrive(
        local: LocalBackup, minapp_emulator: MinAppEmulator) -> None:
    """Records added while the split is planned must not hide records the key ranges miss:
    those would be in no part, and the backup would pass without them."""
    minapp_emulator.max_export_rows = 1000
    minapp_emulator.job_window = 0.05
    table_records = [{"seq": i} for i in range(1495)] + [{"note": "no seq"} for _ in range(5)]
    minapp_emulator.add_table(1001, table_records)
    minapp_emulator.change_while_read(1001, after_reads=1,  # after the first count
                                      add=[{"seq": 5000 + i} for i in range(10)])
    table = {"id": 1001, "split": {"key": "seq", "rows_per_part": 500}}
    ctx = local.context(local.config(local.minapp_source(minapp_emulator, tables=[table],
                                                         max_export_rows=1000, export_interval_seconds=0.05)))

    run = backup_jumping(ctx)

    (job,) = ctx.state.list_jobs(run.run_id)
    assert job.status is JobStatus.FAILED, job.result
    assert "5 record(s) have no value for 'seq'" in (job.error or "")
    assert our_jobs(minapp_emulator, 1001) == []  # found out before exporting anything


def test_split_of_a_table_losing_records_while_planned_exports_what_is_left(
        local: LocalBackup, minapp_emulator: MinAppEmulator) -> None:
    """Records deleted by the app while the split is planned are not records the ranges
    miss: the backup goes on with the table as it is."""
    minapp_emulator.max_export_rows = 1000
    minapp_emulator.job_window = 0.05
    minapp_emulator.add_table(1001, [{"seq": i} for i in range(1500)])
    minapp_emulator.change_while_read(1001, after_reads=1, delete=10)
    table = {"id": 1001, "split": {"key": "seq", "rows_per_part": 500}}
    ctx = local.context(local.config(local.minapp_source(minapp_emulator, tables=[table],
                                                         max_export_rows=1000, export_interval_seconds=0.05)))

    run = backup_jumping(ctx)

    (job,) = ctx.state.list_jobs(run.run_id)
    assert run.status is RunStatus.SUCCEEDED, job.error
    assert job.result is not None and job.result.records == 1490


def test_table_over_the_limit_without_split_says_how_to_split(
        local: LocalBackup, minapp_emulator: MinAppEmulator) -> None:
    minapp_emulator.max_export_rows = 1000
    minapp_emulator.add_table(1001, records(1200))
    ctx = local.context(local.config(local.minapp_source(minapp_emulator, max_export_rows=1000, export_interval_seconds=0.05)))

    run = backup_now(ctx)

    (job,) = ctx.state.list_jobs(run.run_id)
    assert job.status is JobStatus.FAILED
    error = job.error or ""
    assert "holds 1200 rows" in error and "split: {key: created_at, rows_per_part:" in error
    assert minapp_emulator.calls["export"] == 1


def test_a_refusal_for_size_says_how_to_split_even_when_the_limit_is_set_higher(
        local: LocalBackup, minapp_emulator: MinAppEmulator) -> None:
    minapp_emulator.max_export_rows = 1000  # MinApp's own limit, lower than the source says
    minapp_emulator.add_table(1001, records(1200))
    ctx = local.context(local.config(local.minapp_source(minapp_emulator)))

    run = backup_now(ctx)

    (job,) = ctx.state.list_jobs(run.run_id)
    assert job.status is JobStatus.FAILED
    error = job.error or ""
    assert "导出数据量超过" in error and "split: {key: created_at, rows_per_part:" in error, error
    assert "check the table's export options" not in error


def test_invalid_where_fails_without_retry(local: LocalBackup,
                                           minapp_emulator: MinAppEmulator) -> None:
    minapp_emulator.add_table(1001, records(10))
    table = {"id": 1001, "where": {"total": {"$near": 3}}}
    ctx = local.context(local.config(local.minapp_source(minapp_emulator, tables=[table])))

    run = backup_now(ctx)

    (job,) = ctx.state.list_jobs(run.run_id)
    assert job.status is JobStatus.FAILED
    assert "$near" in (job.error or "") and "check the table's export options" in (job.error or "")
    assert minapp_emulator.calls["export"] == 1


def test_a_refusal_whose_cause_cannot_be_told_waits_instead_of_blaming_the_options(
        local: LocalBackup, minapp_emulator: MinAppEmulator) -> None:
    """MinApp's 400 on create has three documented causes (data export API, 状态码说明:
    "1min 内多次创建任务;数据量超过 100W;数据格式错误"). When the row count that tells them
    apart is itself rate-limited, the cause is unknown: the create is asked again after a
    wait, not failed as if the options were wrong."""
    minapp_emulator.add_table(1001, records(5))
    minapp_emulator.inject("export", 400, times=1, body={"error_msg": "请求失败"})
    minapp_emulator.inject("records", 429, times=READ_TRIES, body=TOO_MANY)
    ctx = local.context(local.config(local.minapp_source(minapp_emulator)))

    run = backup_jumping(ctx)

    (job,) = ctx.state.list_jobs(run.run_id)
    assert job.status is JobStatus.DONE, job.error
    assert run.status is RunStatus.SUCCEEDED
    assert job.attempts == 0  # a wait is not a failed try
    assert minapp_emulator.calls["export"] == 2 and len(our_jobs(minapp_emulator, 1001)) == 1


def test_unknown_table_says_how_to_fix(local: LocalBackup,
                                       minapp_emulator: MinAppEmulator) -> None:
    ctx = local.context(local.config(local.minapp_source(minapp_emulator, tables=[4040])))

    run = backup_now(ctx)

    (job,) = ctx.state.list_jobs(run.run_id)
    assert job.status is JobStatus.FAILED
    assert "no table 4040" in (job.error or "") and "fix the table id" in (job.error or "")


def test_expired_token_is_refreshed_once(local: LocalBackup,
                                         minapp_emulator: MinAppEmulator) -> None:
    minapp_emulator.add_table(1001, records(8))
    minapp_emulator.job_window = 0
    config = local.config(local.minapp_source(minapp_emulator))
    backup_now(local.context(config), key="first")
    assert minapp_emulator.calls["authorize"] == 1
    minapp_emulator.expire_tokens()

    run = backup_now(local.context(config), key="second")  # a new invocation, cached token

    assert run.status is RunStatus.SUCCEEDED
    assert minapp_emulator.calls["authorize"] == 2
    assert minapp_emulator.calls["authorize_redirect"] == 2
    assert minapp_emulator.calls["access_token"] == 2


def test_token_refused_after_refresh_fails_clearly(local: LocalBackup,
                                                   minapp_emulator: MinAppEmulator) -> None:
    minapp_emulator.add_table(1001, records(3))
    minapp_emulator.inject("export", 401, times=2)
    ctx = local.context(local.config(local.minapp_source(minapp_emulator)))

    run = backup_now(ctx)

    (job,) = ctx.state.list_jobs(run.run_id)
    assert job.status is JobStatus.FAILED
    assert "freshly issued token was refused" in (job.error or "")
    assert minapp_emulator.calls["authorize"] == 2


def test_wrong_client_secret_says_so(local: LocalBackup,
                                     minapp_emulator: MinAppEmulator) -> None:
    minapp_emulator.add_table(1001, records(3))
    source = local.minapp_source(minapp_emulator)
    local.environ["MINAPP_CLIENT_SECRET"] = "not-the-client-secret"
    ctx = local.context(local.config(source))

    run = backup_now(ctx)

    (job,) = ctx.state.list_jobs(run.run_id)
    assert job.status is JobStatus.FAILED
    assert "client_id or client_secret of source 'app' is wrong" in (job.error or "")
    assert "not-the-client-secret" not in (job.error or "")
    assert minapp_emulator.calls["authorize"] == 1


@pytest.mark.parametrize("status", [401, 403])
def test_status_access_not_enabled_says_where_to_enable_it(
        local: LocalBackup, minapp_emulator: MinAppEmulator, status: int) -> None:
    minapp_emulator.add_table(1001, records(3))
    minapp_emulator.deny_status_access(status)
    ctx = local.context(local.config(local.minapp_source(minapp_emulator)))

    run = backup_now(ctx)

    (job,) = ctx.state.list_jobs(run.run_id)
    assert job.status is JobStatus.FAILED
    assert f"HTTP {status}" in (job.error or "")
    assert "settings → SDK → general" in (job.error or "")
    assert minapp_emulator.calls["job"] == (2 if status == 401 else 1)  # 401: one fresh token


def test_forgotten_job_is_restarted(local: LocalBackup,
                                    minapp_emulator: MinAppEmulator) -> None:
    minapp_emulator.job_window = 0.2
    minapp_emulator.add_table(1001, records(25))
    minapp_emulator.inject("job", 404, body={"error_msg": "Not found."})
    ctx = local.context(local.config(local.minapp_source(minapp_emulator)))

    run = backup_jumping(ctx)

    assert run.status is RunStatus.SUCCEEDED
    platform_jobs = our_jobs(minapp_emulator, 1001)
    assert len(platform_jobs) == 2  # the forgotten one, and the one that was copied
    (job,) = ctx.state.list_jobs(run.run_id)
    assert job.platform_job_id == platform_jobs[1]["job_id"]
    assert job.result is not None
    assert_export_equals_records(local.objects.read(job.result.key),
                                 minapp_emulator.records(1001), "json")


def test_export_that_never_finishes_fails_at_its_deadline(
        local: LocalBackup, minapp_emulator: MinAppEmulator) -> None:
    minapp_emulator.add_table(1001, records(3))
    minapp_emulator.add_table(1002, records(4))
    minapp_emulator.stall_exports(1001)
    ctx = local.context(local.config(local.minapp_source(minapp_emulator, tables=[1001, 1002]),
                                     export_deadline_minutes=0.01))
    # The pipeline's time moves one check interval a poll and never on its own: the 0.6 s
    # deadline counts polls, so a loaded machine cannot run out 1002's time before its
    # export is copied (it did, in real time).
    clock = MovingClock(utcnow())
    ctx.clock = clock
    run, _ = start_run(ctx, idempotency_key="test", trigger="test")

    run = drive(ctx, run, between_polls=lambda: clock.advance(ctx.config.timing.first_check_seconds))

    assert run.status is RunStatus.FAILED
    jobs = {j.collection: j for j in ctx.state.list_jobs(run.run_id)}
    assert jobs["1002"].status is JobStatus.DONE
    failed = jobs["1001"]
    assert failed.status is JobStatus.FAILED
    assert failed.deadline_at is not None and failed.finished_at is not None
    assert failed.finished_at >= failed.deadline_at  # failed at its deadline, not before
    assert "did not finish within 0.01 minutes" in (failed.error or "")
    assert (failed.platform_job_id or "?") in (failed.error or "")
    manifest = json.loads(local.objects.read(run.manifest_key or ""))
    assert [j["collection"] for j in manifest["jobs"] if j["status"] == "failed"] == ["1001"]


def test_expired_link_and_cut_download_are_retried_through_redirects(local: LocalBackup,
                                                   minapp_emulator: MinAppEmulator) -> None:
    minapp_emulator.add_table(1001, records(3000))
    minapp_emulator.expire_next_links(1)
    minapp_emulator.truncate_downloads(1)
    minapp_emulator.redirect_downloads = True  # links that go through a CDN-like 302
    ctx = local.context(local.config(local.minapp_source(minapp_emulator)))

    run = backup_now(ctx)

    assert run.status is RunStatus.SUCCEEDED
    (job,) = ctx.state.list_jobs(run.run_id)
    assert job.result is not None
    assert_export_equals_records(local.objects.read(job.result.key),
                                 minapp_emulator.records(1001), "json")
    assert minapp_emulator.download_statuses.count(403) == 1
    assert len(our_jobs(minapp_emulator, 1001)) == 1


def test_json_export_that_is_not_json_lines_is_never_stored(
        local: LocalBackup, minapp_emulator: MinAppEmulator) -> None:
    minapp_emulator.json_array_exports = True
    minapp_emulator.add_table(1001, records(30))
    config = local.config(local.minapp_source(minapp_emulator))
    ctx = local.context(config)

    run = backup_now(ctx)

    (job,) = ctx.state.list_jobs(run.run_id)
    assert job.status is JobStatus.FAILED
    assert "not one JSON object per line (it starts with '[')" in (job.error or "")
    assert local.objects.list(f"{config.destination.prefix}/runs/{run.run_id}/app") == []


def test_all_tables_are_listed_at_each_run_with_include_and_exclude(
        local: LocalBackup, minapp_emulator: MinAppEmulator) -> None:
    minapp_emulator.add_table(1001, records(30), name="orders")
    minapp_emulator.add_table(1002, records(5, seed=22, prefix="u"), name="users")
    minapp_emulator.add_table(1003, records(2, seed=23), name="orders_tmp")
    source = local.minapp_source(minapp_emulator, tables="all", include=["order*"],
                                 exclude=["*_tmp"])
    ctx = local.context(local.config(source))

    run = backup_now(ctx)

    assert run.status is RunStatus.SUCCEEDED
    (job,) = ctx.state.list_jobs(run.run_id)
    assert job.collection == "1001" and job.result is not None
    assert_export_equals_records(local.objects.read(job.result.key),
                                 minapp_emulator.records(1001), "json")
    discovery = json.loads(local.objects.read(run.manifest_key or ""))["discovery"]["app"]
    assert discovery["found"] == ["orders", "orders_tmp", "users"]
    assert discovery["excluded"] == ["orders_tmp", "users"]
    assert minapp_emulator.calls["tables"] >= 1


def test_a_table_deleted_while_the_tables_are_listed_hides_no_other(
        local: LocalBackup, minapp_emulator: MinAppEmulator) -> None:
    """The table list is paged by offset (open-api/data/table.md: meta.limit, offset,
    total_count): a table deleted between two pages shifts the rest by one, and the table
    at the page edge would be in neither page. The listing is read again when its
    total_count moved."""
    for number in range(150):
        if number != 10:  # t10 is deleted while the first page is read
            minapp_emulator.add_table(2000 + number, [], name=f"t{number}")
    before = [{"id": 2000 + n, "name": f"t{n}"} for n in range(150)]
    minapp_emulator.inject("tables", 200, body={  # first page: t10 still there
        "objects": before[:100], "meta": {"limit": 100, "offset": 0, "total_count": 150,
                                          "next": "?limit=100&offset=100", "previous": None}})
    minapp_emulator.inject("tables", 200, body={  # second page: offset 100 is t101 now
        "objects": before[101:], "meta": {"limit": 100, "offset": 100, "total_count": 149,
                                          "next": None, "previous": "?limit=100&offset=0"}})
    provider = local.context(local.config(
        local.minapp_source(minapp_emulator, tables="all"))).platforms.get("app")
    assert isinstance(provider, MinAppClient)

    listed = provider.collections()

    assert sorted(map(int, listed)) == [2000 + n for n in range(150) if n != 10]


def test_tables_given_by_name_are_resolved_at_each_run(
        local: LocalBackup, minapp_emulator: MinAppEmulator) -> None:
    minapp_emulator.add_table(1001, records(30), name="orders")
    minapp_emulator.add_table(1002, records(5, seed=22, prefix="u"), name="users")
    source = local.minapp_source(minapp_emulator, tables=["users", {"name": "orders", "mode": "all"}])
    ctx = local.context(local.config(source))

    run = backup_now(ctx)

    assert run.status is RunStatus.SUCCEEDED
    assert sorted(j.collection for j in ctx.state.list_jobs(run.run_id)) == ["1001", "1002"]
    discovery = json.loads(local.objects.read(run.manifest_key or ""))["discovery"]["app"]
    assert discovery["resolved"] == {"users": "1002", "orders": "1001"}


def test_an_unknown_table_name_fails_the_source_naming_it(
        local: LocalBackup, minapp_emulator: MinAppEmulator) -> None:
    minapp_emulator.add_table(1001, records(3), name="orders")
    ctx = local.context(local.config(local.minapp_source(minapp_emulator, tables=["ordres"])))

    run = backup_now(ctx)

    assert run.status is RunStatus.FAILED
    error = json.loads(local.objects.read(run.manifest_key or ""))["discovery"]["app"]["error"]
    assert "'ordres'" in error and "check the name" in error


# --- HTTP 429 on reads: asked again within the call, then waited out, never fatal --------
TOO_MANY = {"error_msg": "Too Many Requests"}


def test_a_status_read_rate_limited_once_is_asked_again(
        local: LocalBackup, minapp_emulator: MinAppEmulator) -> None:
    minapp_emulator.add_table(1001, records(5))
    minapp_emulator.inject("job", 429, times=1, body=TOO_MANY)
    ctx = local.context(local.config(local.minapp_source(minapp_emulator)))

    run = backup_now(ctx)

    (job,) = ctx.state.list_jobs(run.run_id)
    assert job.status is JobStatus.DONE, job.error
    assert run.status is RunStatus.SUCCEEDED


def test_a_status_read_still_rate_limited_waits_instead_of_failing(
        local: LocalBackup, minapp_emulator: MinAppEmulator) -> None:
    minapp_emulator.add_table(1001, records(5))
    ctx = local.context(local.config(local.minapp_source(minapp_emulator)))
    run, _ = start_run(ctx, idempotency_key="test", trigger="test")
    minapp_emulator.inject("job", 429, times=READ_TRIES, body=TOO_MANY)
    time.sleep(0.05)  # past first_check_seconds: the status check is due

    poll(ctx)

    (job,) = ctx.state.list_jobs(run.run_id)
    assert job.status is JobStatus.EXPORTING, job.error  # waiting, not failed
    assert job.attempts == 0  # a wait is not a failed try
    assert "HTTP 429" in (job.error or "") and f"{READ_TRIES} time(s)" in (job.error or "")
    assert (job.error or "").endswith("; waiting, asked again later")  # the poller's word
    assert job.next_check_at > ctx.clock() + timedelta(seconds=30)
    assert minapp_emulator.calls["job"] == READ_TRIES  # asked again within the call


def test_an_unknown_answer_to_a_status_read_still_fails_the_job(
        local: LocalBackup, minapp_emulator: MinAppEmulator) -> None:
    minapp_emulator.add_table(1001, records(5))
    minapp_emulator.inject("job", 418, times=1, body={"error_msg": "I'm a teapot"})
    ctx = local.context(local.config(local.minapp_source(minapp_emulator)))

    run = backup_now(ctx)

    (job,) = ctx.state.list_jobs(run.run_id)
    assert job.status is JobStatus.FAILED
    assert "HTTP 418" in (job.error or "") and "not a known answer" in (job.error or "")


def test_a_table_listing_rate_limited_once_is_asked_again_after_retry_after(
        local: LocalBackup, minapp_emulator: MinAppEmulator) -> None:
    minapp_emulator.add_table(1001, records(5), name="orders")
    minapp_emulator.inject("tables", 429, times=1, body=TOO_MANY, headers={"Retry-After": "1"})
    ctx = local.context(local.config(local.minapp_source(minapp_emulator, tables="all")))

    began = time.monotonic()
    run, _ = start_run(ctx, idempotency_key="test", trigger="test")
    waited = time.monotonic() - began
    run = drive(ctx, run)

    assert run.status is RunStatus.SUCCEEDED, [j.error for j in ctx.state.list_jobs(run.run_id)]
    assert waited >= 1.0  # the platform's Retry-After, not the 0.01 s backoff
    assert minapp_emulator.calls["tables"] == 2


def test_a_table_listing_still_rate_limited_fails_the_run_saying_what_to_do(
        local: LocalBackup, minapp_emulator: MinAppEmulator) -> None:
    minapp_emulator.add_table(1001, records(5), name="orders")
    minapp_emulator.inject("tables", 429, times=READ_TRIES, body=TOO_MANY)
    ctx = local.context(local.config(local.minapp_source(minapp_emulator, tables="all")))

    run = backup_now(ctx)

    assert run.status is RunStatus.FAILED
    error = json.loads(local.objects.read(run.manifest_key or ""))["discovery"]["app"]["error"]
    assert "HTTP 429" in error and "could not be listed" in error
    assert "start the backup again" in error and "again later" not in error
    assert minapp_emulator.calls["tables"] == READ_TRIES


def test_an_undocumented_job_status_waits_naming_it_then_goes_on(
        local: LocalBackup, minapp_emulator: MinAppEmulator) -> None:
    """The export job page documents pending, ready and finish; another status may be a new
    in-between state, so the job waits (not spending its tries), its error saying what came."""
    minapp_emulator.add_table(1001, records(3))
    minapp_emulator.answer_status("queued", times=8)  # more than max_attempts (5) checks
    ctx = local.context(local.config(local.minapp_source(minapp_emulator)))
    clock = JumpClock()
    ctx.clock = clock
    run, _ = start_run(ctx, idempotency_key="test", trigger="test")
    errors: list[str] = []

    def watch() -> None:
        errors.extend(j.error or "" for j in ctx.state.list_jobs(run.run_id))
        clock.jump_to(min(j.next_check_at for j in ctx.state.list_jobs(run.run_id)))

    run = drive(ctx, run, 60, between_polls=watch)

    assert run.status is RunStatus.SUCCEEDED
    said = [e for e in errors if "'queued'" in e]
    assert said and all("api_base" in e and "pending, ready, finish" in e for e in said)


def test_an_undocumented_job_status_at_the_deadline_fails_naming_it(
        local: LocalBackup, minapp_emulator: MinAppEmulator) -> None:
    minapp_emulator.add_table(1001, records(3))
    minapp_emulator.answer_status("queued", times=10_000)
    ctx = local.context(local.config(local.minapp_source(minapp_emulator),
                                     export_deadline_minutes=3))

    run = backup_jumping(ctx)

    (job,) = ctx.state.list_jobs(run.run_id)
    error = job.error or ""
    assert job.status is JobStatus.FAILED
    assert "did not finish within 3 minutes" in error
    assert "'queued'" in error and "api_base" in error


def test_an_undocumented_job_status_waits_only_a_bounded_time(
        local: LocalBackup, minapp_emulator: MinAppEmulator, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(minapp_platform, "UNDOCUMENTED_STATUS_WAIT", timedelta(seconds=1),
                        raising=False)
    minapp_emulator.add_table(1001, records(3))
    minapp_emulator.answer_status("queued", times=10_000)
    ctx = local.context(local.config(local.minapp_source(minapp_emulator)))

    run = backup_jumping(ctx)  # the pipeline's waits jumped; the bound runs on real time

    (job,) = ctx.state.list_jobs(run.run_id)
    error = job.error or ""
    assert job.status is JobStatus.FAILED
    assert "did not finish within" not in error  # the bound, not the six-hour deadline
    assert "'queued'" in error and "api_base" in error and "pending, ready, finish" in error
