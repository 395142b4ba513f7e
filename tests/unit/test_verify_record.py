"""A verify asked for on its own is reported like a failed backup: on the run, in the
bucket, and as an alert only when it found problems."""

from __future__ import annotations

from shared.config.model import Retention
from shared.domain.jobs import JobResult, JobStatus
from shared.entrypoints.http_api import verify_view
from shared.service.close import close_finished_runs
from shared.service.finish import finish
from shared.service.overview import collections
from shared.service.poll import poll
from shared.service.prune import prune
from shared.service.start import start_run
from shared.service.verify import record, unverified, verify_run
from tests.unit.support import ScriptedExport, Unit, backed_up, nightly_runs, seed_run, unit

ROWS = [{"_id": f"d{i}", "n": i} for i in range(5)]


def test_a_failed_verify_is_recorded_and_alerted_and_a_passing_one_is_only_recorded() -> None:
    u = unit(ScriptedExport({"orders": list(ROWS)}))
    run_id = backed_up(u)
    record(u.ctx, verify_run(u.ctx, run_id, quick=True))
    run = u.state.get_run(run_id)
    assert run is not None and run.summary and run.summary["last_verify"]["ok"] is True
    assert u.notifier.alerts == []

    [job] = u.state.list_jobs(run_id)
    assert job.result is not None
    u.objects.delete(job.result.key)
    record(u.ctx, verify_run(u.ctx, run_id, quick=True))
    run = u.state.get_run(run_id)
    assert run is not None and run.summary and run.summary["last_verify"]["ok"] is False
    assert run.summary["jobs"] == 1  # the run's own summary is kept
    [alert] = u.notifier.alerts
    assert f"verify of backup run {run_id} found problems" in alert
    assert "shop/orders missing object" in alert


def test_verifying_a_run_retention_thinned_reports_no_problem_and_sends_no_alert() -> None:
    """Retention deletes one backup of a run and keeps another (README "Keeping backups":
    a backup that goes loses its objects and its manifest; the run manifest still lists
    it). Verifying that run afterwards reports the deleted backup as pruned, not as a
    missing object or manifest; a backup gone without being pruned is still a problem."""
    u = unit(ScriptedExport({"orders": [{"_id": "1"}], "users": [{"_id": "2"}]}))
    u.ctx.config = u.ctx.config.model_copy(update={"retention": Retention(keep_last=1)})
    both, _ = start_run(u.ctx, idempotency_key="night-1", trigger="test")
    first = backed_up(u, u.state.list_jobs(both.run_id))
    u.clock.advance(86400)
    only, _ = start_run(u.ctx, idempotency_key="night-2", trigger="test",
                        collections={"shop": ["orders"]})
    backed_up(u, u.state.list_jobs(only.run_id))
    prune(u.ctx)
    jobs = {j.collection: j for j in u.state.list_jobs(first)}
    assert jobs["orders"].pruned_at is not None and jobs["users"].pruned_at is None

    report = verify_run(u.ctx, first, quick=True)
    record(u.ctx, report)
    assert not u.notifier.alerts, u.notifier.alerts
    assert report.ok, [(o.collection, [p.what for p in o.problems]) for o in report.objects]
    assert report.pruned == ["shop/orders"]
    assert {o.collection for o in report.objects} == {"users"}
    assert report.as_json()["pruned"] == ["shop/orders"]
    run = u.state.get_run(first)
    assert run is not None and run.summary and run.summary["last_verify"]["failed"] == []

    users = jobs["users"].result
    assert users is not None
    u.objects.delete(users.key)  # gone without retention deleting it: still a problem
    report = verify_run(u.ctx, first, quick=True)
    assert not report.ok and report.pruned == ["shop/orders"]
    assert [(o.collection, [p.what for p in o.problems]) for o in report.objects] == [
        ("users", ["missing object"])]


