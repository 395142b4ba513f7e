"""The doctor's order, skips and verdict over fakes: what the service decides, apart from
any real call (those are in tests/test_doctor.py)."""

from __future__ import annotations

from dataclasses import dataclass, field

from shared.domain.errors import Fatal, StorageError
from shared.ports import Deployed
from shared.service.doctor import Subject, diagnose
from tests.unit.support import FakePlatforms, ScriptedExport, unit_config


@dataclass
class FakeDeployment:
    """Each check answers what the test says: a sentence, None (not used) or an error."""

    answers: dict[str, object] = field(default_factory=dict)
    asked: list[str] = field(default_factory=list)
    digests: dict[str, str] = field(default_factory=dict)  # trigger/poller/finisher: its config

    def _answer(self, name: str) -> str | None:
        self.asked.append(name)
        answer = self.answers.get(name, f"{name} fine")
        if isinstance(answer, BaseException):
            raise answer
        return answer if answer is None else str(answer)

    def bucket(self) -> str:
        return self._answer("bucket") or ""

    def objects(self) -> str:
        return self._answer("objects") or ""

    def create_only(self) -> str | None:
        return self._answer("create_only")

    def state(self) -> str:
        return self._answer("state") or ""

    def finisher(self) -> Deployed | None:
        return self._deployed("finisher")

    def poller(self) -> Deployed | None:
        return self._deployed("poller")

    def trigger(self) -> str | None:
        self.asked.append("trigger")
        refused = self.answers.get("trigger")
        if isinstance(refused, BaseException):  # it answered that it cannot load its config
            raise refused
        return self.digests.get("trigger")

    def _deployed(self, name: str) -> Deployed | None:
        """The function's answer, with the config digest `digests` gives it ("" by default:
        a function too old to say, so nothing is compared)."""
        detail = self._answer(name)
        return None if detail is None else Deployed(detail, self.digests.get(name, ""))

    def webhooks(self) -> int:
        return 2

    def webhook(self, index: int, send: bool) -> str:
        return self._answer(f"webhook {index} send={send}") or ""

    def heartbeat(self, send: bool) -> str | None:
        return self._answer(f"heartbeat send={send}")


class Probing(ScriptedExport):
    def probe(self) -> str:
        raise Fatal("token refused: fix the secret")


def subject(deployment: FakeDeployment, platform: ScriptedExport | None = None) -> Subject:
    return Subject(unit_config(["orders"]), deployment,
                   FakePlatforms(platform or ScriptedExport({}), "export"))


def test_a_platform_without_a_probe_is_skipped_and_one_that_fails_says_why() -> None:
    report = diagnose(lambda: subject(FakeDeployment()))
    assert {f.check: f.status for f in report.findings}["source shop"] == "skipped"
    report = diagnose(lambda: subject(FakeDeployment(), Probing({})))
    found = {f.check: f for f in report.findings}
    assert found["source shop"].status == "failed" and "fix the secret" in found["source shop"].detail
    assert report.ok is False and report.to_dict()["ok"] is False


def test_an_unexpected_error_fails_its_check_and_the_others_still_run() -> None:
    deployment = FakeDeployment({"objects": RuntimeError("boom")})
    report = diagnose(lambda: subject(deployment), notify=True)
    found = {f.check: f for f in report.findings}
    assert found["probe object"].status == "failed"
    assert found["probe object"].detail.startswith("unexpected RuntimeError: boom")
    assert deployment.asked == ["bucket", "objects", "create_only", "state", "finisher", "poller",
                                "trigger", "webhook 0 send=True", "webhook 1 send=True"]
    assert report.text().splitlines()[-1] == "1 check(s) failed: fix them and run doctor again"


def test_an_unreachable_bucket_skips_what_needs_it_and_none_means_not_used() -> None:
    deployment = FakeDeployment({"bucket": StorageError("NoSuchBucket"), "finisher": None})
    report = diagnose(lambda: subject(deployment))
    status = {f.check: f.status for f in report.findings}
    assert status["probe object"] == status["create-only writes"] == "skipped"
    assert status["state"] == "ok"  # SQL state: the bucket is not needed for it
    assert status["finisher"] == "skipped"
    assert "objects" not in deployment.asked and "create_only" not in deployment.asked


