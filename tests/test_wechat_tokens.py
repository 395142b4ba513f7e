"""Who owns the access token. End to end over real HTTP, with "the user's other server"
played by the test: it fetches its own tokens from the emulator and, for the external modes,
serves them from a small token service on loopback."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, cast

import httpx
import pytest

from devkit.compare import assert_object_equals_docs
from devkit.sample_data import make_docs
from shared.adapters.sql_state import SqlStateStore
from shared.adapters.token_memo import MemoTokenCache
from shared.domain.errors import Fatal, Retryable
from shared.domain.jobs import JobStatus, Run, RunStatus
from shared.platforms.wechat import tokens as wechat_tokens
from shared.platforms.wechat.platform import WeChatClient
from shared.platforms.wechat.tokens import CachedToken
from shared.service.context import Context
from tests.support.backup import APPID, SECRET, LocalBackup, backup_now
from tests.support.wechat import at_once, probe_as_functions

STABLE = "/cgi-bin/stable_token"
LEGACY = "/cgi-bin/token"
EXPORT = "/tcb/databasemigrateexport"
SERVICE_KEY = "Bearer token-service-key-123"


class TokenService:
    """The user's token service: GET answers the token it currently holds."""

    def __init__(self) -> None:
        self.token = ""
        self.requests: list[str | None] = []  # Authorization header of each request
        service = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                service.requests.append(self.headers.get("Authorization"))
                if self.headers.get("Authorization") != SERVICE_KEY:
                    self.send_response(401)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = json.dumps({"access_token": service.token, "expires_in": 7000}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/wechat/{APPID}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def token_service() -> Iterator[TokenService]:
    service = TokenService()
    yield service
    service.close()


def users_server_token(local: LocalBackup, legacy: bool = False) -> str:
    """What the mini program's own server does to get its token."""
    base = local.emulator.base_url
    if legacy:
        params = {"grant_type": "client_credential", "appid": APPID, "secret": SECRET}
        answer = httpx.get(f"{base}{LEGACY}", params=params).json()
    else:
        body = {"grant_type": "client_credential", "appid": APPID, "secret": SECRET}
        answer = httpx.post(f"{base}{STABLE}", json=body).json()
    token: str = answer["access_token"]
    return token


def only_job(ctx: Context, run: Run) -> Any:
    (job,) = ctx.state.list_jobs(run.run_id)
    return job


def assert_orders_backed_up(local: LocalBackup, ctx: Context, run: Run, docs: list[dict[str, Any]]) -> None:
    assert run.status is RunStatus.SUCCEEDED
    job = only_job(ctx, run)
    assert job.result is not None
    assert_object_equals_docs(local.objects.read(job.result.key), docs, "json")


def probe(local: LocalBackup) -> str:
    """One listing with a fresh context (its own memo, the shared state table)."""
    ctx = local.context(local.config())
    return cast(WeChatClient, ctx.platforms.get("shop")).probe()


@pytest.mark.parametrize("expires_in", [0, "0", 60])
def test_a_token_said_to_expire_within_minutes_is_not_kept_for_two_hours(
    local: LocalBackup, expires_in: Any,
) -> None:
    """getStableAccessToken answers expires_in: the token's remaining life in seconds
    (https://developers.weixin.qq.com/miniprogram/dev/OpenApiDoc/mp-access-token/getStableAccessToken.html);
    0 is a token about to lapse, not a missing field to replace with 7200."""
    local.seed("orders", make_docs(2))
    theirs = users_server_token(local)
    local.emulator.answer_with(STABLE, {"errcode": 0, "errmsg": "ok", "access_token": theirs,
                                        "expires_in": expires_in})
    probe(local)
    asked = local.emulator.calls[STABLE]

    probe(local)

    assert local.emulator.calls[STABLE] == asked + 1  # asked again, not served from the cache


def test_a_token_lifetime_that_is_not_a_number_fails_naming_it(local: LocalBackup) -> None:
    local.seed("orders", make_docs(2))
    local.emulator.answer_with(STABLE, {"errcode": 0, "errmsg": "ok", "access_token": "t-1",
                                        "expires_in": "2 hours"})

    with pytest.raises(Fatal, match=r"expires_in = '2 hours'.*api_base"):
        probe(local)


def test_an_errcode_that_is_not_a_number_fails_naming_it(local: LocalBackup) -> None:
    """Every WeChat answer carries errcode, a number (0 ok, or a code of the page's table,
    e.g. seeds/wechat-databasemigratequeryinfo.en.txt); "40001" as digits is still that
    code, anything else is an answer this product does not know."""
    local.seed("orders", make_docs(2))
    local.emulator.answer_with("/tcb/databasecollectionget", {"errcode": "E_BUSY", "errmsg": "?"})

    with pytest.raises(Fatal, match=r"errcode = 'E_BUSY'.*api_base"):
        probe(local)


def test_default_stable_token_leaves_the_users_own_token_alone(local: LocalBackup) -> None:
    docs = make_docs(20)
    local.seed("orders", docs)
    theirs = users_server_token(local, legacy=True)
    ctx = local.context(local.config())

    assert_orders_backed_up(local, ctx, backup_now(ctx), docs)

    assert local.emulator.calls[STABLE] == 1 and local.emulator.calls[LEGACY] == 1  # theirs only
    assert local.emulator.token_info(theirs)["revoke_at"] is None


def test_a_rejected_stable_token_handed_back_again_is_waited_for_never_forced(
    local: LocalBackup,
) -> None:
    """getStableAccessToken's forced refresh "会导致上次获取的 access_token 失效" (retires the
    token every other server of the mini program holds) and is limited to 20 a day, 30 s
    apart (https://developers.weixin.qq.com/miniprogram/dev/OpenApiDoc/mp-access-token/
    getStableAccessToken.html, 注意事项). A rejected token that normal mode hands back
    again is therefore waited for, and the call tried again, never forced."""
    local.seed("orders", make_docs(2))
    theirs = users_server_token(local)
    local.emulator.inject_errcode("/tcb/databasecollectionget", 40001, errmsg="invalid credential")

    probe(local)  # the rejection passed: the call was tried again with the same token

    assert local.emulator.token_info(theirs)["valid"] is True
    assert local.emulator.token_info(theirs)["revoke_at"] is None


def test_a_stable_token_rejected_for_good_fails_saying_why_it_is_not_forced(
    local: LocalBackup,
) -> None:
    local.seed("orders", make_docs(2))
    theirs = users_server_token(local)
    local.emulator.inject_errcode("/tcb/databasecollectionget", 40001, times=20,
                                  errmsg="invalid credential")

    with pytest.raises(Retryable) as raised:
        probe(local)

    message = str(raised.value)
    assert "40001" in message and "force_refresh" in message and "other servers" in message
    assert theirs not in message
    assert local.emulator.token_info(theirs)["valid"] is True


def test_legacy_token_works_but_retires_the_users_token(local: LocalBackup) -> None:
    docs = make_docs(20)
    local.seed("orders", docs)
    theirs = users_server_token(local, legacy=True)
    config = local.config(local.wechat_source(token="legacy_token"))
    ctx = local.context(config)

    assert_orders_backed_up(local, ctx, backup_now(ctx, key="one"), docs)
    backup_now(local.context(config), key="two")  # the fetched token is cached and shared

    assert local.emulator.calls[LEGACY] == 2 and local.emulator.calls[STABLE] == 0
    # This is why it is never the default: the other server's token stops working soon.
    assert local.emulator.token_info(theirs)["revoke_at"] is not None


def test_token_from_the_environment_is_used_as_given(local: LocalBackup) -> None:
    docs = make_docs(20)
    local.seed("orders", docs)
    local.environ["WECHAT_SHOP_TOKEN"] = users_server_token(local)
    source = local.wechat_source(token={"access_token": "${WECHAT_SHOP_TOKEN}"})
    del source["secret"]  # an external token needs no app secret
    ctx = local.context(local.config(source))

    assert_orders_backed_up(local, ctx, backup_now(ctx), docs)

    assert local.emulator.calls[STABLE] == 1 and local.emulator.calls[LEGACY] == 0  # theirs


def test_a_rejected_token_from_the_environment_fails_loudly(local: LocalBackup) -> None:
    local.seed("orders", make_docs(5))
    token = users_server_token(local)
    local.environ["WECHAT_SHOP_TOKEN"] = token
    local.emulator.invalidate_tokens()
    ctx = local.context(local.config(local.wechat_source(token={"access_token": "${WECHAT_SHOP_TOKEN}"})))

    run = backup_now(ctx)

    job = only_job(ctx, run)
    assert run.status is RunStatus.FAILED and job.status is JobStatus.FAILED
    assert "never renews a token it does not own" in (job.error or "")
    assert "40014" in (job.error or "") and token not in (job.error or "")
    assert local.emulator.calls[STABLE] == 1 and local.emulator.calls[LEGACY] == 0
    assert local.emulator.calls[EXPORT] == 1


def test_token_from_the_users_token_service(local: LocalBackup, token_service: TokenService) -> None:
    docs = make_docs(20)
    local.seed("orders", docs)
    token_service.token = users_server_token(local, legacy=True)
    local.environ["TOKEN_SERVICE_KEY"] = SERVICE_KEY
    source = local.wechat_source(token={"url": token_service.url, "authorization": "${TOKEN_SERVICE_KEY}"})
    ctx = local.context(local.config(source))

    assert_orders_backed_up(local, ctx, backup_now(ctx), docs)

    assert token_service.requests and set(token_service.requests) == {SERVICE_KEY}
    assert local.emulator.calls[LEGACY] == 1 and local.emulator.calls[STABLE] == 0  # theirs


def test_a_rotation_by_the_token_service_is_followed(local: LocalBackup, token_service: TokenService) -> None:
    docs = make_docs(20)
    local.seed("orders", docs)
    token_service.token = users_server_token(local)
    local.environ["TOKEN_SERVICE_KEY"] = SERVICE_KEY
    config = local.config(local.wechat_source(
        token={"url": token_service.url, "authorization": "${TOKEN_SERVICE_KEY}"}))
    ctx = local.context(config)  # one invocation: it holds the token it was given
    backup_now(ctx, key="one")
    asked = len(token_service.requests)
    local.emulator.invalidate_tokens()  # their server rotated the token ...
    token_service.token = users_server_token(local)  # ... and serves the new one

    assert_orders_backed_up(local, ctx, backup_now(ctx, key="two"), docs)

    assert len(token_service.requests) == asked + 1  # asked again once, after the rejection


def test_a_token_service_serving_a_rejected_token_fails_loudly(
    local: LocalBackup, token_service: TokenService,
) -> None:
    local.seed("orders", make_docs(5))
    token_service.token = users_server_token(local)
    local.emulator.invalidate_tokens()
    local.environ["TOKEN_SERVICE_KEY"] = SERVICE_KEY
    ctx = local.context(local.config(local.wechat_source(
        token={"url": token_service.url, "authorization": "${TOKEN_SERVICE_KEY}"})))

    run = backup_now(ctx)

    error = only_job(ctx, run).error or ""
    assert run.status is RunStatus.FAILED
    assert "handed back the same token" in error and "never renews" in error
    assert local.emulator.calls[STABLE] == 1  # theirs only


def test_a_token_service_refusing_us_says_what_to_check(
    local: LocalBackup, token_service: TokenService,
) -> None:
    local.seed("orders", make_docs(5))
    local.environ["TOKEN_SERVICE_KEY"] = "Bearer wrong-key-456"
    ctx = local.context(local.config(local.wechat_source(
        token={"url": token_service.url + "?key=abc", "authorization": "${TOKEN_SERVICE_KEY}"})))

    run = backup_now(ctx)

    error = only_job(ctx, run).error or ""
    assert run.status is RunStatus.FAILED
    assert "answered HTTP 401" in error and "check the url and authorization" in error
    assert "key=abc" not in error and "wrong-key" not in error


def test_calls_at_once_without_a_token_fetch_one_legacy_token(local: LocalBackup) -> None:
    """Each cgi-bin/token call retires the token before it about five minutes later
    (API-NOTES.md, WeChat: "Token, legacy"). The poller calls one source's client from
    several threads: a token fetched by each of them would retire the ones the others
    cached and use, and the mini program's other servers' too, several times over."""
    local.seed("orders", [])
    local.emulator.latency = 0.2  # the calls overlap on the wire, as a distant WeChat's do
    client = cast(WeChatClient, local.context(local.config(
        local.wechat_source(token="legacy_token"))).platforms.get("shop"))

    assert at_once(client.probe, 6) == []

    assert local.emulator.calls[LEGACY] == 1
    assert local.emulator.calls["/tcb/databasecollectionget"] == 6


def test_two_envs_of_one_mini_program_called_at_once_fetch_one_legacy_token(
    local: LocalBackup,
) -> None:
    """Two sources, the prod and test envs of one mini program, share its token: their
    clients fetching one each at the same moment would retire each other's."""
    local.emulator.add_env(APPID, "shop-test-9z8y")
    local.emulator.add_collection("shop-test-9z8y", "orders", [])
    local.seed("orders", [])
    local.emulator.latency = 0.2
    ctx = local.context(local.config(
        local.wechat_source(token="legacy_token"),
        local.wechat_source("shop-test", env="shop-test-9z8y", token="legacy_token")))
    clients = [cast(WeChatClient, ctx.platforms.get(name)) for name in ("shop", "shop-test")]
    pending = clients * 3  # list.pop is atomic: each thread takes one

    assert at_once(lambda: pending.pop().probe(), 6) == []

    assert local.emulator.calls[LEGACY] == 1


def test_two_functions_at_once_fetch_one_legacy_token(local: LocalBackup) -> None:
    """The trigger, the poller and the finisher are separate SCF functions: separate
    processes, each with its own state-store client, sharing only the state table. Each
    cgi-bin/token call retires the token before it (API-NOTES.md, WeChat: "Token,
    legacy"), so two of them fetching at once would retire each other's token."""
    local.seed("orders", [])
    local.emulator.latency = 0.5  # the calls overlap on the wire, as a distant WeChat's do
    document = local.document(local.wechat_source(token="legacy_token"))

    answers = probe_as_functions(document, local.environ, ["shop", "shop"])

    assert all(a.startswith("token fetched") for a in answers), answers
    assert local.emulator.calls[LEGACY] == 1
    assert local.emulator.calls["/tcb/databasecollectionget"] == 2


def test_a_renewal_takes_the_token_another_function_is_fetching(tmp_path: Path) -> None:
    """WeChat rejected the cached token in two functions at once; the other one claimed the
    fetch first. This one takes the token that one stores, promptly: it fetches none itself
    (a legacy fetch would retire the other's) and its memo does not keep answering with the
    rejected token while it waits."""
    # tokens taken are registered as secrets for the whole process: names no message holds
    rejected, theirs, second = "tok-rejected-7c1e", "tok-theirs-84d2", "tok-second-5e29"
    url = f"sqlite:///{tmp_path / 'state.sqlite3'}"
    key = "wechat:legacy_token:wx1"
    other = SqlStateStore(url)  # the other function's client of the state table
    now = datetime.now(timezone.utc)
    other.cache_put(key, rejected, now + timedelta(hours=1))
    fetched: list[str | None] = []

    def fetch(avoid: str | None) -> tuple[str, int]:
        fetched.append(avoid)
        return second, 7200

    token = CachedToken(MemoTokenCache(SqlStateStore(url)), key, fetch)
    assert token.token() == rejected  # now remembered in this function's memo
    assert other.cache_claim(f"{key}:fetching", "fetching", now + timedelta(minutes=5), now)

    def the_other_function_stores_its_token() -> None:
        time.sleep(0.5)
        other.cache_put(key, theirs, datetime.now(timezone.utc) + timedelta(hours=1))
        other.cache_delete(f"{key}:fetching")

    threading.Thread(target=the_other_function_stores_its_token).start()
    started = time.monotonic()

    assert token.renew(rejected, "errcode 40001") == theirs
    assert fetched == []
    assert time.monotonic() - started < 5


def test_a_fetch_left_claimed_by_a_stopped_function_is_waited_for_then_taken_over(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A function stopped mid-fetch (its SCF timeout) leaves its claim: the others wait a
    little, then the call is tried again later, saying why; once the claim lapses the next
    function fetches."""
    monkeypatch.setattr(wechat_tokens, "FETCH_WAIT_SECONDS", 0.5)
    url = f"sqlite:///{tmp_path / 'state.sqlite3'}"
    key = "wechat:legacy_token:wx1"
    fetched: list[str | None] = []

    def fetch(avoid: str | None) -> tuple[str, int]:
        fetched.append(avoid)
        return "mine", 7200

    now = datetime.now(timezone.utc)
    assert SqlStateStore(url).cache_claim(f"{key}:fetching", "fetching", now + timedelta(seconds=2), now)
    token = CachedToken(MemoTokenCache(SqlStateStore(url)), key, fetch)

    with pytest.raises(Retryable, match=r"another baas-backup function.*tried again later"):
        token.token()
    assert fetched == []
    time.sleep(2)  # the claim lapsed

    assert token.token() == "mine" and fetched == [None]
