"""Restores through the service layer over fakes: the plan's refusals, a file import
followed to its end, an import that falls short, a platform without import status
(counted instead), a damaged backup, and a row-by-row restore killed and resumed. The
same flows run against the emulators over HTTP in tests/test_restore_*.py."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, cast

import pytest

import shared.service.prune as prune_module
from shared.config.model import Retention
from shared.domain.errors import Retryable
from shared.domain.jobs import PRUNING, JobStatus, Run, RunStatus
from shared.ports import ImportProgress, Progress, RestoreMode, RowOutcome
from shared.service.finish import finish
from shared.service.holds import claim
from shared.service.poll import poll
from shared.service.restore.plan import RestoreRefused, plan_restore, restoring, start_restore
from shared.service.start import start_run
from shared.service.verify import latest_run
from tests.unit.support import (
    FakePlatforms,
    ScriptedExport,
    ScriptedPages,
    Unit,
    backed_up,
    minutes_of_ticks,
    polled_unclaimed,
    unit,
)

ROWS = [{"_id": f"d{i}", "n": i} for i in range(5)]


@dataclass
class ImportingExport(ScriptedExport):
    """An export platform that also imports: files land in `data` when the import ends."""

    modes: frozenset[str] = frozenset({"new", "insert", "upsert"})
    reports: bool = True  # False: no import id, no status (MinApp)
    polls_before_done: int = 1
    shortfall: int = 0  # records the import "rejects"
    imports: dict[str, tuple[str, list[dict[str, Any]], int]] = field(default_factory=dict)
    sent_names: list[str] = field(default_factory=list)

    @property
    def restore_modes(self) -> frozenset[str]:
        return self.modes

    def target_exists(self, collection: str) -> bool:
        return collection in self.data

    def create_target(self, collection: str, like: str) -> None:
        self.data.setdefault(collection, [])

    def count(self, collection: str) -> int:
        return len(self.data.get(collection, []))

    def send_import(self, collection: str, mode: RestoreMode, *, file_type: str, name: str,
                    chunks: Iterable[bytes], size: int) -> str | None:
        body = b"".join(chunks)  # a fake may hold it: the real ones stream
        assert len(body) == size
        docs = [json.loads(line) for line in body.splitlines() if line.strip()]
        self.sent_names.append(name)
        import_id = f"import-{len(self.imports) + 1}"
        self.imports[import_id] = (collection, docs, self.polls_before_done)
        if not self.reports:
            self._apply(import_id)
            return None
        return import_id

    def check_import(self, collection: str, import_id: str) -> ImportProgress:
        if self._still_running(import_id):
            return ImportProgress("running")
        imported = self._apply(import_id)
        return ImportProgress("done", imported=imported,
                              rejected=len(self.imports[import_id][1]) - imported)

    def _still_running(self, import_id: str) -> bool:
        """One more check of a running import: it ends after `polls_before_done` checks."""
        target, docs, left = self.imports[import_id]
        if left > 0:
            self.imports[import_id] = (target, docs, left - 1)
        return left > 0

    def _apply(self, import_id: str) -> int:
        target, docs, _ = self.imports[import_id]
        kept = docs[:len(docs) - self.shortfall]
        if self.data.get(target) is None or not any(d in self.data[target] for d in kept):
            self.data.setdefault(target, []).extend(kept)
        return len(kept)


class Killed(BaseException):
    """The process died: nothing of the finisher runs after it."""


@dataclass
class WritablePages(ScriptedPages):
    """A row-by-row platform: rows keyed by `_id`; `die_after` kills the writer."""

    die_after: int | None = None
    calls: int = 0
    exists: set[str] = field(default_factory=set)

    @property
    def restore_modes(self) -> frozenset[str]:
        return frozenset({"new", "insert", "upsert"})

    def target_exists(self, collection: str) -> bool:
        return collection in self.data or collection in self.exists

    def create_target(self, collection: str, like: str) -> None:
        self.data.setdefault(collection, [])

    def count(self, collection: str) -> int:
        return len(self.data.get(collection, []))

    def write_row(self, collection: str, mode: RestoreMode, line: bytes) -> RowOutcome:
        self.calls += 1
        if self.die_after is not None and self.calls > self.die_after:
            raise Killed()
        row = json.loads(line)
        rows = self.data.setdefault(collection, [])
        for index, there in enumerate(rows):
            if there["_id"] == row["_id"]:
                if mode == "upsert":
                    rows[index] = row
                return "kept" if mode != "upsert" else "written"
        rows.append(row)
        return "written"


def drive(u: Unit, restore_id: str, rounds: int = 10) -> None:
    for _ in range(rounds):
        poll(u.ctx)
        for job_id in list(u.dispatcher.dispatched):
            finish(u.ctx, job_id)
        u.dispatcher.dispatched.clear()
        run = u.state.get_run(restore_id)
        if run is not None and run.status is not RunStatus.RUNNING:
            return
        u.clock.advance(70)


def test_a_restore_into_a_new_collection_is_followed_to_its_end_and_reported() -> None:
    platform = ImportingExport({"orders": list(ROWS)}, polls_before_done=2)
    u = unit(platform)
    backup = backed_up(u)
    plan = plan_restore(u.ctx, backup, "shop", "orders")
    assert plan.order.target == f"orders_r{backup[:8]}{backup[9:13]}"
    assert not plan.target_exists and not plan.writes_into_existing
    run, created = start_restore(u.ctx, plan, idempotency_key="r1", trigger="test")
    assert created and run.operation == "restore"
    assert start_restore(u.ctx, plan, idempotency_key="r1", trigger="test") == (run, False)

    drive(u, run.run_id)
    [job] = u.state.list_jobs(run.run_id)
    assert job.status is JobStatus.DONE, job.error
    assert platform.data[plan.order.target] == ROWS
    assert platform.data["orders"] == ROWS  # the original untouched
    assert (job.checkpoint or {})["imported"] == len(ROWS)
    closed = u.state.get_run(run.run_id)
    assert closed is not None and closed.status is RunStatus.SUCCEEDED
    assert closed.manifest_key and closed.manifest_key.endswith(f"restores/{run.run_id}.json")
    record = json.loads(u.objects.read(closed.manifest_key))
    assert record["restores"][0]["target"] == plan.order.target
    assert u.notifier.sent[-1][0].run_id == run.run_id
    assert latest_run(u.ctx) == backup  # a restore is not a backup to verify


def test_an_import_that_writes_fewer_records_than_the_backup_fails_saying_so() -> None:
    platform = ImportingExport({"orders": list(ROWS)})
    u = unit(platform)
    backup = backed_up(u)
    platform.shortfall = 2
    run, _ = start_restore(u.ctx, plan_restore(u.ctx, backup, "shop", "orders"),
                           idempotency_key="r", trigger="test")
    drive(u, run.run_id)
    [job] = u.state.list_jobs(run.run_id)
    assert job.status is JobStatus.FAILED
    assert "imported 3 of the backup's 5 records" in (job.error or "")
    assert u.state.get_run(run.run_id).status is RunStatus.FAILED  # type: ignore[union-attr]


def test_a_platform_without_import_status_is_checked_by_counting_until_the_deadline() -> None:
    platform = ImportingExport({"orders": list(ROWS)}, reports=False,
                               modes=frozenset({"new", "insert"}))
    u = unit(platform, export_deadline_minutes=10)
    backup = backed_up(u)
    with pytest.raises(RestoreRefused, match="restores only in mode insert or new"):
        plan_restore(u.ctx, backup, "shop", "orders", mode="upsert")
    run, _ = start_restore(u.ctx, plan_restore(u.ctx, backup, "shop", "orders"),
                           idempotency_key="ok", trigger="test")
    drive(u, run.run_id)
    [job] = u.state.list_jobs(run.run_id)
    assert job.status is JobStatus.DONE and job.progress_records == len(ROWS)

    platform.shortfall = 1  # records that never arrive: the count stays short
    run, _ = start_restore(u.ctx, plan_restore(u.ctx, backup, "shop", "orders", into="again"),
                           idempotency_key="short", trigger="test")
    drive(u, run.run_id, rounds=20)
    [job] = u.state.list_jobs(run.run_id)
    assert job.status is JobStatus.FAILED
    assert "did not end within 10 minutes" in (job.error or "")
    assert "holds 4 records; 5 expected" in (job.error or "")
    assert "e-mail" in (job.error or "")



def test_an_insert_is_not_done_when_it_rejects_more_records_than_the_target_held() -> None:
    platform = ImportingExport({"orders": list(ROWS)})
    u = unit(platform)
    backup = backed_up(u)
    platform.data["orders"] = [{"_id": "other", "n": 99}]  # one unrelated record there
    platform.shortfall = 4  # 4 of the 5 rejected: at most 1 can be an id already there
    plan = plan_restore(u.ctx, backup, "shop", "orders", into="orders", mode="insert")
    run, _ = start_restore(u.ctx, plan, idempotency_key="ins", trigger="test")
    drive(u, run.run_id)
    [job] = u.state.list_jobs(run.run_id)
    assert job.status is JobStatus.FAILED, (job.checkpoint or {}).get("note")
    assert "imported 1 of the backup's 5 records into orders and rejected 4" in (job.error or "")
    assert "held only 1 before the import" in (job.error or "")



@dataclass
class ConflictImports(ImportingExport):
    """Imports as WeChat's databasemigrateimport does: conflict_mode 1 (insert) rejects a
    document whose _id is there (record_fail); 2 (upsert, also used for new) overwrites it."""

    modes_sent: dict[str, str] = field(default_factory=dict)

    def send_import(self, collection: str, mode: RestoreMode, *, file_type: str, name: str,
                    chunks: Iterable[bytes], size: int) -> str | None:
        import_id = super().send_import(collection, mode, file_type=file_type, name=name,
                                        chunks=chunks, size=size)
        assert import_id is not None
        self.modes_sent[import_id] = mode
        return import_id

    def check_import(self, collection: str, import_id: str) -> ImportProgress:
        if self._still_running(import_id):
            return ImportProgress("running")
        target, docs, _ = self.imports[import_id]
        rows = self.data.setdefault(target, [])
        there = {r["_id"] for r in rows}
        fresh = [d for d in docs if d["_id"] not in there]
        rows.extend(fresh)
        if self.modes_sent[import_id] == "insert":
            return ImportProgress("done", imported=len(fresh), rejected=len(docs) - len(fresh))
        return ImportProgress("done", imported=len(docs), rejected=0)


def test_an_insert_into_an_empty_target_sent_again_after_its_import_id_was_lost_is_done() -> None:
    platform = ConflictImports({"orders": list(ROWS), "empty": []}, polls_before_done=0)
    u = unit(platform)
    backup = backed_up(u)
    plan = plan_restore(u.ctx, backup, "shop", "orders", into="empty", mode="insert")
    run, _ = start_restore(u.ctx, plan, idempotency_key="ins", trigger="test")
    poll(u.ctx)
    [job] = u.state.list_jobs(run.run_id)
    real_send = platform.send_import

    def send_then_die(*args: Any, **kw: Any) -> str | None:
        real_send(*args, **kw)  # the platform accepted the import...
        raise Killed()  # ...and the finisher died before it saved the id

    platform.send_import = send_then_die  # type: ignore[method-assign]
    with pytest.raises(Killed):
        finish(u.ctx, job.job_id)
    platform.check_import("empty", "import-1")  # the lost import runs to its end
    platform.send_import = real_send  # type: ignore[method-assign]
    u.clock.advance(u.ctx.config.timing.copy_lease_seconds + 1)
    drive(u, run.run_id)

    [job] = u.state.list_jobs(run.run_id)
    assert platform.data["empty"] == ROWS  # every record of the backup there, once
    assert job.status is JobStatus.DONE, job.error
    assert (job.checkpoint or {})["resent"] == [0]
    assert "(0 before the import and 5 put there by parts sent twice)" in (job.checkpoint or {})["note"]


@dataclass
class QueuedImports(ImportingExport):
    """Like MinApp: send_import answers at once with no id; the import task runs later
    (when the test calls run_queued), adding the records whose ids are not there yet."""

    queued: list[tuple[str, list[dict[str, Any]]]] = field(default_factory=list)

    def send_import(self, collection: str, mode: RestoreMode, *, file_type: str, name: str,
                    chunks: Iterable[bytes], size: int) -> str | None:
        body = b"".join(chunks)
        self.queued.append((collection, [json.loads(x) for x in body.splitlines() if x.strip()]))
        return None

    def run_queued(self) -> None:
        for collection, docs in self.queued:
            rows = self.data.setdefault(collection, [])
            there = {r["_id"] for r in rows}
            rows.extend(d for d in docs if d["_id"] not in there)
        self.queued.clear()


def counted_insert(there: list[dict[str, Any]], **timing: Any) -> tuple[QueuedImports, Unit, str]:
    """A restore in mode insert into `orders`, which holds `there`, on a platform that
    reports nothing; its import sent, not yet run. The platform, the unit, the restore id."""
    platform = QueuedImports({"orders": list(ROWS)}, reports=False,
                             modes=frozenset({"new", "insert"}))
    u = unit(platform, **timing)
    backup = backed_up(u)
    platform.data["orders"] = there
    plan = plan_restore(u.ctx, backup, "shop", "orders", into="orders", mode="insert")
    run, _ = start_restore(u.ctx, plan, idempotency_key="ins", trigger="test")
    return platform, u, run.run_id


def test_a_counted_insert_is_not_done_while_the_count_has_not_moved_since_the_import_was_sent() -> None:
    # since the backup, its 5 records were lost and 10 others written
    platform, u, restore_id = counted_insert([{"_id": f"new{i}", "n": i} for i in range(10)])
    drive(u, restore_id, rounds=3)  # two equal counts: the import task has not run yet
    [job] = u.state.list_jobs(restore_id)
    assert job.status is JobStatus.IMPORTING, (job.status, (job.checkpoint or {}).get("note"))
    assert "still holds the 10 records it held before the import was sent" in (job.error or "")

    platform.run_queued()
    drive(u, restore_id)
    [job] = u.state.list_jobs(restore_id)
    assert job.status is JobStatus.DONE, job.error
    assert job.progress_records == len(ROWS) and len(platform.data["orders"]) == 15


def test_a_counted_insert_that_rose_then_stopped_is_done_saying_records_were_kept() -> None:
    platform, u, restore_id = counted_insert([dict(r) for r in ROWS[:2]])
    drive(u, restore_id, rounds=2)
    platform.run_queued()  # 3 of the 5 are new; the 2 already there are kept
    drive(u, restore_id)
    [job] = u.state.list_jobs(restore_id)
    assert job.status is JobStatus.DONE, job.error
    point = job.checkpoint or {}
    assert point["imported"] == 3 and "went from 2 to 5 records" in point["note"]


def test_a_counted_insert_whose_count_never_moves_fails_at_the_deadline_saying_what_is_known() -> None:
    platform, u, restore_id = counted_insert([dict(r) for r in ROWS], export_deadline_minutes=10)
    drive(u, restore_id, rounds=2)
    platform.run_queued()  # every id of the backup is there: nothing added
    drive(u, restore_id, rounds=20)
    [job] = u.state.list_jobs(restore_id)
    assert job.status is JobStatus.FAILED
    error = job.error or ""
    assert "did not end within 10 minutes" in error
    assert "still holds the 5 records it held before the import was sent" in error
    assert "e-mail" in error and "mode new" in error  # no upsert here: a new table instead


def test_the_plan_refuses_what_would_lose_or_mix_data() -> None:
    platform = ImportingExport({"orders": list(ROWS), "full": [{"_id": "x"}]},
                               polls_before_done=50)
    u = unit(platform)
    backup = backed_up(u)
    cases: list[tuple[dict[str, Any], int, str]] = [
        ({"run_id": "20990101T000000000Z-00000000"}, 404, "no backup run"),
        ({"collection": "nope"}, 404, "has no backup of shop/nope"),
        ({"into": "full"}, 409, "exists and holds records"),
        ({"mode": "replace"}, 400, "mode must be one of"),
    ]
    for change, status, words in cases:
        ask: dict[str, Any] = {"run_id": backup, "collection": "orders", **change}
        with pytest.raises(RestoreRefused, match=words) as refused:
            plan_restore(u.ctx, ask.pop("run_id"), "shop", ask.pop("collection"), **ask)
        assert refused.value.status == status
    start_restore(u.ctx, plan_restore(u.ctx, backup, "shop", "orders", into="busy"),
                  idempotency_key="busy", trigger="test")
    with pytest.raises(RestoreRefused, match="is writing into shop/busy") as refused:
        plan_restore(u.ctx, backup, "shop", "orders", into="busy")
    assert refused.value.status == 409
    [backup_job] = [j for j in u.state.list_jobs(backup) if j.collection == "orders"]
    assert backup_job.job_id in restoring(u.ctx)  # retention keeps what is being restored


def test_a_backup_that_fails_its_verify_is_refused_unless_forced_and_a_damaged_one_imports_nothing() -> None:
    platform = ImportingExport({"orders": list(ROWS)})
    u = unit(platform)
    backup = backed_up(u)
    [job] = u.state.list_jobs(backup)
    assert job.result is not None
    key = job.result.objects[0].key
    good = u.objects.read(key)
    u.objects.delete(key)
    with pytest.raises(RestoreRefused, match="failed its verify: missing object") as refused:
        plan_restore(u.ctx, backup, "shop", "orders")
    assert refused.value.status == 409 and refused.value.field == "force"

    u.objects.put_stream(key, [good[:-3] + b"X}\n"], content_type="x")  # same size, one byte off
    plan = plan_restore(u.ctx, backup, "shop", "orders", force=True)
    assert plan.order.forced or not plan.problems  # the fake store keeps no CRC64
    run, _ = start_restore(u.ctx, plan, idempotency_key="bad", trigger="test")
    drive(u, run.run_id)
    [restore] = u.state.list_jobs(run.run_id)
    assert restore.status is JobStatus.FAILED
    assert "no longer matches its manifest" in (restore.error or "")
    assert platform.imports == {}  # the upload was cut before any import started


@dataclass
class CsvExport(ImportingExport):
    """An export platform whose backups are CSV: a header row, then a row a record."""

    file_type: str = "csv"

    def open(self, collection: str, platform_job_id: str, part: int = 0, *,
             file_type: str | None = None) -> Iterator[bytes]:
        rows = self.data[collection]
        yield ",".join(rows[0]).encode() + b"\n"
        for row in rows:
            yield ",".join(str(v) for v in row.values()).encode() + b"\n"


def test_a_restore_reads_the_backup_in_the_file_type_it_was_made_with_not_the_configs() -> None:
    platform = ImportingExport({"orders": list(ROWS)})
    u = unit(platform)
    backup = backed_up(u)
    [job] = u.state.list_jobs(backup)
    assert job.result is not None and job.result.key.endswith(".jsonl")
    platform.file_type = "csv"  # the source's config switched since

    plan = plan_restore(u.ctx, backup, "shop", "orders")
    assert plan.order.file_type == "json" and plan.view()["file_type"] == "json"

    u.objects.put_json(job.result.manifest_key, {"damaged": True})  # no file_type: the key says
    plan = plan_restore(u.ctx, backup, "shop", "orders", force=True)
    assert plan.order.file_type == "json"


def test_a_backup_whose_file_type_neither_its_manifest_nor_its_key_says_is_refused() -> None:
    u = unit(ImportingExport({"orders": list(ROWS)}))
    backup = backed_up(u)
    [job] = u.state.list_jobs(backup)
    assert job.result is not None
    [stored] = job.result.objects
    moved = stored.model_copy(update={"key": stored.key.removesuffix(".jsonl") + ".bak"})
    u.objects.put_stream(moved.key, [u.objects.read(stored.key)], content_type="x")
    u.put(job.model_copy(update={"result": job.result.model_copy(update={"objects": [moved]})}))
    u.objects.put_json(job.result.manifest_key, {"objects": []})  # says no file_type

    with pytest.raises(RestoreRefused, match="cannot tell which file type") as refused:
        plan_restore(u.ctx, backup, "shop", "orders", force=True)
    assert refused.value.status == 409 and refused.value.field == "run_id"
    assert job.result.manifest_key in str(refused.value) and moved.key in str(refused.value)


def test_a_csv_backup_is_refused_by_a_source_that_restores_row_by_row() -> None:
    """A row-by-row restore (OneDB) sends each line as one row's JSON: a CSV backup made
    when the source's name was another kind of source cannot go back through it."""
    u = unit(CsvExport({"orders": list(ROWS)}))
    backup = backed_up(u)
    cast(FakePlatforms, u.ctx.platforms).platform = WritablePages({"orders": []})

    with pytest.raises(RestoreRefused, match=r"is a csv file.*restores only json") as refused:
        plan_restore(u.ctx, backup, "shop", "orders", into="copy", force=True)
    assert refused.value.status == 409 and refused.value.field == "source"


