"""Suspect backups: a collection whose record count fell sharply since its newest good
backup. The job is still done (the data is what the platform has), but the drop is
flagged on the job and in its manifest, reported with the run, and the backup does not
count as good for retention until a user acknowledges it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from decimal import Decimal

from shared.domain.jobs import Job, Run, job_id_for
from shared.service.context import Context

RUNS_LOOKED_AT = 200  # how far back the newest good backup is looked for


@dataclass(frozen=True)
class Verdict:
    suspect: bool
    previous_records: int | None


def dropped(previous: int | None, now: int, drop_percent: float) -> bool:
    """Down to zero from something, or down by at least `drop_percent` percent."""
    if not previous:
        return False
    # Exact: as a float, 16.1 * 1000 is a hair over 16100, and an exact 16.1 % drop missed.
    return now == 0 or (previous - now) * 100 >= Decimal(str(drop_percent)) * previous


def judge(ctx: Context, previous: Job | None, records: int) -> Verdict:
    """`records` against `previous`, the collection's newest good backup (`newest_good`)."""
    previous_records = previous.result.records if previous and previous.result else None
    return Verdict(dropped(previous_records, records, ctx.config.alerts.drop_percent),
                   previous_records)


def newest_good(ctx: Context, job: Job) -> Job | None:
    """The newest good backup of the job's collection in an earlier run (not one a verify of
    its run found damaged: the run's summary, already read, says so). A run keeps the
    collection's job at a known id (`job_id_for`), so each earlier run costs one read, not
    a read of each of its jobs: with a thousand collections a run, every copy reading the
    whole previous run would make a day's backup a million reads."""
    before: str | None = job.run_id
    looked = 0
    while before is not None and looked < RUNS_LOOKED_AT:
        runs = ctx.state.list_runs(limit=20, before=before)
        for run in runs:
            if run.operation != "backup":
                continue
            other = ctx.state.get_job(job_id_for(run.run_id, job.source, job.collection))
            if other is not None and _good(run, other) and (
                    other.source, other.collection) == (job.source, job.collection):
                return other
        looked += len(runs)
        before = runs[-1].run_id if len(runs) == 20 else None
    return None


def _good(run: Run, job: Job) -> bool:
    """Good as retention means it (README "Keeping backups"): a backup a verify of its run
    found damaged is no baseline, its record count may be what the damage left."""
    from shared.service.verify import unverified  # the finisher's cold start skips verify

    return job.good and f"{job.source}/{job.collection}" not in unverified(run)


class NotSuspect(ValueError):
    """What was named is not a suspect backup; the message says what it is."""


def acknowledge(ctx: Context, run_id: str, source: str, collection: str) -> Job:
    """Mark a suspect backup as an intended drop: it counts as good from now on. Its job
    manifest in the bucket says so too. Acknowledging twice is harmless."""
    for _ in range(5):  # compare-and-set against a concurrent writer
        job = next((j for j in ctx.state.list_jobs(run_id)
                    if (j.source, j.collection) == (source, collection)), None)
        if job is None:
            raise NotSuspect(f"run {run_id!r} has no backup of {source}/{collection}; GET /runs/"
                             f"{{run_id}} (or `baas-backup status RUN_ID`) lists a run's backups")
        if not job.suspect:
            raise NotSuspect(f"the backup of {source}/{collection} in run {run_id} is not "
                             f"suspect (status {job.status.value}); nothing to acknowledge")
        if job.acknowledged_at is not None:
            return job
        saved = ctx.state.save_job(job.model_copy(update={"acknowledged_at": ctx.clock()}))
        if saved is not None:
            if saved.result is not None:
                manifest = json.loads(ctx.objects.read(saved.result.manifest_key))
                manifest["acknowledged_at"] = ctx.clock().isoformat()
                ctx.objects.put_json(saved.result.manifest_key, manifest)
            return saved
    raise NotSuspect(f"the backup of {source}/{collection} kept changing; try again")
