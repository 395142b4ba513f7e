"""`baas-backup doctor` against a whole local deployment: moto's S3 server for the bucket
(through the real COS SDK), the WeChat, MinApp and OneDB emulators, the local fake of the
Tencent Cloud API holding the finisher function (the real handler), and a webhook on
loopback. Every check is run ok and failing, from the CLI and through the trigger
function's `{"doctor": true}` event; the HTTP route answers the same report."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from devkit.cos_layer import CosLayer
from devkit.emulators.minapp import MinAppEmulator
from devkit.emulators.onedb import OneDBEmulator
from devkit.emulators.tencentcloud import TencentCloudEmulator
from devkit.sample_data import make_docs
from shared.adapters.cos.client import cos_client
from shared.adapters.heartbeat import ping, probe_heartbeat
from shared.adapters.sql_state import SqlStateStore
from shared.config import Notify, load_config
from shared.domain.errors import Fatal
from shared.entrypoints.cli import main as cli
from shared.entrypoints.http_api import TOKEN_ENV
from shared.entrypoints.scf import handle_finisher, handle_poller, handle_trigger
from tests.support.api import TOKEN, check_against_spec, url_event
from tests.support.backup import FAST_TIMING, SECRET, LocalBackup
from tests.support.handlers import load_handler
from tests.support.mysql import PASSWORD_ENV, MariaDB, full_login_without_rsa
from tests.support.onedb import APP, KEY_ID, KEY_SECRET, onedb_source
from tests.support.onedb import ENV_ID as ONEDB_ENV
from tests.support.proxy import RecordingProxy
from tests.support.webhook import WebhookReceiver

ROOT = Path(__file__).resolve().parent.parent
FINISHER = "baas-backup-finisher"
POLLER, TRIGGER = "baas-backup-poller", "baas-backup-trigger"  # scf-*/serverless.yml inputs.name
REGION = "ap-guangzhou"
ROLE = {"TENCENTCLOUD_SECRETID": "AKIDrole0000000000000007",
        "TENCENTCLOUD_SECRETKEY": "role-secret-key-doctor-77",
        "TENCENTCLOUD_SESSIONTOKEN": "role-session-token-doctor-77"}
SCOPED = [f"default/{FINISHER}"]  # docs/cam-policy.json's grant: the finisher only
# keys that may invoke every function (an owner's, on a machine)
EVERY_FUNCTION = [*SCOPED, f"default/{POLLER}", f"default/{TRIGGER}"]
CHECKS = ["config", "bucket", "probe object", "create-only writes", "state", "source shop",
          "source app", "source crm", "finisher", "poller", "deployed config", "notify.webhooks[0]"]


@dataclass
class Site:
    """The deployment the doctor examines, with its config file and environment."""

    local: LocalBackup
    cloud: TencentCloudEmulator
    minapp: MinAppEmulator
    onedb: OneDBEmulator
    webhook: WebhookReceiver
    path: Path
    document: dict[str, Any]

    def write(self) -> None:
        self.path.write_text(yaml.safe_dump(self.document, allow_unicode=True), encoding="utf-8")

    def doctor(self, entry: str, *, notify: bool = False,
               capsys: pytest.CaptureFixture[str] | None = None) -> dict[str, Any]:
        """The report from the CLI (`doctor --json`) or the trigger's `{"doctor": true}`."""
        self.write()
        if entry == "cli":
            assert capsys is not None
            capsys.readouterr()
            code = cli(["--config", str(self.path), "doctor", "--json", *(["--notify"] * notify)])
            report: dict[str, Any] = json.loads(capsys.readouterr().out)
            assert code == (0 if report["ok"] else 1)
        else:
            event: dict[str, Any] = {"doctor": True, **({"notify": True} if notify else {})}
            report = load_handler("trigger").main_handler(event, None)
        assert [c["check"] for c in report["checks"]][:1] == ["config"]
        return report


def by_check(report: dict[str, Any]) -> dict[str, dict[str, str]]:
    return {c["check"]: c for c in report["checks"]}


@pytest.fixture
def site(local: LocalBackup, minapp_emulator: MinAppEmulator, onedb_emulator: OneDBEmulator,
         webhook: WebhookReceiver, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Site]:
    local.seed("orders", make_docs(3))
    minapp_emulator.add_table(1001, [{"n": i} for i in range(4)])
    onedb_emulator.add_generated_table(ONEDB_ENV, APP, "events", 5)
    cloud = TencentCloudEmulator()
    cloud.add_key(ROLE["TENCENTCLOUD_SECRETID"], ROLE["TENCENTCLOUD_SECRETKEY"],
                  ROLE["TENCENTCLOUD_SESSIONTOKEN"], allow=EVERY_FUNCTION)
    cloud.add_function(FINISHER, handle_finisher, region=REGION)
    cloud.add_function(POLLER, handle_poller, region=REGION)
    cloud.add_function(TRIGGER, handle_trigger, region=REGION)
    cloud.start()
    sources = [local.wechat_source(), local.minapp_source(minapp_emulator),
               onedb_source(local, onedb_emulator)]
    document = {
        "destination": local.destination.model_dump(mode="json", exclude={"secret_id", "secret_key"}),
        "state": {"url": "cos://"},
        "timing": FAST_TIMING,
        "sources": sources,
        "dispatch": {"mode": "auto", "endpoint": cloud.url, "region": REGION},
        "notify": {"webhooks": [{"url": "${WEBHOOK_URL}", "format": "wecom"}]},
    }
    path = tmp_path / "backup.yaml"
    for name, value in {**local.environ, **ROLE, "WEBHOOK_URL": webhook.url,
                        "BAAS_BACKUP_CONFIG": str(path)}.items():
        monkeypatch.setenv(name, value)
    try:
        yield Site(local, cloud, minapp_emulator, onedb_emulator, webhook, path, document)
    finally:
        cloud.stop()


