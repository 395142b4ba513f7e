"""Throughput and memory of a OneDB paged copy against the platform-bound limit.

A paged copy can never be faster than the platform answers: one `getMany` of 5000 rows at
a time, each taking the platform's per-call latency. The emulator (a process of its own)
answers every call in a fixed time; this run measures that time with plain back-to-back
calls, so the limit is `rows per page / measured seconds per call`, and then copies a large
table with the finisher in a process of its own. Peak RSS (VmHWM) of the finisher is
reported against a small-table baseline and a medium table measured in the same run:
flat memory means the large table costs no more than the medium one.

The rate-limited case copies a table from a second emulator that allows only
`--rate-limit` getMany calls a second (beyond it: HTTP 429 with Retry-After); its
throughput is reported as a ratio of calls-allowed x rows-per-call.

    scripts/bench onedb [--rows 1000000] [--latency 0.2] [--rate-limit 4 --limited-rows 200000]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import jwt
import yaml

from devkit.emulators.onedb import MAX_ID, MIN_ID
from scripts.bench_finisher import _run_child, _start, timed_finish
from scripts.finisher_child import peak_rss_mb as _peak_rss_mb
from shared.bootstrap import build_context
from shared.config import load_config
from shared.domain.jobs import JobStatus
from shared.platforms.onedb.platform import ROWS_LIMIT
from shared.service.start import start_run

ROOT = Path(__file__).resolve().parent.parent
ENV_ID = "bench-env"
KEY_ID = "bench-key"
SECRET = "bench-onedb-key-secret-0000"
APP = "user"
BUCKET = "bench-1250000000"
TARGET = 0.85  # of the platform-bound limit
LIMITED_TARGET = 0.7  # of calls-allowed x rows-per-call under a rate limit


def seconds_per_call(base_url: str, calls: int) -> list[float]:
    """Back-to-back full pages from the table's start, as fast as one client can go."""
    now = int(time.time())
    token = jwt.encode({"identity": "cdb", "iat": now, "exp": now + 300}, SECRET, algorithm="HS256")
    headers = {"envid": ENV_ID, "keyid": KEY_ID, "Authorization": f"Bearer {token}"}
    body = {"appId": APP, "tableId": "big", "action": "getMany", "orderType": "asc",
            "ids": {"userId": MIN_ID, "seq": MIN_ID}, "endIds": {"userId": MAX_ID, "seq": MAX_ID},
            "rowsLimit": ROWS_LIMIT}
    times = []
    with httpx.Client(timeout=60) as client:
        for _ in range(calls):
            began = time.perf_counter()
            response = client.post(f"{base_url}/cdb", json=body, headers=headers)
            response.read()
            times.append(time.perf_counter() - began)
            assert response.status_code == 200 and b'"data"' in response.content[:20]
    return times


def _finish_in_child(config_path: Path, job_id: str) -> dict[str, Any]:
    return _run_child("scripts.bench_onedb", config_path, job_id, {"BENCH_ONEDB_SECRET": SECRET})


def child(config_path: str, job_id: str) -> None:
    """Runs in its own process: one finisher invocation, timed, then its peak RSS."""
    outcome, seconds, job = timed_finish(config_path, job_id)
    print(json.dumps({"outcome": outcome, "seconds": seconds, "peak_rss_mb": _peak_rss_mb(),
                      "rows": job.result.records if job.result else 0,
                      "bytes": job.result.bytes if job.result else 0, "error": job.error}))


