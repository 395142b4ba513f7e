"""Prune: apply the retention policy. Every backup of every collection is decided by
`shared.domain.retention` (restic's keep rules over good backups, plus the guards that
never drop the last good copy); the backups it does not keep lose their objects and
manifests, runs left holding nothing lose their state rows and their folder, and a prune
record saying what went and why is written into the bucket.

Safe to run twice at once: deleting is idempotent, a job is marked pruned by
compare-and-set, and what one prune keeps another keeps too (the rules are stable under
their own deletions; a property test proves it). Safe beside restores: a backup is deleted
only once retention's claim on it won over any restore's (shared/service/holds.py)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from shared.domain.errors import StorageError
from shared.domain.jobs import COOLING, PRUNING, Job, JobResult, JobStatus, Run, RunStatus
from shared.domain.layout import prune_record_key, run_folder
from shared.domain.retention import Backup, Decision, Policy, decide
from shared.logs import redact
from shared.service.context import Context
from shared.service.holds import DELETE_WITHIN, claim, release
from shared.service.outbox import waiting
from shared.service.verify import ARCHIVED, unverified

log = logging.getLogger(__name__)

PAGE = 100


@dataclass(frozen=True)
class Held:
    """What prune needs of one job of a backup run. A whole Job is about 4 kB in memory:
    a thousand collections times 30 kept runs would not fit a 256 MB poller; this is a
    fraction of it. The doomed jobs are read again when they are deleted."""

    job_id: str
    run_id: str
    source: str
    collection: str
    records: int | None
    finished_at: datetime | None
    keys: tuple[str, ...]  # its data objects
    holds_nothing: bool  # failed, or pruned already

    @classmethod
    def of(cls, job: Job) -> Held:
        return cls(job_id=job.job_id, run_id=job.run_id, source=job.source,
                   collection=job.collection, records=job.result.records if job.result else None,
                   finished_at=job.finished_at,
                   keys=tuple(o.key for o in job.result.objects) if job.result else (),
                   holds_nothing=job.pruned_at is not None or job.status is JobStatus.FAILED)


@dataclass
class Plan:
    decisions: list[Decision] = field(default_factory=list)
    jobs: dict[str, Held] = field(default_factory=dict)  # by job id (= backup id)
    runs: dict[str, Run] = field(default_factory=dict)
    # what COS refused while deleting or moving to the cold class, one line each (the
    # backups and runs concerned stay for the next prune): a run closing tells it
    # (close.py), as nobody reads the log
    refused: list[str] = field(default_factory=list)
    # it stopped at its claim window (DELETE_WITHIN) with work left, which the next prune
    # does: `baas-backup prune` says so
    stopped: bool = False

    @property
    def doomed(self) -> list[Held]:
        return [self.jobs[d.backup.backup_id] for d in self.decisions if not d.keep]

    def emptied_runs(self) -> list[str]:
        """Closed runs that hold no backup once the doomed ones are gone, except the
        newest run (the latest failure stays visible) and a run whose notification or
        alert no webhook took yet (deleted, it would never be sent: outbox.py)."""
        doomed = {j.job_id for j in self.doomed}
        newest = max(self.runs, default=None)
        by_run: dict[str, list[Held]] = {}
        for held in self.jobs.values():
            by_run.setdefault(held.run_id, []).append(held)
        emptied = []
        for run_id, run in sorted(self.runs.items()):
            if run_id == newest or run.status is RunStatus.RUNNING or waiting(run):
                continue
            if all(j.job_id in doomed or j.holds_nothing for j in by_run.get(run_id, [])):
                emptied.append(run_id)
        return emptied


def plan(ctx: Context, *, see: Callable[[Run, Job], None] | None = None) -> Plan:
    """Decide every backup of every source the policy covers; deletes nothing. `see` is
    shown every job of every backup run (with its run) as it is read, newest run first (the status
    overview reads them this way once, not twice)."""
    retention = ctx.config.retention
    result = Plan()
    if retention is None:
        return result
    backups: dict[str, list[Backup]] = {}
    from shared.service.restore.plan import restoring

    being_restored = restoring(ctx)
    for run in _all_runs(ctx):
        if run.operation != "backup":
            continue
        result.runs[run.run_id] = run
        failed = unverified(run)
        for job in ctx.state.list_jobs(run.run_id):
            if see is not None:
                see(run, job)
            result.jobs[job.job_id] = Held.of(job)
            if job.pruned_at is not None or job.status is not JobStatus.DONE or job.result is None:
                continue
            backups.setdefault(job.source, []).append(Backup(
                backup_id=job.job_id, collection=(job.source, job.collection),
                # when its data was taken, as restic dates a snapshot by its start
                taken_at=job.started_at or run.created_at,
                suspect=not job.good, running=run.status is RunStatus.RUNNING,
                restoring=job.job_id in being_restored,
                unverified=f"{job.source}/{job.collection}" in failed))
    for source, found in sorted(backups.items()):
        rules = retention.rules_for(source)
        policy = Policy(keep_last=rules.keep_last or 0, keep_daily=rules.keep_daily or 0,
                        keep_weekly=rules.keep_weekly or 0, keep_monthly=rules.keep_monthly or 0,
                        time_zone=retention.time_zone)
        result.decisions.extend(decide(found, policy))
    return result


def prune(ctx: Context, *, dry_run: bool = False) -> Plan:
    """Plan, then (unless `dry_run`) delete what the plan does not keep."""
    decided = plan(ctx)
    # with no backup at all (every run failed), runs left holding nothing still go
    if dry_run or not (decided.decisions or decided.emptied_runs()):
        return decided
    claimed_at = ctx.clock()
    _claim_doomed(ctx, decided)
    _spare_restores_started_since(ctx, decided)
    emptied = decided.emptied_runs()
    record = _Record(ctx, decided)
    if decided.doomed:  # said before the first delete: SCF may stop the function mid-way
        record.write([], [], [], finished=False)
    deleted: list[dict[str, Any]] = []
    for held in decided.doomed:
        if ctx.clock() - claimed_at >= DELETE_WITHIN:
            log.warning("retention's claim is too old to go on deleting; the next prune "
                        "deletes the rest", extra={"claimed_at": claimed_at.isoformat()})
            emptied = []  # their backups are not all gone
            decided.stopped = True
            break
        job = ctx.state.get_job(held.job_id)
        if job is None or job.result is None:  # another prune deleted its run meanwhile
            continue
        if not _delete_backup(ctx, job.result, decided.refused):  # left unmarked: tried again
            emptied = [r for r in emptied if r != job.run_id]
            continue
        _mark_pruned(ctx, job)
        deleted.append({"run_id": job.run_id, "source": job.source,
                        "collection": job.collection, "objects": [o.key for o in job.result.objects],
                        "records": job.result.records})
    emptied = [run_id for run_id in emptied if _delete_run(ctx, run_id, decided.refused)]
    cooled = _cool(ctx, decided)
    if decided.doomed or deleted or emptied or cooled:
        record.write(deleted, emptied, cooled, finished=True)
        log.info("pruned", extra={"backups": len(deleted), "runs": len(emptied),
                                  "moved_to_cold": len(cooled)})
    return decided


def _claim_doomed(ctx: Context, decided: Plan) -> None:
    """Retention's claim on each backup it will delete, one compare-and-set per run; a
    backup a restore claimed first is kept. A run already gone (another prune deleted it)
    is left to the deleting loop, which finds its jobs gone."""
    by_run: dict[str, list[str]] = {}
    for held in decided.doomed:
        by_run.setdefault(held.run_id, []).append(held.job_id)
    spared: set[str] = set()
    for run_id, job_ids in sorted(by_run.items()):
        won = claim(ctx, run_id, job_ids, PRUNING)
        if won is not None:
            spared.update(set(job_ids) - won)
    for decision in decided.decisions:
        if not decision.keep and decision.backup.backup_id in spared:
            decision.reasons.append("being restored")


def _spare_restores_started_since(ctx: Context, decided: Plan) -> None:
    """A restore recorded without a claim (by a version before claims) since the plan
    looked reads a backup it doomed. Asked again just before deleting, so it is kept."""
    from shared.service.restore.plan import restoring

    reading = restoring(ctx)
    for decision in decided.decisions:
        if not decision.keep and decision.backup.backup_id in reading:
            decision.reasons.append("being restored")


def _cool(ctx: Context, decided: Plan) -> list[str]:
    """`retention.cold_after_days`: kept backups that old move to the cold storage class
    (data objects only: manifests stay readable); the keys moved."""
    retention = ctx.config.retention
    if retention is None or retention.cold_after_days is None:
        return []
    cutoff = ctx.clock() - timedelta(days=retention.cold_after_days)
    due: dict[str, list[Held]] = {}  # by run
    for decision in decided.decisions:
        held = decided.jobs[decision.backup.backup_id]
        if decision.keep and _old_enough(held, cutoff) and held.keys:
            due.setdefault(held.run_id, []).append(held)
    moved: list[str] = []
    recorded = _RecordedRestores(ctx)
    for run_id, helds in sorted(due.items()):
        moved += _cool_run(ctx, run_id, helds, retention.cold_storage_class, recorded,
                           decided=decided)
    return moved


def _cool_run(ctx: Context, run_id: str, helds: list[Held], cold_class: str,
              recorded: _RecordedRestores, *, decided: Plan) -> list[str]:
    """Move one run's due backups to `cold_class`. Into an archive class, only those
    retention's claim (COOLING) won over any restore's, as an archived object cannot be
    read (holds.py); the claim is released once they moved. A class that stays readable
    (STANDARD_IA) needs no claim: a restore reads the object before, during and after its
    copy onto itself, the same bytes. A backup a recorded restore reads is left for the
    next prune either way. The run's folder is listed once: an object it already shows
    in the cold class costs no HEAD and no claim, so a prune with nothing to move writes
    nothing. What COS refuses is noted in the plan's `refused` (the backups stay in a
    dearer class), a stop at the claim window in its `stopped`."""
    try:
        folder = run_folder(ctx.config.destination.prefix, run_id) + "/"
        cold = {i.key for i in ctx.objects.list(folder) if i.storage_class == cold_class}
    except StorageError as exc:  # the next prune tries again
        log.warning("could not list a run to move its backups to cold storage",
                    extra={"run_id": run_id, "reason": str(exc)})
        decided.refused.append(f"listing run {run_id}'s folder to move its backups to "
                               f"{cold_class}: {redact(str(exc))}")
        return []
    warm = [h for h in helds if any(k not in cold for k in h.keys)]
    if not warm:
        return []
    # COS's archive classes must be restored before a GET; the others are read as they are
    # (cloud.tencent.com/document/product/436/33417, 存储类型概述).
    claimed = cold_class in ARCHIVED
    wanted = [h.job_id for h in warm]
    won = (claim(ctx, run_id, wanted, COOLING) or set()) if claimed else set(wanted)
    claimed_at = ctx.clock()
    moved: list[str] = []
    try:
        for held in warm:
            if held.job_id not in won or recorded(held.job_id):
                continue  # a restore reads it
            for key in [k for k in held.keys if k not in cold]:
                if claimed and ctx.clock() - claimed_at >= DELETE_WITHIN:
                    log.warning("retention's claim is too old to go on moving backups to "
                                "cold storage; the next prune moves the rest",
                                extra={"run_id": run_id})
                    decided.stopped = True
                    return moved
                _move(ctx, key, cold_class, moved, decided.refused)
    finally:
        if claimed and won:
            release(ctx, run_id, COOLING, won)
    return moved


def _old_enough(held: Held, cutoff: datetime) -> bool:
    """Finished before `cutoff`. A job on record with no finish time has no age: it stays
    readable rather than be archived on a guess (reading it back would take a restore)."""
    return held.finished_at is not None and held.finished_at <= cutoff


def _move(ctx: Context, key: str, cold_class: str, moved: list[str],
          refused: list[str]) -> None:
    """Move one object to `cold_class` if a HEAD shows it outside it (the listing may be
    older than a move by another prune); appended to `moved` when moved, to `refused`
    when COS refused. An object over what one copy moves is not refused: README "Storage
    classes" says it stays in its class (a COS lifecycle rule can move it), so it is no
    failure to alert about at every run's close."""
    try:
        info = ctx.objects.head(key)
        if info is not None and info.storage_class != cold_class:
            ctx.objects.set_storage_class(key, cold_class)
            moved.append(key)
    except StorageError as exc:  # the next prune tries again
        log.warning("could not move a backup to cold storage",
                    extra={"key": key, "reason": str(exc)})
        if exc.code != "EntityTooLarge":
            refused.append(f"moving to {cold_class}: {redact(str(exc))}")


