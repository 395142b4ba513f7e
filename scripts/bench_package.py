"""Size of the SCF package and each handler's cold start.

Builds the package (or takes the last build with --reuse), unzips the zip into a temp
folder as SCF does, and starts each handler in fresh `python3.10 -I` processes with only
that folder (and the standard library) on sys.path and bytecode writing off (-B: SCF's
code folder is read-only). The baseline is an empty interpreter started the same way in
the same run (`-c pass`); the references are the import of pydantic's BaseModel alone,
and one pydantic model (a class with one constrained field, validated once): every
handler needs at least that (the floor under the import). Measured inside the process:

- "import": importing the handler module (issue 15's figure: wall clock, and the CPU time
  it used, which other load on the machine disturbs less);
- "ready": import, then everything a cold invocation of that handler loads before its
  first network request with the deployed default config (COS state and bucket, one
  WeChat source): the config file read and validated, the COS SDK's client, the COS state
  store, the platform's client module and a first HTTP client, the handler's use case
  and the job models built.
  Handlers import some of this on first use rather than at import (shared/entrypoints/
  scf.py), so "ready" is the honest total; it is reported, not held to the target.

"process" is the whole start-to-exit time of an import-only process, "over baseline" is
process minus the baseline's process time.

- "(collector on)": with `--collector-on`, the handlers again with their pause of the
  garbage collector during the cold start undone (shared/entrypoints/coldstart.py), for
  comparison in the same run.
- "(CA bundle)": with `--ca-bundle`, the handlers again trusting certifi's whole bundle
  ($SSL_CERT_FILE) instead of the package's CA folder (shared/adapters/tls.py).

    scripts/bench package [--runs 7] [--reuse] [--source-only] [--collector-on] [--ca-bundle]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

from scripts.build_package import ARCHIVE, HANDLERS, build, find_python310, isolated_python

LIMIT_MB = 15.0
LIMIT_MS = 200.0  # issue 15: cold import <= 200 ms per handler

# The floor under every handler: the config, the state's records and the services are
# pydantic models, and `from pydantic import BaseModel` imports pydantic.main. Defining a
# model with a field imports more of pydantic (pydantic.fields, whose pydantic.types
# imports annotated_types) and builds its validator: FLOOR is that much and no more.
REFERENCE = "pydantic.main alone"
FLOOR = "one pydantic model"
FLOOR_MODULE = "pydantic_floor"
FLOOR_SOURCE = """
from pydantic import BaseModel, Field


class Floor(BaseModel):
    parts: int = Field(default=4, ge=1)


Floor.model_validate({"parts": 8})
"""
# Variants of a handler measured in the same turns, marked after its name:
COLLECTOR_ON = "+collector-on"  # the handler's pause of the collector undone
CA_BUNDLE = "+ca-bundle"  # certifi's whole bundle trusted, not the package's CA folder
# Each handler's use case, loaded by its first invocation (shared/entrypoints/scf.py).
USE_CASES = {"trigger": "shared.service.start", "poller": "shared.service.poll",
             "finisher": "shared.service.finish"}
# The deployed default: state in the bucket (cos://), one WeChat source. Nothing is sent.
READY_CONFIG = """
destination: {bucket: bench-1250000000, region: ap-guangzhou, secret_id: "${ID}", secret_key: "${KEY}"}
sources: [{type: wechat, name: shop, appid: wx00000000000be4c4, secret: "${WECHAT_SECRET}", env: prod, collections: all}]
"""

# Runs in the child: only the package and the standard library on sys.path.
PROBE = """
import importlib, os, sys, time
package, module, use_case, collector = sys.argv[1:5]
sys.path[:] = [package] + [p for p in sys.path if p and "site-packages" not in p]
if collector == "on":  # for comparison: the handler's pause of the collector undone
    import gc
    gc.disable = lambda: None
started, cpu = time.perf_counter(), time.process_time()
if module != "-":
    __import__(module)
imported, imported_cpu = time.perf_counter(), time.process_time()
if module != "-" and use_case != "-":
    os.environ.update(ID="AKIDbench", KEY="bench-key", WECHAT_SECRET="bench-secret")
    from shared.adapters.cos.client import cos_client
    from shared.config import load_config
    from shared.domain.jobs import Job, Run
    from shared.platforms import registry

    config = load_config("ready.yaml")
    cos_client(config.destination)
    importlib.import_module("shared.adapters.cos.state")
    importlib.import_module(str(registry.entry("wechat").factory).partition(":")[0])
    from shared.adapters.http import make_client

    make_client()  # the first HTTP client: httpcore, h11 and the TLS context
    importlib.import_module(use_case)
    Job.model_rebuild()
    Run.model_rebuild()
    from shared.entrypoints.coldstart import resume

    resume()  # as the first invocation does once its context is built
