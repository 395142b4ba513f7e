"""SCF events in, one pipeline call, JSON-able results out. The handlers in functions/
are one line each over these."""

from __future__ import annotations

import logging
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from shared.app import build_context
from shared.config import load_config
from shared.logs import configure_logging, log_context
from shared.pipeline import Context, close_finished_runs, finish, poll, start_run

log = logging.getLogger(__name__)


class TimerEvent(BaseModel):
    model_config = ConfigDict(extra="allow")

    Type: str
    TriggerName: str = "timer"
    Time: str


class RunRequest(BaseModel):
    """A direct invocation of the trigger: `{"sources": [...], "idempotency_key": "..."}`."""

    model_config = ConfigDict(extra="forbid")

    sources: list[str] | None = None
    idempotency_key: str


class FinishRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    job_id: str


def _context() -> Context:
    configure_logging()
    return build_context(load_config())


def _is_timer(event: dict[str, Any]) -> bool:
    return str(event.get("Type", "")).lower() == "timer"


def handle_trigger(event: dict[str, Any]) -> dict[str, Any]:
    """Timer: the scheduled backup (a retried timer event maps to the same run).
    API Gateway: the HTTP API (shared/http_api.py); the context is built only for a
    caller who passed authentication."""
    if "httpMethod" in event:
        configure_logging()
        from shared.http_api import handle_event  # only the HTTP trigger needs the API

        return handle_event(event, _context)
    ctx = _context()
    if _is_timer(event):
        timer = TimerEvent.model_validate(event)
        key = f"timer:{timer.TriggerName}:{timer.Time}"
        run, created = start_run(ctx, idempotency_key=key, trigger="timer")
    else:
        request = RunRequest.model_validate(event)
        run, created = start_run(ctx, idempotency_key=f"invoke:{request.idempotency_key}",
                                 trigger="invoke", sources=request.sources)
    return {"run_id": run.run_id, "created": created}


def handle_poller(event: dict[str, Any]) -> dict[str, Any]:
    ctx = _context()
    summary = poll(ctx)
    return {"advanced": summary.advanced, "closed_runs": summary.closed_runs}


def handle_finisher(event: dict[str, Any]) -> dict[str, Any]:
    ctx = _context()
    try:
        request = FinishRequest.model_validate(event)
    except ValidationError as exc:
        log.error("finisher event is not {\"job_id\": ...}", extra={"problems": exc.errors()})
        return {"error": "expected an event like {\"job_id\": \"...\"}"}
    with log_context(job_id=request.job_id):
        outcome = finish(ctx, request.job_id)
        close_finished_runs(ctx)
    return {"job_id": request.job_id, "outcome": outcome}
