"""Peak memory and throughput of the finisher copying a large WeChat export into COS.

The emulator and the S3 server run as separate processes; each finisher runs in a
process of its own so its peak RSS (VmHWM) is its own. The baseline is the same
finisher copying a tiny export in the same run: the ratio shows what the size adds.

    scripts/bench finisher --gib 1
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from shared.bootstrap import build_context
from shared.config import load_config
from shared.domain.jobs import JobStatus
from shared.service.finish import finish
from shared.service.poll import poll
from shared.service.start import start_run

ROOT = Path(__file__).resolve().parent.parent
APPID = "wx00000000000be4c4"
SECRET = "bench-secret-000000"
ENV_ID = "bench-env"
BUCKET = "bench-1250000000"
LIMIT_MB = 150


def _peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_export_file(path: Path, size: int) -> int:
    """A JSON Lines file of about `size` bytes of varied documents; returns its line count."""
    counted = path.with_suffix(".count")
    if path.exists() and counted.exists() and abs(path.stat().st_size - size) < 4096:
        return int(counted.read_text())
    line_template = '{"_id":"doc-%09d","name":"张伟 🐼","total":%d,"items":[{"sku":"奶茶","qty":%d}],"pad":"%s"}\n'
    count = 0
    written = 0
    with path.open("wb", buffering=1 << 20) as out:
        while written < size:
            line = (line_template % (count, count * 7 % 1000, count % 5, "x" * (count % 700))).encode()
            out.write(line)
            written += len(line)
            count += 1
    path.with_suffix(".count").write_text(str(count))
    return count


def _start(cmd: list[str]) -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert process.stdout is not None
    return process, process.stdout.readline().strip()


def _run_child(module: str, config_path: Path, job_id: str, env: dict[str, str]) -> dict[str, Any]:
    """Run `module --child CONFIG JOB_ID` in a process of its own; its last line, parsed."""
    out = subprocess.run(
        [sys.executable, "-m", module, "--child", str(config_path), job_id],
        check=True, capture_output=True, text=True, cwd=ROOT, env={**os.environ, **env},
    ).stdout
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


def _finish_in_child(config_path: Path, job_id: str) -> dict[str, Any]:
    started = time.perf_counter()
    result = _run_child("scripts.bench_finisher", config_path, job_id, {"BENCH_SECRET": SECRET})
    result["seconds"] = time.perf_counter() - started
    return result


def child(config_path: str, job_id: str) -> None:
    """Runs in its own process: one finisher invocation, then its peak RSS."""
    ctx = build_context(load_config(config_path))
    outcome = finish(ctx, job_id)
    job = ctx.state.get_job(job_id)
    assert job is not None
    print(json.dumps({"outcome": outcome, "peak_rss_mb": _peak_rss_mb(),
                      "bytes": job.result.bytes if job.result else 0, "error": job.error}))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--gib", type=float, default=1.0, help="size of the large export")
    parser.add_argument("--child", nargs=2, metavar=("CONFIG", "JOB_ID"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return 0

    work = ROOT / ".bench"
    work.mkdir(exist_ok=True)
    big = work / "big.jsonl"
    small = work / "small.jsonl"
    print(f"writing a {args.gib:g} GiB export file ...", flush=True)
    big_count = write_export_file(big, int(args.gib * (1 << 30)))
    small_count = write_export_file(small, 200_000)

    s3, s3_url = _start([sys.executable, "-m", "devkit.s3_server", "--bucket", BUCKET])
    emulator, wechat_url = _start([
        sys.executable, "-m", "devkit.emulators.wechat", "--port", "0",
        "--app", f"{APPID}:{SECRET}", "--env", f"{APPID}:{ENV_ID}",
        "--jsonl", f"{ENV_ID}:big:{big}:{big_count}", "--jsonl", f"{ENV_ID}:small:{small}:{small_count}",
    ])
    try:
        config_path = work / "bench.yaml"
        (work / "state.sqlite3").unlink(missing_ok=True)
        config_path.write_text(yaml.safe_dump({
            "destination": {"bucket": BUCKET, "region": "ap-guangzhou", "endpoint": s3_url,
                            "anonymous": True, "prefix": "bench"},
            "state": {"url": f"sqlite:///{work / 'state.sqlite3'}"},
            "timing": {"first_check_seconds": 0.1},
            "sources": [{"type": "wechat", "name": "bench", "appid": APPID,
                         "secret": "${BENCH_SECRET}", "env": ENV_ID,
                         "collections": ["small", "big"], "api_base": wechat_url}],
        }))
        os.environ["BENCH_SECRET"] = SECRET
        ready = _wait_until_ready(config_path)
        baseline = _finish_in_child(config_path, ready["small"])
        large = _finish_in_child(config_path, ready["big"])
    finally:
        emulator.terminate()
        s3.terminate()

    for name, result in (("baseline (200 kB export)", baseline), (f"{args.gib:g} GiB export", large)):
        rate = result["bytes"] / (1 << 20) / result["seconds"]
        print(f"{name:>26}: outcome {result['outcome']}, peak RSS {result['peak_rss_mb']:.1f} MB, "
              f"{result['bytes']} bytes in {result['seconds']:.1f} s ({rate:.1f} MiB/s)")
    ratio = large["peak_rss_mb"] / baseline["peak_rss_mb"]
    print(f"peak RSS ratio large/baseline: {ratio:.2f}; limit {LIMIT_MB} MB: "
          f"{'met' if large['peak_rss_mb'] < LIMIT_MB else 'MISSED'}")
    return 0 if large["outcome"] == "done" and large["peak_rss_mb"] < LIMIT_MB else 1


def _wait_until_ready(config_path: Path) -> dict[str, str]:
    """Start the run and poll until both exports are ready; nothing is copied here."""

    class Ignore:
        def dispatch(self, job_id: str) -> None:
            """The benchmark runs the finisher itself, in a process of its own."""

    ctx = build_context(load_config(config_path), dispatcher=Ignore())
    run, _ = start_run(ctx, idempotency_key=f"bench:{time.time()}", trigger="bench")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        poll(ctx)
        jobs = ctx.state.list_jobs(run.run_id)
        if all(j.status is JobStatus.READY for j in jobs):
            return {j.collection: j.job_id for j in jobs}
        time.sleep(0.1)
    raise SystemExit("exports did not become ready")


if __name__ == "__main__":
    sys.exit(main())