def _ready_jobs(config_path: Path) -> dict[str, str]:
    class Ignore:
        def dispatch(self, job_id: str) -> None:
            """The benchmark runs each finisher itself, in a process of its own."""

    ctx = build_context(load_config(config_path), dispatcher=Ignore())
    run, _ = start_run(ctx, idempotency_key=f"bench:{time.time()}", trigger="bench")
    jobs = ctx.state.list_jobs(run.run_id)
    assert all(j.status is JobStatus.READY for j in jobs), [j.status for j in jobs]
    return {j.collection: j.job_id for j in jobs}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows of the large table")
    parser.add_argument("--latency", type=float, default=0.2,
                        help="seconds the emulated platform takes per call")
    parser.add_argument("--probe-calls", type=int, default=10)
    parser.add_argument("--rate-limit", type=float, default=4.0,
                        help="getMany calls a second the rate-limited case allows")
    parser.add_argument("--limited-rows", type=int, default=200_000,
                        help="rows of the rate-limited case's table")
    parser.add_argument("--limited-latency", type=float, default=0.05,
                        help="seconds per call in the rate-limited case")
    parser.add_argument("--only-limited", action="store_true", help="run the rate-limited case only")
    parser.add_argument("--child", nargs=2, metavar=("CONFIG", "JOB_ID"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return 0

    work = ROOT / ".bench"
    work.mkdir(exist_ok=True)
    os.environ["BENCH_ONEDB_SECRET"] = SECRET
    if args.only_limited:
        return 0 if _rate_limited_case(args, work) else 1
    medium_rows = max(ROWS_LIMIT, args.rows // 5)
    s3, s3_url = _start([sys.executable, "-m", "devkit.s3_server", "--bucket", BUCKET])
    emulator, onedb_url = _start([
        sys.executable, "-m", "devkit.emulators.onedb", "--latency", str(args.latency),
        "--key", f"{ENV_ID}:{KEY_ID}:{SECRET}",
        "--generated", f"{ENV_ID}:{APP}:small:{ROWS_LIMIT}",
        "--generated", f"{ENV_ID}:{APP}:medium:{medium_rows}",
        "--generated", f"{ENV_ID}:{APP}:big:{args.rows}",
    ])
    try:
        config_path = work / "bench-onedb.yaml"
        _write_config(config_path, work / "state-onedb.sqlite3", s3_url, onedb_url,
                      ["small", "medium", "big"])
        os.environ["BENCH_ONEDB_SECRET"] = SECRET
        jobs = _ready_jobs(config_path)
        probe = seconds_per_call(onedb_url, args.probe_calls)
        print(f"copying {args.rows} rows ({ROWS_LIMIT} a call, platform latency "
              f"{args.latency:g} s) ...", flush=True)
        results = {name: _finish_in_child(config_path, jobs[name])
                   for name in ("small", "medium", "big")}
    finally:
        emulator.terminate()
        s3.terminate()

    per_call = statistics.median(probe)
    limit = ROWS_LIMIT / per_call
    nominal = ROWS_LIMIT / args.latency
    print(f"platform per call (measured, median of {len(probe)}): {per_call * 1000:.1f} ms "
          f"-> limit {limit:,.0f} rows/s (nominal {args.latency * 1000:g} ms -> {nominal:,.0f} rows/s)")
    for name in ("small", "medium", "big"):
        result = results[name]
        rate = result["rows"] / result["seconds"]
        print(f"{name:>7}: {result['outcome']}, {result['rows']:>9,} rows, "
              f"{result['bytes'] / (1 << 20):7.1f} MiB in {result['seconds']:6.1f} s = "
              f"{rate:9,.0f} rows/s ({rate / limit:6.1%} of limit, {rate / nominal:6.1%} of "
              f"nominal), peak RSS {result['peak_rss_mb']:.1f} MB")
    big, medium, small = results["big"], results["medium"], results["small"]
    share = big["rows"] / big["seconds"] / limit
    print(f"peak RSS: large {big['peak_rss_mb']:.1f} MB, medium {medium['peak_rss_mb']:.1f} MB, "
          f"baseline {small['peak_rss_mb']:.1f} MB (large/baseline {big['peak_rss_mb'] / small['peak_rss_mb']:.2f}, "
          f"large/medium {big['peak_rss_mb'] / medium['peak_rss_mb']:.2f})")
    print(f"throughput {share:.1%} of the platform-bound limit; target {TARGET:.0%}: "
          f"{'met' if share >= TARGET else 'MISSED'}")
    limited = _rate_limited_case(args, work)
    ok = big["outcome"] == "done" and big["rows"] == args.rows and share >= TARGET and limited
    return 0 if ok else 1


def _write_config(path: Path, state: Path, s3_url: str, onedb_url: str, tables: list[str]) -> None:
    (state).unlink(missing_ok=True)
    path.write_text(yaml.safe_dump({
        "destination": {"bucket": BUCKET, "region": "ap-guangzhou", "endpoint": s3_url,
                        "anonymous": True, "prefix": "bench-onedb"},
        "state": {"url": f"sqlite:///{state}"},
        "sources": [{"type": "onedb", "name": "bench", "region": "cn-east-1",
                     "envid": ENV_ID, "keyid": KEY_ID, "key_secret": "${BENCH_ONEDB_SECRET}",
                     "app_id": APP, "keys": ["userId", "seq"],
                     "tables": tables, "api_base": onedb_url}],
    }))


def _rate_limited_case(args: argparse.Namespace, work: Path) -> bool:
    """One table through an emulator limited to `--rate-limit` calls a second."""
    rows_per_call = ROWS_LIMIT
    s3, s3_url = _start([sys.executable, "-m", "devkit.s3_server", "--bucket", BUCKET])
    emulator, onedb_url = _start([
        sys.executable, "-m", "devkit.emulators.onedb", "--latency", str(args.limited_latency),
        "--rate-limit", str(args.rate_limit), "--key", f"{ENV_ID}:{KEY_ID}:{SECRET}",
        "--generated", f"{ENV_ID}:{APP}:limited:{args.limited_rows}",
    ])
    try:
        config_path = work / "bench-onedb-limited.yaml"
        _write_config(config_path, work / "state-onedb-limited.sqlite3", s3_url, onedb_url,
                      ["limited"])
        jobs = _ready_jobs(config_path)
        print(f"rate-limited: copying {args.limited_rows} rows, {args.rate_limit:g} calls/s "
              f"allowed, {rows_per_call} rows a call ...", flush=True)
        result = _finish_in_child(config_path, jobs["limited"])
    finally:
        emulator.terminate()
        s3.terminate()
    allowed = args.rate_limit * rows_per_call
    rate = result["rows"] / result["seconds"]
    ratio = rate / allowed
    print(f"rate-limited: {result['outcome']}, {result['rows']:,} rows in {result['seconds']:.1f} s "
          f"= {rate:,.0f} rows/s against {args.rate_limit:g} calls/s x {rows_per_call} rows "
          f"= {allowed:,.0f} rows/s allowed: ratio {ratio:.2f} (target {LIMITED_TARGET:.2f}: "
          f"{'met' if ratio >= LIMITED_TARGET else 'MISSED'})")
    return bool(result["outcome"] == "done" and result["rows"] == args.limited_rows
                and ratio >= LIMITED_TARGET)


if __name__ == "__main__":
    sys.exit(main())
