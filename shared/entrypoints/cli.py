"""Command line for local use against real platforms or emulators:
`validate`, `schema`, `run` (start a run and drive it to the end), `poll` (move every open
run forward once), `status`, `serve`.

A local process that was killed leaves its jobs leased to it; `run` and `poll` take back
at once every lease held by a process of this machine that no longer exists, instead of
waiting for the lease to run out."""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import sys
import time
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING

from pydantic import BaseModel

from shared.adapters.state import open_store
from shared.bootstrap import build_context
from shared.config import ConfigError, config_json_schema, load_config
from shared.domain.jobs import Job, Run, RunStatus
from shared.logs import configure_logging
from shared.ports import StateStore
from shared.service.context import Context
from shared.service.poll import poll
from shared.service.start import UnknownSource, start_run

if TYPE_CHECKING:  # rich is a CLI-only dependency, kept out of the deployed functions
    from rich.console import Console
    from rich.table import Table


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="baas-backup", description=__doc__)
    parser.add_argument("--config", help="config file (default: $BAAS_BACKUP_CONFIG or backup.yaml)")
    parser.add_argument("--verbose", action="store_true", help="JSON logs at INFO on stderr")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("validate", help="check the config and say what it backs up")
    commands.add_parser("schema", help="print the config's JSON Schema")
    run = commands.add_parser("run", help="back up now and wait for the run to end")
    run.add_argument("--source", action="append", help="only this source (repeatable)")
    run.add_argument("--tick", type=float, default=1.0, help="seconds between polls")
    commands.add_parser("poll", help="move every open run forward once (e.g. after a killed run)")
    status = commands.add_parser("status", help="recent runs, or the jobs of one run")
    status.add_argument("run_id", nargs="?")
    status.add_argument("--limit", type=int, default=10)
    serve = commands.add_parser("serve", help="the HTTP API and status page on this machine")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument("--poll-seconds", type=float, default=5.0,
                       help="drive runs forward like the poller's timer (0: off)")
    args = parser.parse_args(argv)

    if args.command == "schema":
        print(json.dumps(config_json_schema(), indent=2, ensure_ascii=False))
        return 0
    configure_logging(logging.INFO if args.verbose else logging.WARNING, stream=sys.stderr)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    if args.command == "validate":
        print(f"config OK: {len(config.sources)} source(s), backing up to "
              f"{config.destination.bucket}/{config.destination.prefix}")
        for source in config.sources:
            listed = getattr(source, "collections", None) or getattr(source, "tables", None)
            if listed == "all":
                print(f"  {source.name} ({source.type}): every collection/table it has"
                      f"{_patterns(source)}")
                continue
            print(f"  {source.name} ({source.type}):")
            for item in listed or []:
                print(f"    - {_describe(item)}")
        return 0
    if args.command == "status":
        return _status(open_store(config.state, config.destination), args.run_id, args.limit)
    if args.command == "serve":
        from shared.entrypoints.local_server import serve as serve_api

        return serve_api(config, args.config, args.host, args.port, args.poll_seconds)
    if args.command == "poll":
        ctx = build_context(config)
        release_dead_local_leases(ctx)
        poll(ctx)
        return _status(ctx.state, None, 10)
    try:
        return _run(build_context(config), args.source, args.tick)
    except UnknownSource as exc:
        print(exc, file=sys.stderr)
        return 2


def _describe(item: object) -> str:
    """A table or collection as a person reads it: its id or name, then what is set."""
    if not isinstance(item, BaseModel):
        return str(item)
    fields = item.model_dump(mode="json", exclude_defaults=True, exclude_none=True)
    head = str(fields.pop("id", None) or fields.pop("name", None) or "")
    options = ", ".join(f"{key}: {json.dumps(value, ensure_ascii=False)}"
                        for key, value in fields.items())
    return f"{head} ({options})" if options else head


def _patterns(source: object) -> str:
    include, exclude = getattr(source, "include", None), getattr(source, "exclude", None)
    said = [f"include {', '.join(include)}" if include else "",
            f"exclude {', '.join(exclude)}" if exclude else ""]
    return f" ({'; '.join(s for s in said if s)})" if any(said) else ""


