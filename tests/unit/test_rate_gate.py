"""The restore's rate gate: the limit learnt from the calls accepted before the first
refusal, a burst of refusals counted once, recovery without refusals, and giving up
when the platform refuses everything for too long."""

from __future__ import annotations

import pytest

from shared.domain.errors import RateLimited
from shared.service.restore.rows import RateGate


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_gate_learns_the_limit_counts_a_burst_once_and_speeds_up_again() -> None:
    clock = Clock()
    gate = RateGate(clock)
    for index in range(200):  # 200 calls accepted within the last second, unpaced
        clock.now = 100.0 + index * 0.005
        gate.accepted(clock.now)
    assert gate.turn() <= clock.now + 1e-9  # still unpaced
    burst_start = clock.now
    clock.now += 0.001  # the answer comes after the start
    wait = gate.refused(RateLimited("429", retry_after=1.0), burst_start)
    spacing = RateGate.MARGIN / 200
    assert wait == 1.0  # the refused call honours Retry-After
    for _ in range(7):  # the rest of the calls that were in flight: no further slowing
        assert gate.refused(RateLimited("429"), burst_start) == pytest.approx(spacing)
    clock.now += 0.01
    later = gate.refused(RateLimited("429"), clock.now)  # a call started under the spacing
    assert later == pytest.approx(spacing * RateGate.SLOW_DOWN)
    clock.now += 2.0
    gate.accepted(clock.now)  # a second without refusals: a little faster
    assert gate.refused(RateLimited("429"), clock.now + 0.1) == pytest.approx(
        spacing * RateGate.SLOW_DOWN / RateGate.SPEED_UP * RateGate.SLOW_DOWN)


def test_the_gate_gives_up_after_its_patience_of_nothing_but_refusals() -> None:
    clock = Clock()
    gate = RateGate(clock)
    refusal = RateLimited("429", retry_after=1.0)
    gate.refused(refusal, clock.now)
    clock.now += RateGate.PATIENCE + 1
    with pytest.raises(RateLimited):
        gate.refused(refusal, clock.now)
