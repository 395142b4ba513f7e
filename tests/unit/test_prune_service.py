"""Retention over the service layer's fakes: what a prune deletes while another run is
still open."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from shared.config.model import Retention
from shared.domain.errors import StorageError
from shared.domain.jobs import JobStatus, RunStatus, job_id_for
from shared.domain.layout import run_folder
from shared.ports import ObjectInfo
from shared.service.close import close_finished_runs
from shared.service.finish import finish
from shared.service.poll import poll
from shared.service.prune import prune
from shared.service.start import start_run
from shared.service.verify import unverified
from tests.unit.support import (
    ScriptedExport,
    Unit,
    backed_up,
    nightly_runs,
    seed_run,
    unit,
)

ROWS = [{"_id": f"d{i}", "n": i} for i in range(5)]
SIGNATURE = "9f8e7d6c5b4a39281706f5e4d3c2b1a098765432"


def test_a_backup_of_a_run_still_open_never_costs_the_last_checked_copy() -> None:
    """keep_last 1. Run 2 is still open (users not copied yet) when a prune runs (`baas-
    backup prune`, or another run closing); its orders is done but the check after the
    run has not looked at it. That check then finds it missing: run 1's orders, the last
    backup checked and found right, must still be there (README "Keeping backups": good
    means not found damaged by the verify after its run; the newest good backup of any
    collection is never deleted)."""
    u = unit(ScriptedExport({"orders": list(ROWS), "users": ROWS[:2]}))
    u.ctx.config = u.ctx.config.model_copy(update={"retention": Retention(keep_last=1)})
    first, _ = start_run(u.ctx, idempotency_key="night-1", trigger="test")
    backed_up(u, u.state.list_jobs(first.run_id))
    u.clock.advance(3600)
    second, _ = start_run(u.ctx, idempotency_key="night-2", trigger="test")
    orders, users = (job_id_for(second.run_id, "shop", c) for c in ("orders", "users"))
    for _ in range(3):
        poll(u.ctx)
        u.clock.advance(70)
    assert finish(u.ctx, orders) == "done" and u.job(users).status is JobStatus.READY
    copied = u.job(orders).result
    assert copied is not None
    del u.objects.objects[copied.key]  # lost before the run's own check

    prune(u.ctx)
    assert finish(u.ctx, users) == "done"
    close_finished_runs(u.ctx)

    run = u.state.get_run(second.run_id)
    assert run is not None and run.status is RunStatus.FAILED
    assert unverified(run) == {"shop/orders"}
    checked = u.state.get_job(job_id_for(first.run_id, "shop", "orders"))
    assert checked is not None, "run 1 went, with the last orders backup checked right"
    assert checked.pruned_at is None and checked.result is not None
    assert u.objects.head(checked.result.key) is not None


def test_the_days_of_keep_daily_are_the_days_the_backups_started() -> None:
    """keep_daily 2 in Shanghai: Monday's nightly backup starts at 23:59 and ends after
    midnight, Tuesday's runs at 10:00. They are two days' backups (restic dates a snapshot
    by its start), so both stay; dated by their ends they would share Tuesday and
    Monday's would go."""
    u = unit(ScriptedExport({"orders": list(ROWS)}))
    u.clock.now = datetime(2026, 11, 2, 15, 59, tzinfo=timezone.utc)  # Mon 23:59 in Shanghai
    monday, _ = start_run(u.ctx, idempotency_key="monday", trigger="test")
    backed_up(u, u.state.list_jobs(monday.run_id))
    backup = u.job(job_id_for(monday.run_id, "shop", "orders"))
    assert backup.started_at is not None and backup.finished_at is not None
    assert [at.astimezone(ZoneInfo("Asia/Shanghai")).day
            for at in (backup.started_at, backup.finished_at)] == [2, 3]
    u.clock.now = datetime(2026, 11, 3, 2, 0, tzinfo=timezone.utc)  # Tue 10:00 in Shanghai
    tuesday, _ = start_run(u.ctx, idempotency_key="tuesday", trigger="test")
    backed_up(u, u.state.list_jobs(tuesday.run_id))
    u.ctx.config = u.ctx.config.model_copy(update={"retention": Retention(keep_daily=2)})

    prune(u.ctx)

    for run in (monday, tuesday):
        job = u.job(job_id_for(run.run_id, "shop", "orders"))
        assert job.pruned_at is None and job.result is not None, run.run_id
        assert u.objects.head(job.result.key) is not None


