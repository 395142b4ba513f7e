"""People are told when a run fails: once, with what failed and why, without secrets."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from devkit.sample_data import make_docs
from shared.adapters.heartbeat import ping
from shared.adapters.http import make_client
from shared.adapters.webhooks import WebhookNotifier, notify_run, probe_webhook
from shared.config import Config, Notify
from shared.domain.errors import Fatal
from shared.domain.jobs import JobStatus
from shared.entrypoints.cli import main as cli
from shared.logs import configure_logging
from shared.service.close import close_finished_runs
from tests.support.backup import ENV_ID, LocalBackup, backup_now
from tests.support.webhook import GarbledEndpoint, WebhookReceiver
from tests.unit.support import ScriptedExport, seed_run, unit


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


def test_refused_notification_is_logged_and_the_run_still_closes(
        local: LocalBackup, webhook: WebhookReceiver) -> None:
    local.seed("orders", make_docs(10))
    local.seed("users", make_docs(3))
    local.emulator.fail_export(ENV_ID, "users", "boom")
    webhook.answers = [(200, {"errcode": 93000, "errmsg": "invalid webhook url"})] * 3
    captured = io.StringIO()
    configure_logging(logging.INFO, stream=captured)

    run = backup_now(local.context(config_with_hook(local, webhook, "failure", "wecom")))

    assert len(webhook.messages) == 1  # an invalid key stays invalid: tried once
    assert run.status.value == "failed"  # the run still closed
    assert "could not deliver the run notification" in captured.getvalue()
    assert "93000" in captured.getvalue()
    assert "Traceback" not in captured.getvalue()  # an answer, not a bug


# A refusal that trying again within the send cannot change: the URL's key is wrong or gone.
PERMANENT: dict[str, tuple[int, dict[str, Any]]] = {
    "http-404": (404, {"errmsg": "not found"}),
    "http-400": (400, {"errmsg": "bad request"}),
    "http-403": (403, {"errmsg": "forbidden"}),
    "wecom-invalid-key": (200, {"errcode": 93000, "errmsg": "invalid webhook url"}),
    "feishu-invalid-token": (200, {"code": 19001, "data": {},
                                   "msg": "param invalid: incoming webhook access token invalid"}),
    "dingtalk-unknown-token": (200, {"errcode": 300001, "errmsg": "token is not exist"}),
}
# ... and what may pass a moment later: the robot overloaded, slow, or rate limiting.
TRANSIENT: dict[str, tuple[int, dict[str, Any]]] = {
    "http-502": (502, {"errmsg": "bad gateway"}),
    "http-500": (500, {"errmsg": "internal error"}),
    "http-408": (408, {"errmsg": "request timeout"}),
    "http-429": (429, {"errmsg": "too many requests"}),
}


def _robot(webhook: WebhookReceiver, answer: str) -> WebhookNotifier:
    fmt = next((f for f in ("feishu", "dingtalk") if answer.startswith(f)), "wecom")
    notify = Notify.model_validate({"webhooks": [{"url": "${HOOK}", "format": fmt}]},
                                   context={"environ": {"HOOK": webhook.url}})
    return WebhookNotifier(notify, retry_base_seconds=0)


@pytest.mark.parametrize("answer", sorted(PERMANENT))
def test_a_refusal_that_cannot_change_is_tried_once(webhook: WebhookReceiver, answer: str) -> None:
    """A wrong robot key is as wrong on the third try: one try, then the poller's next tick
    (after someone fixes notify.webhooks), not two more posts and backoff sleeps now."""
    webhook.answers = [PERMANENT[answer]] * 3
    assert _robot(webhook, answer).alert("the run failed") is False
    assert len(webhook.messages) == 1


@pytest.mark.parametrize("answer", sorted(TRANSIENT))
def test_a_refusal_that_may_pass_is_tried_three_times(webhook: WebhookReceiver, answer: str) -> None:
    webhook.answers = [TRANSIENT[answer]] * 2  # then the default: accepted
    assert _robot(webhook, answer).alert("the run failed") is True
    assert len(webhook.messages) == 3


def test_a_collection_wiped_at_the_source_is_reported_as_suspect(
        local: LocalBackup, webhook: WebhookReceiver, capsys: pytest.CaptureFixture[str],
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The nightly run that backs up an emptied collection succeeds (that is what the
    platform holds) but is never quiet, and the backup is flagged everywhere."""
    local.seed("orders", make_docs(10))
    local.seed("users", make_docs(3))
    ctx = local.context(config_with_hook(local, webhook, "failure", "wecom"))
    backup_now(ctx, key="before")
    assert webhook.messages == []

    local.emulator.add_collection(ENV_ID, "orders", [])  # wiped
    run = backup_now(ctx, key="after")

    assert run.status.value == "succeeded"
    (message,) = webhook.messages
    content = message["text"]["content"]
    assert "suspect: shop/orders has 0 records, down from 10" in content
    orders = next(j for j in ctx.state.list_jobs(run.run_id) if j.collection == "orders")
    assert orders.suspect and orders.previous_records == 10 and not orders.good
    assert orders.result is not None
    manifest = json.loads(local.objects.read(orders.result.manifest_key))
    assert manifest["suspect"] is True and manifest["previous_records"] == 10
    run_manifest = json.loads(local.objects.read(run.manifest_key or ""))
    assert {j["collection"]: j["suspect"] for j in run_manifest["jobs"]} == {"orders": True, "users": False}

    config_path = str(local.config_file(
        ctx.config, [local.wechat_source(collections=["orders", "users"])],
        tmp_path / "backup.yaml", monkeypatch))
    assert cli(["--config", config_path, "status", run.run_id]) == 0
    assert "suspect (was 10)" in capsys.readouterr().out
    assert cli(["--config", config_path, "ack", run.run_id, "shop", "orders"]) == 0
    acknowledged = next(j for j in ctx.state.list_jobs(run.run_id) if j.collection == "orders")
    assert acknowledged.good
    assert "acknowledged_at" in json.loads(local.objects.read(orders.result.manifest_key))
    # the next run compares with the acknowledged backup: no new alarm for the same zero
    backup_now(ctx, key="later")
    assert len(webhook.messages) == 1


