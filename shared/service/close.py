"""Close: a run whose jobs all ended gets its run manifest, its final status and one
notification (whoever wins the compare-and-set on the run sends it)."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from shared.domain.errors import BackupError, StorageError
from shared.domain.jobs import PAGED_CHECKPOINT, Job, JobStatus, Run, RunStatus, count_warning
from shared.domain.layout import (
    EXTENSIONS,
    data_key,
    parked_key,
    restore_manifest_key,
    run_manifest_key,
)
from shared.logs import log_context, redact
from shared.service.context import Context
from shared.service.outbox import claimed, keep_in_reach, settle, with_alert

if TYPE_CHECKING:
    from shared.service.verify import Report

log = logging.getLogger(__name__)

# What a verify at close leaves of the invocation's time (`ctx.stop_by`, which keeps
# SCF's own margin: entrypoints/scf.py) once it stops reading objects back (a full one):
# the quick checks of what is left (a HEAD each, for verify.QUICK_CHECKS_SECONDS at most),
# the run manifest, the close and its notification.
VERIFY_MARGIN_SECONDS = 10.0


class RunsNotClosed(Exception):
    """Some runs could not be closed (each one logged with its reason); the others were.
    They stay open, so the next poller tick tries them again."""

    def __init__(self, reasons: dict[str, str], closed: list[str]) -> None:
        listed = "; ".join(f"{run_id}: {reason}" for run_id, reason in reasons.items())
        super().__init__(f"{len(reasons)} run(s) could not be closed, the next poller tick "
                         f"tries again: {listed}")
        self.reasons = reasons
        self.closed = closed


def close_finished_runs(ctx: Context, run_id: str | None = None) -> list[str]:
    """Close what ended (every open run, or only `run_id`); then, if a run closed and a
    retention policy is set, prune. A run that cannot close (its manifest cannot be
    written, say) keeps no other from closing: RunsNotClosed is raised after the rest."""
    closed: list[str] = []
    reasons: dict[str, str] = {}
    for run in _without_open_jobs(ctx, run_id):
        with log_context(run_id=run.run_id):
            try:
                if _close(ctx, run):
                    closed.append(run.run_id)
            except Exception as exc:  # one run's failure must not keep the others open
                reasons[run.run_id] = _not_closed(exc)
    _prune(ctx, closed)
    if reasons:
        raise RunsNotClosed(reasons, closed)
    return closed


def _close(ctx: Context, run: Run) -> bool:
    """Close one run if all its jobs ended; whether a backup run was closed here."""
    jobs = ctx.state.list_jobs(run.run_id)
    if not all(j.status.terminal for j in jobs):
        return False
    if run.operation == "restore":
        _close_restore(ctx, run, jobs)
        return False
    return _close_run(ctx, run, jobs)


def _not_closed(exc: Exception) -> str:
    """Log why a run could not close (a traceback for what is not a known error); the
    reason, redacted."""
    reason = redact(f"{type(exc).__name__}: {exc}")
    log.error("run could not be closed; the next poller tick tries again",
              extra={"reason": reason}, exc_info=not isinstance(exc, BackupError))
    return reason


def _prune(ctx: Context, closed: list[str]) -> None:
    if closed and ctx.config.retention is not None:
        # loaded once a run closes: most ticks close none
        from shared.service.prune_alert import prune_after_close

        prune_after_close(ctx, max(closed))


def _without_open_jobs(ctx: Context, run_id: str | None) -> list[Run]:
    """Open runs none of whose jobs is open (every open run, or only `run_id`). Asking
    first makes a busy run cost a glance, not a read of each of its jobs; a finisher in
    a busy run does not even read the run."""
    if run_id is None:
        return [r for r in ctx.state.open_runs() if not ctx.state.run_has_open_jobs(r.run_id)]
    run = None if ctx.state.run_has_open_jobs(run_id) else ctx.state.get_run(run_id)
    return [run] if run is not None and run.status is RunStatus.RUNNING else []


def _verify(ctx: Context, run: Run, jobs: list[Job]) -> dict[str, Any] | None:
    """`verify.after_run`: the run's backups checked again before it is called done."""
    mode = ctx.config.verify.after_run
    if mode == "off" or not any(j.status is JobStatus.DONE for j in jobs):
        return None
    from shared.service.verify import problem_lines, verdicts, verify_jobs

    report = verify_jobs(ctx, run.run_id, jobs, quick=mode == "quick",
                         out_of_time=lambda: verify_out_of_time(ctx))
    problems = problem_lines(report)
    if problems:
        log.error("verify after the run found problems", extra={"problems": problems})
    result = {"mode": mode, "ok": report.ok, "objects": len(report.objects),
              "problems": problems, **verdicts(report)}
    if mode == "full":
        result.update(_what_was_read(report))
    elif report.unchecked:
        result.update(_what_was_not_checked(report))
    return result