def test_the_newest_backup_is_the_one_whose_export_started_last() -> None:
    """keep_last 1. Run A starts first but its export waits to be started (as behind a
    platform's limit on exports at once); run B starts and is backed up; then A's export
    starts. A's backup holds the newer data: it is the newest, kept, and B's goes, though
    B's run started later."""
    u = unit(ScriptedExport({"orders": list(ROWS)}))
    first, _ = start_run(u.ctx, idempotency_key="a", trigger="test")
    (waiting,) = u.state.list_jobs(first.run_id)
    u.put(waiting.model_copy(update={"status": JobStatus.PENDING, "platform_job_id": None,
                                     "started_at": None,
                                     "next_check_at": u.clock() + timedelta(hours=2)}))
    u.clock.advance(3600)
    second, _ = start_run(u.ctx, idempotency_key="b", trigger="test")
    backed_up(u, u.state.list_jobs(second.run_id))
    u.clock.advance(3600)
    backed_up(u, u.state.list_jobs(first.run_id))
    u.ctx.config = u.ctx.config.model_copy(update={"retention": Retention(keep_last=1)})

    prune(u.ctx)

    kept = u.job(waiting.job_id)
    assert kept.pruned_at is None and kept.result is not None
    assert u.objects.head(kept.result.key) is not None
    (gone,) = u.state.list_jobs(second.run_id)
    assert gone.pruned_at is not None and gone.result is not None
    assert u.objects.head(gone.result.key) is None


def test_a_kept_backup_with_no_finish_time_is_not_moved_to_the_cold_class() -> None:
    """`cold_after_days` moves kept backups *that old*: a job on record with no
    `finished_at` has no age to go by, and an archived backup cannot be read until it is
    restored (hours), so it stays where it is rather than be moved on a guess. Its
    neighbour, finished long enough ago, still moves."""
    u = unit(ScriptedExport({"orders": list(ROWS), "users": ROWS[:2]}))
    run_id = backed_up(u)
    orders = u.job(job_id_for(run_id, "shop", "orders"))
    u.put(orders.model_copy(update={"finished_at": None}))  # a record written without it
    u.clock.advance(3 * 86400)
    u.ctx.config = u.ctx.config.model_copy(update={"retention": Retention(
        keep_last=5, cold_after_days=1)})

    prune(u.ctx)

    assert orders.result is not None and u.objects.classes.get(orders.result.key) is None
    users = u.job(job_id_for(run_id, "shop", "users")).result
    assert users is not None and u.objects.classes.get(users.key) == "ARCHIVE"


def test_a_run_whose_failure_no_webhook_took_yet_is_not_deleted_by_retention() -> None:
    """A failed run holds no backup, so retention deletes it once a newer run closes; but
    while its notification waits for a webhook (shared/service/outbox.py keeps it on the
    run for a day), deleting the run deletes the only news of the failure: it must stay
    until the poller has delivered it (or given up), then go at a later prune."""
    u = unit(ScriptedExport({"orders": list(ROWS)}))
    u.ctx.config = u.ctx.config.model_copy(update={"retention": Retention(keep_last=1)})
    (failed,) = seed_run(u, JobStatus.FAILED, error="the export failed")
    u.notifier.accepting = False
    poll(u.ctx)  # the run closes failed; every webhook is down
    waiting = u.state.get_run(failed.run_id)
    assert waiting is not None and waiting.status is RunStatus.FAILED
    assert "run" in waiting.undelivered

    u.clock.advance(3600)
    second, _ = start_run(u.ctx, idempotency_key="night-2", trigger="test")
    backed_up(u, u.state.list_jobs(second.run_id))  # closes, then prunes

    assert u.state.get_run(failed.run_id) is not None, "deleted with its news undelivered"
    tries = [r.run_id for r, _ in u.notifier.sent].count(failed.run_id)
    u.notifier.accepting = True
    u.clock.advance(60)
    poll(u.ctx)
    assert [r.run_id for r, _ in u.notifier.sent].count(failed.run_id) == tries + 1
    settled = u.state.get_run(failed.run_id)
    assert settled is not None and settled.undelivered == {}

    prune(u.ctx)  # told: now it may go
    assert u.state.get_run(failed.run_id) is None


