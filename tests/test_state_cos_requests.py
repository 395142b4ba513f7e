"""The COS state store's requests, counted on the moto S3 server through the real SDK:
on SCF each one costs 15-40 ms and money, so the ones a cold function always makes are
held to what its guarantees need (docs/state-on-cos.md)."""

from __future__ import annotations

import pytest

from shared.adapters.cos.client import cos_client
from shared.adapters.cos.state import CosStateStore
from shared.config import Destination
from shared.domain.errors import StateError
from shared.domain.jobs import Job, JobStatus, Run, utcnow
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
