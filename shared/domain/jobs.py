"""Runs, jobs and the job status machine.

A run is one backup of a set of sources; it owns one job per collection/table. A restore
is a run too (`operation` "restore") with one job, whose `restore` says what goes where.

    pending ──start──► exporting ──ready──► ready ──claim──► copying ──► done
       ▲  │                │                 ▲                 │
       │  └────────────────┴──► failed ◄─────┴─────────────────┘
       └── restart (platform forgot the export, even mid-copy)   lease expired ─► ready

A restore job goes pending ─► ready ─► copying (the finisher sends the backup to the
platform) ─► importing (the platform's own import job runs; the poller checks it) ─► done,
or straight from copying to done when the rows are written one by one.

A ready job is handed to the finisher again every copy lease until one claims it; one that
no finisher claims for `timing.unclaimed_ready_hours` fails.

Every change goes through `Job.moved_to`, which refuses transitions the machine does
not have, so a bug surfaces as an error instead of a silently wrong backup.
"""

from __future__ import annotations

import enum
import hashlib
from datetime import datetime, timedelta, timezone
from typing import Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, computed_field


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class JobStatus(str, enum.Enum):
    PENDING = "pending"
    EXPORTING = "exporting"
    READY = "ready"
    COPYING = "copying"
    IMPORTING = "importing"  # restores: the platform's import job is running
    DONE = "done"
    FAILED = "failed"

    @property
    def terminal(self) -> bool:
        return self in (JobStatus.DONE, JobStatus.FAILED)


# A paged copy's progress sits under this key of `Job.checkpoint` (shared.service.copy_paged);
# named here so the poller's sweep reads it without loading the paged copier.
PAGED_CHECKPOINT = "paged"

_ALLOWED: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.PENDING: frozenset({JobStatus.PENDING, JobStatus.EXPORTING, JobStatus.READY,
                                  JobStatus.FAILED}),
    JobStatus.EXPORTING: frozenset({JobStatus.EXPORTING, JobStatus.READY, JobStatus.PENDING,
                                    JobStatus.FAILED}),
    JobStatus.READY: frozenset({JobStatus.READY, JobStatus.COPYING, JobStatus.PENDING,
                                JobStatus.FAILED}),
    JobStatus.COPYING: frozenset({JobStatus.COPYING, JobStatus.READY, JobStatus.PENDING,
                                  JobStatus.IMPORTING, JobStatus.DONE, JobStatus.FAILED}),
    JobStatus.IMPORTING: frozenset({JobStatus.IMPORTING, JobStatus.DONE, JobStatus.FAILED}),
    JobStatus.DONE: frozenset(),
    JobStatus.FAILED: frozenset(),
}


class IllegalTransition(RuntimeError):
    pass


