"""Verify finds every kind of damage to a backup in the bucket (COS on moto, through the
real SDK), names it, and exits non-zero; quick mode reads no object data."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from devkit.cos_layer import CosLayer
from devkit.sample_data import make_docs
from shared.adapters.cos.objects import CosObjectStore
from shared.domain.jobs import Job, JobStatus, Run, RunStatus, job_id_for
from shared.entrypoints.cli import main as cli
from tests.support.backup import LocalBackup, backup_now


@pytest.fixture
def backed_up(local: LocalBackup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Run, Path]:
    local.seed("orders", make_docs(50))
    local.seed("users", make_docs(7, prefix="u"))
    sources = [local.wechat_source(collections=["orders", "users"])]
    config = local.config(*sources)
    run = backup_now(local.context(config))
    return run, local.config_file(config, sources, tmp_path / "backup.yaml", monkeypatch)


def verify(path: Path, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, Any]]:
    code = cli(["--config", str(path), "verify", *args, "--json"])
    return code, json.loads(capsys.readouterr().out)


def orders_key(local: LocalBackup, run: Run) -> str:
    return next(o.key for o in local.objects.list(f"{local.destination.prefix}/runs/{run.run_id}/")
                if o.key.endswith("orders.jsonl"))


def test_an_intact_run_verifies(backed_up: tuple[Run, Path], capsys: pytest.CaptureFixture[str]) -> None:
    run, path = backed_up
    code, report = verify(path, capsys, "latest")
    assert code == 0 and report["ok"] and report["run_id"] == run.run_id
    assert sorted((o["collection"], o["records"]) for o in report["objects"]) == [("orders", 50), ("users", 7)]
    assert {o["crc64"] for o in report["objects"]} == {"ok"}  # recorded, and COS agrees
    assert cli(["--config", str(path), "verify"]) == 0  # the table, for a person
    assert "all backups verified: 2/2 objects ok" in capsys.readouterr().out


def _rewrite(local: LocalBackup, key: str, change: Callable[[bytes], bytes]) -> None:
    data = change(local.objects.read(key))
    local.objects.put_stream(key, [data], content_type="application/x-ndjson")


@pytest.mark.parametrize(("damage", "problem"), [
    ("flip", "sha256"),
    ("truncate", "size"),
    ("delete", "missing object"),
    ("manifest", "missing manifest"),
    ("count", "count"),
])
def test_damage_is_found_and_named(local: LocalBackup, backed_up: tuple[Run, Path],
                                   capsys: pytest.CaptureFixture[str], damage: str, problem: str) -> None:
    run, path = backed_up
    key = orders_key(local, run)
    if damage == "flip":
        _rewrite(local, key, lambda d: d[:100] + bytes([d[100] ^ 1]) + d[101:])
    elif damage == "truncate":
        _rewrite(local, key, lambda d: d[: len(d) // 2])
    elif damage == "delete":
        local.objects.delete(key)
    elif damage == "manifest":
        local.objects.delete(f"{key}.manifest.json")
    else:  # the manifest's count disagrees with the object
        manifest = json.loads(local.objects.read(f"{key}.manifest.json"))
        manifest["objects"][0]["records"] = 49
        local.objects.put_json(f"{key}.manifest.json", manifest)

    code, report = verify(path, capsys, run.run_id)

    assert code == 1 and not report["ok"]
    bad = [o for o in report["objects"] if not o["ok"]]
    assert [o["collection"] for o in bad] == ["orders"]
    assert problem in [p["what"] for p in bad[0]["problems"]]
    users = next(o for o in report["objects"] if o["collection"] == "users")
    assert users["ok"]


def test_quick_reads_no_object_data(local: LocalBackup, backed_up: tuple[Run, Path],
                                    capsys: pytest.CaptureFixture[str],
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    run, path = backed_up
    read: list[str] = []
    original = CosObjectStore.iter_read

    def spy(self: CosObjectStore, key: str, chunk_size: int = 1 << 20) -> Any:
        read.append(key)
        return original(self, key, chunk_size)

    monkeypatch.setattr(CosObjectStore, "iter_read", spy)
    _rewrite(local, orders_key(local, run), lambda d: d[:100] + bytes([d[100] ^ 1]) + d[101:])
    read.clear()

    code, report = verify(path, capsys, run.run_id, "--quick")

    # a flipped byte keeps the size, but COS's CRC64 of the object no longer matches
    assert code == 1 and report["quick"]
    bad = next(o for o in report["objects"] if o["collection"] == "orders")
    assert [p["what"] for p in bad["problems"]] == ["crc64"] and bad["records"] is None
    assert all(k.endswith(".json") for k in read), read  # manifests only, never an object
    _rewrite(local, orders_key(local, run), lambda d: d[:-10])
    code, report = verify(path, capsys, run.run_id, "--quick", "--collection", "orders")
    assert code == 1 and report["objects"][0]["problems"][0]["what"] == "size"


@pytest.mark.parametrize("collections", [["orders", "users"], []])
def test_with_no_run_named_the_latest_run_with_backups_is_checked(
        local: LocalBackup, backed_up: tuple[Run, Path], capsys: pytest.CaptureFixture[str],
        collections: list[str]) -> None:
    """A newer run that ended with no backup (every copy failed, or no source could be
    listed) is no reason to verify nothing: `verify` with no run named checks the latest
    run that has backups, and says which one it chose."""
    run, path = backed_up
    state = local.context(local.config(local.wechat_source())).state
    now = datetime.now(timezone.utc)
    failed = Run(run_id="29991231T000000000Z-0000fail", idempotency_key="all-failed",
                 trigger="test", status=RunStatus.FAILED, sources=["shop"], created_at=now,
                 finished_at=now)
    state.create_run(failed, [Job(
        job_id=job_id_for(failed.run_id, "shop", c), run_id=failed.run_id, source="shop",
        collection=c, status=JobStatus.FAILED, error="export refused", next_check_at=now,
        created_at=now, updated_at=now) for c in collections])

    code, report = verify(path, capsys, "latest")
    assert code == 0 and report["run_id"] == run.run_id
    assert cli(["--config", str(path), "verify"]) == 0
    said = capsys.readouterr()
    assert run.run_id in said.err and "all backups verified: 2/2 objects ok" in said.out


def test_nothing_to_verify_is_said(backed_up: tuple[Run, Path], capsys: pytest.CaptureFixture[str]) -> None:
    _, path = backed_up
    assert cli(["--config", str(path), "verify", "20200101T000000000Z-00000000"]) == 2
    assert "no run" in capsys.readouterr().err


def test_a_crc64_that_cos_disagrees_with_is_found_by_quick(
        local: LocalBackup, backed_up: tuple[Run, Path], capsys: pytest.CaptureFixture[str],
        cos_layer: CosLayer) -> None:
    run, path = backed_up
    cos_layer.corrupt_crc.add(orders_key(local, run))
    code, report = verify(path, capsys, run.run_id, "--quick")
    assert code == 1
    bad = next(o for o in report["objects"] if o["collection"] == "orders")
    assert bad["crc64"] == "mismatch" and bad["problems"][0]["what"] == "crc64"


def test_a_manifest_from_before_crc64_says_so_and_passes(
        local: LocalBackup, backed_up: tuple[Run, Path], capsys: pytest.CaptureFixture[str]) -> None:
    run, path = backed_up
    manifest_key = f"{orders_key(local, run)}.manifest.json"
    manifest = json.loads(local.objects.read(manifest_key))
    for item in manifest["objects"]:
        item.pop("crc64", None)
    local.objects.put_json(manifest_key, manifest)
    code, report = verify(path, capsys, run.run_id)
    assert code == 0
    assert next(o for o in report["objects"] if o["collection"] == "orders")["crc64"] == "not recorded"


def test_verify_of_one_collection_checks_the_latest_run_that_backed_it_up(
        local: LocalBackup, backed_up: tuple[Run, Path], capsys: pytest.CaptureFixture[str]) -> None:
    """A newer run that backed up only users is not the run to verify orders in: `verify
    --collection orders` with no run named checks the latest run holding a backup of
    orders; a source/collection no run holds is refused in one line, exit 2."""
    run, path = backed_up
    users_only = backup_now(local.context(local.config(local.wechat_source(collections=["users"]))),
                            key="users-only")
    assert users_only.run_id > run.run_id

    code, report = verify(path, capsys, "--source", "shop", "--collection", "orders")
    assert code == 0 and report["run_id"] == run.run_id
    assert [(o["collection"], o["records"]) for o in report["objects"]] == [("orders", 50)]
    code, report = verify(path, capsys, "--collection", "users")
    assert code == 0 and report["run_id"] == users_only.run_id

    assert cli(["--config", str(path), "verify", "--source", "shop", "--collection", "gone"]) == 2
    said = capsys.readouterr().err.strip().splitlines()
    assert len(said) == 1 and said[0].startswith("baas-backup verify: ") and "shop/gone" in said[0]


def test_a_run_still_running_is_not_verified_into_a_false_alarm(
        local: LocalBackup, backed_up: tuple[Run, Path], capsys: pytest.CaptureFixture[str]) -> None:
    """A run still running has no run manifest yet (it is written as the run closes):
    verifying it would report "the run manifest is missing" and send that as an alert.
    It is refused in one line, exit 2, and nothing is kept on the run."""
    run, path = backed_up
    state = local.context(local.config(local.wechat_source())).state
    now = datetime.now(timezone.utc)
    running = Run(run_id="29991231T000000000Z-00000run", idempotency_key="still-running",
                  trigger="test", status=RunStatus.RUNNING, sources=["shop"], created_at=now)
    done = next(j for j in state.list_jobs(run.run_id) if j.collection == "orders")
    state.create_run(running, [done.model_copy(update={
        "job_id": job_id_for(running.run_id, "shop", "orders"), "run_id": running.run_id})])

    assert cli(["--config", str(path), "verify", running.run_id]) == 2
    said = capsys.readouterr().err.strip().splitlines()
    assert len(said) == 1 and "still running" in said[0] and running.run_id in said[0], said
    kept = state.get_run(running.run_id)
    assert kept is not None and not (kept.summary or {}).get("last_verify")
    assert "verify" not in kept.undelivered


@pytest.mark.parametrize("which", ["run", "job"])
@pytest.mark.parametrize("content", [b"{\"jobs\": [", b"[]"])
def test_a_manifest_that_is_not_a_json_object_is_named_not_a_crash(
        local: LocalBackup, backed_up: tuple[Run, Path], capsys: pytest.CaptureFixture[str],
        which: str, content: bytes) -> None:
    """A damaged manifest (cut short, or JSON that is not an object) is damage verify is
    there to find: named as `missing manifest`, exit 1, not a traceback."""
    run, path = backed_up
    key = (f"{local.destination.prefix}/runs/{run.run_id}/run-manifest.json" if which == "run"
           else f"{orders_key(local, run)}.manifest.json")
    assert local.objects.head(key) is not None, key
    local.objects.put_stream(key, [content], content_type="application/json")

    code, report = verify(path, capsys, run.run_id)

    assert code == 1 and not report["ok"]
    named = report["problems"] + [p for o in report["objects"] for p in o["problems"]]
    assert [p["where"] for p in named if p["what"] == "missing manifest"] == [key], named
    assert sorted(o["collection"] for o in report["objects"]) == ["orders", "users"]