def test_a_backup_a_later_verify_found_right_stays_cleared_after_a_verify_of_another() -> None:
    """The check after the run finds orders missing (the object was away as the run
    closed); a verify of orders asked for later finds it right, which clears it (README
    "Keeping backups": the latest verify asked for clears what it checked and found
    right). A verify of users only, after that, must not bring orders' failure back:
    retention would stop counting a backup verified right, and the status page would
    show it damaged."""
    u = unit(ScriptedExport({"orders": list(ROWS), "users": ROWS[:2]}))
    jobs = seed_run(u, JobStatus.READY)
    for job in jobs:
        assert finish(u.ctx, job.job_id) == "done"
    run_id = jobs[0].run_id
    orders = u.job(jobs[0].job_id).result
    assert orders is not None
    data = u.objects.objects.pop(orders.key)
    close_finished_runs(u.ctx)

    def damaged() -> frozenset[str]:
        run = u.state.get_run(run_id)
        assert run is not None
        return unverified(run)

    assert damaged() == {"shop/orders"}
    u.objects.objects[orders.key] = data  # back, intact
    record(u.ctx, verify_run(u.ctx, run_id, collection="orders"))
    assert damaged() == set()
    record(u.ctx, verify_run(u.ctx, run_id, collection="users", quick=True))
    assert damaged() == set()
    shown = {c.collection: c for c in collections(u.ctx)}
    assert not shown["orders"].latest_verify_failed
    assert shown["orders"].last_good is not None and shown["orders"].last_good.run_id == run_id


def test_a_full_verify_of_archived_backups_reports_them_not_read_not_failed() -> None:
    """README "Verifying" names the problems a verify finds (missing object, missing
    manifest, size, sha256, crc64, count); an object retention moved to the archive class
    is none of them: it cannot be read until COS restores a copy (POST Object restore,
    https://cloud.tencent.com/document/product/436/12633). A full verify checks its size
    and CRC64, says it was not read and why, sends no alert for it and counts it as no
    failure; nor does it clear a failure an earlier verify found in data it did not read.
    A restored (readable) copy is read back as usual."""
    u = unit(ScriptedExport({"orders": list(ROWS), "users": ROWS[:2]}))
    run_id = backed_up(u)
    jobs = {j.collection: j for j in u.state.list_jobs(run_id)}
    keys = {name: job.result.key for name, job in jobs.items() if job.result}
    u.objects.classes.update({keys["orders"]: "ARCHIVE", keys["users"]: "DEEP_ARCHIVE"})
    u.objects.thawed.add(keys["users"])  # restored: readable while its copy lasts
    run = u.state.get_run(run_id)
    assert run is not None
    u.state.save_run(run.model_copy(update={"summary": {**(run.summary or {}), "last_verify": {
        "ok": False, "checked": ["shop/orders"], "failed": ["shop/orders"]}}}))

    report = verify_run(u.ctx, run_id)
    record(u.ctx, report)

    assert report.ok and u.notifier.alerts == []
    objects = {o.collection: o for o in report.objects}
    assert objects["orders"].problems == [] and objects["orders"].records is None
    assert objects["orders"].not_read and "restore" in objects["orders"].not_read
    assert objects["users"].not_read is None and objects["users"].records == 2
    assert report.as_json()["not_read"] == ["shop/orders"]
    kept = u.state.get_run(run_id)
    assert kept is not None and kept.summary is not None
    assert kept.summary["last_verify"]["not_read"] == ["shop/orders"]
    shown = verify_view(kept.summary["last_verify"])  # GET /runs/{run_id} shows it too
    assert shown is not None and shown["not_read"] == ["shop/orders"]
    assert unverified(kept) == {"shop/orders"}  # not read: the earlier verdict stands
    quick = verify_run(u.ctx, run_id, quick=True)  # sizes and CRC64: nothing left out
    assert quick.ok and all(o.not_read is None for o in quick.objects)