class _RecordedRestores:
    """Is a backup read by a recorded restore, asked just before it would be moved: a
    restore recorded by a version before claims holds no claim on it. Read once, and only
    when a backup is about to move."""

    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx
        self._recorded: set[str] | None = None

    def __call__(self, job_id: str) -> bool:
        from shared.service.restore.plan import restoring

        if self._recorded is None:
            self._recorded = restoring(self._ctx)
        return job_id in self._recorded


def _all_runs(ctx: Context) -> list[Run]:
    runs: list[Run] = []
    before: str | None = None
    while True:
        page = ctx.state.list_runs(limit=PAGE, before=before)
        runs.extend(page)
        if len(page) < PAGE:
            return runs
        before = page[-1].run_id


def _delete_run(ctx: Context, run_id: str, refused: list[str]) -> bool:
    """An emptied run's folder, then its state rows; whether it is gone. Its rows stay
    while an object does: they are how the next prune finds what is left to delete. A
    folder COS will not list is left for the next prune too: raised, it would cost the
    record of the backups this prune already deleted, which no later prune sees again."""
    try:
        folder = ctx.objects.list(run_folder(ctx.config.destination.prefix, run_id) + "/")
    except StorageError as exc:
        log.warning("could not list an emptied run to delete it; the next prune tries again",
                    extra={"run_id": run_id, "reason": str(exc)})
        refused.append(f"listing run {run_id}'s folder: {redact(str(exc))}")
        return False
    if not all([_delete(ctx, info.key, refused) for info in folder]):  # each tried
        return False
    ctx.state.delete_run(run_id)
    return True


