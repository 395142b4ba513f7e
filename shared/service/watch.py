"""The staleness alarm, run by the poller's timer: one alert when backups stop
succeeding (no run succeeded for `alerts.stale_after_hours`, counting from the oldest
run or from when the poller first looked) or a run (a backup or a restore) stays open
that long; one "recovered" message when that ends. The episode is kept in the state
store's cache, claimed by compare-and-set (overlapping ticks send it once), so an alarm
goes out once per episode, not once a minute; one that reached no webhook is sent again
at the next tick. One message too when the episode's cause changes (a stuck run ended
while backups went stale meanwhile, or the reverse), so the alarm never stands for a
cause that is gone. Its end, or a change, is told under a create-only claim too
(TELLING_KEY), so overlapping ticks send it once."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from datetime import datetime, timedelta

from shared.domain.jobs import Run, RunStatus
from shared.service.context import Context

log = logging.getLogger(__name__)

ALARM_KEY = "alert:stale"
WATCHING_KEY = "alert:watching-since"
UNSENT_KEY = "alert:stale:undelivered"  # the alarm no webhook took yet, for the API to show
TELLING_KEY = "alert:stale:telling"  # held by the one tick telling how the episode went on
KEEP = timedelta(days=3650)  # cache entries expire; these should not
# A tick killed while it holds TELLING_KEY frees it once no invocation can still be running:
# SCF ends one at the function's timeout, at most 900 s (API-NOTES.md, SCF: "timeout 1-900 s").
TELLING_FOR = timedelta(seconds=900)
RUNS_LOOKED_AT = 50
_STILL_RUNNING = "is still running"
_STUCK = re.compile(rf"(run|restore) (\S+) {_STILL_RUNNING} ")  # the alarm _problem words


def watch(ctx: Context, recent: list[Run] | None = None) -> str | None:
    """Raise, change or clear the alarm; what was sent ("raised", "changed", "recovered")
    or None. `recent`: the newest RUNS_LOOKED_AT runs, when the caller has listed them
    already."""
    now = ctx.clock()
    if recent is None:
        recent = ctx.state.list_runs(limit=RUNS_LOOKED_AT)
    problem = _problem(ctx, now, timedelta(hours=ctx.config.alerts.stale_after_hours), recent)
    raised = ctx.state.cache_get(ALARM_KEY, now)
    if problem and raised is None:
        if not ctx.state.cache_claim(ALARM_KEY, problem, now + KEEP, now):
            return None  # an overlapping tick claimed it first and sends it
        log.error("backups are stale", extra={"reason": problem})
        if not ctx.notifier.alert(_alarm_text(problem)):
            ctx.state.cache_delete(ALARM_KEY)
            ctx.state.cache_put(UNSENT_KEY, problem, now + KEEP)
            _unsent("alarm")
            return None
        _forget_unsent(ctx, now)
        return "raised"
    if problem is None:
        _forget_unsent(ctx, now)  # the episode is over, told or not
    if problem is None and raised is not None:
        return _tell_once(ctx, raised, now, _recover)
    if problem is not None and raised is not None and _cause(problem) != _cause(raised):
        return _tell_once(ctx, raised, now, lambda c, r, n: _change(c, r, problem, n))
    return None


def _tell_once(ctx: Context, raised: str, now: datetime,
               tell: Callable[[Context, str, datetime], str | None]) -> str | None:
    """Run `tell` (which sends a message about the episode `raised` and updates the alarm)
    in one tick only: the one that claims TELLING_KEY and still finds `raised` the alarm
    (an overlapping tick that read it first may have told it and moved the alarm on)."""
    if not ctx.state.cache_claim(TELLING_KEY, raised, now + TELLING_FOR, now):
        return None  # an overlapping tick is telling it
    try:
        if ctx.state.cache_get(ALARM_KEY, now) != raised:
            return None  # told already
        return tell(ctx, raised, now)
    finally:
        ctx.state.cache_delete(TELLING_KEY)


def _recover(ctx: Context, raised: str, now: datetime) -> str | None:
    """Tell the episode ended; the alarm goes only once that is delivered (one that
    reached no webhook is sent again at the next tick)."""
    ended = _ended(ctx, raised)  # first: a failed read must not lose the episode's end
    log.info("backups recovered", extra={"was": raised})
    if not ctx.notifier.alert(f"✅ baas-backup recovered: {ended} (was: {raised})."):
        _unsent("\"recovered\" message")
        return None
    ctx.state.cache_delete(ALARM_KEY)
    return "recovered"


def _change(ctx: Context, raised: str, problem: str, now: datetime) -> str | None:
    """Tell the alarm now stands for `problem`, and how the stuck run `raised` named ended;
    the alarm moves on only once that is delivered (else the next tick sends it again)."""
    ended = f"; {_ended(ctx, raised)}" if _STUCK.match(raised) else ""
    log.error("the staleness alarm's cause changed", extra={"reason": problem, "was": raised})
    if not ctx.notifier.alert(_alarm_text(f"{problem} (the alarm was: {raised}{ended})")):
        ctx.state.cache_put(UNSENT_KEY, problem, now + KEEP)
        _unsent("alarm's new cause")
        return None
    ctx.state.cache_put(ALARM_KEY, problem, now + KEEP)
    _forget_unsent(ctx, now)
    return "changed"


def _cause(problem: str) -> str:
    """What an alarm is about: the stuck run it names, or stale backups. Only a change of
    cause is told again: a changed limit (`alerts.stale_after_hours`) or last success
    named, the same cause, is not."""
    named = _STUCK.match(problem)
    return " ".join(named.groups()) if named else "stale"


def _alarm_text(problem: str) -> str:
    return (f"⏰ baas-backup: {problem}. Check the poller's and trigger's logs, then "
            "`baas-backup status`.")


def undelivered_alarm(ctx: Context) -> str | None:
    """The staleness alarm no webhook has accepted yet (the poller sends it again every
    tick while the problem lasts), or None."""
    return ctx.state.cache_get(UNSENT_KEY, ctx.clock())


def _forget_unsent(ctx: Context, now: datetime) -> None:
    if ctx.state.cache_get(UNSENT_KEY, now) is not None:
        ctx.state.cache_delete(UNSENT_KEY)


def _unsent(what: str) -> None:
    """The message reached no one and its claim was released: an episode counts as told
    once its message is delivered, not once it is tried."""
    log.error(f"the staleness {what} reached no webhook; the next poller tick tries again")


def _problem(ctx: Context, now: datetime, limit: timedelta, recent: list[Run]) -> str | None:
    hours = limit.total_seconds() / 3600
    stuck = _stuck(ctx, now, limit, recent)
    if stuck is not None:
        return f"{_named(stuck)} {_STILL_RUNNING} {hours:g} hours after it started"
    runs, succeeded = _backups(ctx, recent, now - limit)
    if succeeded is not None:
        last = succeeded.finished_at or succeeded.created_at
        if now - last > limit:
            return f"no run has succeeded for {hours:g} hours (the last one: {succeeded.run_id})"
        return None
    since = runs[-1].created_at if runs else _watching_since(ctx, now)
    if now - since > limit:
        return f"no run has succeeded in the last {hours:g} hours"
    return None


def _ended(ctx: Context, raised: str) -> str:
    """What ended the episode `raised` describes: the stuck run it names closed (or is gone),
    or, for stale backups, a run succeeded."""
    named = _STUCK.match(raised)
    if named is None:
        return "a run succeeded again"
    what, run_id = named.groups()
    run = ctx.state.get_run(run_id)
    if run is None:
        return f"{what} {run_id} is no longer recorded"
    if run.status is RunStatus.RUNNING:  # alerts.stale_after_hours was raised since
        return f"{what} {run_id} is no longer open for too long"
    return f"{what} {run_id} ended: {run.status.value}"


def _stuck(ctx: Context, now: datetime, limit: timedelta, recent: list[Run]) -> Run | None:
    """The oldest run (a restore too: one the finisher never picks up stays open for ever)
    open longer than `limit`. Looked for among the open runs, where a stuck run behind a
    page of newer runs is found too; a page shorter than RUNS_LOOKED_AT holds every run,
    so its open ones are all there are, and the state store is not asked again."""
    candidates = ctx.state.open_runs() if len(recent) >= RUNS_LOOKED_AT else recent
    stuck = [r for r in candidates
             if r.status is RunStatus.RUNNING and now - r.created_at > limit]
    return min(stuck, key=lambda r: (r.created_at, r.run_id), default=None)


def _named(run: Run) -> str:
    return f"{'restore' if run.operation == 'restore' else 'run'} {run.run_id}"


def _backups(ctx: Context, recent: list[Run], cutoff: datetime) -> tuple[list[Run], Run | None]:
    """The backup runs (only backups "succeed" here), newest first, down to the newest that
    succeeded, and that one (None if none did). `recent` is the newest page; older pages
    are read only when it holds no success: restores (a run each) or frequent failed runs
    may fill a page, and must neither hide the last success nor leave its age unknown.
    Paging stops once a page reaches back past `cutoff` with a backup seen: nothing
    started since then succeeded, which is all the alarm needs."""
    backups: list[Run] = []
    page = recent
    while True:
        for run in page:
            if run.operation != "backup":
                continue
            backups.append(run)
            if run.status is RunStatus.SUCCEEDED:
                return backups, run
        if len(page) < RUNS_LOOKED_AT or (backups and page[-1].created_at < cutoff):
            return backups, None
        page = ctx.state.list_runs(limit=RUNS_LOOKED_AT, before=page[-1].run_id)


def _watching_since(ctx: Context, now: datetime) -> datetime:
    """When the poller first looked, for a deployment that never recorded a run (a
    trigger whose timer never fires)."""
    saved = ctx.state.cache_get(WATCHING_KEY, now)
    if saved is None:
        ctx.state.cache_put(WATCHING_KEY, now.isoformat(), now + KEEP)
        return now
    return datetime.fromisoformat(saved)
