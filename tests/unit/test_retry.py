"""In-call retries: only `Retryable` is tried again, and every retry leaves a log line."""

from __future__ import annotations

import logging
import subprocess
import sys

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
        assert with_retries(call, attempts=3, base_seconds=0.01) == "ok"

    said = [(r.getMessage(), r.__dict__["reason"], r.__dict__["attempt"], r.__dict__["wait_seconds"])
            for r in caplog.records if r.name == "shared.retry"]
    assert said == [("transient failure; trying again", f"WeChat /tcb/x: read timed out ({REDACTED})", 1, 0.01),
                    ("transient failure; trying again", "WeChat /tcb/x: HTTP 502", 2, 0.02)]


def test_the_last_failure_is_raised_after_every_attempt() -> None:
    calls = 0

    def call() -> None:
        nonlocal calls
        calls += 1
        raise Retryable(f"HTTP 502 (call {calls})")

    with pytest.raises(Retryable, match=r"call 3\)"):
        with_retries(call, attempts=3, base_seconds=0.001)
    assert calls == 3


def test_a_call_that_succeeds_at_once_loads_no_retry_library() -> None:
    """The retry library is loaded at the first failure: a cold start whose calls all
    succeed does not pay its import (issue 15)."""
    probe = ("import sys\nfrom shared.retry import with_retries\n"
             "assert with_retries(lambda: 1, attempts=3, base_seconds=0.01) == 1\n"
             "print('tenacity' in sys.modules)")
    answer = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert answer.stdout.strip() == "False"


def test_a_fatal_error_is_not_tried_again(caplog: pytest.LogCaptureFixture) -> None:
    calls = 0

    def call() -> None:
        nonlocal calls
        calls += 1
        raise Fatal("wrong secret")

    with caplog.at_level(logging.WARNING, logger="shared.retry"), pytest.raises(Fatal):
        with_retries(call, attempts=3, base_seconds=0.001)
    assert calls == 1 and not [r for r in caplog.records if r.name == "shared.retry"]
