"""Sweep: abort the unfinished multipart uploads under the backup prefix that nobody will
finish: those of a job that ended, and those of a copy whose finisher is gone (not copying,
or its lease ran out) unless the job's checkpoint keeps the upload to resume it. A killed
finisher cannot abort its own upload; this is the net under it (the bucket's lifecycle rule
for stale parts stays as a second one)."""

from __future__ import annotations

import logging
import time
import weakref

from shared.domain.errors import StorageError
from shared.domain.jobs import PAGED_CHECKPOINT, Job, JobStatus
from shared.domain.layout import run_folder, safe_segment
from shared.ports import ResumableUploads
from shared.service.context import Context

log = logging.getLogger(__name__)


SWEEP_EVERY = 60.0  # seconds: at most one listing a minute per object store (poller tick)
_last_sweep: weakref.WeakKeyDictionary[object, float] = weakref.WeakKeyDictionary()


def sweep_uploads(ctx: Context, *, every: float | None = None) -> int:
    """Abort the abandoned uploads under `<prefix>/runs/`; how many were aborted. Runs at
    most once per `every` seconds for one object store (a poller invocation builds its own)."""
    uploads = ctx.objects
    if not isinstance(uploads, ResumableUploads):
        return 0
    now = time.monotonic()
    if now - _last_sweep.get(uploads, float("-inf")) < (SWEEP_EVERY if every is None else every):
        return 0
    _last_sweep[uploads] = now
    runs = run_folder(ctx.config.destination.prefix, "") + "/"
    try:
        found = uploads.uploads_under(runs)  # listed before the jobs are read: see _abandoned
    except StorageError as exc:
        log.warning("could not list unfinished uploads", extra={"reason": str(exc)})
        return 0
    jobs: dict[str, list[Job]] = {}
    aborted = 0
    for key, upload_id in found:
        run_id = key[len(runs):].split("/", 1)[0]
        if run_id not in jobs:
            jobs[run_id] = ctx.state.list_jobs(run_id)
        job = _owner(ctx, jobs[run_id], run_id, key)
        if not _abandoned(ctx, job, upload_id):
            continue
        try:
            uploads.abort_upload(key, upload_id)
        except StorageError as exc:
            log.warning("could not abort an abandoned upload", extra={"key": key, "reason": str(exc)})
            continue
        aborted += 1
        log.info("abandoned upload aborted", extra={
            "key": key, "job_status": job.status.value if job else "no such job"})
    return aborted


def _owner(ctx: Context, jobs: list[Job], run_id: str, key: str) -> Job | None:
    """The job whose object (or numbered part) `key` is: names are percent-encoded into
    one segment without dots, so `<source>/<collection>.` is one job's alone."""
    folder = run_folder(ctx.config.destination.prefix, run_id)
    for job in jobs:
        if key.startswith(f"{folder}/{safe_segment(job.source)}/{safe_segment(job.collection)}."):
            return job
    return None


def _abandoned(ctx: Context, job: Job | None, upload_id: str) -> bool:
    """The upload existed before `job` was read, so a finisher that starts one later is
    not judged by this read."""
    if job is None or job.status.terminal:
        return True
    kept = ((job.checkpoint or {}).get(PAGED_CHECKPOINT) or {}).get("upload_id")
    if kept == upload_id:  # a paged copy resumes it in a later invocation
        return False
    return job.status is not JobStatus.COPYING or job.lease_expired(ctx.clock())