def test_a_run_folder_cos_would_not_list_leaves_the_prune_recorded_and_the_run_for_later(
        ) -> None:
    """keep_last 1, three runs: run 1's orders goes, and run 1, left holding nothing, goes
    too. COS refuses to list run 1's folder: the backup already deleted must still be in
    the prune record under `<prefix>/prunes/` (README "Keeping backups": each prune writes
    a record; the next prune never sees that backup again, so nothing else would say it
    went), and run 1 stays on record for the next prune, like a delete COS refused."""
    u = unit(ScriptedExport({"orders": list(ROWS)}))
    runs = nightly_runs(u, 3, keep_last=1)
    first = runs[0]
    folder = run_folder(u.ctx.config.destination.prefix, first) + "/"
    listing = u.objects.list

    def refusing(prefix: str) -> list[ObjectInfo]:
        if prefix == folder:
            raise StorageError(f"COS list of {prefix!r} failed: InternalError (fake)",
                               key=prefix, code="InternalError")
        return listing(prefix)

    u.objects.list = refusing  # type: ignore[method-assign]
    prune(u.ctx)

    records = [json.loads(u.objects.objects[k]) for k in u.objects.objects if "/prunes/" in k]
    deleted = {(d["run_id"], d["collection"]) for r in records for d in r["deleted"]}
    assert (first, "orders") in deleted, "a deleted backup is in no prune record"
    assert u.state.get_run(first) is not None, "run 1 is gone with its folder unlisted"

    u.objects.list = listing  # type: ignore[method-assign]
    prune(u.ctx)
    assert u.state.get_run(first) is None
    assert not u.objects.list(folder)



class Stopped(BaseException):
    """SCF stopping the function (its time limit): no handler of the product runs."""


def test_a_prune_stopped_mid_delete_leaves_a_record_of_what_it_was_deleting() -> None:
    """keep_last 1, three runs: runs 1 and 2 lose their orders. SCF stops the function
    (its time limit) right after the first object went. The bucket must still say which
    backups this prune was deleting (README "Keeping backups": each prune writes a record
    under `<prefix>/prunes/`): otherwise a run manifest lists an object that is gone with
    nothing saying why, and a backup already marked pruned is never in a later record."""
    u = unit(ScriptedExport({"orders": list(ROWS)}))
    runs = nightly_runs(u, 3, keep_last=1)
    deleting = u.objects.delete
    gone: list[str] = []

    def then_stopped(key: str) -> None:
        deleting(key)
        gone.append(key)
        raise Stopped

    u.objects.delete = then_stopped  # type: ignore[method-assign]
    with pytest.raises(Stopped):
        prune(u.ctx)

    records = [json.loads(u.objects.objects[k]) for k in u.objects.objects if "/prunes/" in k]
    named = {o for r in records for d in r.get("deleting", []) for o in d["objects"]}
    assert gone and set(gone) <= named, "an object went with no prune record naming it"

    u.objects.delete = deleting  # type: ignore[method-assign]
    prune(u.ctx)
    assert u.state.get_run(runs[0]) is None and u.state.get_run(runs[1]) is None
    finals = [json.loads(u.objects.objects[k]) for k in u.objects.objects if "/prunes/" in k]
    assert {(d["run_id"], d["collection"]) for r in finals for d in r["deleted"]} == {
        (runs[0], "orders"), (runs[1], "orders")}


# a prune that fails after a run closed is told, not only logged ---------------------
def _refusing_deletes(u: Unit, code: str = "AccessDenied") -> None:
    """COS refuses every delete: the bucket key lacks cos:DeleteObject, say. The message
    carries the signed request URL, as an SDK's may: the alert must not."""

    def refuses(key: str) -> None:
        raise StorageError(f"COS delete of {key!r} failed: {code} (HTTP 403) at "
                           f"https://backups-1250000000.cos.ap-guangzhou.myqcloud.com/{key}"
                           f"?q-ak=AKIDunit&q-signature={SIGNATURE}", key=key, code=code)

    u.objects.delete = refuses  # type: ignore[method-assign]


