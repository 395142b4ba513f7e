"""Telling people how a run ended: chat robots (WeCom, DingTalk, Feishu) or plain JSON.

Sent once per run by whoever closes it (closing is compare-and-set), so overlapping
pollers do not notify twice. A notification that cannot be delivered is logged as an
error; it never keeps the run from closing.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from shared.config import Notify, Webhook
from shared.domain.errors import Fatal, Retryable
from shared.domain.jobs import Job, JobStatus, Run, RunStatus
from shared.logs import redact, register_secret
from shared.retry import with_retries

if TYPE_CHECKING:
    import httpx

log = logging.getLogger(__name__)
MAX_FAILURES_LISTED = 20


def run_text(run: Run, jobs: list[Job]) -> str:
    """A short human summary: what failed and why first, then the totals."""
    summary = run.summary or {}
    failed = [j for j in jobs if j.status is JobStatus.FAILED]
    ok = run.status is RunStatus.SUCCEEDED
    if run.operation == "restore":
        return _restore_text(run, jobs, ok)
    lines = [
        f"{('⚠️' if summary.get('suspect') else '✅') if ok else '❌'} backup run {run.run_id} {run.status.value}: "
        f"{summary.get('done', 0)}/{summary.get('jobs', len(jobs))} collections copied, "
        f"{summary.get('records', 0)} records, {summary.get('bytes', 0)} bytes"
    ]
    for source, found in sorted(run.discovery.items()):
        if "error" in found:
            lines.append(f"- {source}: nothing backed up: {found['error']}")
    for where, warning in sorted(summary.get("count_warnings", {}).items()):
        lines.append(f"- warning {where}: {warning}")
    for job in failed[:MAX_FAILURES_LISTED]:
        lines.append(f"- {job.source}/{job.collection}: {job.error or 'failed'}")
    for problem in (summary.get("verify") or {}).get("problems", [])[:MAX_FAILURES_LISTED]:
        lines.append(f"- verify: {problem}")
    if (summary.get("verify") or {}).get("next_step"):  # out of time: some only quick-checked
        lines.append(f"- verify: {summary['verify']['next_step']}")
    for item in summary.get("suspect", [])[:MAX_FAILURES_LISTED]:
        lines.append(f"- ⚠️ suspect: {item['source']}/{item['collection']} has "
                     f"{item['records']} records, down from {item['previous_records']} in its "
                     "last good backup; acknowledge it if the drop was intended")
    if len(failed) > MAX_FAILURES_LISTED:
        lines.append(f"... and {len(failed) - MAX_FAILURES_LISTED} more; see the run manifest")
    if run.manifest_key:
        lines.append(f"run manifest: {run.manifest_key}")
    return "\n".join(lines)


def _restore_text(run: Run, jobs: list[Job], ok: bool) -> str:
    lines = [f"{'✅' if ok else '❌'} restore {run.run_id} {run.status.value}"]
    for job in jobs:
        order = job.restore
        if order is None:
            continue
        lines.append(f"{job.source}/{order.collection} from backup run {order.backup_run_id} "
                     f"into {job.source}/{order.target} (mode {order.mode}): "
                     f"{job.progress_records or 0} of {order.records} records")
        if job.error and job.status is JobStatus.FAILED:
            lines.append(f"- {job.error}")
    return "\n".join(lines)


# What a robot takes at most, in bytes of UTF-8; a longer message is refused, and nobody
# is told. WeCom: a text message's content "最长不超过2048个字节，必须是utf8编码" (群机器人
# 配置说明, 文本类型, https://developer.work.weixin.qq.com/document/path/91770). Feishu: "请求体
# 的数据大小不能超过 20 KB" (自定义机器人使用指南, 注意事项,
# https://open.feishu.cn/document/client-docs/bot-v3/add-custom-bot): the whole JSON body,
# so its envelope (and a signature's timestamp and sign) are left room. DingTalk: the
# robot (自定义机器人发送群消息, https://open.dingtalk.com/document/orgapp/custom-robot-access)
# refuses a body over 20000 bytes, HTTP 200 with `{"errcode": 460101, "errmsg": "message too
# long, exceed 20000 bytes"}` ("body 大小不合法;请保持大小在 20000bytes 以内"), as its
# answers quoted in timonwong/prometheus-webhook-dingtalk#30 and Le0nsec/SecCrawler#12
# show; its page states no limit. Its signature goes in the query, not the body.
_WECOM_TEXT_BYTES = 2048
_FEISHU_BODY_BYTES = 20 * 1024
_FEISHU_ROOM = 512  # msg_type, the envelope, timestamp and sign
_DINGTALK_BODY_BYTES = 20000
_DINGTALK_ROOM = 256  # msgtype and the envelope


def _robot_text(webhook: Webhook, text: str) -> dict[str, Any] | None:
    """A robot's text message, cut to the robot's size limit; None for plain JSON webhooks."""
    if webhook.format in ("wecom", "dingtalk"):  # both robots take the same text message
        if webhook.format == "wecom":
            text = _fit(text, _WECOM_TEXT_BYTES, _utf8_size)
        else:
            text = _fit(text, _DINGTALK_BODY_BYTES - _DINGTALK_ROOM, _json_size)
        return {"msgtype": "text", "text": {"content": text}}
    if webhook.format == "feishu":
        text = _fit(text, _FEISHU_BODY_BYTES - _FEISHU_ROOM, _json_size)
        return {"msg_type": "text", "content": {"text": text}}
    return None


def _utf8_size(text: str) -> int:
    return len(text.encode())


def _json_size(text: str) -> int:
    """Bytes `text` takes in a JSON body as httpx sends it (UTF-8, escapes included)."""
    return len(json.dumps(text, ensure_ascii=False).encode())


def _fit(text: str, limit: int, size: Callable[[str], int]) -> str:
    """`text` if it fits in `limit` bytes; else its head (cut between characters, never
    inside one) and a note that it was cut."""
    if size(text) <= limit:
        return text
    note = f"\n… (cut: the robot takes {limit} bytes at most; the run's status page has the rest)"
    low, high = 0, len(text)  # the longest head that fits with the note
    while low < high:
        middle = (low + high + 1) // 2
        if size(text[:middle] + note) <= limit:
            low = middle
        else:
            high = middle - 1
    return text[:low] + note


def payload(webhook: Webhook, run: Run, jobs: list[Job]) -> dict[str, Any]:
    text = run_text(run, jobs)
    robot = _robot_text(webhook, text)
    if robot is not None:
        return robot
    return {
        "run_id": run.run_id,
        "status": run.status.value,
        "summary": run.summary,
        "manifest_key": run.manifest_key,
        "failures": [
            *({"source": source, "collection": "*", "error": found["error"]}
              for source, found in sorted(run.discovery.items()) if "error" in found),
            *({"source": j.source, "collection": j.collection, "error": j.error}
              for j in jobs if j.status is JobStatus.FAILED)],
        "text": text,
    }


def notify_run(settings: Notify, run: Run, jobs: list[Job],
               client: httpx.Client | None = None, retry_base_seconds: float = 1.0) -> bool:
    """Whether the notification reached someone: a webhook accepted it, or there was
    nothing to send (a quiet success, no webhook configured)."""
    if not has_news(settings, run):
        return True
    from shared.adapters.http import make_client  # httpx only when a run is reported

    return _deliver(settings, "run notification", lambda webhook: payload(webhook, run, jobs),
                    client or make_client(), retry_base_seconds) > 0


def has_news(settings: Notify, run: Run) -> bool:
    """Whether `run`'s notification goes to a webhook: not a quiet success (`on: failure`,
    succeeded and nothing suspect), and a webhook is configured."""
    suspect = bool((run.summary or {}).get("suspect"))
    quiet = settings.on == "failure" and run.status is RunStatus.SUCCEEDED and not suspect
    return bool(settings.webhooks) and not quiet


def _deliver(settings: Notify, what: str, body_for: Callable[[Webhook], dict[str, Any]],
             http: httpx.Client, retry_base_seconds: float) -> int:
    """Send to every webhook; how many accepted."""
    accepted = 0
    for index, webhook in enumerate(settings.webhooks):
        url = webhook.url.get_secret_value()
        register_secret(url)
        try:
            send = functools.partial(_send, http, webhook, body_for(webhook))
            with_retries(send, attempts=3, base_seconds=retry_base_seconds)
        except (Retryable, Fatal) as exc:  # Fatal: refused for good, after one try
            log.error(f"could not deliver the {what}",
                      extra={"webhook": f"notify.webhooks[{index}]", "reason": str(exc)})
        except Exception as exc:  # must not keep the next webhook, nor the heartbeat, from going
            log.exception(f"could not deliver the {what}", extra={
                "webhook": f"notify.webhooks[{index}]",
                "reason": redact(f"{type(exc).__name__}: {exc}")})
        else:
            log.info(f"{what} sent", extra={"webhook": f"notify.webhooks[{index}]"})
            accepted += 1
    return accepted


def text_payload(webhook: Webhook, text: str) -> dict[str, Any]:
    """An alert's message: a robot's text message, or `{"alert": true, "text": ...}`."""
    return _robot_text(webhook, text) or {"alert": True, "text": text}


class WebhookNotifier:
    """The `Notifier` port over `notify.webhooks` and `notify.heartbeat`."""

    def __init__(self, settings: Notify, retry_base_seconds: float = 1.0) -> None:
        self._settings = settings
        self._retry_base = retry_base_seconds

    def sends(self, run: Run) -> bool:
        return has_news(self._settings, run)

    def notify(self, run: Run, jobs: list[Job], *, heartbeat: bool = True) -> bool:
        delivered = notify_run(self._settings, run, jobs, retry_base_seconds=self._retry_base)
        if heartbeat and self._settings.heartbeat is not None and run.operation == "backup":
            from shared.adapters.heartbeat import ping

            ok = run.status is RunStatus.SUCCEEDED
            ping(self._settings.heartbeat, ok, f"run {run.run_id} {run.status.value}",
                 retry_base_seconds=self._retry_base)
        return delivered

    def alert(self, text: str) -> bool:
        if not self._settings.webhooks:
            log.warning("alert not sent: no notify.webhooks configured; it is only in this log",
                        extra={"text": text})
            return True  # nothing to deliver to: trying again would not change that
        from shared.adapters.http import make_client

        return _deliver(self._settings, "alert", lambda webhook: text_payload(webhook, text),
                        make_client(), self._retry_base) > 0


# A refusal that holds until someone fixes the URL is tried once (a 4xx answer, but 408 and
# 429, which may pass a moment later; or a robot's code for a key it does not know): the
# poller's next tick sends the message again, with the config as fixed by then. The codes:
# WeCom 93000, the webhook URL (its key) is invalid (全局错误码,
# https://developer.work.weixin.qq.com/document/path/90313); Feishu 19001, "param invalid:
# incoming webhook access token invalid" (自定义机器人使用指南 > 常见问题,
# https://open.feishu.cn/document/client-docs/bot-v3/add-custom-bot); DingTalk 300001,
# "token is not exist", the access_token in the URL names no robot (自定义机器人发送群消息,
# https://open.dingtalk.com/document/orgapp/custom-robot-access, lists no codes: the answer
# as quoted in timonwong/prometheus-webhook-dingtalk#91 and sdvdxl/falcon-message#7).
INVALID_KEY_CODES = {"wecom": frozenset({"93000"}), "feishu": frozenset({"19001"}),
                     "dingtalk": frozenset({"300001"})}
_CHECK_WEBHOOK = "trying again does not change that: check its URL in notify.webhooks (the robot's key)"


def _send(http: httpx.Client, webhook: Webhook, body: dict[str, Any]) -> None:
    """Post `body`, signed afresh at each try when the robot signs (its signature ages)."""
    url, signed = _signed(webhook, webhook.url.get_secret_value(), body, time.time())
    # a `json` endpoint's body is its own (PushPlus answers {"code": 200} for yes,
    # https://www.pushplus.plus/doc/guide/api.html): only a robot's codes are read
    _post(http, url, signed, webhook.format)


def _signed(webhook: Webhook, url: str, body: dict[str, Any],
            now: float) -> tuple[str, dict[str, Any]]:
    """The URL and body as a robot with signing turned on takes them; as they are without
    a secret. Either robot refuses a timestamp more than an hour from its clock."""
    if webhook.secret is None:
        return url, body
    secret = webhook.secret.get_secret_value()
    register_secret(secret)
    if webhook.format == "dingtalk":
        # 加签 (https://open.dingtalk.com/document/robots/customize-robot-security-settings):
        # timestamp in ms; sign = urlEncode(base64(HmacSHA256(key=secret, msg=timestamp +
        # "\n" + secret))); both in the query
        stamp = str(int(now * 1000))
        digest = hmac.new(secret.encode(), f"{stamp}\n{secret}".encode(), hashlib.sha256).digest()
        query = urlencode({"timestamp": stamp, "sign": base64.b64encode(digest).decode()})
        return f"{url}{'&' if '?' in url else '?'}{query}", body
    # Feishu 签名校验 (自定义机器人使用指南, https://open.feishu.cn/document/client-docs/bot-v3/
    # add-custom-bot): timestamp in seconds; the KEY is timestamp + "\n" + secret and the
    # message empty; sign = base64(HmacSHA256); both in the body
    stamp = str(int(now))
    digest = hmac.new(f"{stamp}\n{secret}".encode(), b"", hashlib.sha256).digest()
    return url, {**body, "timestamp": stamp, "sign": base64.b64encode(digest).decode()}


_CODES = {"errcode", "code", "StatusCode"}  # where each robot puts its answer (below)


def _post(http: httpx.Client, url: str, body: dict[str, Any], fmt: str) -> None:
    import httpx

    from shared.adapters.http import describe_http_error, describe_transport_error

    try:
        response = http.post(url, json=body)
    except httpx.TransportError as exc:
        raise Retryable(f"webhook unreachable: {describe_transport_error(exc)}") from None
    except httpx.HTTPError as exc:  # an unreadable answer (bad gzip), too many redirects
        raise Retryable(f"webhook answer unusable: {describe_http_error(exc)}") from None
    if 400 <= response.status_code < 500 and response.status_code not in (408, 429):
        raise Fatal(f"webhook refused the message: HTTP {response.status_code}; {_CHECK_WEBHOOK}")
    if response.status_code >= 300:
        raise Retryable(f"webhook answered HTTP {response.status_code}")
    # Robots answer HTTP 200 with an error code in the body when they refuse a message:
    # WeCom `{"errcode": 93000, "errmsg": ...}` (群机器人配置说明,
    # https://developer.work.weixin.qq.com/document/path/91770; codes: /document/path/90313),
    # DingTalk `{"errcode": 310000, "errmsg": "keywords not in content"}` (自定义机器人发送群消息,
    # https://open.dingtalk.com/document/orgapp/custom-robot-access), Feishu
    # `{"code": 19024, "msg": "Key Words Not Found"}` or `{"code": 9499, "msg": "Bad Request"}`,
    # and `"StatusCode"` in older answers (自定义机器人使用指南,
    # https://open.feishu.cn/document/client-docs/bot-v3/add-custom-bot). Zero means sent.
    if fmt == "json":  # a `json` endpoint takes the message with any 2xx
        return
    try:
        answer = response.json()
    except ValueError:
        answer = None
    if not isinstance(answer, dict) or not _CODES & answer.keys():  # every robot answers one
        raise Retryable(f"webhook answered HTTP {response.status_code}, but not the robot's "
                        "answer (no errcode or code): is the URL the robot's webhook?")
    code = answer.get("errcode", answer.get("code", answer.get("StatusCode", 0)))
    if str(code) in INVALID_KEY_CODES.get(fmt, ()):  # the next try is refused the same way
        raise Fatal(f"webhook refused the message: code {code} "
                    f"({answer.get('errmsg') or answer.get('msg') or 'no message'}); "
                    f"{_CHECK_WEBHOOK}")
    if code not in (0, None, "0"):
        raise Retryable(f"webhook refused the message: code {code} "
                        f"({answer.get('errmsg') or answer.get('msg') or 'no message'})")


TEST_TEXT = "baas-backup doctor: a test message; no backup ran"


def probe_webhook(webhook: Webhook, index: int, send: bool, client: httpx.Client | None = None) -> str:
    """`doctor`: the webhook answers an HTTP GET (any status: it is there); with `send`, it
    accepts a test message in its format. The URL carries the robot's key: only its host
    is ever shown."""
    import httpx

    from shared.adapters.http import describe_transport_error, make_client

    url = webhook.url.get_secret_value()
    register_secret(url)
    where = f"notify.webhooks[{index}] ({webhook.format}, host {httpx.URL(url).host})"
    http = client or make_client()
    if send:
        body = _robot_text(webhook, TEST_TEXT) or {"doctor": True, "text": TEST_TEXT}
        try:
            _send(http, webhook, body)
        except Fatal as exc:  # says what to check already
            raise Fatal(f"{where}: {exc}") from None
        except Retryable as exc:
            raise Fatal(f"{where}: {exc}; check the URL (its key) and the robot's security "
                        "settings (keywords, IP allow-list; with signing turned on, "
                        f"notify.webhooks[{index}].secret holds its signing secret)") from None
        return f"{where} accepted a test message"
    try:
        response = http.get(url)
    except httpx.TransportError as exc:
        raise Fatal(f"{where} is unreachable from here: {describe_transport_error(exc)}; check "
                    "the URL and that this network reaches it") from None
    return (f"{where} answers (HTTP {response.status_code} to a GET); doctor --notify (or "
            "\"notify\": true) sends it a test message")
