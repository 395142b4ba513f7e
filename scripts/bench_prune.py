"""Retention at scale: the prune plan and the status overview over many runs of many
collections, in time and memory, against references measured in the same run.

Each store (`--stores`: SQLite, and the COS state store on moto's S3 server, a process of
its own) is filled with `--runs` closed nightly backup runs of `--collections` collections
each (done jobs with one stored object), with keep_daily 7, keep_weekly 4,
keep_monthly 12. Measured:

- the plan (`shared.service.prune.plan`: every backup decided, nothing deleted): its
  seconds, against reading every job of every run and nothing else; and the memory it
  holds at its peak (tracemalloc), against holding every job it read (the whole `Job`s,
  as the plan did before). The prune runs in the poller (256 MB) or the finisher that
  closes a run;
- on COS, the requests the plan sent (the S3 server's request log), against reading each
  job on its own (a listing of its versions and a read, 8 at a time: how the store read
  a run's jobs before). The first reading of every job saves each ended run's snapshot
  (`CosStateStore.list_jobs`); the plan and the overview then take the jobs from it;
- the status page's per-collection overview (`shared.service.overview.collections`),
  with the policy (it sees every job through the plan) and without one, the default (it
  reads a collection's jobs only until its latest and last good backups are known),
  against reading every job.

    scripts/bench prune [--runs 30] [--collections 1000] [--stores sqlite,cos]
    scripts/bench prune --stores cos --runs 10 --collections 200   # moto fills slowly
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TypeVar

from scripts.bench_finisher import _start
from shared.bootstrap import build_context
from shared.config import parse_config
from shared.domain.jobs import Job, JobResult, JobStatus, Run, RunStatus, StoredObject, job_id_for
from shared.service import overview
from shared.service.context import Context
from shared.service.prune import plan

FIRST = datetime(2026, 1, 1, 2, tzinfo=timezone.utc)
T = TypeVar("T")
ENV = {"BENCH_SECRET": "bench-secret-000000"}
BUCKET = "bench-1250000000"


def context(state_url: str, endpoint: str = "http://127.0.0.1:9") -> Context:
    config = parse_config({
        "destination": {"bucket": BUCKET, "region": "ap-guangzhou",
                        "endpoint": endpoint, "anonymous": True, "prefix": "bench"},
        "state": {"url": state_url},
        "retention": {"keep_daily": 7, "keep_weekly": 4, "keep_monthly": 12},
        "sources": [{"type": "wechat", "name": "shop", "appid": "wx00000000000be4c4",
                     "secret": "${BENCH_SECRET}", "env": "bench-env", "collections": "all"}],
    }, environ=ENV)
    return build_context(config, environ=ENV)


def fill(ctx: Context, runs: int, collections: int) -> None:
    """`runs` nightly runs, closed and succeeded, each with a done job per collection."""
    for night in range(runs):
        at = FIRST + timedelta(days=night)
        run_id = f"{at:%Y%m%dT%H%M%S}000Z-{night:08x}"
        jobs = []
        for number in range(collections):
            name = f"collection_{number}"
            key = f"bench/runs/{run_id}/shop/{name}.jsonl"
            jobs.append(Job(
                job_id=job_id_for(run_id, "shop", name), run_id=run_id, source="shop",
                collection=name, status=JobStatus.DONE, next_check_at=at, created_at=at,
                updated_at=at, finished_at=at, platform_job_id=f"{night}-{number}",
                expected_records=1000, result=JobResult(manifest_key=f"{key}.manifest.json", objects=[
                    StoredObject(key=key, bytes=123456, sha256="0" * 64, records=1000,
                                 crc64="1234567890123456789")])))
        run, _ = ctx.state.create_run(
            Run(run_id=run_id, idempotency_key=run_id, trigger="timer", created_at=at,
                sources=["shop"]), jobs)
        ctx.state.save_run(run.model_copy(update={"status": RunStatus.SUCCEEDED, "finished_at": at}))


def timed_peak(work: Callable[[], T]) -> tuple[T, float, float]:
    """`work()`'s result, seconds and peak traced memory in MB."""
    tracemalloc.start()
    started = time.perf_counter()
    result = work()
    seconds = time.perf_counter() - started
    peak = tracemalloc.get_traced_memory()[1] / 1e6
    tracemalloc.stop()
    return result, seconds, peak