def test_an_archived_backup_is_refused_before_anything_is_made_until_cos_restored_it() -> None:
    platform = ImportingExport({"orders": list(ROWS)})
    u = unit(platform)
    backup = backed_up(u)
    [job] = u.state.list_jobs(backup)
    assert job.result is not None
    [stored] = job.result.objects
    u.objects.set_storage_class(stored.key, "ARCHIVE")  # retention's cold_after_days moved it
    for force in (False, True):  # forcing cannot make COS read it
        with pytest.raises(RestoreRefused) as refused:
            plan_restore(u.ctx, backup, "shop", "orders", force=force)
        assert refused.value.status == 409 and refused.value.field == "run_id"
        message = str(refused.value)
        assert f"{stored.key} (ARCHIVE)" in message and "POST Object restore" in message
        assert "436/12633" in message and "force does not help" in message
    assert set(platform.data) == {"orders"}  # no target made

    u.objects.thawed.add(stored.key)  # POST Object restore made a readable copy
    plan = plan_restore(u.ctx, backup, "shop", "orders")
    run, _ = start_restore(u.ctx, plan, idempotency_key="thawed", trigger="test")
    drive(u, run.run_id)
    [restore] = u.state.list_jobs(run.run_id)
    assert restore.status is JobStatus.DONE, restore.error
    assert platform.data[plan.order.target] == ROWS



