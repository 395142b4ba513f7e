"""Start a run: record it and its jobs once per idempotency key, then start what can
start within the time budget; the poller starts the rest."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from shared.config import Config
from shared.domain.errors import BackupError, Retryable, RetryLater, StateError
from shared.domain.jobs import Job, JobStatus, Run, job_id_for, run_id_for
from shared.logs import log_context, redact
from shared.ports import RestoreCaveats
from shared.service.context import Budget, Context
from shared.service.poll import advance

log = logging.getLogger(__name__)



class UnknownSource(ValueError):
    pass


def start_run(
    ctx: Context,
    *,
    idempotency_key: str,
    trigger: str,
    sources: list[str] | None = None,
    collections: dict[str, list[str]] | None = None,
) -> tuple[Run, bool]:
    chosen = _choose_sources(ctx.config, sources or (list(collections) if collections else None))
    found, discovery = _discover(ctx, chosen, collections)
    now = ctx.clock()
    run_id = run_id_for(idempotency_key, now)
    deadline = now + timedelta(minutes=ctx.config.timing.export_deadline_minutes)
    jobs = [
        Job(
            job_id=job_id_for(run_id, name, collection),
            run_id=run_id,
            source=name,
            collection=collection,
            next_check_at=now,
            deadline_at=deadline,
            created_at=now,
            updated_at=now,
        )
        for name in chosen
        for collection in found[name]
    ]
    run = Run(run_id=run_id, idempotency_key=idempotency_key, trigger=trigger,
              sources=chosen, collections=asked(collections), created_at=now,
              discovery=discovery)
    run, created = ctx.state.create_run(run, jobs)
    with log_context(run_id=run.run_id):
        if not created:
            log.info("run already recorded for this request; nothing new started")
            return run, False
        log.info("run recorded", extra={"jobs": len(jobs), "sources": chosen})
        _warn_unrestorable(ctx, chosen)
        budget = Budget(ctx, ctx.config.timing.start_budget_seconds)
        for job in ctx.state.list_jobs(run.run_id):
            if budget.spent():
                log.info("start budget spent; the poller starts the remaining exports")
                break
            if job.status is JobStatus.PENDING:
                advance(ctx, job)
    return run, True


def _warn_unrestorable(ctx: Context, chosen: list[str]) -> None:
    """Every run says so while a source's export options make backups a restore cannot
    put back as the data was: the user should hear it now, not at restore time."""
    for name in chosen:
        platform = ctx.platforms.get(name)
        caveats = platform.configured_caveats() if isinstance(platform, RestoreCaveats) else []
        if caveats:
            log.warning("backups of this source cannot be restored as the data was",
                        extra={"source": name, "caveats": caveats})


def asked(collections: dict[str, list[str]] | None) -> dict[str, list[str]] | None:
    """The collections a request names, as the run records them (an empty list: all)."""
    named = {name: sorted(set(wanted)) for name, wanted in (collections or {}).items() if wanted}
    return named or None


def _discover(
    ctx: Context, chosen: list[str], wanted: dict[str, list[str]] | None
) -> tuple[dict[str, list[str]], dict[str, dict[str, Any]]]:
    """Each source's collections for this run, and what discovery found (for the run
    manifest). A source whose collections cannot be listed gets no jobs: its error is
    recorded on the run, which then ends failed, while the other sources are backed up."""
    found: dict[str, list[str]] = {}
    discovery: dict[str, dict[str, Any]] = {}
    for name in chosen:
        try:
            found[name] = choose_collections(ctx, name, (wanted or {}).get(name))
            listed = ctx.platforms.get(name).discovery()
        except BackupError as exc:
            message = redact(_not_listed(name, exc) if isinstance(exc, (Retryable, RetryLater))
                             else str(exc))
            log.error("source has nothing to back up", extra={"source": name, "reason": message})
            found[name], discovery[name] = [], {"error": message}
            continue
        except UnknownSource:  # the request names what the source lacks: the caller's error
            raise
        except Exception as exc:  # a bug in one source's listing must not stop the others
            message = redact(_broke(name, exc))
            log.exception("source has nothing to back up", extra={"source": name,
                                                                  "reason": message})
            found[name], discovery[name] = [], {"error": message}
            continue
        if listed is not None:
            discovery[name] = listed
        if not found[name]:  # a run that backs up nothing from a source must say why
            discovery[name] = {**(listed or {}), "error": (
                f"source {name!r}: discovery yielded no collection or table to back up; "
                "check the source's collections/tables and include/exclude")}
    return found, discovery


def _not_listed(source: str, exc: Retryable | RetryLater) -> str:
    """A transient answer to discovery (after the client's own retries): nothing asks again
    for this run, so say what to do. Platform errors state the cause only; what happens
    next is the caller's to say (the poller's for a job, this for discovery)."""
    if isinstance(exc, StateError):  # the source's tokens are cached there: not the platform
        return (f"source {source!r} could not be listed: the state backend failed while its "
                f"token was read or stored ({exc}). This run backs up nothing from it and "
                "does not list it again; check the state backend (state.url, its database or "
                "bucket and the function's access to it) and start the backup again")
    if isinstance(exc, RetryLater):
        return (f"source {source!r} could not be listed: the platform asked to wait ({exc}). "
                "This run backs up nothing from it and does not list it again; start the backup "
                "again once the platform's rate limit, quota or outage has passed")
    # a Retryable's cause varies (busy, unreachable, collections changing while listed):
    # the platform's message names it, so nothing here may name another
    return (f"source {source!r} could not be listed, for a reason that may pass ({exc}). This "
            "run backs up nothing from it and does not list it again; start the backup again "
            "once the cause in parentheses has passed")


def _broke(source: str, exc: Exception) -> str:
    """An error the platform code did not expect (a bug, a library's own failure)."""
    return (f"source {source!r} could not be listed: unexpected error "
            f"{type(exc).__name__}: {exc}. This run backs up nothing from it; the traceback "
            "is in the log: report it, and start the backup again once it is fixed")


def choose_collections(ctx: Context, source: str, wanted: list[str] | None) -> list[str]:
    return subset(ctx.platforms.get(source).collections(), wanted, lambda unknown, available: (
        f"source {source!r} has no collection(s) {unknown}; it backs up: {available}"))


def subset(available: list[str], wanted: list[str] | None,
           complaint: Callable[[str, str], str]) -> list[str]:
    """`wanted` in the order of `available`, or all of it; a name not available is an error."""
    if not wanted:
        return available
    unknown = sorted(set(wanted) - set(available))
    if unknown:
        raise UnknownSource(complaint(", ".join(unknown), ", ".join(available)))
    return [name for name in available if name in wanted]


def _choose_sources(config: Config, names: list[str] | None) -> list[str]:
    return subset([s.name for s in config.sources], names, lambda unknown, available: (
        f"unknown source(s): {unknown}; configured sources are: {available}"))
