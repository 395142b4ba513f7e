"""One poller tick over many running exports, against the sequential bound.

The WeChat emulator (a process of its own, like a remote platform) answers every API call
after `--latency-ms`; all exports stay "running". The state is SQLite, then the
COS state store on moto's S3 server (a separate process). Measured in the same run:

- the tick over all N due jobs, against the sequential bound N * latency (what any
  one-at-a-time poller needs for the platform calls alone);
- the same poller limited to one job at a time (`poll_concurrency: 1`, the old poller)
  over the first `--sequential` due jobs, scaled to N: the reference;
- the tick's parts: reading the due jobs, and a tick at 0 ms latency (state store only);
- platform calls per job per minute over `--minutes` simulated minutes of one tick a
  minute (the clock jumps a minute between ticks), which must stay at most 1.

Store `cos-tls` is the COS state store over HTTPS, as COS is reached when deployed (the
S3 server behind a certificate from a throwaway CA): next to `cos`, it shows what TLS
adds to a tick, connections and all.

    scripts/bench poller [--jobs 1000] [--latency-ms 50] [--stores sqlite,cos,cos-tls]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from devkit.emulators.wechat import WeChatEmulator
from devkit.s3_server import trust
from shared.bootstrap import build_context
from shared.config import Config, parse_config
from shared.domain.jobs import JobStatus, utcnow
from shared.service.context import Context
from shared.service.poll import poll
from shared.service.start import start_run

ROOT = Path(__file__).resolve().parent.parent
APPID = "wx00000000000be4c4"
SECRET = "bench-secret-000000"
ENV_ID = "bench-env"
BUCKET = "bench-1250000000"
CHECK = "/tcb/databasemigratequeryinfo"
TARGET_SHARE = 0.1  # a tick must take at most this share of the sequential bound (SQLite)


class Ignore:
    def dispatch(self, job_id: str) -> None:
        """Nothing becomes ready here."""


class JumpingClock:
    """Real time plus the minutes skipped between simulated timer ticks."""

    def __init__(self) -> None:
        self.skipped = timedelta(0)

    def __call__(self) -> datetime:
        return utcnow() + self.skipped


def _serve_emulator(conn: Connection, jobs: int) -> None:
    """The emulator's process: serves until told to stop, answering the bench's requests."""
    emulator = WeChatEmulator(polls_until_ready=10**9)  # every export stays running
    emulator.start()
    emulator.add_app(APPID, SECRET)
    emulator.add_env(APPID, ENV_ID)
    for name in _names(jobs):
        emulator.add_collection(ENV_ID, name, [{"_id": name}])
    conn.send(emulator.base_url)
    while True:
        command, argument = conn.recv()
        if command == "latency":
            emulator.latency = argument
            conn.send(None)
        elif command == "calls":
            conn.send(emulator.calls[argument])
        else:
            emulator.stop()
            conn.send(None)
            return


class RemoteEmulator:
    """The emulator in a process of its own, so its work does not compete with the
    poller's threads for this interpreter."""

    def __init__(self, jobs: int) -> None:
        spawn = multiprocessing.get_context("spawn")
        self._conn, theirs = spawn.Pipe()
        self._process = spawn.Process(target=_serve_emulator, args=(theirs, jobs), daemon=True)
        self._process.start()
        self.base_url: str = self._conn.recv()

    def _ask(self, command: str, argument: Any = None) -> Any:
        self._conn.send((command, argument))
        return self._conn.recv()

    def set_latency(self, seconds: float) -> None:
        self._ask("latency", seconds)

    def checks(self) -> int:
        return int(self._ask("calls", CHECK))

    def stop(self) -> None:
        self._ask("stop")
        self._process.join(10)


def _names(jobs: int) -> list[str]:
    return [f"c{i:05d}" for i in range(jobs)]


def _config(state_url: str, s3_url: str, emulator: RemoteEmulator, names: list[str],
            sources: int, **timing: Any) -> Config:
    share = len(names) // sources
    return parse_config({
        "destination": {"bucket": BUCKET, "region": "ap-guangzhou", "endpoint": s3_url,
                        "anonymous": True, "prefix": "bench"},
        "state": {"url": state_url},
        "timing": {"start_budget_seconds": 3600, "poll_budget_seconds": 600, **timing},
        "sources": [{"type": "wechat", "name": f"s{i}", "appid": APPID, "secret": "${BENCH_SECRET}",
                     "env": ENV_ID, "collections": names[i * share:(i + 1) * share],
                     "api_base": emulator.base_url} for i in range(sources)],
    }, environ={"BENCH_SECRET": SECRET})


