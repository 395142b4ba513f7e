"""The manifests: what a user restores from. A job manifest sits next to each backup
object; a run manifest sums up a run. Both carry `format`; readers accept every format
up to `MANIFEST_FORMAT`, and a later format is refused rather than misread."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer

from shared.domain.jobs import Job, JobResult, JobStatus, Run, RunStatus, count_warning

MANIFEST_FORMAT = 1
# ISO 8601 exactly as datetime.isoformat() writes it, as manifests always had.
Time = Annotated[datetime, PlainSerializer(lambda moment: moment.isoformat(), return_type=str)]


class ManifestObject(BaseModel):
    """One object of a backup (a split export has several, in order)."""

    model_config = ConfigDict(extra="allow", defer_build=True)  # built on first use: cold start

    key: str
    bytes: int
    sha256: str
    records: int
    crc64: str | None = None  # CRC64-ECMA (decimal), as COS's x-cos-hash-crc64ecma says


class RestoreCaveat(BaseModel):
    """An export option that keeps the backup from restoring as the collection was."""

    model_config = ConfigDict(extra="allow", defer_build=True)  # built on first use: cold start

    option: str
    value: Any
    why: str  # what a restore would lose, and the fix


class JobManifest(BaseModel):
    """`<object>.manifest.json`: one collection's backup in one run."""

    model_config = ConfigDict(extra="allow", defer_build=True)  # built on first use: cold start

    format: int = Field(default=MANIFEST_FORMAT, le=MANIFEST_FORMAT)
    source: str
    platform: str
    collection: str
    run_id: str
    job_id: str
    platform_job_id: str | None
    file_type: str
    object_key: str
    bytes: int
    sha256: str
    records: int
    platform_reported_records: int | None
    # the platform's own count of the collection (unfiltered exports), and a warning when
    # it is far from platform_reported_records
    platform_collection_count: int | None = None
    count_warning: str | None = None
    objects: list[ManifestObject]
    export_started_at: Time | None
    copied_at: Time | None
    # far fewer records than the collection's newest good backup (`previous_records`)
    suspect: bool = False
    previous_records: int | None = None
    # options the backup was exported with that a restore cannot undo; manifests written
    # before this was recorded have none and read as []
    restore_caveats: list[RestoreCaveat] = Field(default_factory=list)

    @classmethod
    def of(cls, job: Job, result: JobResult, *, platform: str, file_type: str,
           copied_at: datetime, suspect: bool = False,
           previous_records: int | None = None,
           restore_caveats: list[dict[str, Any]] | None = None) -> JobManifest:
        return cls(
            source=job.source, platform=platform, collection=job.collection, run_id=job.run_id,
            job_id=job.job_id, platform_job_id=job.platform_job_id, file_type=file_type,
            object_key=result.key, bytes=result.bytes, sha256=result.sha256,
            records=result.records, platform_reported_records=job.expected_records,
            platform_collection_count=job.platform_collection_count,
            count_warning=count_warning(job),
            objects=[ManifestObject.model_validate(o.model_dump(exclude={"upload_parts"}))
                     for o in result.objects],
            export_started_at=job.started_at, copied_at=copied_at, suspect=suspect,
            previous_records=previous_records,
            restore_caveats=[RestoreCaveat.model_validate(c) for c in restore_caveats or []],
        )


class RunManifestJob(BaseModel):
    model_config = ConfigDict(extra="allow", defer_build=True)  # built on first use: cold start

    source: str
    collection: str
    status: JobStatus
    platform_job_id: str | None
    attempts: int
    error: str | None
    suspect: bool = False

    @classmethod
    def of(cls, job: Job) -> RunManifestJob:
        return cls.model_validate({
            "source": job.source, "collection": job.collection, "status": job.status,
            "platform_job_id": job.platform_job_id, "attempts": job.attempts,
            "error": job.error if job.status is JobStatus.FAILED else None,
            "suspect": job.suspect and job.acknowledged_at is None,
            **({"platform_collection_count": job.platform_collection_count}
               if job.platform_collection_count is not None else {}),
            **({"count_warning": count_warning(job)} if count_warning(job) else {}),
            **(job.result.model_dump() if job.result else {}),
        })


class RunManifest(BaseModel):
    """`<prefix>/runs/<run_id>/run-manifest.json`: how a run ended."""

    model_config = ConfigDict(extra="allow", defer_build=True)  # built on first use: cold start

    format: int = Field(default=MANIFEST_FORMAT, le=MANIFEST_FORMAT)
    run_id: str
    trigger: str
    status: RunStatus
    started_at: Time | None
    finished_at: Time | None
    summary: dict[str, Any]
    # per source: collections found and excluded, or the error
    discovery: dict[str, dict[str, Any]]
    jobs: list[RunManifestJob]

    @classmethod
    def of(cls, run: Run, jobs: list[Job], *, status: RunStatus, summary: dict[str, Any],
           finished_at: datetime) -> RunManifest:
        return cls(run_id=run.run_id, trigger=run.trigger, status=status,
                   started_at=run.created_at, finished_at=finished_at, summary=summary,
                   discovery=run.discovery, jobs=[RunManifestJob.of(j) for j in jobs])


def as_document(manifest: BaseModel) -> dict[str, Any]:
    """The manifest as written to the bucket (times in ISO 8601, as before the models)."""
    return manifest.model_dump(mode="json")