def test_a_verify_alert_a_later_clean_verify_answered_is_not_sent_again() -> None:
    """A verify found a backup damaged while every webhook was down: its alert waits on the
    run (outbox.py). The object is put back and a verify of the run finds it right: the
    waiting alert now reports damage that is not there, so it is not sent again."""
    u = unit(ScriptedExport({"orders": list(ROWS)}))
    run_id = backed_up(u)
    [job] = u.state.list_jobs(run_id)
    assert job.result is not None
    kept = u.objects.objects.pop(job.result.key)
    sent: list[str] = []
    accepting = False

    def alert(text: str) -> bool:
        sent.append(text)
        return accepting

    u.notifier.alert = alert  # type: ignore[method-assign]
    record(u.ctx, verify_run(u.ctx, run_id, quick=True))
    waiting = u.state.get_run(run_id)
    assert waiting is not None and "verify" in waiting.undelivered

    u.objects.objects[job.result.key] = kept
    record(u.ctx, verify_run(u.ctx, run_id, quick=True))
    accepting = True
    u.clock.advance(60)
    poll(u.ctx)

    assert [t for t in sent if "found problems" in t] == [sent[0]], sent
    run = u.state.get_run(run_id)
    assert run is not None and run.undelivered == {}


def test_a_quick_verify_that_compared_no_crc64_does_not_clear_damage_a_full_one_found() -> None:
    """keep_last 1. Run 2's orders is damaged in place (same size); a full verify finds
    it (sha256), so run 1's orders stays as the newest good backup. A quick verify of run
    2 afterwards (the status page's Verify button) reads no data, and with no CRC64 to
    compare (a manifest from before CRC64 was recorded: README "Verifying") it saw the
    size only: it must not clear that finding, or retention counts the damaged backup
    as good and deletes run 1's, the last intact one (README "Keeping backups")."""
    u, runs, first, _ = _second_run_damaged_in_place()

    full = verify_run(u.ctx, runs[1])
    assert [p.what for o in full.objects for p in o.problems] == ["sha256"]
    record(u.ctx, full)
    quick = verify_run(u.ctx, runs[1], quick=True)
    assert quick.ok and quick.objects[0].crc64 == "not recorded"
    record(u.ctx, quick)

    _damage_stands_and_the_intact_backup_is_kept(u, runs[1], first)


def test_a_full_verify_out_of_time_does_not_clear_damage_an_earlier_one_found() -> None:
    """As above, but the later verify is a full one over HTTP that ran out of the
    trigger's time before reading orders back (`quick_only`): it saw the size only, so
    the damage a reading found stands and retention keeps run 1's intact backup."""
    u, runs, first, second = _second_run_damaged_in_place()
    record(u.ctx, verify_run(u.ctx, runs[1]))

    cut_short = verify_run(u.ctx, runs[1], out_of_time=lambda: True)
    assert cut_short.ok and cut_short.quick_only == [second.key]
    record(u.ctx, cut_short)

    _damage_stands_and_the_intact_backup_is_kept(u, runs[1], first)


def _second_run_damaged_in_place() -> tuple[Unit, list[str], JobResult, JobResult]:
    """keep_last 1, two nightly runs of orders; run 2's object changed in place (same
    size): the unit, the run ids, and each run's stored object."""
    u = unit(ScriptedExport({"orders": list(ROWS)}))
    runs = nightly_runs(u, 2, keep_last=1)
    first, second = (u.job(u.state.list_jobs(r)[0].job_id).result for r in runs)
    assert first is not None and second is not None
    data = u.objects.objects[second.key]
    u.objects.objects[second.key] = data.replace(b'"n": 1', b'"n": 7')  # same size
    return u, runs, first, second


def _damage_stands_and_the_intact_backup_is_kept(u: Unit, run_id: str,
                                                 first: JobResult) -> None:
    damaged = u.state.get_run(run_id)
    assert damaged is not None and unverified(damaged) == {"shop/orders"}, "cleared unread"
    prune(u.ctx)
    assert u.objects.head(first.key) is not None, "the last intact backup was deleted"