@dataclass
class SplitExport(ImportingExport):
    """An export that comes in two parts (rows 0-1, rows 2-4), like a split WeChat export."""

    def check(self, collection: str, platform_job_id: str) -> Any:
        rows = len(self.data[collection])
        return Progress("ready", expected_records=rows, part_records=[2, rows - 2])

    def open(self, collection: str, platform_job_id: str, part: int = 0, *,
             file_type: str | None = None) -> Any:
        rows = self.data[collection][:2] if part == 0 else self.data[collection][2:]
        for row in rows:
            yield json.dumps(row).encode() + b"\n"


def test_a_split_backup_with_a_damaged_second_part_imports_nothing_and_makes_nothing() -> None:
    platform = SplitExport({"orders": list(ROWS)}, polls_before_done=0)
    u = unit(platform)
    backup = backed_up(u)
    [job] = u.state.list_jobs(backup)
    assert job.result is not None and len(job.result.objects) == 2
    second = job.result.objects[1]
    good = u.objects.read(second.key)
    u.objects.objects[second.key] = good[:-3] + b"X}\n"  # same size, one byte off
    plan = plan_restore(u.ctx, backup, "shop", "orders")
    assert not plan.problems  # size matches; the fake keeps no CRC64 (an older manifest)
    run, _ = start_restore(u.ctx, plan, idempotency_key="split", trigger="test")
    drive(u, run.run_id)

    [restore] = u.state.list_jobs(run.run_id)
    assert restore.status is JobStatus.FAILED
    assert f"backup object {second.key} no longer matches its manifest" in (restore.error or "")
    # an import the platform accepted runs on its own (WeChat, MinApp): nothing may be sent
    assert platform.imports == {}, f"part 1 was sent before part 2 was checked: {platform.imports}"
    assert plan.order.target not in platform.data  # nor the target made


