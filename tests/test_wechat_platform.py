"""A third-party platform backing up the mini programs that authorized it: one config entry,
each mini program its own source in runs, keys and manifests. End to end over real HTTP."""

from __future__ import annotations

import io
import json
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, cast

import httpx
import pytest

from devkit.compare import assert_object_equals_docs
from devkit.sample_data import make_docs
from shared.domain.jobs import JobStatus, Run, RunStatus
from shared.logs import configure_logging
from shared.platforms.wechat import tokens as wechat_tokens
from shared.platforms.wechat.platform import WeChatClient
from shared.platforms.wechat.settings import VERIFY_TICKET_ENV
from shared.service.context import Context
from tests.support.backup import LocalBackup, backup_now
from tests.support.wechat import at_once, probe_as_functions

COMPONENT = "wx00000000000000c1"
COMPONENT_SECRET = "component-secret-8a7b6c"
TICKET = "ticket@@@5f4e3d2c1b"
APP_A, ENV_A = "wx000000000000000a", "shop-a-prod-1a"
APP_B, ENV_B = "wx000000000000000b", "shop-b-prod-2b"
COMPONENT_TOKEN = "/cgi-bin/component/api_component_token"
AUTHORIZER_TOKEN = "/cgi-bin/component/api_authorizer_token"

DATA = {
    (ENV_A, "orders"): make_docs(120, seed=11),
    (ENV_A, "会员 members"): make_docs(15, seed=12, prefix="m"),
    (ENV_B, "orders"): make_docs(60, seed=13, prefix="b"),
    (ENV_B, "users"): make_docs(9, seed=14, prefix="u"),
}


@dataclass
class Platform:
    local: LocalBackup
    refresh_b: str

    def source(self, *apps: dict[str, Any], **overrides: Any) -> dict[str, Any]:
        return {
            "type": "wechat-platform", "component_appid": COMPONENT,
            "component_secret": "${COMPONENT_SECRET}", "verify_ticket": "${COMPONENT_TICKET}",
            "api_base": self.local.emulator.base_url,
            "apps": list(apps) or [self.app_a(), self.app_b()], **overrides,
        }

    @staticmethod
    def app_a(**overrides: Any) -> dict[str, Any]:
        """Reached with the component token over componenttcb/*; every collection."""
        return {"name": "shop-a", "appid": APP_A, "env": ENV_A, "collections": "all", **overrides}

    @staticmethod
    def app_b(**overrides: Any) -> dict[str, Any]:
        """Reached over /tcb/* with an authorizer token obtained from its refresh token."""
        return {"name": "shop-b", "appid": APP_B, "env": ENV_B, "collections": ["orders", "users"],
                "authorizer_token": {"refresh_token": "${SHOP_B_REFRESH}"}, **overrides}

    def context(self, *sources: dict[str, Any]) -> Context:
        return self.local.context(self.local.config(*(sources or (self.source(),))))


@pytest.fixture
def platform(local: LocalBackup) -> Platform:
    emulator = local.emulator
    emulator.add_component(COMPONENT, COMPONENT_SECRET, TICKET)
    for appid, env in ((APP_A, ENV_A), (APP_B, ENV_B)):
        emulator.add_app(appid, f"own-secret-of-{appid}")  # never used by the platform
        emulator.add_env(appid, env)
    for (env, name), docs in DATA.items():
        emulator.add_collection(env, name, docs)
    emulator.authorize(COMPONENT, APP_A)
    refresh_b = emulator.authorize(COMPONENT, APP_B)
    local.environ.update(COMPONENT_SECRET=COMPONENT_SECRET, COMPONENT_TICKET=TICKET,
                         SHOP_B_REFRESH=refresh_b)
    return Platform(local, refresh_b)


def assert_every_object_equals_its_source(local: LocalBackup, ctx: Context, run: Run,
                                          expected: dict[tuple[str, str], str]) -> None:
    """`expected` maps (source name, collection) to the env holding the data."""
    jobs = {(j.source, j.collection): j for j in ctx.state.list_jobs(run.run_id)}
    assert set(jobs) == set(expected)
    for (source, collection), env in expected.items():
        job = jobs[(source, collection)]
        assert job.status is JobStatus.DONE and job.result is not None, job.error
        assert f"/runs/{run.run_id}/{source}/" in job.result.key
        assert_object_equals_docs(local.objects.read(job.result.key), DATA[(env, collection)], "json")
        manifest = json.loads(local.objects.read(job.result.manifest_key))
        assert manifest["source"] == source and manifest["platform"] == "wechat"


