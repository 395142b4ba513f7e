"""SCF retries async invocations and timers overlap: re-running a handler with the same
event must create nothing twice."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

import shared.bootstrap
import shared.entrypoints.scf
from devkit.sample_data import make_docs
from shared.adapters.state import open_store
from shared.domain.jobs import JobStatus, RunStatus
from tests.support.backup import LocalBackup
from tests.support.handlers import load_handler

ROOT = Path(__file__).resolve().parent.parent
TIMER_EVENT = {"Type": "Timer", "TriggerName": "nightly", "Time": "2026-11-21T02:00:00Z", "Message": ""}


@pytest.fixture
def deployed(local: LocalBackup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> LocalBackup:
    """The handlers read their config the way SCF gives it to them: file + environment."""
    local.seed("orders", make_docs(20))
    local.seed("users", make_docs(5, prefix="u"))
    config = local.config(local.wechat_source(collections=["orders", "users"]))
    document: dict[str, Any] = json.loads(config.model_dump_json())
    document["sources"][0]["secret"] = "${WECHAT_SECRET}"
    for field in ("secret_id", "secret_key"):
        document["destination"].pop(field, None)
    path = tmp_path / "backup.yaml"
    path.write_text(yaml.safe_dump(document, allow_unicode=True), encoding="utf-8")
    monkeypatch.setenv("BAAS_BACKUP_CONFIG", str(path))
    for name, value in local.environ.items():
        monkeypatch.setenv(name, value)
    return local


class RecordingDispatcher:
    def __init__(self) -> None:
        self.job_ids: list[str] = []

    def dispatch(self, job_id: str) -> None:
        self.job_ids.append(job_id)


def test_retried_timer_trigger_starts_one_run(deployed: LocalBackup) -> None:
    trigger = load_handler("trigger")

    first = trigger.main_handler(dict(TIMER_EVENT), None)
    again = trigger.main_handler(dict(TIMER_EVENT), None)

    assert first["created"] is True and again["created"] is False
    assert first["run_id"] == again["run_id"]
    assert len(deployed.emulator.export_jobs()) == 2  # one per collection, not four
    store = open_store(deployed.state_url)
    assert len(store.list_runs()) == 1


def test_poller_and_finisher_twice_copy_once(deployed: LocalBackup, monkeypatch: pytest.MonkeyPatch) -> None:
    trigger, poller, finisher = (load_handler(n) for n in ("trigger", "poller", "finisher"))
    dispatched = RecordingDispatcher()
    real_build = shared.bootstrap.build_context
    monkeypatch.setattr(shared.entrypoints.scf, "build_context",
                        lambda config, **options: real_build(config, dispatcher=dispatched, **options))
    run_id = trigger.main_handler(dict(TIMER_EVENT), None)["run_id"]

    for _ in range(50):  # timer ticks, each one delivered twice
        poller.main_handler(dict(TIMER_EVENT), None)
        poller.main_handler(dict(TIMER_EVENT), None)
        if len(set(dispatched.job_ids)) == 2:
            break
    assert len(set(dispatched.job_ids)) == 2
    for job_id in sorted(set(dispatched.job_ids)):
        outcomes = [finisher.main_handler({"job_id": job_id}, None)["outcome"] for _ in range(2)]
        assert outcomes == ["done", "done"]  # the second is a no-op on a done job

    store = open_store(deployed.state_url)
    run = store.get_run(run_id)
    assert run is not None and run.status is RunStatus.SUCCEEDED
    assert all(j.status is JobStatus.DONE and j.attempts == 0 for j in store.list_jobs(run_id))
    keys = [o.key for o in deployed.objects.list(deployed.destination.prefix)]
    assert len(keys) == 2 * 2 + 1  # data + manifest per collection, one run manifest
    assert len(deployed.emulator.export_jobs()) == 2


@pytest.mark.parametrize(("event", "words"), [
    ({"jobid": "value-0123"}, ['"job_id"', "missing", '"jobid"', "not expected", '{"job_id": "<job id>"}']),
    ({"job_id": 7}, ['"job_id"', "string"]),
    ({}, ['"job_id"', "missing"]),
])
def test_finisher_fails_the_invocation_on_a_malformed_event(
        deployed: LocalBackup, event: dict[str, Any], words: list[str]) -> None:
    """An answer is a success to SCF (no retry, no failure in its metrics): a finisher
    handed a wrong event must raise, naming the field and the event it takes."""
    finisher = load_handler("finisher")

    with pytest.raises(ValueError) as raised:
        finisher.main_handler(event, None)

    for word in words:
        assert word in str(raised.value), raised.value
    assert "value-0123" not in str(raised.value)  # field names only: values are not echoed


@pytest.mark.parametrize(("event", "words"), [
    ({"key1": "test value 1"}, ['"Type"', '"Timer"', "timer event", "583/31439"]),
    ({"Type": "Cos", "Records": []}, ['"Type"', '"Timer"']),
    ({"Type": "Timer", "TriggerName": "every-minute"}, ['"Time"', "missing"]),
])
def test_poller_fails_the_invocation_on_an_event_that_is_not_its_timer(
        deployed: LocalBackup, event: dict[str, Any], words: list[str]) -> None:
    """The poller runs on its timer; another event (a console test template, a trigger
    wired to the wrong function) must not pass for a tick."""
    poller = load_handler("poller")

    with pytest.raises(ValueError) as raised:
        poller.main_handler(event, None)

    for word in words:
        assert word in str(raised.value), raised.value
    assert poller.main_handler(dict(TIMER_EVENT), None)["advanced"] == 0  # its timer still works


def test_trigger_fails_the_invocation_on_a_malformed_timer_event_without_repeating_it(
        deployed: LocalBackup) -> None:
    """SCF writes the error of a failed invocation to the function's log as it is, past
    the log's redaction: it names the fields, never their values (a token put in the
    event by mistake stays out of the log). Run requests: the test below."""
    trigger = load_handler("trigger")

    with pytest.raises(ValueError) as raised:
        trigger.main_handler({"Type": "Timer", "TriggerName": "value-0123"}, None)

    assert '"Time"' in str(raised.value) and "missing" in str(raised.value), raised.value
    assert "value-0123" not in str(raised.value)


@pytest.mark.parametrize("name", ["trigger", "poller", "finisher"])
def test_a_secret_bearing_config_that_fails_to_load_keeps_its_secrets_out_of_the_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        name: str) -> None:
    """The error goes to SCF's log unredacted, and nothing registered the secrets yet:
    neither the expanded ${VAR}s nor a secret written by mistake may be in it."""
    path = tmp_path / "backup.yaml"
    path.write_text(
        "destination: {bucket: backups-1250000000, region: ap-guangzhou, secret_key: cos-key-value-0123}\n"
        "state: {url: 'mysql+pymysql://u:${DB_PASSWORD}@db:3306/x'}\n"
        "notify: {webhooks: [{url: '${ROBOT_URL}', format: wecomm}]}\n"
        "sources: [{type: wechat, name: shop, appid: wx0123456789abcdef, secret: '${WECHAT_SECRET}',\n"
        "           env: e, collections: [orders], secrett: typed-secret-value-0123}]\n",
        encoding="utf-8")
    monkeypatch.setenv("BAAS_BACKUP_CONFIG", str(path))
    monkeypatch.setenv("DB_PASSWORD", "db-password-value-0123")
    monkeypatch.setenv("ROBOT_URL", "https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=robot-key-0123")
    monkeypatch.setenv("WECHAT_SECRET", "wechat-secret-value-0123")
    event = {"job_id": "20261121T020000123Z-1a2b3c4d-j"} if name == "finisher" else dict(TIMER_EVENT)

    with pytest.raises(Exception) as raised:
        load_handler(name).main_handler(event, None)

    shown = str(raised.value) + "".join(capsys.readouterr())
    assert "is invalid" in shown, shown
    for secret in ("cos-key-value", "db-password-value", "robot-key-0123", "wechat-secret-value",
                   "typed-secret-value"):
        assert secret not in shown, secret


@pytest.mark.parametrize(("event", "words"), [
    # the console's Hello World test template
    ({"key1": "value-0123", "key2": "value2"},
     ['"idempotency_key"', "missing", '"key1"', "not expected", '{"idempotency_key": "<any key>"']),
    ({"idempotency_key": 7}, ['"idempotency_key"', "not a string"]),
    ({"idempotency_key": "k", "sources": "value-0123"}, ['"sources"', "not a list"]),
    ({"idempotency_key": "k", "sources": ["shop", 7]}, ['"sources.1"', "not a string"]),
])
def test_trigger_fails_the_invocation_on_a_malformed_run_request(
        deployed: LocalBackup, event: dict[str, Any], words: list[str]) -> None:
    """A direct invocation that is not a run request names the field and the event the
    trigger takes, as the finisher and the poller do; the event's values are not echoed."""
    trigger = load_handler("trigger")

    with pytest.raises(ValueError) as raised:
        trigger.main_handler(event, None)

    said = str(raised.value)
    for word in words:
        assert word in said, said
    assert "value-0123" not in said and "input_value" not in said, said
    assert "POST /runs" in said, said  # the other way to start a run
    assert open_store(deployed.state_url).list_runs(10) == []  # nothing was started
