"""The pacer of rate-limited page reads: read-ahead shrinks under push-back and grows
back once calls are accepted; a refusal that persists is given up (the copy resumes in a
later invocation)."""

from __future__ import annotations

import pytest

from shared.domain.errors import RateLimited
from shared.service.pacing import Pacer


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_read_ahead_shrinks_under_push_back_and_grows_back() -> None:
    pacer = Pacer(4, clock=Clock())
    pacer.refused(RateLimited("429"))
    pacer.refused(RateLimited("429"))
    assert pacer.depth == 1 and pacer.interval > 0

    for _ in range(40):
        pacer.accepted()

    assert pacer.depth == 4 and pacer.interval < 0.1


def test_retry_after_is_honoured() -> None:
    pacer = Pacer(3, clock=Clock())
    assert pacer.refused(RateLimited("429", retry_after=2.5)) == 2.5


def test_a_refusal_that_persists_is_given_up() -> None:
    clock = Clock()
    pacer = Pacer(3, clock=clock, patience=10)
    refusal = RateLimited("429", retry_after=3)
    with pytest.raises(RateLimited):
        for _ in range(10):
            clock.now += pacer.refused(refusal)
    assert clock.now <= 10


def test_no_wait_past_the_invocations_deadline() -> None:
    pacer = Pacer(3, clock=Clock(), deadline=1.0)
    with pytest.raises(RateLimited):
        pacer.refused(RateLimited("429", retry_after=5))


def test_a_retry_after_longer_than_the_pacers_own_longest_wait_is_honoured() -> None:
    """OneDB's `Retry-After: 45` means no call before 45 s: asking at 30 s is refused again."""
    pacer = Pacer(3, clock=Clock())
    assert pacer.refused(RateLimited("429", retry_after=45)) == 45