class RunStatus(str, enum.Enum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class StoredObject(BaseModel):
    """One verified object in the bucket."""

    model_config = ConfigDict(frozen=True, defer_build=True)  # built on first use: cold start

    key: str
    bytes: int
    sha256: str
    records: int
    upload_parts: int = 1  # multipart upload parts it was sent in
    crc64: str | None = None  # CRC64-ECMA computed while sending, equal to COS's


class JobResult(BaseModel):
    """What a finished copy produced: one object, or numbered parts of one backup."""

    model_config = ConfigDict(frozen=True, defer_build=True)  # built on first use: cold start

    manifest_key: str
    objects: list[StoredObject] = Field(min_length=1)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def key(self) -> str:
        return self.objects[0].key

    @computed_field  # type: ignore[prop-decorator]
    @property
    def bytes(self) -> int:
        return sum(o.bytes for o in self.objects)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def records(self) -> int:
        return sum(o.records for o in self.objects)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def sha256(self) -> str:
        """The object's sha256; for several parts, the sha256 of their sha256s in order."""
        if len(self.objects) == 1:
            return self.objects[0].sha256
        return hashlib.sha256("\n".join(o.sha256 for o in self.objects).encode()).hexdigest()


class RestoreOrder(BaseModel):
    """What a restore writes where: a done backup (its objects, as its manifest lists them)
    into `target` of the same source, in `mode`. Fixed when the restore is requested."""

    model_config = ConfigDict(frozen=True, defer_build=True)  # built on first use: cold start

    backup_run_id: str
    backup_job_id: str
    collection: str  # the collection the backup is of
    target: str  # the collection written to
    mode: str  # new | insert | upsert (ports.RestoreMode)
    file_type: str  # json | csv
    objects: list[StoredObject] = Field(min_length=1)
    records: int  # what the backup holds (its manifest's count)
    forced: bool = False  # started although the backup's verify found problems


class Job(BaseModel):
    """One collection/table of one source in one run."""

    model_config = ConfigDict(frozen=True, defer_build=True)  # built on first use: cold start

    job_id: str
    run_id: str
    source: str
    # Stored state written before the vocabulary settled said `target` and `remote_id`.
    collection: str = Field(validation_alias=AliasChoices("collection", "target"))
    status: JobStatus = JobStatus.PENDING
    version: int = 0  # bumped by the store on every write: optimistic concurrency
    attempts: int = 0
    next_check_at: datetime
    deadline_at: datetime | None = None
    lease_owner: str | None = None
    lease_until: datetime | None = None
    platform_job_id: str | None = Field(  # the platform's export job id
        default=None, validation_alias=AliasChoices("platform_job_id", "remote_id"))
    # The file type (json | csv) its export was started with: the copy stores and counts
    # the file as that, whatever the config says by then. None: not started yet, a paged
    # copy, or a job recorded before this field (the source's configured type then).
    file_type: str | None = None
    expected_records: int | None = None  # what the platform says it exported
    part_records: list[int | None] | None = None  # per part, when an export came in parts
    platform_collection_count: int | None = None  # the platform's own count (unfiltered only)
    checkpoint: dict[str, Any] | None = None  # the copier's own progress (paged copies)
    progress_records: int | None = None
    result: JobResult | None = None
    error: str | None = None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    # Suspect: done, but far fewer records than the collection's newest good backup had
    # (`previous_records`); not good for retention until a user acknowledges the drop.
    suspect: bool = False
    previous_records: int | None = None
    acknowledged_at: datetime | None = None
    pruned_at: datetime | None = None  # retention deleted its objects
    # Hand-offs to the finisher that no finisher claimed since the job last became ready,
    # and when the first was: past `timing.unclaimed_ready_hours` the poller fails the job
    # (shared.service.poll.hand_off). A claim clears both.
    unclaimed_since: datetime | None = None
    unclaimed_hand_offs: int = 0
    restore: RestoreOrder | None = None  # set on a restore's job only

    def export_file_type(self, configured: str) -> str:
        """The type of this job's file: its export's, else the source's `configured` one."""
        return self.file_type or configured

    @property
    def good(self) -> bool:
        """A backup to count on: copied, verified, and not an unexplained drop."""
        return (self.status is JobStatus.DONE and self.restore is None
                and (not self.suspect or self.acknowledged_at is not None))

    def moved_to(self, status: JobStatus, **changes: Any) -> Job:
        if status not in _ALLOWED[self.status]:
            raise IllegalTransition(f"job {self.job_id}: {self.status.value} -> {status.value}")
        return self.model_copy(update={"status": status, **changes})

    def failed(self, error: str, now: datetime) -> Job:
        return self.moved_to(
            JobStatus.FAILED, error=error, finished_at=now, lease_owner=None, lease_until=None
        )

    def lease_expired(self, now: datetime) -> bool:
        return self.lease_until is None or self.lease_until <= now


class Hold(BaseModel):
    """A claim on one backup of a backup run: retention about to delete it (`by` PRUNING)
    or move it to the cold storage class (`by` COOLING), or a restore about to read it
    (`by` that restore's run id). Kept on the run, so both
    sides claim by compare-and-set on the same record and the first to write wins."""

    model_config = ConfigDict(frozen=True, defer_build=True)  # built on first use: cold start

    job_id: str
    by: str
    at: datetime


PRUNING = "retention"  # Hold.by of retention's claim to delete a backup
COOLING = "retention:cold"  # ... and to move it to the cold storage class (unreadable there)


class UndeliveredAlert(BaseModel):
    """A message about its run that no webhook accepted yet (every one down, or refusing
    it). Kept on the run, so the poller sends it again (shared/service/outbox.py) and one
    sender at a time claims it by compare-and-set (`claimed_until`)."""

    model_config = ConfigDict(frozen=True, defer_build=True)  # built on first use: cold start

    text: str | None = None  # a verify's alert; a run's notification is rebuilt from the run
    since: datetime
    tries: int = 1
    claimed_until: datetime | None = None
    gave_up_at: datetime | None = None  # past the bound: no longer sent, still shown


class Run(BaseModel):
    model_config = ConfigDict(frozen=True, defer_build=True)  # built on first use: cold start

    run_id: str
    # "restore-target": not a run but the record restores claim a target on (holds.py);
    # never open, its run id sorts before every real run's.
    operation: Literal["backup", "restore", "restore-target"] = "backup"
    idempotency_key: str
    trigger: str  # timer | http | cli
    status: RunStatus = RunStatus.RUNNING
    version: int = 0
    sources: list[str] = Field(default_factory=list)
    # The collections asked for, per source (the others' every collection); None: all.
    collections: dict[str, list[str]] | None = None
    created_at: datetime
    finished_at: datetime | None = None
    manifest_key: str | None = None
    summary: dict[str, Any] | None = None
    # Per discovering source: {"found": [...], "excluded": [...]}, or {"error": ...} when its
    # collections could not be listed. Written into the run manifest.
    discovery: dict[str, dict[str, Any]] = Field(default_factory=dict)
    # Claims on its backups by retention and by restores (shared/service/holds.py).
    holds: list[Hold] = Field(default_factory=list)
    # Its notification ("run"), verify alert ("verify") or alert of a prune that failed
    # after it closed ("retention") while no webhook has accepted it.
    undelivered: dict[str, UndeliveredAlert] = Field(default_factory=dict)


COUNT_TOLERANCE = 0.01  # share of the platform's count an export may differ by unremarked
COUNT_SLACK = 10  # ... or this many records (documents written while the export ran)


def count_warning(job: Job) -> str | None:
    """Why an unfiltered export's record count is suspicious, or None."""
    count, exported = job.platform_collection_count, job.expected_records
    if count is None or exported is None:
        return None
    if abs(count - exported) <= max(COUNT_SLACK, COUNT_TOLERANCE * count):
        return None
    return (f"the export of {job.source}/{job.collection} reported {exported} records but the "
            f"platform counts {count} in the collection; if nothing was written or deleted "
            "meanwhile, check the export (and the collection's permissions) before relying on it")


def run_id_for(idempotency_key: str, at: datetime) -> str:
    """Sortable to the millisecond, and tagged with the key so retries are recognisable."""
    digest = hashlib.sha256(idempotency_key.encode()).hexdigest()[:8]
    moment = at.astimezone(timezone.utc)
    return f"{moment:%Y%m%dT%H%M%S}{moment.microsecond // 1000:03d}Z-{digest}"


def job_id_for(run_id: str, source: str, collection: str) -> str:
    digest = hashlib.sha256(f"{source}\x00{collection}".encode()).hexdigest()[:12]
    return f"{run_id}.{source}.{digest}"


def backoff(attempt: int, first: float, cap: float) -> timedelta:
    """Exponential spacing of checks: first, 2*first, 4*first ... capped."""
    return timedelta(seconds=min(cap, first * (2 ** max(0, attempt))))
