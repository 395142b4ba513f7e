"""`verify.after_run: full` inside the closing invocation's time: what it cannot read back
before the invocation must stop is still checked quickly (HEAD: size, CRC64), the run
closes, and its verify summary names those objects and how to read them back."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from shared.adapters.webhooks import run_text
from shared.domain.jobs import JobStatus, RunStatus
from shared.entrypoints.http_api import verify_view
from shared.ports import ObjectInfo
from shared.service import verify
from shared.service.close import close_finished_runs
from shared.service.finish import finish
from tests.unit.support import ScriptedExport, Unit, seed_run, unit

ROWS = [{"_id": f"d{i}", "n": i} for i in range(5)]
COLLECTIONS = ("items", "orders", "users")
RUN_ID = "20261101T020000000Z-unit"  # seed_run's


def backed_up_full(monkeypatch: pytest.MonkeyPatch,
                   after_run: str = "full") -> tuple[Unit, list[str]]:
    """A run of three done backups, closing with `verify.after_run: full` (or `after_run`)
    in an invocation with an hour left; each object's key, in the order the verify reads
    them."""
    u = unit(ScriptedExport({c: ROWS for c in COLLECTIONS}))
    u.ctx.config = u.ctx.config.model_copy(update={
        "verify": u.ctx.config.verify.model_copy(update={"after_run": after_run})})
    for job in seed_run(u, JobStatus.READY):
        assert finish(u.ctx, job.job_id) == "done"
    keys = [j.result.key for j in u.state.list_jobs(RUN_ID) if j.result is not None]
    u.ctx.stop_by = time.monotonic() + 3600
    monkeypatch.setattr(verify, "READ_CHUNK", 16)  # each object is read in several chunks
    return u, keys


def time_runs_out_in(u: Unit, key: str, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The invocation's time runs out while `key` is read back, after its first chunk;
    the keys whose reading was begun."""
    read, begun = u.objects.iter_read, []

    def reading(name: str, chunk_size: int = verify.READ_CHUNK) -> Iterator[bytes]:
        begun.append(name)
        for index, chunk in enumerate(read(name, chunk_size)):
            if name == key and index == 1:
                u.ctx.stop_by = time.monotonic()
            yield chunk

    monkeypatch.setattr(u.objects, "iter_read", reading)
    return begun


def slow_heads(u: Unit, monkeypatch: pytest.MonkeyPatch,
               out_of_time_in: str | None = None) -> list[str]:
    """Each HEAD takes 0.1 s (thousands of them would outlast the invocation), and the
    invocation's time runs out while `out_of_time_in` is HEADed; the keys HEADed."""
    head, headed = u.objects.head, []

    def slow_head(key: str) -> ObjectInfo | None:
        headed.append(key)
        if key == out_of_time_in:
            u.ctx.stop_by = time.monotonic()
        time.sleep(0.1)
        return head(key)

    monkeypatch.setattr(u.objects, "head", slow_head)
    return headed


def test_a_full_verify_out_of_time_quick_checks_the_rest_and_the_run_closes_saying_so(
        monkeypatch: pytest.MonkeyPatch) -> None:
    u, keys = backed_up_full(monkeypatch)
    begun = time_runs_out_in(u, keys[1], monkeypatch)

    assert close_finished_runs(u.ctx) == [RUN_ID]
    # out of time: the third object's download is not even begun (its manifest is read)
    assert [key for key in begun if key in keys] == keys[:2]

    run, jobs = u.notifier.sent[0]
    assert run.status is RunStatus.SUCCEEDED
    verified = (run.summary or {})["verify"]
    assert verified["mode"] == "full" and verified["ok"] and verified["objects"] == 3
    assert verified["fully_read"] == 1
    assert verified["quick_only"] == keys[1:]  # the one cut short, and the one never begun
    assert f"baas-backup verify {RUN_ID}" in verified["next_step"]
    assert "2 of 3 objects" in verified["next_step"]
    assert verified["next_step"] in run_text(run, jobs)  # the notification says so too
    shown = verify_view(verified)  # and GET /runs/{run_id}
    assert shown is not None and shown["quick_only"] == keys[1:]
    assert shown["fully_read"] == 1 and shown["next_step"] == verified["next_step"]


