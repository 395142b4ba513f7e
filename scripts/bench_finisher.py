"""Throughput and peak memory of the finisher copying a large WeChat export into COS,
against `rclone copyurl` copying the same signed link into the same S3 server.

The emulator and the S3 server run as separate processes; each finisher is the deployed
handler called in a fresh process (scripts/finisher_child.py) of the built SCF package
under Python 3.10, with nothing else on its path, so it pays a cold start as SCF's would
and its peak RSS (VmHWM) is its own. Measured in the same run:

- `--pairs` alternating pairs over a `--mib` export, each copy after a pause of `--settle`
  seconds on an emptied S3 server: the finisher (one invocation, from
  the ready job to the verified object) and `rclone copyurl` (multipart like the
  finisher: `upload_cutoff 0`, the same part size, its default 4 parts at once; `no_head`
  because moto answers its post-upload HEAD unlike COS); the ratio of their throughputs,
  the CPU seconds each used (the S3 server and the emulator run on the same cores), and
  where each copy's time went, read from the S3 server's request log (`Phases`);
- with `--warm`, in the same pairs, the finisher as a warm instance (its process has
  finished a small copy first), timed from the handler's call;
- each ratio's median with a distribution-free interval, and the ratios again with the
  server's completion set to one value for both copies (`equalized_ratios`);
- peak RSS copying a `--gib` export, against the same finisher copying a 200 kB export.

With `--https`, the S3 server speaks HTTPS (a certificate from a throwaway CA that both
copiers trust), as COS does: each copier then pays its TLS setup, connections and all.

rclone is Debian's package, installed with apt-get when missing.

    scripts/bench finisher [--gib 1] [--mib 267] [--pairs 7] [--settle 3] [--concurrency 4[,8]] [--warm] [--https]
"""

from __future__ import annotations

import argparse
import compileall
import json
import math
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple

import yaml

from devkit.s3_server import trust
from scripts.build_package import build, find_python310, hash_cas, isolated_python
from scripts.finisher_child import RETURNED
from shared.bootstrap import build_context
from shared.config import load_config
from shared.domain.jobs import Job, JobStatus
from shared.service.finish import finish
from shared.service.poll import poll
from shared.service.start import start_run

ROOT = Path(__file__).resolve().parent.parent
APPID = "wx00000000000be4c4"
SECRET = "bench-secret-000000"
ENV_ID = "bench-env"
BUCKET = "bench-1250000000"
STATE_PREFIX = "bench/_state/"  # where the COS state store keeps runs and jobs (prefix "bench")
LIMIT_MB = 150


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


def _start(cmd: list[str], env: dict[str, str] | None = None) -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=ROOT,
                               env={**os.environ, **(env or {})})
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


class Runtime(NamedTuple):
    """How a finisher child starts: its interpreter and arguments, the package folder
    (none: this venv), and a description for the report."""

    python: list[str]
    package: str | None
    label: str

    def command(self, config_path: Path, job_id: str, warm_with: str | None = None) -> list[str]:
        child = str(ROOT / "scripts" / "finisher_child.py")
        return [*self.python, child, "--child", str(config_path), job_id,
                *([self.package] if self.package else []),
                *(["--warm-with", warm_with] if warm_with else [])]


class Variant(NamedTuple):
    """One way the finisher is raced: its part concurrency (None: the product's default),
    and whether its process is a warm instance (`--warm`) rather than a cold start."""

    concurrency: int | None
    warm: bool = False

    def label(self) -> str:
        said = ([f"part_concurrency {self.concurrency}"] if self.concurrency else []) + (
            ["warm instance"] if self.warm else [])
        return f" ({', '.join(said)})" if said else ""


def finisher_runtime(work: Path) -> Runtime:
    """The built SCF package under Python 3.10 with nothing else on its path (what SCF
    runs: neither the dev tools in this venv nor this newer Python are there), or this
    venv when no Python 3.10 is found (said in the report)."""
    python310 = find_python310()
    if python310 is None:
        return Runtime([sys.executable], None,
                       f"this venv's Python {sys.version.split()[0]} (no Python 3.10 found)")
    package = build(out=work / "package", archive=None)
    return Runtime([isolated_python(python310), "-I", "-B"], str(package),
                   f"the SCF package under Python 3.10 -I -B ({package})")