def verify_out_of_time(ctx: Context) -> bool:
    """Whether a full verify must stop reading objects back, and any verify start its last
    QUICK_CHECKS_SECONDS of quick checks (verify._TimeLeft), so the run still closes (a
    backup too big to check in one would else keep its run open for good, every tick
    killed the same way), or the HTTP API still answers (else a bare gateway error),
    before SCF stops the invocation. SCF ends an invocation at the function's timeout
    (API-NOTES.md, SCF: "timeout 1-900 s"; tencent-scf docs/configure.md `timeout`, as
    scf-poller/serverless.yml notes)."""
    return ctx.stop_by is not None and time.monotonic() >= ctx.stop_by - VERIFY_MARGIN_SECONDS


def _what_was_read(report: Report) -> dict[str, Any]:
    """How many objects a full verify read back; those it only quick-checked, its time
    having run out, and how to read them back: the CLI's verify has no such limit."""
    from shared.service.verify import read_back_step

    read: dict[str, Any] = {"fully_read": report.fully_read}
    if report.quick_only or report.unchecked:
        read["quick_only"] = report.quick_only
        if report.unchecked:
            read["unchecked"] = report.unchecked
        read["next_step"] = read_back_step(report, "the closing invocation's time")
        log.warning("verify after the run ran out of time", extra=read)
    return read


def _what_was_not_checked(report: Report) -> dict[str, Any]:
    """The objects a quick verify did not check, its time having run out (thousands of
    HEADs can outlast the invocation), and how to check them: the CLI has no such limit."""
    from shared.service.verify import read_back_step

    left = {"unchecked": report.unchecked,
            "next_step": read_back_step(report, "the closing invocation's time")}
    log.warning("verify after the run ran out of time", extra=left)
    return left


def _drop_parked_rows(ctx: Context, jobs: list[Job]) -> None:
    """A paged copy that failed may have left the rows it parked (`<key>.parked`, see
    copy_paged) in the bucket: nobody reads them again, and the user would pay for them.
    Deleted at the close, where every way a job fails ends (finisher or poller). Only the
    failed job's own data key plus `.parked`, never a key its checkpoint merely names (a
    state row could be tampered with): no manifest names such a key, as names are encoded
    without dots (layout.safe_segment). Best effort: a delete that fails is logged, the
    run closes all the same."""
    for job in jobs:
        key = _parked_rows_of(ctx, job)
        if key is None:
            continue
        try:
            ctx.objects.delete(key)
        except StorageError as exc:
            log.warning("could not delete the rows a failed copy parked",
                        extra={"key": key, "reason": str(exc)})


def _parked_rows_of(ctx: Context, job: Job) -> str | None:
    """The side object a failed paged copy may have parked rows in; None for other jobs."""
    saved = (job.checkpoint or {}).get(PAGED_CHECKPOINT)
    if job.status is not JobStatus.FAILED or not isinstance(saved, dict):
        return None
    own = {data_key(ctx.config.destination.prefix, job.run_id, job.source, job.collection,
                    file_type) for file_type in EXTENSIONS}
    key = saved.get("key")
    return parked_key(key) if isinstance(key, str) and key in own else None


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
    suspect = [j for j in jobs if j.suspect and j.acknowledged_at is None]
    if suspect:
        summary["suspect"] = [{"source": j.source, "collection": j.collection,
                               "records": j.result.records if j.result else 0,
                               "previous_records": j.previous_records} for j in suspect]
    verified = _verify(ctx, run, jobs)
    if verified is not None:
        summary["verify"] = verified
    _drop_parked_rows(ctx, jobs)
    status = (RunStatus.SUCCEEDED if jobs and not failed and not unlisted
              and (verified is None or verified["ok"]) else RunStatus.FAILED)
    key = run_manifest_key(ctx.config.destination.prefix, run.run_id)
    from shared.domain.manifest import RunManifest, as_document  # as prune, above

    manifest = RunManifest.of(run, jobs, status=status, summary=summary, finished_at=now)
    ctx.objects.put_json(key, as_document(manifest))
    saved = _closed(ctx, run, {"status": status, "finished_at": now, "manifest_key": key,
                               "summary": summary})
    if saved is None:
        return False
    _announce(ctx, saved, jobs)
    if status is RunStatus.SUCCEEDED:
        log.info("run succeeded", extra=summary)
    else:
        log.error("run finished with failures", extra={
            **summary, "failures": {**{f"{j.source}/{j.collection}": j.error for j in failed},
                                    **{f"{s}/*": error for s, error in unlisted.items()}}})
    return True