EVERYTHING = {("shop-a", "orders"): ENV_A, ("shop-a", "会员 members"): ENV_A,
              ("shop-b", "orders"): ENV_B, ("shop-b", "users"): ENV_B}


def test_two_authorized_mini_programs_in_one_run(platform: Platform) -> None:
    local = platform.local
    ctx = platform.context()

    run = backup_now(ctx)

    assert run.status is RunStatus.SUCCEEDED and run.sources == ["shop-a", "shop-b"]
    assert_every_object_equals_its_source(local, ctx, run, EVERYTHING)
    calls = local.emulator.calls
    assert calls["/componenttcb/dbcollection"] == 1 and calls["/componenttcb/dbexport"] == 2
    # shop-b lists its collections once, only to cross-check the exports' counts
    assert calls["/tcb/databasemigrateexport"] == 2 and calls["/tcb/databasecollectionget"] == 1
    assert calls[COMPONENT_TOKEN] == 1 and calls[AUTHORIZER_TOKEN] == 1
    manifest = json.loads(local.objects.read(run.manifest_key or ""))
    assert manifest["discovery"]["shop-a"]["found"] == ["orders", "会员 members"]
    assert {(j["source"], j["collection"]) for j in manifest["jobs"]} == set(EVERYTHING)


def test_platform_tokens_are_cached_in_the_state_table(platform: Platform) -> None:
    backup_now(platform.context(), key="night-1")
    run = backup_now(platform.context(), key="night-2")  # another invocation, same state table

    assert run.status is RunStatus.SUCCEEDED
    assert platform.local.emulator.calls[COMPONENT_TOKEN] == 1
    assert platform.local.emulator.calls[AUTHORIZER_TOKEN] == 1


def test_rejected_platform_tokens_are_fetched_again_once(platform: Platform) -> None:
    backup_now(platform.context(), key="night-1")
    platform.local.emulator.invalidate_tokens()
    ctx = platform.context()

    run = backup_now(ctx, key="night-2")

    assert run.status is RunStatus.SUCCEEDED
    assert_every_object_equals_its_source(platform.local, ctx, run, EVERYTHING)
    assert platform.local.emulator.calls[COMPONENT_TOKEN] == 2
    assert platform.local.emulator.calls[AUTHORIZER_TOKEN] == 2


def test_verify_ticket_is_read_from_the_environment_when_a_token_is_needed(
    platform: Platform, monkeypatch: pytest.MonkeyPatch,
) -> None:
    source = platform.source(platform.app_a())
    del source["verify_ticket"]
    monkeypatch.delenv(VERIFY_TICKET_ENV, raising=False)
    failed = backup_now(platform.context(source), key="no-ticket")
    assert failed.status is RunStatus.FAILED
    assert VERIFY_TICKET_ENV in failed.discovery["shop-a"]["error"]

    monkeypatch.setenv(VERIFY_TICKET_ENV, TICKET)
    ctx = platform.context(source)
    run = backup_now(ctx, key="ticket")

    assert run.status is RunStatus.SUCCEEDED
    assert_every_object_equals_its_source(platform.local, ctx, run, {
        ("shop-a", "orders"): ENV_A, ("shop-a", "会员 members"): ENV_A})


def test_an_expired_verify_ticket_fails_loudly_with_the_fix(platform: Platform) -> None:
    platform.local.emulator.set_verify_ticket(COMPONENT, TICKET, expired=True)
    ctx = platform.context()

    run = backup_now(ctx)

    assert run.status is RunStatus.FAILED
    assert "component_verify_ticket is expired or invalid" in run.discovery["shop-a"]["error"]
    for job in ctx.state.list_jobs(run.run_id):  # shop-b needs the component token too
        assert job.status is JobStatus.FAILED and "61005" in (job.error or "")
        assert TICKET not in (job.error or "")


