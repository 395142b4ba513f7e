"""Export copies: a platform's finished export file (or its numbered parts) streamed
into the bucket, counted and checked against what the platform reported before the
object is committed."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, cast

from shared.domain.errors import VerificationFailed
from shared.domain.jobs import Job, JobResult, StoredObject
from shared.domain.layout import CONTENT_TYPES, manifest_key, part_key
from shared.domain.records import counter_for
from shared.ports import ExportPlatform, StreamSummary
from shared.service.copying import CopyHold

if TYPE_CHECKING:
    from shared.service.context import Context


class ExportCopier:
    exports = True

    def copy(self, ctx: Context, hold: CopyHold, base_key: str) -> JobResult:
        """Copy every part not copied yet; parts already stored by an earlier try are kept."""
        job = hold.job
        platform = cast(ExportPlatform, ctx.platforms.get(job.source))
        expected = job.part_records or [job.expected_records]
        stored = [StoredObject.model_validate(o) for o in (job.checkpoint or {}).get("copied", [])]
        for index in range(len(stored), len(expected)):
            key = base_key if len(expected) == 1 else part_key(base_key, index + 1)
            label = repr(job.collection) if len(expected) == 1 else (
                f"part {index + 1} of {len(expected)} of {job.collection!r}")
            stored.append(_copy_part(ctx, platform, job, part=index, key=key,
                                     expected=expected[index], label=label))
            if len(expected) > 1:
                hold.checkpoint(checkpoint={"copied": [o.model_dump() for o in stored]})
        return JobResult(manifest_key=manifest_key(base_key), objects=stored)

    def progressed(self, job: Job) -> bool:
        return False  # each part is copied whole or not at all: a reclaim is a new try

    def rebased(self, job: Job) -> dict[str, Any] | None:
        return job.checkpoint


def _copy_part(ctx: Context, platform: ExportPlatform, job: Job, *, part: int, key: str,
               expected: int | None, label: str) -> StoredObject:
    counter = counter_for(platform.file_type)

    def counted() -> Iterator[bytes]:
        for chunk in platform.open(job.collection, job.platform_job_id or "", part):
            counter.feed(chunk)
            yield chunk

    def verify(summary: StreamSummary) -> None:
        if expected is not None and counter.total != expected:
            raise VerificationFailed(
                f"record count mismatch for {label}: the platform reported {expected}, "
                f"the export file holds {counter.total}; not stored"
            )

    summary = ctx.objects.put_stream(key, counted(), content_type=CONTENT_TYPES[platform.file_type],
                                     before_commit=verify)
    return StoredObject(key=key, bytes=summary.bytes, sha256=summary.sha256,
                        records=counter.total, upload_parts=summary.parts, crc64=summary.crc64)