@pytest.mark.parametrize(("style", "ok_path", "fail_path"), [
    ("healthchecks", "/ping/abc", "/ping/abc/fail"),
    ("cronitor", "/ping/abc?state=complete&message=run", "/ping/abc?state=fail&message=run"),
    ("uptime-kuma", "/ping/abc?status=up&msg=run", "/ping/abc?status=down&msg=run"),
])
def test_the_heartbeat_is_pinged_after_every_run(
        local: LocalBackup, webhook: WebhookReceiver, style: str, ok_path: str, fail_path: str) -> None:
    local.seed("orders", make_docs(3))
    local.seed("users", make_docs(3))
    local.environ["HEARTBEAT_URL"] = f"http://127.0.0.1:{webhook.server.server_port}/ping/abc"
    webhook.get_status = 200
    config = local.config(local.wechat_source(collections=["orders", "users"]))
    notify = Notify.model_validate({"heartbeat": {"url": "${HEARTBEAT_URL}", "style": style}},
                                   context={"environ": local.environ})
    ctx = local.context(config.model_copy(update={"notify": notify}))

    backup_now(ctx, key="good")
    local.emulator.fail_export(ENV_ID, "users", "boom")
    backup_now(ctx, key="bad")

    assert [p.split("+")[0].split("%20")[0] for p in webhook.pings] == [ok_path, fail_path]
    assert webhook.messages == []  # no webhooks configured: only the pings


