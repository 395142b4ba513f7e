"""Close: a run whose jobs all ended gets its run manifest, its final status and one
notification (whoever wins the compare-and-set on the run sends it)."""

from __future__ import annotations

import logging
from typing import Any

from shared.domain.jobs import Job, JobStatus, Run, RunStatus, count_warning
from shared.domain.layout import run_manifest_key
from shared.domain.manifest import RunManifest, as_document
from shared.logs import log_context
from shared.service.context import Context

log = logging.getLogger(__name__)


def close_finished_runs(ctx: Context) -> list[str]:
    closed = []
    for run in ctx.state.open_runs():
        jobs = ctx.state.list_jobs(run.run_id)
        if not all(j.status.terminal for j in jobs):
            continue
        with log_context(run_id=run.run_id):
            if _close_run(ctx, run, jobs):
                closed.append(run.run_id)
    return closed


def _close_run(ctx: Context, run: Run, jobs: list[Job]) -> bool:
    now = ctx.clock()
    failed = [j for j in jobs if j.status is JobStatus.FAILED]
    unlisted = {s: d["error"] for s, d in run.discovery.items() if "error" in d}
    summary: dict[str, Any] = {
        "jobs": len(jobs),
        "done": len(jobs) - len(failed),
        "failed": len(failed),
        "bytes": sum(j.result.bytes for j in jobs if j.result),
        "records": sum(j.result.records for j in jobs if j.result),
    }
    if unlisted:
        summary["sources_not_listed"] = sorted(unlisted)
    counts = {f"{j.source}/{j.collection}": w for j in jobs if (w := count_warning(j))}
    if counts:
        summary["count_warnings"] = counts
    if not jobs and not unlisted:  # never quiet, even if no source said why
        unlisted = {"*": "the run had no collection or table to back up"}
        summary["sources_not_listed"] = ["*"]
    status = RunStatus.SUCCEEDED if jobs and not failed and not unlisted else RunStatus.FAILED
    key = run_manifest_key(ctx.config.destination.prefix, run.run_id)
    manifest = RunManifest.of(run, jobs, status=status, summary=summary, finished_at=now)
    ctx.objects.put_json(key, as_document(manifest))
    saved = ctx.state.save_run(run.model_copy(update={
        "status": status, "finished_at": now, "manifest_key": key, "summary": summary}))
    if saved is None:
        return False
    ctx.notifier.notify(saved, jobs)
    if status is RunStatus.SUCCEEDED:
        log.info("run succeeded", extra=summary)
    else:
        log.error("run finished with failures", extra={
            **summary, "failures": {**{f"{j.source}/{j.collection}": j.error for j in failed},
                                    **{f"{s}/*": error for s, error in unlisted.items()}}})
    return True
