"""COS storage classes through the real SDK (the test server's COS layer maps them onto
moto's, which refuses to read an archived object just as COS does): new backups in a
chosen class, kept backups moved to a cold class by retention, verify handling both."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import pytest

from devkit.sample_data import make_docs
from shared.adapters.cos.objects import CosObjectStore
from shared.config import Config, ConfigError, Destination
from shared.domain.errors import StorageError
from shared.domain.jobs import Run, RunStatus
from shared.entrypoints.cli import main as cli
from shared.ports import ObjectInfo
from shared.service.context import Context
from shared.service.holds import claim
from shared.service.prune import prune
from shared.service.restore.plan import RestoreRefused, plan_restore, start_restore
from tests.support.backup import ENV_ID, LocalBackup, backup_now, drive
from tests.support.cos import S3Requests


def configured(local: LocalBackup, destination: dict[str, Any] | None = None,
               **retention: Any) -> Config:
    sections: dict[str, Any] = {"destination": destination or {}}
    if retention:
        sections["retention"] = retention
    return local.config(local.wechat_source(collections=["orders", "users"]), sections=sections)


def test_new_backups_go_in_the_chosen_class_and_manifests_stay_standard(local: LocalBackup) -> None:
    local.seed("orders", make_docs(30))
    local.seed("users", make_docs(3, prefix="u"))
    run = backup_now(local.context(configured(local, {"storage_class": "STANDARD_IA"})))
    classes = {}
    for info in local.objects.list(f"{local.destination.prefix}/runs/{run.run_id}/"):
        head = local.objects.head(info.key)
        assert head is not None
        classes[info.key.rsplit("/", 1)[-1]] = head.storage_class
    assert classes["orders.jsonl"] == classes["users.jsonl"] == "STANDARD_IA"
    assert classes["orders.jsonl.manifest.json"] == "STANDARD"
    assert classes["run-manifest.json"] == "STANDARD"


def test_new_backups_cannot_be_archived_at_once(local: LocalBackup) -> None:
    with pytest.raises(ConfigError, match=r"retention\.cold_after_days"):
        configured(local, {"storage_class": "ARCHIVE"})


@pytest.mark.parametrize(("new_class", "retention", "message"), [
    # without cold_after_days nothing ever moves: the class written would be ignored
    ({}, {"cold_storage_class": "DEEP_ARCHIVE"},
     r"retention: cold_storage_class .*DEEP_ARCHIVE.* moves nothing without cold_after_days"),
    # the class every object starts in is no colder: nothing would ever move
    ({}, {"cold_after_days": 30, "cold_storage_class": "STANDARD"},
     r"retention: cold_storage_class .*STANDARD.* is not a colder class"),
    ({"storage_class": "STANDARD_IA"}, {"cold_after_days": 30, "cold_storage_class": "STANDARD_IA"},
     r"retention\.cold_storage_class: .*STANDARD_IA.* new backups are written in already"),
])
def test_a_cold_class_that_would_move_nothing_is_a_config_error(
        local: LocalBackup, new_class: dict[str, Any], retention: dict[str, Any],
        message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        configured(local, new_class, keep_last=5, **retention)


def test_kept_backups_move_to_the_cold_class_and_verify_says_how_to_read_them(
        local: LocalBackup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    local.seed("orders", make_docs(30))
    local.seed("users", make_docs(3, prefix="u"))
    plain = configured(local)
    run = backup_now(local.context(plain))
    time.sleep(1.2)
    cold = configured(local, keep_last=5, cold_after_days=1 / 86400)  # older than a second

    prune(local.context(cold))

    data = [i.key for i in local.objects.list(f"{local.destination.prefix}/runs/{run.run_id}/")
            if not i.key.endswith(".json")]
    assert len(data) == 2
    for key in data:
        head = local.objects.head(key)
        assert head is not None and head.storage_class == "ARCHIVE"
        with pytest.raises(StorageError):  # an archived object cannot be read, as on COS
            local.objects.read(key)
    record = json.loads(local.objects.read(local.objects.list(
        f"{local.destination.prefix}/prunes/")[0].key))
    assert sorted(record["moved_to_cold"]) == sorted(data)
    again = local.context(cold)
    heads: list[str] = []
    head_of = again.objects.head

    def counted(key: str) -> ObjectInfo | None:
        heads.append(key)
        return head_of(key)

    again.objects.head = counted  # type: ignore[method-assign]
    prune(again)  # again: nothing left to move (the run's listing says so), nothing breaks
    assert heads == []

    path = local.config_file(cold, [local.wechat_source(collections=["orders", "users"])],
                             tmp_path / "backup.yaml", monkeypatch)
    assert cli(["--config", str(path), "verify", run.run_id, "--quick"]) == 0
    capsys.readouterr()
    # A full verify cannot read them: not read, said why; not a problem (README "Verifying")
    assert cli(["--config", str(path), "verify", run.run_id, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] and [p for o in report["objects"] for p in o["problems"]] == []
    assert sorted(report["not_read"]) == ["shop/orders", "shop/users"]
    reasons = {o["not_read"] for o in report["objects"]}
    assert len(reasons) == 1 and "restore from the archive class first" in reasons.pop()
    assert cli(["--config", str(path), "verify", run.run_id]) == 0
    assert "2 not read (archived" in capsys.readouterr().out


@pytest.mark.parametrize("recorded", [True, False])
def test_a_backup_a_restore_is_reading_is_not_moved_to_the_cold_class(
        local: LocalBackup, recorded: bool) -> None:
    """Retention keeps a backup a restore reads, and must not archive it under the restore
    either: the restore's finisher reads the objects after the prune, and an archived
    object cannot be read. A restore holds its backup from its claim on (holds.py), so
    one claimed but not yet recorded is spared too."""
    local.seed("orders", make_docs(30))
    local.seed("users", make_docs(3, prefix="u"))
    plain = configured(local)
    ctx = local.context(plain)
    run = backup_now(ctx)
    plan = plan_restore(ctx, run.run_id, "shop", "orders")
    if recorded:
        restore, _ = start_restore(ctx, plan, idempotency_key="reading", trigger="test")
    else:  # claimed, its run about to be recorded (holds.RECORDING_WITHIN)
        claim(ctx, run.run_id, [plan.order.backup_job_id], "20990101T000000000Z-0000restore")
    time.sleep(1.2)
    cold = configured(local, keep_last=5, cold_after_days=1 / 86400)  # older than a second

    prune(local.context(cold))

    for obj in plan.order.objects:  # the restore's backup: still readable
        head = local.objects.head(obj.key)
        assert head is not None and head.storage_class != "ARCHIVE", obj.key
    users = [i.key for i in local.objects.list(f"{local.destination.prefix}/runs/{run.run_id}/")
             if i.key.endswith("users.jsonl")]
    assert users and all(local.objects.head(k).storage_class == "ARCHIVE"  # type: ignore[union-attr]
                         for k in users)  # the other backups are still moved
    if recorded:
        finished = drive(ctx, restore)
        assert finished.status is RunStatus.SUCCEEDED
        assert len(local.emulator.docs(ENV_ID, plan.order.target)) == 30


# retention's move to the cold class racing a restore -------------------------------
# As for deleting (tests/test_prune.py): each side has its own context, and the restore's
# step runs at the exact point of the prune named, through a wrapped call.
@pytest.fixture(params=["sqlite", "cos"])
def racing(request: pytest.FixtureRequest, local: LocalBackup) -> LocalBackup:
    return local if request.param == "sqlite" else dataclasses.replace(local, state_url="cos://")


def cooled_soon(local: LocalBackup, cold_class: str = "ARCHIVE") -> tuple[Config, Run]:
    """One backup run, and a policy that keeps it and moves it to `cold_class` at the next
    prune."""
    local.seed("orders", make_docs(30))
    local.seed("users", make_docs(3, prefix="u"))
    run = backup_now(local.context(configured(local)))
    time.sleep(1.2)
    return configured(local, keep_last=5, cold_after_days=1 / 86400,
                      cold_storage_class=cold_class), run


def restores(ctx: Context) -> list[Run]:
    return [r for r in ctx.state.list_runs() if r.operation == "restore"]


def orders_storage_class(local: LocalBackup, run: Run) -> str:
    (key,) = [i.key for i in local.objects.list(f"{local.destination.prefix}/runs/{run.run_id}/")
              if i.key.endswith("orders.jsonl")]
    head = local.objects.head(key)
    assert head is not None
    return head.storage_class


def test_a_restore_planned_before_its_backup_moved_to_the_cold_class_is_refused_at_start(
        racing: LocalBackup) -> None:
    """Checked and shown to the user, then a prune moves the backup to ARCHIVE, then the
    user says go: refused up front (409, archived), nothing recorded that could not read it."""
    cold, run = cooled_soon(racing)
    restorer = racing.context(cold)
    plan = plan_restore(restorer, run.run_id, "shop", "orders")
    prune(racing.context(cold))
    assert orders_storage_class(racing, run) == "ARCHIVE"

    with pytest.raises(RestoreRefused, match="archived") as refused:
        start_restore(restorer, plan, idempotency_key="reading", trigger="test")
    assert refused.value.status == 409
    assert restores(restorer) == []


def test_a_restore_asked_for_while_retention_moves_its_backup_to_the_cold_class_is_refused(
        racing: LocalBackup, monkeypatch: pytest.MonkeyPatch) -> None:
    """Retention claimed the backup to move it: the restore, asked for just before its
    object moves, is refused up front, naming the move, and nothing reads it archived."""
    cold, run = cooled_soon(racing)
    pruner, restorer = racing.context(cold), racing.context(cold)
    refused: list[RestoreRefused] = []
    real_move = pruner.objects.set_storage_class

    def move(key: str, storage_class: str) -> None:
        if key.endswith("orders.jsonl") and not refused:
            with pytest.raises(RestoreRefused) as caught:
                plan = plan_restore(restorer, run.run_id, "shop", "orders")
                start_restore(restorer, plan, idempotency_key="reading", trigger="test")
            refused.append(caught.value)
        real_move(key, storage_class)

    monkeypatch.setattr(pruner.objects, "set_storage_class", move)
    prune(pruner)

    assert refused and refused[0].status == 409
    assert "cold storage class" in str(refused[0]) and "retention" in str(refused[0])
    assert orders_storage_class(racing, run) == "ARCHIVE" and restores(restorer) == []


def test_a_restore_asked_for_while_retention_moves_its_backup_to_a_readable_class_goes_ahead(
        racing: LocalBackup, monkeypatch: pytest.MonkeyPatch) -> None:
    """STANDARD_IA is read as it is: a move into it takes no claim, so a restore asked for
    while the backup's object is being copied onto itself starts, reads it to the end,
    and the object still ends in the cold class."""
    cold, run = cooled_soon(racing, "STANDARD_IA")
    pruner, restorer = racing.context(cold), racing.context(cold)
    plan = plan_restore(restorer, run.run_id, "shop", "orders")
    started: list[Run] = []
    real_move = pruner.objects.set_storage_class

    def move(key: str, storage_class: str) -> None:
        if key.endswith("orders.jsonl") and not started:
            started.append(start_restore(restorer, plan, idempotency_key="reading",
                                         trigger="test")[0])
        real_move(key, storage_class)

    monkeypatch.setattr(pruner.objects, "set_storage_class", move)
    prune(pruner)

    assert started and orders_storage_class(racing, run) == "STANDARD_IA"
    assert drive(restorer, started[0]).status is RunStatus.SUCCEEDED
    assert len(racing.emulator.docs(ENV_ID, plan.order.target)) == 30


def test_a_restore_that_claims_its_backup_before_the_move_keeps_it_readable(
        racing: LocalBackup, monkeypatch: pytest.MonkeyPatch) -> None:
    """The restore's claim lands between the prune's read of the backup run and its own
    claim to move it: the move's compare-and-set loses, it reads the run again and leaves
    that backup where it is; the restore then reads it to the end."""
    cold, run = cooled_soon(racing)
    pruner, restorer = racing.context(cold), racing.context(cold)
    started: list[Run] = []
    real_save = pruner.state.save_run

    def save_run(saved: Run) -> Run | None:
        if saved.run_id == run.run_id and not started:
            plan = plan_restore(restorer, run.run_id, "shop", "orders")
            started.append(start_restore(restorer, plan, idempotency_key="reading",
                                         trigger="test")[0])
        return real_save(saved)

    monkeypatch.setattr(pruner.state, "save_run", save_run)
    prune(pruner)

    assert started and orders_storage_class(racing, run) != "ARCHIVE"
    assert drive(restorer, started[0]).status is RunStatus.SUCCEEDED


def test_a_move_to_the_cold_class_heads_the_object_once(
        counted_destination: Destination, s3_requests: S3Requests) -> None:
    """README "Storage classes": an object not already cold "gets a HEAD" before it moves;
    the move itself (a copy onto itself) needs no second and third one."""
    objects = CosObjectStore(counted_destination, {})
    objects.put_json("backups/runs/r/shop/orders.jsonl", {"n": 1})
    with s3_requests.counted() as seen:
        objects.set_storage_class("backups/runs/r/shop/orders.jsonl", "STANDARD_IA")
    assert [r for r in seen if r.startswith("HEAD ")] == ["HEAD /backups/runs/r/shop/orders.jsonl"]
