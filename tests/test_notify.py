"""People are told when a run fails: once, with what failed and why, without secrets."""

from __future__ import annotations

import io
import logging

from devkit.sample_data import make_docs
from shared.config import Config, Notify
from shared.logs import configure_logging
from shared.service.close import close_finished_runs
from tests.support.backup import ENV_ID, LocalBackup, backup_now
from tests.support.webhook import WebhookReceiver


def config_with_hook(local: LocalBackup, webhook: WebhookReceiver, on: str, fmt: str) -> Config:
    local.environ["ROBOT_URL"] = webhook.url
    config = local.config(local.wechat_source(collections=["orders", "users"]))
    notify = Notify.model_validate({"on": on, "webhooks": [{"url": "${ROBOT_URL}", "format": fmt}]},
                                   context={"environ": local.environ})
    return config.model_copy(update={"notify": notify})


def test_failed_run_is_announced_once_with_its_failures(local: LocalBackup, webhook: WebhookReceiver) -> None:
    local.seed("orders", make_docs(10))
    local.seed("users", make_docs(3))
    local.emulator.fail_export(ENV_ID, "users", "collection is locked")
    captured = io.StringIO()
    configure_logging(logging.INFO, stream=captured)
    ctx = local.context(config_with_hook(local, webhook, "failure", "wecom"))

    run = backup_now(ctx)
    close_finished_runs(ctx)  # another poller tick: nothing to close, nothing re-sent

    assert len(webhook.messages) == 1
    content = webhook.messages[0]["text"]["content"]
    assert run.run_id in content and "failed" in content
    assert "shop/users" in content and "collection is locked" in content
    assert "1/2 collections copied" in content
    assert "robot-key-5e6f7a8b" not in captured.getvalue()


def test_successful_run_is_quiet_unless_asked(local: LocalBackup, webhook: WebhookReceiver) -> None:
    local.seed("orders", make_docs(10))
    local.seed("users", make_docs(3))
    backup_now(local.context(config_with_hook(local, webhook, "failure", "json")), key="quiet")
    assert webhook.messages == []

    backup_now(local.context(config_with_hook(local, webhook, "always", "json")), key="loud")
    (message,) = webhook.messages
    assert message["status"] == "succeeded" and message["failures"] == []
    assert message["summary"]["records"] == 13


def test_refused_notification_is_retried_then_logged(local: LocalBackup, webhook: WebhookReceiver) -> None:
    local.seed("orders", make_docs(10))
    local.seed("users", make_docs(3))
    local.emulator.fail_export(ENV_ID, "users", "boom")
    webhook.answers = [(200, {"errcode": 93000, "errmsg": "invalid webhook url"})] * 3
    captured = io.StringIO()
    configure_logging(logging.INFO, stream=captured)

    run = backup_now(local.context(config_with_hook(local, webhook, "failure", "dingtalk")))

    assert len(webhook.messages) == 3  # tried three times
    assert run.status.value == "failed"  # the run still closed
    assert "could not deliver the run notification" in captured.getvalue()
    assert "93000" in captured.getvalue()
