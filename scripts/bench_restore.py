"""Throughput of a OneDB restore against the platform-bound limit.

OneDB has no import: a restore writes every row with one `create` call. Its speed is
bound by the platform: at most `--rate-limit` calls a second (beyond: HTTP 429 with
Retry-After), and what the platform answers with `--concurrency` calls in flight. This run
measures the latter with plain concurrent `create` calls (no product code) on an emulator
without the rate limit (a process of its own), so the bound is `min(rate limit, that
rate)`; then it backs up a table into moto's S3, restores it into an empty table of a
rate-limited emulator with the finisher in a process of its own (the whole invocation
timed: the backup's check, the writes, and paging the table back at the end), and reports
the ratio.

    scripts/bench restore [--rows 20000] [--rate-limit 200] [--latency 0.01] [--concurrency 8]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import jwt
import yaml

from scripts.bench_finisher import _run_child, _start, timed_finish
from shared.bootstrap import build_context
from shared.config import load_config
from shared.domain.jobs import JobStatus, RunStatus
from shared.service.finish import finish
from shared.service.poll import poll
from shared.service.restore.plan import plan_restore, start_restore
from shared.service.start import start_run

ROOT = Path(__file__).resolve().parent.parent
ENV_ID, KEY_ID, APP = "bench-env", "bench-key", "user"
SECRET = "bench-onedb-key-secret-0000"
BUCKET = "bench-1250000000"
TARGET = 0.85  # of the platform-bound limit


class Recorder:
    """Notes hand-offs: the benchmark runs the restore's finisher itself, in a child."""

    def __init__(self) -> None:
        self.dispatched: list[str] = []

    def dispatch(self, job_id: str) -> None:
        self.dispatched.append(job_id)


def raw_rows_per_second(base_url: str, rows: int, concurrency: int) -> float:
    """What the platform itself allows at this concurrency: `concurrency` threads writing
    new rows with plain `create` calls, nothing else, as fast as they can."""
    now = int(time.time())
    token = jwt.encode({"identity": "cdb", "iat": now, "exp": now + 300}, SECRET, algorithm="HS256")
    headers = {"envid": ENV_ID, "keyid": KEY_ID, "Authorization": f"Bearer {token}"}

    def write(index: int, client: httpx.Client) -> None:
        body = {"appId": APP, "tableId": "scratch", "action": "create",
                "ids": {"userId": "probe", "seq": index}, "columns": {"n": index},
                "condition": {"type": "ignore"}}
        response = client.post(f"{base_url}/cdb", json=body, headers=headers)
        assert response.status_code == 200, response.status_code

    with httpx.Client(timeout=60, limits=httpx.Limits(max_connections=concurrency)) as client, \
            ThreadPoolExecutor(concurrency) as pool:
        began = time.perf_counter()
        list(pool.map(lambda index: write(index, client), range(rows)))
        return rows / (time.perf_counter() - began)


