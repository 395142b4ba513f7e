"""The COS state store's requests, counted on the moto S3 server through the real SDK:
on SCF each one costs 15-40 ms and money, so the ones a cold function always makes are
held to what its guarantees need (docs/state-on-cos.md)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from shared.adapters.cos.client import cos_client
from shared.adapters.cos.state import CosStateStore
from shared.config import Destination
from shared.domain.errors import StateError
from shared.domain.jobs import Job, JobStatus, Run, RunStatus, utcnow
from tests.support.cos import S3Requests


def test_a_bucket_proven_before_is_proven_again_in_one_request(
        counted_destination: Destination, s3_requests: S3Requests) -> None:
    """The first store ever lays a marker object and sees a second create-only PUT of it
    refused; from then on, one create-only PUT of the marker being refused is the proof."""
    store = CosStateStore(counted_destination, verify=False)
    with s3_requests.counted() as first:
        store.check_create_only(again=True)
    with s3_requests.counted() as again:
        store.check_create_only(again=True)

    assert [r.split()[0] for r in first] == ["PUT", "PUT"], first
    assert len(again) == 1 and again[0].startswith("PUT "), again


@pytest.mark.parametrize("history", [["Enabled"], ["Enabled", "Suspended"]])
def test_a_bucket_versioned_after_it_was_proven_is_refused_loudly(
        destination: Destination, history: list[str]) -> None:
    """COS ignores x-cos-forbid-overwrite once versioning was enabled: the marker of a bucket
    proven before is then overwritten, and a store proving it afresh must stop."""
    CosStateStore(destination).check_create_only(again=True)
    client = cos_client(destination)
    for status in history:
        client.put_bucket_versioning(Bucket=destination.bucket, Status=status)

    with pytest.raises(StateError, match="overwrite an existing object"):
        CosStateStore(destination, verify=False).check_create_only(again=True)



def _one_job_run(store: CosStateStore) -> tuple[Run, Job]:
    now = utcnow()
    run = Run(run_id="r1", idempotency_key="k", trigger="test", created_at=now)
    job = Job(job_id="r1.j0", run_id="r1", source="s", collection="t", status=JobStatus.READY,
              next_check_at=now, created_at=now, updated_at=now)
    store.create_run(run, [job])
    return run, job


def test_a_version_this_store_wrote_is_not_read_back(
        destination: Destination, counted_destination: Destination, s3_requests: S3Requests) -> None:
    """Versions are never rewritten: one this store won is known; the listing that finds it
    the newest is still made, so a newer one written elsewhere is read."""
    _, job = _one_job_run(CosStateStore(destination))
    store = CosStateStore(counted_destination)
    ready = store.get_job(job.job_id)
    assert ready is not None
    saved = store.save_job(ready.moved_to(JobStatus.READY, attempts=1))

    with s3_requests.counted() as seen:
        assert store.get_job(job.job_id) == saved
    assert seen == ["GET /"], seen

    assert saved is not None
    elsewhere = CosStateStore(destination).save_job(saved.moved_to(JobStatus.READY, attempts=2))
    assert store.get_job(job.job_id) == elsewhere


def test_a_finishers_claim_save_and_close_of_a_one_job_run(
        destination: Destination, counted_destination: Destination, s3_requests: S3Requests) -> None:
    """What a finisher asks of the store for the last job of a run: read and claim it, save
    it done, find no job open, read the run and its jobs, close it. Each compare-and-set is
    a PUT and the HEAD of its base (the ghost check); the run's index is listed once and
    nothing the finisher wrote is read back."""
    run, job = _one_job_run(CosStateStore(destination))
    finisher = CosStateStore(counted_destination)

    with s3_requests.counted() as seen:
        ready = finisher.get_job(job.job_id)
        assert ready is not None
        until = utcnow() + timedelta(minutes=10)
        claimed = finisher.save_job(ready.moved_to(JobStatus.COPYING, lease_owner="f",
                                                   lease_until=until, next_check_at=until))
        assert claimed is not None
        done = finisher.save_job(claimed.moved_to(JobStatus.DONE, finished_at=utcnow(),
                                                  lease_owner=None, lease_until=None))
        assert done is not None and not finisher.run_has_open_jobs(run.run_id)
        open_run = finisher.get_run(run.run_id)
        assert open_run is not None and finisher.list_jobs(run.run_id) == [done]
        assert finisher.save_run(open_run.model_copy(update={
            "status": RunStatus.SUCCEEDED, "finished_at": utcnow()})) is not None

    # get_job 2, claim 2, done 3 (its hint's DELETE too), open jobs 2, get_run 2,
    # list_jobs 1 (the versions' listing), close 4 (its closed marker and open-runs hint)
    assert len(seen) == 16, "\n".join(seen)



def test_an_index_listed_while_its_run_was_written_is_listed_again(destination: Destination) -> None:
    """Only an index listed after a record of its run was seen is whole for sure (a run
    being created writes its whole index before any record): a store that judged a run
    from a part of its index lists it again for the run's jobs."""
    store = CosStateStore(destination)
    now = utcnow()
    run = Run(run_id="r1", idempotency_key="k", trigger="test", created_at=now)
    jobs = [Job(job_id=f"r1.j{i}", run_id="r1", source="s", collection=f"t{i}",
                next_check_at=now, created_at=now, updated_at=now) for i in range(2)]
    store._put_json(f"{destination.prefix}/_state/run-jobs/r1/r1.j0", {})  # the creator, midway
    assert not store.run_has_open_jobs("r1")

    CosStateStore(destination).create_run(run, jobs)
    assert [j.job_id for j in store.list_jobs("r1")] == ["r1.j0", "r1.j1"]