ENTRIES = ["cli", "trigger"]


# all well ------------------------------------------------------------------------------
@pytest.mark.parametrize("entry", ENTRIES)
def test_every_check_passes_on_a_good_deployment(
    site: Site, entry: str, capsys: pytest.CaptureFixture[str]
) -> None:
    report = site.doctor(entry, capsys=capsys)

    assert report["ok"] is True, report
    assert [c["check"] for c in report["checks"]] == CHECKS
    assert {c["status"] for c in report["checks"]} == {"ok"}
    checks = by_check(report)
    assert "never had versioning" in checks["create-only writes"]["detail"]
    assert "4 record(s)" in checks["source app"]["detail"]
    assert "one row" in checks["source crm"]["detail"]
    # the finisher and the poller were really invoked, synchronously, with the doctor's
    # event, and did nothing (the poller answered the doctor, not with a tick's summary)
    digest = load_config(site.path).digest
    invoked = {i.function: i for i in site.cloud.invocations}
    for function, role in ((FINISHER, "finisher"), (POLLER, "poller")):
        invocation = invoked[function]
        assert invocation.invocation_type == "RequestResponse" and invocation.event == {"doctor": True}
        assert invocation.result == {"doctor": role, "ok": True, "config": digest}
        assert "having loaded its config" in checks[role]["detail"]
    assert invoked[TRIGGER].event == {"doctor": "config"}  # asked which config it runs, only
    assert invoked[TRIGGER].result == {"doctor": "trigger", "ok": True, "config": digest}
    assert checks["deployed config"]["detail"] == (
        f"the trigger, finisher and poller run this backup.yaml (digest {digest})")
    # the webhook was only asked whether it is there; nothing was sent to anyone
    assert site.webhook.gets == 1 and site.webhook.messages == []
    # the probe objects are gone
    listed = site.local.objects.list(f"{site.local.destination.prefix}/")
    assert not [o.key for o in listed if "_doctor/" in o.key or "/probe/" in o.key]
    assert site.local.objects.uploads_under(f"{site.local.destination.prefix}/_doctor/") == ()
    assert "aborted it" in checks["probe object"]["detail"]  # the multipart path was tried too
    assert SECRET not in json.dumps(report) and ROLE["TENCENTCLOUD_SECRETKEY"] not in json.dumps(report)


@pytest.mark.parametrize("entry", ENTRIES)
def test_a_source_whose_backups_cannot_be_restored_as_they_are_is_warned_about(
    site: Site, entry: str, capsys: pytest.CaptureFixture[str]
) -> None:
    minapp = site.document["sources"][1]
    assert minapp["type"] == "minapp"
    minapp.update(file_type="csv", tables=[
        {"id": 1001, "csv_customize_headers": ["名字"], "timestamp_convert_keys": ["created_at"]}])

    report = site.doctor(entry, capsys=capsys)

    assert report["ok"] is True, report  # the backups still run: a warning, not a failure
    checks = [c["check"] for c in report["checks"]]
    assert checks[checks.index("source app") + 1] == "source app restores"
    warned = by_check(report)["source app restores"]
    assert warned["status"] == "warning", warned
    for words in ("table 1001", "csv_customize_headers", "timestamp_convert_keys",
                  "remove csv_customize_headers", "remove timestamp_convert_keys"):
        assert words in warned["detail"], (words, warned)


def test_the_cli_text_marks_a_warning(site: Site, capsys: pytest.CaptureFixture[str]) -> None:
    site.document["sources"][1].update(
        tables=[{"id": 1001, "timestamp_convert_keys": ["created_at"]}])
    site.write()
    capsys.readouterr()

    code = cli(["--config", str(site.path), "doctor"])

    out = capsys.readouterr().out
    assert code == 0, out
    (line,) = [x for x in out.splitlines() if "source app restores" in x]
    assert line.startswith("WARNING") and "timestamp_convert_keys" in line


@pytest.mark.parametrize("entry", ENTRIES)
def test_notify_sends_each_webhook_a_test_message(
    site: Site, entry: str, capsys: pytest.CaptureFixture[str]
) -> None:
    report = site.doctor(entry, notify=True, capsys=capsys)

    assert report["ok"] is True
    assert site.webhook.messages == [{"msgtype": "text", "text": {
        "content": "baas-backup doctor: a test message; no backup ran"}}]
    assert "accepted a test message" in by_check(report)["notify.webhooks[0]"]["detail"]


