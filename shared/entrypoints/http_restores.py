"""The HTTP API's restore and verify routes (imported on their first request):
POST /restores, GET /restores, GET /restores/{restore_id}, POST /runs/{run_id}/verify."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr

from shared.domain.errors import BackupError, Retryable, RetryLater, StateError, StorageError
from shared.domain.jobs import Job, Run
from shared.entrypoints.http_api import (
    RUN_ID,
    ContextFactory,
    HttpError,
    Request,
    Response,
    backup_run,
    idempotency_key,
    iso,
    json_object,
    json_response,
    page_query,
    service,
    valid,
)
from shared.logs import redact
from shared.service.restore.plan import RestoreRefused, plan_restore, start_restore


class RestoreBody(BaseModel):
    """POST /restores: which backup goes where, and how."""

    model_config = ConfigDict(extra="forbid", defer_build=True)

    run_id: StrictStr = Field(min_length=1, max_length=64)
    source: StrictStr = Field(min_length=1, max_length=200)
    collection: StrictStr = Field(min_length=1, max_length=1000)
    into: StrictStr | None = Field(default=None, min_length=1, max_length=1000)
    mode: Literal["new", "insert", "upsert"] = "new"
    confirm: StrictStr | None = None  # the target's name, to write into an existing one
    force: StrictBool = False  # restore although its verify found problems or its manifest caveats
    preview: StrictBool = False  # only say what would be written where


def post_restore(request: Request, params: Mapping[str, str], context: ContextFactory) -> Response:
    body = valid(RestoreBody, json_object(request))
    key = idempotency_key(request)
    ctx = service(context)
    recorded_key = f"http-restore:{key or uuid.uuid4()}"
    # A used key is answered first (plan_restore: 409 for another request, its restore for
    # a resend), also when this request names a source that is not configured (README).
    resent = key is not None and ctx.state.find_run(recorded_key) is not None
    if body.source not in [s.name for s in ctx.config.sources] and not resent:
        raise HttpError(400, f"unknown source {body.source!r}; configured sources are: "
                             f"{', '.join(s.name for s in ctx.config.sources)}", "source")
    try:
        plan = plan_restore(ctx, body.run_id, body.source, body.collection, into=body.into,
                            mode=body.mode, force=body.force, idempotency_key=recorded_key)
        if body.preview:
            return json_response(200, {"plan": plan.view()})
        target = plan.order.target
        if plan.writes_into_existing and body.confirm != target:
            raise HttpError(400, f"mode {body.mode} writes into {body.source}/{target}, which "
                                 f'may hold data: send "confirm": "{target}" to go ahead',
                            "confirm")
        run, created = start_restore(ctx, plan, trigger="http", idempotency_key=recorded_key)
    except RestoreRefused as exc:
        raise HttpError(exc.status, str(exc), exc.field) from None
    except BackupError as exc:  # the platform, bucket or state store: not the request
        raise _not_answered(body.source, exc) from None
    return json_response(202, {"restore_id": run.run_id, "created": created,
                               "status_url": f"/restores/{run.run_id}", "plan": plan.view()})


def _not_answered(source: str, exc: BackupError) -> HttpError:
    """503 to try again for a transient failure, 502 for a refusal retrying cannot fix;
    the error quoted (redacted), never a bare 500."""
    field = None if isinstance(exc, (StorageError, StateError)) else "source"
    if isinstance(exc, (Retryable, RetryLater)):
        return HttpError(503, f"the restore of source {source!r} could not be planned or started: "
                              f"{redact(str(exc))}; try again in a minute (with the same "
                              "Idempotency-Key, if you sent one)",
                         field)
    return HttpError(502, f"the restore of source {source!r} could not be planned or started: "
                          f"{redact(str(exc))}; fix what it says (`baas-backup doctor` checks "
                          "the source), then send the request again", field)


def list_restores(request: Request, params: Mapping[str, str], context: ContextFactory) -> Response:
    """One page of restores, newest first, paged as GET /runs is."""
    limit, before = page_query(request)
    store = service(context).state
    listed = store.list_restores(limit + 1, before)  # one more: is there a next page?
    page = listed[:limit]
    return json_response(200, {
        "restores": [restore_view(run, store.list_jobs(run.run_id)) for run in page],
        "next": page[-1].run_id if len(listed) > limit else None,
    })


def get_restore(request: Request, params: Mapping[str, str], context: ContextFactory) -> Response:
    restore_id = params["restore_id"]
    store = service(context).state
    run = store.get_run(restore_id) if RUN_ID.match(restore_id) else None
    if run is None or run.operation != "restore":
        raise HttpError(404, f"no restore {restore_id[:80]!r}; GET /restores lists them",
                        "restore_id")
    return json_response(200, restore_view(run, store.list_jobs(restore_id)))


def restore_view(run: Run, jobs: list[Job]) -> dict[str, Any]:
    """A restore as the API shows it: what goes where, how far it got, how it ended."""
    job = next((j for j in jobs if j.restore is not None), None)
    view: dict[str, Any] = {"restore_id": run.run_id, "status": run.status.value,
                            "trigger": run.trigger, "created_at": iso(run.created_at),
                            "finished_at": iso(run.finished_at), "manifest_key": run.manifest_key}
    if job is None or job.restore is None:
        return view
    order, point = job.restore, job.checkpoint or {}
    return {**view, "source": job.source, "collection": order.collection, "target": order.target,
            "mode": order.mode, "backup_run_id": order.backup_run_id, "records": order.records,
            "forced": order.forced, "step": job.status.value, "attempts": job.attempts,
            "progress": {"objects_sent": _objects_sent(point),
                         "objects": len(order.objects), "rows_written": point.get("rows"),
                         "records_before": point.get("before"), "records_after": point.get("after"),
                         "imported": point.get("imported"), "rejected": point.get("rejected"),
                         "restored": job.progress_records, "note": point.get("note")},
            "error": redact(job.error) if job.error else None}


def _objects_sent(point: Mapping[str, Any]) -> int:
    """Objects the platform has all of: files handed to its import (`sent`), or, for a
    row-by-row restore (OneDB), objects whose every row is written (`object`, the next
    one to write: shared/service/restore/rows.py). A restore keeps one or the other."""
    return len(point.get("sent", [])) or int(point.get("object", 0))


class VerifyBody(BaseModel):
    model_config = ConfigDict(extra="forbid", defer_build=True)

    quick: StrictBool = True  # sizes and CRC64 from HEADs; false streams every object back
    source: StrictStr | None = None
    collection: StrictStr | None = None


def post_verify(request: Request, params: Mapping[str, str], context: ContextFactory) -> Response:
    """Verify a run's backups now; 200 with the report (`ok` says whether they passed).
    A failed verify is recorded on the run and sent as an alert. A full one stops reading
    objects back in time to answer within the trigger's timeout, like the one at close."""
    from shared.service.close import verify_out_of_time
    from shared.service.verify import (
        NothingToVerify,
        latest_run,
        read_back_step,
        record,
        verify_run,
    )

    body = valid(VerifyBody, json_object(request))
    ctx = service(context)
    run_id = params["run_id"]
    try:
        if run_id == "latest":
            run_id = latest_run(ctx, body.source, body.collection)
        else:
            backup_run(ctx.state, run_id)
        report = verify_run(ctx, run_id, source=body.source, collection=body.collection,
                            quick=body.quick, out_of_time=lambda: verify_out_of_time(ctx))
    except NothingToVerify as exc:
        raise HttpError(404, str(exc), "run_id") from None
    report.next_step = read_back_step(report, "this request's time (the trigger function's "
                                              "timeout)")
    record(ctx, report)
    return json_response(200, report.as_json())