def test_a_split_backup_is_checked_whole_then_sent_part_by_part() -> None:
    platform = SplitExport({"orders": list(ROWS)}, polls_before_done=0)
    u = unit(platform)
    backup = backed_up(u)
    plan = plan_restore(u.ctx, backup, "shop", "orders")
    run, _ = start_restore(u.ctx, plan, idempotency_key="split", trigger="test")
    drive(u, run.run_id)
    [restore] = u.state.list_jobs(run.run_id)
    assert restore.status is JobStatus.DONE, restore.error
    assert platform.data[plan.order.target] == ROWS
    point = restore.checkpoint or {}
    assert point["verified"] == 2 and len(point["sent"]) == 2


def test_a_row_restore_killed_mid_way_resumes_without_losing_or_doubling_a_row() -> None:
    rows = [{"_id": f"r{i:05d}", "n": i} for i in range(2600)]
    platform = WritablePages({"orders": rows}, page_rows=500)
    u = unit(platform, kind="paged", restore_row_concurrency=4)
    backup = backed_up(u)
    platform.die_after = 1700  # mid-way through the second window of 1000
    run, _ = start_restore(u.ctx, plan_restore(u.ctx, backup, "shop", "orders", into="copy"),
                           idempotency_key="rows", trigger="test")
    poll(u.ctx)  # hands the restore to the finisher
    [job] = u.state.list_jobs(run.run_id)
    with pytest.raises(Killed):
        finish(u.ctx, job.job_id)
    stopped = u.job(job.job_id)
    assert stopped.status is JobStatus.COPYING and (stopped.checkpoint or {})["line"] == 1000

    platform.die_after = None
    u.clock.advance(u.ctx.config.timing.copy_lease_seconds + 1)
    drive(u, run.run_id)
    done = u.job(job.job_id)
    assert done.status is JobStatus.DONE, done.error
    assert sorted(platform.data["copy"], key=lambda r: r["n"]) == rows  # every row, once
    point = done.checkpoint or {}
    assert point["rows"] == 2600 and point["missing"] == 0 and point["after"] == 2600
    assert done.attempts == 0  # a resumption after progress is not a failed try


