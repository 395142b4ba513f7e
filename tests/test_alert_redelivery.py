"""An alert no webhook accepted (every robot down, or answering an error) is not lost: it
stays on its run, the API shows it undelivered, and later poller ticks send it again until
one accepts it (once), for a day."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest

from devkit.sample_data import make_docs
from shared.config import Config, Notify
from shared.domain.errors import StorageError
from shared.domain.jobs import Run
from shared.entrypoints.http_api import run_view
from shared.service.context import Context
from shared.service.poll import poll
from shared.service.verify import record, verify_run
from tests.support.backup import ENV_ID, LocalBackup, backup_now
from tests.support.webhook import WebhookReceiver

# How each robot says no: Feishu and DingTalk/WeCom answer HTTP 200 with a code in the body.
REFUSALS: dict[str, tuple[int, dict[str, Any]]] = {
    "feishu": (200, {"code": 9499, "msg": "Bad Request", "data": {}}),
    "dingtalk": (200, {"errcode": 310000, "errmsg": "keywords not in content"}),
    "wecom": (502, {"errmsg": "bad gateway"}),
}


def hooked(local: LocalBackup, webhook: WebhookReceiver, fmt: str,
           sections: dict[str, Any] | None = None) -> Config:
    local.environ["ROBOT_URL"] = webhook.url
    config = local.config(local.wechat_source(collections=["orders", "users"]), sections=sections)
    notify = Notify.model_validate({"webhooks": [{"url": "${ROBOT_URL}", "format": fmt}]},
                                   context={"environ": local.environ})
    return config.model_copy(update={"notify": notify})


def undelivered(ctx: Context, run: Run) -> list[dict[str, Any]]:
    stored = ctx.state.get_run(run.run_id)
    assert stored is not None
    shown: list[dict[str, Any]] = run_view(stored, ctx.state.list_jobs(run.run_id))["undelivered_alerts"]
    return shown


@pytest.mark.parametrize("fmt", sorted(REFUSALS))
def test_a_failed_runs_notification_no_webhook_took_is_sent_again_on_a_later_tick(
        local: LocalBackup, webhook: WebhookReceiver, fmt: str) -> None:
    local.seed("orders", make_docs(10))
    local.seed("users", make_docs(3))
    local.emulator.fail_export(ENV_ID, "users", "collection is locked")
    ctx = local.context(hooked(local, webhook, fmt))
    webhook.answers = [REFUSALS[fmt]] * 3

    run = backup_now(ctx)

    assert run.status.value == "failed" and len(webhook.messages) == 3  # all refused
    (shown,) = undelivered(ctx, run)
    assert shown["kind"] == "run" and shown["gave_up_at"] is None
    poll(ctx)  # the next tick: the robot takes it now
    assert len(webhook.messages) == 4 and "collection is locked" in str(webhook.messages[-1])
    assert undelivered(ctx, run) == []
    poll(ctx)  # accepted once: never again
    assert len(webhook.messages) == 4


def test_a_verify_finding_damage_is_sent_again_until_a_webhook_takes_it(
        local: LocalBackup, webhook: WebhookReceiver) -> None:
    local.seed("orders", make_docs(10))
    local.seed("users", make_docs(3))
    ctx = local.context(hooked(local, webhook, "feishu"))
    run = backup_now(ctx)
    key = next(o.key for o in local.objects.list(f"{local.destination.prefix}/runs/{run.run_id}/")
               if o.key.endswith("orders.jsonl"))
    local.objects.delete(key)
    webhook.answers = [REFUSALS["feishu"]] * 3

    record(ctx, verify_run(ctx, run.run_id))

    assert len(webhook.messages) == 3
    assert [a["kind"] for a in undelivered(ctx, run)] == ["verify"]
    poll(ctx)
    poll(ctx)
    assert len(webhook.messages) == 4
    assert "verify of backup run" in webhook.messages[-1]["content"]["text"]
    assert undelivered(ctx, run) == []


def test_an_alert_undelivered_for_a_day_is_no_longer_sent_but_still_shown(
        local: LocalBackup, webhook: WebhookReceiver) -> None:
    local.seed("orders", make_docs(10))
    local.seed("users", make_docs(3))
    local.emulator.fail_export(ENV_ID, "users", "collection is locked")
    ctx = local.context(hooked(local, webhook, "wecom"))
    webhook.answers = [REFUSALS["wecom"]] * 3
    run = backup_now(ctx)
    later = ctx.clock() + timedelta(hours=25)
    tomorrow = replace(ctx, clock=lambda: later)

    poll(tomorrow)

    assert len(webhook.messages) == 3  # not sent again
    (shown,) = undelivered(ctx, run)
    assert shown["gave_up_at"] is not None


def test_a_prune_cos_refused_after_a_run_closed_is_sent_again_until_a_webhook_takes_it(
        local: LocalBackup, webhook: WebhookReceiver, monkeypatch: pytest.MonkeyPatch) -> None:
    """The bucket key lacks cos:DeleteObject: the run closes fine, but retention deletes
    nothing, so old backups pile up. The user is told through the robot, and the alert
    waits on the run (kind "retention") until the robot takes it."""
    from shared.adapters.cos.objects import CosObjectStore

    local.seed("orders", make_docs(10))
    local.seed("users", make_docs(3))
    ctx = local.context(hooked(local, webhook, "feishu", {"retention": {"keep_last": 1}}))
    backup_now(ctx, key="night-1")

    def refuses(self: CosObjectStore, key: str) -> None:
        raise StorageError(f"COS delete of {key!r} failed: AccessDenied (HTTP 403)", key=key,
                           code="AccessDenied")

    monkeypatch.setattr(CosObjectStore, "delete", refuses)
    webhook.answers = [REFUSALS["feishu"]] * 3
    run = backup_now(ctx, key="night-2")

    assert run.status.value == "succeeded"  # the run's own result is not the prune's
    assert [a["kind"] for a in undelivered(ctx, run)] == ["retention"]
    told = len(webhook.messages)
    assert told >= 3  # refused three times
    poll(ctx)
    assert len(webhook.messages) == told + 1
    text = webhook.messages[-1]["content"]["text"]
    assert "retention could not delete" in text and "AccessDenied" in text, text
    assert "cos:DeleteObject" in text, text
    assert undelivered(ctx, run) == []
