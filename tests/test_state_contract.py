"""One contract for every state backend: SQLite, MySQL (a real MariaDB started by
scripts/mariadb) and objects in COS (the real SDK against moto's S3 server).

The races run for real: threads and spawned processes against one store, with the
pipeline's own claim rules (compare-and-set on version, leases). Nothing may be lost,
done twice or created twice.
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from devkit.cos_layer import CosLayer
from shared.adapters.cos.client import cos_client
from shared.adapters.cos.state import PRUNE_AFTER, CosStateStore
from shared.adapters.state import open_store
from shared.config import Destination
from shared.domain.errors import StateError
from shared.domain.jobs import Job, JobStatus, Run, RunStatus, utcnow
from shared.ports import StateStore
from tests.fakes import MemoryState
from tests.support.mysql import PASSWORD_ENV, MariaDB

if TYPE_CHECKING:
    from tests.support.backup import LocalBackup

# Spawned race workers import this module: moto and the emulators are imported where
# used, so a worker is up in well under a second.

BACKENDS = ["sqlite", "mysql", "cos"]
SPAWN = multiprocessing.get_context("spawn")


def _warm(_: int) -> None:
    time.sleep(0.3)


@pytest.fixture(scope="module")
def processes() -> Iterator[Any]:
    """Four spawned processes for the races, past their imports before any race's start
    time is chosen (a race then starts within milliseconds in every process)."""
    with SPAWN.Pool(4) as pool:
        pool.map(_warm, range(4), chunksize=1)
        yield pool


@dataclasses.dataclass(frozen=True)
class Backend:
    """Everything a thread or a spawned process needs to open its own store."""

    kind: str
    url: str
    destination: Destination | None = None

    def open(self) -> StateStore:
        return open_store(self.url, self.destination)


@pytest.fixture
def atomic_moto(monkeypatch: pytest.MonkeyPatch) -> None:
    """moto checks If-None-Match and then stores the object in two steps, with other request
    threads free to run in between; COS and S3 decide a conditional PUT atomically. One lock
    across moto's PUT handler makes the stand-in keep that promise, so the races below test
    our code and not moto's."""
    from moto.s3.responses import S3Response

    lock = threading.Lock()
    original = S3Response.put_object

    def put_object(self: Any) -> Any:
        with lock:
            return original(self)

    monkeypatch.setattr(S3Response, "put_object", put_object)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    return _backend(request, request.param, tmp_path)


def _backend(request: pytest.FixtureRequest, kind: str, tmp_path: Path) -> Backend:
    if kind == "sqlite":
        return Backend(kind, f"sqlite:///{tmp_path / 'state.sqlite3'}")
    if kind == "mysql":
        return Backend(kind, request.getfixturevalue("mysql_url"))
    request.getfixturevalue("atomic_moto")
    return Backend(kind, "cos://", request.getfixturevalue("destination"))