def test_the_cli_prints_one_line_per_check_and_exits_0(site: Site, capsys: pytest.CaptureFixture[str]) -> None:
    site.write()
    code = cli(["--config", str(site.path), "doctor"])
    out = capsys.readouterr().out.splitlines()
    assert code == 0
    assert [line.split()[0] for line in out[:-1]] == ["ok"] * len(CHECKS)
    assert out[-1] == "every check passed"


# the heartbeat ---------------------------------------------------------------------------
MONITOR_KEY = "hb-key-9c8d7e6f5a4b"
# each style's ping URL as its monitor hands it out, and what a success ping's path holds
MONITOR_URLS = {"healthchecks": (f"/{MONITOR_KEY}", f"/{MONITOR_KEY}"),
                "cronitor": (f"/p/api-key/{MONITOR_KEY}", "state=complete"),
                "uptime-kuma": (f"/api/push/{MONITOR_KEY}?status=up&msg=OK&ping=", "status=up")}


@pytest.fixture
def monitor(site: Site, monkeypatch: pytest.MonkeyPatch) -> Iterator[WebhookReceiver]:
    """A heartbeat monitor on loopback, configured as notify.heartbeat; it answers 200."""
    receiver = WebhookReceiver()
    receiver.get_status = 200
    heartbeat_at(site, monkeypatch, "healthchecks", receiver.server.server_port)
    yield receiver
    receiver.server.shutdown()
    receiver.server.server_close()


def heartbeat_at(site: Site, monkeypatch: pytest.MonkeyPatch, style: str, port: int) -> None:
    site.document["notify"]["heartbeat"] = {"url": "${HEARTBEAT_URL}", "style": style}
    monkeypatch.setenv("HEARTBEAT_URL", f"http://127.0.0.1:{port}{MONITOR_URLS[style][0]}")


def closed_port() -> int:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        return int(closed.getsockname()[1])


