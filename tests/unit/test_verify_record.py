"""A verify asked for on its own is reported like a failed backup: on the run, in the
bucket, and as an alert only when it found problems."""

from __future__ import annotations

from shared.service.verify import record, verify_run
from tests.unit.support import ScriptedExport, backed_up, unit

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
