"""MinApp sign-in never re-sends the client secret to another origin: a redirect from
api_base's origin to anywhere else (another host or port, or https to http) fails the
sign-in before the request is sent. Two real local listeners stand for the two hosts."""

from __future__ import annotations

import httpx
import pytest

from shared.adapters.http import OffOrigin, same_origin_only
from shared.domain.jobs import JobStatus
from shared.platforms.minapp.platform import AUTHORIZE
from tests.support.backup import LocalBackup, backup_now
from tests.support.hostile import Hostile, json_answer, redirect
from tests.support.minapp import CLIENT_SECRET


@pytest.mark.parametrize("status", [307, 308, 302])
def test_a_sign_in_redirect_to_another_origin_is_not_followed(
        local: LocalBackup, hostile: Hostile, other_hostile: Hostile, status: int) -> None:
    hostile.answers[AUTHORIZE] = redirect(f"{other_hostile.base}{AUTHORIZE}", status)
    other_hostile.answers[AUTHORIZE] = json_answer(b'{"code": "stolen-code-123456"}')
    source = {"type": "minapp", "name": "app", "client_id": "a4d2d62965ddb57fa4d6",
              "client_secret": "${MINAPP_CLIENT_SECRET}", "tables": [1001],
              "api_base": hostile.base}
    local.environ["MINAPP_CLIENT_SECRET"] = CLIENT_SECRET
    ctx = local.context(local.config(source))

    run = backup_now(ctx)

    [job] = ctx.state.list_jobs(run.run_id)
    assert job.status is JobStatus.FAILED
    assert f"redirected from http://127.0.0.1:{hostile.port}" in (job.error or "")
    assert "another origin; the client secret is not sent there" in (job.error or "")
    assert other_hostile.seen == []  # neither the secret nor anything else went there
    assert all(CLIENT_SECRET.encode() in s.body for s in hostile.seen)


@pytest.mark.parametrize("target", [
    "http://cloud.minapp.com/api/oauth2/access_token/",  # downgrade to plain http
    "https://cloud.minapp.com:8443/api/oauth2/access_token/",  # another port
    "https://minapp.com.evil.example/api/oauth2/access_token/",  # another host
])
def test_the_origin_check_refuses_downgrades_ports_and_hosts(target: str) -> None:
    check = same_origin_only("https://cloud.minapp.com")
    check(httpx.Request("POST", "https://cloud.minapp.com/api/oauth2/access_token/"))
    check(httpx.Request("POST", "https://CLOUD.minapp.com:443/x"))
    with pytest.raises(OffOrigin):
        check(httpx.Request("POST", target))