def _finish_in_child(runtime: Runtime, config_path: Path, job_id: str,
                     warm_with: str | None = None) -> dict[str, Any]:
    """One finisher invocation in a fresh process, timed from the process's start to the
    handler's return (SCF's invocation ends there; the process is kept, and what the child
    does after, reading the job back for this report, is not the finisher's). With
    `warm_with`, the process finishes that job first, and the timed call is the second:
    a warm instance, timed from the call to its return."""
    began_at, started = time.time(), time.perf_counter()
    child = subprocess.Popen(
        runtime.command(config_path, job_id, warm_with),
        stdout=subprocess.PIPE, text=True, cwd=ROOT, env={**os.environ, "BENCH_SECRET": SECRET})
    assert child.stdout is not None
    returned = None
    lines = []
    for line in child.stdout:
        if line.strip() == RETURNED and returned is None:
            returned, ended_at = time.perf_counter(), time.time()
        lines.append(line)
    if child.wait() != 0 or returned is None:
        raise SystemExit(f"the finisher child failed (exit {child.returncode}):\n{''.join(lines[-20:])}")
    result: dict[str, Any] = json.loads(lines[-1])
    if warm_with is None:
        result.update(seconds=returned - started, began_at=began_at)
    else:
        result.update(seconds=result["invocation_s"])
    result.update(ended_at=ended_at)
    return result


def timed_finish(config_path: str, job_id: str) -> tuple[str, float, Job]:
    """One finisher invocation in this process: its outcome, seconds and the job after."""
    ctx = build_context(load_config(config_path))
    began = time.perf_counter()
    outcome = finish(ctx, job_id)
    seconds = time.perf_counter() - began
    job = ctx.state.get_job(job_id)
    assert job is not None
    return outcome, seconds, job


def ensure_rclone() -> str:
    """rclone from Debian's package (apt-get), installed when missing."""
    found = shutil.which("rclone")
    if found:
        return found
    print("installing rclone (Debian package) ...", flush=True)
    subprocess.run(["apt-get", "install", "-y", "-q", "rclone"], check=True,
                   env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
                   stdout=subprocess.DEVNULL)
    found = shutil.which("rclone")
    if found is None:
        raise SystemExit("rclone is still missing after apt-get install rclone")
    return found