def test_an_object_only_quick_checked_is_still_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    u, keys = backed_up_full(monkeypatch)
    time_runs_out_in(u, keys[0], monkeypatch)
    u.objects.objects[keys[2]] = u.objects.objects[keys[2]][:-1]  # one byte short

    close_finished_runs(u.ctx)

    run, _ = u.notifier.sent[0]
    verified = (run.summary or {})["verify"]
    assert run.status is RunStatus.FAILED and verified["fully_read"] == 0
    assert verified["quick_only"] == keys
    [problem] = verified["problems"]
    assert problem.startswith(f"shop/{keys[2].rsplit('/', 1)[1].split('.')[0]} size:")


def test_a_full_verify_with_time_to_spare_reads_everything_back(
        monkeypatch: pytest.MonkeyPatch) -> None:
    u, _ = backed_up_full(monkeypatch)

    close_finished_runs(u.ctx)

    run, jobs = u.notifier.sent[0]
    verified = (run.summary or {})["verify"]
    assert run.status is RunStatus.SUCCEEDED and verified["ok"]
    assert verified["fully_read"] == 3 and "quick_only" not in verified
    assert "next_step" not in verified and "verify:" not in run_text(run, jobs)


def test_what_was_only_quick_checked_stays_kept_until_a_verify_reads_it_back(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A later full verify of one collection, or a quick one, reads none of the others
    back: the run keeps naming those (last_verify.after_run_quick_only, GET /runs/{id})
    until one that reads them does."""
    u, keys = backed_up_full(monkeypatch)
    time_runs_out_in(u, keys[0], monkeypatch)
    close_finished_runs(u.ctx)
    u.ctx.stop_by = None  # the later verifies have time to read everything back
    assert (run_summary(u)["verify"]["quick_only"]) == keys  # none read back
    first, second = (key.rsplit("/", 1)[1].split(".")[0] for key in keys[:2])
    kept = []
    for collection, quick in [(first, False), (None, True), (second, False), (None, False)]:
        verify.record(u.ctx, verify.verify_run(u.ctx, RUN_ID, collection=collection, quick=quick))
        shown = verify_view(run_summary(u)["last_verify"])
        assert shown is not None
        kept.append(shown["after_run_quick_only"])

    assert kept == [keys[1:], keys[1:], keys[2:], []]


def run_summary(u: Unit) -> dict[str, Any]:
    run = u.state.get_run(RUN_ID)
    assert run is not None
    return run.summary or {}


def test_quick_checks_out_of_time_too_stop_and_the_run_still_closes_saying_so(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Time runs out reading the first object back, and each HEAD is slow (thousands of
    objects left would take longer than the margin): the quick checks stop too, after
    verify.QUICK_CHECKS_SECONDS, instead of running past the invocation's end; the run
    closes and names what was not checked at all."""
    u, keys = backed_up_full(monkeypatch)
    time_runs_out_in(u, keys[0], monkeypatch)
    monkeypatch.setattr(verify, "QUICK_CHECKS_SECONDS", 0.05, raising=False)
    headed = slow_heads(u, monkeypatch)

    assert close_finished_runs(u.ctx) == [RUN_ID]
    assert headed == keys[:2]  # the third object is not even HEADed

    run, jobs = u.notifier.sent[0]
    verified = (run.summary or {})["verify"]
    assert run.status is RunStatus.SUCCEEDED and verified["ok"]
    assert verified["fully_read"] == 0 and verified["quick_only"] == keys[:2]
    assert verified["unchecked"] == keys[2:]
    assert "2 of 3 objects were only quick-checked (size and CRC64) and 1 not checked at all" \
        in verified["next_step"]
    assert verified["next_step"] in run_text(run, jobs)
    [never] = [f"{j.source}/{j.collection}" for j in jobs if j.result and j.result.key == keys[2]]
    assert never not in verified["checked"] and len(verified["checked"]) == 2  # not verified
    shown = verify_view(verified)
    assert shown is not None and shown["unchecked"] == keys[2:]


def test_what_the_check_after_the_run_did_not_check_at_all_is_kept_to_be_read_back(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """An object the check after the run had no time left even to quick-check is as unread
    as one it quick-checked: the run keeps naming it until a verify reads it back."""
    u, keys = backed_up_full(monkeypatch)
    time_runs_out_in(u, keys[0], monkeypatch)
    monkeypatch.setattr(verify, "QUICK_CHECKS_SECONDS", 0.0, raising=False)
    close_finished_runs(u.ctx)
    assert run_summary(u)["verify"]["unchecked"]  # some were not checked at all
    u.ctx.stop_by = None
    first = keys[0].rsplit("/", 1)[1].split(".")[0]
    verify.record(u.ctx, verify.verify_run(u.ctx, RUN_ID, collection=first, quick=False))

    shown = verify_view(run_summary(u)["last_verify"])
    assert shown is not None and shown["after_run_quick_only"] == keys[1:]


def test_a_quick_verify_at_close_out_of_time_stops_and_the_run_still_closes_saying_so(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """`verify.after_run: quick` (the default) HEADs each object: with thousands of them
    those HEADs alone outlast the invocation. Time runs out while the first is HEADed and
    each HEAD is slow: like a full verify's quick checks, they stop after
    verify.QUICK_CHECKS_SECONDS; the run closes and names what was not checked at all."""
    u, keys = backed_up_full(monkeypatch, after_run="quick")
    monkeypatch.setattr(verify, "QUICK_CHECKS_SECONDS", 0.05)
    headed = slow_heads(u, monkeypatch, out_of_time_in=keys[0])

    assert close_finished_runs(u.ctx) == [RUN_ID]
    assert headed == keys[:2]  # the third object is not even HEADed

    run, jobs = u.notifier.sent[0]
    verified = (run.summary or {})["verify"]
    assert run.status is RunStatus.SUCCEEDED and verified["ok"] and verified["mode"] == "quick"
    assert verified["unchecked"] == keys[2:] and "quick_only" not in verified
    assert "1 of 3 objects were not checked" in verified["next_step"]
    assert f"baas-backup verify {RUN_ID} --quick" in verified["next_step"]
    assert verified["next_step"] in run_text(run, jobs)  # the notification says so
    [never] = [f"{j.source}/{j.collection}" for j in jobs if j.result and j.result.key == keys[2]]
    assert never not in verified["checked"] and len(verified["checked"]) == 2  # not verified
    shown = verify_view(verified)  # and GET /runs/{run_id}
    assert shown is not None and shown["unchecked"] == keys[2:]


def test_a_quick_verify_at_close_with_time_to_spare_checks_everything(
        monkeypatch: pytest.MonkeyPatch) -> None:
    u, _ = backed_up_full(monkeypatch, after_run="quick")

    close_finished_runs(u.ctx)

    run, jobs = u.notifier.sent[0]
    verified = (run.summary or {})["verify"]
    assert run.status is RunStatus.SUCCEEDED and verified["ok"] and verified["objects"] == 3
    assert "unchecked" not in verified and "next_step" not in verified
    assert len(verified["checked"]) == 3 and "verify:" not in run_text(run, jobs)


def test_what_a_quick_check_at_close_left_unchecked_is_cleared_by_the_quick_verify_it_names(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The check after the run was quick: the `--quick` verify its next_step names checks
    what it left, and the run stops naming those objects."""
    u, _ = backed_up_full(monkeypatch, after_run="quick")
    monkeypatch.setattr(verify, "QUICK_CHECKS_SECONDS", 0.0)
    head = u.objects.head

    def out_of_time_at_first(key: str) -> ObjectInfo | None:
        u.ctx.stop_by = time.monotonic()
        return head(key)

    monkeypatch.setattr(u.objects, "head", out_of_time_at_first)
    close_finished_runs(u.ctx)
    assert run_summary(u)["verify"]["unchecked"]
    monkeypatch.setattr(u.objects, "head", head)
    u.ctx.stop_by = None
    verify.record(u.ctx, verify.verify_run(u.ctx, RUN_ID, quick=True))

    shown = verify_view(run_summary(u)["last_verify"])
    assert shown is not None and shown["after_run_quick_only"] == []
