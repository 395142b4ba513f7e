"""SCF events in, one use case, JSON-able results out. The handlers in functions/ are
one line each over these. Each is handed SCF's `context`, and stops its work before SCF's
time limit for the invocation runs out (see `invocation_stop_by`).

Each handler imports its own use case when first called, so a function's cold start
loads the service code it runs and not the other two functions' (issue 15)."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from shared.bootstrap import build_context, doctor_subject
from shared.config import Config, ConfigError, load_config
from shared.entrypoints.coldstart import ends_cold_start, resume
from shared.logs import configure_logging, log_context, redact
from shared.service.context import Context

log = logging.getLogger(__name__)
E = TypeVar("E", bound=BaseModel)


class MalformedEvent(ValueError):
    """An event this function does not take. Raised, not answered: SCF counts an invocation
    whose code raises as failed (运行错误, "函数代码抛出异常"), retries an async one and then
    hands it to the dead-letter queue if one is set (错误类型与重试策略,
    cloud.tencent.com/document/product/583/41138); an answer, whatever it says, is a success
    no one is shown."""


TIMER_DOC = "cloud.tencent.com/document/product/583/31439, Timer 触发器的事件消息结构"


class TimerEvent(BaseModel):
    """SCF's timer event: {"Type": "Timer", "TriggerName": ..., "Time": ..., "Message": ...}
    (TIMER_DOC)."""

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
    try:
        return build_context(load_config(), stop_by=invocation_stop_by(invocation, started),
                             warm_platforms=warm_platforms)
    finally:
        resume()  # the work ahead runs with the collector on (coldstart)


def _is_timer(event: dict[str, Any]) -> bool:
    return str(event.get("Type", "")).lower() == "timer"


@ends_cold_start
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
    if event.get("doctor") == "config":  # doctor, from a machine: which config runs here
        return _doctor_answer("trigger")[1]
    from shared.service.start import start_run

    if _is_timer(event):
        timer = _trigger_event(TimerEvent, event)
        key = f"timer:{timer.TriggerName}:{timer.Time}"
        run, created = start_run(_context(invocation), idempotency_key=key, trigger="timer")
    else:
        request = _trigger_event(RunRequest, event)  # first: a wrong event needs no config
        run, created = start_run(_context(invocation),
                                 idempotency_key=f"invoke:{request.idempotency_key}",
                                 trigger="invoke", sources=request.sources)
    return {"run_id": run.run_id, "created": created}


def _trigger_event(model: type[E], event: dict[str, Any]) -> E:
    """The trigger's event, or MalformedEvent naming its fields: pydantic's own error
    repeats the values, and SCF writes a failed invocation's error to the log as it is."""
    try:
        return model.model_validate(event)
    except ValidationError as exc:
        raise _malformed(
            f'{_problems(exc)}: the trigger takes a run request {{"idempotency_key": "<any key>", '
            '"sources": ["<source name>", ...]} (sources optional: every source; the same key '
            f"again answers the same run), its timer's event ({TIMER_DOC}) or {{\"doctor\": true}}: "
            "invoke it with one of those, or POST /runs on the Function URL"
        ) from None


def _problems(exc: ValidationError) -> str:
    """Each problem as `field "name": what`; the event's values are never repeated."""
    said = {"missing": "missing", "extra_forbidden": "not expected", "string_type": "not a string",
            "list_type": "not a list"}
    return "; ".join(f'field "{".".join(str(part) for part in error["loc"])}": '
                     f'{said.get(error["type"], error["type"])}' for error in exc.errors())


def _malformed(text: str) -> MalformedEvent:
    configure_logging()
    log.error("malformed event", extra={"reason": text})
    return MalformedEvent(text)


