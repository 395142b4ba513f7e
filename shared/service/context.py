"""What every use case is handed: the config and the ports (state, objects, platforms,
dispatcher, clock), plus this invocation's identity and time limit."""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from shared.config import Config
from shared.domain.jobs import Job, utcnow
from shared.logs import redact
from shared.ports import Clock, Dispatcher, Notifier, ObjectStore, Platforms, StateStore

log = logging.getLogger(__name__)


@dataclass
class Context:
    config: Config
    state: StateStore
    objects: ObjectStore
    platforms: Platforms
    dispatcher: Dispatcher
    notifier: Notifier
    clock: Clock = utcnow
    worker: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}")
    # time.monotonic() by which this invocation must have stopped (from SCF's remaining
    # time); None when the runtime gives no limit (CLI, tests).
    stop_by: float | None = None


class Budget:
    """Wall-clock allowance of one step of an invocation: the configured seconds, cut
    short by the invocation's own time limit, so a function ends before SCF stops it."""

    def __init__(self, ctx: Context, seconds: float) -> None:
        self._ctx = ctx
        self._until = ctx.clock() + timedelta(seconds=seconds)

    def spent(self) -> bool:
        if self._ctx.stop_by is not None and time.monotonic() >= self._ctx.stop_by:
            return True
        return self._ctx.clock() >= self._until

    def seconds_left(self) -> float:
        left = (self._until - self._ctx.clock()).total_seconds()
        if self._ctx.stop_by is not None:
            left = min(left, self._ctx.stop_by - time.monotonic())
        return max(0.0, left)


def save(ctx: Context, job: Job) -> Job | None:
    """Compare-and-set write; None (and a log line) when someone else changed the job."""
    saved = ctx.state.save_job(job)
    if saved is None:
        log.info("job changed under us; leaving it to whoever changed it")
    return saved


def fail(ctx: Context, job: Job, message: str, now: datetime) -> None:
    log.error("job failed", extra={"reason": redact(message), "collection": job.collection})
    save(ctx, job.failed(redact(message), now))
