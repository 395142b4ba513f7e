"""Telling people how a run ended: chat robots (WeCom, DingTalk, Feishu) or plain JSON.

Sent once per run by whoever closes it (closing is compare-and-set), so overlapping
pollers do not notify twice. A notification that cannot be delivered is logged as an
error; it never keeps the run from closing.
"""

from __future__ import annotations

import functools
import logging
from typing import TYPE_CHECKING, Any

from shared.config import Notify, Webhook
from shared.domain.errors import Retryable
from shared.domain.jobs import Job, JobStatus, Run, RunStatus
from shared.logs import register_secret
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
    lines = [
        f"{'✅' if ok else '❌'} backup run {run.run_id} {run.status.value}: "
        f"{summary.get('done', 0)}/{summary.get('jobs', len(jobs))} collections copied, "
        f"{summary.get('records', 0)} records, {summary.get('bytes', 0)} bytes"
    ]
    for source, found in sorted(run.discovery.items()):
        if "error" in found:
            lines.append(f"- {source}: could not list its collections: {found['error']}")
    for job in failed[:MAX_FAILURES_LISTED]:
        lines.append(f"- {job.source}/{job.collection}: {job.error or 'failed'}")
    if len(failed) > MAX_FAILURES_LISTED:
        lines.append(f"... and {len(failed) - MAX_FAILURES_LISTED} more; see the run manifest")
    if run.manifest_key:
        lines.append(f"run manifest: {run.manifest_key}")
    return "\n".join(lines)


def payload(webhook: Webhook, run: Run, jobs: list[Job]) -> dict[str, Any]:
    text = run_text(run, jobs)
    if webhook.format in ("wecom", "dingtalk"):  # both robots take the same text message
        return {"msgtype": "text", "text": {"content": text}}
    if webhook.format == "feishu":
        return {"msg_type": "text", "content": {"text": text}}
    return {
        "run_id": run.run_id,
        "status": run.status.value,
        "summary": run.summary,
        "manifest_key": run.manifest_key,
        "failures": [{"source": j.source, "collection": j.collection, "error": j.error}
                     for j in jobs if j.status is JobStatus.FAILED],
        "text": text,
    }


def notify_run(settings: Notify, run: Run, jobs: list[Job],
               client: httpx.Client | None = None, retry_base_seconds: float = 1.0) -> None:
    if settings.on == "failure" and run.status is RunStatus.SUCCEEDED:
        return
    from shared.adapters.http import make_client  # httpx only when a run is reported

    http = client or make_client()
    for index, webhook in enumerate(settings.webhooks):
        url = webhook.url.get_secret_value()
        register_secret(url)
        try:
            send = functools.partial(_post, http, url, payload(webhook, run, jobs))
            with_retries(send, attempts=3, base_seconds=retry_base_seconds)
        except Retryable as exc:
            log.error("could not deliver the run notification",
                      extra={"webhook": f"notify.webhooks[{index}]", "reason": str(exc)})
        else:
            log.info("run notification sent", extra={"webhook": f"notify.webhooks[{index}]"})


class WebhookNotifier:
    """The `Notifier` port over `notify.webhooks`."""

    def __init__(self, settings: Notify, retry_base_seconds: float = 1.0) -> None:
        self._settings = settings
        self._retry_base = retry_base_seconds

    def notify(self, run: Run, jobs: list[Job]) -> None:
        notify_run(self._settings, run, jobs, retry_base_seconds=self._retry_base)


def _post(http: httpx.Client, url: str, body: dict[str, Any]) -> None:
    import httpx

    from shared.adapters.http import describe_transport_error

    try:
        response = http.post(url, json=body)
    except httpx.TransportError as exc:
        raise Retryable(f"webhook unreachable: {describe_transport_error(exc)}") from None
    if response.status_code >= 300:
        raise Retryable(f"webhook answered HTTP {response.status_code}")
    # Robots answer HTTP 200 with an error code in the body when they refuse a message.
    try:
        answer = response.json()
    except ValueError:
        return
    if isinstance(answer, dict):
        code = answer.get("errcode", answer.get("code", answer.get("StatusCode", 0)))
        if code not in (0, None, "0"):
            raise Retryable(f"webhook refused the message: code {code} "
                            f"({answer.get('errmsg') or answer.get('msg') or 'no message'})")
