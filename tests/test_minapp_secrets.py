"""MinApp's client secret, sign-in codes, access and refresh tokens and signed download
links never reach a log line, a stored error or a manifest, even when things go wrong."""

from __future__ import annotations

import io
import json
import logging

from devkit.emulators.minapp import MinAppEmulator
from devkit.sample_data import make_docs
from shared.logs import configure_logging
from tests.support.backup import LocalBackup
from tests.support.leaks import assert_no_secrets
from tests.support.minapp import CLIENT_SECRET, backup_jumping


def assert_clean(text: str, secrets: list[str]) -> None:
    assert_no_secrets(text, [CLIENT_SECRET, *secrets])


def test_logs_state_and_manifests_hold_no_minapp_secrets(
        local: LocalBackup, minapp_emulator: MinAppEmulator) -> None:
    captured = io.StringIO()
    configure_logging(logging.DEBUG, stream=captured)
    rows = [{k: v for k, v in d.items() if k != "_id"} for d in make_docs(900)]
    minapp_emulator.add_table(1001, rows)
    minapp_emulator.add_table(1002, rows[:5])
    minapp_emulator.max_export_rows = 500
    minapp_emulator.job_window = 0.05
    # 4040 does not exist: its job fails, so an error is stored
    tables = [{"id": 1001, "split": {"key": "created_at", "rows_per_part": 400}}, 1002, 4040]
    config = local.config(local.minapp_source(minapp_emulator, tables=tables,
                                              max_export_rows=500, export_interval_seconds=0.05))
    backup_jumping(local.context(config), key="one")
    minapp_emulator.expire_tokens()
    minapp_emulator.expire_next_links(1)
    minapp_emulator.truncate_downloads(1)
    minapp_emulator.lose_create_answers(1)
    minapp_emulator.inject("job", 503)
    ctx = local.context(config)

    run = backup_jumping(ctx, key="two")

    logs = captured.getvalue()
    secrets = minapp_emulator.issued_tokens()
    assert len(secrets) >= 6  # two sign-ins: codes, access and refresh tokens
    assert "HTTP Request" in logs and "/api/oauth2/authorize/" in logs  # httpx's URL lines
    assert_clean(logs, secrets)
    jobs = ctx.state.list_jobs(run.run_id)
    assert [j.collection for j in jobs if j.status.value == "failed"] == ["4040"]
    assert minapp_emulator.download_statuses.count(403) == 1
    assert_clean(json.dumps([j.model_dump(mode="json") for j in jobs]), secrets)
    for obj in local.objects.list(config.destination.prefix):
        if obj.key.endswith(".json"):
            assert_clean(local.objects.read(obj.key).decode(), secrets)
    assert set(minapp_emulator.download_authorization) == {None}