def test_a_refresh_token_handed_back_by_wechat_is_kept(platform: Platform) -> None:
    emulator = platform.local.emulator
    emulator.rotate_refresh_tokens = True  # the configured refresh token stops working once used
    source = platform.source(platform.app_b())
    backup_now(platform.context(source), key="night-1")
    emulator.expire_tokens()
    ctx = platform.context(source)

    run = backup_now(ctx, key="night-2")

    # Succeeds only with the refresh token WeChat handed back: the configured one is used up.
    assert run.status is RunStatus.SUCCEEDED, [j.error for j in ctx.state.list_jobs(run.run_id)]
    # night-1; night-2: refused once for the expired component token, then with a fresh one
    assert emulator.calls[AUTHORIZER_TOKEN] == 3


def test_two_functions_at_once_exchange_the_refresh_token_once(platform: Platform) -> None:
    """The trigger, the poller and the finisher are separate processes sharing only the
    state table. When WeChat hands back a new authorizer_refresh_token the one exchanged is
    used up, so two functions exchanging at once: one of them is refused (61023) and the
    other keeps a refresh token only if it wins the race to store it."""
    emulator = platform.local.emulator
    emulator.rotate_refresh_tokens = True
    emulator.latency = 0.5  # the calls overlap on the wire, as a distant WeChat's do
    document = platform.local.document(platform.source(platform.app_b()))

    answers = probe_as_functions(document, platform.local.environ, ["shop-b", "shop-b"])

    assert all(a.startswith("token fetched") for a in answers), answers
    assert emulator.calls[AUTHORIZER_TOKEN] == 1 and emulator.calls[COMPONENT_TOKEN] == 1


