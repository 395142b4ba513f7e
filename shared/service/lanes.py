"""Work on many items at once without letting one group crowd out the others.

Each item belongs to a few lanes (for a poller job: its source and its platform type),
and a lane holds at most its cap of items at a time. An item is handed to a worker only
when every lane it belongs to has room, so workers never sit blocked behind a slow
lane: a platform that answers slowly (or is rate limited) keeps to its own share while
jobs of other platforms go ahead. Within a lane set items start in the order given
(oldest due first); across lane sets, the earliest waiting item with room goes first.
"""

from __future__ import annotations

import logging
from collections import Counter, deque
from collections.abc import Callable, Hashable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextvars import copy_context
from typing import TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
Lanes = tuple[tuple[Hashable, int], ...]  # (lane key, cap) pairs


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
    # Items grouped by their lanes (a handful of groups: one per source), so choosing the
    # next item costs a look at each group's head, not at every waiting item.
    groups: dict[Lanes, deque[tuple[int, T]]] = {}
    for index, item in enumerate(items):
        groups.setdefault(tuple(lanes(item).items()), deque()).append((index, item))
    busy: Counter[Hashable] = Counter()
    running: dict[Future[None], Lanes] = {}
    done_count = 0
    workers = max(1, workers)
    with ThreadPoolExecutor(workers, thread_name_prefix="poll") as pool:
        while groups or running:
            if groups and not keep_going():
                left = sum(len(g) for g in groups.values())
                log.info("poll budget spent; %d due jobs wait for the next tick", left)
                groups.clear()
            while groups and len(running) < workers:
                open_groups = [key for key in groups if all(busy[k] < cap for k, cap in key)]
                if not open_groups:
                    break
                key = min(open_groups, key=lambda k: groups[k][0][0])  # the earliest due
                _, item = groups[key].popleft()
                if not groups[key]:
                    del groups[key]
                busy.update(k for k, _ in key)
                # each item runs in a copy of the caller's context (log fields)
                running[pool.submit(copy_context().run, work, item)] = key
            if not running:
                break
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                busy.subtract(k for k, _ in running.pop(future))
                done_count += 1
                error = future.exception()
                if error is not None:  # `work` classifies its own errors; this is a bug
                    log.error("unexpected error in a poll worker", exc_info=error)
    return done_count
