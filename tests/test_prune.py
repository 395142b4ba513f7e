"""Retention applied for real: objects, manifests, run folders and state rows deleted
through the real COS SDK on moto and SQLite; a dry run deletes nothing; two prunes at
once are harmless; a collection wiped at the source never costs its last good copy."""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from devkit.sample_data import make_docs
from shared.config import Config, ConfigError
from shared.domain.errors import StorageError
from shared.domain.jobs import Job, RestoreOrder, Run, RunStatus
from shared.entrypoints.cli import main as cli
from shared.service.context import Context
from shared.service.holds import PRUNING_FOR
from shared.service.overview import collections
from shared.service.prune import prune
from shared.service.restore.plan import RestoreRefused, plan_restore, start_restore
from shared.service.start import start_run
from shared.service.verify import record, verify_run
from tests.support.backup import ENV_ID, LocalBackup, backup_now, drive


def with_retention(local: LocalBackup, **retention: Any) -> Config:
    return local.config(local.wechat_source(collections=["orders", "users"]),
                        sections={"retention": retention} if retention else None)


def runs_made(local: LocalBackup, count: int) -> list[Run]:
    local.seed("orders", make_docs(20))
    local.seed("users", make_docs(4, prefix="u"))
    ctx = local.context(with_retention(local))
    return [backup_now(ctx, key=f"night-{i}") for i in range(count)]


def keys_of(local: LocalBackup, run: Run) -> list[str]:
    return [o.key for o in local.objects.list(f"{local.destination.prefix}/runs/{run.run_id}/")]