@pytest.mark.parametrize("entry", ENTRIES)
def test_the_heartbeat_is_checked_without_pinging_it(
    site: Site, monitor: WebhookReceiver, entry: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """healthchecks.io, Cronitor and Uptime Kuma all count a GET of the URL as a ping: the
    check connects to the monitor's host and sends it nothing."""
    report = site.doctor(entry, capsys=capsys)

    assert report["ok"] is True, report
    assert [c["check"] for c in report["checks"]] == [*CHECKS, "notify.heartbeat"]
    detail = by_check(report)["notify.heartbeat"]
    assert detail["status"] == "ok" and "host 127.0.0.1" in detail["detail"], detail
    assert "--notify" in detail["detail"] and "no ping" in detail["detail"]
    assert monitor.pings == []  # nothing the monitor would count as a run
    assert MONITOR_KEY not in json.dumps(report)


@pytest.mark.parametrize("style", sorted(MONITOR_URLS))
def test_notify_sends_the_heartbeat_one_success_ping(
    site: Site, monitor: WebhookReceiver, monkeypatch: pytest.MonkeyPatch, style: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    heartbeat_at(site, monkeypatch, style, monitor.server.server_port)
    report = site.doctor("cli", notify=True, capsys=capsys)

    assert report["ok"] is True, report
    (ping,) = monitor.pings
    assert MONITOR_KEY in ping and MONITOR_URLS[style][1] in ping and "fail" not in ping
    detail = by_check(report)["notify.heartbeat"]["detail"]
    assert "HTTP 200" in detail and MONITOR_KEY not in json.dumps(report)


@pytest.mark.parametrize("notify", [False, True])
def test_an_unreachable_heartbeat_fails_without_showing_its_key(
    site: Site, monkeypatch: pytest.MonkeyPatch, notify: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    heartbeat_at(site, monkeypatch, "uptime-kuma", closed_port())
    report = site.doctor("cli", notify=notify, capsys=capsys)

    detail = by_check(report)["notify.heartbeat"]
    assert report["ok"] is False and detail["status"] == "failed", detail
    assert "unreachable" in detail["detail"] and "notify.heartbeat.url" in detail["detail"]
    assert MONITOR_KEY not in json.dumps(report)


@pytest.mark.parametrize(("status", "body", "words"), [
    (404, None, ["HTTP 404"]),  # healthchecks.io: no check with that UUID
    (200, {"ok": False, "msg": "Monitor not found or not active."}, ["Monitor not found"]),
    (404, {"ok": False, "msg": "Monitor not found or not active."}, ["Monitor not found"]),
])
def test_a_heartbeat_that_refuses_the_test_ping_fails(
    site: Site, monitor: WebhookReceiver, status: int, body: dict[str, Any] | None,
    words: list[str], capsys: pytest.CaptureFixture[str],
) -> None:
    monitor.get_status, monitor.get_body = status, body
    report = site.doctor("trigger", notify=True, capsys=capsys)

    detail = by_check(report)["notify.heartbeat"]
    assert report["ok"] is False and detail["status"] == "failed", detail
    for word in [*words, "notify.heartbeat.url"]:
        assert word in detail["detail"], detail
    assert len(monitor.pings) == 1 and MONITOR_KEY not in json.dumps(report)


PROXY_VARIABLES = ["HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"]


def test_the_heartbeat_check_goes_through_the_proxy_the_pings_go_through(
    recording_proxy: RecordingProxy, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Behind HTTP_PROXY/HTTPS_PROXY the pings (httpx) reach the monitor through the proxy:
    doctor's check, which sends no request, must connect that way too, or it calls a
    monitor unreachable that every run reaches; NO_PROXY sends both direct."""
    monitor = WebhookReceiver()
    monitor.get_status = 200
    hidden = closed_port()  # nothing listens here: only the proxy reaches the monitor
    recording_proxy.routes[("127.0.0.1", hidden)] = ("127.0.0.1", monitor.server.server_port)
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    monkeypatch.setenv("http_proxy", recording_proxy.url)
    notify = Notify.model_validate({"heartbeat": {"url": "${PING}"}}, context={
        "environ": {"PING": f"http://127.0.0.1:{hidden}/{MONITOR_KEY}"}})
    assert notify.heartbeat is not None
    try:
        said = probe_heartbeat(notify.heartbeat, send=False)
        assert "accepts connections" in said and "through the proxy" in said, said
        assert recording_proxy.requests == [f"CONNECT 127.0.0.1:{hidden}"]
        assert monitor.pings == []  # a tunnel opened, no request sent: not a ping

        ping(notify.heartbeat, True, "run a succeeded", retry_base_seconds=0)
        assert monitor.pings == [f"/{MONITOR_KEY}"]
        assert recording_proxy.requests[1:] == [f"GET http://127.0.0.1:{hidden}/{MONITOR_KEY}"]

        monkeypatch.setenv("no_proxy", "127.0.0.1")
        with pytest.raises(Fatal, match="unreachable"):
            probe_heartbeat(notify.heartbeat, send=False)
        assert len(recording_proxy.requests) == 2
    finally:
        monitor.server.shutdown()
        monitor.server.server_close()


# each check failing ----------------------------------------------------------------------
Mutation = Callable[[Site, pytest.MonkeyPatch], None]


def config_invalid(site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    site.document["sources"] = []


def bucket_missing(site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    site.document["destination"]["bucket"] = "no-such-bucket-1250000000"


def delete_ignored(site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    from moto.s3.responses import S3Response

    monkeypatch.setattr(S3Response, "delete_object", lambda self: (204, {}, ""))


ACCESS_DENIED = ('<?xml version="1.0" encoding="UTF-8"?><Error><Code>AccessDenied</Code>'
                 "<Message>Access Denied.</Message><RequestId>doctor-test</RequestId></Error>")


def multipart_not_granted(site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keys that may put, get and delete an object but not start a multipart upload (a policy
    written without the multipart actions): every copy larger than one part fails."""
    from moto.s3.responses import S3Response

    original = S3Response._key_response_post

    def refusing_uploads(self: Any, request: Any, body: bytes, bucket: str, query: dict[str, Any],
                         key: str) -> Any:
        if "uploads" in query:
            return 403, {"Content-Type": "application/xml"}, ACCESS_DENIED
        return original(self, request, body, bucket, query, key)

    monkeypatch.setattr(S3Response, "_key_response_post", refusing_uploads)


def overwrite_allowed(site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    """A bucket that ignores both create-only headers."""
    from moto.s3.responses import S3Response

    original = S3Response.put_object

    def ignoring_conditions(self: Any) -> Any:
        self.headers = {k: v for k, v in self.headers.items() if k.lower() != "if-none-match"}
        return original(self)

    monkeypatch.setattr(S3Response, "put_object", ignoring_conditions)
    monkeypatch.setattr(CosLayer, "ignore_forbid_overwrite", True)


def versioning_suspended(site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    client = cos_client(site.local.destination)
    for status in ("Enabled", "Suspended"):  # once on, versioning can only be suspended
        client.put_bucket_versioning(Bucket=site.local.destination.bucket, Status=status)


def state_unreachable(site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    site.document["state"] = {"url": f"mysql+pymysql://baas@127.0.0.1:{port}/backup"}


def wechat_secret_wrong(site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WECHAT_SECRET", "not-the-app-secret-000")


def wechat_ip_not_allowed(site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    site.local.emulator.inject_errcode("/cgi-bin/stable_token", 40164,
                                       errmsg="invalid ip 203.0.113.9, not in whitelist")


def minapp_status_not_enabled(site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    site.minapp.deny_status_access(403)


def onedb_key_not_granted(site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    site.onedb.add_key(ONEDB_ENV, KEY_ID, KEY_SECRET, cdb=False)


def cam_refuses_function_scope(site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    site.cloud.add_key(ROLE["TENCENTCLOUD_SECRETID"], ROLE["TENCENTCLOUD_SECRETKEY"],
                       ROLE["TENCENTCLOUD_SESSIONTOKEN"], allow=SCOPED, resource_level=False)


def finisher_not_deployed(site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    site.document["dispatch"]["finisher_function"] = "baas-backup-copier"
    site.cloud.add_key(ROLE["TENCENTCLOUD_SECRETID"], ROLE["TENCENTCLOUD_SECRETKEY"],
                       ROLE["TENCENTCLOUD_SESSIONTOKEN"])


def finisher_cannot_load_its_config(site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    """The finisher deployed without a variable the config names (its environment edited in
    the console, or `scf deploy --target` of another instance after adding a source): it
    answers an Invoke, yet fails every copy, since each starts by loading the config."""
    def finisher_without_the_secret(event: dict[str, Any]) -> Any:
        saved = os.environ.pop("WECHAT_SECRET")  # the doctor waits on this Invoke meanwhile
        try:
            return handle_finisher(event)
        finally:
            os.environ["WECHAT_SECRET"] = saved

    site.cloud.add_function(FINISHER, finisher_without_the_secret, region=REGION)


def finisher_runs_an_older_config(site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    """`scf deploy --target scf-trigger` after editing backup.yaml: the trigger (and this
    machine) have the new config, the finisher still the package before it."""
    older = {**site.document, "sources": site.document["sources"][:1]}
    site.cloud.add_function(FINISHER, deployed_with(site, monkeypatch, handle_finisher, older),
                            region=REGION)


def poller_package_broken(site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    """A poller package that fails to load (built without its dependencies): every minute's
    tick fails, and no job moves."""
    def poller_failing_to_import(event: dict[str, Any]) -> Any:
        raise ModuleNotFoundError("No module named 'pydantic'")

    site.cloud.add_function(POLLER, poller_failing_to_import, region=REGION)


def deployed_with(site: Site, monkeypatch: pytest.MonkeyPatch, handler: Callable[..., Any],
                  document: dict[str, Any]) -> Callable[[dict[str, Any]], Any]:
    """`handler` as deployed with a package holding `document` as its backup.yaml."""
    older = site.path.with_name("deployed.yaml")
    older.write_text(yaml.safe_dump(document, allow_unicode=True), encoding="utf-8")

    def deployed(event: dict[str, Any]) -> Any:
        monkeypatch.setenv("BAAS_BACKUP_CONFIG", str(older))  # the doctor waits on this Invoke
        try:
            return handler(event)
        finally:
            monkeypatch.setenv("BAAS_BACKUP_CONFIG", str(site.path))

    return deployed


def poller_runs_an_older_config(site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    """`scf deploy --target scf-trigger --target scf-finisher` after editing backup.yaml:
    the poller still runs the package before it."""
    older = {**site.document, "sources": site.document["sources"][:1]}
    site.cloud.add_function(POLLER, deployed_with(site, monkeypatch, handle_poller, older),
                            region=REGION)


def poller_cannot_reach_the_state(site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same config, yet the poller's own network or environment does not reach the state
    store (here: the variable in state.url names a folder only the others have)."""
    monkeypatch.setenv("STATE_DIR", str(site.path.parent))
    site.document["state"] = {"url": "sqlite:///${STATE_DIR}/state.sqlite3"}

    def poller_elsewhere(event: dict[str, Any]) -> Any:
        monkeypatch.setenv("STATE_DIR", str(site.path))  # a file: no database opens under it
        try:
            return handle_poller(event)
        finally:
            monkeypatch.setenv("STATE_DIR", str(site.path.parent))

    site.cloud.add_function(POLLER, poller_elsewhere, region=REGION)


def no_role_keys(site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ROLE:
        monkeypatch.delenv(name)


def webhook_unreachable(site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    monkeypatch.setenv("WEBHOOK_URL", f"http://127.0.0.1:{port}/cgi-bin/webhook/send?key=k-1")


# (mutation, check that fails, words its detail must hold, checks skipped because of it)
FAILURES: list[tuple[Mutation, str, list[str], list[str]]] = [
    (config_invalid, "config", ["sources"], ["everything else"]),
    (bucket_missing, "bucket", ["NoSuchBucket", "destination.bucket", "destination.region"],
     ["probe object", "create-only writes", "state"]),
    (delete_ignored, "probe object", ["still there after DeleteObject", "cos:DeleteObject"], []),
    (multipart_not_granted, "probe object", ["multipart upload", "AccessDenied",
                                             "name/cos:InitiateMultipartUpload"], []),
    (overwrite_allowed, "create-only writes", ["overwrite an existing object", "mysql+pymysql://"],
     ["state"]),
    (versioning_suspended, "create-only writes", ["Suspended", "x-cos-forbid-overwrite",
                                                  "never had versioning", "MySQL"], ["state"]),
    (state_unreachable, "state", ["mysql state backend does not answer", "OperationalError",
                                  "state.url"], []),
    (wechat_secret_wrong, "source shop", ["appid or app secret of source 'shop' is wrong"], []),
    (wechat_ip_not_allowed, "source shop", ["40164", "eip: true", "allow-list"], []),
    (minapp_status_not_enabled, "source app", ["HTTP 403", "must be enabled in the MinApp console"], []),
    (onedb_key_not_granted, "source crm", ["AppHub", "cdb", KEY_ID], []),
    (cam_refuses_function_scope, "finisher", ["CAM refused scf:InvokeFunction",
                                              "AuthFailure.UnauthorizedOperation",
                                              '"resource": ["*"]'], []),
    (finisher_not_deployed, "finisher", ["ResourceNotFound.Function", "baas-backup-copier",
                                         "scf-finisher/serverless.yml"], []),
    (finisher_cannot_load_its_config, "finisher", ["cannot load its config", "sources[0].secret",
                                                    "WECHAT_SECRET", "scf-finisher/serverless.yml"], []),
    (finisher_runs_an_older_config, "deployed config", [
        "the finisher runs another config", "left out of the last deploy", "scripts/package",
        "scf deploy", "--target"], []),
    (poller_package_broken, "poller", ["poller 'baas-backup-poller' was invoked but failed",
                                       "No module named", "deploy the current package"], []),
    (poller_runs_an_older_config, "deployed config", [
        "the poller runs another config", "left out of the last deploy", "scripts/package",
        "--target"], []),
    (poller_cannot_reach_the_state, "poller", [
        "cannot reach the state store", "sqlite state backend does not answer", "state.url",
        "network settings"], []),
    (no_role_keys, "finisher", ["no credentials to invoke the finisher", "TENCENTCLOUD_SECRETID"], []),
    (webhook_unreachable, "notify.webhooks[0]", ["unreachable", "ConnectError", "host 127.0.0.1"], []),
]


@pytest.mark.parametrize("entry", ENTRIES)
@pytest.mark.parametrize(("mutate", "check", "words", "skipped"), FAILURES,
                         ids=[f[0].__name__ for f in FAILURES])
def test_a_failing_check_says_what_is_wrong_and_how_to_fix_it(
    site: Site, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], entry: str,
    mutate: Mutation, check: str, words: list[str], skipped: list[str],
) -> None:
    mutate(site, monkeypatch)
    report = site.doctor(entry, capsys=capsys)

    assert report["ok"] is False
    checks = by_check(report)
    assert checks[check]["status"] == "failed", report
    for word in words:
        assert word in checks[check]["detail"], checks[check]
    for name in skipped:
        assert checks[name]["status"] == "skipped", checks[name]
    failed = [c["check"] for c in report["checks"] if c["status"] == "failed"]
    assert failed == [check], report  # one fault, one failed check: the others still ran
    assert "webhook/send?key" not in json.dumps(report) and "k-1" not in json.dumps(report)


@pytest.mark.parametrize("entry", ENTRIES)
def test_a_webhook_that_refuses_the_test_message_fails(
    site: Site, entry: str, capsys: pytest.CaptureFixture[str]
) -> None:
    site.webhook.answers.append((200, {"errcode": 93000, "errmsg": "invalid webhook url"}))
    report = site.doctor(entry, notify=True, capsys=capsys)

    detail = by_check(report)["notify.webhooks[0]"]
    assert report["ok"] is False and detail["status"] == "failed"
    assert "93000" in detail["detail"] and "robot-key" not in detail["detail"]


def test_the_state_check_runs_against_sql_and_create_only_is_then_not_needed(
    site: Site, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    site.document["state"] = {"url": f"sqlite:///{tmp_path / 'state.sqlite3'}"}
    report = site.doctor("cli", capsys=capsys)
    checks = by_check(report)
    assert report["ok"] is True
    assert checks["create-only writes"]["status"] == "skipped"
    assert "sqlite state backend answers" in checks["state"]["detail"]


@pytest.mark.parametrize("marker", [{"TENCENTCLOUD_RUNENV": "SCF"},
                                    {"SCF_FUNCTIONNAME": "baas-backup-trigger"}])
def test_a_sqlite_state_fails_the_doctor_inside_scf(
    site: Site, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, marker: dict[str, str]
) -> None:
    """Inside SCF a SQLite file lives in one instance's /tmp: the trigger, the poller and
    the finisher would each keep a state of their own, so a run is started and never
    moves, with no error anywhere (README, Choosing the state backend: "Not on SCF").
    The doctor answering reads and writes of its own instance's file must not call it ok."""
    for name, value in marker.items():  # SCF's environment (tencentcloud.com/document/product/583/32748)
        monkeypatch.setenv(name, value)
    site.document["state"] = {"url": f"sqlite:///{tmp_path / 'state.sqlite3'}"}

    report = site.doctor("trigger")

    state = by_check(report)["state"]
    assert report["ok"] is False and state["status"] == "failed", state
    for words in ("state.url", "SQLite", "SCF", "cos://", "mysql+pymysql://"):
        assert words in state["detail"], state
    site.cloud.wait_idle()


READ_ONLY = "The MySQL server is running with the --read-only option"


def test_the_state_check_fails_on_a_database_that_refuses_writes(
    site: Site, mariadb: MariaDB, mysql_database: str, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A read-only instance's address (or a user granted SELECT only) answers every read,
    while every function fails at its first write: the doctor must not call that ok."""
    SqlStateStore(mariadb.url(mysql_database)).list_runs(1)  # the tables, as a first run left them
    with mariadb.connect(mysql_database) as conn, conn.cursor() as cursor:
        for table in ("runs", "jobs", "cache"):
            for event in ("INSERT", "UPDATE", "DELETE"):
                cursor.execute(f"CREATE TRIGGER ro_{table}_{event.lower()} BEFORE {event} ON "
                               f"{table} FOR EACH ROW SIGNAL SQLSTATE 'HY000' SET "
                               f"MESSAGE_TEXT = '{READ_ONLY}'")
    monkeypatch.setenv(PASSWORD_ENV, mariadb.password)
    site.document["state"] = {"url": mariadb.config_url(mysql_database)}

    report = site.doctor("cli", capsys=capsys)

    state = by_check(report)["state"]
    assert report["ok"] is False and state["status"] == "failed", state
    for words in ("refused a write", READ_ONLY, "INSERT, UPDATE and DELETE", "state.url"):
        assert words in state["detail"], state
    assert mariadb.password not in json.dumps(report)


def test_the_state_check_names_the_fix_for_a_login_that_needs_cryptography(
    site: Site, mariadb: MariaDB, mysql_database: str, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """MySQL 8 without TLS asking for its full login: the doctor says which auth plugin
    and how to fix it, not "install cryptography" (the SCF package cannot) or "check the
    host and the allow-list" (they are fine)."""
    monkeypatch.setenv(PASSWORD_ENV, mariadb.password)
    site.document["state"] = {"url": mariadb.config_url(mysql_database)}

    with monkeypatch.context() as patched:  # undone before the database is dropped
        full_login_without_rsa(patched)
        report = site.doctor("cli", capsys=capsys)

    state = by_check(report)["state"]
    assert report["ok"] is False and state["status"] == "failed", state
    for words in ("caching_sha2_password", "enable SSL encryption", "mysql_native_password"):
        assert words in state["detail"], state
    assert "allow-list" not in state["detail"]
    assert mariadb.password not in json.dumps(report)


def test_the_finisher_as_deployed_answers_the_doctor(
        site: Site, capsys: pytest.CaptureFixture[str]) -> None:
    """The finisher as scf-finisher/serverless.yml creates it. With async execution
    (asyncRunEnable) SCF answers the doctor's synchronous Invoke with a request id only
    (product/583/51519), so the check could never see the finisher's answer."""
    deployed = yaml.safe_load((ROOT / "scf-finisher" / "serverless.yml").read_text(encoding="utf-8"))
    site.cloud.add_function(FINISHER, handle_finisher, region=REGION,
                            async_run=deployed["inputs"].get("asyncRunEnable") is True)

    report = site.doctor("cli", capsys=capsys)

    assert by_check(report)["finisher"]["status"] == "ok", by_check(report)["finisher"]
    site.cloud.wait_idle()


def test_a_backup_yaml_edited_and_not_deployed_is_named_as_such(
        site: Site, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """All three functions run the same package, and this machine's backup.yaml was edited
    since: not a function left out of the deploy, and the doctor says so."""
    deployed = {**site.document, "sources": list(site.document["sources"])}
    for name, handler in ((FINISHER, handle_finisher), (POLLER, handle_poller),
                          (TRIGGER, handle_trigger)):
        site.cloud.add_function(name, deployed_with(site, monkeypatch, handler, deployed), region=REGION)
    site.document["sources"] = site.document["sources"][:2]  # the edit, not deployed

    compared = by_check(site.doctor("cli", capsys=capsys))["deployed config"]

    assert compared["status"] == "failed", compared
    for words in ("this backup.yaml", "is not deployed", "the trigger, poller and finisher all run",
                  "edited since the last deploy", "scripts/package --config backup.yaml"):
        assert words in compared["detail"], compared
    assert "left out" not in compared["detail"]


def test_a_trigger_that_cannot_load_its_config_fails_its_own_check(
        site: Site, capsys: pytest.CaptureFixture[str]) -> None:
    """From a machine the doctor asks the trigger which config it runs: a trigger deployed
    without a variable the config names answers, yet fails every run (timer or request),
    and the doctor says so and how to fix it instead of leaving its digest out."""
    def trigger_without_the_secret(event: dict[str, Any]) -> Any:
        saved = os.environ.pop("WECHAT_SECRET")  # the doctor waits on this Invoke meanwhile
        try:
            return handle_trigger(event)
        finally:
            os.environ["WECHAT_SECRET"] = saved

    site.cloud.add_function(TRIGGER, trigger_without_the_secret, region=REGION)

    report = site.doctor("cli", capsys=capsys)

    trigger = by_check(report)["trigger"]
    assert report["ok"] is False and trigger["status"] == "failed", report
    for words in ("cannot load its config", "every run", "sources[0].secret", "WECHAT_SECRET",
                  "scf-trigger/serverless.yml", "scripts/package"):
        assert words in trigger["detail"], trigger
    assert "same environment variables as the trigger" not in trigger["detail"]
    failed = [c["check"] for c in report["checks"] if c["status"] == "failed"]
    assert failed == ["trigger"], report  # the finisher and poller run this backup.yaml
    assert by_check(report)["deployed config"]["status"] == "ok"


def test_with_the_shipped_policy_the_poller_check_says_where_to_run_it(site: Site) -> None:
    """docs/cam-policy.json lets the role invoke the finisher only, all the functions need:
    the doctor inside the trigger cannot invoke the poller, and says how it can be checked
    instead of failing a deployment that is right."""
    site.cloud.add_key(ROLE["TENCENTCLOUD_SECRETID"], ROLE["TENCENTCLOUD_SECRETKEY"],
                       ROLE["TENCENTCLOUD_SESSIONTOKEN"], allow=SCOPED)

    report = site.doctor("trigger")

    poller = by_check(report)["poller"]
    assert report["ok"] is True and poller["status"] == "skipped", poller
    for words in ("may not invoke the poller", "docs/cam-policy.json", "baas-backup doctor",
                  "scf:InvokeFunction"):
        assert words in poller["detail"], poller
    assert by_check(report)["deployed config"]["status"] == "ok"  # the finisher's is compared


def finisher_only_in_chengdu(site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    """The functions deployed to ap-chengdu, the bucket in the tests' region; the doctor run
    on a machine (no TENCENTCLOUD_REGION) with no dispatch.region."""
    del site.document["dispatch"]["region"]
    site.document["dispatch"]["finisher_function"] = "chengdu-finisher"
    site.cloud.add_function("chengdu-finisher", handle_finisher, region="ap-chengdu")
    site.cloud.add_key(ROLE["TENCENTCLOUD_SECRETID"], ROLE["TENCENTCLOUD_SECRETKEY"],
                       ROLE["TENCENTCLOUD_SESSIONTOKEN"], allow=["default/chengdu-finisher"])
    monkeypatch.delenv("TENCENTCLOUD_REGION", raising=False)


def test_from_a_machine_the_finisher_is_looked_for_where_the_deploy_put_it(
        site: Site, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """No dispatch.region, functions deployed to another region than the bucket's: the
    deploy's own REGION (.env, read by scripts/package and scf-*/serverless.yml) says where."""
    finisher_only_in_chengdu(site, monkeypatch)
    monkeypatch.setenv("REGION", "ap-chengdu")

    finisher = by_check(site.doctor("cli", capsys=capsys))["finisher"]

    assert finisher["status"] == "ok" and "ap-chengdu" in finisher["detail"], finisher


def test_a_finisher_not_in_the_buckets_region_says_where_it_was_looked_for(
        site: Site, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Nothing says where the functions are: the failure names the region searched (the
    bucket's) and how to point the doctor elsewhere."""
    finisher_only_in_chengdu(site, monkeypatch)
    monkeypatch.delenv("REGION", raising=False)

    finisher = by_check(site.doctor("cli", capsys=capsys))["finisher"]

    assert finisher["status"] == "failed", finisher
    for words in (f"looked for in {site.local.destination.region}, the bucket's region",
                  "dispatch.region", "REGION"):
        assert words in finisher["detail"], finisher


def test_dispatch_local_skips_the_finisher(site: Site, capsys: pytest.CaptureFixture[str]) -> None:
    site.document["dispatch"] = {"mode": "local"}
    report = site.doctor("trigger", capsys=capsys)
    assert report["ok"] is True
    assert by_check(report)["finisher"] == {"check": "finisher", "status": "skipped",
                                            "detail": "dispatch.mode is local: the poller copies in-process"}


# the HTTP route ---------------------------------------------------------------------------
def test_post_doctor_answers_the_report_to_the_owner_only(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    site.write()
    trigger = load_handler("trigger")

    refused = trigger.main_handler(url_event("POST", "/doctor", token=None), None)
    assert refused["statusCode"] == 401 and site.cloud.invocations == []

    answer = trigger.main_handler(url_event("POST", "/doctor"), None)
    check_against_spec("POST", "/doctor", answer)
    report = json.loads(answer["body"])
    assert answer["statusCode"] == 200 and report["ok"] is True and site.webhook.messages == []

    cam_refuses_function_scope(site, monkeypatch)
    answer = trigger.main_handler(url_event("POST", "/doctor", body={"notify": True}), None)
    check_against_spec("POST", "/doctor", answer)
    report = json.loads(answer["body"])
    assert answer["statusCode"] == 200 and report["ok"] is False
    assert by_check(report)["finisher"]["status"] == "failed" and len(site.webhook.messages) == 1

    bad = trigger.main_handler(url_event("POST", "/doctor", body={"notify": "yes please"}), None)
    check_against_spec("POST", "/doctor", bad)
    assert bad["statusCode"] == 400 and json.loads(bad["body"])["field"] == "notify"
