"""A verify asked for on its own is reported like a failed backup: on the run, in the
bucket, and as an alert only when it found problems."""

from __future__ import annotations

from shared.config.model import Retention
from shared.domain.jobs import JobStatus
from shared.service.close import close_finished_runs
from shared.service.finish import finish
from shared.service.overview import collections
from shared.service.prune import prune
from shared.service.start import start_run
from shared.service.verify import record, unverified, verify_run
from tests.unit.support import ScriptedExport, backed_up, seed_run, unit

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