@pytest.mark.parametrize(("style", "copied", "said"), [
    # the push URL Uptime Kuma's monitor page hands out, to be copied whole
    ("uptime-kuma", "/api/push/k-0123456789?status=up&msg=OK&ping=", "status"),
    ("cronitor", "/p/key-0123456789/nightly?state=complete", "state"),
])
def test_a_ping_url_carrying_its_own_status_reports_the_runs_outcome_once(
        webhook: WebhookReceiver, style: str, copied: str, said: str) -> None:
    """A failed run must read as a failure: never `status=up&...&status=down`, which the
    monitor reads as either (its first value, or a list that is not "up")."""
    webhook.get_status = 200
    base = f"http://127.0.0.1:{webhook.server.server_port}"
    notify = Notify.model_validate({"heartbeat": {"url": "${PING}", "style": style}},
                                   context={"environ": {"PING": base + copied}})
    assert notify.heartbeat is not None

    logs = io.StringIO()
    configure_logging(logging.INFO, stream=logs)  # httpx logs each request's URL
    try:
        ping(notify.heartbeat, True, "run a succeeded", retry_base_seconds=0)
        ping(notify.heartbeat, False, "run b failed", retry_base_seconds=0)
    finally:
        configure_logging()
    assert "heartbeat pinged" in logs.getvalue() and "0123456789" not in logs.getvalue()

    sent = [parse_qs(urlsplit(path).query, keep_blank_values=True) for path in webhook.pings]
    assert [query[said] for query in sent] == [["up" if style == "uptime-kuma" else "complete"],
                                               ["down" if style == "uptime-kuma" else "fail"]]
    assert all(len(values) == 1 for query in sent for values in query.values()), sent
    assert [urlsplit(path).path for path in webhook.pings] == [urlsplit(copied).path] * 2


@pytest.mark.parametrize("said", [
    "Monitor not found or not active.",
    # a monitor echoing the URL's key back: only its host may ever be shown
    "no active monitor has push token k-0123456789",
])
# Uptime Kuma's push route answers its refusal with HTTP 404 (server/routers/api-router.js,
# /api/push/:pushToken, `response.status(404).json({ok: false, msg})`); some releases 200
@pytest.mark.parametrize("status", [200, 404])
def test_a_ping_the_monitor_refuses_is_logged_as_an_error_not_as_pinged(
        webhook: WebhookReceiver, said: str, status: int) -> None:
    """Uptime Kuma answers {"ok": false, "msg": ...} for a paused or unknown push monitor:
    no run is recorded there, so the pings would stop unnoticed while the log said
    "heartbeat pinged". Its message and what to check are logged, after one try."""
    webhook.get_status = status
    webhook.get_body = {"ok": False, "msg": said}
    base = f"http://127.0.0.1:{webhook.server.server_port}"
    notify = Notify.model_validate({"heartbeat": {"url": "${PING}", "style": "uptime-kuma"}},
                                   context={"environ": {"PING": base + "/api/push/k-0123456789"}})
    assert notify.heartbeat is not None

    logs = io.StringIO()
    configure_logging(logging.INFO, stream=logs)
    try:
        ping(notify.heartbeat, True, "run a succeeded", retry_base_seconds=0)
    finally:
        configure_logging()

    lines = [json.loads(line) for line in logs.getvalue().splitlines()]
    [refused] = [line for line in lines if line["logger"] == "shared.adapters.heartbeat"]
    assert (refused["level"], refused["message"]) == ("ERROR", "could not ping the heartbeat monitor")
    assert "heartbeat refused the ping" in refused["reason"]
    assert "notify.heartbeat.url" in refused["reason"]  # what to check
    assert "Monitor not found" in refused["reason"] or "push token" in refused["reason"]
    assert "0123456789" not in logs.getvalue()
    assert len(webhook.pings) == 1  # an answer, not a transient failure: not sent again


def test_an_alert_says_whether_it_reached_someone(webhook: WebhookReceiver) -> None:
    """True when one webhook accepted it (or none is configured: nothing to deliver to),
    False when every configured webhook failed: the staleness alarm is then sent again."""
    environ = {"HOOK": webhook.url, "DOWN": "http://127.0.0.1:9/hook"}  # port 9: refused

    def notifier(*names: str) -> WebhookNotifier:
        notify = Notify.model_validate(
            {"webhooks": [{"url": f"${{{name}}}", "format": "wecom"} for name in names]},
            context={"environ": environ})
        return WebhookNotifier(notify, retry_base_seconds=0)

    assert notifier().alert("nowhere to go") is True
    assert notifier("DOWN", "HOOK").alert("one of two") is True
    webhook.answers = [(502, {"errmsg": "bad gateway"})] * 3
    assert notifier("DOWN", "HOOK").alert("none of two") is False
    assert [m["text"]["content"] for m in webhook.messages] == ["one of two"] + ["none of two"] * 3


