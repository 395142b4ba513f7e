"""Paged copies survive finishers that are really killed (SIGKILL, in processes of their
own): the next invocation resumes from the checkpoint and the object holds every row
exactly once, in order."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import orjson
import yaml

from devkit.emulators.onedb import OneDBEmulator, generated_row
from shared.adapters.cos.objects import CosObjectStore
from shared.config import Config
from shared.domain.jobs import JobStatus
from shared.service.context import Context
from shared.service.finish import finish
from shared.service.poll import poll
from shared.service.start import start_run
from tests.support.backup import LocalBackup
from tests.support.onedb import (
    APP,
    ENV_ID,
    finisher_process,
    onedb_source,
    saved_parts,
    stored_job,
    wait_for_parts,
)

LEASE = 2.0


class Recorder:
    """Notes hand-offs; the test starts each finisher itself, as a process."""

    def __init__(self) -> None:
        self.dispatched: list[str] = []

    def dispatch(self, job_id: str) -> None:
        self.dispatched.append(job_id)


def _setup(local: LocalBackup, emulator: OneDBEmulator, tmp_path: Path,
           rows: int) -> tuple[Config, Path, Context, Recorder, str]:
    emulator.add_generated_table(ENV_ID, APP, "events", rows)
    config = local.config(onedb_source(local, emulator), copy_lease_seconds=LEASE,
                          max_attempts=2)
    config = config.model_copy(update={"destination": config.destination.model_copy(
        update={"part_size_mb": 5})})
    document = config.model_dump(mode="json", exclude_none=True)
    document["sources"][0]["key_secret"] = "${ONEDB_KEY_SECRET}"
    path = tmp_path / "backup.yaml"
    path.write_text(yaml.safe_dump(document, allow_unicode=True))
    recorder = Recorder()
    ctx = local.context(config, dispatcher=recorder)
    run, _ = start_run(ctx, idempotency_key="resume", trigger="test")
    job = ctx.state.list_jobs(run.run_id)[0]
    assert job.status is JobStatus.READY and recorder.dispatched == [job.job_id]
    return config, path, ctx, recorder, job.job_id


def _kill_after(local: LocalBackup, path: Path, job_id: str, parts: int) -> int:
    """Start a finisher, SIGKILL it once `parts` parts are checkpointed; the rows saved."""
    process = finisher_process(path, job_id, local.environ)
    try:
        wait_for_parts(local.state_url, job_id, parts, process)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL
    doc = stored_job(local.state_url, job_id)
    assert doc["status"] == "copying"
    return int(doc["progress_records"])


def _reclaim(ctx: Context, recorder: Recorder, job_id: str) -> None:
    """What the poller does once the dead finisher's lease has run out."""
    time.sleep(LEASE + 0.1)
    before = len(recorder.dispatched)
    poll(ctx)
    job = ctx.state.get_job(job_id)
    assert job is not None and job.status is JobStatus.READY
    assert job.attempts == 0  # real progress was made: no try is burnt
    assert recorder.dispatched[before:] == [job_id]


def _assert_object_is_the_table(store: CosObjectStore, key: str, rows: int) -> None:
    """Line by line against the source rows: count and order, nothing twice."""
    index = 0
    tail = b""
    for chunk in store.iter_read(key):
        lines = (tail + chunk).split(b"\n")
        tail = lines.pop()
        for line in lines:
            assert orjson.loads(line) == generated_row(index), f"line {index + 1}"
            index += 1
    assert tail == b""
    assert index == rows


def test_million_rows_survive_two_kills(
    local: LocalBackup, onedb_emulator: OneDBEmulator, tmp_path: Path
) -> None:
    rows = 1_000_000  # about 95 MB of JSON Lines: 19 parts of 5 MiB
    _, path, ctx, recorder, job_id = _setup(local, onedb_emulator, tmp_path, rows)

    first = _kill_after(local, path, job_id, 3)
    _reclaim(ctx, recorder, job_id)
    second = _kill_after(local, path, job_id, saved_parts(stored_job(local.state_url, job_id)) + 5)
    assert 0 < first < second < rows
    _reclaim(ctx, recorder, job_id)

    last = finisher_process(path, job_id, local.environ)
    assert last.wait(timeout=300) == 0, last.stderr.read().decode()[-2000:]
    job = ctx.state.get_job(job_id)
    assert job is not None and job.status is JobStatus.DONE, job and job.error
    assert job.attempts == 0
    assert job.result is not None and job.result.records == rows
    _assert_object_is_the_table(local.objects, job.result.key, rows)
    assert CosObjectStore(local.destination).open_uploads(job.result.key) == ()
    manifest = json.loads(local.objects.read(job.result.manifest_key))
    assert manifest["records"] == rows and manifest["sha256"] == job.result.sha256


def test_a_part_uploaded_but_not_checkpointed_is_uploaded_again(
    local: LocalBackup, onedb_emulator: OneDBEmulator, tmp_path: Path
) -> None:
    """The crash window: killed right after uploading part 2, before saving it."""
    rows = 160_000  # about 18 MB: 4 parts
    _, path, ctx, recorder, job_id = _setup(local, onedb_emulator, tmp_path, rows)
    process = finisher_process(path, job_id, local.environ, die_after_part=2)
    assert process.wait(timeout=120) == -signal.SIGKILL
    doc = stored_job(local.state_url, job_id)
    assert saved_parts(doc) == 1  # part 2 is in COS but not in the checkpoint
    _reclaim(ctx, recorder, job_id)
    assert finish(ctx, job_id) == "done"
    job = ctx.state.get_job(job_id)
    assert job is not None and job.result is not None
    assert job.result.records == rows and job.result.objects[0].upload_parts == 4
    _assert_object_is_the_table(local.objects, job.result.key, rows)


def test_killed_before_saving_its_upload_id_leaves_no_upload_behind(
    local: LocalBackup, onedb_emulator: OneDBEmulator, tmp_path: Path
) -> None:
    """An upload started by a finisher that died before saving its id is aborted."""
    rows = 1_000
    config, _, ctx, _, job_id = _setup(local, onedb_emulator, tmp_path, rows)
    job = ctx.state.get_job(job_id)
    assert job is not None
    store = CosObjectStore(config.destination, local.environ)
    key = f"{config.destination.prefix}/runs/{job.run_id}/crm/events.jsonl"
    orphan = store.begin_upload(key, "application/x-ndjson")
    assert store.open_uploads(key) == (orphan,)
    assert finish(ctx, job_id) == "done"
    assert store.open_uploads(key) == ()
    _assert_object_is_the_table(local.objects, key, rows)
