"""A source name reused for another kind of source: its older backups are of the old
kind, and a restore refuses to plan them into the new one (emulators over real HTTP ->
real COS SDK -> S3 server, SQLite state)."""

from __future__ import annotations

from typing import Any

import pytest

from devkit.emulators.minapp import MinAppEmulator
from devkit.sample_data import make_docs
from shared.domain.jobs import RunStatus
from shared.service.restore.plan import RestoreRefused, plan_restore
from tests.support.backup import LocalBackup, backup_now


def _records(count: int) -> list[dict[str, Any]]:
    return [{k: v for k, v in doc.items() if k != "_id"} for doc in make_docs(count, seed=4)]


def test_a_wechat_backup_is_not_planned_into_a_minapp_source_of_the_same_name(
        local: LocalBackup, minapp_emulator: MinAppEmulator) -> None:
    local.seed("orders", make_docs(20, seed=3))
    wechat = local.context(local.config(local.wechat_source(name="shop")))
    run = backup_now(wechat)
    assert run.status is RunStatus.SUCCEEDED
    minapp_emulator.add_table(1001, _records(5))

    # `shop` is now a MinApp source
    minapp = local.context(local.config(local.minapp_source(minapp_emulator, name="shop")))
    before = minapp_emulator.records(1001)
    with pytest.raises(RestoreRefused) as refused:
        plan_restore(minapp, run.run_id, "shop", "orders", into="1001", mode="insert")

    assert refused.value.status == 409 and refused.value.field == "source"
    message = str(refused.value)
    assert "wechat" in message and "minapp" in message
    assert minapp_emulator.records(1001) == before  # nothing written


def test_a_minapp_backup_is_not_planned_into_a_wechat_source_of_the_same_name(
        local: LocalBackup, minapp_emulator: MinAppEmulator) -> None:
    minapp_emulator.add_table(1001, _records(5))
    minapp = local.context(local.config(local.minapp_source(minapp_emulator, name="shop")))
    run = backup_now(minapp)
    assert run.status is RunStatus.SUCCEEDED

    wechat = local.context(local.config(local.wechat_source(name="shop")))
    with pytest.raises(RestoreRefused) as refused:
        plan_restore(wechat, run.run_id, "shop", "1001")

    assert refused.value.status == 409 and refused.value.field == "source"
    message = str(refused.value)
    assert "wechat" in message and "minapp" in message
