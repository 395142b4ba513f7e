"""Fixtures and helpers for the MinApp emulator."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest

from devkit.compare import csv_cell
from devkit.emulators.minapp import MinAppEmulator
from shared.domain.jobs import Run, utcnow
from shared.service.context import Context
from shared.service.start import start_run

CLIENT_ID = "a4d2d62965ddb57fa4d6"
CLIENT_SECRET = "minapp-client-secret-5f6e7d8c9b"


@pytest.fixture
def minapp_emulator() -> Iterator[MinAppEmulator]:
    """A started emulator with one client (CLIENT_ID / CLIENT_SECRET) and no tables.

    Knobs (``polls_until_ready``, ``job_window``, ``max_export_rows``, ``token_ttl``,
    ``link_ttl``) are attributes and can be changed inside the test. The server is
    stopped and its export files deleted after.
    """
    emulator = MinAppEmulator()
    emulator.add_client(CLIENT_ID, CLIENT_SECRET)
    emulator.start()
    try:
        yield emulator
    finally:
        emulator.stop()


def assert_export_equals_records(data: bytes, records: list[dict[str, Any]],
                                 file_type: str) -> None:
    """The backup holds exactly `records`, in order: JSON Lines parsed back, or CSV rows
    compared cell by cell with `id` first and the other fields as they first appear."""
    text = data.decode("utf-8")
    if file_type == "json":
        found = [json.loads(line) for line in text.splitlines() if line]
        assert found == records, f"{len(found)} records in the backup, {len(records)} in the source"
        return
    rows = list(csv.reader(io.StringIO(text, newline="")))
    if not records:
        assert rows == [], rows[:2]
        return
    columns = ["id"] + [k for k in dict.fromkeys(k for r in records for k in r) if k != "id"]
    assert rows[0] == columns
    expected = [[csv_cell(r.get(c)) for c in columns] for r in records]
    assert rows[1:] == expected, f"{len(rows) - 1} rows in the backup, {len(records)} in the source"


class JumpClock:
    """The pipeline's clock, jumped forward to the next due check when nothing is due, so
    the pipeline's one-minute waits (RetryLater) take no real time. Real time still runs
    for the emulator, whose job window the tests shorten."""

    def __init__(self) -> None:
        self.offset = timedelta(0)

    def __call__(self) -> datetime:
        return utcnow() + self.offset

    def jump_to(self, moment: datetime) -> None:
        self.offset += max(timedelta(0), moment - self())


def backup_jumping(ctx: Context, key: str = "test", timeout: float = 60) -> Run:
    """Start a run and poll it to its end, jumping the clock over idle waits."""
    ctx.clock = JumpClock()
    run, _ = start_run(ctx, idempotency_key=key, trigger="test")
    return drive_jumping(ctx, run, timeout)


def drive_jumping(ctx: Context, run: Run, timeout: float = 60) -> Run:
    """Poll `run` (a backup's or a restore's) to its end, jumping the clock over idle waits."""
    clock = ctx.clock if isinstance(ctx.clock, JumpClock) else JumpClock()
    ctx.clock = clock

    def jump_over_waits() -> None:
        due = [j.next_check_at for j in ctx.state.list_jobs(run.run_id) if not j.status.terminal]
        if due:
            clock.jump_to(min(due))

    from tests.support.backup import drive  # backup.py imports this module

    return drive(ctx, run, timeout, between_polls=jump_over_waits)