def test_a_row_restore_upserts_into_the_original_and_insert_keeps_what_is_there() -> None:
    rows = [{"_id": f"r{i}", "n": i} for i in range(30)]
    platform = WritablePages({"orders": [dict(r) for r in rows]}, page_rows=7)
    u = unit(platform, kind="paged")
    backup = backed_up(u)
    platform.data["orders"][3]["n"] = -1  # changed since the backup
    del platform.data["orders"][10:]  # and most rows lost
    run, _ = start_restore(u.ctx, plan_restore(u.ctx, backup, "shop", "orders", mode="insert"),
                           idempotency_key="ins", trigger="test")
    drive(u, run.run_id)
    [job] = u.state.list_jobs(run.run_id)
    assert job.status is JobStatus.DONE, job.error
    assert (job.checkpoint or {})["kept"] == 10 and platform.data["orders"][3]["n"] == -1
    run, _ = start_restore(u.ctx, plan_restore(u.ctx, backup, "shop", "orders", mode="upsert"),
                           idempotency_key="ups", trigger="test")
    drive(u, run.run_id)
    assert sorted(platform.data["orders"], key=lambda r: r["n"]) == rows


@dataclass
class DoublePages(WritablePages):
    """A platform that keeps integers as doubles: 2**64 + 1 comes back as 2**64."""

    def write_row(self, collection: str, mode: RestoreMode, line: bytes) -> RowOutcome:
        row = json.loads(line)
        row["n"] = int(float(row["n"]))
        return super().write_row(collection, mode, json.dumps(row).encode())