def _running_run(store: CosStateStore, jobs: int = 3, *, attempts: int = 0) -> list[Job]:
    """A run of `jobs` READY jobs, all due now."""
    now = utcnow()
    run = Run(run_id="r1", idempotency_key="k", trigger="test", created_at=now)
    made = [Job(job_id=f"r1.j{i}", run_id="r1", source="s", collection=f"t{i}",
                status=JobStatus.READY, attempts=attempts, next_check_at=now, created_at=now,
                updated_at=now) for i in range(jobs)]
    store.create_run(run, made)
    return made


def _objects_read(requests: list[str]) -> list[str]:
    """The GETs of objects among `requests` (a listing is `GET /`)."""
    return [r for r in requests if r.startswith("GET ") and r != "GET /"]


def test_a_warm_pollers_next_tick_reads_only_the_jobs_that_changed(
        destination: Destination, counted_destination: Destination, s3_requests: S3Requests) -> None:
    """Versions are never rewritten: a poller that read a job's newest version lists the
    job again each tick (the listing decides which version is newest) but GETs it only
    when the listing shows a newer one, written here or by another process."""
    _running_run(CosStateStore(destination))
    poller = CosStateStore(counted_destination)
    first = poller.due_jobs(utcnow())
    assert [j.job_id for j in first] == ["r1.j0", "r1.j1", "r1.j2"]

    with s3_requests.counted() as again:
        assert poller.due_jobs(utcnow()) == first
        assert poller.get_job("r1.j1") == first[1]
    assert again == ["GET /"] * 5, "\n".join(again)  # the hints, then each job's versions

    elsewhere = CosStateStore(destination).save_job(first[0].moved_to(JobStatus.READY, attempts=1))
    with s3_requests.counted() as changed:
        assert poller.due_jobs(utcnow())[0] == elsewhere
    assert _objects_read(changed) == ["GET /backups/_state/jobs/r1.j0/v0000000001.json"], changed


def test_a_deleted_runs_jobs_do_not_come_back_from_memory(
        destination: Destination, counted_destination: Destination) -> None:
    """Nothing of a deleted run is answered from what a store read or wrote before, whether
    this store deleted it or another did."""
    _running_run(CosStateStore(destination))
    poller = CosStateStore(counted_destination)
    assert len(poller.due_jobs(utcnow())) == 3
    CosStateStore(destination).delete_run("r1")
    assert poller.get_job("r1.j0") is None and poller.due_jobs(utcnow()) == []

    _running_run(CosStateStore(destination))
    job = poller.get_job("r1.j0")
    assert job is not None and poller.save_job(job) is not None
    poller.delete_run("r1")
    assert poller.get_job("r1.j0") is None and poller.list_jobs("r1") == []
    assert not [key for key in poller._memory.remembered() if "/r1" in key], "deleted, yet remembered"


def test_a_version_deleted_and_written_again_elsewhere_is_read_afresh(
        destination: Destination, counted_destination: Destination) -> None:
    """A deleted run can be written again under the same ids (a creator replaying a claim
    it read before the delete, then a save on top), so a version number may come back with
    other content: what a store remembers of a version is used only for the very object
    the listing shows (its ETag), never for one written since under the same key."""
    _running_run(CosStateStore(destination))
    poller = CosStateStore(counted_destination)
    ready = poller.get_job("r1.j0")
    assert ready is not None and poller.save_job(ready.moved_to(JobStatus.READY, attempts=1))

    other = CosStateStore(destination)
    other.delete_run("r1")
    _running_run(other, attempts=5)
    again = other.get_job("r1.j0")
    assert again is not None
    rewritten = other.save_job(again.moved_to(JobStatus.READY, attempts=6))
    assert rewritten is not None and rewritten.version == 1

    assert poller.get_job("r1.j0") == rewritten


def test_deleting_a_running_run_leaves_the_poller_no_hints_of_its_jobs(
        destination: Destination, counted_destination: Destination, s3_requests: S3Requests) -> None:
    """A run deleted before its jobs ended takes their open-jobs hints with it: left, each
    would cost every later poll a listing of a record that is gone, for ever."""
    _running_run(CosStateStore(destination))
    CosStateStore(destination).delete_run("r1")
    poller = CosStateStore(counted_destination)

    with s3_requests.counted() as seen:
        assert poller.due_jobs(utcnow()) == []
    assert seen == ["GET /"], "\n".join(seen)


def _runs(store: CosStateStore, backups: int, restores: int) -> list[str]:
    """`restores` restore runs, then `backups` backup runs; the restores' ids, newest first."""
    base, ids = utcnow(), [f"2026110{i // 10}T02{i % 10}000Z-aaaa" for i in range(restores + backups)]
    for i, run_id in enumerate(ids):
        run = Run(run_id=run_id, idempotency_key=f"k{i}", trigger="test",
                  created_at=base + timedelta(minutes=i))
        store.create_run(run.model_copy(update={"operation": "restore"}) if i < restores else run, [])
    return ids[:restores][::-1]


def test_listing_restores_reads_no_backup_run(
        destination: Destination, counted_destination: Destination, s3_requests: S3Requests) -> None:
    """GET /restores on a cold function: the index marker's HEAD, one listing of the
    restores' index, and a listing and a GET per restore; the backups recorded after the
    restores (any number of them) are never listed or read."""
    restores = _runs(CosStateStore(destination), backups=30, restores=2)
    CosStateStore(destination).list_restores()  # the first listing ever indexes earlier ones
    store = CosStateStore(counted_destination)
    with s3_requests.counted() as seen:
        assert [r.run_id for r in store.list_restores()] == restores
    assert sorted(r.split()[0] for r in seen) == ["GET"] * 5 + ["HEAD"], seen
    with s3_requests.counted() as again:
        store.list_restores()
    assert "HEAD" not in " ".join(again) and len(again) == 3, again  # the index marker is known

