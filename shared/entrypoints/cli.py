"""Command line for local use against real platforms or emulators:
`validate`, `schema`, `run` (start a run and drive it to the end), `poll` (move every open
run forward once), `status`, `verify`, `restore` (put a backup back and wait for it),
`prune`, `ack`, `serve`, `doctor` (check a real deployment).

A local process that was killed leaves its jobs leased to it; `run` and `poll` take back
at once every lease held by a process of this machine that no longer exists, instead of
waiting for the lease to run out."""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import select
import socket
import sys
import threading
import time
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from shared.adapters.state import open_store
from shared.bootstrap import build_context, doctor_subject
from shared.config import ConfigError, config_json_schema, load_config
from shared.domain.errors import BackupError
from shared.domain.jobs import Job, Run, RunStatus
from shared.logs import configure_logging, redact
from shared.ports import StateStore
from shared.service.context import Context
from shared.service.doctor import diagnose
from shared.service.poll import poll
from shared.service.start import UnknownSource, start_run
from shared.service.suspicion import NotSuspect, acknowledge

if TYPE_CHECKING:  # rich is a CLI-only dependency, kept out of the deployed functions
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from shared.service.prune import Held, Plan


def _seconds(text: str) -> float:
    """A wait between polls: a run or restore starts before the first wait, so a value
    time.sleep refuses must be refused here, before anything is started."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    # threading.TIMEOUT_MAX (about 292 years): the most time.sleep and Event.wait accept
    if not math.isfinite(value) or not 0 <= value <= threading.TIMEOUT_MAX:
        raise argparse.ArgumentTypeError(f"must be a number of seconds, 0 to "
                                         f"{threading.TIMEOUT_MAX:.0f} (e.g. 1), not {text!r}")
    return value


def _digits(text: str) -> bool:
    """ASCII digits only: str.isdigit alone takes "²", which int() refuses."""
    return text.isascii() and text.isdigit()


MAX_COUNT = 2 ** 63 - 1  # the largest LIMIT SQLite and MySQL take (signed 64-bit)


def _count(text: str) -> int:
    if not _digits(text) or not 1 <= int(text) <= MAX_COUNT:
        raise argparse.ArgumentTypeError(f"must be a whole number, 1 to {MAX_COUNT} (e.g. 10), "
                                         f"not {text!r}")
    return int(text)


def tcp_port(text: str) -> int:
    """A TCP port, or 0 for one the system picks (the URL printed at start shows it); a value
    bind() refuses must be refused here, before the config is read or a poller started."""
    if not _digits(text) or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"must be a TCP port, 1 to 65535 (or 0: any free one), "
                                         f"not {text!r}")
    return int(text)


def _host(text: str) -> str:
    """An address or host name to listen on. bind() IDNA-encodes a non-ASCII name (RFC 5891;
    Python's "idna" codec) and raised TypeError, not an OSError, for one it cannot encode
    (a label past 63 characters): refused here, as a bad --port is."""
    try:
        if not text.isascii():
            text.encode("idna")
    except UnicodeError:
        raise argparse.ArgumentTypeError(f"must be a host name or IP address (e.g. 127.0.0.1), "
                                          f"not {text!r}") from None
    return text


def _global_options(parser: argparse.ArgumentParser, *, after: bool) -> argparse.ArgumentParser:
    """`--config` and `--verbose`, before the command or (`after`) after it. After it they
    default to SUPPRESS: not given there, the command's parser sets nothing, so a value
    given before the command stands."""
    parser.add_argument("--config", default=argparse.SUPPRESS if after else None,
                        help="config file (default: $BAAS_BACKUP_CONFIG or backup.yaml)")
    parser.add_argument("--verbose", action="store_true",
                        default=argparse.SUPPRESS if after else False,
                        help="JSON logs at INFO on stderr")
    return parser


def _parser() -> argparse.ArgumentParser:
    parser = _global_options(argparse.ArgumentParser(prog="baas-backup", description=__doc__),
                             after=False)
    after = _global_options(argparse.ArgumentParser(add_help=False), after=True)
    commands = parser.add_subparsers(dest="command", required=True)

    def command(name: str, **kwargs: Any) -> argparse.ArgumentParser:
        return commands.add_parser(name, parents=[after], **kwargs)

    command("validate", help="check the config and say what it backs up")
    command("schema", help="print the config's JSON Schema")
    run = command("run", help="back up now and wait for the run to end")
    run.add_argument("--source", action="append", help="only this source (repeatable)")
    run.add_argument("--tick", type=_seconds, default=1.0, help="seconds between polls")
    command("poll", help="move every open run forward once (e.g. after a killed run)")
    status = command("status", help="recent runs, or the jobs of one run")
    status.add_argument("run_id", nargs="?")
    status.add_argument("--limit", type=_count, default=10, help="how many runs (default 10)")
    verify = command("verify", help="check a run's backups in the bucket again")
    verify.add_argument("run_id", nargs="?", default="latest", help="a run id, or latest")
    verify.add_argument("--source")
    verify.add_argument("--collection")
    verify.add_argument("--quick", action="store_true",
                        help="sizes and CRC64 from a HEAD only, reading no data")
    verify.add_argument("--json", action="store_true", help="the report as JSON")
    restore = command(
        "restore", help="put a backup back into its platform and wait for it to end",
        description="By default the backup goes into a new collection/table named after the "
        "original and the run (shown before anything is written); the original is written "
        "only with --mode insert or upsert and --into naming it.")
    restore.add_argument("run_id", help="the backup run (`status` lists them)")
    restore.add_argument("source")
    restore.add_argument("collection", help="the collection/table backed up")
    restore.add_argument("--into", help="the collection/table to write (default: a new one)")
    restore.add_argument("--mode", choices=("new", "insert", "upsert"), default="new")
    restore.add_argument("--force", action="store_true",
                         help="restore even though the backup's verify found problems, or its "
                         "manifest says a restore cannot undo its export options")
    restore.add_argument("--yes", action="store_true",
                         help="write into an existing collection without asking")
    restore.add_argument("--tick", type=_seconds, default=1.0, help="seconds between polls")
    prune = command("prune", help="apply the retention policy now")
    prune.add_argument("--dry-run", action="store_true", help="say what would go; delete nothing")
    prune.add_argument("--json", action="store_true",
                       help="print the backups and runs decided, what COS refused and whether "
                       "it stopped, as JSON")
    ack = command("ack", help="acknowledge a suspect backup (an intended drop)")
    ack.add_argument("run_id")
    ack.add_argument("source")
    ack.add_argument("collection")
    serve = command("serve", help="the HTTP API and status page on this machine")
    serve.add_argument("--host", type=_host, default="127.0.0.1", help="address to listen on")
    serve.add_argument("--port", type=tcp_port, default=8080,
                       help="TCP port, 1-65535, or 0 for any free one (default 8080)")
    serve.add_argument("--poll-seconds", type=_seconds, default=5.0,
                       help="drive runs forward like the poller's timer (0: off)")
    doctor = command(
        "doctor", help="check a real deployment: config, bucket, state, sources, finisher, "
        "poller, deployed config, webhooks, heartbeat",
        description="Checks the deployment for real with this machine's credentials "
        "(destination.secret_id/secret_key, or TENCENTCLOUD_SECRETID/_SECRETKEY for the bucket "
        "and the functions) and says, for each check, ok or what is wrong and how to fix it. "
        "Exits 1 when any check fails. Inside SCF: invoke the trigger with {\"doctor\": true}, "
        "or POST /doctor on its Function URL.")
    doctor.add_argument("--json", action="store_true", help="print the report as JSON")
    doctor.add_argument("--notify", action="store_true",
                        help="send each webhook a test message and the heartbeat one success "
                        "ping (default: only check they answer; the heartbeat gets no request)")
    return parser


INTERRUPTED = 130  # 128 + SIGINT: the status a shell gives a command Ctrl-C stopped

# What Ctrl-C leaves when it comes before a command knows more (a run not started yet,
# say); a run or restore under way, a verify reading and `serve` say it themselves.
LEFT_BY_CTRL_C = {
    "run": "interrupted while starting its run: `baas-backup status` shows whether one was "
           "started, and `baas-backup poll` moves an open one on",
    "restore": "interrupted before the restore was under way, and nothing is written until "
               "it is: `baas-backup status` shows whether it was started, and `baas-backup "
               "poll` carries an open one on",
    "poll": "interrupted; open runs stay open where they were: `baas-backup poll` moves them on",
    "prune": "interrupted; a backup it had not deleted yet is still there: the next prune "
             "deletes it",
}


class Interrupted(Exception):
    """Ctrl-C, and in words what it left: `main` prints them and exits 130."""


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _command(args)
    except BackupError as exc:
        # The state, the bucket or a platform failed: one line saying which and what to check
        # (the errors name the field), not a traceback ending in it.
        print(f"baas-backup {args.command}: {redact(str(exc))}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        return _reader_gone()
    except KeyboardInterrupt:
        left = LEFT_BY_CTRL_C.get(args.command, "interrupted")
    except Interrupted as exc:
        left = str(exc)
    print(f"baas-backup {args.command}: {left}", file=sys.stderr, flush=True)
    return INTERRUPTED


def _reader_gone() -> int:
    """Output piped into a reader that stopped early (`schema | head`): quietly, exit 1.
    What is left to write goes to /dev/null, so the flush at exit does not raise again
    (docs.python.org/3/library/signal.html, "Note on SIGPIPE")."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return 1


def _refused(command: str, why: object) -> int:
    """A wrong argument (a run, source or collection that is not there; a restore not
    confirmed): one line as README "Command line" words errors, and exit 2 as a bad option."""
    print(f"baas-backup {command}: {why}", file=sys.stderr)
    return 2


def _command(args: argparse.Namespace) -> int:

    if args.command == "schema":
        print(json.dumps(config_json_schema(), indent=2, ensure_ascii=False))
        return 0
    configure_logging(logging.INFO if args.verbose else logging.WARNING, stream=sys.stderr)
    if args.command == "doctor":
        return _doctor(args.config, as_json=args.json, notify=args.notify)
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
    if args.command == "verify":
        return _verify(build_context(config), args)
    if args.command == "prune":
        return _prune(build_context(config), args.dry_run, args.json)
    if args.command == "restore":
        return _restore(build_context(config), args)
    if args.command == "ack":
        return _acknowledge(build_context(config), args.run_id, args.source, args.collection)
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
        return _refused("run", exc)


def _verify(ctx: Context, args: argparse.Namespace) -> int:
    from shared.service.verify import NothingToVerify, latest_run, record, verify_run

    try:
        run_id = (latest_run(ctx, args.source, args.collection) if args.run_id == "latest"
                  else args.run_id)
        if args.run_id == "latest":  # on stderr: --json keeps stdout the report alone
            of = (f" of {args.source or '*'}/{args.collection or '*'}"
                  if args.source or args.collection else "s")
            print(f"verifying run {run_id}, the latest with backup{of}", file=sys.stderr)
        report = verify_run(ctx, run_id, source=args.source, collection=args.collection,
                            quick=args.quick)
    except NothingToVerify as exc:
        return _refused("verify", exc)
    except KeyboardInterrupt:  # verify_run only reads; record() below is its one write
        raise Interrupted("interrupted before its report was recorded: nothing was written "
                          "(a verify only reads the backups); verify again") from None
    record(ctx, report)
    if args.json:
        print(json.dumps(report.as_json(), indent=2, ensure_ascii=False))
        return 0 if report.ok else 1
    from rich.table import Table

    table = Table(title=f"verify run {run_id}{' (quick)' if args.quick else ''}")
    for column in ("source", "collection", "object", "bytes", "records", "crc64", "result"):
        table.add_column(column)
    for item in report.objects:
        result = ("; ".join(f"{p.what}: {p.detail}" for p in item.problems)
                  or ("not read" if item.not_read else "ok"))
        table.add_row(*_text(item.source, item.collection, item.key, str(item.bytes or ""),
                             "" if item.records is None else str(item.records), item.crc64,
                             result))
    out = console()
    out.print(table)
    for problem in report.problems:
        out.print(f"{problem.what}: {problem.where}: {problem.detail}", markup=False)
    if report.pruned:
        print(f"not checked, deleted by retention: {', '.join(report.pruned)}")
    unread = [o for o in report.objects if o.not_read]
    if unread:  # not wrong, not checked either: say so, and how to read them
        print(f"not read back: {', '.join(report.not_read)}: {unread[0].not_read}")
    verdict = ("PROBLEMS FOUND" if not report.ok
               else "no problems found" if unread else "all backups verified")
    print(f"{verdict}: {sum(o.ok and not o.not_read for o in report.objects)}/"
          f"{len(report.objects)} objects ok"
          + (f", {len(unread)} not read (archived: restore from the archive class first)"
             if unread else ""))
    return 0 if report.ok else 1


def _prune(ctx: Context, dry_run: bool, as_json: bool) -> int:
    """Apply retention (or only say what it would do) and print, backup by backup and run
    by run, what went; exit 1 when anything it set out to do is left for the next prune
    (COS refused it, or the prune stopped at its claim window)."""
    from shared.service.prune import prune

    if ctx.config.retention is None:
        return _refused("prune", "no retention policy in the config: nothing is ever deleted "
                        "(README \"Keeping backups\")")
    decided = prune(ctx, dry_run=dry_run)
    left = set() if dry_run else _not_deleted(ctx, decided.doomed)
    told = _Pruned(backups=_backup_rows(decided, dry_run, left),
                   runs=_run_rows(ctx, decided, dry_run),
                   refused=[redact(reason) for reason in decided.refused],
                   stopped=decided.stopped, dry_run=dry_run, left=len(left))
    if as_json:
        print(json.dumps(told.as_json(), indent=2, ensure_ascii=False))
    else:
        _print_pruned(told)
    return 0 if told.ok else 1


class _Pruned(BaseModel):
    """What `prune` tells: a row per backup decided and per run left holding nothing."""

    backups: list[dict[str, Any]]  # source, collection, run_id, records, verdict, why
    runs: list[dict[str, str]]  # run_id, status, verdict, why
    refused: list[str]  # COS's reasons, redacted
    stopped: bool  # at the claim window: the next prune continues
    dry_run: bool
    left: int  # doomed backups still on record

    @property
    def ok(self) -> bool:
        return not (self.left or self.refused or self.stopped)

    def as_json(self) -> dict[str, object]:
        return {"dry_run": self.dry_run, "ok": self.ok, "backups": self.backups,
                "runs": self.runs, "refused": self.refused, "stopped": self.stopped}


def _backup_rows(decided: Plan, dry_run: bool, left: set[str]) -> list[dict[str, Any]]:
    rows = []
    for decision in decided.decisions:
        held = decided.jobs[decision.backup.backup_id]
        verdict = "keep" if decision.keep else ("would delete" if dry_run else
                                                "NOT deleted" if held.job_id in left else "deleted")
        rows.append({"source": held.source, "collection": held.collection, "run_id": held.run_id,
                     "records": held.records, "verdict": verdict, "why": decision.reasons})
    return rows


def _run_rows(ctx: Context, decided: Plan, dry_run: bool) -> list[dict[str, str]]:
    """The runs retention deletes (would delete) for holding no backup once the doomed
    ones go (README "Keeping backups"): failed runs too. After a prune, one still on
    record is NOT deleted (COS refused its folder, or the prune stopped first)."""
    holding: dict[str, bool] = {}  # by run: whether it holds a backup now
    for held in decided.jobs.values():
        holding[held.run_id] = holding.get(held.run_id, False) or not held.holds_nothing
    rows = []
    for run_id in decided.emptied_runs():
        verdict = ("would delete" if dry_run else
                   "deleted" if ctx.state.get_run(run_id) is None else "NOT deleted")
        rows.append({"run_id": run_id, "status": decided.runs[run_id].status.value,
                     "verdict": verdict, "why": ("its backups go (above)" if holding.get(run_id)
                                                 else "holds no backup")})
    return rows


def _print_pruned(told: _Pruned) -> None:
    from rich.table import Table

    from shared.service.holds import DELETE_WITHIN

    out = console()
    table = Table(title=f"retention{' (dry run: nothing deleted)' if told.dry_run else ''}")
    for column in ("source", "collection", "run", "records", "verdict", "why"):
        table.add_column(column)
    for row in told.backups:
        records = "" if row["records"] is None else str(row["records"])
        table.add_row(*_text(row["source"], row["collection"], row["run_id"], records,
                             row["verdict"], ", ".join(row["why"])))
    out.print(table)
    if told.runs:
        runs = Table(title="runs left holding no backup")
        for column in ("run", "status", "verdict", "why"):
            runs.add_column(column)
        for row in told.runs:
            runs.add_row(*_text(*row.values()))
        out.print(runs)
    verb = "would delete" if told.dry_run else "deleted"
    doomed = [r for r in told.backups if r["verdict"] != "keep"]
    gone = [r for r in told.runs if r["verdict"] != "NOT deleted"]
    print(f"{verb} {len(doomed) - told.left} backup(s); kept {len(told.backups) - len(doomed)}"
          + (f"; {verb} {len(gone)} run(s) left holding no backup" if told.runs else "")
          + (f"; {told.left} not deleted (the next prune deletes them)" if told.left else ""))
    if told.refused:
        # the actions as close.py's retention alert names them (docs/cam-policy.json)
        print("COS refused (the next prune tries again; the bucket key needs cos:DeleteObject "
              "on the prefix, cos:HeadObject, cos:GetObject and cos:PutObject to move to the "
              "cold class, and cos:GetBucket; `baas-backup doctor` checks the bucket):\n"
              + "\n".join(f"- {reason}" for reason in told.refused))
    if told.stopped:
        print(f"stopped: retention deletes or moves a backup only within "
              f"{DELETE_WITHIN.total_seconds() / 3600:g} h of claiming it, and that ran out "
              "before it was done; the next prune (`baas-backup prune`, or the next run's "
              "close) continues with the rest")


def _not_deleted(ctx: Context, doomed: list[Held]) -> set[str]:
    """The doomed backups still on record: a delete COS refused leaves the job unmarked
    for the next prune (README "Keeping backups"); a deleted one is marked pruned, or went
    with its run."""
    left = set()
    for held in doomed:
        job = ctx.state.get_job(held.job_id)
        if job is not None and job.pruned_at is None:
            left.add(held.job_id)
    return left


def _acknowledge(ctx: Context, run_id: str, source: str, collection: str) -> int:
    try:
        job = acknowledge(ctx, run_id, source, collection)
    except NotSuspect as exc:
        return _refused("ack", exc)
    print(f"acknowledged: {source}/{collection} in run {run_id} "
          f"({job.result.records if job.result else 0} records, down from "
          f"{job.previous_records}) now counts as a good backup")
    return 0


def _doctor(config_path: str | None, *, as_json: bool, notify: bool) -> int:
    report = diagnose(lambda: doctor_subject(load_config(config_path)), notify=notify)
    print(json.dumps(report.to_dict(), indent=2, ensure_ascii=False) if as_json else report.text(),
          flush=True)
    return 0 if report.ok else 1


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


def _restore(ctx: Context, args: argparse.Namespace) -> int:
    from shared.service.restore.plan import (
        RestoreRefused,
        TargetNameRefused,
        plan_restore,
        start_restore,
    )

    release_dead_local_leases(ctx)
    try:
        plan = plan_restore(ctx, args.run_id, args.source, args.collection, into=args.into,
                            mode=args.mode, force=args.force)
    except TargetNameRefused as exc:  # named as the option the user typed
        return _refused("restore", f"--into {exc.shown}: {exc.rule}; choose another name")
    except RestoreRefused as exc:
        return _refused("restore", exc)
    order = plan.order
    print(f"restore {args.source}/{order.collection} from run {order.backup_run_id} "
          f"({order.records} records in {len(order.objects)} object(s)) into "
          f"{args.source}/{order.target} (mode {order.mode}"
          f"{', the collection exists' if plan.target_exists else ', a new collection'})")
    for problem in plan.problems:
        print(f"  forced past a verify problem: {problem}")
    for caveat in plan.caveats:
        print(f"  forced past an export option a restore cannot undo: {caveat['option']}: "
              f"{caveat['why']}")
    if plan.writes_into_existing and not args.yes and not _confirmed(order.target):
        return _refused("restore", f"not confirmed: nothing written. Add --yes to write into "
                        f"{order.target}")
    try:  # checked again: while it asked, another restore may have taken the target
        run, _ = start_restore(ctx, plan, idempotency_key=f"cli:{uuid.uuid4()}", trigger="cli")
    except RestoreRefused as exc:
        return _refused("restore", exc)
    # No way to stop a restore once started (none in the HTTP API either): it stays open
    # and the poller, or any later poll, carries it on, its progress kept (README "Restoring").
    return _drive(ctx, run, args.tick, interrupted=(
        f"interrupted; restore {run.run_id} was not stopped: it stays open, holding "
        f"{args.source}/{order.target}, and `baas-backup poll` carries it on from where it "
        f"is; `baas-backup status {run.run_id}` shows how far it got"))


def _confirmed(target: str) -> bool:
    """Its name typed at a terminal; no terminal, or Ctrl-D (end of input), is a no."""
    if not sys.stdin.isatty():
        return False
    print(f"write into {target}? type its name: ", end="", flush=True)
    answer = _typed_line()
    if answer is None:
        print()  # end the prompt's line, as Enter would have
        return False
    return answer == target


def _typed_line() -> str | None:
    """A line typed at the terminal, None at Ctrl-D. Not input(): a Ctrl-C that came before
    its read began (the prompt's write slow, the machine loaded) was taken by Python's
    handler but acted on only once the read returned, and the read waited for good
    (docs.python.org/3/library/signal.html: handlers run between bytecode instructions).
    Short selects return to Python often, so Ctrl-C raises KeyboardInterrupt at once."""
    while not select.select([sys.stdin], [], [], 0.2)[0]:
        pass
    line = sys.stdin.readline()
    return line.removesuffix("\n") if line else None


def _run(ctx: Context, sources: list[str] | None, tick: float) -> int:
    release_dead_local_leases(ctx)  # a killed earlier run finishes alongside this one
    run, _ = start_run(ctx, idempotency_key=f"cli:{uuid.uuid4()}", trigger="cli", sources=sources)
    # A run is in the state store, not in this process: the next poll of anyone moves it on
    # (a copy this process held is taken back at once by `release_dead_local_leases`).
    return _drive(ctx, run, tick, interrupted=(
        f"interrupted; run {run.run_id} was not stopped: it stays open, and `baas-backup poll` "
        f"(or the next `run`) moves it on from where it is; `baas-backup status {run.run_id}` "
        "shows what it waits for"))


def _drive(ctx: Context, run: Run, tick: float, *, interrupted: str) -> int:
    """Poll until the run (a backup or a restore) ends; its outcome as the exit code.
    Ctrl-C raises Interrupted with `interrupted`, what it leaves, in words."""
    display: ProgressDisplay | None = None
    try:
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
    except KeyboardInterrupt:
        raise Interrupted(interrupted) from None
    finally:
        if display is not None:
            display.stop()  # a live table gives the terminal back, however this ends


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

    def stop(self) -> None:
        if self.live:
            self.live.stop()  # rich: a no-op once stopped

    def close(self, run: Run, jobs: list[Job]) -> None:
        if self.live:
            self.stop()
        else:
            self.console.print(job_table(f"run {run.run_id}", jobs))
        print(f"run {run.run_id} {run.status.value}: {json.dumps(run.summary, ensure_ascii=False)}",
              flush=True)


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
        suspect = job.suspect and job.acknowledged_at is None
        status = f"{job.status.value} ⚠ suspect (was {job.previous_records})" if suspect else (
            job.status.value + (" (pruned)" if job.pruned_at else ""))
        records = result.records if result else job.progress_records if job.restore else None
        where = (f"restored from {job.restore.collection} of run {job.restore.backup_run_id} "
                 f"(mode {job.restore.mode})" if job.restore else "")
        table.add_row(
            *_text(job.source, job.collection, status,
                   "" if records is None else str(records), str(result.bytes) if result else "",
                   result.sha256[:16] if result else "",
                   result.key if result else (job.error or where)),
            style="red" if job.status.value == "failed" else ("yellow" if suspect else None),
        )
    return table


def _text(*cells: str) -> list[Text]:
    """Table cells as plain text: a platform's message or a collection's name is shown as
    written, never read as rich markup (`[orders]` vanished, `[/x]` raised MarkupError)."""
    from rich.text import Text

    return [Text(cell) for cell in cells]


def _status(store: StateStore, run_id: str | None, limit: int) -> int:
    from rich.table import Table

    out = console()
    if run_id:
        jobs = store.list_jobs(run_id)
        run = store.get_run(run_id)
        if run is None and not jobs:
            return _refused("status", f"no run {run_id!r} in the state table; `baas-backup status` "
                            "lists the recent runs")
        out.print(job_table(f"run {run_id}" + (f" ({run.status.value})" if run else ""), jobs))
        for source, found in (run.discovery if run else {}).items():
            if "error" in found:  # a source that got no jobs: the run's only word on why
                print(f"{source}: nothing backed up: {found['error']}")
        return 0
    table = Table(title="recent runs")
    for column in ("run", "operation", "trigger", "status", "jobs", "done", "failed", "records",
                   "bytes"):
        table.add_column(column)
    for run in store.list_runs(limit):
        if run.operation == "restore-target":
            continue  # where restores claim a target (holds.py), not a run
        s = run.summary or {}
        table.add_row(run.run_id, run.operation, run.trigger, run.status.value,
                      *(str(s.get(k, "")) for k in ("jobs", "done", "failed", "records", "bytes")))
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
            "importing": f"the platform's import of the restore (next check {when})",
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
