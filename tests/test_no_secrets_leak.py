"""The app secret, access tokens and signed URL query strings never reach a log line,
a stored error or a manifest, even when things go wrong."""

from __future__ import annotations

import io
import json
import logging

from devkit.sample_data import make_docs
from shared.logs import configure_logging
from tests.support.backup import SECRET, LocalBackup, backup_now
from tests.support.leaks import assert_no_secrets


def assert_clean(text: str, secrets: list[str]) -> None:
    assert_no_secrets(text, [SECRET, *secrets])


def test_logs_state_and_manifests_hold_no_secrets(local: LocalBackup) -> None:
    captured = io.StringIO()
    configure_logging(logging.DEBUG, stream=captured)
    local.seed("orders", make_docs(500))
    local.seed("users", make_docs(5))
    local.emulator.fail_export("shop-prod-1a2b3c", "users", "boom")
    config = local.config(local.wechat_source(collections=["orders", "users"]))
    backup_now(local.context(config), key="one")
    local.emulator.expire_tokens()
    local.emulator.expire_next_links(1)
    local.emulator.truncate_downloads(1)
    ctx = local.context(config)

    run = backup_now(ctx, key="two")

    logs = captured.getvalue()
    tokens = local.emulator.issued_tokens()
    assert len(tokens) >= 2 and "HTTP Request" in logs  # httpx's own URL lines were captured
    assert_clean(logs, tokens)
    stored = json.dumps([j.model_dump(mode="json") for j in ctx.state.list_jobs(run.run_id)])
    assert_clean(stored, tokens)
    for obj in local.objects.list(config.destination.prefix):
        if obj.key.endswith(".json"):
            assert_clean(local.objects.read(obj.key).decode(), tokens)
    for line in logs.splitlines():  # one JSON object per line, each naming its run
        entry = json.loads(line)
        if entry["logger"].startswith("shared.service") and "job_id" in entry:
            assert "run_id" in entry