def test_a_webhook_whose_answer_cannot_be_read_keeps_no_one_else_from_being_told(
        webhook: WebhookReceiver, garbled: GarbledEndpoint) -> None:
    """The first webhook answers a body labelled gzip that is not (httpx DecodingError):
    it is retried, then logged without its key; the second webhook and the heartbeat
    still hear of the failed run, and closing the run does not fail."""
    captured = io.StringIO()
    configure_logging(logging.INFO, stream=captured)
    u = unit(ScriptedExport({"orders": []}))
    environ = {"BAD": f"{garbled.base}/hook?key=garbled-key-0123456789",
               "GOOD": webhook.url, "PING": f"http://127.0.0.1:{webhook.server.server_port}/ping/abc"}
    webhook.get_status = 200
    notify = Notify.model_validate({
        "webhooks": [{"url": "${BAD}", "format": "json"}, {"url": "${GOOD}", "format": "wecom"}],
        "heartbeat": {"url": "${PING}"}}, context={"environ": environ})
    u.ctx.notifier = WebhookNotifier(notify, retry_base_seconds=0)
    [job] = seed_run(u, JobStatus.FAILED, error="export failed: collection is locked")

    assert close_finished_runs(u.ctx) == [job.run_id]

    assert len(garbled.requests) == 3  # retried: an unreadable answer is a transient failure
    [message] = webhook.messages
    assert "collection is locked" in message["text"]["content"]
    assert webhook.pings == ["/ping/abc/fail"]
    logs = captured.getvalue()
    assert "webhook answer unusable: DecodingError" in logs
    assert "garbled-key-0123456789" not in logs


def test_a_heartbeat_whose_answer_cannot_be_read_is_logged_not_raised(
        garbled: GarbledEndpoint) -> None:
    captured = io.StringIO()
    configure_logging(logging.INFO, stream=captured)
    u = unit(ScriptedExport({"orders": []}))
    notify = Notify.model_validate({"heartbeat": {"url": "${PING}"}}, context={
        "environ": {"PING": f"{garbled.base}/ping/garbled-key-0123456789"}})
    u.ctx.notifier = WebhookNotifier(notify, retry_base_seconds=0)
    [job] = seed_run(u, JobStatus.DONE)

    assert close_finished_runs(u.ctx) == [job.run_id]  # the ping's failure is not raised

    assert garbled.requests == ["GET /ping/garbled-key-0123456789"] * 3  # retried
    logs = captured.getvalue()
    assert "heartbeat answer unusable: DecodingError" in logs
    assert "garbled-key-0123456789" not in logs


def test_a_webhook_that_fails_in_an_unforeseen_way_is_logged_and_the_next_one_is_sent(
        webhook: WebhookReceiver) -> None:
    """Whatever one webhook raises, the Notifier never does, and the next one is sent."""
    http = make_client()
    post = http.post

    def broken_for_one(url: str, **kwargs: object) -> object:
        if "broken" in url:
            raise RuntimeError("a bug in the robot's adapter")
        return post(url, **kwargs)  # type: ignore[arg-type]

    http.post = broken_for_one  # type: ignore[method-assign,assignment]
    u = unit(ScriptedExport({"orders": []}))
    notify = Notify.model_validate({"webhooks": [
        {"url": "${BROKEN}", "format": "json"}, {"url": "${GOOD}", "format": "wecom"}]},
        context={"environ": {"BROKEN": "http://127.0.0.1:9/broken", "GOOD": webhook.url}})
    [job] = seed_run(u, JobStatus.FAILED, error="boom")
    run = u.state.runs[job.run_id]

    notify_run(notify, run, [u.job(job.job_id)], client=http, retry_base_seconds=0)

    [message] = webhook.messages
    assert run.run_id in message["text"]["content"]


