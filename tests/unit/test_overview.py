"""The status page's per-collection overview without a retention policy: newest run
first, it reads only the jobs that can still change the answer, and answers as if it had
read them all."""

from __future__ import annotations

from collections.abc import Collection, Iterable
from datetime import datetime, timedelta, timezone
from typing import Any, Literal

import pytest

from shared.config.model import Retention
from shared.domain.jobs import Job, JobResult, JobStatus, Run, RunStatus, StoredObject, job_id_for
from shared.service.overview import collections
from shared.service.start import start_run
from shared.service.verify import record, verify_run
from tests.fakes import MemoryObjects, MemoryState
from tests.unit.support import ScriptedExport, Unit, backed_up, unit

START = datetime(2026, 11, 1, 2, tzinfo=timezone.utc)


def _run(state: MemoryState, night: int, jobs: dict[str, dict[str, Any]], *,
         operation: Literal["backup", "restore"] = "backup", running: bool = False) -> str:
    """A run `night` days in, with a job per collection in `jobs` (its status and fields)."""
    at = START + timedelta(days=night)
    run_id = f"{at:%Y%m%dT%H%M%S}000Z-{night:08x}"
    made = []
    for collection, fields in jobs.items():
        status = fields.pop("status", JobStatus.DONE)
        key = f"p/runs/{run_id}/shop/{collection}.jsonl"
        result = JobResult(manifest_key=key + ".manifest.json", objects=[
            StoredObject(key=key, bytes=10, sha256="0" * 64, records=night + 1)])
        made.append(Job(job_id=job_id_for(run_id, "shop", collection), run_id=run_id,
                        source="shop", collection=collection, status=status, next_check_at=at,
                        created_at=at, updated_at=at,
                        **({"finished_at": at, "result": result} if status is JobStatus.DONE
                           else {"finished_at": at} if status.terminal else {}), **fields))
    run = Run(run_id=run_id, idempotency_key=run_id, trigger="timer", created_at=at,
              sources=["shop"], operation=operation,
              status=RunStatus.RUNNING if running else RunStatus.SUCCEEDED)
    state.create_run(run, made)
    return run_id


def test_the_overview_reads_only_what_can_change_it_and_answers_as_a_full_read() -> None:
    u = unit(ScriptedExport({"orders": [], "users": []}))
    state = u.state
    legacy_good = _run(state, 0, {"orders": {}, "users": {}, "legacy": {}})
    legacy_failed = _run(state, 1, {"orders": {}, "users": {}, "legacy": {"status": JobStatus.FAILED}})
    orders_good = _run(state, 2, {"orders": {}, "users": {}})
    orders_suspect = _run(state, 3, {"orders": {"suspect": True, "previous_records": 3}, "users": {}})
    restore = _run(state, 4, {"orders": {"status": JobStatus.FAILED}}, operation="restore")
    newest = _run(state, 5, {"orders": {"status": JobStatus.EXPORTING}, "users": {}}, running=True)

    read: list[str] = []
    listed: list[str] = []
    list_jobs = state.list_jobs

    def counted(run_id: str, *, skip: Collection[str] = ()) -> list[Job]:
        listed.append(run_id)
        jobs = list_jobs(run_id, skip=skip)
        read.extend(j.job_id for j in jobs)
        return jobs

    state.list_jobs = counted  # type: ignore[method-assign]
    shown = {c.collection: c for c in collections(u.ctx)}

    assert restore not in listed  # a restore's jobs are no backups: not read at all
    assert sorted(read) == sorted([
        job_id_for(newest, "shop", "orders"), job_id_for(newest, "shop", "users"),
        job_id_for(orders_suspect, "shop", "orders"), job_id_for(orders_good, "shop", "orders"),
        job_id_for(legacy_failed, "shop", "legacy"), job_id_for(legacy_good, "shop", "legacy")])
    orders, users, legacy = shown["orders"], shown["users"], shown["legacy"]
    assert orders.latest is not None and orders.latest.run_id == orders_suspect
    assert orders.latest.suspect and orders.last_good is not None
    assert orders.last_good.run_id == orders_good
    assert users.latest is not None and users.last_good is not None
    assert users.latest.run_id == users.last_good.run_id == newest
    assert legacy.latest is not None and legacy.latest.status is JobStatus.FAILED
    assert legacy.last_good is not None and legacy.last_good.run_id == legacy_good

    # The same answer as reading every job of every run.
    def every(run_id: str, *, skip: Collection[str] = ()) -> list[Job]:
        return list_jobs(run_id)

    state.list_jobs = every  # type: ignore[method-assign]
    now = u.clock()
    assert [c.view(now) for c in collections(u.ctx)] == [shown[k].view(now) for k in sorted(shown)]


