"""Alerts no webhook accepted, sent again. A run's notification ("run"), a verify's
alert ("verify") and the alert of a prune that failed after the run closed ("retention",
close.py) are kept on their run (`Run.undelivered`) from before they are first sent
until a webhook accepts one; each poller tick sends again those still waiting, for
`GIVE_UP_AFTER`, then marks them given up (still shown by the API). Every write is a
compare-and-set on the run, and a sender claims an alert in the same write before sending
it, so overlapping pollers do not send it twice."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from datetime import datetime, timedelta

from shared.domain.jobs import Run, UndeliveredAlert
from shared.logs import log_context
from shared.service.context import Context

log = logging.getLogger(__name__)

# Longer than one send takes (three tries per webhook, each bounded by the HTTP timeout),
# so a claim lapses only when its sender died: then the next tick sends the alert again.
CLAIM = timedelta(minutes=10)
GIVE_UP_AFTER = timedelta(days=1)
# Runs a tick's pages do not reach that carry an alert (`keep_in_reach`): {run id: until}.
FAR_KEY = "alert:outbox:far"
SAVE_TRIES = 5  # compare-and-set: other writers (a verify, retention's holds) may race


def claimed(now: datetime, text: str | None = None) -> UndeliveredAlert:
    """A new alert, claimed by its first sender."""
    return UndeliveredAlert(text=text, since=now, claimed_until=now + CLAIM)


def with_alert(run: Run, kind: str, alert: UndeliveredAlert | None) -> Run:
    """`run` with its `kind` alert set, or forgotten (None)."""
    kept = {k: a for k, a in run.undelivered.items() if k != kind}
    return run.model_copy(update={"undelivered": kept if alert is None else {**kept, kind: alert}})


def waiting(run: Run) -> bool:
    """Whether `run` keeps an alert the poller still sends: retention must not delete the
    run meanwhile, or the news it carries (a failure, say) is lost with it."""
    return any(alert.gave_up_at is None for alert in run.undelivered.values())


def settle(ctx: Context, run: Run, kind: str, sent: UndeliveredAlert, delivered: bool) -> None:
    """After a send: forget the alert once a webhook took it, else release the claim for
    the next tick. Only the alert that was sent: a newer one of the same kind stays."""
    current: Run | None = run
    for _ in range(SAVE_TRIES):
        if current is None or current.undelivered.get(kind) != sent:
            return
        kept = None if delivered else sent.model_copy(update={"claimed_until": None})
        if ctx.state.save_run(with_alert(current, kind, kept)) is not None:
            if not delivered:
                log.error(f"no webhook accepted the {kind} alert; the next poller tick sends it "
                          "again", extra={"tries": sent.tries, "since": sent.since.isoformat()})
            return
        current = ctx.state.get_run(run.run_id)
    log.error(f"could not record what became of the {kind} alert; its claim lapses and the "
              "next poller tick decides", extra={"delivered": delivered})


def resend(ctx: Context, newest: list[Run], *, page: int,
           tried_before: datetime | None = None) -> int:
    """Send again every waiting alert first tried before `tried_before` (one tried since
    waits for the next tick); how many were accepted. `newest`: the newest `page` runs, as
    the caller listed them; older pages are read back as far as a run can carry an alert
    still within its `GIVE_UP_AFTER` (`reach`), so a busy deployment's alerts are not lost
    behind the newest page, and years of runs cost no more than the last days'. Runs
    further back that were given an alert anyway (`keep_in_reach`) are read by id."""
    now = ctx.clock()
    accepted, seen = 0, set()
    for listed in _within(ctx, newest, page, reach(ctx, now)):
        seen.add(listed.run_id)
        accepted += _alerts_of(ctx, listed, now, tried_before)
    for run_id in sorted(set(_far(ctx, now)) - seen):
        far = ctx.state.get_run(run_id)
        if far is not None:
            accepted += _alerts_of(ctx, far, now, tried_before)
    return accepted


def _alerts_of(ctx: Context, listed: Run, now: datetime, tried_before: datetime | None) -> int:
    """Send again the waiting alerts of one run; how many were accepted."""
    current, accepted = listed, 0
    for kind in sorted(listed.undelivered):
        if tried_before is not None and listed.undelivered[kind].since >= tried_before:
            continue
        with log_context(run_id=listed.run_id):
            current, took = _again(ctx, current, kind, now)
        accepted += took
    return accepted


def keep_in_reach(ctx: Context, run: Run, alert: UndeliveredAlert) -> None:
    """Note `run` by id when the pages a tick reads stop short of it before `alert`'s day
    is over: a verify of a backup from days ago, a run that stayed open past the timing
    bounds (a copy still making progress). A cache entry, written only then (rarely), and
    kept a day past the alert's give-up, so a poller stopped meanwhile still gives it up."""
    if run.created_at >= reach(ctx, alert.since + GIVE_UP_AFTER + CLAIM):
        return  # every tick until it is given up pages back to the run
    now = ctx.clock()
    # Read, then written whole: of two such alerts noted at the same moment, one may be
    # lost (the cache has no compare-and-set); both are rare, and each is sent once now.
    try:
        far = {**_far(ctx, now), run.run_id: alert.since + 2 * GIVE_UP_AFTER}
        ctx.state.cache_put(FAR_KEY, json.dumps({run_id: at.isoformat() for run_id, at in far.items()}),
                            max(far.values()))
    except Exception:  # the message is still sent now; only a resend would miss the run
        log.exception("could not note an old run's alert for sending again; if no webhook "
                      "takes it now, the poller does not send it again",
                      extra={"run_id": run.run_id})


