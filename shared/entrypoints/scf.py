"""SCF events in, one use case, JSON-able results out. The handlers in functions/ are
one line each over these. Each is handed SCF's `context`, and stops its work before SCF's
time limit for the invocation runs out (see `invocation_stop_by`).

Each handler imports its own use case when first called, so a function's cold start
loads the service code it runs and not the other two functions' (issue 15)."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from shared.bootstrap import build_context, doctor_subject
from shared.config import load_config
from shared.logs import configure_logging, log_context
from shared.service.context import Context

log = logging.getLogger(__name__)


class TimerEvent(BaseModel):
    model_config = ConfigDict(extra="allow", defer_build=True)

    Type: str
    TriggerName: str = "timer"
    Time: str


class RunRequest(BaseModel):
    """A direct invocation of the trigger: `{"sources": [...], "idempotency_key": "..."}`."""

    model_config = ConfigDict(extra="forbid", defer_build=True)

    sources: list[str] | None = None
    idempotency_key: str


class FinishRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", defer_build=True)

    job_id: str


# Left for writing state, closing runs and answering after the work stops.
MARGIN_SECONDS = 10.0
MARGIN_SHARE = 0.1


def invocation_stop_by(context: object, started: float | None = None) -> float | None:
    """`time.monotonic()` by which this invocation must stop working: SCF's time limit
    less a margin. SCF passes the limit as `time_limit_in_ms` in the handler's context
    (cloud.tencent.com/document/product/583/9210, 函数入参 "context"); a runtime that
    offers `get_remaining_time_in_millis()` instead is read that way. Without either
    (CLI, local server, tests) there is no limit beyond the configured budgets."""
    started = time.monotonic() if started is None else started
    remaining = _remaining_seconds(context)
    if remaining is None:
        if context is not None:
            log.warning("the invocation context has no time limit we recognise; only the "
                        "configured timing.*_budget_seconds bound this invocation",
                        extra={"context_type": type(context).__name__})
        return None
    return started + max(0.0, remaining - max(MARGIN_SECONDS, remaining * MARGIN_SHARE))


def _remaining_seconds(context: object) -> float | None:
    remaining = getattr(context, "get_remaining_time_in_millis", None)
    if callable(remaining):
        return float(remaining()) / 1000
    limit = (context.get("time_limit_in_ms") if isinstance(context, Mapping)
             else getattr(context, "time_limit_in_ms", None))
    try:
        return float(limit) / 1000 if limit is not None else None
    except (TypeError, ValueError):
        return None


def _request_id(invocation: object) -> str:
    """SCF's request id from the handler's context (`request_id`, product/583/9210); a
    Function URL event carries none of its own (product/583/96099)."""
    value = (invocation.get("request_id") if isinstance(invocation, Mapping)
             else getattr(invocation, "request_id", None))
    return value if isinstance(value, str) else ""


def _context(invocation: object = None, started: float | None = None, *,
             warm_platforms: bool = False) -> Context:
    started = time.monotonic() if started is None else started
    configure_logging()
    return build_context(load_config(), stop_by=invocation_stop_by(invocation, started),
                         warm_platforms=warm_platforms)


def _is_timer(event: dict[str, Any]) -> bool:
    return str(event.get("Type", "")).lower() == "timer"


def handle_trigger(event: dict[str, Any], invocation: object = None) -> dict[str, Any]:
    """Timer: the scheduled backup (a retried timer event maps to the same run).
    HTTP (Function URL or API Gateway): the HTTP API (shared/entrypoints/http_api.py);
    the context is built only for a caller who passed authentication."""
    started = time.monotonic()
    if "httpMethod" in event:
        configure_logging()
        from shared.entrypoints.http_api import (
            handle_event,  # only the HTTP trigger needs the API
        )

        return handle_event(event, lambda: _context(invocation, started),
                            request_id=_request_id(invocation))
    if event.get("doctor") is True:
        return run_doctor(notify=event.get("notify") is True)
    from shared.service.start import start_run

    ctx = _context(invocation)
    if _is_timer(event):
        timer = TimerEvent.model_validate(event)
        key = f"timer:{timer.TriggerName}:{timer.Time}"
        run, created = start_run(ctx, idempotency_key=key, trigger="timer")
    else:
        request = RunRequest.model_validate(event)
        run, created = start_run(ctx, idempotency_key=f"invoke:{request.idempotency_key}",
                                 trigger="invoke", sources=request.sources)
    return {"run_id": run.run_id, "created": created}


def handle_poller(event: dict[str, Any], invocation: object = None) -> dict[str, Any]:
    from shared.service.poll import poll

    ctx = _context(invocation)
    summary = poll(ctx)
    return {"advanced": summary.advanced, "closed_runs": summary.closed_runs}


def run_doctor(*, notify: bool = False) -> dict[str, Any]:
    """`{"doctor": true}` to the trigger: every doctor check with this function's role,
    network and egress IP (shared/service/doctor.py); the report is logged and returned."""
    from shared.service.doctor import diagnose

    configure_logging()
    report = diagnose(lambda: doctor_subject(load_config()), notify=notify)
    (log.info if report.ok else log.error)("doctor report", extra=report.to_dict())
    return report.to_dict()


def handle_finisher(event: dict[str, Any], invocation: object = None) -> dict[str, Any]:
    if event.get("doctor") is True:
        # `doctor` invokes the finisher this way to prove the role may: answer, touch nothing
        return {"doctor": "finisher", "ok": True}
    from shared.service.finish import finish

    ctx = _context(invocation, warm_platforms=True)
    try:
        request = FinishRequest.model_validate(event)
    except ValidationError as exc:
        log.error("finisher event is not {\"job_id\": ...}", extra={"problems": exc.errors()})
        return {"error": "expected an event like {\"job_id\": \"...\"}"}
    with log_context(job_id=request.job_id):
        outcome = finish(ctx, request.job_id, close_run=True)
    return {"job_id": request.job_id, "outcome": outcome}
