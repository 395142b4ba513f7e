"""Suspect backups over fakes: the drop arithmetic, and what counts as the collection's
newest good backup to compare with."""

from __future__ import annotations

from datetime import timedelta

import pytest

from shared.domain.jobs import Job, JobResult, JobStatus, Run, StoredObject, job_id_for
from shared.service.suspicion import NotSuspect, acknowledge, dropped, newest_good
from tests.unit.support import ScriptedExport, Unit, unit


@pytest.mark.parametrize(("previous", "now", "percent", "expected"), [
    (None, 0, 50, False),  # nothing to compare with
    (0, 0, 50, False),  # was empty, still empty
    (10, 0, 50, True),  # wiped
    (10, 0, 100, True),
    (10, 5, 50, True),  # exactly the threshold
    (10, 6, 50, False),
    (1_000_000, 499_999, 50, True),
    (10, 20, 50, False),  # growth is fine
    (10, 9, 10, True),
    # README: suspect "when a collection's record count falls by at least drop_percent";
    # the schema takes any number in (0, 100]: an exact drop of a decimal percent counts
    (1000, 839, 16.1, True),  # 16.1 * 1000 is 16100.000000000002 in floats
    (1000, 678, 32.2, True),
    (1000, 356, 64.4, True),
    (1000, 840, 16.1, False),
])
def test_drop_arithmetic(previous: int | None, now: int, percent: float, expected: bool) -> None:
    assert dropped(previous, now, percent) is expected


def _history(u: Unit, *records: tuple[int, bool, bool]) -> list[str]:
    """Runs oldest first, each backing up `orders` with (records, suspect, acknowledged)."""
    ids = []
    for index, (count, suspect, acked) in enumerate(records):
        now = u.clock() + timedelta(days=index)
        run_id = f"202611{index + 1:02d}T020000000Z-unit"
        run = Run(run_id=run_id, idempotency_key=run_id, trigger="test", sources=["shop"],
                  created_at=now)
        result = JobResult(manifest_key=f"m/{index}.json",
                           objects=[StoredObject(key=f"o/{index}", bytes=count, sha256="0" * 64,
                                                 records=count)])
        job = u.put(Job(
            job_id=job_id_for(run_id, "shop", "orders"), run_id=run_id, source="shop",
            collection="orders", status=JobStatus.DONE, next_check_at=now, created_at=now,
            updated_at=now, result=result, suspect=suspect,
            acknowledged_at=now if acked else None))
        u.state.create_run(run, [job])
        u.objects.put_json(result.manifest_key, {"records": count})
        ids.append(run_id)
    return ids


def test_the_comparison_skips_suspect_backups_but_not_acknowledged_ones() -> None:
    u = unit(ScriptedExport({"orders": []}))
    runs = _history(u, (100, False, False), (0, True, False), (3, True, True), (0, True, False))
    last = u.state.list_jobs(runs[-1])[0]
    found = newest_good(u.ctx, last)
    assert found is not None and found.run_id == runs[2]  # the acknowledged drop to 3
    second = u.state.list_jobs(runs[1])[0]
    found = newest_good(u.ctx, second)
    assert found is not None and found.run_id == runs[0]


@pytest.mark.parametrize("verify", ["verify", "last_verify"])
def test_the_comparison_skips_backups_a_verify_found_damaged(verify: str) -> None:
    """README "Keeping backups": good means, among others, not found damaged by a verify of
    its run (the one after the run, or the latest one asked for). A damaged backup's
    count is no baseline: a drop measured against it is missed, or a false one flagged."""
    u = unit(ScriptedExport({"orders": []}))
    runs = _history(u, (100, False, False), (5, False, False), (90, False, False))
    damaged = u.state.get_run(runs[1])
    assert damaged is not None
    u.state.save_run(damaged.model_copy(update={"summary": {verify: {
        "ok": False, "checked": ["shop/orders"], "failed": ["shop/orders"]}}}))
    last = u.state.list_jobs(runs[-1])[0]
    found = newest_good(u.ctx, last)
    assert found is not None and found.run_id == runs[0]


def test_acknowledging() -> None:
    u = unit(ScriptedExport({"orders": []}))
    runs = _history(u, (100, False, False), (0, True, False))
    with pytest.raises(NotSuspect, match="not suspect"):
        acknowledge(u.ctx, runs[0], "shop", "orders")
    with pytest.raises(NotSuspect, match="no backup of shop/users"):
        acknowledge(u.ctx, runs[1], "shop", "users")
    job = acknowledge(u.ctx, runs[1], "shop", "orders")
    assert job.good and job.acknowledged_at is not None
    assert acknowledge(u.ctx, runs[1], "shop", "orders").version == job.version  # idempotent


def test_the_lookup_reads_one_job_per_earlier_run_not_every_job_of_it() -> None:
    """A run of many collections: finding the newest good backup of one of them reads that
    collection's job in each earlier run, never the other collections' jobs."""
    u = unit(ScriptedExport({"orders": []}))
    runs = _history(u, (100, False, False), (0, True, False), (0, True, False))
    for index, run_id in enumerate(runs):  # each run backs up 30 other collections too
        now = u.clock() + timedelta(days=index)
        for n in range(30):
            u.put(Job(job_id=job_id_for(run_id, "shop", f"c{n}"), run_id=run_id, source="shop",
                      collection=f"c{n}", status=JobStatus.DONE, next_check_at=now,
                      created_at=now, updated_at=now))
    read: list[str] = []
    get_job = u.state.get_job

    def counted(job_id: str) -> Job | None:
        read.append(job_id)
        return get_job(job_id)

    u.state.get_job = counted  # type: ignore[method-assign]
    u.state.list_jobs = None  # type: ignore[assignment,method-assign]  # must not be needed
    last = get_job(job_id_for(runs[-1], "shop", "orders"))
    assert last is not None
    found = newest_good(u.ctx, last)
    assert found is not None and found.run_id == runs[0]
    assert read == [job_id_for(runs[1], "shop", "orders"), job_id_for(runs[0], "shop", "orders")]