def measure(ctx: Context, runs: int, collections: int, requests: Path | None) -> None:
    fill(ctx, runs, collections)
    ctx.clock = lambda: FIRST + timedelta(days=runs)
    run_ids = [r.run_id for r in ctx.state.list_runs(limit=runs)]
    sent = _Sent(requests)
    # The first read of the runs: on COS it also saves each run's snapshot, which every
    # later read (the plan's, the overview's) takes its jobs from.
    held, read_s, held_mb = timed_peak(lambda: [ctx.state.list_jobs(r) for r in run_ids])
    ids = {r: [j.job_id for j in jobs] for r, jobs in zip(run_ids, held, strict=True)}
    del held
    read_requests = sent()
    with ThreadPoolExecutor(8) as pool:
        _, alone_s, _ = timed_peak(lambda: [list(pool.map(ctx.state.get_job, ids[r])) for r in run_ids])
    alone_requests = sent()
    decided, plan_s, plan_mb = timed_peak(lambda: plan(ctx))
    plan_requests = sent()
    _, overview_s, overview_mb = timed_peak(lambda: overview.collections(ctx))
    sent()
    default = dataclasses.replace(ctx, config=ctx.config.model_copy(update={"retention": None}))
    _, default_s, _ = timed_peak(lambda: overview.collections(default))
    default_requests = sent()
    kept = sum(1 for d in decided.decisions if d.keep)
    print(f"  plan over {runs * collections} backups ({kept} kept): {plan_s:.1f} s, "
          f"{plan_s / read_s:.2f}x the {read_s:.1f} s of reading every job; peak memory "
          f"{plan_mb:.0f} MB, {plan_mb / held_mb:.2f}x the {held_mb:.0f} MB of holding every job read")
    if requests is not None:
        print(f"  requests: the plan {plan_requests} (the runs' snapshots in place), the first "
              f"reading of every job {read_requests} (which saved them); each job on its own "
              f"{alone_requests} in {alone_s:.1f} s (the plan: {plan_s / alone_s:.2f}x its time)")
    print(f"  status overview of {collections} collections: {overview_s:.1f} s, "
          f"peak memory {overview_mb:.0f} MB", flush=True)
    print(f"  status overview without a policy (the default): {default_s:.2f} s, "
          f"{default_s / read_s:.2f}x reading every job"
          + (f"; {default_requests} requests, {default_requests / read_requests:.3f}x"
             if requests is not None else ""), flush=True)


class _Sent:
    """Requests the S3 server logged since the last call (None: not on COS)."""

    def __init__(self, log: Path | None) -> None:
        self._log = log
        self._seen = self._count()

    def _count(self) -> int:
        return len(self._log.read_text().splitlines()) if self._log and self._log.exists() else 0

    def __call__(self) -> int:
        before, self._seen = self._seen, self._count()
        return self._seen - before


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--collections", type=int, default=1000)
    parser.add_argument("--stores", default="sqlite", help="sqlite, cos or both (comma-separated)")
    args = parser.parse_args()
    for store in args.stores.split(","):
        print(f"{store}: filling the state with {args.runs} runs x {args.collections} "
              "collections ...", flush=True)
        with tempfile.TemporaryDirectory(prefix="bench-prune-") as tmp:
            if store == "sqlite":
                measure(context(f"sqlite:///{Path(tmp) / 'state.sqlite3'}"), args.runs,
                        args.collections, None)
                continue
            log = Path(tmp) / "requests.jsonl"
            server, url = _start([sys.executable, "-m", "devkit.s3_server", "--bucket", BUCKET,
                                  "--request-log", str(log)])
            try:
                measure(context("cos://", url), args.runs, args.collections, log)
            finally:
                server.terminate()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
