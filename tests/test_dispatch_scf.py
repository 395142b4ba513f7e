"""Poller → finisher through SCF's async Invoke: the real tencentcloud SDK, signing with
the role's keys, against a local fake of the Tencent Cloud API over loopback."""

from __future__ import annotations

import functools
import io
import json
import logging
import os
import re
import ssl
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import trustme
import yaml

from devkit.compare import assert_object_equals_docs
from devkit.emulators.tencentcloud import TencentCloudEmulator
from devkit.s3_server import server_context
from devkit.sample_data import make_docs
from shared.adapters import tls
from shared.adapters.dispatch import (
    InProcessDispatcher,
    ScfDispatcher,
    ScfTarget,
    dispatcher_for,
    resolve_mode,
)
from shared.config import Config, ConfigError, DispatchSettings, parse_config
from shared.domain.errors import Fatal, Retryable, RetryLater
from shared.domain.jobs import JobStatus, RunStatus
from shared.entrypoints.scf import handle_finisher
from shared.logs import configure_logging
from shared.service.poll import poll
from shared.service.start import start_run
from tests.support.backup import FAST_TIMING, LocalBackup, backup_now
from tests.support.hostile import Hostile, redirect

FINISHER = "baas-backup-finisher"
REGION = "ap-guangzhou"
ROLE_ID = "AKIDrole0000000000000001"
ROLE_KEY = "role-secret-key-5e4d3c2b1a"
ROLE_TOKEN = "role-session-token-9z8y7x6w5v"


def role_env(secret_id: str = ROLE_ID, key: str = ROLE_KEY, token: str = ROLE_TOKEN) -> dict[str, str]:
    return {"TENCENTCLOUD_SECRETID": secret_id, "TENCENTCLOUD_SECRETKEY": key,
            "TENCENTCLOUD_SESSIONTOKEN": token}


@pytest.fixture
def tencentcloud() -> Iterator[TencentCloudEmulator]:
    emulator = TencentCloudEmulator()
    emulator.add_key(ROLE_ID, ROLE_KEY, ROLE_TOKEN)
    emulator.start()
    try:
        yield emulator
    finally:
        emulator.stop()


def dispatcher(emulator: TencentCloudEmulator, environ: dict[str, str], **settings: Any) -> ScfDispatcher:
    chosen = DispatchSettings.model_validate({"mode": "scf", "endpoint": emulator.url, **settings})
    return ScfDispatcher(ScfTarget(chosen, REGION), environ, base_seconds=0.01)


# -- the hand-off itself -----------------------------------------------------------
def test_invoke_is_signed_with_the_role_keys_and_carries_the_job(tencentcloud: TencentCloudEmulator) -> None:
    tencentcloud.add_function(FINISHER)

    dispatcher(tencentcloud, role_env()).dispatch("job-1")

    (call,) = tencentcloud.invocations
    assert (call.function, call.namespace, call.qualifier, call.region) == (FINISHER, "default", "$LATEST", REGION)
    assert call.invocation_type == "Event"
    assert call.event == {"job_id": "job-1"}
    assert call.secret_id == ROLE_ID
    assert tencentcloud.rejections == []