def _delete_backup(ctx: Context, result: JobResult, refused: list[str]) -> bool:
    """A doomed backup's data objects, then its manifest; whether all are gone. Its
    manifest stays while a data object does (a quick verify still checks what is left)."""
    if not all([_delete(ctx, o.key, refused) for o in result.objects]):  # each tried
        return False
    return _delete(ctx, result.manifest_key, refused)


def _delete(ctx: Context, key: str, refused: list[str]) -> bool:
    """Whether `key` is gone; a failure is left for the next prune, which tries again,
    and noted in `refused`."""
    try:
        ctx.objects.delete(key)
    except StorageError as exc:
        log.warning("could not delete a pruned object", extra={"key": key, "reason": str(exc)})
        refused.append(redact(str(exc)))
        return False
    return True


def _mark_pruned(ctx: Context, job: Job) -> None:
    current: Job | None = job
    while current is not None and current.pruned_at is None:
        if ctx.state.save_job(current.model_copy(update={"pruned_at": ctx.clock()})) is not None:
            return
        current = ctx.state.get_job(job.job_id)  # another prune got there first, or a write


class _Record:
    """The prune's record under `<prefix>/prunes/`. Written first, before anything is
    deleted, with what the prune sets out to delete (`deleting`, `finished` false), then
    again at the same key once it is done: a prune stopped mid-way still leaves in the
    bucket which backups' objects it was deleting, as a backup it marked pruned is in no
    later prune's record. SCF stops a function at its time limit (`time_limit_in_ms` in
    the handler's context, cloud.tencent.com/document/product/583/9210), mid-delete."""

    def __init__(self, ctx: Context, decided: Plan) -> None:
        self._ctx, self._decided = ctx, decided
        self._key = prune_record_key(ctx.config.destination.prefix,
                                     f"{ctx.clock():%Y%m%dT%H%M%S%f}-{ctx.worker.split(':')[-1]}")

    def write(self, deleted: list[dict[str, Any]], emptied: list[str], cooled: list[str], *,
              finished: bool) -> None:
        decided = self._decided
        self._ctx.objects.put_json(self._key, {
            "pruned_at": self._ctx.clock().isoformat(),
            "finished": finished,
            "deleting": [{"run_id": h.run_id, "source": h.source, "collection": h.collection,
                          "objects": list(h.keys)} for h in decided.doomed],
            "deleted": deleted,
            "runs_deleted": emptied,
            "moved_to_cold": cooled,
            "kept": [{"source": d.backup.collection[0], "collection": d.backup.collection[1],
                      "run_id": decided.jobs[d.backup.backup_id].run_id, "why": d.reasons}
                     for d in decided.decisions if d.keep],
        })
