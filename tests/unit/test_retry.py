"""In-call retries: only `Retryable` is tried again, and every retry leaves a log line."""

from __future__ import annotations

import logging

import pytest

from shared.domain.errors import Fatal, Retryable
from shared.logs import REDACTED, register_secret
from shared.retry import with_retries


def test_each_retry_is_logged_with_its_reason_and_no_secret(caplog: pytest.LogCaptureFixture) -> None:
    register_secret("token-0a1b2c3d4e")
    answers: list[object] = [Retryable("WeChat /tcb/x: read timed out (token-0a1b2c3d4e)"),
                             Retryable("WeChat /tcb/x: HTTP 502"), "ok"]

    def call() -> str:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return str(answer)

    with caplog.at_level(logging.WARNING, logger="shared.retry"):
        assert with_retries(call, attempts=3, base_seconds=0.001) == "ok"

    said = [(r.getMessage(), r.__dict__["reason"], r.__dict__["attempt"])
            for r in caplog.records if r.name == "shared.retry"]
    assert said == [("transient failure; trying again", f"WeChat /tcb/x: read timed out ({REDACTED})", 1),
                    ("transient failure; trying again", "WeChat /tcb/x: HTTP 502", 2)]


def test_a_fatal_error_is_not_tried_again(caplog: pytest.LogCaptureFixture) -> None:
    calls = 0

    def call() -> None:
        nonlocal calls
        calls += 1
        raise Fatal("wrong secret")

    with caplog.at_level(logging.WARNING, logger="shared.retry"), pytest.raises(Fatal):
        with_retries(call, attempts=3, base_seconds=0.001)
    assert calls == 1 and not [r for r in caplog.records if r.name == "shared.retry"]
