"""The SQLite state table: idempotent runs and compare-and-set job writes, under real
concurrency (threads and processes on one database file)."""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import pytest

from shared.jobs import IllegalTransition, Job, JobStatus, Run, utcnow
from shared.state import open_store


def make_run(key: str = "k", run_id: str = "r1") -> tuple[Run, list[Job]]:
    now = utcnow()
    run = Run(run_id=run_id, idempotency_key=key, trigger="test", created_at=now)
    jobs = [Job(job_id=f"{run_id}.j{i}", run_id=run_id, source="s", target=f"t{i}",
                next_check_at=now, created_at=now, updated_at=now) for i in range(3)]
    return run, jobs


def test_same_idempotency_key_stores_one_run(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path}/s.db")
    first, created = store.create_run(*make_run())
    again, created_again = store.create_run(*make_run(run_id="r2"))
    assert created and not created_again and again.run_id == first.run_id
    assert [r.run_id for r in store.list_runs()] == ["r1"]
    assert len(store.list_jobs("r1")) == 3 and store.list_jobs("r2") == []


def test_stale_write_loses(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path}/s.db")
    _, jobs = make_run()
    store.create_run(make_run()[0], jobs)
    saved = store.save_job(jobs[0].moved_to(JobStatus.EXPORTING, remote_id="1"))
    assert saved is not None and saved.version == 1
    assert store.save_job(jobs[0].moved_to(JobStatus.FAILED, error="x")) is None
    stored = store.get_job(jobs[0].job_id)
    assert stored is not None and stored.status is JobStatus.EXPORTING


def test_due_jobs_skip_finished_and_future(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path}/s.db")
    run, jobs = make_run()
    store.create_run(run, jobs)
    store.save_job(jobs[1].model_copy(update={"next_check_at": utcnow() + timedelta(hours=1)}))
    store.save_job(jobs[2].failed("x", utcnow()))
    assert [j.job_id for j in store.due_jobs(utcnow())] == [jobs[0].job_id]


def test_illegal_transition_is_refused() -> None:
    _, jobs = make_run()
    done = jobs[0].moved_to(JobStatus.READY).moved_to(JobStatus.COPYING).moved_to(JobStatus.DONE)
    with pytest.raises(IllegalTransition):
        done.moved_to(JobStatus.COPYING)
    with pytest.raises(IllegalTransition):
        jobs[0].moved_to(JobStatus.DONE)


def test_token_cache_expires(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path}/s.db")
    store.cache_put("k", "v", utcnow() + timedelta(seconds=60))
    assert store.cache_get("k", utcnow()) == "v"
    assert store.cache_get("k", utcnow() + timedelta(seconds=61)) is None
    store.cache_delete("k")
    assert store.cache_get("k", utcnow()) is None


def _claim_all(url: str, worker: str) -> list[str]:
    store = open_store(url)
    won = []
    for job in store.list_jobs("r1"):
        if job.status is JobStatus.PENDING and store.save_job(
            job.moved_to(JobStatus.EXPORTING, remote_id=worker)
        ):
            won.append(job.job_id)
    return won


def test_racing_threads_each_job_claimed_once(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/s.db"
    open_store(url).create_run(*make_run())
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda w: _claim_all(url, f"w{w}"), range(8)))
    claimed = [j for r in results for j in r]
    assert sorted(claimed) == sorted(j.job_id for j in open_store(url).list_jobs("r1"))


def test_racing_processes_each_job_claimed_once(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/s.db"
    open_store(url).create_run(*make_run())
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        results = pool.starmap(_claim_all, [(url, f"p{i}") for i in range(4)])
    claimed = [j for r in results for j in r]
    assert sorted(claimed) == sorted(j.job_id for j in open_store(url).list_jobs("r1"))