def rclone_copy(rclone: str, url: str, s3_url: str, key: str, part_mib: int,
                ca: Path | None = None) -> dict[str, float]:
    """`rclone copyurl` copying `url` into BUCKET/key on the S3 server (over HTTPS trusting
    the CA bundle `ca`): its seconds, the CPU seconds it used, and when it began and ended
    (wall clock, for the request log)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    began_at, started = time.time(), time.perf_counter()
    subprocess.run([
        rclone, "copyurl", url, f":s3:{BUCKET}/{key}",
        "--s3-provider", "Other", "--s3-endpoint", s3_url, "--s3-region", "ap-guangzhou",
        "--s3-access-key-id", "bench", "--s3-secret-access-key", "bench",
        "--s3-no-head", "--s3-upload-cutoff", "0", "--s3-chunk-size", f"{part_mib}M",
        "--s3-upload-concurrency", "4", "--config", "/dev/null", "-q",
        *(["--ca-cert", str(ca)] if ca else []),
    ], check=True, env={k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"})
    # (a CA bundle in AWS_CA_BUNDLE only makes rclone's S3 client refuse to start; --ca-cert
    # is rclone's own way)
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)  # only rclone was waited for since
    return {"seconds": seconds, "began_at": began_at, "ended_at": time.time(),
            "cpu_s": after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime}


class Phases(NamedTuple):
    """Where one copy's time went, read from the S3 server's request log (one clock and one
    reading for both copiers): until its first part arrived; its parts, from that arrival
    to the last part's answer; the completion, to the answer of its complete-upload
    request (the server assembles the object and its CRC64 then); and what followed."""

    before: float
    parts: float
    completion: float
    after: float


def read_phases(log: Path, copy: dict[str, Any]) -> Phases:
    began, ended = copy["began_at"], copy["ended_at"]
    mine = [r for r in map(json.loads, log.read_text().splitlines()) if began <= r["start"] <= ended]
    parts = [r for r in mine if r["method"] == "PUT" and "partNumber" in r["query"]]
    completes = [r for r in mine if r["method"] == "POST" and "uploadId" in r["query"]]
    if not parts or not completes:
        raise SystemExit(f"the S3 server's request log {log} has no multipart upload between "
                         f"{began} and {ended}; is the export smaller than one part?")
    first = min(r["start"] for r in parts)
    last = max(r["end"] for r in parts)
    completed = max(r["end"] for r in completes)
    return Phases(first - began, last - first, completed - last, ended - completed)


def equalized_ratios(pairs: list[tuple[Phases, Phases]]) -> tuple[list[float], float]:
    """Each pair's ratio (theirs / ours: a throughput ratio) with the completion of both
    copies set to the median completion of every copy in `pairs`; and that median. The
    completion is the S3 server assembling the same object whoever sent it, and it varied
    from 1.7 to 5.4 s from copy to copy: the raw ratio of a pair is mostly that draw."""
    common = statistics.median(p.completion for pair in pairs for p in pair)

    def total(p: Phases) -> float:
        return p.before + p.parts + common + p.after

    return [total(theirs) / total(ours) for ours, theirs in pairs], common


def _phase_line(name: str, phases: list[Phases], mib: float) -> str:
    median = Phases(*(statistics.median(column) for column in zip(*phases, strict=True)))
    return (f"{name}: before the first part {median.before:.2f}, parts {median.parts:.2f} "
            f"({mib / median.parts:.0f} MiB/s), completion {median.completion:.2f}, "
            f"after {median.after:.2f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gib", type=float, default=1.0, help="size of the export for peak RSS")
    parser.add_argument("--mib", type=float, default=267, help="size of the export raced against rclone")
    parser.add_argument("--pairs", type=int, default=7, help="alternating finisher/rclone pairs")
    parser.add_argument("--settle", type=float, default=3.0,
                        help="seconds of pause before each copy (see _settle)")
    parser.add_argument("--concurrency", type=_concurrencies, default=[None],
                        help="destination.part_concurrency (default: the product's default); "
                             "several, comma-separated (4,8), are raced in the same pairs")
    parser.add_argument("--https", action="store_true",
                        help="the S3 server speaks HTTPS, as COS does (a throwaway CA's "
                             "certificate, trusted by both copiers)")
    parser.add_argument("--warm", action="store_true",
                        help="also race a warm instance (the handler's second call in a process "
                             "that has finished a small copy) in the same pairs")
    args = parser.parse_args()

    rclone = ensure_rclone() if args.pairs else ""
    # A machine may name a CA bundle for every program (SSL_CERT_FILE, ...); the finishers
    # would load it instead of the package's CA folder (shared/adapters/tls.py), and no
    # deployed function's environment names one (serverless.yml sets none). --https names
    # the bench's own CA again (devkit.s3_server.trust).
    for name in ("SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        os.environ.pop(name, None)
    # The finisher starts from bytecode, as in the SCF package: without this, a machine
    # with PYTHONDONTWRITEBYTECODE set compiles our modules again in every fresh process.
    for folder in ("shared", "scripts", "devkit"):
        compileall.compile_dir(ROOT / folder, quiet=1)
    work = ROOT / ".bench"
    work.mkdir(exist_ok=True)
    runtime = finisher_runtime(work)
    print(f"the finisher runs from {runtime.label}", flush=True)
    big = work / "big.jsonl"
    small = work / "small.jsonl"
    race = work / "race.jsonl"
    print(f"writing a {args.gib:g} GiB and a {args.mib:g} MiB export file ...", flush=True)
    big_count = write_export_file(big, int(args.gib * (1 << 30)))
    small_count = write_export_file(small, 200_000)
    race_count = write_export_file(race, int(args.mib * (1 << 20)))

    request_log = work / "s3-requests.jsonl"
    request_log.unlink(missing_ok=True)
    # moto keeps an object or part over 5 MiB in a temporary file; on this machine's disk
    # its writes competed with whichever copy came next (COS's disks are not ours).
    ca = work / "tls" / "ca.pem" if args.https else None
    if ca:
        ca.parent.mkdir(exist_ok=True)
    s3, s3_url = _start([sys.executable, "-m", "devkit.s3_server", "--bucket", BUCKET,
                         "--request-log", str(request_log),
                         *(["--https", str(ca.parent)] if ca else [])],
                        {"MOTO_S3_DEFAULT_KEY_BUFFER_SIZE": str(8 << 30)})
    bundle = trust(ca) if ca else None  # the same here, in the finisher children and rclone
    if bundle is not None:  # ... which the finishers read as deployed: a folder by subject hash
        _trust_as_packaged(bundle)
    emulator, wechat_url = _start([
        sys.executable, "-m", "devkit.emulators.wechat", "--port", "0",
        "--app", f"{APPID}:{SECRET}", "--env", f"{APPID}:{ENV_ID}",
        "--jsonl", f"{ENV_ID}:big:{big}:{big_count}", "--jsonl", f"{ENV_ID}:small:{small}:{small_count}",
        "--jsonl", f"{ENV_ID}:race:{race}:{race_count}",
    ])
    try:
        configs = {n: _write_config(work, s3_url, wechat_url, n) for n in args.concurrency}
        config_path = configs[args.concurrency[0]]
        os.environ["BENCH_SECRET"] = SECRET
        variants = [Variant(n) for n in args.concurrency] + (
            [Variant(args.concurrency[0], warm=True)] if args.warm else [])
        race_rates: dict[Variant, list[tuple[float, float]]] = {v: [] for v in variants}
        cpu: dict[Variant, list[tuple[float, float]]] = {v: [] for v in variants}
        phases: dict[Variant, list[tuple[Phases, Phases]]] = {v: [] for v in variants}
        for pair in range(args.pairs):
            # Each finisher is paired with the rclone copy next to it; who goes first and
            # the order of the variants alternate from pair to pair.
            shift = pair % len(variants)
            for v in variants[shift:] + variants[:shift]:
                # a warm instance's first call copies the small export, in the same run
                ready = _wait_until_ready(config_path, ["race", "small"] if v.warm else ["race"])
                link = _download_link(config_path, ready["race"])
                # A key of its own for every copy, as the finisher's run folders are: the S3
                # server keeps each object's CRC64 by key and ETag, so rclone writing the same
                # bytes to the same key again skipped that work (0.7 s of its completion).
                key = f"rclone/race-{pair}-{variants.index(v)}.jsonl"
                if pair % 2:  # rclone first
                    _settle(config_path, args.settle)
                    theirs = rclone_copy(rclone, link, s3_url, key, 8, bundle)
                _settle(config_path, args.settle)
                ours = _finish_in_child(runtime, configs[v.concurrency], ready["race"],
                                        ready["small"] if v.warm else None)
                if pair % 2 == 0:
                    _settle(config_path, args.settle)
                    theirs = rclone_copy(rclone, link, s3_url, key, 8, bundle)
                assert ours["outcome"] == "done", ours
                mib = ours["bytes"] / (1 << 20)
                race_rates[v].append((mib / ours["seconds"], mib / theirs["seconds"]))
                cpu[v].append((ours["cpu_s"], theirs["cpu_s"]))
                phases[v].append((read_phases(request_log, ours), read_phases(request_log, theirs)))
                in_call = "" if v.warm else (
                    f" ({mib / ours['invocation_s']:.1f} MiB/s in the handler's call, without the "
                    "process start)")
                print(f"pair {pair + 1}{v.label()}: finisher {mib / ours['seconds']:.1f} MiB/s"
                      f"{in_call}, rclone copyurl {mib / theirs['seconds']:.1f} MiB/s"
                      f"{' (rclone first)' if pair % 2 else ''}; CPU seconds: finisher "
                      f"{ours['cpu_s']:.2f}, rclone {theirs['cpu_s']:.2f}", flush=True)
        ready = _wait_until_ready(config_path, ["small", "big"])
        _empty_bucket(config_path)
        baseline = _finish_in_child(runtime, config_path, ready["small"])
        large = _finish_in_child(runtime, config_path, ready["big"])
    finally:
        emulator.terminate()
        s3.terminate()

    for v, rates in race_rates.items():
        if not rates:
            continue
        ratios = [ours / theirs for ours, theirs in rates]
        low, high, confidence = median_interval(ratios)
        print(f"finisher{v.label()} / rclone copyurl over {args.mib:g} MiB, {len(ratios)} "
              f"alternating pairs: median {statistics.median(ratios):.2f} "
              f"(range {min(ratios):.2f}-{max(ratios):.2f}; {confidence:.0%} interval for the "
              f"median {low:.2f}-{high:.2f}); finisher median "
              f"{statistics.median(r for r, _ in rates):.1f} MiB/s, rclone median "
              f"{statistics.median(r for _, r in rates):.1f} MiB/s; CPU seconds median: finisher "
              f"{statistics.median(c for c, _ in cpu[v]):.2f}, rclone "
              f"{statistics.median(c for _, c in cpu[v]):.2f} (two cores, shared with the S3 "
              "server and the emulator)")
        equalized, common = equalized_ratios(phases[v])
        low, high, confidence = median_interval(equalized)
        print(f"  with the S3 server's completion at {common:.2f} s for every copy (its median "
              f"here): median {statistics.median(equalized):.2f} (range {min(equalized):.2f}-"
              f"{max(equalized):.2f}; {confidence:.0%} interval for the median {low:.2f}-{high:.2f})")
        print("  where the time went, medians in seconds (the S3 server's request log):")
        print("    " + _phase_line("finisher", [ours for ours, _ in phases[v]], args.mib))
        print("    " + _phase_line("rclone  ", [theirs for _, theirs in phases[v]], args.mib))
    if len(configs) > 1:
        print(f"peak RSS measured with{Variant(args.concurrency[0]).label()}")

    for name, result in (("baseline (200 kB export)", baseline), (f"{args.gib:g} GiB export", large)):
        rate = result["bytes"] / (1 << 20) / result["seconds"]
        print(f"{name:>26}: outcome {result['outcome']}, peak RSS {result['peak_rss_mb']:.1f} MB, "
              f"{result['bytes']} bytes in {result['seconds']:.1f} s ({rate:.1f} MiB/s)")
    ratio = large["peak_rss_mb"] / baseline["peak_rss_mb"]
    print(f"peak RSS ratio large/baseline: {ratio:.2f}; limit {LIMIT_MB} MB: "
          f"{'met' if large['peak_rss_mb'] < LIMIT_MB else 'MISSED'}")
    return 0 if large["outcome"] == "done" and large["peak_rss_mb"] < LIMIT_MB else 1


def _concurrencies(text: str) -> list[int | None]:
    return [int(n) for n in text.split(",")]


def median_interval(values: list[float]) -> tuple[float, float, float]:
    """A distribution-free interval for the median of what `values` sample: their k-th
    smallest and k-th largest, with k as large as keeps the chance that the median lies
    outside it at 10% or less; (low, high, the chance that it lies inside). The count of
    samples below the median is binomial(n, 1/2), so that chance is 1 - 2 P(count < k)."""
    ordered = sorted(values)
    n = len(ordered)

    def below(k: int) -> float:  # P(fewer than k of the n samples fall below the median)
        return sum(math.comb(n, i) for i in range(k)) / (1 << n)

    k = 1
    while k < (n + 1) // 2 and below(k + 1) <= 0.05:
        k += 1
    return ordered[k - 1], ordered[n - k], 1 - 2 * below(k)


def _write_config(work: Path, s3_url: str, wechat_url: str, concurrency: int | None) -> Path:
    """The bench's config file (state in the bucket, shared by all), with `concurrency`
    parts at once."""
    destination: dict[str, Any] = {"bucket": BUCKET, "region": "ap-guangzhou",
                                   "endpoint": s3_url, "anonymous": True, "prefix": "bench"}
    if concurrency:
        destination["part_concurrency"] = concurrency
    path = work / ("bench.yaml" if concurrency is None else f"bench-{concurrency}.yaml")
    path.write_text(yaml.safe_dump({
        "destination": destination,
        # the deployed default: state in the bucket (a local SQLite file would have the
        # finisher import SQLAlchemy, which a deployed one does not)
        "state": {"url": "cos://"},
        "timing": {"first_check_seconds": 0.1},
        # the race empties the bucket behind the finisher: no check of closed runs
        "verify": {"after_run": "off"},
        "sources": [{"type": "wechat", "name": "bench", "appid": APPID,
                     "secret": "${BENCH_SECRET}", "env": ENV_ID,
                     "collections": ["small", "big", "race"], "api_base": wechat_url}],
    }))
    return path


def _trust_as_packaged(bundle: Path) -> None:
    """The finishers (and this process) trust `bundle` split into a folder of CAs by subject
    hash, as the package's CAs are (scripts/build_package.py hash_cas), so that a cold
    start reads only the CA it needs, as deployed. rclone keeps the file (`--ca-cert`)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        raise SystemExit("--https needs an openssl command (Debian: apt-get install openssl)")
    folder = bundle.with_name("ca-certificates")
    shutil.rmtree(folder, ignore_errors=True)
    hash_cas(openssl, bundle, folder)
    os.environ.pop("SSL_CERT_FILE", None)
    os.environ["SSL_CERT_DIR"] = os.environ["REQUESTS_CA_BUNDLE"] = str(folder)