def _next_night(u: Unit, night: int) -> str:
    """One more nightly run, backed up to the end; it closes, then prunes. Its run id."""
    run, _ = start_run(u.ctx, idempotency_key=f"night-{night}", trigger="test")
    backed_up(u, u.state.list_jobs(run.run_id))
    return run.run_id


def test_a_prune_cos_refuses_after_a_run_closed_sends_one_retention_alert() -> None:
    """README "Being told": deployed once and forgotten, the user must hear the day old
    backups stop going (and the bill starts growing), not find it in a log. The run itself
    is unaffected: it succeeded, and says so."""
    u = unit(ScriptedExport({"orders": list(ROWS)}))
    nightly_runs(u, 2, keep_last=1)
    _refusing_deletes(u)

    closed = _next_night(u, 2)

    (alert,) = u.notifier.alerts
    assert "retention" in alert and "AccessDenied" in alert, alert
    assert "cos:DeleteObject" in alert and "baas-backup prune" in alert, alert  # the fix
    assert SIGNATURE not in alert and "AKIDunit" not in alert
    run = u.state.get_run(closed)
    assert run is not None and run.status is RunStatus.SUCCEEDED
    assert run.undelivered == {}  # a webhook took it


def test_a_prune_that_deletes_what_it_meant_to_sends_no_alert() -> None:
    u = unit(ScriptedExport({"orders": list(ROWS)}))
    runs = nightly_runs(u, 2, keep_last=1)

    _next_night(u, 2)

    assert u.state.get_run(runs[0]) is None  # pruned
    assert u.notifier.alerts == []


def test_a_prune_that_raises_after_a_run_closed_sends_the_reason() -> None:
    """The prune record cannot be written (the bucket refuses a PUT under prunes/): the
    prune stops before deleting anything, and that is told too."""
    u = unit(ScriptedExport({"orders": list(ROWS)}))
    nightly_runs(u, 2, keep_last=1)
    put_json = u.objects.put_json

    def refuses(key: str, document: Any) -> None:
        if "/prunes/" in key:
            raise StorageError(f"COS put of {key!r} failed: AccessDenied", key=key,
                               code="AccessDenied")
        put_json(key, document)

    u.objects.put_json = refuses  # type: ignore[method-assign]
    closed = _next_night(u, 2)

    (alert,) = u.notifier.alerts
    assert "retention could not be applied" in alert and "AccessDenied" in alert, alert
    run = u.state.get_run(closed)
    assert run is not None and run.status is RunStatus.SUCCEEDED


def test_a_retention_alert_no_webhook_took_waits_on_its_run_and_is_sent_again() -> None:
    """The same outbox as a run's notification (shared/service/outbox.py): kept on the
    run as kind "retention" until a webhook takes it, sent again by the next tick."""
    u = unit(ScriptedExport({"orders": list(ROWS)}))
    nightly_runs(u, 2, keep_last=1)
    _refusing_deletes(u)
    sent: list[str] = []
    accepting = [False]

    def alert(text: str) -> bool:
        sent.append(text)
        return accepting[0]

    u.notifier.alert = alert  # type: ignore[method-assign]
    closed = _next_night(u, 2)

    waiting = u.state.get_run(closed)
    assert waiting is not None and list(waiting.undelivered) == ["retention"]
    assert waiting.status is RunStatus.SUCCEEDED
    tries = len(sent)  # the ticks that closed the run sent it again too
    accepting[0] = True
    u.clock.advance(60)
    poll(u.ctx)
    assert len(sent) == tries + 1 and set(sent) == {sent[0]}
    settled = u.state.get_run(closed)
    assert settled is not None and settled.undelivered == {}
    poll(u.ctx)  # accepted once: never again
    assert len(sent) == tries + 1


