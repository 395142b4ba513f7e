"""Pacing page reads under a platform's rate limit: how far to read ahead, how long to
wait between calls, and when a refusal has lasted long enough to give up for now.

Every refusal halves the read-ahead and spaces calls further apart: the first time as the
platform just showed it allows (the calls it accepted within the last WINDOW), later a
little more each time, or half as far again when it refuses twice in a row; the refused call is asked again after that spacing or the platform's
`Retry-After`, whichever is longer. Every run of accepted calls widens the read-ahead by
one page and shortens the spacing a little, so the copy settles just under the allowed
rate and speeds up again when the limit lifts.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable

from shared.domain.errors import RateLimited

FIRST_WAIT = 0.1  # seconds after a refusal without Retry-After
MAX_WAIT = 30.0  # the longest spacing the pacer picks itself; a longer Retry-After is
# still waited out in full (or, past the patience or deadline, the copy is left for later)
PATIENCE = 120.0  # seconds of nothing but refusals before the copy is left for later
SLOW_DOWN = 1.5  # spacing after a refusal, relative to before
SPEED_UP = 0.95  # spacing kept after each run of SPEED_UP_AFTER accepted calls
SPEED_UP_AFTER = 8
WINDOW = 1.0  # seconds over which accepted calls estimate the allowed rate
MARGIN = 1.05  # spacing kept above that estimate
FLOOR_FADE = 0.97  # how fast the memory of the last refused spacing fades


class Pacer:
    """Shared by the read-ahead thread (waits, refusals) and the reader (depth)."""

    def __init__(self, max_depth: int, *, deadline: float | None = None,
                 patience: float = PATIENCE, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_depth = max_depth
        self.depth = max_depth  # pages read ahead right now
        self.interval = 0.0  # seconds between the starts of two calls
        self.refusals = 0  # over the whole copy, for the log and the benchmark
        self._deadline = deadline
        self._patience = patience
        self._clock = clock
        self._last_start = float("-inf")
        self._refused_since: float | None = None
        self._streak = 0  # accepted calls since the last change of depth
        self._calm = 0  # accepted calls since the spacing last changed
        self._floor = 0.0  # the spacing set at the last refusal, fading
        self._recent: deque[float] = deque()  # starts of calls accepted within WINDOW

    def wait_turn(self, stop: threading.Event) -> None:
        """Sleep until the next call may start (returns at once if `stop` is set)."""
        delay = self._last_start + self.interval - self._clock()
        if delay > 0:
            stop.wait(delay)
        self._last_start = self._clock()

    def accepted(self) -> None:
        self._refused_since = None
        self._recent.append(self._last_start)
        self._streak += 1
        if self._streak >= 2 * self.depth:
            self._streak = 0
            self.depth = min(self.max_depth, self.depth + 1)
        self._calm += 1
        if self._calm >= SPEED_UP_AFTER:
            self._calm = 0
            # not straight back to the spacing that was refused; that memory fades slowly
            self._floor *= FLOOR_FADE
            spacing = max(self.interval * SPEED_UP, self._floor)
            self.interval = 0.0 if spacing < 0.005 else spacing

    def refused(self, exc: RateLimited) -> float:
        """Seconds to wait before asking again; raises `exc` once refusals outlast the
        patience (or the invocation's deadline): the copy resumes in a later invocation."""
        now = self._clock()
        self.refusals += 1
        self._streak = 0
        if self._refused_since is None:
            self._refused_since = now
        self._streak = self._calm = 0
        self.depth = max(1, self.depth // 2)
        while self._recent and self._recent[0] < now - WINDOW:
            self._recent.popleft()
        if self._refused_since != now:  # refused again, no call accepted since: back off
            spacing = self.interval * SLOW_DOWN
        elif self.interval == 0 and self._recent:
            # unpaced so far: the calls just accepted within a window are about the limit
            spacing = MARGIN * WINDOW / len(self._recent)
        else:  # paced, and a little too fast
            spacing = self.interval * MARGIN
        self._recent.clear()
        self.interval = min(MAX_WAIT, max(FIRST_WAIT, spacing))
        self._floor = self.interval
        # never before the platform's Retry-After: a call sooner is only refused again
        wait = max(exc.retry_after or 0.0, self.interval)
        gave_up = now + wait - self._refused_since > self._patience
        if gave_up or (self._deadline is not None and now + wait >= self._deadline):
            raise exc
        return wait
