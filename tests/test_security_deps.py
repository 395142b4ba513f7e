"""Dependency floors exclude versions with known advisories, and one lock file of the
tested versions is what setup installs and what the SCF package is pinned from."""

from __future__ import annotations

import re
from importlib.metadata import distribution, version
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from scripts.build_package import NOT_NEEDED, RUNTIME_LOCK, pinned_runtime_closure

ROOT = Path(__file__).resolve().parent.parent
DEV_LOCK = ROOT / "requirements" / "dev.lock"


def pins(lock: Path) -> dict[str, str]:
    found = {}
    for line in lock.read_text(encoding="utf-8").splitlines():
        match = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)", line)
        if match:
            found[match.group(1).lower().replace("_", "-")] = match.group(2)
    return found


def declared() -> dict[str, Requirement]:
    requirements = (Requirement(r) for r in distribution("baas-backup").requires or [])
    return {r.name.lower(): r for r in requirements if not r.marker}


@pytest.mark.parametrize(("name", "vulnerable"), [
    ("orjson", "3.9.14"),  # CVE-2024-27454
    ("pymysql", "1.1.0"),  # CVE-2024-36039
    ("h11", "0.14.0"),  # CVE-2025-43859
])
def test_floors_exclude_versions_with_advisories(name: str, vulnerable: str) -> None:
    requirement = declared()[name]
    assert not requirement.specifier.contains(vulnerable), requirement
    assert requirement.specifier.contains(pins(RUNTIME_LOCK)[name])


def test_the_locks_satisfy_the_project_and_agree() -> None:
    runtime, dev = pins(RUNTIME_LOCK), pins(DEV_LOCK)
    for name, requirement in declared().items():
        assert requirement.specifier.contains(runtime[name]), f"{name}: runtime.lock is stale"
    assert {n: v for n, v in dev.items() if n in runtime} == runtime
    assert all("--hash=sha256:" in block for block in
               DEV_LOCK.read_text(encoding="utf-8").split("\n\n") if "==" in block)


def test_this_environment_is_the_lock() -> None:
    for name, pinned in pins(RUNTIME_LOCK).items():
        assert version(name) == pinned, f"{name}: installed {version(name)}, locked {pinned}"


def test_the_package_is_pinned_from_the_runtime_lock() -> None:
    package = dict(p.split("==") for p in pinned_runtime_closure())
    runtime = pins(RUNTIME_LOCK)
    assert package.items() <= runtime.items()
    assert not set(package) & NOT_NEEDED
    assert {"httpx", "h11", "orjson", "pymysql", "cos-python-sdk-v5"} <= set(package)