def test_failed_runs_go_even_when_no_backup_exists_at_all() -> None:
    """README "Keeping backups": a run left holding nothing loses its folder and its state
    rows, except the newest run (and one whose news no webhook took yet). A deployment
    whose every run failed (a wrong secret from day one) holds no backup at all: its failed
    runs must not pile up for ever either."""
    u = unit(ScriptedExport({"orders": list(ROWS)}))
    u.ctx.config = u.ctx.config.model_copy(update={"retention": Retention(keep_last=1)})
    runs = []
    for night in range(3):
        run, _ = start_run(u.ctx, idempotency_key=f"night-{night}", trigger="test")
        for job in u.state.list_jobs(run.run_id):
            u.put(job.model_copy(update={"status": JobStatus.FAILED, "error": "the export failed",
                                         "finished_at": u.clock()}))
        close_finished_runs(u.ctx)  # closes failed, told, then prunes
        runs.append(run.run_id)
        u.clock.advance(86400)

    assert [u.state.get_run(r) is not None for r in runs] == [False, False, True]
    for gone in runs[:2]:
        assert not u.objects.list(run_folder(u.ctx.config.destination.prefix, gone) + "/")
    assert u.notifier.alerts == []


# a move to the cold class that fails is told like a refused delete -----------------
def _cold_nights(u: Unit) -> str:
    """Two nightly runs kept (keep_last 5) whose backups are a day old, with
    `cold_after_days` 1: the next prune moves the first run's backups to ARCHIVE. That
    run's id."""
    first, _ = nightly_runs(u, 2, keep_last=5)
    u.ctx.config = u.ctx.config.model_copy(update={"retention": Retention(
        keep_last=5, cold_after_days=1)})
    return first


def _signed(what: str, key: str) -> StorageError:
    return StorageError(f"COS {what} of {key!r} failed: AccessDenied (HTTP 403) at "
                        f"https://backups-1250000000.cos.ap-guangzhou.myqcloud.com/{key}"
                        f"?q-ak=AKIDunit&q-signature={SIGNATURE}", key=key, code="AccessDenied")


@pytest.mark.parametrize("refused", ["move", "listing"])
def test_a_move_to_the_cold_class_cos_refuses_after_a_run_closed_sends_a_retention_alert(
        refused: str) -> None:
    """README "Storage classes": kept backups move to `cold_storage_class` once old
    enough. COS refusing the move (the key lacks cos:PutObject, say) or the listing of the
    run it looks in keeps them in the dearer class, paid for every month, like a delete
    COS refused: the user must hear it, not find it in a log."""
    u = unit(ScriptedExport({"orders": list(ROWS)}))
    first = _cold_nights(u)
    folder = run_folder(u.ctx.config.destination.prefix, first) + "/"
    listing = u.objects.list

    def refuses_move(key: str, storage_class: str) -> None:
        raise _signed("storage class change", key)

    def refuses_listing(prefix: str) -> list[ObjectInfo]:
        if prefix == folder:
            raise _signed("list", prefix)
        return listing(prefix)

    if refused == "move":
        u.objects.set_storage_class = refuses_move  # type: ignore[method-assign]
    else:
        u.objects.list = refuses_listing  # type: ignore[method-assign]
    closed = _next_night(u, 2)

    (alert,) = u.notifier.alerts
    assert "retention" in alert and "AccessDenied" in alert and "ARCHIVE" in alert, alert
    assert "cos:PutObject" in alert and "baas-backup prune" in alert, alert  # the fix
    assert SIGNATURE not in alert and "AKIDunit" not in alert
    run = u.state.get_run(closed)
    assert run is not None and run.status is RunStatus.SUCCEEDED


def test_a_backup_too_big_for_one_move_sends_no_retention_alert() -> None:
    """README "Storage classes": one move copies at most 5 GB, larger objects stay in
    their class (a COS lifecycle rule can move them). That is the product's stated limit,
    not a failure to fix: no alert at every run's close for it."""
    u = unit(ScriptedExport({"orders": list(ROWS)}))
    _cold_nights(u)

    def too_big(key: str, storage_class: str) -> None:
        raise StorageError(f"COS storage class change of {key!r}: over 5 GB, which one copy "
                           "cannot move; a COS lifecycle rule can", key=key, code="EntityTooLarge")

    u.objects.set_storage_class = too_big  # type: ignore[method-assign]
    _next_night(u, 2)

    assert u.notifier.alerts == []