# which config the deployed functions run -----------------------------------------------
MINE = unit_config(["orders"]).digest


def compared(digests: dict[str, str]) -> str:
    """The `deployed config` finding's detail, failed, for functions answering `digests`."""
    report = diagnose(lambda: subject(FakeDeployment(digests=digests)))
    found = {f.check: f for f in report.findings}["deployed config"]
    assert found.status == "failed" and report.ok is False, found
    return found.detail


def test_a_local_edit_not_deployed_is_told_apart_from_a_function_left_out() -> None:
    """All three functions run one config and this file another: the file was edited and
    not deployed. Nothing else can explain it, so the doctor says that, and the one fix."""
    detail = compared({"trigger": "0ld0ld0ld0ld0ld0", "poller": "0ld0ld0ld0ld0ld0",
                       "finisher": "0ld0ld0ld0ld0ld0"})

    assert f"this backup.yaml (digest {MINE}) is not deployed" in detail
    assert "the trigger, poller and finisher all run the config before it" in detail
    assert "edited since the last deploy" in detail and "scripts/package --config backup.yaml" in detail
    assert "left out" not in detail and "--target of" not in detail  # not the other cause


def test_a_function_left_out_of_the_deploy_is_named() -> None:
    """The trigger runs this file (the doctor inside the trigger, or asked from a machine):
    the poller, on another config, was left out of the last deploy."""
    detail = compared({"trigger": MINE, "poller": "0ld0ld0ld0ld0ld0", "finisher": MINE})

    assert detail.startswith("the poller runs another config than this backup.yaml")
    assert "left out of the last deploy" in detail and "scf deploy with no --target" in detail
    assert "edited" not in detail


def test_without_the_triggers_answer_both_causes_are_named() -> None:
    detail = compared({"poller": "0ld0ld0ld0ld0ld0", "finisher": "0ld0ld0ld0ld0ld0"})

    assert "edited since the last deploy, or a function was left out" in detail
    assert "the trigger did not say which config it runs" in detail


def test_functions_running_this_config_pass_and_old_ones_are_not_compared() -> None:
    report = diagnose(lambda: subject(FakeDeployment(digests={"trigger": MINE, "poller": MINE,
                                                              "finisher": MINE})))
    found = {f.check: f for f in report.findings}
    assert found["deployed config"].status == "ok", found
    assert found["deployed config"].detail == f"the trigger, finisher and poller run this backup.yaml (digest {MINE})"
    assert found["poller"].status == "ok"
    report = diagnose(lambda: subject(FakeDeployment()))  # functions too old to give a digest
    assert "deployed config" not in {f.check for f in report.findings}


def test_a_trigger_that_cannot_load_its_config_fails_and_the_others_are_still_compared() -> None:
    """Asked even when no other function gave a digest: each function's own environment
    must be fixed, and all of them are named in one run of the doctor."""
    refused = Fatal("the trigger answered, but cannot load its config: give it its variables")
    report = diagnose(lambda: subject(FakeDeployment({"trigger": refused},
                                                     digests={"poller": MINE, "finisher": MINE})))
    found = {f.check: f for f in report.findings}
    assert found["trigger"].status == "failed" and "give it its variables" in found["trigger"].detail
    assert found["deployed config"].detail == f"the finisher and poller run this backup.yaml (digest {MINE})"
    assert report.ok is False
    report = diagnose(lambda: subject(FakeDeployment({"trigger": refused})))  # too old to say
    assert {f.check: f.status for f in report.findings}["trigger"] == "failed"
    assert "trigger" not in {f.check for f in diagnose(lambda: subject(FakeDeployment())).findings}


def test_one_function_that_runs_this_config_is_told_in_the_singular() -> None:
    report = diagnose(lambda: subject(FakeDeployment(digests={"finisher": MINE})))
    found = {f.check: f for f in report.findings}
    assert found["deployed config"].detail == f"the finisher runs this backup.yaml (digest {MINE})"
