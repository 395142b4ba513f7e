"""One finisher invocation as SCF makes it, in a fresh process of its own: the deployed
handler (functions/finisher/index.py) is loaded and called with `{"job_id": ...}`, and
nothing else is imported before it, so the process pays what a cold finisher pays.
Prints a marker line the moment the handler returns, then one JSON line: the outcome,
bytes stored, the job's error, peak RSS, the seconds of the handler's call and the CPU
seconds (user and system, all threads) used until it returned.

With PACKAGE (the built SCF package's folder, scripts/build_package.py), the handler and
everything it imports come from that folder alone, as on SCF; run it then with the
package's Python 3.10 as `python3.10 -I -B scripts/finisher_child.py ...`.

With `--warm-with EARLIER_JOB_ID`, the process is a warm instance: SCF keeps an instance
for the next invocation, so in a run of many collections most copies find one. The
handler first finishes EARLIER_JOB_ID, untimed; the timed call is the second, and the
line also gives its wall-clock start (`began_at`), for the caller's clock.

    python -m scripts.finisher_child --child CONFIG JOB_ID [PACKAGE] [--warm-with EARLIER_JOB_ID]
"""

from __future__ import annotations

import importlib.util
import json
import os
import resource
import sys
import time
from pathlib import Path

HANDLER = Path(__file__).resolve().parent.parent / "functions" / "finisher" / "index.py"
RETURNED = "-- the handler returned --"  # printed the moment it does, for the parent's clock


def cpu_seconds() -> float:
    used = resource.getrusage(resource.RUSAGE_SELF)
    return used.ru_utime + used.ru_stime


def peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(config_path: str, job_id: str, package: str | None = None,
         warm_with: str | None = None) -> None:
    handler_path = HANDLER
    if package:  # only the package and the standard library, as SCF sees them
        sys.path[:] = [package] + [p for p in sys.path if p and "site-packages" not in p]
        handler_path = Path(package) / "finisher.py"
    os.environ["BAAS_BACKUP_CONFIG"] = config_path
    spec = importlib.util.spec_from_file_location("index", handler_path)
    assert spec is not None and spec.loader is not None
    handler = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(handler)
    if warm_with is not None:
        earlier = handler.main_handler({"job_id": warm_with}, None)
        if earlier.get("outcome") != "done":
            raise SystemExit(f"the warm-up invocation ended {earlier!r}")
    # CPU since the process started (cold), or since the timed call did (warm)
    cpu_before = cpu_seconds() if warm_with is not None else 0.0
    called, began_at = time.perf_counter(), time.time()
    answer = handler.main_handler({"job_id": job_id}, None)
    returned = time.perf_counter()
    print(RETURNED, flush=True)
    cpu = cpu_seconds() - cpu_before

    from shared.bootstrap import build_context  # after the clock: only to read the job
    from shared.config import load_config

    job = build_context(load_config(config_path)).state.get_job(job_id)
    assert job is not None
    print(json.dumps({"outcome": answer.get("outcome"), "peak_rss_mb": peak_rss_mb(),
                      "invocation_s": returned - called, "began_at": began_at, "cpu_s": cpu,
                      "bytes": job.result.bytes if job.result else 0, "error": job.error}))


if __name__ == "__main__":
    # No argparse: whatever this process imports before the handler, the handler's cold
    # start would find loaded already.
    arguments = sys.argv[1:]
    warm = None
    if arguments[-2:-1] == ["--warm-with"]:
        warm, arguments = arguments[-1], arguments[:-2]
    if arguments[:1] != ["--child"] or len(arguments) not in (3, 4):
        raise SystemExit("usage: python -m scripts.finisher_child --child CONFIG JOB_ID [PACKAGE] "
                         "[--warm-with EARLIER_JOB_ID]")
    config, job, *package = arguments[1:]
    main(config, job, package[0] if package else None, warm_with=warm)
