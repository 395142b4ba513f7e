"""Builds build/package, what serverless.yml deploys to SCF, and zips it.

The runtime dependencies are installed as CPython 3.10 manylinux x86_64 wheels
whatever Python runs this; each handler goes to the package root as `<function>.py`,
since SCF wants `file.function` with no folder in it.

    scripts/package [--config backup.yaml]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / "build"
PACKAGE = BUILD / "package"


# Published as a source package only; it falls back to pure Python when its C
# extension does not load, so building it here is safe for any target.
SOURCE_ONLY = {"crcmod"}
# SQLAlchemy needs greenlet only for asyncio, which the functions do not use.
NOT_NEEDED = {"greenlet"}
TARGET = {"python_version": "3.10", "sys_platform": "linux", "platform_system": "Linux",
          "platform_machine": "x86_64", "implementation_name": "cpython"}


def pinned_runtime_closure(project: str = "baas-backup") -> list[str]:
    """`name==version` for every runtime dependency, as tested in this environment."""
    pins: dict[str, str] = {}
    pending = [Requirement(r) for r in distribution(project).requires or []]
    while pending:
        requirement = pending.pop()
        if requirement.marker and not requirement.marker.evaluate({**TARGET, "extra": ""}):
            continue
        name = requirement.name.lower().replace("_", "-")
        if name in pins or name in NOT_NEEDED:
            continue
        try:
            dist = distribution(requirement.name)
        except PackageNotFoundError:
            raise SystemExit(f"{requirement.name} is not installed; run scripts/setup first") from None
        pins[name] = dist.version
        pending.extend(Requirement(r) for r in dist.requires or [])
    return sorted(f"{name}=={version}" for name, version in pins.items())


def pip_install(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                    "--target", str(PACKAGE), *args], check=True)


def build(config: Path | None) -> Path:
    shutil.rmtree(PACKAGE, ignore_errors=True)
    PACKAGE.mkdir(parents=True)
    pins = pinned_runtime_closure()
    wheels = [p for p in pins if p.split("==")[0] not in SOURCE_ONLY]
    pip_install("--platform", "manylinux2014_x86_64", "--implementation", "cp",
                "--python-version", "3.10", "--only-binary=:all:", *wheels)
    pip_install(*(p for p in pins if p.split("==")[0] in SOURCE_ONLY))
    shutil.copytree(ROOT / "shared", PACKAGE / "shared",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for handler in sorted((ROOT / "functions").glob("*/index.py")):
        shutil.copy(handler, PACKAGE / f"{handler.parent.name}.py")
    if config:
        shutil.copy(config, PACKAGE / "backup.yaml")
    archive = shutil.make_archive(str(BUILD / "baas-backup"), "zip", PACKAGE)
    return Path(archive)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", type=Path, help="config file shipped as backup.yaml")
    args = parser.parse_args()
    archive = build(args.config)
    print(f"{PACKAGE} ready; {archive.name}: {archive.stat().st_size / 1e6:.1f} MB zipped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
