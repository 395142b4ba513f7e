"""Retention after a run closes: the prune, and the "retention" alert when it fails or
COS refuses what it set out to delete or move (kept on the run and sent again by the
poller until a webhook takes it, as outbox.py does for every alert)."""

from __future__ import annotations

import logging

from shared.logs import redact
from shared.service.context import Context
from shared.service.outbox import SAVE_TRIES, claimed, keep_in_reach, settle, with_alert
from shared.service.prune import prune

log = logging.getLogger(__name__)


def prune_after_close(ctx: Context, run_id: str) -> None:
    """Apply retention once runs closed (`run_id`: the newest of them). A prune that
    fails, or whose deletes or moves to the cold class COS refused, is told through the
    webhooks as a "retention" alert on that run (one per failing close): old backups would
    pile up, and be paid for, with only a log saying so."""
    try:
        refused = prune(ctx).refused
    except Exception as exc:  # a prune that fails must not keep runs from closing; it runs again
        log.exception("retention could not be applied; the next closing run tries again")
        text = _stopped_text(ctx, run_id, redact(f"{type(exc).__name__}: {exc}"))
    else:
        if not refused:
            return
        text = _refused_text(ctx, run_id, refused)
    _tell_retention(ctx, run_id, text)


# The actions COS checks for deleting and listing under the prefix ("Working with COS API
# Authorization Policies", https://www.tencentcloud.com/document/product/436/30580); a
# move to the cold class is a HEAD and a copy of the object onto itself (PUT Object - Copy,
# cloud.tencent.com/document/product/436/10881: cos:GetObject on the source, cos:PutObject
# on the target).
_RETENTION_FIX = ("Fix: give the bucket key cos:DeleteObject on {prefix}/* (to move backups "
                  "to the cold class also cos:HeadObject, cos:GetObject and cos:PutObject) "
                  "and cos:GetBucket on the prefix (docs/cam-policy.json; `baas-backup "
                  "doctor` checks the bucket), or wait out a COS outage; then `baas-backup "
                  "prune` does it now and lists what COS still refuses, or the next run's "
                  "prune does.")
_SHOWN = 10  # reasons listed in one alert (robots cut long messages); the log has every one


def _refused_text(ctx: Context, run_id: str, refused: list[str]) -> str:
    lines = "\n".join(f"- {reason}" for reason in refused[:_SHOWN])
    more = f"\n- and {len(refused) - _SHOWN} more (the log has them)" if len(refused) > _SHOWN else ""
    return (f"⚠ retention could not delete or move to the cold class what it set out to "
            f"after backup run {run_id} closed ({len(refused)} refused): old backups stay in "
            f"the bucket, or in a dearer storage class, and are paid for, until this is "
            f"fixed. The run itself is not affected.\n{lines}{more}\n"
            + _RETENTION_FIX.format(prefix=ctx.config.destination.prefix))


def _stopped_text(ctx: Context, run_id: str, reason: str) -> str:
    return (f"⚠ retention could not be applied after backup run {run_id} closed: {reason}\n"
            "Nothing more is deleted until this is fixed: old backups stay in the bucket, "
            "and are paid for. The run itself is not affected. Fix: `baas-backup prune` "
            "shows the error again; `baas-backup doctor` checks the bucket (cos:PutObject, "
            f"cos:DeleteObject and cos:GetBucket on {ctx.config.destination.prefix}/, "
            "docs/cam-policy.json) and the state store; the next run's prune tries again.")


def _tell_retention(ctx: Context, run_id: str, text: str) -> None:
    """Send the alert, kept on the run first (outbox.py): one no webhook accepts is sent
    again by the poller. A state store that refuses the write (it may be why the prune
    failed) costs only the resending: the alert is still sent now."""
    alert = claimed(ctx.clock(), text)
    saved = None
    try:
        for _ in range(SAVE_TRIES):  # compare-and-set: another writer may have changed the run
            run = ctx.state.get_run(run_id)
            if run is None:
                break
            saved = ctx.state.save_run(with_alert(run, "retention", alert))
            if saved is not None:
                keep_in_reach(ctx, saved, alert)
                break
    except Exception:
        log.exception("could not keep the retention alert on its run; it is sent once now")
    delivered = ctx.notifier.alert(text)
    if saved is not None:
        settle(ctx, saved, "retention", alert, delivered)