def test_a_long_failure_reaches_the_robot_cut_at_its_size_limit(webhook: WebhookReceiver) -> None:
    """WeCom's text message takes 2048 bytes of UTF-8 at most, Feishu's request body 20 KB:
    a run whose errors run longer is cut at a character boundary, says so, and still names
    the run (a refused message would leave nobody told)."""
    u = unit(ScriptedExport({"orders": []}))
    [job] = seed_run(u, JobStatus.FAILED, error="导出失败：集合被锁定。" * 2000)  # 3 bytes a character
    run = u.state.runs[job.run_id]
    limits = {"wecom": 2048, "feishu": 20 * 1024}
    notify = Notify.model_validate(
        {"webhooks": [{"url": "${HOOK}", "format": fmt} for fmt in limits]},
        context={"environ": {"HOOK": webhook.url}})

    assert notify_run(notify, run, [u.job(job.job_id)], retry_base_seconds=0)
    WebhookNotifier(notify, retry_base_seconds=0).alert("告警：" * 10000)

    wecom, feishu, wecom_alert, feishu_alert = webhook.messages
    for message, limit in ((wecom["text"]["content"], 2048), (wecom_alert["text"]["content"], 2048)):
        assert len(message.encode()) <= limit < len(message.encode()) + 40
        assert "cut" in message
    assert run.run_id in wecom["text"]["content"]
    for body in (feishu, feishu_alert):
        text = body["content"]["text"]
        assert len(json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()) <= limits["feishu"]
        assert "cut" in text and "\ufffd" not in text
    assert run.run_id in feishu["content"]["text"]


def test_a_long_failure_reaches_a_dingtalk_robot_cut_at_its_size_limit(webhook: WebhookReceiver) -> None:
    """A DingTalk robot refuses a request body over 20000 bytes (HTTP 200, errcode 460101
    "message too long, exceed 20000 bytes"), however often it is sent: the run whose
    errors run longer, and a long alert, are cut to fit and still reach the group."""
    webhook.body_limit = (20000, {"errcode": 460101, "errmsg": "message too long, exceed 20000 bytes"})
    u = unit(ScriptedExport({"orders": []}))
    [job] = seed_run(u, JobStatus.FAILED, error="导出失败：集合被锁定。" * 2000)  # 3 bytes a character
    run = u.state.runs[job.run_id]
    notify = Notify.model_validate({"webhooks": [{"url": "${HOOK}", "format": "dingtalk"}]},
                                   context={"environ": {"HOOK": webhook.url}})

    assert notify_run(notify, run, [u.job(job.job_id)], retry_base_seconds=0)
    assert WebhookNotifier(notify, retry_base_seconds=0).alert("告警：" * 10000)

    run_message, alert = webhook.messages
    assert run.run_id in run_message["text"]["content"]
    for body in (run_message, alert):
        assert "cut" in body["text"]["content"] and "\ufffd" not in body["text"]["content"]


@pytest.mark.parametrize("robot", ["dingtalk", "feishu"])
def test_a_robot_with_signing_turned_on_takes_the_signed_message(
        webhook: WebhookReceiver, robot: str) -> None:
    """A DingTalk (加签) or Feishu (签名校验) robot with its signing secret refuses every
    message that does not carry a valid timestamp and sign: the run notification, an
    alert and doctor's test message all carry one, and the secret is never logged."""
    secret = "SECsigning-secret-0123456789abcdef"
    webhook.signing = (robot, secret)
    captured = io.StringIO()
    configure_logging(logging.INFO, stream=captured)
    u = unit(ScriptedExport({"orders": []}))
    [job] = seed_run(u, JobStatus.FAILED, error="collection is locked")
    notify = Notify.model_validate(
        {"webhooks": [{"url": "${HOOK}", "format": robot, "secret": "${ROBOT_SECRET}"}]},
        context={"environ": {"HOOK": webhook.url, "ROBOT_SECRET": secret}})

    assert notify_run(notify, u.state.runs[job.run_id], [u.job(job.job_id)], retry_base_seconds=0)
    assert WebhookNotifier(notify, retry_base_seconds=0).alert("stale backups")
    assert "accepted a test message" in probe_webhook(notify.webhooks[0], 0, send=True)

    assert len(webhook.messages) == 3  # each accepted at the first try
    assert secret not in captured.getvalue()
    assert "robot-key-5e6f7a8b" not in captured.getvalue()