ready = time.perf_counter()
print((imported - started) * 1000, (imported_cpu - cpu) * 1000, (ready - started) * 1000)
"""


Times = tuple[list[float], list[float], list[float], list[float]]


def measure(python: str, package: Path, modules: list[str], runs: int) -> list[Times]:
    """Per module: wall-clock import times, CPU times of the same imports, whole-process
    wall times of import-only processes, and "ready" times (import and what the first
    invocation loads). The modules take turns, run after run, so a slow stretch of the
    machine falls on all of them rather than on whichever was being measured."""
    times: list[Times] = [([], [], [], []) for _ in modules]
    env = {"PATH": os.environ.get("PATH", "")}

    def probe(module: str, use_case: str) -> list[str]:
        module, variant = _variant(module)
        bundle = {"SSL_CERT_FILE": str(package / "certifi" / "cacert.pem")} if variant == CA_BUNDLE else {}
        return subprocess.run([python, "-I", "-B", "-c", PROBE, str(package), module, use_case,
                               "on" if variant == COLLECTOR_ON else "paused"],
                              check=True, capture_output=True, text=True, cwd=package,
                              env={**env, **bundle}).stdout.strip().splitlines()[-1].split()

    for _ in range(runs):
        for module, (imports, cpu, processes, ready) in zip(modules, times, strict=True):
            started = time.perf_counter()
            wall, used, _ = probe(module, "-")
            processes.append((time.perf_counter() - started) * 1000)
            imports.append(float(wall))
            cpu.append(float(used))
            use_case = USE_CASES.get(_variant(module)[0])
            if use_case:
                ready.append(float(probe(module, use_case)[2]))
    return times


def _variant(module: str) -> tuple[str, str]:
    """(the module, its variant's marker or "")."""
    for marker in (COLLECTOR_ON, CA_BUNDLE):
        if module.endswith(marker):
            return module.removesuffix(marker), marker
    return module, ""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=7, help="fresh processes per handler")
    parser.add_argument("--reuse", action="store_true", help="measure the last build/baas-backup.zip")
    parser.add_argument("--source-only", action="store_true",
                        help="also measure without the shipped bytecode, for comparison")
    parser.add_argument("--collector-on", action="store_true",
                        help="also measure the handlers without their pause of the garbage "
                             "collector, for comparison")
    parser.add_argument("--ca-bundle", action="store_true",
                        help="also measure the handlers trusting certifi's whole bundle instead "
                             "of the package's CA folder, for comparison")
    args = parser.parse_args()
    python = find_python310()
    if python is None:
        raise SystemExit("no Python 3.10 here; SCF runs 3.10, so the times would mean little")
    python = isolated_python(python)
    if not (args.reuse and ARCHIVE.exists()):
        build()
    zipped_mb = ARCHIVE.stat().st_size / 1e6
    with tempfile.TemporaryDirectory(prefix="scf-code-") as tmp:
        package = Path(tmp)
        with zipfile.ZipFile(ARCHIVE) as archive:
            archive.extractall(package)
            unzipped_mb = sum(i.file_size for i in archive.infolist()) / 1e6
        (package / "ready.yaml").write_text(READY_CONFIG)
        (package / f"{FLOOR_MODULE}.py").write_text(FLOOR_SOURCE)
        labels = ["baseline (-c pass)", REFERENCE, FLOOR, *HANDLERS]
        modules = ["-", "pydantic.main", FLOOR_MODULE, *HANDLERS]
        if args.collector_on:  # in the same turns as the rest
            labels += [f"{name} (collector on)" for name in HANDLERS]
            modules += [f"{name}{COLLECTOR_ON}" for name in HANDLERS]
        if args.ca_bundle:
            labels += [f"{name} (CA bundle)" for name in HANDLERS]
            modules += [f"{name}{CA_BUNDLE}" for name in HANDLERS]
        rows = [(label, *times) for label, times in zip(
            labels, measure(python, package, modules, args.runs), strict=True)]
        if args.source_only:
            for pyc in package.rglob("*.pyc"):
                pyc.unlink()
            rows += [(f"{name} (no .pyc)", *times) for name, times in zip(
                HANDLERS, measure(python, package, list(HANDLERS), max(3, args.runs // 2)), strict=True)]
    print(f"package: {ARCHIVE.name} {zipped_mb:.1f} MB zipped (limit {LIMIT_MB:g} MB), "
          f"{unzipped_mb:.1f} MB unzipped")
    print(f"python: {python} -I -B, {args.runs} fresh processes each; medians (min)")
    baseline = statistics.median(rows[0][3])
    print(f"{'':24} {'import ms':>16} {'import cpu ms':>14} {'process ms':>16} {'over baseline':>14}"
          f" {'ready ms':>16}")
    report: list[dict[str, float | str]] = []
    slow = []
    for name, imports, cpu, processes, ready in rows:
        over = statistics.median(processes) - baseline
        ready_ms = statistics.median(ready) if ready else 0.0
        print(f"{name:24} {statistics.median(imports):9.0f} ({min(imports):4.0f}) "
              f"{statistics.median(cpu):14.0f} "
              f"{statistics.median(processes):9.0f} ({min(processes):4.0f}) {over:14.0f}"
              + (f" {ready_ms:9.0f} ({min(ready):4.0f})" if ready else ""))
        report.append({"name": name, "import_ms": round(statistics.median(imports), 1),
                       "import_cpu_ms": round(statistics.median(cpu), 1),
                       "process_ms": round(statistics.median(processes), 1),
                       "over_baseline_ms": round(over, 1), "ready_ms": round(ready_ms, 1)})
        if name in HANDLERS and statistics.median(imports) > LIMIT_MS:
            slow.append(name)
    floor = statistics.median(rows[2][1])
    print(f"{FLOOR} (a class with one field, validated once) takes {floor:.0f} ms of each "
          "handler's import; the rest: " + ", ".join(
              f"{r['name']} {float(r['import_ms']) - floor:.0f} ms" for r in report
              if r["name"] in HANDLERS))
    print(json.dumps({"zip_mb": round(zipped_mb, 2), "rows": report}))
    if zipped_mb > LIMIT_MB or slow:
        print(f"over target: {'zip size' if zipped_mb > LIMIT_MB else ''} {' '.join(slow)}".strip(),
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