def _night(u: Unit, key: str) -> str:
    run, _ = start_run(u.ctx, idempotency_key=key, trigger="test")
    run_id = backed_up(u, u.state.list_jobs(run.run_id))
    u.clock.advance(86400)
    return run_id


@pytest.mark.parametrize("retention", [None, Retention(keep_last=5)], ids=["no policy", "policy"])
def test_a_backup_a_later_verify_found_damaged_is_not_the_last_good_one(
        retention: Retention | None) -> None:
    """README: good backups are "not found damaged by a verify of its run": the overview
    agrees with retention (both ways it reads the jobs: with a policy and without)."""
    u = unit(ScriptedExport({"orders": [{"_id": str(i)} for i in range(5)]}))
    u.ctx.config = u.ctx.config.model_copy(update={"retention": retention})
    older = _night(u, "night-1")
    newer = _night(u, "night-2")
    damaged = u.state.list_jobs(newer)[0].result
    assert damaged is not None
    original = u.objects.objects[damaged.key]
    u.objects.objects[damaged.key] = b'{"_id": "x"}\n'  # the newest backup got damaged
    report = verify_run(u.ctx, newer, quick=False)
    assert not report.ok
    record(u.ctx, report)  # kept on the run: summary.last_verify.failed names shop/orders

    (orders,) = collections(u.ctx)
    shown = orders.view(u.clock())
    assert shown["last_good"]["run_id"] == older, shown
    assert shown["latest"]["run_id"] == newer and shown["latest"]["verify_failed"] is True

    u.objects.objects[damaged.key] = original  # repaired, and a later verify says so
    record(u.ctx, verify_run(u.ctx, newer, quick=False))
    (orders,) = collections(u.ctx)
    shown = orders.view(u.clock())
    assert shown["last_good"]["run_id"] == newer and shown["latest"]["verify_failed"] is False


def test_a_backup_whose_check_after_the_run_failed_is_not_the_last_good_one() -> None:
    """verify.after_run (quick, the default) finds the newest backup's object short: the
    run is failed and summary.verify.failed names the collection; the overview does not
    call that backup the collection's last good one."""
    u = unit(ScriptedExport({"orders": [{"_id": str(i)} for i in range(5)]}))
    older = _night(u, "night-1")

    class Truncating(MemoryObjects):  # the bucket keeps less than was sent
        def put_stream(self, key: str, chunks: Iterable[bytes], **kw: Any) -> Any:
            summary = super().put_stream(key, chunks, **kw)
            self.objects[key] = self.objects[key][:-3]
            return summary

    truncating = Truncating()
    truncating.objects = u.objects.objects
    u.ctx.objects = truncating
    run, _ = start_run(u.ctx, idempotency_key="night-2", trigger="test")
    newer = backed_up(u, u.state.list_jobs(run.run_id))
    closed = u.state.get_run(newer)
    assert closed is not None and closed.status is RunStatus.FAILED and closed.summary
    assert closed.summary["verify"]["failed"] == ["shop/orders"]

    (orders,) = collections(u.ctx)
    shown = orders.view(u.clock())
    assert shown["last_good"]["run_id"] == older, shown
    assert shown["latest"]["verify_failed"] is True