def test_a_row_restore_whose_integer_beyond_64_bits_came_back_changed_fails_its_check() -> None:
    """orjson reads an integer beyond 64 bits as a float: the read-back took 2**64 + 1 and
    2**64 for the same value and passed a row the platform had changed."""
    rows = [{"_id": "r0", "n": 2**64 + 1}, {"_id": "r1", "n": 2**70}]
    platform = DoublePages({"orders": [dict(r) for r in rows]})
    u = unit(platform, kind="paged")
    backup = backed_up(u)
    run, _ = start_restore(u.ctx, plan_restore(u.ctx, backup, "shop", "orders", into="copy"),
                           idempotency_key="big", trigger="test")
    drive(u, run.run_id)
    [job] = u.state.list_jobs(run.run_id)
    assert platform.data["copy"] == [{"_id": "r0", "n": 2**64}, rows[1]]
    assert job.status is JobStatus.FAILED, job.checkpoint
    assert "1 of the backup's 2 rows are not in shop/copy" in (job.error or "")


def test_the_lease_of_a_restore_renews_with_each_saved_window() -> None:
    rows = [{"_id": f"r{i:05d}", "n": i} for i in range(2100)]
    platform = WritablePages({"orders": rows}, page_rows=1000)
    u = unit(platform, kind="paged")
    backup = backed_up(u)
    run, _ = start_restore(u.ctx, plan_restore(u.ctx, backup, "shop", "orders", into="c"),
                           idempotency_key="lease", trigger="test")
    poll(u.ctx)
    [job] = u.state.list_jobs(run.run_id)
    platform.die_after = 1500
    with pytest.raises(Killed):
        finish(u.ctx, job.job_id)
    stopped = u.job(job.job_id)
    assert stopped.lease_until is not None
    assert stopped.lease_until >= u.clock() + timedelta(
        seconds=u.ctx.config.timing.copy_lease_seconds - 1)