def test_a_kept_refresh_token_outlives_a_month(platform: Platform,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """An authorizer_refresh_token stays valid as long as the authorization does
    (https://developers.weixin.qq.com/doc/knowledge/07e2d7fc2d6a1edf.html): the refresh token
    WeChat handed back once, and hands back unchanged from then on, is still the one to use
    weeks later; falling back to the configured one, used up, would fail every backup."""
    emulator = platform.local.emulator
    emulator.rotate_refresh_tokens = True
    source = platform.source(platform.app_b())
    assert backup_now(platform.context(source), key="night-1").status is RunStatus.SUCCEEDED
    emulator.rotate_refresh_tokens = False  # the handed-back token stays the current one
    for days, key in ((20, "night-2"), (45, "night-3")):
        later = datetime.now(timezone.utc) + timedelta(days=days)
        monkeypatch.setattr(wechat_tokens, "_now", lambda later=later: later)
        ctx = platform.context(source)

        run = backup_now(ctx, key=key)

        assert run.status is RunStatus.SUCCEEDED, [j.error for j in ctx.state.list_jobs(run.run_id)]


def test_an_authorizer_token_supplied_directly_needs_no_platform_secret(platform: Platform) -> None:
    local = platform.local
    component = httpx.post(f"{local.emulator.base_url}{COMPONENT_TOKEN}", json={
        "component_appid": COMPONENT, "component_appsecret": COMPONENT_SECRET,
        "component_verify_ticket": TICKET}).json()["component_access_token"]
    issued = httpx.post(f"{local.emulator.base_url}{AUTHORIZER_TOKEN}",
                        params={"component_access_token": component},
                        json={"component_appid": COMPONENT, "authorizer_appid": APP_B,
                              "authorizer_refresh_token": platform.refresh_b}).json()
    local.environ["SHOP_B_TOKEN"] = issued["authorizer_access_token"]  # the platform server's
    source = platform.source(platform.app_b(authorizer_token={"access_token": "${SHOP_B_TOKEN}"}))
    del source["component_secret"], source["verify_ticket"]
    ctx = platform.context(source)

    run = backup_now(ctx)

    assert run.status is RunStatus.SUCCEEDED
    assert_every_object_equals_its_source(local, ctx, run, {
        ("shop-b", "orders"): ENV_B, ("shop-b", "users"): ENV_B})
    assert local.emulator.calls[COMPONENT_TOKEN] == 1 and local.emulator.calls[AUTHORIZER_TOKEN] == 1


def test_a_mini_program_that_withdrew_its_authorization_is_named(platform: Platform) -> None:
    platform.local.emulator.revoke_authorization(COMPONENT, APP_A)
    ctx = platform.context()

    run = backup_now(ctx)

    assert run.status is RunStatus.FAILED
    assert f"mini program {APP_A} has not authorized the platform" in run.discovery["shop-a"]["error"]
    assert_every_object_equals_its_source(platform.local, ctx, run, {
        ("shop-b", "orders"): ENV_B, ("shop-b", "users"): ENV_B})


def test_platform_secrets_and_tokens_never_reach_logs_state_or_manifests(platform: Platform) -> None:
    captured = io.StringIO()
    configure_logging(logging.DEBUG, stream=captured)
    emulator = platform.local.emulator
    emulator.rotate_refresh_tokens = True
    config = platform.local.config(platform.source())
    backup_now(platform.local.context(config), key="one")
    emulator.invalidate_tokens()
    emulator.fail_export(ENV_B, "users", "导出失败")
    ctx = platform.local.context(config)

    run = backup_now(ctx, key="two")

    secrets = [COMPONENT_SECRET, TICKET, platform.refresh_b, *emulator.issued_tokens()]
    stored = json.dumps([j.model_dump(mode="json") for j in ctx.state.list_jobs(run.run_id)])
    stored += json.dumps(run.model_dump(mode="json"))
    objects = "".join(platform.local.objects.read(o.key).decode()
                      for o in platform.local.objects.list(config.destination.prefix)
                      if o.key.endswith(".json"))
    logs = captured.getvalue()
    assert "HTTP Request" in logs and "refreshtoken@@@" not in logs
    for text in (logs, stored, objects):
        for secret in secrets:
            assert secret not in text


def test_a_kept_refresh_token_survives_a_failure_that_is_not_its_refusal(platform: Platform) -> None:
    """Only WeChat refusing the kept refresh token (61023 / 61003) is a reason to fall back to
    the configured one; an expired verify ticket (or an IP not allow-listed) says nothing
    about it. Dropping it then would leave only the configured refresh token, which WeChat
    retired when it handed the kept one back: every backup after the ticket is fixed would
    fail until the mini program authorized the platform again."""
    emulator = platform.local.emulator
    emulator.rotate_refresh_tokens = True  # the configured refresh token stops working once used
    source = platform.source(platform.app_b())
    assert backup_now(platform.context(source), key="night-1").status is RunStatus.SUCCEEDED
    emulator.rotate_refresh_tokens = False
    emulator.expire_tokens()
    emulator.set_verify_ticket(COMPONENT, TICKET, expired=True)
    ctx = platform.context(source)
    failed = backup_now(ctx, key="night-2")
    assert failed.status is RunStatus.FAILED
    assert all("61005" in (j.error or "") for j in ctx.state.list_jobs(failed.run_id))

    emulator.set_verify_ticket(COMPONENT, TICKET)  # the user puts in a fresh ticket
    ctx = platform.context(source)
    run = backup_now(ctx, key="night-3")

    assert run.status is RunStatus.SUCCEEDED, [j.error for j in ctx.state.list_jobs(run.run_id)]


def test_calls_at_once_after_the_tokens_expired_exchange_the_refresh_token_once(
    platform: Platform,
) -> None:
    """The poller calls one source's client from several threads. When WeChat hands back a
    new authorizer_refresh_token with each exchange (the old one then refused), a second
    exchange at the same moment offers the used-up one: refused, it must neither fail that
    call nor drop the refresh token the first exchange kept, or every backup after it fails
    until the mini program authorizes the platform again."""
    emulator = platform.local.emulator
    emulator.rotate_refresh_tokens = True
    source = platform.source(platform.app_b())
    assert backup_now(platform.context(source), key="night-1").status is RunStatus.SUCCEEDED
    emulator.expire_tokens()
    emulator.latency = 0.2  # the calls overlap on the wire, as a distant WeChat's do
    client = cast(WeChatClient, platform.context(source).platforms.get("shop-b"))

    assert at_once(client.probe, 6) == []

    emulator.latency = 0
    ctx = platform.context(source)
    run = backup_now(ctx, key="night-2")
    assert run.status is RunStatus.SUCCEEDED, [j.error for j in ctx.state.list_jobs(run.run_id)]
    # night-1; then refused once for the expired component token, and with a fresh one
    assert emulator.calls[AUTHORIZER_TOKEN] == 3 and emulator.calls[COMPONENT_TOKEN] == 2