def _settle(config_path: Path, seconds: float) -> None:
    """Before each copy: an empty S3 server (it holds objects in memory, and one more
    large object there slowed whichever copy came second), then a pause. Back to back, the
    second of two identical `rclone copyurl` runs was 8-25% slower in every one of 5 pairs,
    although no process used the CPU between them (cause not found; moto's temporary files
    on disk, see main, are a candidate); after a 3 s pause the second was between 6% slower
    and 3% faster. Without it the pairs' ratios fell into two groups by who went first, and
    the median jumped between them from run to run."""
    _empty_bucket(config_path)
    time.sleep(seconds)


def _empty_bucket(config_path: Path) -> None:
    """Delete every object the race wrote (not the state), so each pair meets the same S3
    server."""
    objects = build_context(load_config(config_path)).objects
    for found in objects.list(""):
        if not found.key.startswith(STATE_PREFIX):
            objects.delete(found.key)


def _download_link(config_path: Path, job_id: str) -> str:
    """The export's signed download link, as the finisher would be given it."""
    ctx = build_context(load_config(config_path))
    job = ctx.state.get_job(job_id)
    assert job is not None and job.platform_job_id
    platform = ctx.platforms.get(job.source)
    return str(platform._file_url(job.platform_job_id))  # type: ignore[attr-defined]


def _wait_until_ready(config_path: Path, collections: list[str]) -> dict[str, str]:
    """Start a run of `collections` and poll until their exports are ready; nothing is
    copied here."""

    class Ignore:
        def dispatch(self, job_id: str) -> None:
            """The benchmark runs the finisher itself, in a process of its own."""

    ctx = build_context(load_config(config_path), dispatcher=Ignore())
    run, _ = start_run(ctx, idempotency_key=f"bench:{time.time()}", trigger="bench",
                       collections={"bench": collections})
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