def _poller_tick(event: object) -> None:
    """The poller takes its timer's event only: any other is a mistake to show, not a tick."""
    keys = list(event)[:8] if isinstance(event, dict) else []
    fields = ", ".join(f'"{str(key)[:40]}"' for key in keys) or "none"
    fix = (f'the poller runs on its timer trigger and takes SCF\'s timer event {{"Type": "Timer", '
           f'"TriggerName": ..., "Time": ...}} ({TIMER_DOC}); to run it by hand, invoke it with '
           "such an event, or wait for its next minute")
    if not isinstance(event, dict) or not _is_timer(event):
        raise _malformed(f'field "Type" is not "Timer" (the event\'s fields: {fields}): {fix}')
    try:
        TimerEvent.model_validate(event)
    except ValidationError as exc:
        raise _malformed(f"{_problems(exc)}: {fix}") from None


@ends_cold_start
def handle_poller(event: dict[str, Any], invocation: object = None) -> dict[str, Any]:
    from shared.service.poll import poll

    if isinstance(event, dict) and event.get("doctor") is True:
        return _poller_doctor()
    _poller_tick(event)
    ctx = _context(invocation)
    summary = poll(ctx)
    return {"advanced": summary.advanced, "closed_runs": summary.closed_runs}


def run_doctor(*, notify: bool = False) -> dict[str, Any]:
    """`{"doctor": true}` to the trigger: every doctor check with this function's role,
    network and egress IP (shared/service/doctor.py); the report is logged and returned."""
    from shared.service.doctor import diagnose

    resume()  # a doctor run is no cold start to hurry: its leftovers must stay collectable
    configure_logging()
    report = diagnose(lambda: doctor_subject(load_config()), notify=notify)
    (log.info if report.ok else log.error)("doctor report", extra=report.to_dict())
    return report.to_dict()


def _finish_request(event: object) -> FinishRequest:
    fix = ('the finisher takes {"job_id": "<job id>"}, as the poller\'s async Invoke sends it '
           '(or {"doctor": true} from doctor): leave it to the poller, or invoke it with a job id '
           "from GET /runs/{run_id}")
    if not isinstance(event, dict):
        raise _malformed(f'field "job_id" missing (the event is not a JSON object): {fix}')
    try:
        return FinishRequest.model_validate(event)
    except ValidationError as exc:
        raise _malformed(f"{_problems(exc)}: {fix}") from None


def _doctor_answer(function: str) -> tuple[Config | None, dict[str, Any]]:
    """What a function says to `doctor`'s `{"doctor": ...}` Invoke: whether this function
    (its own environment and package) can load the config, and a digest of it, for the
    doctor to compare with the other functions' and its own. Touches nothing."""
    resume()  # as in run_doctor
    try:
        config = load_config()
    except ConfigError as exc:  # the problems as written, never a value; not the file's path
        return None, {"doctor": function, "ok": False, "error": redact("; ".join(exc.problems))}
    return config, {"doctor": function, "ok": True, "config": config.digest}


def _finisher_doctor() -> dict[str, Any]:
    """`doctor` invokes the finisher to prove the role may, and that it can load the config
    every copy starts with: a variable missing here alone would fail every copy while the
    Invoke succeeds."""
    return _doctor_answer("finisher")[1]


def _poller_doctor() -> dict[str, Any]:
    """`doctor` invokes the poller as it does the finisher, and the poller also proves it
    reaches the state store (its network, VPC and the database's allow-list are its own)
    with the doctor's read and write probe. No job is advanced: `poll` is never called."""
    from shared.domain.errors import BackupError

    config, answer = _doctor_answer("poller")
    if config is None:
        return answer
    try:
        doctor_subject(config).deployment.state()
    except (BackupError, ConfigError, ValueError) as exc:
        return {**answer, "ok": False, "state": redact(str(exc))}
    return answer


@ends_cold_start
def handle_finisher(event: dict[str, Any], invocation: object = None) -> dict[str, Any]:
    if isinstance(event, dict) and event.get("doctor") is True:
        return _finisher_doctor()
    from shared.service.finish import finish

    request = _finish_request(event)  # before the context: a wrong event needs no config
    ctx = _context(invocation, warm_platforms=True)
    with log_context(job_id=request.job_id):
        outcome = finish(ctx, request.job_id, close_run=True)
    return {"job_id": request.job_id, "outcome": outcome}
