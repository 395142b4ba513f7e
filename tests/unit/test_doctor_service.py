"""The doctor's order, skips and verdict over fakes: what the service decides, apart from
any real call (those are in tests/test_doctor.py)."""

from __future__ import annotations

from dataclasses import dataclass, field

from shared.domain.errors import Fatal, StorageError
from shared.service.doctor import Subject, diagnose
from tests.unit.support import FakePlatforms, ScriptedExport, unit_config


@dataclass
class FakeDeployment:
    """Each check answers what the test says: a sentence, None (not used) or an error."""

    answers: dict[str, object] = field(default_factory=dict)
    asked: list[str] = field(default_factory=list)

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

    def finisher(self) -> str | None:
        return self._answer("finisher")

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
    assert deployment.asked == ["bucket", "objects", "create_only", "state", "finisher",
                                "webhook 0 send=True", "webhook 1 send=True"]
    assert report.text().splitlines()[-1] == "1 check(s) failed: fix them and run doctor again"


def test_an_unreachable_bucket_skips_what_needs_it_and_none_means_not_used() -> None:
    deployment = FakeDeployment({"bucket": StorageError("NoSuchBucket"), "finisher": None})
    report = diagnose(lambda: subject(deployment))
    status = {f.check: f.status for f in report.findings}
    assert status["probe object"] == status["create-only writes"] == "skipped"
    assert status["state"] == "ok"  # SQL state: the bucket is not needed for it
    assert status["finisher"] == "skipped"
    assert "objects" not in deployment.asked and "create_only" not in deployment.asked
