"""Export copies: a platform's finished export file (or its numbered parts) streamed
into the bucket, counted and checked against what the platform reported before the
object is committed."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, cast

from shared.domain.errors import Retryable, StorageError, VerificationFailed
from shared.domain.jobs import Job, JobResult, StoredObject
from shared.domain.layout import CONTENT_TYPES, manifest_key, part_key
from shared.domain.records import counter_for
from shared.ports import ExportPlatform, StreamSummary
from shared.service.copying import CopyHold

if TYPE_CHECKING:
    from shared.service.context import Context

log = logging.getLogger(__name__)


class OutOfTime(Retryable):
    """A streaming copy still running when the invocation's time was up: the upload is
    aborted (nothing is stored) and the job left to the next try."""


class ExportCopier:
    exports = True

    def copy(self, ctx: Context, hold: CopyHold, base_key: str) -> JobResult:
        """Copy every part not copied yet; parts already stored by an earlier try are kept."""
        job = hold.job
        platform = cast(ExportPlatform, ctx.platforms.get(job.source))
        expected = job.part_records or [job.expected_records]
        keys = [base_key] if len(expected) == 1 else [
            part_key(base_key, index + 1) for index in range(len(expected))]
        stored = _still_stored(ctx, job, keys, expected)
        for index in range(len(stored), len(expected)):
            label = repr(job.collection) if len(expected) == 1 else (
                f"part {index + 1} of {len(expected)} of {job.collection!r}")
            stored.append(_copy_part(ctx, platform, job, part=index, key=keys[index],
                                     expected=expected[index], label=label))
            if len(expected) > 1:
                hold.checkpoint(checkpoint={"copied": [o.model_dump() for o in stored]})
        return JobResult(manifest_key=manifest_key(base_key), objects=stored)

    def progressed(self, job: Job) -> bool:
        return False  # each part is copied whole or not at all: a reclaim is a new try

    def rebased(self, job: Job) -> dict[str, Any] | None:
        return job.checkpoint


def _still_stored(ctx: Context, job: Job, keys: list[str],
                  expected: list[int | None]) -> list[StoredObject]:
    """The parts an earlier try recorded as copied, taken only as far as each is at the
    key it belongs at, with the records the platform reported, and (by a HEAD) still in
    the bucket at its recorded size. The checkpoint lives in the state table: a record
    that does not hold up is copied again rather than named in a manifest."""
    recorded = (job.checkpoint or {}).get("copied", [])
    kept: list[StoredObject] = []
    for index, entry in enumerate(recorded[:len(keys)]):
        why: str | None
        try:
            part = StoredObject.model_validate(entry)
        except ValueError:
            why = "the record is not a stored object"
        else:
            why = _doubt(ctx, part, keys[index], expected[index])
        if why:
            log.warning("a part recorded as copied does not hold up; copying it again",
                        extra={"part": index + 1, "reason": why})
            break
        kept.append(part)
    return kept


def _doubt(ctx: Context, part: StoredObject, key: str, expected: int | None) -> str | None:
    if part.key != key:
        return f"recorded at {part.key!r}, not at {key!r}"
    if expected is not None and part.records != expected:
        return f"recorded with {part.records} records, the platform reported {expected}"
    try:
        found = ctx.objects.head(key)
    except StorageError as exc:
        raise Retryable(str(exc)) from None
    if found is None:
        return f"{key!r} is not in the bucket"
    if found.size != part.bytes:
        return f"{key!r} holds {found.size} bytes, {part.bytes} were recorded"
    if part.crc64 is not None and found.crc64 is not None and found.crc64 != part.crc64:
        return f"{key!r} has CRC64 {found.crc64}, {part.crc64} was recorded"
    return None


# Left between stopping a copy and its lease running out, for aborting the upload and
# saving the job: at most this, or this share of the lease.
LEASE_MARGIN_SECONDS = 10.0
LEASE_MARGIN_SHARE = 0.1


def _stop_by(ctx: Context, job: Job) -> float | None:
    """`time.monotonic()` by which a streaming copy stops: the invocation's end (SCF kills
    it there, mid-upload) or, if sooner, its copy lease's end less a margin. An export
    copy does not renew its lease, and after it the poller hands the job to another
    finisher, which would copy the same export beside this one."""
    stop_by = ctx.stop_by
    if job.lease_until is not None:
        margin = min(LEASE_MARGIN_SECONDS, LEASE_MARGIN_SHARE * ctx.config.timing.copy_lease_seconds)
        left = (job.lease_until - ctx.clock()).total_seconds() - margin
        by_lease = time.monotonic() + left
        stop_by = by_lease if stop_by is None else min(stop_by, by_lease)
    return stop_by


def _copy_part(ctx: Context, platform: ExportPlatform, job: Job, *, part: int, key: str,
               expected: int | None, label: str) -> StoredObject:
    file_type = job.export_file_type(platform.file_type)  # as the export was started
    counter = counter_for(file_type)
    stop_by = _stop_by(ctx, job)

    def counted() -> Iterator[bytes]:
        for chunk in platform.open(job.collection, job.platform_job_id or "", part,
                                   file_type=file_type):
            if stop_by is not None and time.monotonic() >= stop_by:
                raise OutOfTime(f"the download of {label} was not done when its time ran out "
                                "(this invocation's limit, or its copy lease: timing."
                                "copy_lease_seconds); the upload is aborted and the next try "
                                "starts it again (a slow link, or a very large export)")
            counter.feed(chunk)
            yield chunk

    def verify(summary: StreamSummary) -> None:
        if expected is not None and counter.total != expected:
            invalid = getattr(counter, "invalid", 0)
            detail = f" ({invalid} lines are not JSON objects)" if invalid else ""
            raise VerificationFailed(
                f"record count mismatch for {label}: the platform reported {expected}, "
                f"the export file holds {counter.total}{detail}; not stored"
            )

    summary = ctx.objects.put_stream(key, counted(), content_type=CONTENT_TYPES[file_type],
                                     before_commit=verify)
    return StoredObject(key=key, bytes=summary.bytes, sha256=summary.sha256,
                        records=counter.total, upload_parts=summary.parts, crc64=summary.crc64)
