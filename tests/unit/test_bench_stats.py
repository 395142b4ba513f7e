"""The finisher benchmark's statistics (scripts/bench_finisher.py): the interval for the
median ratio (the k-th smallest and k-th largest samples, with the binomial chance that
the median lies inside, k as large as keeps that chance at 90% or more), and the ratios
with the S3 server's completion set to one value for every copy."""

from __future__ import annotations

import math

import pytest

from scripts.bench_finisher import Phases, equalized_ratios, median_interval


@pytest.mark.parametrize(("n", "k", "confidence"), [
    (3, 1, 0.75),  # too few pairs for 90%: the whole range, and says how sure it is
    (7, 1, 1 - 2 / 128),
    (9, 2, 1 - 2 * 10 / 512),  # 3rd smallest would leave the median outside 18% of the time
    (11, 3, 1 - 2 * 67 / 2048),
])
def test_the_interval_is_the_widest_order_statistics_that_keep_ninety_percent(
        n: int, k: int, confidence: float) -> None:
    samples = [0.5 + i / 100 for i in reversed(range(n))]  # unsorted on purpose

    low, high, sure = median_interval(samples)

    ordered = sorted(samples)
    assert (low, high) == (ordered[k - 1], ordered[n - k])
    assert sure == pytest.approx(confidence)
    assert sure >= 0.9 or k == 1
    # one step narrower would fall below 90%
    narrower = 1 - 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n
    assert narrower < 0.9


def test_equalized_ratios_give_both_copies_of_a_pair_the_median_completion() -> None:
    pairs = [  # (finisher, rclone): before, parts, completion, after
        (Phases(0.6, 1.4, 5.0, 0.1), Phases(0.2, 1.3, 2.0, 0.0)),
        (Phases(0.6, 1.4, 3.0, 0.1), Phases(0.2, 1.3, 4.0, 0.0)),
    ]

    ratios, common = equalized_ratios(pairs)

    assert common == 3.5  # the median of 5.0, 2.0, 3.0 and 4.0
    assert ratios == pytest.approx([5.0 / 5.6, 5.0 / 5.6])  # (0.2+1.3+3.5) / (0.6+1.4+3.5+0.1)
    # where the raw ratios were the completion's draw
    assert [sum(theirs) / sum(ours) for ours, theirs in pairs] == pytest.approx([3.5 / 7.1, 5.5 / 5.1])
