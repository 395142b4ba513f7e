"""No unfinished multipart upload is left in the bucket: a paged copy that fails aborts its
own, and the poller aborts those of a job that ended or whose finisher's lease ran out
(a killed finisher cannot abort its own), while a paged copy's checkpointed upload stays."""

from __future__ import annotations

from datetime import timedelta

import pytest

from devkit.emulators.onedb import OneDBEmulator
from devkit.sample_data import make_docs
from shared.domain.jobs import JobStatus
from shared.domain.layout import data_key
from shared.service.poll import poll
from shared.service.start import start_run
from tests.support.backup import LocalBackup, backup_now
from tests.support.onedb import APP, ENV_ID, onedb_source


@pytest.fixture(autouse=True)
def sweep_every_poll(monkeypatch: pytest.MonkeyPatch) -> None:
    """The poller sweeps at most once a minute; these tests look at every poll."""
    monkeypatch.setattr("shared.service.sweep.SWEEP_EVERY", 0.0)


class Ignore:
    def dispatch(self, job_id: str) -> None:
        """Nobody copies."""


def test_a_paged_copy_that_fails_aborts_its_upload(
        local: LocalBackup, onedb_emulator: OneDBEmulator) -> None:
    onedb_emulator.add_generated_table(ENV_ID, APP, "events", 12_000)
    onedb_emulator.page_cap = 1000
    ctx = local.context(local.config(onedb_source(local, onedb_emulator)))
    calls = {"n": 0}
    original = onedb_emulator._take_fault

    def stuck_on_the_third_page() -> str | None:
        calls["n"] += 1
        return "stuck_cursor" if calls["n"] == 3 else original()

    onedb_emulator._take_fault = stuck_on_the_third_page  # type: ignore[method-assign]

    run = backup_now(ctx)

    (job,) = ctx.state.list_jobs(run.run_id)
    assert job.status is JobStatus.FAILED and "nextId did not move" in (job.error or "")
    assert local.objects.uploads_under(ctx.config.destination.prefix) == ()


def test_the_poller_aborts_the_upload_of_an_ended_job(local: LocalBackup) -> None:
    local.seed("orders", make_docs(10))
    config = local.config()
    ctx = local.context(config)
    run = backup_now(ctx)
    (job,) = ctx.state.list_jobs(run.run_id)
    key = data_key(config.destination.prefix, run.run_id, "shop", "orders", "json")
    local.objects.begin_upload(key, "application/x-ndjson")  # left by a killed copy

    poll(ctx)

    assert job.status is JobStatus.DONE
    assert local.objects.uploads_under(config.destination.prefix) == ()


def test_the_poller_aborts_the_upload_of_a_copy_whose_lease_ran_out(local: LocalBackup) -> None:
    local.seed("orders", make_docs(10))
    config = local.config()
    ctx = local.context(config, dispatcher=Ignore())
    run, _ = start_run(ctx, idempotency_key="lease", trigger="test")
    for _ in range(200):
        poll(ctx)
        (job,) = ctx.state.list_jobs(run.run_id)
        if job.status is JobStatus.READY:
            break
    gone = ctx.clock() - timedelta(seconds=1)
    assert ctx.state.save_job(job.moved_to(JobStatus.COPYING, lease_owner="killed",
                                           lease_until=gone, next_check_at=gone)) is not None
    key = data_key(config.destination.prefix, run.run_id, "shop", "orders", "json")
    other = local.objects.begin_upload(key, "application/x-ndjson")
    # a live copy's upload elsewhere in the bucket is not touched
    live_key = f"{config.destination.prefix}/elsewhere/x.jsonl"
    kept = local.objects.begin_upload(live_key, "application/x-ndjson")

    poll(ctx)

    left = local.objects.uploads_under(config.destination.prefix)
    assert (key, other) not in left and (live_key, kept) in left