def _timed(action: Any) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def bench_store(store: str, state_url: str, s3_url: str, args: argparse.Namespace) -> dict[str, Any]:
    emulator = RemoteEmulator(args.jobs)
    try:
        names = _names(args.jobs)
        config = _config(state_url, s3_url, emulator, names, args.sources)
        clock = JumpingClock()
        ctx = build_context(config, dispatcher=Ignore())
        ctx.clock = clock
        print(f"[{store}] starting {args.jobs} exports (no latency) ...", flush=True)
        start_seconds = _timed(lambda: start_run(ctx, idempotency_key="bench", trigger="bench"))
        latency = args.latency_ms / 1000
        bound = args.jobs * latency

        def tick(context: Context, limit: int) -> tuple[float, int]:
            clock.skipped += timedelta(minutes=10)  # every job due again
            before = emulator.checks()
            seconds = _timed(lambda: poll(context, limit=limit))
            return seconds, emulator.checks() - before

        per_minute = _calls_per_minute(ctx, clock, emulator, args)  # at 0 ms: counts only
        emulator.set_latency(latency)
        clock.skipped += timedelta(minutes=10)
        read_seconds = _timed(lambda: ctx.state.due_jobs(clock(), args.jobs))
        # the reference: the same code one job at a time over a sample, scaled to N (the
        # read of the due jobs, which does not grow with the sample, counted once)
        sequential_ctx = _with_timing(ctx, config, poll_concurrency=1)
        sample_seconds, sample_calls = tick(sequential_ctx, args.sequential)
        sequential = read_seconds + (sample_seconds - read_seconds) / sample_calls * args.jobs
        tick_seconds, tick_calls = tick(ctx, args.jobs)
        emulator.set_latency(0.0)
        state_only, _ = tick(ctx, args.jobs)
        jobs = ctx.state.due_jobs(clock() + timedelta(days=1), args.jobs)
        statuses = {j.status for j in jobs}
    finally:
        emulator.stop()
    assert statuses == {JobStatus.EXPORTING}, f"jobs left running expected, found {statuses}"
    return {
        "store": store, "jobs": args.jobs, "latency_ms": args.latency_ms,
        "start_run_s": round(start_seconds, 1),
        "sequential_bound_s": round(bound, 1),
        "tick_s": round(tick_seconds, 2), "tick_checks": tick_calls,
        "tick_share_of_bound": round(tick_seconds / bound, 3),
        "old_poller_s_scaled": round(sequential, 1),
        "speedup_vs_old_poller": round(sequential / tick_seconds, 1),
        "read_due_jobs_s": round(read_seconds, 2),
        "tick_at_0ms_s": round(state_only, 2),
        "calls_per_job_per_minute": per_minute,
    }


def _with_timing(ctx: Context, config: Config, **timing: Any) -> Context:
    changed = config.model_copy(update={"timing": config.timing.model_copy(update=timing)})
    copy = build_context(changed, dispatcher=Ignore())
    copy.clock = ctx.clock
    return copy


def _calls_per_minute(ctx: Context, clock: JumpingClock, emulator: RemoteEmulator,
                      args: argparse.Namespace) -> list[float]:
    """Status checks per job in each simulated minute of one tick a minute, from the
    start of every export: at most one (one tick a minute), fewer as exports drag on."""
    found = []
    for _ in range(args.minutes):
        clock.skipped += timedelta(minutes=1)
        before = emulator.checks()
        poll(ctx, limit=args.jobs)
        found.append(round((emulator.checks() - before) / args.jobs, 2))
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--sources", type=int, default=1, help="sources the jobs are split over")
    parser.add_argument("--latency-ms", type=float, default=50)
    parser.add_argument("--sequential", type=int, default=100,
                        help="jobs the one-at-a-time reference advances (scaled to --jobs)")
    parser.add_argument("--minutes", type=int, default=15, help="simulated minutes of ticks")
    parser.add_argument("--stores", default="sqlite,cos,cos-tls")
    args = parser.parse_args()

    results = []
    ok = True
    servers: list[subprocess.Popen[str]] = []
    try:
        with tempfile.TemporaryDirectory(prefix="bench-poller-") as folder:
            s3_url, https_url = _s3_server(servers), ""
            if "cos-tls" in args.stores.split(","):
                https_url = _s3_server(servers, "--https", folder)
                trust(Path(folder) / "ca.pem")
            for store in args.stores.split(","):
                url = f"sqlite:///{folder}/state.sqlite3" if store == "sqlite" else "cos://"
                results.append(bench_store(store, url, https_url if store == "cos-tls" else s3_url, args))
                ok = _report(results[-1], args) and ok  # at once: the next store may take long
    finally:
        for server in servers:
            server.terminate()
    print(json.dumps(results))
    return 0 if ok else 1


def _s3_server(servers: list[subprocess.Popen[str]], *options: str) -> str:
    """Starts the S3 server (a process of its own, like COS) and gives its URL."""
    server = subprocess.Popen([sys.executable, "-m", "devkit.s3_server", "--bucket", BUCKET, *options],
                              stdout=subprocess.PIPE, text=True, cwd=ROOT)
    servers.append(server)
    assert server.stdout is not None
    return server.stdout.readline().strip()


def _report(r: dict[str, Any], args: argparse.Namespace) -> bool:
    ok = True
    print(f"[{r['store']}] {r['jobs']} running exports, {r['latency_ms']:g} ms a platform call: "
          f"tick {r['tick_s']} s = {r['tick_share_of_bound']:.3f} of the sequential bound "
          f"{r['sequential_bound_s']} s; the one-at-a-time poller (measured on "
          f"{args.sequential}, scaled) {r['old_poller_s_scaled']} s "
          f"({r['speedup_vs_old_poller']}x slower)")
    print(f"[{r['store']}]   parts: reading the due jobs {r['read_due_jobs_s']} s; the tick "
          f"at 0 ms latency (state store only) {r['tick_at_0ms_s']} s")
    calls = r["calls_per_job_per_minute"]
    print(f"[{r['store']}]   checks per job per minute, minute by minute: {calls}")
    if max(calls) > 1:
        ok = False
    if r["store"] == "sqlite" and r["tick_share_of_bound"] > TARGET_SHARE:
        ok = False
    return ok


if __name__ == "__main__":
    sys.exit(main())