def child(config_path: str, job_id: str) -> None:
    """Runs in its own process: one finisher invocation, timed."""
    outcome, seconds, job = timed_finish(config_path, job_id)
    point = job.checkpoint or {}
    print(json.dumps({"outcome": outcome, "seconds": seconds, "rows": point.get("rows", 0),
                      "missing": point.get("missing"), "error": job.error}))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--rate-limit", type=float, default=200.0, help="calls a second allowed")
    parser.add_argument("--latency", type=float, default=0.01, help="seconds per platform call")
    parser.add_argument("--concurrency", type=int, default=8, help="rows written at once")
    parser.add_argument("--probe-rows", type=int, default=3000,
                        help="rows the plain writer measuring the platform writes")
    parser.add_argument("--child", nargs=2, metavar=("CONFIG", "JOB_ID"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return 0
    work = ROOT / ".bench"
    work.mkdir(exist_ok=True)
    os.environ["BENCH_ONEDB_SECRET"] = SECRET
    probe, probe_url = _start([
        sys.executable, "-m", "devkit.emulators.onedb", "--latency", str(args.latency),
        "--key", f"{ENV_ID}:{KEY_ID}:{SECRET}", "--table", f"{ENV_ID}:{APP}:scratch:userId,seq"])
    try:
        raw = raw_rows_per_second(probe_url, args.probe_rows, args.concurrency)
    finally:
        probe.terminate()
    s3, s3_url = _start([sys.executable, "-m", "devkit.s3_server", "--bucket", BUCKET])
    emulator, onedb_url = _start([
        sys.executable, "-m", "devkit.emulators.onedb", "--latency", str(args.latency),
        "--rate-limit", str(args.rate_limit), "--key", f"{ENV_ID}:{KEY_ID}:{SECRET}",
        "--generated", f"{ENV_ID}:{APP}:source:{args.rows}",
        "--table", f"{ENV_ID}:{APP}:copy:userId,seq",
    ])
    try:
        config_path = work / "bench-restore.yaml"
        _write_config(config_path, work / "state-restore.sqlite3", s3_url, onedb_url,
                      args.concurrency)
        job_id = _restore_ready(config_path)
        print(f"restoring {args.rows:,} rows, {args.concurrency} at once, into an emulator "
              f"allowing {args.rate_limit:g} calls/s ...", flush=True)
        result = _run_child("scripts.bench_restore", config_path, job_id, {})
    finally:
        emulator.terminate()
        s3.terminate()
    bound = min(args.rate_limit, raw)
    rate = result["rows"] / result["seconds"]
    share = rate / bound
    print(f"platform: plain create calls, {args.concurrency} in flight, no rate limit "
          f"(measured): {raw:,.0f} rows/s; rate limit {args.rate_limit:g} calls/s -> "
          f"platform-bound limit {bound:,.0f} rows/s")
    print(f"restore: {result['outcome']}, {result['rows']:,} rows in {result['seconds']:.1f} s "
          f"= {rate:,.0f} rows/s, {share:.1%} of the platform-bound limit; target "
          f"{TARGET:.0%}: {'met' if share >= TARGET else 'MISSED'}")
    ok = (result["outcome"] == "done" and result["rows"] == args.rows
          and result["missing"] == 0 and share >= TARGET)
    if result["outcome"] != "done":
        print(f"the restore did not finish: {result['error']}")
    return 0 if ok else 1


def _write_config(path: Path, state: Path, s3_url: str, onedb_url: str, concurrency: int) -> None:
    state.unlink(missing_ok=True)
    path.write_text(yaml.safe_dump({
        "destination": {"bucket": BUCKET, "region": "ap-guangzhou", "endpoint": s3_url,
                        "anonymous": True, "prefix": "bench-restore"},
        "state": {"url": f"sqlite:///{state}"},
        "timing": {"restore_row_concurrency": concurrency, "finish_budget_seconds": 3600,
                   "copy_lease_seconds": 3600},
        "sources": [{"type": "onedb", "name": "bench", "region": "cn-east-1",
                     "envid": ENV_ID, "keyid": KEY_ID, "key_secret": "${BENCH_ONEDB_SECRET}",
                     "app_id": APP, "keys": ["userId", "seq"], "tables": ["source"],
                     "api_base": onedb_url}],
    }))


def _restore_ready(config_path: Path) -> str:
    """Back the table up in this process, then record a restore of it into `copy` and
    let the poller hand it out; the restore's job id."""
    recorder = Recorder()
    ctx = build_context(load_config(config_path), dispatcher=recorder)
    run, _ = start_run(ctx, idempotency_key=f"bench:{time.time()}", trigger="bench")
    for job_id in recorder.dispatched:
        finish(ctx, job_id)
    poll(ctx)
    backup = ctx.state.get_run(run.run_id)
    assert backup is not None and backup.status is RunStatus.SUCCEEDED, backup
    plan = plan_restore(ctx, run.run_id, "bench", "source", into="copy")
    restore, _ = start_restore(ctx, plan, idempotency_key=f"bench-restore:{time.time()}",
                               trigger="bench")
    recorder.dispatched.clear()
    poll(ctx)
    [job] = ctx.state.list_jobs(restore.run_id)
    assert job.status is JobStatus.READY and recorder.dispatched == [job.job_id], job
    return job.job_id


if __name__ == "__main__":
    sys.exit(main())