def _far(ctx: Context, now: datetime) -> dict[str, datetime]:
    """The runs `keep_in_reach` noted whose entry has not lapsed, by id."""
    saved = ctx.state.cache_get(FAR_KEY, now)
    try:
        noted = {run_id: datetime.fromisoformat(at) for run_id, at in json.loads(saved or "{}").items()}
    except (ValueError, AttributeError, TypeError):  # not what keep_in_reach writes: start anew
        log.warning("the list of old runs with alerts to send again is unreadable; it is "
                    "started anew", extra={"key": FAR_KEY})
        return {}
    return {run_id: at for run_id, at in noted.items() if at > now}


def reach(ctx: Context, now: datetime) -> datetime:
    """How far back (by start) a tick pages for runs whose alert can still be waiting.
    Runs page by their start (newest first), alerts age from their run's close: a run
    closes by the time its jobs run out of time (the export deadline, then
    `unclaimed_ready_hours` with no finisher claiming, then a copy lease per try) unless it
    keeps making progress, and its alert waits `GIVE_UP_AFTER` after that. An alert given
    to a run before this (a later close, a verify of an old backup) is `keep_in_reach`'s."""
    timing = ctx.config.timing
    longest_open = timedelta(minutes=timing.export_deadline_minutes,
                             hours=timing.unclaimed_ready_hours,
                             seconds=timing.max_attempts * timing.copy_lease_seconds)
    return now - GIVE_UP_AFTER - longest_open


def _within(ctx: Context, newest: list[Run], page: int, since: datetime) -> Iterator[Run]:
    """`newest`, then older pages until one reaches back past `since` (or the oldest run)."""
    listed = newest
    while True:
        yield from listed
        if len(listed) < page or listed[-1].created_at < since:
            return
        listed = ctx.state.list_runs(limit=page, before=listed[-1].run_id)


def _again(ctx: Context, run: Run, kind: str, now: datetime) -> tuple[Run, bool]:
    """One waiting alert: given up past the bound, else claimed, sent and settled. The run
    as stored after this (its version moved), and whether a webhook took the alert."""
    alert = run.undelivered.get(kind)
    if alert is None or alert.gave_up_at is not None or (alert.claimed_until is not None and alert.claimed_until > now):
        return run, False
    if now - alert.since >= GIVE_UP_AFTER:
        gave_up = ctx.state.save_run(with_alert(run, kind, alert.model_copy(
            update={"gave_up_at": now, "claimed_until": None})))
        if gave_up is not None:
            log.error(f"gave up sending the {kind} alert: no webhook accepted it in "
                      f"{GIVE_UP_AFTER.total_seconds() / 3600:g} hours; check notify.webhooks "
                      "(doctor --notify), then the run's status", extra={"tries": alert.tries})
        return gave_up or run, False
    mine = alert.model_copy(update={"tries": alert.tries + 1, "claimed_until": now + CLAIM})
    saved = ctx.state.save_run(with_alert(run, kind, mine))
    if saved is None:  # another poller claimed it, or the run changed: the next tick looks again
        return run, False
    if kind == "run":
        delivered = ctx.notifier.notify(saved, ctx.state.list_jobs(saved.run_id), heartbeat=False)
    else:
        delivered = ctx.notifier.alert(mine.text or f"an alert about run {saved.run_id}")
    settle(ctx, saved, kind, mine, delivered)
    return ctx.state.get_run(saved.run_id) or saved, delivered