def test_only_a_signing_robot_takes_a_signing_secret() -> None:
    with pytest.raises(ValueError, match="only dingtalk and feishu robots sign"):
        Notify.model_validate(
            {"webhooks": [{"url": "${HOOK}", "format": "wecom", "secret": "${ROBOT_SECRET}"}]},
            context={"environ": {"HOOK": "https://example.com/hook", "ROBOT_SECRET": "SECabcdef"}})


def test_a_json_webhook_that_answers_its_own_success_code_is_told_once(webhook: WebhookReceiver) -> None:
    """`errcode`/`code` in an answer are the robots' (WeCom, DingTalk, Feishu): a `json`
    endpoint says yes in its own words (PushPlus answers HTTP 200 `{"code": 200, "msg":
    "请求成功"}`). Read as a refusal, the message went three times and every poller tick
    after, for a day."""
    webhook.answers = [(200, {"code": 200, "msg": "请求成功"})] * 3
    u = unit(ScriptedExport({"orders": []}))
    [job] = seed_run(u, JobStatus.FAILED, error="collection is locked")
    notify = Notify.model_validate({"webhooks": [{"url": "${HOOK}", "format": "json"}]},
                                   context={"environ": {"HOOK": webhook.url}})

    assert notify_run(notify, u.state.runs[job.run_id], [u.job(job.job_id)], retry_base_seconds=0)
    assert len(webhook.messages) == 1


@pytest.mark.parametrize("answer", ["<html><body>Sign in to the Wi-Fi</body></html>", {"ok": True}])
def test_a_robot_url_answered_by_something_else_is_not_called_delivered(
        webhook: WebhookReceiver, answer: dict[str, object] | str) -> None:
    """Every robot answers a message it took with a JSON code of 0 (WeCom and DingTalk
    `errcode`, Feishu `code`/`StatusCode`): an HTTP 200 page without one (a proxy's
    sign-in page, a mistyped host) is not the robot, and doctor must not pass it."""
    notify = Notify.model_validate({"webhooks": [{"url": "${HOOK}", "format": "wecom"}]},
                                   context={"environ": {"HOOK": webhook.url}})
    webhook.answers = [(200, answer)]

    with pytest.raises(Fatal, match="not the robot's"):
        probe_webhook(notify.webhooks[0], 0, send=True)


def test_a_healthchecks_url_with_a_query_signals_a_failure_on_its_path(webhook: WebhookReceiver) -> None:
    """healthchecks.io signals a failure with /fail on the path (docs/signaling_failures/);
    its ping URLs may carry a query (?create=1 to auto-provision a check by slug, ?rid= for
    a run id). Appended after the query, /fail became part of create's value: the monitor
    took the failed run's ping as a success."""
    webhook.get_status = 200
    base = f"http://127.0.0.1:{webhook.server.server_port}"
    notify = Notify.model_validate(
        {"heartbeat": {"url": "${PING}"}},
        context={"environ": {"PING": base + "/ping-key-0123456789/nightly-backup?create=1"}})
    assert notify.heartbeat is not None

    ping(notify.heartbeat, True, "run a succeeded", retry_base_seconds=0)
    ping(notify.heartbeat, False, "run b failed", retry_base_seconds=0)

    assert webhook.pings == ["/ping-key-0123456789/nightly-backup?create=1",
                             "/ping-key-0123456789/nightly-backup/fail?create=1"]


def test_doctor_names_the_signing_secret_when_a_signing_robot_refuses(webhook: WebhookReceiver) -> None:
    """A robot with signing turned on and no `secret` configured refuses every message:
    doctor's advice names the setting that fixes it."""
    webhook.signing = ("dingtalk", "SECsigning-secret-0123456789abcdef")
    notify = Notify.model_validate({"webhooks": [{"url": "${HOOK}", "format": "dingtalk"}]},
                                   context={"environ": {"HOOK": webhook.url}})

    with pytest.raises(Fatal, match=r"310000.*notify\.webhooks\[0\]\.secret"):
        probe_webhook(notify.webhooks[0], 0, send=True)
