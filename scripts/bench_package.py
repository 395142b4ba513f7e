"""Size of the SCF package and each handler's cold import time.

Builds the package (or takes the last build with --reuse), unzips the zip into a temp
folder as SCF does, and imports each handler in fresh `python3.10 -I` processes with only
that folder (and the standard library) on sys.path and bytecode writing off (-B: SCF's
code folder is read-only). The baseline is an empty interpreter started the same way in
the same run (`-c pass`): "import" is measured inside the process (wall clock, and the
CPU time it used, which other load on the machine disturbs less), "process" is the whole
start-to-exit time, "over baseline" is process minus the baseline's process time.

    scripts/bench package [--runs 7] [--reuse] [--source-only]
"""

from __future__ import annotations

import argparse
import json
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

# Runs in the child: only the package and the standard library on sys.path.
PROBE = """
import sys, time
package = sys.argv[1]
sys.path[:] = [package] + [p for p in sys.path if p and "site-packages" not in p]
started, cpu = time.perf_counter(), time.process_time()
if sys.argv[2] != "-":
    __import__(sys.argv[2])
print((time.perf_counter() - started) * 1000, (time.process_time() - cpu) * 1000)
"""


def measure(python: str, package: Path, module: str, runs: int) -> tuple[list[float], list[float], list[float]]:
    """Wall-clock import times, CPU times of the same imports, whole-process wall times."""
    imports, cpu, processes = [], [], []
    for _ in range(runs):
        started = time.perf_counter()
        out = subprocess.run([python, "-I", "-B", "-c", PROBE, str(package), module],
                             check=True, capture_output=True, text=True, cwd=package).stdout
        processes.append((time.perf_counter() - started) * 1000)
        wall, used = out.strip().splitlines()[-1].split()
        imports.append(float(wall))
        cpu.append(float(used))
    return imports, cpu, processes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=7, help="fresh processes per handler")
    parser.add_argument("--reuse", action="store_true", help="measure the last build/baas-backup.zip")
    parser.add_argument("--source-only", action="store_true",
                        help="also measure without the shipped bytecode, for comparison")
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
        rows = [("baseline (-c pass)", *measure(python, package, "-", args.runs))]
        rows += [(name, *measure(python, package, name, args.runs)) for name in HANDLERS]
        if args.source_only:
            for pyc in package.rglob("*.pyc"):
                pyc.unlink()
            rows += [(f"{name} (no .pyc)", *measure(python, package, name, max(3, args.runs // 2)))
                     for name in HANDLERS]
    print(f"package: {ARCHIVE.name} {zipped_mb:.1f} MB zipped (limit {LIMIT_MB:g} MB), "
          f"{unzipped_mb:.1f} MB unzipped")
    print(f"python: {python} -I -B, {args.runs} fresh processes each; medians (min)")
    baseline = statistics.median(rows[0][3])
    print(f"{'':24} {'import ms':>16} {'import cpu ms':>14} {'process ms':>16} {'over baseline':>14}")
    report: list[dict[str, float | str]] = []
    slow = []
    for name, imports, cpu, processes in rows:
        over = statistics.median(processes) - baseline
        print(f"{name:24} {statistics.median(imports):9.0f} ({min(imports):4.0f}) "
              f"{statistics.median(cpu):14.0f} "
              f"{statistics.median(processes):9.0f} ({min(processes):4.0f}) {over:14.0f}")
        report.append({"name": name, "import_ms": round(statistics.median(imports), 1),
                       "import_cpu_ms": round(statistics.median(cpu), 1),
                       "process_ms": round(statistics.median(processes), 1),
                       "over_baseline_ms": round(over, 1)})
        if name in HANDLERS and statistics.median(imports) > LIMIT_MS:
            slow.append(name)
    print(json.dumps({"zip_mb": round(zipped_mb, 2), "rows": report}))
    if zipped_mb > LIMIT_MB or slow:
        print(f"over target: {'zip size' if zipped_mb > LIMIT_MB else ''} {' '.join(slow)}".strip(),
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