def test_retention_keeps_a_backup_while_a_restore_reads_it() -> None:
    from shared.config.model import Retention
    from shared.service.prune import plan as retention_plan
    from shared.service.start import start_run

    platform = ImportingExport({"orders": list(ROWS)}, polls_before_done=50)
    u = unit(platform)
    older = backed_up(u)
    u.clock.advance(3600)
    run, _ = start_run(u.ctx, idempotency_key="newer", trigger="test")
    newer = backed_up(u, u.state.list_jobs(run.run_id))
    u.ctx.config = u.ctx.config.model_copy(update={"retention": Retention(keep_last=1)})

    def verdicts() -> dict[str, tuple[bool, list[str]]]:
        decided = retention_plan(u.ctx)
        return {decided.jobs[d.backup.backup_id].run_id: (d.keep, d.reasons)
                for d in decided.decisions}

    assert verdicts()[older][0] is False  # keep_last 1: the older backup would go
    run, _ = start_restore(u.ctx, plan_restore(u.ctx, older, "shop", "orders"),
                           idempotency_key="reading", trigger="test")
    keep, reasons = verdicts()[older]
    assert keep and "being restored" in reasons
    assert verdicts()[newer][0] is True
    drive(u, run.run_id, rounds=60)  # the restore ends (its import is slow): the hold ends
    assert verdicts()[older][0] is False


def test_a_restore_recorded_while_the_prune_reads_keeps_its_backup(
        monkeypatch: pytest.MonkeyPatch) -> None:
    platform = ImportingExport({"orders": list(ROWS)}, polls_before_done=50)
    u = unit(platform)
    older = backed_up(u)
    u.clock.advance(3600)
    newer, _ = start_run(u.ctx, idempotency_key="newer", trigger="test")
    backed_up(u, u.state.list_jobs(newer.run_id))
    u.ctx.config = u.ctx.config.model_copy(update={"retention": Retention(keep_last=1)})
    real_plan = prune_module.plan

    def plan_then_a_restore_starts(ctx: Any, **kw: Any) -> prune_module.Plan:
        decided = real_plan(ctx, **kw)
        assert [held.run_id for held in decided.doomed] == [older]
        start_restore(ctx, plan_restore(ctx, older, "shop", "orders"),
                      idempotency_key="reading", trigger="http")
        return decided

    monkeypatch.setattr(prune_module, "plan", plan_then_a_restore_starts)
    decided = prune_module.prune(u.ctx)

    [job] = u.state.list_jobs(older)
    assert job.pruned_at is None and u.state.get_run(older) is not None
    assert all(u.objects.head(o.key) is not None for o in job.result.objects)  # type: ignore[union-attr]
    assert decided.doomed == []


def test_a_restore_the_finisher_never_picks_up_raises_the_staleness_alarm_once() -> None:
    """A restore left ready (its finisher crashing at start, its invocations dropped) is
    handed out again every lease until `timing.unclaimed_ready_hours` (raised here past the
    alarm): the alarm names it once it has been open `alerts.stale_after_hours`, while the
    nightly backups keep succeeding, and only once."""
    u = unit(ImportingExport({"orders": list(ROWS)}), unclaimed_ready_hours=48)
    backup = backed_up(u)
    restore, _ = start_restore(u.ctx, plan_restore(u.ctx, backup, "shop", "orders"),
                               idempotency_key="r1", trigger="http")
    for hour in range(1, 31):
        u.clock.advance(3600)
        poll(u.ctx)  # hands it to a finisher that never comes
        if hour % 24 == 0:  # the nightly backup succeeds
            nightly = Run(run_id=f"{u.clock():%Y%m%dT%H%M%S}000Z-nightly", idempotency_key="n",
                          trigger="test", sources=["shop"], created_at=u.clock())
            u.state.create_run(nightly, [])
            assert u.state.save_run(nightly.model_copy(update={
                "status": RunStatus.SUCCEEDED, "finished_at": u.clock()}))

    [job] = u.state.list_jobs(restore.run_id)
    assert job.status is JobStatus.READY
    [alert] = u.notifier.alerts
    assert f"restore {restore.run_id} is still running 26 hours" in alert


def test_a_restore_no_finisher_claims_fails_after_the_bound_and_its_run_closes_failed() -> None:
    platform = ImportingExport({"orders": list(ROWS)})
    u = unit(platform)
    backup = backed_up(u)
    plan = plan_restore(u.ctx, backup, "shop", "orders")
    run, _ = start_restore(u.ctx, plan, idempotency_key="r", trigger="test")
    u.notifier.sent.clear()
    first_hand_off = u.clock()

    job = polled_unclaimed(u, u.state.list_jobs(run.run_id)[0].job_id, hours=30)

    assert job.status is JobStatus.FAILED and job.finished_at is not None
    assert timedelta(hours=12) <= job.finished_at - first_hand_off < timedelta(hours=13)
    assert "no finisher claimed it in 12 hours" in (job.error or "")
    assert "finisher function's logs" in (job.error or "")
    closed = u.state.get_run(run.run_id)
    assert closed is not None and closed.status is RunStatus.FAILED
    [(told, _)] = u.notifier.sent
    assert told.run_id == run.run_id and told.status is RunStatus.FAILED
    assert plan.order.target not in platform.data  # nothing was sent


