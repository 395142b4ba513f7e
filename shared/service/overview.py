"""Per collection, what a person checking on their backups wants first: how old its
last good backup is, whether the newest one is suspect, and how many copies retention
keeps."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from shared.domain.jobs import Job, Run, job_id_for
from shared.service.context import Context
from shared.service.prune import plan
from shared.service.verify import unverified

RUNS_LOOKED_AT = 200


@dataclass
class CollectionState:
    source: str
    collection: str
    latest: Job | None = None  # the newest finished backup attempt
    latest_verify_failed: bool = False  # a verify of its run found the newest backup wrong
    last_good: Job | None = None
    kept: int | None = None  # backups retention keeps; None without a policy

    def view(self, now: datetime) -> dict[str, Any]:
        good = self.last_good
        latest = self.latest
        return {
            "source": self.source,
            "collection": self.collection,
            "last_good": None if good is None or good.result is None else {
                "run_id": good.run_id, "finished_at": _iso(good.finished_at),
                "records": good.result.records,
                "age_seconds": round((now - (good.finished_at or now)).total_seconds()),
            },
            "latest": None if latest is None else {
                "run_id": latest.run_id, "status": latest.status.value,
                "suspect": latest.suspect and latest.acknowledged_at is None,
                "records": latest.result.records if latest.result else None,
                "previous_records": latest.previous_records,
                "verify_failed": self.latest_verify_failed,
            },
            "kept": self.kept,
        }


def collections(ctx: Context) -> list[CollectionState]:
    found: dict[tuple[str, str], CollectionState] = {}
    damaged: dict[str, frozenset[str]] = {}  # by run: what its verify found wrong, read once

    def see(run: Run, job: Job) -> None:  # backup runs' jobs, newest run first
        if not job.status.terminal:
            return
        state = found.setdefault((job.source, job.collection),
                                 CollectionState(job.source, job.collection))
        # Retention's notion of good: a backup a verify of its run found wrong is not.
        if run.run_id not in damaged:
            damaged[run.run_id] = unverified(run)
        wrong = f"{job.source}/{job.collection}" in damaged[run.run_id]
        if state.latest is None:
            state.latest = job
            state.latest_verify_failed = wrong
        if state.last_good is None and job.good and job.pruned_at is None and not wrong:
            state.last_good = job

    if ctx.config.retention is not None:  # the plan reads every backup run's jobs: see them there
        kept = Counter(d.backup.collection for d in plan(ctx, see=see).decisions if d.keep)
        for state in found.values():
            state.kept = kept[(state.source, state.collection)]
    else:
        # A collection whose latest and last good backups are known is settled: its job in
        # an older run (at a known id, `job_id_for`) cannot change the answer and is not
        # read. Every other job is, so a collection seen only in older runs still shows.
        settled: set[tuple[str, str]] = set()
        for run in ctx.state.list_runs(limit=RUNS_LOOKED_AT):  # newest first
            if run.operation != "backup":
                continue
            skip = frozenset(job_id_for(run.run_id, *key) for key in settled)
            for job in ctx.state.list_jobs(run.run_id, skip=skip):
                see(run, job)
                known = found.get((job.source, job.collection))
                if known is not None and known.latest is not None and known.last_good is not None:
                    settled.add((job.source, job.collection))
    return [found[key] for key in sorted(found)]


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment else None