@pytest.fixture
def trusted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> trustme.CA:
    """A CA whose file alone is the CAs every client here trusts (SSL_CERT_FILE), with a
    fresh TLS context cache."""
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    for name in ("SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "ca.pem"))
    monkeypatch.setattr(tls, "_context", functools.cache(tls._context.__wrapped__))
    return ca


def https_api(ca: trustme.CA) -> TencentCloudEmulator:
    """The fake API over HTTPS, with a certificate from `ca`, knowing the role and the finisher."""
    emulator = TencentCloudEmulator(tls=server_context(ca))
    emulator.add_key(ROLE_ID, ROLE_KEY, ROLE_TOKEN)
    emulator.add_function(FINISHER)
    return emulator


def test_hand_offs_over_tls_verify_with_the_process_context_loading_the_cas_once(
        trusted: trustme.CA, monkeypatch: pytest.MonkeyPatch) -> None:
    """The SDK verified with certifi's bundle, which urllib3 loaded again for each new
    connection: about 40 ms of CPU apiece, as many as hand-offs at once in a tick."""
    loads: list[object] = []
    load = ssl.SSLContext.load_verify_locations

    def counted_load(self: ssl.SSLContext, *args: Any, **kwargs: Any) -> None:
        loads.append(args or kwargs)
        load(self, *args, **kwargs)

    monkeypatch.setattr(ssl.SSLContext, "load_verify_locations", counted_load)
    with https_api(trusted) as emulator:
        assert emulator.url.startswith("https://")
        handing = dispatcher(emulator, role_env())
        with ThreadPoolExecutor(6) as pool:  # a tick's workers handing off at once
            list(pool.map(handing.dispatch, [f"job-{n}" for n in range(12)]))
        assert sorted(c.event["job_id"] for c in emulator.invocations) == sorted(
            f"job-{n}" for n in range(12))
    # one context, whatever the connections
    assert loads == [(os.environ["SSL_CERT_FILE"], None, None)]
    context = tls.tls_context()
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname


def test_a_hand_off_to_a_server_whose_certificate_does_not_verify_fails(trusted: trustme.CA) -> None:
    with https_api(trustme.CA()) as emulator, pytest.raises(Retryable) as refused:  # another CA's
        dispatcher(emulator, role_env()).dispatch("job-1")  # the poller tries again next tick
    assert "CERTIFICATE_VERIFY_FAILED" in str(refused.value)
    assert emulator.invocations == []


def test_a_wrong_signature_is_refused_by_the_fake(tencentcloud: TencentCloudEmulator) -> None:
    tencentcloud.add_function(FINISHER)

    with pytest.raises(Fatal, match=r"AuthFailure\.SignatureFailure.*execution role"):
        dispatcher(tencentcloud, role_env(key="not-the-role-key")).dispatch("job-1")

    assert tencentcloud.invocations == []
    assert tencentcloud.rejections == ["AuthFailure.SignatureFailure"]


def test_a_missing_session_token_is_refused(tencentcloud: TencentCloudEmulator) -> None:
    tencentcloud.add_function(FINISHER)
    environ = role_env()
    del environ["TENCENTCLOUD_SESSIONTOKEN"]

    with pytest.raises(Fatal, match=r"AuthFailure\.TokenFailure"):
        dispatcher(tencentcloud, environ).dispatch("job-1")


def test_credentials_are_read_again_at_every_hand_off(tencentcloud: TencentCloudEmulator) -> None:
    """SCF gives each invocation fresh temporary keys; the old ones stop working."""
    tencentcloud.add_function(FINISHER)
    tencentcloud.add_key("AKIDrole0000000000000002", "second-key-000000", "second-token-000000")
    environ = role_env()
    chosen = dispatcher(tencentcloud, environ)

    chosen.dispatch("job-1")
    environ.update(role_env("AKIDrole0000000000000002", "second-key-000000", "second-token-000000"))
    chosen.dispatch("job-2")

    assert [c.secret_id for c in tencentcloud.invocations] == [ROLE_ID, "AKIDrole0000000000000002"]


def test_no_role_keys_fails_with_what_to_set(tencentcloud: TencentCloudEmulator) -> None:
    tencentcloud.add_function(FINISHER)

    with pytest.raises(Fatal, match=r"execution role.*TENCENTCLOUD_SECRETID.*dispatch\.mode: local"):
        dispatcher(tencentcloud, {}).dispatch("job-1")

    assert tencentcloud.calls["Invoke"] == 0


@pytest.mark.parametrize("code", ["RequestLimitExceeded", "InternalError", "InternalError.System"])
def test_throttling_and_internal_errors_are_retried(tencentcloud: TencentCloudEmulator, code: str) -> None:
    tencentcloud.add_function(FINISHER)
    tencentcloud.inject(code, times=2)

    dispatcher(tencentcloud, role_env()).dispatch("job-1")

    assert tencentcloud.rejections == [code, code]
    assert [c.event for c in tencentcloud.invocations] == [{"job_id": "job-1"}]


def test_lasting_throttling_asks_to_wait_and_lasting_internal_errors_are_retryable(
    tencentcloud: TencentCloudEmulator,
) -> None:
    tencentcloud.add_function(FINISHER)
    chosen = dispatcher(tencentcloud, role_env())

    tencentcloud.inject("RequestLimitExceeded", times=4)
    with pytest.raises(RetryLater, match="RequestLimitExceeded"):
        chosen.dispatch("job-1")
    tencentcloud.inject("InternalError", "backend busy", times=4)
    with pytest.raises(Retryable, match="InternalError: backend busy"):
        chosen.dispatch("job-1")

    assert tencentcloud.invocations == []


def test_unknown_function_fails_naming_the_config_fields(tencentcloud: TencentCloudEmulator) -> None:
    tencentcloud.add_function(FINISHER)

    with pytest.raises(Fatal, match=r"ResourceNotFound\.Function.*dispatch\.finisher_function"):
        dispatcher(tencentcloud, role_env(), finisher_function="baas-backup-finsher").dispatch("job-1")
    with pytest.raises(Fatal, match=r"ResourceNotFound\.Namespace.*dispatch\.namespace"):
        dispatcher(tencentcloud, role_env(), namespace="prod").dispatch("job-1")
    assert tencentcloud.calls["Invoke"] == 2  # refused at once, not retried


def test_role_without_invoke_permission_says_which_grant_is_missing(tencentcloud: TencentCloudEmulator) -> None:
    tencentcloud.add_function(FINISHER)
    tencentcloud.add_key(ROLE_ID, ROLE_KEY, ROLE_TOKEN, allow=["default/some-other-function"])

    with pytest.raises(Fatal) as raised:
        dispatcher(tencentcloud, role_env()).dispatch("job-1")

    message = str(raised.value)
    assert "AuthFailure.UnauthorizedOperation" in message
    assert f"scf:InvokeFunction on qcs::scf:{REGION}:uin/<UIN>:namespace/default/function/{FINISHER}" in message
    assert "docs/cam-policy.json" in message


def test_expired_signature_fails_loudly(tencentcloud: TencentCloudEmulator) -> None:
    tencentcloud.add_function(FINISHER)
    tencentcloud.clock_skew = 600  # this machine's clock is ten minutes behind the API's

    with pytest.raises(Fatal, match=r"AuthFailure\.SignatureExpire.*clock"):
        dispatcher(tencentcloud, role_env()).dispatch("job-1")


def test_credentials_never_reach_logs_or_errors(tencentcloud: TencentCloudEmulator) -> None:
    tencentcloud.add_function(FINISHER)
    stream = io.StringIO()
    configure_logging(logging.DEBUG, stream=stream)  # the SDK logs requests at DEBUG
    messages = []
    try:
        chosen = dispatcher(tencentcloud, role_env())
        chosen.dispatch("job-1")
        for code in ("RequestLimitExceeded", "AuthFailure.SignatureFailure", "InternalError"):
            tencentcloud.inject(code, times=4)
            with pytest.raises((Fatal, Retryable, RetryLater)) as raised:
                chosen.dispatch("job-2")
            messages.append(str(raised.value))
            logging.getLogger("test").error("dispatch failed", extra={"reason": str(raised.value)})
    finally:
        configure_logging()
    text = stream.getvalue() + "\n".join(messages)
    assert "job handed to the finisher" in text
    for secret in (ROLE_KEY, ROLE_TOKEN):
        assert secret not in text


def test_the_sdk_debug_request_lines_keep_no_signature(tencentcloud: TencentCloudEmulator) -> None:
    """tencentcloud/common/http/request.py logs each request at DEBUG with its headers:
    `Authorization: TC3-HMAC-SHA256 Credential=<SecretId>/..., Signature=<hex>`."""
    tencentcloud.add_function(FINISHER)
    stream, sent = io.StringIO(), []
    sdk = logging.getLogger("tencentcloud_sdk_common")
    raw = logging.Handler(logging.DEBUG)
    raw.emit = lambda record: sent.append(record.getMessage())  # type: ignore[method-assign]
    configure_logging(logging.DEBUG, stream=stream)
    sdk.addHandler(raw)
    try:
        dispatcher(tencentcloud, role_env()).dispatch("job-1")
    finally:
        sdk.removeHandler(raw)
        configure_logging()
    signatures = [found for line in sent for found in re.findall(r"Signature=([0-9a-f]{64})", line)]
    assert signatures, "the SDK no longer logs its requests; this test can go"
    logs = stream.getvalue()
    for signature in signatures:
        assert signature not in logs
    assert "TC3-HMAC-SHA256 Credential=[redacted]" in logs  # written, and readable


@pytest.mark.parametrize("status", [301, 302, 307, 308])
def test_a_redirect_to_another_origin_is_not_followed_with_the_role_keys(
        hostile: Hostile, other_hostile: Hostile, status: int) -> None:
    """Every Invoke carries the role's session token (X-TC-Token): a redirect, which the
    SDK's requests session would follow with it, is refused and named instead."""
    hostile.answers["/"] = redirect(f"{other_hostile.base}/", status)
    chosen = DispatchSettings.model_validate({"mode": "scf", "endpoint": hostile.base})
    handing = ScfDispatcher(ScfTarget(chosen, REGION), role_env(), base_seconds=0.01)

    with pytest.raises(Fatal, match=r"redirect.*dispatch\.endpoint") as raised:
        handing.dispatch("job-1")

    assert other_hostile.seen == []  # nothing at all reached the other origin
    assert len(hostile.seen) == 1  # refused, not retried: a redirect will not go away
    assert ROLE_TOKEN not in str(raised.value) and ROLE_KEY not in str(raised.value)


# -- config --------------------------------------------------------------------------
def minimal(**dispatch: Any) -> dict[str, Any]:
    return {
        "destination": {"bucket": "b-1250000000", "region": "ap-shanghai"},
        "sources": [{"type": "wechat", "name": "shop", "appid": "wx0123456789abcdef",
                     "secret": "${S}", "env": "e", "collections": ["orders"]}],
        **({"dispatch": dispatch} if dispatch else {}),
    }


def test_dispatch_defaults_are_local_here_and_scf_on_scf() -> None:
    config = parse_config(minimal(), environ={"S": "x"})
    assert config.dispatch.mode == "auto"
    assert config.dispatch.finisher_function == FINISHER
    assert resolve_mode(config.dispatch, {}) == "local"
    assert isinstance(dispatcher_for(config, {}, lambda job_id: None), InProcessDispatcher)

    on_scf = dispatcher_for(config, {"SCF_FUNCTIONNAME": "baas-backup-poller", "TENCENTCLOUD_REGION": "ap-beijing"},
                            lambda job_id: None)
    assert isinstance(on_scf, ScfDispatcher)
    assert (on_scf.target.function, on_scf.target.namespace, on_scf.target.region) == (FINISHER, "default", "ap-beijing")
    # outside SCF's environment the finisher is looked for in the bucket's region
    forced = dispatcher_for(parse_config(minimal(mode="scf"), environ={"S": "x"}), {}, lambda job_id: None)
    assert isinstance(forced, ScfDispatcher) and forced.target.region == "ap-shanghai"
    local = parse_config(minimal(mode="local"), environ={"S": "x"})
    assert isinstance(dispatcher_for(local, {"SCF_FUNCTIONNAME": "p"}, lambda job_id: None), InProcessDispatcher)


def test_auto_mode_knows_scf_by_its_documented_marker() -> None:
    """SCF's documented built-in variable for "running on SCF" is TENCENTCLOUD_RUNENV=SCF
    (环境变量, 已内置环境变量: tencentcloud.com/document/product/583/32748); SCF_FUNCTIONNAME
    is not in that list. A poller that saw only the documented marker would copy every
    export inside its own 300 s / 256 MB instead of handing it to the finisher."""
    config = parse_config(minimal(), environ={"S": "x"})
    on_scf = {"TENCENTCLOUD_RUNENV": "SCF", "TENCENTCLOUD_REGION": "ap-beijing"}
    assert resolve_mode(config.dispatch, on_scf) == "scf"
    assert isinstance(dispatcher_for(config, on_scf, lambda job_id: None), ScfDispatcher)
    assert resolve_mode(config.dispatch, {"TENCENTCLOUD_RUNENV": ""}) == "local"


def test_dispatch_settings_take_env_references() -> None:
    config = parse_config(minimal(mode="scf", finisher_function="${FN}", region="${REGION}"),
                          environ={"S": "x", "FN": "prod-finisher", "REGION": "ap-chengdu"})
    assert (config.dispatch.finisher_function, config.dispatch.region) == ("prod-finisher", "ap-chengdu")


def test_bad_dispatch_settings_name_the_field_and_the_fix() -> None:
    with pytest.raises(ConfigError) as raised:
        parse_config(minimal(mode="lambda", finisher_function="1st finisher", namespace="x",
                             region="Guangzhou", endpoint="http://127.0.0.1:9/path", finisher="f"),
                     environ={"S": "x"})
    problems = "\n".join(raised.value.problems)
    assert "dispatch.mode: Input should be 'auto', 'local' or 'scf' (got \"lambda\")" in problems
    assert "dispatch.finisher_function: must be an SCF name" in problems
    assert "dispatch.namespace: must be an SCF name" in problems
    assert "dispatch.region: must be a Tencent Cloud region such as ap-guangzhou" in problems
    assert "dispatch.endpoint: must look like https://host[:port] with no path" in problems
    assert "dispatch.finisher: unknown field; did you mean 'finisher_function'?" in problems


# -- a whole backup through real async dispatch --------------------------------------
def write_config(local: LocalBackup, path: Path, emulator: TencentCloudEmulator, **dispatch: Any) -> Config:
    document = {
        "destination": local.destination.model_dump(exclude={"secret_id", "secret_key"}),
        "state": {"url": local.state_url},
        "timing": FAST_TIMING,
        "dispatch": {"mode": "scf", "endpoint": emulator.url, "region": REGION, **dispatch},
        "sources": [local.wechat_source(collections=["orders", "users"])],
    }
    path.write_text(yaml.safe_dump(document, allow_unicode=True), encoding="utf-8")
    return parse_config(document, environ=local.environ)


@pytest.fixture
def hosted(local: LocalBackup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
           tencentcloud: TencentCloudEmulator) -> Iterator[tuple[Config, dict[str, str]]]:
    """The finisher function as SCF runs it: its handler, its own context, per Event."""
    config = write_config(local, tmp_path / "backup.yaml", tencentcloud)
    monkeypatch.setenv("BAAS_BACKUP_CONFIG", str(tmp_path / "backup.yaml"))
    monkeypatch.setenv("WECHAT_SECRET", local.environ["WECHAT_SECRET"])
    tencentcloud.add_function(FINISHER, handle_finisher)
    yield config, {**local.environ, **role_env()}
    configure_logging()


def test_a_whole_backup_goes_through_async_invoke(
    local: LocalBackup, tencentcloud: TencentCloudEmulator, hosted: tuple[Config, dict[str, str]]
) -> None:
    config, environ = hosted
    docs = {"orders": make_docs(120, seed=7), "users": make_docs(30, seed=8, prefix="u")}
    for name, rows in docs.items():
        local.seed(name, rows)
    ctx = local.context(config, dispatcher_for(config, environ, lambda job_id: None))
    assert isinstance(ctx.dispatcher, ScfDispatcher)

    run = backup_now(ctx)
    tencentcloud.wait_idle()

    assert run.status is RunStatus.SUCCEEDED
    jobs = ctx.state.list_jobs(run.run_id)
    assert sorted(c.event["job_id"] for c in tencentcloud.invocations) == sorted(j.job_id for j in jobs)
    assert all(c.invocation_type == "Event" and c.error is None for c in tencentcloud.invocations)
    assert {c.result["outcome"] for c in tencentcloud.invocations} == {"done"}
    for job in jobs:
        assert job.status is JobStatus.DONE and job.result is not None
        assert_object_equals_docs(local.objects.read(job.result.key), docs[job.collection], "json")
    assert json.loads(local.objects.read(run.manifest_key or ""))["status"] == "succeeded"


def invoke_async(emulator: TencentCloudEmulator, event: dict[str, Any]) -> None:
    """An async Invoke of the finisher with any event, through the real SDK."""
    from tencentcloud.common.credential import Credential
    from tencentcloud.common.profile.client_profile import ClientProfile
    from tencentcloud.common.profile.http_profile import HttpProfile
    from tencentcloud.scf.v20180416.models import InvokeRequest
    from tencentcloud.scf.v20180416.scf_client import ScfClient

    http = HttpProfile(protocol="http", endpoint=emulator.url.split("://", 1)[1])
    client = ScfClient(Credential(ROLE_ID, ROLE_KEY, ROLE_TOKEN), REGION, ClientProfile(httpProfile=http))
    request = InvokeRequest()
    request.FunctionName, request.InvocationType = FINISHER, "Event"
    request.ClientContext = json.dumps(event)
    client.Invoke(request)


def test_a_malformed_event_is_a_failed_invocation_for_scf(
    tencentcloud: TencentCloudEmulator, hosted: tuple[Config, dict[str, str]]
) -> None:
    """SCF counts an invocation whose handler raises as failed (运行错误), retries an async
    one and keeps it for the dead-letter queue; one that answers is a success."""
    invoke_async(tencentcloud, {"jobId": "j-1"})
    tencentcloud.wait_idle()

    [call] = tencentcloud.invocations
    assert call.error is not None and '"job_id"' in call.error and '"jobId"' in call.error, call
    assert call.attempts == 3  # retried twice, as SCF retries a run error


def test_a_role_that_may_not_invoke_fails_the_jobs_loudly(
    local: LocalBackup, tencentcloud: TencentCloudEmulator, hosted: tuple[Config, dict[str, str]]
) -> None:
    config, environ = hosted
    tencentcloud.add_key(ROLE_ID, ROLE_KEY, ROLE_TOKEN, allow=[])
    local.seed("orders", make_docs(5, seed=1))
    local.seed("users", make_docs(5, seed=2))
    ctx = local.context(config, dispatcher_for(config, environ, lambda job_id: None))

    run = backup_now(ctx)

    assert run.status is RunStatus.FAILED
    for job in ctx.state.list_jobs(run.run_id):
        assert job.status is JobStatus.FAILED
        assert "scf:InvokeFunction" in (job.error or "")
    assert tencentcloud.invocations == []
    manifest = json.loads(local.objects.read(run.manifest_key or ""))
    assert all("scf:InvokeFunction" in (j.get("error") or "") for j in manifest["jobs"])


def test_a_hand_off_that_keeps_failing_fails_the_job_without_promising_a_retry(
    local: LocalBackup, tencentcloud: TencentCloudEmulator, hosted: tuple[Config, dict[str, str]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The dispatcher states the cause; the poller says what happens next. A job whose
    tries ran out must not say "will retry", neither in its error nor in the log."""
    config, environ = hosted
    local.seed("orders", make_docs(5, seed=1))
    local.seed("users", make_docs(5, seed=2))
    tencentcloud.inject("InternalError", "backend busy", times=1000)
    ctx = local.context(config, dispatcher_for(config, environ, lambda job_id: None))
    caplog.set_level(logging.ERROR)

    run = backup_now(ctx)

    for job in ctx.state.list_jobs(run.run_id):
        assert job.status is JobStatus.FAILED
        assert "InternalError: backend busy" in (job.error or "")
        assert "will retry" not in (job.error or "")
    failed = [r for r in caplog.records if r.getMessage() == "job failed"]
    assert failed and all("will retry" not in str(getattr(r, "reason", "")) for r in failed)


def test_a_throttled_hand_off_says_once_that_it_waits(
    local: LocalBackup, tencentcloud: TencentCloudEmulator, hosted: tuple[Config, dict[str, str]],
) -> None:
    config, environ = hosted
    local.seed("orders", make_docs(5, seed=1))
    local.seed("users", make_docs(5, seed=2))
    tencentcloud.inject("RequestLimitExceeded", times=1000)
    ctx = local.context(config, dispatcher_for(config, environ, lambda job_id: None))
    run, _ = start_run(ctx, idempotency_key="throttled", trigger="test")

    errors = [""]
    deadline = time.monotonic() + 30
    while not all("RequestLimitExceeded" in e for e in errors) and time.monotonic() < deadline:
        poll(ctx)
        errors = [job.error or "" for job in ctx.state.list_jobs(run.run_id)]
        time.sleep(0.02)

    for error in errors:
        assert "RequestLimitExceeded" in error and error.endswith("; waiting, asked again later")
        assert "will retry" not in error