@pytest.mark.parametrize("shortfall", [0, 2], ids=["succeeded", "failed"])
def test_an_ended_restore_releases_its_claim_on_the_backup(shortfall: int) -> None:
    """Its claim ended with it (holds.py): it goes from the backup run's record when the
    restore ends, not at the next claim there, so the record does not grow with every
    restore and nothing shows a claim that no longer holds."""
    platform = ImportingExport({"orders": list(ROWS)}, shortfall=shortfall)
    u = unit(platform)
    backup = backed_up(u)
    run, _ = start_restore(u.ctx, plan_restore(u.ctx, backup, "shop", "orders"),
                           idempotency_key="r", trigger="test")
    assert [h.by for h in u.state.get_run(backup).holds] == [run.run_id]  # type: ignore[union-attr]
    drive(u, run.run_id)
    ended = u.state.get_run(run.run_id)
    assert ended is not None and ended.status is not RunStatus.RUNNING
    assert u.state.get_run(backup).holds == []  # type: ignore[union-attr]


def test_an_ended_restore_keeps_a_claim_written_while_it_releases_its_own(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Retention claims another backup of the run just as the restore's release is about
    to be written: the release's compare-and-set loses, reads the run again, and drops
    only the restore's own claim."""
    platform = ImportingExport({"orders": list(ROWS), "users": ROWS[:2]})
    u = unit(platform)
    backup = backed_up(u)
    users = next(j.job_id for j in u.state.list_jobs(backup) if j.collection == "users")
    run, _ = start_restore(u.ctx, plan_restore(u.ctx, backup, "shop", "orders"),
                           idempotency_key="r", trigger="test")
    real_save = u.state.save_run
    claimed: list[set[str] | None] = []
    asked: list[bool] = []

    def save_run(saved: Run) -> Run | None:
        ending = u.state.get_run(run.run_id)
        if (saved.run_id == backup and not asked and ending is not None
                and ending.status is not RunStatus.RUNNING):
            asked.append(True)  # retention's own write comes through here too
            claimed.append(claim(u.ctx, backup, [users], PRUNING))
        return real_save(saved)

    monkeypatch.setattr(u.state, "save_run", save_run)
    drive(u, run.run_id)

    assert claimed == [{users}]
    holds = u.state.get_run(backup).holds  # type: ignore[union-attr]
    assert [(h.job_id, h.by) for h in holds] == [(users, PRUNING)]


def test_a_restore_planned_before_another_started_into_its_target_is_refused_at_start() -> None:
    """Two people on the status page: each previews a restore into `orders` (nothing is
    writing into it then), one says go, then the other: the second is refused (409), as
    it would be if asked for now, instead of both writing into it at once."""
    platform = ImportingExport({"orders": list(ROWS)}, polls_before_done=50)
    u = unit(platform)
    backup = backed_up(u)
    first = plan_restore(u.ctx, backup, "shop", "orders", into="orders", mode="upsert")
    second = plan_restore(u.ctx, backup, "shop", "orders", into="orders", mode="insert")
    started, _ = start_restore(u.ctx, first, idempotency_key="first", trigger="test")

    with pytest.raises(RestoreRefused, match="is writing into shop/orders") as refused:
        start_restore(u.ctx, second, idempotency_key="second", trigger="test")
    assert refused.value.status == 409
    assert [r.run_id for r in u.state.list_runs() if r.operation == "restore"] == [started.run_id]


@dataclass
class DownImports(ImportingExport):
    """An import endpoint that answers 502 for a while: each send is a failed step."""

    sends: int = 0

    def send_import(self, collection: str, mode: RestoreMode, *, file_type: str, name: str,
                    chunks: Iterable[bytes], size: int) -> str | None:
        self.sends += 1
        raise Retryable("import endpoint answered HTTP 502")


def test_a_restore_step_that_keeps_failing_is_tried_again_ever_less_often() -> None:
    """As a failed copy: an import endpoint down for a few minutes must not use up the
    restore's tries at one a tick (README: "one tick, two, four … apart")."""
    platform = DownImports({"orders": list(ROWS)})
    u = unit(platform, max_attempts=5, max_check_interval_seconds=300)
    backup = backed_up(u)
    run, _ = start_restore(u.ctx, plan_restore(u.ctx, backup, "shop", "orders"),
                           idempotency_key="r1", trigger="test")
    sent_at = []
    for minute in range(6):  # six minutes of one tick a minute, each hand-off run at once
        before = platform.sends
        minutes_of_ticks(u, 1)
        sent_at += [minute] * (platform.sends - before)

    [job] = u.state.list_jobs(run.run_id)
    assert job.status is JobStatus.READY, job.error  # tries left for when it is back
    # the first failure is not a try (the object may have been sent), then 1, 2, 4 ticks
    assert sent_at == [0, 1, 2, 4]
