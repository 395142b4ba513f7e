"""The service layer over fakes: a context whose ports are all in memory, and scripted
platforms whose every answer the test chooses."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from shared.config import Config, Retention, parse_config
from shared.domain.jobs import Job, JobStatus, Run, job_id_for
from shared.ports import Kind, Page, Platform, Progress
from shared.service.close import close_finished_runs
from shared.service.context import Context
from shared.service.finish import finish
from shared.service.poll import poll
from shared.service.start import start_run
from tests.fakes import (
    MemoryObjects,
    MemoryState,
    MovingClock,
    RecordingDispatcher,
    RecordingNotifier,
)

ENVIRON = {"SECRET": "unit-secret-0123456789"}


def unit_config(collections: list[str], **timing: Any) -> Config:
    return parse_config({
        "destination": {"bucket": "backups-1250000000", "region": "ap-guangzhou"},
        "state": {"url": "sqlite:///unused.sqlite3"},
        "timing": {"first_check_seconds": 5, "max_check_interval_seconds": 60,
                   "retry_base_seconds": 0, "max_attempts": 3, **timing},
        "sources": [{"type": "wechat", "name": "shop", "appid": "wx0123456789abcdef",
                     "secret": "${SECRET}", "env": "env-1", "collections": collections}],
    }, environ=ENVIRON)


@dataclass
class ScriptedExport:
    """An export platform: `checks` answers check() in turn; `data` is each collection's
    export; `on_open` runs before a download starts (to raise, or to meddle)."""

    data: dict[str, list[dict[str, Any]]]
    checks: list[Progress] = field(default_factory=list)
    on_open: Callable[[str, int], None] | None = None
    file_type: str = "json"
    started: list[str] = field(default_factory=list)

    def collections(self) -> list[str]:
        return list(self.data)

    def discovery(self) -> dict[str, Any] | None:
        return None

    def start_blocked(self) -> str | None:
        return None

    def start(self, collection: str, job_id: str) -> str:
        self.started.append(collection)
        return f"export-{len(self.started)}"

    def check(self, collection: str, platform_job_id: str) -> Progress:
        if self.checks:
            return self.checks.pop(0)
        return Progress("ready", expected_records=len(self.data[collection]))

    def open(self, collection: str, platform_job_id: str, part: int = 0, *,
             file_type: str | None = None) -> Iterator[bytes]:
        if self.on_open:
            self.on_open(collection, part)
        for row in self.data[collection]:
            yield json.dumps(row).encode() + b"\n"


@dataclass
class ScriptedPages:
    """A paged platform: `page_rows` rows a page, the cursor is the next offset."""

    data: dict[str, list[dict[str, Any]]]
    page_rows: int = 2
    file_type: str = "json"
    fetched: int = 0

    def collections(self) -> list[str]:
        return list(self.data)

    def discovery(self) -> dict[str, Any] | None:
        return None

    def fetch_page(self, collection: str, cursor: dict[str, Any] | None) -> Page:
        self.fetched += 1
        start = int((cursor or {}).get("offset", 0))
        rows = self.data[collection][start:start + self.page_rows]
        after = start + self.page_rows
        return Page(rows, {"offset": after} if after < len(self.data[collection]) else None)

    def encode_page(self, page: Page) -> tuple[bytes, int]:
        return b"".join(json.dumps(r).encode() + b"\n" for r in page.answer), len(page.answer)


class FakePlatforms:
    def __init__(self, platform: Platform, kind: Kind) -> None:
        self.platform = platform
        self._kind = kind

    def get(self, source: str) -> Platform:
        return self.platform

    def kind(self, source: str) -> Kind:
        return self._kind


@dataclass
class Unit:
    ctx: Context
    state: MemoryState
    objects: MemoryObjects
    clock: MovingClock
    dispatcher: RecordingDispatcher
    notifier: RecordingNotifier

    def job(self, job_id: str) -> Job:
        found = self.state.get_job(job_id)
        assert found is not None
        return found

    def put(self, job: Job) -> Job:
        """Store `job` as it is (a scenario's starting point)."""
        self.state.jobs[job.job_id] = job
        return job


def unit(platform: Platform, kind: Kind = "export", **timing: Any) -> Unit:
    state, objects, clock = MemoryState(), MemoryObjects(), MovingClock()
    dispatcher, notifier = RecordingDispatcher(), RecordingNotifier()
    collections = platform.collections()
    ctx = Context(config=unit_config(collections, **timing), state=state, objects=objects,
                  platforms=FakePlatforms(platform, kind), dispatcher=dispatcher,
                  notifier=notifier, clock=clock, worker="unit-worker")
    return Unit(ctx, state, objects, clock, dispatcher, notifier)


def seed_run(u: Unit, status: JobStatus = JobStatus.PENDING, **job: Any) -> list[Job]:
    """One run with a job per collection, all in `status`."""
    now = u.clock()
    run = Run(run_id="20261101T020000000Z-unit", idempotency_key="unit", trigger="test",
              sources=["shop"], created_at=now)
    jobs = [Job(job_id=job_id_for(run.run_id, "shop", c), run_id=run.run_id, source="shop",
                collection=c, status=status, next_check_at=now,
                deadline_at=now + timedelta(hours=6), created_at=now, updated_at=now, **job)
            for c in u.ctx.platforms.get("shop").collections()]
    u.state.create_run(run, jobs)
    return jobs


def backed_up(u: Unit, jobs: list[Job] | None = None) -> str:
    """Back up every collection of the unit's platform (the jobs of a run already
    started, or of a new seeded run) to the end; the run id."""
    jobs = jobs if jobs is not None else seed_run(u)
    for _ in range(5):
        poll(u.ctx)
        u.clock.advance(70)
        for job_id in u.dispatcher.dispatched:
            finish(u.ctx, job_id)
    close_finished_runs(u.ctx)
    assert all(u.job(job.job_id).status is JobStatus.DONE for job in jobs)
    return jobs[0].run_id


def minutes_of_ticks(u: Unit, minutes: int) -> None:
    """`minutes` poller ticks a minute apart, each hand-off finished at once."""
    for _ in range(minutes):
        poll(u.ctx)
        for job_id in list(u.dispatcher.dispatched):
            finish(u.ctx, job_id)
        u.dispatcher.dispatched.clear()
        u.clock.advance(60)


def nightly_runs(u: Unit, nights: int, keep_last: int) -> list[str]:
    """`nights` runs a day apart, each backed up to the end, then `retention.keep_last`
    set; their run ids, oldest first."""
    runs = []
    for night in range(nights):
        run, _ = start_run(u.ctx, idempotency_key=f"night-{night}", trigger="test")
        backed_up(u, u.state.list_jobs(run.run_id))
        runs.append(run.run_id)
        u.clock.advance(86400)
    u.ctx.config = u.ctx.config.model_copy(update={"retention": Retention(keep_last=keep_last)})
    return runs


def polled_unclaimed(u: Unit, job_id: str, hours: float) -> Job:
    """Poll every copy lease for `hours` with a finisher that never runs (its package
    crashes on start, say): each hand-off is dropped. The job as it ended, or as it is."""
    end = u.clock() + timedelta(hours=hours)
    while u.clock() < end and not u.job(job_id).status.terminal:
        poll(u.ctx)
        u.dispatcher.dispatched.clear()
        u.clock.advance(u.ctx.config.timing.copy_lease_seconds + 1)
    return u.job(job_id)


def when_due(u: Unit, job_id: str) -> None:
    """Move the clock on to when the job is due again (a failed copy's backoff waited out):
    a finisher event before then finds it backing off and leaves it."""
    due = u.job(job_id).next_check_at
    if due > u.clock():
        u.clock.now = due