def release_dead_local_leases(ctx: Context) -> list[str]:
    """Jobs of open runs leased to a process of this machine that no longer exists (a
    killed `run`) become due now; the ids of those jobs."""
    host = socket.gethostname()
    now = ctx.clock()
    released = []
    for run in ctx.state.open_runs():
        for job in ctx.state.list_jobs(run.run_id):
            owner = (job.lease_owner or "").split(":")
            if job.status.terminal or len(owner) < 2 or owner[0] != host or not owner[1].isdigit():
                continue
            if _alive(int(owner[1])) or job.lease_expired(now):
                continue
            saved = ctx.state.save_job(job.model_copy(update={"lease_until": now, "next_check_at": now}))
            if saved is not None:
                released.append(job.job_id)
                print(f"  {job.source}/{job.collection} of run {run.run_id} was held by a process "
                      f"that has ended (pid {owner[1]}); taking it back", flush=True)
    return released


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def _run(ctx: Context, sources: list[str] | None, tick: float) -> int:
    release_dead_local_leases(ctx)  # a killed earlier run finishes alongside this one
    run, _ = start_run(ctx, idempotency_key=f"cli:{uuid.uuid4()}", trigger="cli", sources=sources)
    display = ProgressDisplay(run.run_id)
    while True:
        poll(ctx)
        current = ctx.state.get_run(run.run_id)
        jobs = ctx.state.list_jobs(run.run_id)
        display.update(jobs)
        if current is not None and current.status is not RunStatus.RUNNING:
            display.close(current, jobs)
            return 0 if current.status is RunStatus.SUCCEEDED else 1
        time.sleep(tick)


class ProgressDisplay:
    """A live table on a terminal; one line per change when output is a pipe or file."""

    def __init__(self, run_id: str) -> None:
        from rich.live import Live

        self.run_id = run_id
        self.console = console()
        self.live = Live(console=self.console, auto_refresh=False) if self.console.is_terminal else None
        self.seen: dict[str, str] = {}
        if self.live:
            self.live.start()
        else:
            print(f"run {run_id} started", flush=True)

    def update(self, jobs: list[Job]) -> None:
        if self.live:
            self.live.update(job_table(f"run {self.run_id}", jobs), refresh=True)
            return
        for job in jobs:
            state = job.status.value + (f" ({job.error})" if job.status.value == "failed" else "")
            if self.seen.get(job.job_id) != state:
                self.seen[job.job_id] = state
                print(f"  {job.source}/{job.collection}: {state}", flush=True)

    def close(self, run: Run, jobs: list[Job]) -> None:
        if self.live:
            self.live.stop()
        else:
            self.console.print(job_table(f"run {run.run_id}", jobs))
        print(f"run {run.run_id} {run.status.value}: {json.dumps(run.summary)}", flush=True)


def console() -> Console:
    """A terminal's own width; wide when piped, so keys and hashes are not folded."""
    from rich.console import Console

    found = Console()
    return found if found.is_terminal else Console(width=220)


def job_table(title: str, jobs: list[Job]) -> Table:
    from rich.table import Table

    table = Table(title=title)
    for column in ("source", "collection", "status", "records", "bytes", "sha256", "object key / error"):
        table.add_column(column, overflow="fold")
    for job in jobs:
        result = job.result
        table.add_row(
            job.source, job.collection, job.status.value,
            str(result.records) if result else "", str(result.bytes) if result else "",
            result.sha256[:16] if result else "",
            result.key if result else (job.error or ""),
            style="red" if job.status.value == "failed" else None,
        )
    return table


def _status(store: StateStore, run_id: str | None, limit: int) -> int:
    from rich.table import Table

    out = console()
    if run_id:
        jobs = store.list_jobs(run_id)
        if not jobs:
            print(f"no run {run_id!r} in the state table", file=sys.stderr)
            return 1
        out.print(job_table(f"run {run_id}", jobs))
        return 0
    table = Table(title="recent runs")
    for column in ("run", "trigger", "status", "jobs", "done", "failed", "records", "bytes"):
        table.add_column(column)
    for run in store.list_runs(limit):
        s = run.summary or {}
        table.add_row(run.run_id, run.trigger, run.status.value, *(str(s.get(k, "")) for k in
                      ("jobs", "done", "failed", "records", "bytes")))
    out.print(table)
    for run in store.open_runs():
        print(f"run {run.run_id} is open; it waits for:")
        for line in waiting_for(store.list_jobs(run.run_id)):
            print(f"  - {line}")
    return 0


def waiting_for(jobs: list[Job]) -> list[str]:
    """What each unfinished job of an open run waits for, and until when (UTC)."""
    lines = []
    for job in jobs:
        if job.status.terminal:
            continue
        when = f"{job.next_check_at:%Y-%m-%d %H:%M:%S} UTC"
        what = {
            "pending": f"its export to be started (next try {when})",
            "exporting": f"the platform's export {job.platform_job_id} (next check {when})",
            "ready": f"a finisher to copy it (handed out again {when} if none does)",
        }.get(job.status.value)
        if job.status.value == "copying":
            until = f"{job.lease_until:%Y-%m-%d %H:%M:%S} UTC" if job.lease_until else when
            what = (f"the copy by {job.lease_owner or 'a finisher'} (its lease runs until {until}; "
                    "then the poller takes it back, or `baas-backup poll` at once if that "
                    "local process has ended)")
        note = f"; last error: {job.error}" if job.error else ""
        lines.append(f"{job.source}/{job.collection} {job.status.value}: {what}{note}")
    return lines


if __name__ == "__main__":
    sys.exit(main())
