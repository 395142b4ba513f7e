"""In-call retries of transient failures, used by the service layer, the platforms and
the webhooks alike: exponential backoff over tenacity, on the `Retryable` class only."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from shared.domain.errors import Retryable

T = TypeVar("T")


def with_retries(call: Callable[[], T], *, attempts: int, base_seconds: float) -> T:
    """Run `call`, retrying `Retryable` failures with exponential backoff, then re-raise."""
    # imported on first use: a poller tick with nothing to do never needs it (cold start)
    from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

    retrying = Retrying(
        retry=retry_if_exception_type(Retryable),
        stop=stop_after_attempt(attempts),
        wait=wait_exponential(multiplier=base_seconds, max=30),
        reraise=True,
    )
    return retrying(call)
