"""In-call retries of transient failures, used by the service layer, the platforms and
the webhooks alike: exponential backoff over tenacity, on the `Retryable` class only."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from shared.domain.errors import Retryable
from shared.logs import redact

if TYPE_CHECKING:
    from tenacity import RetryCallState

log = logging.getLogger(__name__)

T = TypeVar("T")


def with_retries(call: Callable[[], T], *, attempts: int, base_seconds: float) -> T:
    """Run `call`, retrying `Retryable` failures with exponential backoff, then re-raise."""
    try:
        return call()
    except Retryable as exc:
        if attempts <= 1:
            raise
        failed: list[Retryable] = [exc]
    # Imported at the first failure (about 15 ms of a cold start that never needs it). It
    # is handed that failure as its first attempt's, so its waits, log lines and attempt
    # numbers are those of a run that began under it.
    from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

    def again() -> T:
        if failed:
            raise failed.pop()
        return call()

    retrying = Retrying(
        retry=retry_if_exception_type(Retryable),
        stop=stop_after_attempt(attempts),
        wait=wait_exponential(multiplier=base_seconds, max=30),
        reraise=True,
        before_sleep=_said,
    )
    return retrying(again)


def _said(state: RetryCallState) -> None:
    """Every retry leaves a line: a call repeated after a lost answer may have been carried
    out twice (an export started twice), and only this line would say why."""
    error = state.outcome.exception() if state.outcome is not None else None
    wait = state.next_action.sleep if state.next_action is not None else 0.0
    log.warning("transient failure; trying again", extra={
        "reason": redact(str(error)), "attempt": state.attempt_number, "wait_seconds": round(wait, 2)})