def _close_restore(ctx: Context, run: Run, jobs: list[Job]) -> None:
    """A restore's record in the bucket (`<prefix>/restores/<id>.json`), its final status
    and one notification, like a backup run's."""
    now = ctx.clock()
    ok = bool(jobs) and all(j.status is JobStatus.DONE for j in jobs)
    status = RunStatus.SUCCEEDED if ok else RunStatus.FAILED
    restored = [{"source": j.source, **j.restore.model_dump(mode="json", exclude={"objects"}),
                 "objects": [o.key for o in j.restore.objects], "status": j.status.value,
                 "records_written": j.progress_records, "error": j.error,
                 **{k: v for k, v in (j.checkpoint or {}).items()
                    if k in ("before", "after", "imported", "rejected", "written", "kept")}}
                for j in jobs if j.restore is not None]
    summary: dict[str, Any] = {"restores": restored}
    key = restore_manifest_key(ctx.config.destination.prefix, run.run_id)
    ctx.objects.put_json(key, {"format": 1, "restore_id": run.run_id, "trigger": run.trigger,
                               "status": status.value, "started_at": run.created_at.isoformat(),
                               "finished_at": now.isoformat(), **summary})
    saved = _closed(ctx, run, {"status": status, "finished_at": now, "manifest_key": key,
                               "summary": summary})
    if saved is None:
        return
    _announce(ctx, saved, jobs)
    (log.info if ok else log.error)("restore " + status.value, extra=summary)
    _release_backups(ctx, saved, jobs)


def _release_backups(ctx: Context, run: Run, jobs: list[Job]) -> None:
    """An ended restore's claims on the backups it read and on its target end with it
    (holds.py): they go from their records now, not at the next claim there, so no record
    keeps them. A release that fails leaves only a claim that no longer holds (the next
    claim drops it), so it is logged and the restore stays closed."""
    from shared.service.holds import release, release_target

    for job in jobs:
        if job.restore is None:
            continue
        try:
            release(ctx, job.restore.backup_run_id, run.run_id, [job.restore.backup_job_id])
        except Exception:
            log.warning("an ended restore's claim on its backup could not be released; the "
                        "next claim on that run drops it",
                        extra={"backup_run_id": job.restore.backup_run_id}, exc_info=True)
        try:  # its target too: the next restore into it finds the claim gone
            release_target(ctx, job.source, job.collection, run.run_id)
        except Exception:
            log.warning("an ended restore's claim on its target could not be released; the "
                        "next claim on it drops it",
                        extra={"source": job.source, "target": job.collection}, exc_info=True)


def _closed(ctx: Context, run: Run, update: dict[str, Any]) -> Run | None:
    """The closing compare-and-set; a notification that goes to a webhook is recorded in
    it as not yet delivered and claimed by this closer, so it is never lost between the
    two (a quiet success costs no second write)."""
    closing = run.model_copy(update=update)
    if ctx.notifier.sends(closing):
        closing = with_alert(closing, "run", claimed(ctx.clock()))
    return ctx.state.save_run(closing)


def _announce(ctx: Context, saved: Run, jobs: list[Job]) -> None:
    """Send the notification; one no webhook accepted stays on the run for the poller."""
    sent = saved.undelivered.get("run")
    if sent is not None:
        keep_in_reach(ctx, saved, sent)
    delivered = ctx.notifier.notify(saved, jobs)  # the heartbeat is pinged either way
    if sent is not None:
        settle(ctx, saved, "run", sent, delivered)