@pytest.fixture(params=[*BACKENDS, "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> StateStore:
    """Every backend, and the unit tests' in-memory fake, which must keep the same
    contract (the race tests below need real processes, so they leave the fake out)."""
    if request.param == "memory":
        return MemoryState()
    return _backend(request, request.param, tmp_path).open()


def make_run(key: str = "k", run_id: str = "r1", jobs: int = 3, at: datetime | None = None,
             **run_fields: Any) -> tuple[Run, list[Job]]:
    now = at or utcnow()
    run = Run(run_id=run_id, idempotency_key=key, trigger="test", created_at=now, **run_fields)
    made = [Job(job_id=f"{run_id}.j{i}", run_id=run_id, source="s", collection=f"t{i}",
                next_check_at=now, created_at=now, updated_at=now) for i in range(jobs)]
    return run, made


# the contract, one behaviour at a time -------------------------------------------
def test_create_run_is_idempotent(store: StateStore) -> None:
    first, created = store.create_run(*make_run())
    again, created_again = store.create_run(*make_run(run_id="r2"))
    assert created and not created_again
    assert again.run_id == first.run_id == "r1"
    assert [r.run_id for r in store.list_runs()] == ["r1"]
    assert [j.job_id for j in store.list_jobs("r1")] == ["r1.j0", "r1.j1", "r1.j2"]
    assert store.list_jobs("r2") == [] and store.get_run("r2") is None


def test_a_run_is_found_by_its_idempotency_key_until_deleted(store: StateStore) -> None:
    assert store.find_run("k") is None
    store.create_run(*make_run())
    found = store.find_run("k")
    assert found is not None and found.run_id == "r1"
    assert store.find_run("K") is None and store.find_run("k2") is None
    closed = store.save_run(found.model_copy(update={"status": RunStatus.SUCCEEDED}))
    assert closed is not None
    store.delete_run("r1")
    assert store.find_run("k") is None


def test_idempotency_keys_and_ids_are_exact(store: StateStore) -> None:
    """Keys differing only in case are two runs (MySQL's default collation would merge
    them); unicode survives (utf8mb4)."""
    store.create_run(*make_run(key="Timer:Nightly", run_id="r1"))
    _, created = store.create_run(*make_run(key="timer:nightly", run_id="r2"))
    assert created
    now = utcnow()
    job = Job(job_id="r3.商品 🛒", run_id="r3", source="s", collection="商品 products 🛒",
              next_check_at=now, created_at=now, updated_at=now)
    store.create_run(Run(run_id="r3", idempotency_key="k3 键", trigger="t", created_at=now), [job])
    stored = store.get_job(job.job_id)
    assert stored is not None and stored.collection == "商品 products 🛒"


def test_a_run_lists_its_jobs_whatever_their_ids(store: StateStore) -> None:
    """The COS store lists the versions of every job whose id starts with the run's in one
    pass; a job id that does not, and a job saved since, are still found, at their latest."""
    run, jobs = make_run(run_id="r1", jobs=2)
    now = utcnow()
    odd = Job(job_id="elsewhere.j9", run_id="r1", source="s", collection="t9",
              next_check_at=now, created_at=now, updated_at=now)
    store.create_run(run, [*jobs, odd])
    store.create_run(*make_run(key="k2", run_id="r1.j", jobs=1))  # a run whose id extends r1's
    moved = store.save_job(jobs[1].moved_to(JobStatus.EXPORTING, platform_job_id="e1"))
    assert moved is not None and store.save_job(odd.moved_to(JobStatus.EXPORTING)) is not None
    listed = store.list_jobs("r1")
    assert [j.job_id for j in listed] == ["elsewhere.j9", "r1.j0", "r1.j1"]
    assert [j.version for j in listed] == [1, 0, 1] and listed[2].platform_job_id == "e1"
    assert [j.job_id for j in store.list_jobs("r1.j")] == ["r1.j.j0"]


def test_a_run_lists_its_jobs_leaving_out_the_skipped(store: StateStore) -> None:
    """Skipped jobs are neither read nor returned; a skip naming no job of the run is
    harmless. Ten jobs: the COS store looks a few up one by one, many in one listing."""
    run, jobs = make_run(run_id="r1", jobs=10)
    store.create_run(run, jobs)
    moved = store.save_job(jobs[9].moved_to(JobStatus.EXPORTING, platform_job_id="e9"))
    assert moved is not None
    ids = [j.job_id for j in jobs]
    few = store.list_jobs("r1", skip=frozenset(ids[:8]))  # two left: looked up one by one
    assert [(j.job_id, j.version) for j in few] == [(ids[8], 0), (ids[9], 1)]
    many = store.list_jobs("r1", skip=[ids[0], "r2.j0", "nope"])  # nine left: one listing
    assert [j.job_id for j in many] == ids[1:] and many[-1].platform_job_id == "e9"
    assert store.list_jobs("r1", skip=ids) == [] and store.list_jobs("nope", skip=ids) == []


def test_missing_records_read_as_none(store: StateStore) -> None:
    assert store.get_run("nope") is None and store.get_job("nope") is None
    assert store.list_jobs("nope") == [] and store.list_runs() == [] and store.open_runs() == []
    _, jobs = make_run()
    assert store.save_job(jobs[0]) is None  # nothing stored: nothing to compare with
    assert store.get_job(jobs[0].job_id) is None
    run, _ = make_run()
    assert store.save_run(run) is None and store.get_run(run.run_id) is None


def test_a_closed_run_can_be_deleted_with_its_jobs(store: StateStore) -> None:
    for key, run_id in (("k1", "r1"), ("k2", "r2")):
        run, jobs = make_run(key=key, run_id=run_id)
        store.create_run(run, jobs)
        for job in store.list_jobs(run_id):
            assert store.save_job(job.moved_to(JobStatus.FAILED, error="x")) is not None
        stored = store.get_run(run_id)
        assert stored is not None
        assert store.save_run(stored.model_copy(update={"status": RunStatus.FAILED})) is not None

    store.delete_run("r1")
    store.delete_run("r1")  # twice is harmless

    assert store.get_run("r1") is None and store.list_jobs("r1") == []
    assert store.get_job("r1.j0") is None
    assert [r.run_id for r in store.list_runs()] == ["r2"]
    assert len(store.list_jobs("r2")) == 3
    again, created = store.create_run(*make_run(key="k1", run_id="r3"))
    assert created and again.run_id == "r3"  # the deleted run's key is free again


@contextmanager
def _midway_through_delete(deleter: StateStore, record: str, meanwhile: Any) -> Iterator[None]:
    """Run `meanwhile` once, in the middle of `deleter.delete_run`: on COS once it listed
    the versions of `record` ("runs/<id>/" or "jobs/<id>/"), before it deletes the first; on SQL
    right before its first DELETE reaches the database (its transaction holds no lock yet,
    so a save from another connection goes through)."""
    fired: list[bool] = []

    def once() -> None:
        if not fired:
            fired.append(True)
            meanwhile()

    if isinstance(deleter, CosStateStore):
        real_delete = deleter._delete

        def delete(key: str) -> None:
            if f"/_state/{record}v" in key:
                once()
            real_delete(key)

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(deleter, "_delete", delete)
            yield
        return
    import sqlalchemy as sa

    engine = deleter.engine  # type: ignore[attr-defined]

    def before(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if statement.lstrip().upper().startswith("DELETE"):
            once()

    sa.event.listen(engine, "before_cursor_execute", before)
    try:  # a MySQL engine is shared by the process: the hook must not outlive the test
        yield
    finally:
        sa.event.remove(engine, "before_cursor_execute", before)


@pytest.mark.parametrize("racing", ["run", "job"])
def test_a_save_racing_delete_run_leaves_nothing_of_the_run(backend: Backend, racing: str) -> None:
    """Retention deleting a closed run while another function saves it (a verify recording
    its result on the run, a prune marking a job): the save lands in the middle of the
    delete. Whichever way it went (saved then deleted, or refused), once both have
    returned nothing of the run is left: no record reappears, as none does after a SQL
    DELETE (a save after it matches no row)."""
    writer, deleter = backend.open(), backend.open()
    run, jobs = make_run(jobs=2)
    writer.create_run(run, jobs)
    for job in jobs:
        assert writer.save_job(job.moved_to(JobStatus.FAILED, error="x")) is not None
    closed = writer.save_run(run.model_copy(update={"status": RunStatus.FAILED}))
    assert closed is not None
    held_job = writer.get_job(jobs[1].job_id)
    assert held_job is not None
    saved: list[object] = []

    def save() -> None:
        if racing == "run":
            saved.append(writer.save_run(closed.model_copy(update={"summary": {"late": True}})))
        else:
            saved.append(writer.save_job(held_job.model_copy(update={"attempts": 9})))

    record = f"runs/{run.run_id}/" if racing == "run" else f"jobs/{held_job.job_id}/"
    with _midway_through_delete(deleter, record, save):
        deleter.delete_run(run.run_id)

    assert saved  # the save did run in the middle of the delete
    for reader in (writer, deleter):
        assert reader.get_run(run.run_id) is None and reader.list_jobs(run.run_id) == []
        assert all(reader.get_job(j.job_id) is None for j in jobs)
        assert reader.list_runs() == [] and reader.open_runs() == []
    if isinstance(deleter, CosStateStore):
        assert CosObjectListing(backend.destination).keys(  # type: ignore[arg-type]
            f"{backend.destination.prefix}/_state/{record}") == []  # type: ignore[union-attr]
    _, created = writer.create_run(*make_run(run_id="r2"))  # its key is free again
    assert created


def test_a_delete_run_that_saves_keep_outrunning_says_so_and_a_second_finishes(
        destination: Destination, atomic_moto: None) -> None:
    """A save lands after each of the delete's listings of the run record: the delete gives
    up loudly after its rounds (never returning as if the run were gone), and deleting
    again, unraced, leaves nothing."""
    writer, deleter = CosStateStore(destination), CosStateStore(destination)
    run, jobs = make_run(jobs=1)
    writer.create_run(run, jobs)
    real_versions = deleter._versions

    def versions(record: str) -> list[int]:
        found = real_versions(record)
        current = writer.get_run(run.run_id)
        if record.endswith(f"/runs/{run.run_id}/") and current is not None:
            assert writer.save_run(current.model_copy(update={"summary": {"n": len(found)}}))
        return found

    with pytest.MonkeyPatch.context() as patch, pytest.raises(
            StateError, match="kept being written while it was deleted"):
        patch.setattr(deleter, "_versions", versions)
        deleter.delete_run(run.run_id)
    deleter.delete_run(run.run_id)
    assert writer.get_run(run.run_id) is None and writer.list_runs() == []
    assert CosObjectListing(destination).keys(f"{destination.prefix}/_state/runs/") == []


def test_job_saves_are_compare_and_set(store: StateStore) -> None:
    run, jobs = make_run()
    store.create_run(run, jobs)
    saved = store.save_job(jobs[0].moved_to(JobStatus.EXPORTING, platform_job_id="e1"))
    assert saved is not None and saved.version == 1
    assert store.save_job(jobs[0].moved_to(JobStatus.FAILED, error="stale")) is None
    again = store.save_job(saved.model_copy(update={"attempts": 1}))  # same status: still a write
    assert again is not None and again.version == 2
    assert store.save_job(saved) is None
    stored = store.get_job(jobs[0].job_id)
    assert stored is not None and stored.version == 2 and stored.status is JobStatus.EXPORTING
    assert stored.platform_job_id == "e1" and stored.attempts == 1


def test_a_jobs_unclaimed_hand_offs_are_kept(store: StateStore) -> None:
    """The poller fails a ready job by them: a store that dropped them would hand it out
    for ever."""
    run, jobs = make_run(jobs=1)
    store.create_run(run, jobs)
    since = jobs[0].created_at + timedelta(seconds=1.5)
    saved = store.save_job(jobs[0].moved_to(JobStatus.READY, unclaimed_since=since,
                                            unclaimed_hand_offs=3))
    assert saved is not None
    stored = store.get_job(jobs[0].job_id)
    assert stored is not None and stored.unclaimed_since == since
    assert stored.unclaimed_hand_offs == 3


def test_run_saves_are_compare_and_set_and_close(store: StateStore) -> None:
    run, jobs = make_run()
    store.create_run(run, jobs)
    store.create_run(*make_run(key="k2", run_id="r2"))
    assert sorted(r.run_id for r in store.open_runs()) == ["r1", "r2"]
    closed = store.save_run(run.model_copy(update={
        "status": RunStatus.SUCCEEDED, "finished_at": utcnow(), "summary": {"jobs": 3}}))
    assert closed is not None and closed.version == 1
    assert store.save_run(run.model_copy(update={"status": RunStatus.FAILED})) is None
    assert [r.run_id for r in store.open_runs()] == ["r2"]
    stored = store.get_run("r1")
    assert stored is not None and stored.status is RunStatus.SUCCEEDED and stored.summary == {"jobs": 3}


def test_due_jobs_are_unfinished_and_due_oldest_first(store: StateStore) -> None:
    now = utcnow()
    run, jobs = make_run(jobs=5, at=now - timedelta(minutes=10))
    store.create_run(run, jobs)
    store.save_job(jobs[0].model_copy(update={"next_check_at": now - timedelta(minutes=1)}))
    store.save_job(jobs[1].model_copy(update={"next_check_at": now + timedelta(seconds=5)}))
    store.save_job(jobs[2].failed("broken", now))
    store.save_job(jobs[3].moved_to(JobStatus.READY).moved_to(JobStatus.COPYING)
                   .moved_to(JobStatus.DONE, finished_at=now))
    # jobs[4] stays due since ten minutes ago: the oldest
    assert [j.job_id for j in store.due_jobs(now)] == [jobs[4].job_id, jobs[0].job_id]
    assert [j.job_id for j in store.due_jobs(now, limit=1)] == [jobs[4].job_id]
    # seconds matter: a FLOAT column would round an epoch to minutes
    assert jobs[1].job_id not in [j.job_id for j in store.due_jobs(now + timedelta(seconds=4))]
    assert jobs[1].job_id in [j.job_id for j in store.due_jobs(now + timedelta(seconds=6))]


def test_a_run_has_open_jobs_until_each_of_its_jobs_ended(store: StateStore) -> None:
    now = utcnow()
    run, jobs = make_run(jobs=3, at=now)
    other, others = make_run(key="k2", run_id="r2", jobs=1, at=now)
    store.create_run(run, jobs)
    store.create_run(other, others)
    assert store.run_has_open_jobs("r1") and store.run_has_open_jobs("r2")

    store.save_job(jobs[0].failed("broken", now))
    store.save_job(jobs[1].moved_to(JobStatus.READY).moved_to(JobStatus.COPYING)
                   .moved_to(JobStatus.DONE, finished_at=now))
    assert store.run_has_open_jobs("r1")  # jobs[2] is still pending
    store.save_job(jobs[2].moved_to(JobStatus.EXPORTING).moved_to(JobStatus.READY)
                   .moved_to(JobStatus.COPYING).moved_to(JobStatus.DONE, finished_at=now))
    assert not store.run_has_open_jobs("r1")
    assert store.run_has_open_jobs("r2")  # another run's job is not this run's
    assert not store.run_has_open_jobs("no-such-run")


def test_an_ended_runs_jobs_are_taken_from_its_snapshot_unless_saved_since(
        destination: Destination, atomic_moto: None) -> None:
    """COS: once every job of a run of many has ended, one full read saves a snapshot;
    later reads take each job from it while its listed version is the snapshot's, and
    read a job saved since. A run with a job still open gets no snapshot; deleting the run
    deletes it."""
    store = CosStateStore(destination)
    now = utcnow()
    run, jobs = make_run(jobs=12, at=now)
    store.create_run(run, jobs)
    snapshot = f"{destination.prefix}/_state/snapshots/r1.json"
    ended = [store.save_job(j.failed("broken", now)) for j in jobs[:-1]]
    read: list[str] = []
    read_version = store._read_version

    def counted(key: str, etag: str | None) -> dict[str, Any] | None:
        if "/_state/jobs/" in key:
            read.append(key)
        return read_version(key, etag)

    store._read_version = counted  # type: ignore[method-assign]
    assert len(store.list_jobs("r1")) == 12 and len(read) == 12
    assert store._get_json(snapshot) is None  # jobs[-1] is still pending
    store.save_job(jobs[-1].failed("broken", now))
    first = store.list_jobs("r1")
    assert store._get_json(snapshot) is not None
    assert _not_in_the_documented_layout(store, destination) == []

    read.clear()
    assert store.list_jobs("r1") == first and read == []  # all taken from the snapshot
    again = ended[0]
    assert again is not None
    acknowledged = store.save_job(again.model_copy(update={"acknowledged_at": now}))
    assert acknowledged is not None and acknowledged.version == 2
    listed = store.list_jobs("r1")
    assert len(read) == 1 and listed[0] == acknowledged and listed[1:] == first[1:]
    assert store.list_jobs("r1", skip=[jobs[0].job_id]) == first[1:]

    store.delete_run("r1")
    assert store._get_json(snapshot) is None and store.list_jobs("r1") == []


def _not_in_the_documented_layout(store: CosStateStore, destination: Destination) -> list[str]:
    """The kinds of key under _state/ (claims/, snapshots/, create-only.json, ...) missing
    from docs/state-on-cos.md's Layout block, which an operator reads the bucket by."""
    doc = (Path(__file__).resolve().parent.parent / "docs" / "state-on-cos.md").read_text("utf-8")
    layout = doc.split("## Layout", 1)[1].split("```")[1]
    root = f"{destination.prefix}/_state/"
    kinds = {key[len(root):].split("/")[0] for key in store._list(root)[0]}
    return sorted(kind for kind in kinds if f"_state/{kind}" not in layout)


def test_run_has_open_jobs_reads_only_hinted_jobs_and_clears_stale_hints(
        destination: Destination, atomic_moto: None) -> None:
    """COS: a run of many jobs, all but one ended, is judged from two listings and the
    one job still hinted open, not by reading every job; a hint left behind by a function
    that died after its job ended is read once, found stale and removed."""
    store = CosStateStore(destination)
    now = utcnow()
    run, jobs = make_run(jobs=12, at=now)
    store.create_run(run, jobs)
    for job in jobs[1:]:
        store.save_job(job.failed("broken", now))
    hint = f"{destination.prefix}/_state/open-jobs/{jobs[1].job_id}"
    store._put_json(hint, {})  # a stale hint, as a crash between the save and the delete leaves

    read: list[str] = []
    original = store.get_job

    def counted(job_id: str) -> Job | None:
        read.append(job_id)
        return original(job_id)

    store.get_job = counted  # type: ignore[method-assign]
    assert store.run_has_open_jobs("r1")
    assert len(read) <= 2 and jobs[0].job_id in read

    store.save_job(jobs[0].failed("broken", now))
    read.clear()
    assert not store.run_has_open_jobs("r1")
    assert read == [jobs[1].job_id]  # the stale hint, read once ...
    assert CosObjectListing(destination).keys(f"{destination.prefix}/_state/open-jobs/") == []
    read.clear()
    assert not store.run_has_open_jobs("r1") and read == []  # ... and gone


def test_runs_list_newest_first_in_pages(store: StateStore) -> None:
    base = utcnow()
    for i in range(5):
        store.create_run(*make_run(key=f"k{i}", run_id=f"2026112{i}T020000Z-aaaa", jobs=1,
                                   at=base + timedelta(days=i)))
    first = store.list_runs(limit=2)
    assert [r.run_id for r in first] == ["20261124T020000Z-aaaa", "20261123T020000Z-aaaa"]
    second = store.list_runs(limit=2, before=first[-1].run_id)
    assert [r.run_id for r in second] == ["20261122T020000Z-aaaa", "20261121T020000Z-aaaa"]
    assert [r.run_id for r in store.list_runs(limit=10, before=second[-1].run_id)] == [
        "20261120T020000Z-aaaa"]


def test_restores_list_newest_first_in_pages_whatever_runs_lie_between(store: StateStore) -> None:
    """Restores are listed on their own, as runs are (newest first, `before` pages on): an
    old restore is found however many backups were recorded after it."""
    assert store.list_restores() == []  # on COS: restores since are indexed as recorded
    base = utcnow()
    restores = ["20261101T020000Z-aaaa", "20261103T020000Z-aaaa", "20261104T020000Z-aaaa"]
    for day in range(1, 8):
        run_id = f"2026110{day}T020000Z-aaaa"
        store.create_run(*make_run(key=f"k{day}", run_id=run_id, jobs=1, at=base + timedelta(days=day),
                                   operation="restore" if run_id in restores else "backup"))
    store.create_run(*make_run(key="target", run_id="0-restore-target-ab", jobs=0,
                               operation="restore-target", status=RunStatus.SUCCEEDED))
    assert [r.run_id for r in store.list_restores()] == restores[::-1]
    first = store.list_restores(limit=2)
    assert [r.run_id for r in first] == restores[:0:-1]
    assert [r.run_id for r in store.list_restores(limit=2, before=first[-1].run_id)] == restores[:1]
    assert store.list_restores(before=restores[0]) == []
    closed = store.get_run(restores[1])
    assert closed is not None
    ended = store.save_run(closed.model_copy(update={"status": RunStatus.SUCCEEDED}))
    assert ended is not None and ended.operation == "restore"
    assert [r.status for r in store.list_restores(limit=2)] == [RunStatus.RUNNING, RunStatus.SUCCEEDED]
    store.delete_run(restores[1])
    assert [r.run_id for r in store.list_restores()] == [restores[2], restores[0]]


def test_token_cache_expires_and_overwrites(store: StateStore) -> None:
    now = utcnow()
    assert store.cache_get("wechat:wx1", now) is None
    store.cache_put("wechat:wx1", "token-1", now + timedelta(seconds=60))
    assert store.cache_get("wechat:wx1", now) == "token-1"
    assert store.cache_get("wechat:wx1", now + timedelta(seconds=61)) is None
    store.cache_put("wechat:wx1", "token-2", now + timedelta(seconds=120))
    assert store.cache_get("wechat:wx1", now + timedelta(seconds=61)) == "token-2"
    assert store.cache_get("wechat:wx2", now) is None
    store.cache_delete("wechat:wx1")
    store.cache_delete("wechat:wx1")  # deleting nothing is fine
    assert store.cache_get("wechat:wx1", now) is None


def test_racing_token_fetches_leave_one_token(backend: Backend) -> None:
    """Functions that fetch a token at once all write it; none may fail on the key."""
    expires = utcnow() + timedelta(hours=1)

    def put(i: int) -> None:
        backend.open().cache_put("wechat:wx1", f"token-{i}", expires)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(put, range(16)))
    assert backend.open().cache_get("wechat:wx1", utcnow()) in {f"token-{i}" for i in range(16)}


def test_a_cache_claim_is_won_once_until_deleted_or_expired(store: StateStore) -> None:
    now = utcnow()
    assert store.cache_claim("alert:stale", "first", now + timedelta(seconds=60), now) is True
    assert store.cache_claim("alert:stale", "second", now + timedelta(seconds=60), now) is False
    assert store.cache_get("alert:stale", now) == "first"
    later = now + timedelta(seconds=61)  # the first claim has expired
    assert store.cache_claim("alert:stale", "third", later + timedelta(seconds=60), later) is True
    assert store.cache_get("alert:stale", later) == "third"
    store.cache_delete("alert:stale")
    assert store.cache_claim("alert:stale", "fourth", later + timedelta(seconds=60), later) is True
    assert store.cache_get("alert:stale", later) == "fourth"


def test_racing_cache_claims_are_won_once(backend: Backend) -> None:
    """Overlapping poller ticks claiming the staleness alarm at once: one wins."""
    stores = [backend.open() for _ in range(8)]
    now = utcnow()
    start = threading.Barrier(len(stores), timeout=20)

    def claim(i: int) -> bool:
        start.wait()
        return stores[i].cache_claim("alert:stale", f"tick-{i}", now + timedelta(hours=1), now)

    with ThreadPoolExecutor(len(stores)) as pool:
        won = list(pool.map(claim, range(len(stores))))
    assert won.count(True) == 1
    assert backend.open().cache_get("alert:stale", now) == f"tick-{won.index(True)}"


# races: threads and processes ----------------------------------------------------
def _first_open(backend: Backend, name: str, start_at: float) -> bool:
    time.sleep(max(0.0, start_at - time.time()))
    store = backend.open()  # on a new database: creates the tables
    return store.create_run(*make_run(key=name, run_id=name, jobs=1))[1]


def _first_opens(backend: Backend, name: str, start_at: float) -> list[bool]:
    with ThreadPoolExecutor(2) as pool:
        return list(pool.map(lambda i: _first_open(backend, f"{name}t{i}", start_at), range(2)))


def test_functions_first_opening_a_new_store_at_once(backend: Backend, processes: Any) -> None:
    """The first timer after deploying starts several functions on an empty database."""
    start_at = time.time() + 1
    created = [c for cs in processes.starmap(_first_opens, [(backend, f"p{i}", start_at)
                                                            for i in range(4)]) for c in cs]
    assert created == [True] * 8
    assert len(backend.open().list_runs()) == 8


STEP_FOR = {JobStatus.PENDING: "start", JobStatus.EXPORTING: "ready", JobStatus.READY: "claim",
            JobStatus.COPYING: "done"}


def _poller(backend: Backend, run_id: str, worker: str, start_at: float, seconds: float) -> list[tuple[str, str, str]]:
    """A poller that moves due jobs one step, as the pipeline does: every step a
    compare-and-set, the copy only by the holder of a live lease. Returns the steps it won."""
    store = backend.open()
    store.get_run(run_id)  # connect before the start, so every poller starts the race ready
    won: list[tuple[str, str, str]] = []
    time.sleep(max(0.0, start_at - time.time()))
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        now = utcnow()
        due = [j for j in store.due_jobs(now) if j.run_id == run_id]
        if not due:
            if all(j.status.terminal for j in store.list_jobs(run_id)):
                break
            time.sleep(0.005)
            continue
        for job in due:
            step = STEP_FOR[job.status]
            if job.status is JobStatus.PENDING:
                moved = job.moved_to(JobStatus.EXPORTING, platform_job_id=worker)
            elif job.status is JobStatus.EXPORTING:
                moved = job.moved_to(JobStatus.READY, expected_records=1)
            elif job.status is JobStatus.READY:
                moved = job.moved_to(JobStatus.COPYING, lease_owner=worker,
                                     lease_until=now + timedelta(minutes=5))
            elif job.lease_owner == worker:
                moved = job.moved_to(JobStatus.DONE, finished_at=now, lease_owner=None,
                                     checkpoint={"copied_by": worker})
            else:
                continue  # someone else holds the copy's lease
            if store.save_job(moved) is not None:
                won.append((job.job_id, step, worker))
            time.sleep(0.002)  # a real step makes a platform call: the others get a turn
    return won


def _threaded_pollers(backend: Backend, run_id: str, name: str, threads: int, start_at: float,
                      seconds: float) -> list[tuple[str, str, str]]:
    with ThreadPoolExecutor(threads) as pool:
        results = pool.map(lambda i: _poller(backend, run_id, f"{name}.t{i}", start_at, seconds),
                           range(threads))
        return [w for r in results for w in r]


def test_racing_pollers_do_every_step_exactly_once(backend: Backend, processes: Any) -> None:
    """Three processes of three threads poll the same run at once."""
    store = backend.open()
    run, jobs = make_run(jobs=8)
    store.create_run(run, jobs)
    start_at = time.time() + 1
    won = [w for ws in processes.starmap(
        _threaded_pollers, [(backend, run.run_id, f"p{i}", 3, start_at, 60) for i in range(3)]
    ) for w in ws]
    steps = Counter((job_id, step) for job_id, step, _ in won)
    assert steps == {(j.job_id, s): 1 for j in jobs for s in ("start", "ready", "claim", "done")}
    claimers = {job_id: worker for job_id, step, worker in won if step == "claim"}
    finishers = {job_id: worker for job_id, step, worker in won if step == "done"}
    assert finishers == claimers  # only the lease holder finished the copy
    final = store.list_jobs(run.run_id)
    assert [j.status for j in final] == [JobStatus.DONE] * 8
    assert all(j.checkpoint == {"copied_by": claimers[j.job_id]} for j in final)
    assert len({w for _, _, w in won}) > 1  # the work really was shared


def _trigger(backend: Backend, key: str, run_id: str, start_at: float) -> tuple[str, bool]:
    store = backend.open()
    run, jobs = make_run(key=key, run_id=run_id, jobs=4)
    time.sleep(max(0.0, start_at - time.time()))
    stored, created = store.create_run(run, jobs)
    return stored.run_id, created


def _threaded_triggers(backend: Backend, key: str, name: str, start_at: float) -> list[tuple[str, bool]]:
    with ThreadPoolExecutor(3) as pool:
        return list(pool.map(lambda i: _trigger(backend, key, f"{name}-{i}", start_at), range(3)))


def test_retried_triggers_record_one_run(backend: Backend, processes: Any) -> None:
    """A trigger retried while its first invocation runs: the same idempotency key from
    four processes of three threads, each naming the run differently (other seconds)."""
    start_at = time.time() + 1
    results = [r for rs in processes.starmap(
        _threaded_triggers, [(backend, "timer:nightly:2026-11-21T02:00:00Z", f"run{i}", start_at)
                             for i in range(4)]
    ) for r in rs]
    assert sum(created for _, created in results) == 1
    winner = next(run_id for run_id, created in results if created)
    assert {run_id for run_id, _ in results} == {winner}
    store = backend.open()
    assert [r.run_id for r in store.list_runs()] == [winner]
    assert [r.run_id for r in store.open_runs()] == [winner]
    assert len(store.list_jobs(winner)) == 4
    assert len(store.due_jobs(utcnow())) == 4


def _finisher(backend: Backend, job_id: str, worker: str, start_at: float, lease: float,
              copy_seconds: float) -> dict[str, Any]:
    """pipeline.finish's claim rule: a ready job, or a copy whose lease ran out."""
    store = backend.open()
    time.sleep(max(0.0, start_at - time.time()))
    job = store.get_job(job_id)
    assert job is not None
    now = utcnow()
    if not (job.status is JobStatus.READY
            or (job.status is JobStatus.COPYING and job.lease_expired(now))):
        return {"worker": worker, "claimed": False, "done": False}
    until = now + timedelta(seconds=lease)
    claimed = store.save_job(job.moved_to(JobStatus.COPYING, lease_owner=worker, lease_until=until,
                                          next_check_at=until, attempts=job.attempts + 1))
    if claimed is None:
        return {"worker": worker, "claimed": False, "done": False}
    time.sleep(copy_seconds)  # copying
    done = store.save_job(claimed.moved_to(
        JobStatus.DONE, finished_at=utcnow(), lease_owner=None, lease_until=None,
        checkpoint={"copied_by": worker}))
    return {"worker": worker, "claimed": True, "done": done is not None}


def test_retried_finisher_waits_for_the_lease(backend: Backend, processes: Any) -> None:
    """The finisher is invoked again (SCF retry, poller re-dispatch) while the first copy
    runs: within the lease nobody else claims; after it, exactly one retry does, and the
    first copier can no longer mark the job done."""
    store = backend.open()
    run, jobs = make_run(jobs=2)
    store.create_run(run, jobs)
    for job in jobs:
        store.save_job(job.moved_to(JobStatus.READY, expected_records=1))
    within, after = jobs
    with ThreadPoolExecutor(2) as threads:
        start_at = time.time() + 1
        # The first copies: within its 30 s lease, and past its 1.5 s lease.
        first_within = threads.submit(_finisher, backend, within.job_id, "first", start_at, 30, 3)
        first_after = threads.submit(_finisher, backend, after.job_id, "first", start_at, 1.5, 4)
        retries_within = processes.starmap_async(_finisher, [
            (backend, within.job_id, f"retry{i}", start_at + 1, 30, 0) for i in range(4)])
        retries_after = processes.starmap_async(_finisher, [
            (backend, after.job_id, f"retry{i}", start_at + 2.5, 30, 0) for i in range(4)])
        outcomes_within = [first_within.result(), *retries_within.get(60)]
        outcomes_after = [first_after.result(), *retries_after.get(60)]

    assert [o["worker"] for o in outcomes_within if o["claimed"]] == ["first"]
    assert [o["worker"] for o in outcomes_within if o["done"]] == ["first"]
    claimed_after = [o["worker"] for o in outcomes_after if o["claimed"]]
    assert claimed_after[0] == "first" and len(claimed_after) == 2  # one retry took over
    assert [o["worker"] for o in outcomes_after if o["done"]] == [claimed_after[1]]
    stored = store.get_job(after.job_id)
    assert stored is not None and stored.status is JobStatus.DONE
    assert stored.checkpoint == {"copied_by": claimed_after[1]}


# the whole pipeline on each server backend ------------------------------------------
@pytest.mark.parametrize("kind", ["cos", "mysql"])
def test_backup_runs_on_the_backend(kind: str, local: LocalBackup, request: pytest.FixtureRequest) -> None:
    from tests.support.backup import backup_now

    if kind == "mysql":
        server: MariaDB = request.getfixturevalue("mariadb")
        database = request.getfixturevalue("mysql_database")
        local = dataclasses.replace(local, state_url=server.config_url(database),
                                    environ={**local.environ, PASSWORD_ENV: server.password})
    else:
        local = dataclasses.replace(local, state_url="cos://")
    local.seed("orders", [{"_id": str(i), "商品": "🛒"} for i in range(30)])
    ctx = local.context(local.config())
    assert type(ctx.state).__name__ == {"cos": "CosStateStore", "mysql": "SqlStateStore"}[kind]
    run = backup_now(ctx)
    assert run.status is RunStatus.SUCCEEDED and run.summary and run.summary["records"] == 30
    assert ctx.state.open_runs() == [] and ctx.state.due_jobs(utcnow()) == []
    if kind == "mysql":
        assert server.password not in repr(ctx.config) and server.password not in repr(ctx.state)
    else:
        keys = [o.key for o in local.objects.list(f"{local.destination.prefix}/_state/")]
        assert any("/_state/claims/" in k for k in keys) and any("/_state/runs/" in k for k in keys)


# COS: what moto does, and the guards that depend on it ------------------------------
def test_the_test_servers_cos_layer_forbids_overwrites_like_cos(destination: Destination) -> None:
    """The facts the COS store's tests stand on: the test server drops If-None-Match (not
    documented for COS) and honours x-cos-forbid-overwrite, except on a bucket whose
    versioning was ever enabled."""
    from qcloud_cos.cos_exception import CosServiceError

    client = cos_client(destination)
    bucket = destination.bucket

    def body() -> bytes:
        return bytes(client.get_object(Bucket=bucket, Key="k")["Body"].get_raw_stream().read())

    client.put_object(Bucket=bucket, Key="k", Body=b"1")
    client.put_object(Bucket=bucket, Key="k", Body=b"2", IfNoneMatch="*")
    assert body() == b"2"  # If-None-Match alone protects nothing here
    with pytest.raises(CosServiceError) as refused:
        client.put_object(Bucket=bucket, Key="k", Body=b"3", Metadata={"x-cos-forbid-overwrite": "true"})
    assert refused.value.get_status_code() == 409 and body() == b"2"
    client.put_bucket_versioning(Bucket=bucket, Status="Enabled")
    client.put_bucket_versioning(Bucket=bucket, Status="Suspended")
    client.put_object(Bucket=bucket, Key="k", Body=b"4", Metadata={"x-cos-forbid-overwrite": "true"})
    assert body() == b"4"  # ever versioned: the header is void


def test_create_only_writes_rest_on_the_cos_header(destination: Destination, cos_layer: CosLayer) -> None:
    store = CosStateStore(destination)
    refused_before = cos_layer.forbidden_overwrites

    assert store._create_json("state-test/one.json", {"n": 1}) is True
    assert store._create_json("state-test/one.json", {"n": 2}) is False

    assert cos_layer.forbidden_overwrites > refused_before
    assert store._get_json("state-test/one.json") is not None


def test_expected_refusals_are_not_logged_as_errors(
        destination: Destination, caplog: pytest.LogCaptureFixture) -> None:
    """Opening the store proves the bucket refuses a second create-only PUT, and a lookup
    HEADs keys that may be absent: expected answers, which the SDK logged at ERROR and
    WARNING on every cold start until its logger was quieted."""
    with caplog.at_level(logging.DEBUG):
        store = CosStateStore(destination)
        store.check_create_only(again=True)
        assert store._create_json("state-test/quiet.json", {"n": 1}) is True
        assert store._create_json("state-test/quiet.json", {"n": 2}) is False
        assert store.get_job("no-such-job") is None

    loud = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert not loud, [f"{r.name}: {r.getMessage()[:120]}" for r in loud]


@pytest.mark.parametrize("history", [["Enabled"], ["Enabled", "Suspended"]])
def test_a_bucket_whose_versioning_was_ever_enabled_is_refused_loudly(
        destination: Destination, history: list[str]) -> None:
    """COS ignores x-cos-forbid-overwrite on a bucket whose versioning is enabled or was
    (suspended): the store must stop at once, not let two pollers both win."""
    client = cos_client(destination)
    for status in history:
        client.put_bucket_versioning(Bucket=destination.bucket, Status=status)

    with pytest.raises(StateError, match="overwrite an existing object") as refused:
        open_store("cos://", destination)

    message = str(refused.value)
    assert "enabled or suspended" in message and "mysql+pymysql://" in message


def test_sdk_retry_of_our_own_create_still_counts_as_ours(destination: Destination, atomic_moto: None) -> None:
    """The SDK resends a PUT whose answer got lost; the resend meets our own first write and
    is refused. The writer token inside the object tells it was us."""
    store = CosStateStore(destination)
    client = store._client
    original = client.put_object

    def sent_twice(**kwargs: Any) -> Any:
        original(**kwargs)
        return original(**kwargs)

    run, jobs = make_run()
    client.put_object = sent_twice
    try:
        stored, created = store.create_run(run, jobs)
        saved = store.save_job(jobs[0].moved_to(JobStatus.EXPORTING))
    finally:
        client.put_object = original
    assert created and stored.run_id == run.run_id
    assert saved is not None and saved.version == 1


def test_run_whose_creator_died_after_the_claim_is_finished_by_the_poller(
    destination: Destination, atomic_moto: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    crashing = CosStateStore(destination)

    def crash(claim: str, intent: dict[str, Any]) -> None:
        raise RuntimeError("function timed out")

    monkeypatch.setattr(crashing, "_materialize", crash)
    run, jobs = make_run()
    with pytest.raises(RuntimeError):
        crashing.create_run(run, jobs)
    poller = CosStateStore(destination)
    assert poller.get_run(run.run_id) is None  # only the claim was written
    # The claim object is the commit point: a retried trigger gets the same run ...
    assert CosStateStore(destination).create_run(*make_run(run_id="r2"))[1] is False
    # ... and so does the poller, which finishes writing it.
    assert [r.run_id for r in poller.open_runs()] == [run.run_id]
    assert [j.job_id for j in poller.due_jobs(utcnow())] == [j.job_id for j in jobs]


def test_a_trigger_killed_right_after_its_claim_leaves_its_run_to_the_poller(
        destination: Destination, atomic_moto: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """The claim is the commit point: killed between the claim's PUT and anything after it,
    the trigger has committed a run the poller must find and finish."""
    crashing = CosStateStore(destination)
    real_create = crashing._create_json

    def create_then_die(key: str, document: dict[str, Any]) -> bool:
        created = real_create(key, document)
        if "/claims/" in key:
            raise SystemExit("SCF killed the invocation")  # the process dies here
        return created

    monkeypatch.setattr(crashing, "_create_json", create_then_die)
    run, jobs = make_run()
    with pytest.raises(SystemExit):
        crashing.create_run(run, jobs)

    poller = CosStateStore(destination)
    assert poller.get_run(run.run_id) is None  # only the claim (and a hint) were written
    assert [r.run_id for r in poller.open_runs()] == [run.run_id]
    assert [j.job_id for j in poller.due_jobs(utcnow())] == [j.job_id for j in jobs]


def test_open_runs_drops_hints_that_lead_to_no_run(
        destination: Destination, atomic_moto: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """The open-runs hint goes before the claim, so a trigger that lost the claim, or died
    before making it, leaves one behind: the poller must not read it on every poll."""
    store = CosStateStore(destination)
    state = f"{destination.prefix}/_state/"
    listing = CosObjectListing(destination)
    store.create_run(*make_run(key="k", run_id="r1"))
    assert store.create_run(*make_run(key="k", run_id="r2"))[1] is False  # lost: its hint goes
    assert listing.keys(state + "open-runs/") == [state + "open-runs/r1"]

    def dies_claiming(key: str, document: dict[str, Any]) -> bool:
        raise SystemExit("SCF killed the invocation")

    dying = CosStateStore(destination)
    monkeypatch.setattr(dying, "_create_json", dies_claiming)
    with pytest.raises(SystemExit):
        dying.create_run(*make_run(key="k3", run_id="r3"))
    assert [r.run_id for r in store.open_runs()] == ["r1"]
    assert len(listing.keys(state + "open-runs/")) == 2  # r3's creator may still be claiming

    later = utcnow() + PRUNE_AFTER + timedelta(minutes=1)
    monkeypatch.setattr("shared.adapters.cos.state.utcnow", lambda: later)
    assert [r.run_id for r in store.open_runs()] == ["r1"]
    assert listing.keys(state + "open-runs/") == [state + "open-runs/r1"]


def test_pruning_keeps_the_last_two_versions_and_stale_writers_lose(destination: Destination, atomic_moto: None) -> None:
    store = CosStateStore(destination)
    run, jobs = make_run(jobs=1)
    store.create_run(run, jobs)
    stale = store.get_job(jobs[0].job_id)
    assert stale is not None
    job: Job | None = stale
    for status in (JobStatus.EXPORTING, JobStatus.READY, JobStatus.COPYING):
        assert job is not None
        job = store.save_job(job.moved_to(status))
    assert job is not None
    done = store.save_job(job.moved_to(JobStatus.DONE, finished_at=utcnow()))
    assert done is not None and done.version == 4
    closed = store.save_run(run.model_copy(update={"status": RunStatus.SUCCEEDED}))
    assert closed is not None

    state = f"{destination.prefix}/_state/"
    listing = CosObjectListing(destination)
    assert store.prune(utcnow()) == 0  # too early: a slow function may still hold a version
    assert len(listing.keys(state + "jobs/")) == 5
    assert store.prune(utcnow() + PRUNE_AFTER + timedelta(minutes=1)) == 1
    last_two = ["v0000000003.json", "v0000000004.json"]
    assert [k.rsplit("/", 1)[1] for k in listing.keys(state + "jobs/")] == last_two
    assert [k.rsplit("/", 1)[1] for k in listing.keys(state + "runs/")] == [
        "v0000000000.json", "v0000000001.json"]
    assert listing.keys(state + "closed/") == [] and listing.keys(state + "open-jobs/") == []

    # A writer still holding version 0 finds version 1 free again, and must still lose.
    assert store.save_job(stale.moved_to(JobStatus.FAILED, error="late")) is None
    final = store.get_job(jobs[0].job_id)
    assert final is not None and final.status is JobStatus.DONE and final.version == 4
    assert [k.rsplit("/", 1)[1] for k in listing.keys(state + "jobs/")] == last_two

    # One holding version 1 finds version 2 free, right below 3: it loses too, and what
    # it leaves below the head is never read.
    assert store.save_job(stale.model_copy(update={"version": 1, "error": "later"})) is None
    final = store.get_job(jobs[0].job_id)
    assert final is not None and final.status is JobStatus.DONE and final.version == 4


def _closed_run(store: CosStateStore) -> tuple[Run, Job]:
    """A run of one job, done and closed: both records have moved past version 0."""
    run, jobs = make_run(jobs=1)
    store.create_run(run, jobs)
    job: Job | None = store.get_job(jobs[0].job_id)
    for status in (JobStatus.EXPORTING, JobStatus.READY, JobStatus.COPYING):
        assert job is not None
        job = store.save_job(job.moved_to(status))
    assert job is not None
    done = store.save_job(job.moved_to(JobStatus.DONE, finished_at=utcnow()))
    closed = store.save_run(run.model_copy(update={"status": RunStatus.SUCCEEDED}))
    assert done is not None and closed is not None
    return closed, done


def _before_the_ghost_check(monkeypatch: pytest.MonkeyPatch, writer: CosStateStore,
                            meanwhile: Any) -> None:
    """Run `meanwhile` after the writer's create-only PUT of version N+1 landed and before
    its HEAD of version N."""
    real_exists = writer._exists

    def exists(key: str) -> bool:
        meanwhile()
        return real_exists(key)

    monkeypatch.setattr(writer, "_exists", exists)


def _prune_later(store: CosStateStore) -> None:
    store.prune(utcnow() + PRUNE_AFTER + timedelta(minutes=1))


def test_a_save_of_an_old_closed_runs_job_survives_a_prune_listing_it(
        destination: Destination, atomic_moto: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """Retention marking a job pruned, or an acknowledged suspect backup, two days after
    its run closed, while a new run's trigger prunes: the prune lists the record after the
    save's version landed. It must not take the version the save's ghost check looks for,
    or the save deletes its own version and the job is gone."""
    writer, pruner = CosStateStore(destination), CosStateStore(destination)
    _, done = _closed_run(writer)
    _before_the_ghost_check(monkeypatch, writer, lambda: _prune_later(pruner))

    saved = writer.save_job(done.model_copy(update={"pruned_at": utcnow()}))

    assert saved is not None and saved.version == done.version + 1
    assert pruner.get_job(done.job_id) == saved
    assert [j.job_id for j in pruner.list_jobs(done.run_id)] == [done.job_id]


def test_a_save_of_an_old_closed_run_survives_a_prune_listing_it(
        destination: Destination, atomic_moto: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """verify.record() saving last_verify on a run closed two days ago, racing a prune."""
    writer, pruner = CosStateStore(destination), CosStateStore(destination)
    closed, _ = _closed_run(writer)
    _before_the_ghost_check(monkeypatch, writer, lambda: _prune_later(pruner))

    saved = writer.save_run(closed.model_copy(update={"summary": {"last_verify": {"ok": True}}}))

    assert saved is not None and pruner.get_run(closed.run_id) == saved
    assert [r.run_id for r in pruner.list_runs()] == [closed.run_id]


def test_a_version_written_on_top_of_a_save_keeps_its_base(
        destination: Destination, atomic_moto: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """Between a save's PUT of version N+1 and its check of N, another function reads N+1
    and puts N+2, and a prune listing both takes N. The first save, finding N gone, must
    not delete N+1: N+2's own check, still to come, looks for it."""
    writer, other, pruner = (CosStateStore(destination) for _ in range(3))
    _, done = _closed_run(writer)
    at_its_check, go_on = threading.Event(), threading.Event()
    real_exists = other._exists

    def other_exists(key: str) -> bool:
        at_its_check.set()
        go_on.wait(30)
        return real_exists(key)

    monkeypatch.setattr(other, "_exists", other_exists)

    def on_top() -> None:
        read = other.get_job(done.job_id)
        assert read is not None and read.version == done.version + 1
        saves.append(side.submit(other.save_job, read.model_copy(update={"attempts": 7})))
        assert at_its_check.wait(30)
        _prune_later(pruner)

    _before_the_ghost_check(monkeypatch, writer, on_top)
    saves: list[Future[Job | None]] = []
    with ThreadPoolExecutor(1) as side:
        first = writer.save_job(done.model_copy(update={"pruned_at": utcnow()}))
        go_on.set()
    assert first is None  # told it lost, though the record carries its change
    assert saves[0].result() is not None

    final = pruner.get_job(done.job_id)
    assert final is not None and final.version == done.version + 2
    assert final.attempts == 7 and final.pruned_at is not None


def test_restores_recorded_before_the_index_are_indexed_once(
        destination: Destination, atomic_moto: None) -> None:
    """A bucket whose restores were recorded before `restores/` existed: the first listing
    reads every run once, indexes the restores among them and says so in
    restores-indexed.json; a deleted restore leaves the index with its run."""
    store, state = CosStateStore(destination), f"{destination.prefix}/_state/"
    listing, client = CosObjectListing(destination), cos_client(destination)
    restores = ["20261102T020000Z-aaaa", "20261101T020000Z-aaaa"]
    for day in range(1, 5):
        run_id = f"2026110{day}T020000Z-aaaa"
        store.create_run(*make_run(key=f"k{day}", run_id=run_id, jobs=1,
                                   operation="restore" if run_id in restores else "backup"))
    for key in listing.keys(state + "restores/"):  # as a version without the index left it
        client.delete_object(Bucket=destination.bucket, Key=key)

    assert [r.run_id for r in CosStateStore(destination).list_restores()] == restores
    assert listing.keys(state + "restores-indexed.json") == [state + "restores-indexed.json"]
    assert listing.keys(state + "restores/") == [state + "restores/" + r for r in restores[::-1]]
    later = CosStateStore(destination)
    later.delete_run(restores[0])
    assert [r.run_id for r in later.list_restores()] == restores[1:]
    assert listing.keys(state + "restores/") == [state + "restores/" + restores[1]]


@dataclasses.dataclass
class CosObjectListing:
    destination: Destination

    def keys(self, prefix: str) -> list[str]:
        page = cos_client(self.destination).list_objects(
            Bucket=self.destination.bucket, Prefix=prefix, MaxKeys=1000)
        return [c["Key"] for c in page.get("Contents", [])]
