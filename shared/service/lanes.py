"""Work on many items at once without letting one group crowd out the others.

Each item belongs to a few lanes (for a poller job: its source and its platform type),
and a lane holds at most its cap of items at a time. An item is handed to a worker only
when every lane it belongs to has room, so workers never sit blocked behind a slow
lane: a platform that answers slowly (or is rate limited) keeps to its own share while
jobs of other platforms go ahead. Items start in the order given (oldest due first).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Hashable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextvars import copy_context
from typing import TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


def run_in_lanes(
    items: Iterable[T],
    work: Callable[[T], None],
    *,
    lanes: Callable[[T], dict[Hashable, int]],
    workers: int,
    keep_going: Callable[[], bool],
) -> int:
    """Call `work` on the items, up to `workers` at once and each lane (key → cap, from
    `lanes(item)`) within its cap; start no new item once `keep_going()` is false. Returns
    how many items were worked on. `work` must not raise (an error in it is logged)."""
    waiting = list(items)
    busy: Counter[Hashable] = Counter()
    running: dict[Future[None], dict[Hashable, int]] = {}
    done_count = 0
    with ThreadPoolExecutor(max(1, workers), thread_name_prefix="poll") as pool:
        while waiting or running:
            if waiting and keep_going():
                still: list[T] = []
                for item in waiting:
                    item_lanes = lanes(item)
                    if len(running) < workers and all(busy[k] < cap for k, cap in item_lanes.items()):
                        busy.update(item_lanes.keys())
                        # each item runs in a copy of the caller's context (log fields)
                        running[pool.submit(copy_context().run, work, item)] = item_lanes
                    else:
                        still.append(item)
                waiting = still
            elif waiting:
                log.info("poll budget spent; %d due jobs wait for the next tick", len(waiting))
                waiting = []
            if not running:
                break
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                busy.subtract(running.pop(future).keys())
                done_count += 1
                error = future.exception()
                if error is not None:  # `work` classifies its own errors; this is a bug
                    log.error("unexpected error in a poll worker", exc_info=error)
    return done_count