def test_prune_deletes_what_the_policy_does_not_keep(
        local: LocalBackup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    runs = runs_made(local, 4)
    config = with_retention(local, keep_last=2)
    path = local.config_file(config, [local.wechat_source(collections=["orders", "users"])],
                             tmp_path / "backup.yaml", monkeypatch)
    before = {r.run_id: keys_of(local, r) for r in runs}

    assert cli(["--config", str(path), "prune", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "would delete 4 backup(s); kept 4" in out and "last 1" in out
    assert {r.run_id: keys_of(local, r) for r in runs} == before  # nothing deleted

    assert cli(["--config", str(path), "prune"]) == 0
    ctx = local.context(config)
    for old in runs[:2]:
        assert keys_of(local, old) == []  # data, manifests and run manifest gone
        assert ctx.state.get_run(old.run_id) is None and ctx.state.list_jobs(old.run_id) == []
    for kept in runs[2:]:
        assert keys_of(local, kept) == before[kept.run_id]
    records = local.objects.list(f"{local.destination.prefix}/prunes/")
    assert len(records) == 1
    record = json.loads(local.objects.read(records[0].key))
    assert sorted(record["runs_deleted"]) == sorted(r.run_id for r in runs[:2])
    assert len(record["deleted"]) == 4 and len(record["kept"]) == 4
    assert cli(["--config", str(path), "verify"]) == 0  # what is left still verifies


def test_two_prunes_at_once_are_harmless(local: LocalBackup) -> None:
    runs = runs_made(local, 5)
    config = with_retention(local, keep_last=1)
    errors: list[BaseException] = []

    def one() -> None:
        try:
            prune(local.context(config))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=one) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    ctx = local.context(config)
    assert [r.run_id for r in ctx.state.list_runs()] == [runs[-1].run_id]
    assert keys_of(local, runs[-1]) and all(keys_of(local, r) == [] for r in runs[:-1])
    assert prune(ctx).doomed == []  # a third prune finds nothing left to do


def test_a_wiped_collection_never_costs_its_last_good_copy(local: LocalBackup) -> None:
    local.seed("orders", make_docs(20))
    local.seed("users", make_docs(4, prefix="u"))
    ctx = local.context(with_retention(local, keep_last=1))  # applied after every run
    good = backup_now(ctx, key="good")
    local.emulator.add_collection(ENV_ID, "orders", [])  # wiped at the source
    wiped = [backup_now(ctx, key=f"wiped-{i}") for i in range(3)]

    orders = {r.run_id: next(j for j in ctx.state.list_jobs(r.run_id) if j.collection == "orders")
              for r in [good, *wiped]}
    assert all(orders[r.run_id].suspect for r in wiped)
    assert orders[good.run_id].pruned_at is None  # the last good copy stays
    assert any(k.endswith("orders.jsonl") for k in keys_of(local, good))
    assert not any(k.endswith("users.jsonl") for k in keys_of(local, good))  # users moved on
    assert all(orders[r.run_id].pruned_at is None for r in wiped)  # suspect: kept as evidence


def test_a_backup_whose_verify_failed_never_costs_the_verified_one(local: LocalBackup) -> None:
    """keep_last 1: a later run whose orders a verify then finds damaged does not count
    as the newest good backup, so the verified run before it keeps its orders; users,
    verified in both, moves on."""
    ctx = local.context(with_retention(local, keep_last=1))
    first, second = runs_made(local, 2)  # no policy yet: nothing pruned
    damaged = next(k for k in keys_of(local, second) if k.endswith("orders.jsonl"))
    data = local.objects.read(damaged)
    local.objects.put_stream(damaged, [data[:100] + bytes([data[100] ^ 1]) + data[101:]],
                             content_type="application/x-ndjson")
    report = verify_run(ctx, second.run_id)
    record(ctx, report)
    assert not report.ok

    prune(ctx)

    def job(run: Run, collection: str) -> Job:
        return next(j for j in ctx.state.list_jobs(run.run_id) if j.collection == collection)

    assert job(first, "orders").pruned_at is None  # the newest good backup of orders
    assert any(k.endswith("orders.jsonl") for k in keys_of(local, first))
    assert job(second, "orders").pruned_at is None  # kept until a newer good one
    assert job(first, "users").pruned_at is not None  # second's users verified: it counts
    assert job(second, "users").pruned_at is None


@pytest.mark.parametrize(("retention", "message"), [
    ({"keep_last": 0}, "would keep nothing"),
    ({}, "would keep nothing"),
    ({"keep_daily": 7, "sources": {"shop": {"keep_daily": 0}}}, "sources.shop would keep nothing"),
    ({"keep_daily": 7, "sources": {"nope": {"keep_last": 1}}}, "names no configured source: nope"),
    ({"keep_daily": 7, "time_zone": "Mars/Olympus"}, "IANA time zone"),
])
def test_bad_policies_are_config_errors(local: LocalBackup, retention: dict[str, Any],
                                        message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        local.config(local.wechat_source(), sections={"retention": retention})


def test_a_source_override_replaces_only_what_it_sets(local: LocalBackup) -> None:
    config = with_retention(local, keep_daily=7, keep_monthly=6, sources={"shop": {"keep_daily": 2}})
    assert config.retention is not None
    rules = config.retention.rules_for("shop")
    assert (rules.keep_daily, rules.keep_monthly) == (2, 6)
    assert config.retention.rules_for("other").keep_daily == 7


def test_a_source_override_left_empty_means_the_top_level_rules(local: LocalBackup) -> None:
    """README "Configuration": a section left empty (every line under it commented out,
    YAML null) means its defaults; for a source's override that is: nothing replaced."""
    config = with_retention(local, keep_daily=7, sources={"shop": None})
    assert config.retention is not None
    assert config.retention.rules_for("shop").keep_daily == 7


def test_the_overview_counts_what_retention_would_keep(local: LocalBackup) -> None:
    """With a policy, the status overview sees the jobs through the plan's one read of
    every run (newest first) and counts the kept backups per collection."""
    runs = runs_made(local, 3)
    kept = {c.collection: c for c in collections(local.context(with_retention(local, keep_last=2)))}
    plain = {c.collection: c for c in collections(local.context(with_retention(local)))}
    assert sorted(kept) == sorted(plain) == ["orders", "users"]
    for name, state in kept.items():
        assert state.kept == 2 and plain[name].kept is None
        for seen in (state, plain[name]):
            assert seen.latest is not None and seen.last_good is not None
            assert seen.latest.run_id == seen.last_good.run_id == runs[-1].run_id
    assert all(local.context(with_retention(local)).state.get_run(r.run_id) for r in runs)


# retention racing a restore -------------------------------------------------------
# Each side has its own context (its own store client), as two functions would; the
# restore's step runs at the exact point of the prune named, through a wrapped call.
@pytest.fixture(params=["sqlite", "cos"])
def racing(request: pytest.FixtureRequest, local: LocalBackup) -> LocalBackup:
    return local if request.param == "sqlite" else dataclasses.replace(local, state_url="cos://")


def doomed(local: LocalBackup) -> tuple[Config, Run]:
    """Two nightly runs and a policy that deletes the older one's backups; that run."""
    older, _ = runs_made(local, 2)
    return with_retention(local, keep_last=1), older


def restore_of(ctx: Context, run: Run) -> Run:
    plan = plan_restore(ctx, run.run_id, "shop", "orders", idempotency_key="reading")
    restore, _ = start_restore(ctx, plan, idempotency_key="reading", trigger="test")
    return restore


def assert_no_restore_reads_a_deleted_backup(ctx: Context) -> None:
    for run in ctx.state.open_runs():
        for job in ctx.state.list_jobs(run.run_id):
            if job.restore is None:
                continue
            backup = ctx.state.get_job(job.restore.backup_job_id)
            assert backup is not None and backup.pruned_at is None
            assert all(ctx.objects.head(o.key) is not None for o in job.restore.objects)


def test_a_restore_asked_for_while_retention_deletes_its_backup_is_refused(
        racing: LocalBackup, monkeypatch: pytest.MonkeyPatch) -> None:
    """Retention claimed the backup first: the restore, asked for as the prune deletes its
    first object, is refused up front and nothing reads the backup that goes."""
    config, older = doomed(racing)
    pruner, restorer = racing.context(config), racing.context(config)
    refused: list[RestoreRefused] = []
    real_delete = pruner.objects.delete

    def delete(key: str) -> None:
        if not refused:
            with pytest.raises(RestoreRefused) as caught:
                restore_of(restorer, older)
            refused.append(caught.value)
        real_delete(key)

    monkeypatch.setattr(pruner.objects, "delete", delete)
    prune(pruner)

    assert "being pruned by retention" in str(refused[0]) and refused[0].status == 409
    assert restorer.state.get_run(older.run_id) is None and keys_of(racing, older) == []
    assert [r for r in restorer.state.list_runs() if r.operation == "restore"] == []
    assert_no_restore_reads_a_deleted_backup(restorer)


def test_a_restore_that_claims_its_backup_first_keeps_it(
        racing: LocalBackup, monkeypatch: pytest.MonkeyPatch) -> None:
    """The restore's claim lands between the prune's read of the run and its own claim:
    the prune's compare-and-set loses, it reads the run again and keeps that backup."""
    config, older = doomed(racing)
    pruner, restorer = racing.context(config), racing.context(config)
    started: list[Run] = []
    real_save = pruner.state.save_run

    def save_run(run: Run) -> Run | None:
        if run.run_id == older.run_id and not started:
            started.append(restore_of(restorer, older))
        return real_save(run)

    monkeypatch.setattr(pruner.state, "save_run", save_run)
    decided = prune(pruner)

    assert started and restorer.state.get_run(started[0].run_id) is not None
    orders = next(j for j in restorer.state.list_jobs(older.run_id) if j.collection == "orders")
    users = next(j for j in restorer.state.list_jobs(older.run_id) if j.collection == "users")
    assert orders.pruned_at is None and users.pruned_at is not None
    assert any("being restored" in d.reasons for d in decided.decisions)
    assert_no_restore_reads_a_deleted_backup(restorer)


def test_a_restore_planned_before_retention_deleted_its_backup_is_refused(racing: LocalBackup) -> None:
    """Checked and shown to the user, then a prune runs to its end, then the user says go."""
    config, older = doomed(racing)
    restorer = racing.context(config)
    plan = plan_restore(restorer, older.run_id, "shop", "orders")
    prune(racing.context(config))

    with pytest.raises(RestoreRefused, match="retention") as refused:
        start_restore(restorer, plan, idempotency_key="reading", trigger="test")
    assert refused.value.status in (409, 410)
    assert [r for r in restorer.state.list_runs() if r.operation == "restore"] == []


def test_a_restore_resent_after_retention_deleted_its_backup_is_the_same_restore(
        racing: LocalBackup) -> None:
    """The restore ran and ended, retention then deleted its backup, and the phone that
    never got the first answer sends the request again: it finds that restore."""
    config, older = doomed(racing)
    restorer = racing.context(config)
    restore = restore_of(restorer, older)
    ended = restorer.state.get_run(restore.run_id)
    assert ended is not None
    assert restorer.state.save_run(ended.model_copy(update={"status": RunStatus.SUCCEEDED}))
    prune(racing.context(config))
    backup = restorer.state.get_job(restore_order(restorer, restore).backup_job_id)
    assert backup is None or backup.pruned_at is not None  # its run deleted, or marked

    again = restore_of(restorer, older)
    assert again.run_id == restore.run_id
    with pytest.raises(RestoreRefused):  # a new request is refused: the backup is gone
        plan_restore(restorer, older.run_id, "shop", "orders", idempotency_key="another")


def restore_order(ctx: Context, restore: Run) -> RestoreOrder:
    (job,) = ctx.state.list_jobs(restore.run_id)
    assert job.restore is not None
    return job.restore


class Killed(BaseException):
    """The process died: nothing of the prune runs after it."""


def test_a_prune_killed_after_its_claim_blocks_restores_only_for_a_while(
        racing: LocalBackup, monkeypatch: pytest.MonkeyPatch) -> None:
    """A prune dies after claiming, before deleting: the backup is refused to restores
    while the claim lasts, then restorable again (and kept by the next prune)."""
    config, older = doomed(racing)
    pruner, restorer = racing.context(config), racing.context(config)

    def dies(key: str) -> None:
        raise Killed()

    monkeypatch.setattr(pruner.objects, "delete", dies)
    with pytest.raises(Killed):
        prune(pruner)
    with pytest.raises(RestoreRefused, match="being pruned by retention"):
        restore_of(restorer, older)

    later = restorer.clock() + PRUNING_FOR
    restorer.clock = lambda: later
    restore = restore_of(restorer, older)
    pruner = racing.context(config)
    pruner.clock = lambda: later
    prune(pruner)
    assert restorer.state.get_run(restore.run_id) is not None
    assert_no_restore_reads_a_deleted_backup(restorer)


# COS refusing a delete ------------------------------------------------------------
@pytest.mark.parametrize("whole_run", [True, False], ids=["run-emptied", "run-thinned"])
def test_an_object_cos_would_not_delete_is_deleted_by_the_next_prune(
        local: LocalBackup, monkeypatch: pytest.MonkeyPatch, whole_run: bool) -> None:
    """COS refuses the delete of one doomed object (an outage, a 5xx): the prune goes on,
    and the next prune deletes it. Neither the job nor the run may be recorded as gone
    while its data is still in the bucket: nothing would ever look for it again, and a
    backup retention promised to delete would stay for good (and be paid for)."""
    local.seed("orders", make_docs(20))
    local.seed("users", make_docs(4, prefix="u"))
    ctx = local.context(with_retention(local))  # no policy yet: nothing pruned
    older = backup_now(ctx, key="night-1")
    newer, _ = start_run(ctx, idempotency_key="night-2", trigger="test",
                         collections=None if whole_run else {"shop": ["orders"]})
    drive(ctx, newer)
    config = with_retention(local, keep_last=1)
    orders = next(k for k in keys_of(local, older) if k.endswith("orders.jsonl"))
    pruner = local.context(config)
    real_delete = pruner.objects.delete

    def refuses(key: str) -> None:
        if key == orders:
            raise StorageError(f"COS delete of {key!r} failed: InternalError", key=key,
                               code="InternalError")
        real_delete(key)

    monkeypatch.setattr(pruner.objects, "delete", refuses)
    prune(pruner)
    assert local.objects.head(orders) is not None  # COS refused: still there

    prune(local.context(config))  # COS answers again

    assert local.objects.head(orders) is None
    job = next((j for j in ctx.state.list_jobs(older.run_id) if j.collection == "orders"), None)
    assert job is None or job.pruned_at is not None
    if whole_run:
        assert keys_of(local, older) == [] and ctx.state.get_run(older.run_id) is None


def test_the_cli_does_not_say_deleted_of_a_backup_cos_refused_to_delete(
        local: LocalBackup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """A role without cos:DeleteObject, or an outage: the backup stays (README "Keeping
    backups": the next prune deletes it), so `prune` must not report it gone and exit 0."""
    from shared.adapters.cos.objects import CosObjectStore

    runs = runs_made(local, 3)
    config = with_retention(local, keep_last=2)
    path = local.config_file(config, [local.wechat_source(collections=["orders", "users"])],
                             tmp_path / "backup.yaml", monkeypatch)
    orders = next(k for k in keys_of(local, runs[0]) if k.endswith("orders.jsonl"))
    real_delete = CosObjectStore.delete

    def refuses(self: CosObjectStore, key: str) -> None:
        if key == orders:
            raise StorageError(f"COS delete of {key!r} failed: AccessDenied", key=key,
                               code="AccessDenied")
        real_delete(self, key)

    monkeypatch.setattr(CosObjectStore, "delete", refuses)

    code = cli(["--config", str(path), "prune"])

    out = capsys.readouterr().out
    assert local.objects.head(orders) is not None  # still there, as the prune knows
    assert code == 1, out
    assert "deleted 1 backup(s)" in out and "1 not deleted" in out, out
    assert "next prune" in out, out  # what happens to it


# what `baas-backup prune` says --------------------------------------------------------
SIGNATURE = "9f8e7d6c5b4a39281706f5e4d3c2b1a098765432"


def cli_config(local: LocalBackup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
               **retention: Any) -> Path:
    config = with_retention(local, **retention)
    return local.config_file(config, [local.wechat_source(collections=["orders", "users"])],
                             tmp_path / "backup.yaml", monkeypatch)


@pytest.mark.parametrize("refused", ["orders.jsonl", "run-manifest.json"],
                         ids=["backup-object", "run-folder"])
def test_the_cli_prints_why_cos_refused_a_delete_and_exits_1(
        local: LocalBackup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str], refused: str) -> None:
    """COS's own reason (AccessDenied: the key lacks cos:DeleteObject) is what tells the
    user what to fix; "the log says which" sends them to a log `prune` never showed. A
    run folder COS will not empty (its backups gone) is a refusal too: exit 1, not 0. The
    reason is printed redacted: the SDK's message may carry the signed request URL."""
    from shared.adapters.cos.objects import CosObjectStore

    runs = runs_made(local, 3)
    path = cli_config(local, tmp_path, monkeypatch, keep_last=2)
    key = next(k for k in keys_of(local, runs[0]) if k.endswith(refused))
    real_delete = CosObjectStore.delete

    def refuses(self: CosObjectStore, deleting: str) -> None:
        if deleting == key:
            raise StorageError(
                f"COS delete of {deleting!r} failed: AccessDenied (HTTP 403) at https://"
                f"backups-1250000000.cos.ap-guangzhou.myqcloud.com/{deleting}?q-ak=AKIDcli"
                f"&q-signature={SIGNATURE}", key=deleting, code="AccessDenied")
        real_delete(self, deleting)

    monkeypatch.setattr(CosObjectStore, "delete", refuses)

    code = cli(["--config", str(path), "prune"])

    out = capsys.readouterr().out
    assert code == 1, out
    assert "AccessDenied" in out and key in out, out
    assert SIGNATURE not in out and "AKIDcli" not in out, out


def a_failed_run(local: LocalBackup) -> Run:
    """A run of one more collection, "lost", whose export failed: it holds no backup."""
    local.seed("lost", make_docs(2))
    local.emulator.fail_export(ENV_ID, "lost", "导出失败: collection locked")
    ctx = local.context(local.config(local.wechat_source(collections=["orders", "users", "lost"])))
    run, _ = start_run(ctx, idempotency_key="failed", trigger="test",
                       collections={"shop": ["lost"]})
    failed = drive(ctx, run)
    assert failed.status is RunStatus.FAILED
    return failed


@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
def test_a_dry_run_lists_the_runs_it_would_delete_for_holding_nothing(
        local: LocalBackup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str], as_json: bool) -> None:
    """keep_last 2: run 1 loses both backups, so it goes too, and so does the failed run
    (README "Keeping backups": a run left holding nothing, a failed run too, loses its
    folder and its state rows). A dry run that says what would go must name them: a run
    manifest and a failure's record are what the user may still be looking for."""
    first, _ = runs_made(local, 2)
    ctx = local.context(with_retention(local))  # no policy yet: nothing pruned
    failed = a_failed_run(local)
    backup_now(ctx, key="night-3")
    path = cli_config(local, tmp_path, monkeypatch, keep_last=2)

    code = cli(["--config", str(path), "prune", "--dry-run", *(["--json"] if as_json else [])])

    out = capsys.readouterr().out
    assert code == 0, out
    if as_json:
        runs = {r["run_id"]: r for r in json.loads(out)["runs"]}
        assert sorted(runs) == sorted([first.run_id, failed.run_id]), out
        assert {r["verdict"] for r in runs.values()} == {"would delete"}
        assert runs[failed.run_id]["status"] == "failed"
    else:
        assert failed.run_id in out and "would delete 2 run(s)" in out, out
    assert ctx.state.get_run(failed.run_id) is not None  # a dry run deletes nothing
    assert ctx.state.get_run(first.run_id) is not None


@pytest.mark.parametrize("doing", ["deleting", "moving"])
def test_a_prune_stopped_at_its_claim_window_says_so_and_that_the_next_continues(
        local: LocalBackup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str], doing: str) -> None:
    """Retention deletes (or moves) a backup only within DELETE_WITHIN of claiming it
    (shared/service/holds.py): past it, the prune stops and leaves the rest. The user must
    be told it stopped and that the next prune goes on, not that COS refused, nor nothing
    at all. The window is made zero here: the prune stops before its first delete/move."""
    runs_made(local, 3)
    if doing == "moving":
        time.sleep(1.2)  # every backup older than the second after which it goes cold
    retention: dict[str, Any] = (
        {"keep_last": 2} if doing == "deleting"
        else {"keep_last": 5, "cold_after_days": 1 / 86400})  # older than a second
    path = cli_config(local, tmp_path, monkeypatch, **retention)
    monkeypatch.setattr("shared.service.prune.DELETE_WITHIN", timedelta(0))

    code = cli(["--config", str(path), "prune"])

    out = capsys.readouterr().out
    assert code == 1, out  # not all done
    assert "stopped" in out and "next prune" in out and "continues" in out, out
    assert "COS refused" not in out, out
