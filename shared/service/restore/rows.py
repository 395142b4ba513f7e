"""Row-by-row restores (OneDB): every line of the backup is one row written with one
platform call, several at once (`timing.restore_row_concurrency`) and paced under the
platform's rate limit.

Before the first row, the backup object is read once to check its SHA-256 and row count,
so a damaged backup writes nothing. Rows go in windows; after each window the position
(object, line) and the counts are saved on the job, so a killed restore resumes at the
last saved window. Rows of the window that was cut off are written again: a row written
twice stays one row (the platform's write is keyed by the row's ids), so none is lost or
doubled. At the end the target is paged back and every backup row must be in it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, cast

from shared.domain.errors import RateLimited, VerificationFailed
from shared.domain.jobs import RestoreOrder, StoredObject
from shared.domain.records import may_hold_long_integer
from shared.ports import PartialWrites, RestoreMode, RowImportPlatform, RowOutcome
from shared.service.context import Budget, Context
from shared.service.copying import CopyHold, CopyPaused
from shared.service.restore.send import save_point

log = logging.getLogger(__name__)

WINDOW = 1000  # rows between two saved positions


def write_rows(ctx: Context, hold: CopyHold, platform: RowImportPlatform, order: RestoreOrder,
               budget: Budget) -> dict[str, Any]:
    """Write every row not yet written; the final checkpoint (with the comparison)."""
    workers = ctx.config.timing.restore_row_concurrency
    with ThreadPoolExecutor(workers, thread_name_prefix="restore-rows") as pool:
        rows = _Rows(ctx, hold, pool, _Writer(platform, order), budget, in_flight=2 * workers)
        while (index := int((hold.job.checkpoint or {}).get("object", 0))) < len(order.objects):
            rows.write_object(order.objects[index], index)
    return _compare(ctx, hold, platform, order)


class _Rows:
    """One object's rows from the saved line on, `in_flight` at once. The position is saved
    whenever WINDOW more rows in order have been written: a slow row (one waiting out a
    rate limit) never holds up the others, only the saved position."""

    def __init__(self, ctx: Context, hold: CopyHold, pool: ThreadPoolExecutor, writer: _Writer,
                 budget: Budget, *, in_flight: int) -> None:
        self._ctx, self._hold, self._pool, self._writer = ctx, hold, pool, writer
        self._budget = budget
        self._in_flight = in_flight
        self._flight: deque[Future[RowOutcome]] = deque()
        self._done: list[RowOutcome] = []
        self._line = 0

    def write_object(self, stored: StoredObject, index: int) -> None:
        self._line = int((self._hold.job.checkpoint or {}).get("line", 0))
        for row in _lines(self._ctx, stored, skip=self._line):
            self._flight.append(self._pool.submit(self._writer.write, row))
            self._settle(index, self._in_flight)
        self._settle(index, 0)
        self._save(object=index + 1, line=0)

    def _settle(self, index: int, keep: int) -> None:
        """Take the finished rows at the head, waiting while more than `keep` are out."""
        while len(self._flight) > keep or (self._flight and self._flight[0].done()):
            self._done.append(self._flight.popleft().result())
            self._line += 1
            if len(self._done) == WINDOW:
                self._save(object=index, line=self._line)
                if self._budget.spent():
                    log.info("restore paused at its time budget", extra={"line": self._line})
                    raise CopyPaused()

    def _save(self, **position: int) -> None:
        point = self._hold.job.checkpoint or {}
        save_point(self._ctx, self._hold, **position,
                   written=int(point.get("written", 0)) + self._done.count("written"),
                   kept=int(point.get("kept", 0)) + self._done.count("kept"),
                   rows=int(point.get("rows", 0)) + len(self._done))
        self._done.clear()


class _Writer:
    """One row at a time from many threads, their starts spaced by one RateGate."""

    def __init__(self, platform: RowImportPlatform, order: RestoreOrder) -> None:
        self._platform = platform
        self._order = order
        self._gate = RateGate()

    def write(self, line: bytes) -> RowOutcome:
        while True:  # the platform's client retries transient errors itself
            started = self._gate.turn()
            try:
                outcome = self._platform.write_row(self._order.target,
                                                   cast(Any, self._order.mode), line)
            except RateLimited as exc:
                time.sleep(self._gate.refused(exc, started))
                continue
            self._gate.accepted(started)
            return outcome


class RateGate:
    """Spaces the starts of calls made from many threads so that together they stay just
    under a platform's rate limit, learnt from its refusals.

    Unpaced until the first refusal; then the calls accepted in the last second are about
    the limit, and calls start that far apart (a little more). Every second without a
    refusal the spacing shrinks a little, so a limit that rises is found again; a refusal
    of a call started under the current spacing widens it. The calls in flight when the
    platform first refused are refused together: they count once. The refused call itself
    waits at least the platform's Retry-After; the others go on at the new spacing."""

    WINDOW = 1.0  # seconds over which accepted calls estimate the limit
    MARGIN = 1.02  # spacing kept above that estimate
    SLOW_DOWN = 1.1  # spacing after a further refusal, relative to before
    SPEED_UP = 1.005  # spacing divided by this after each second without a refusal: a
    # refusal stalls the calls then in flight for its Retry-After, so probing is slow
    PATIENCE = 120.0  # seconds of nothing but refusals before the restore is left for later

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._interval = 0.0
        self._next = 0.0  # the earliest start of the next call
        self._accepted: deque[float] = deque()  # starts of calls accepted within WINDOW
        self._changed_at = float("-inf")  # when the spacing last changed
        self._refused_since: float | None = None

    def turn(self) -> float:
        """Wait for this call's start; the start."""
        with self._lock:
            now = self._clock()
            start = max(now, self._next)
            self._next = start + self._interval
        if start > now:
            time.sleep(start - now)
        return start

    def accepted(self, started: float) -> None:
        with self._lock:
            now = self._clock()
            self._refused_since = None
            self._accepted.append(started)
            while self._accepted and self._accepted[0] < now - self.WINDOW:
                self._accepted.popleft()
            if self._interval and now - self._changed_at >= self.WINDOW:
                self._interval /= self.SPEED_UP
                self._changed_at = now

    def refused(self, exc: RateLimited, started: float) -> float:
        """Seconds the refused call waits before asking again; raises `exc` once refusals
        have lasted PATIENCE seconds without a call accepted."""
        with self._lock:
            now = self._clock()
            if self._refused_since is None:
                self._refused_since = now
            elif now - self._refused_since > self.PATIENCE:
                raise exc
            if started >= self._changed_at:  # started under the current spacing
                if self._interval == 0.0:
                    recent = sum(1 for t in self._accepted if t >= now - self.WINDOW)
                    self._interval = self.MARGIN * self.WINDOW / max(1, recent)
                else:
                    self._interval *= self.SLOW_DOWN
                self._changed_at = now
                self._next = max(self._next, now + self._interval)
            return max(exc.retry_after or 0.0, self._interval)


def _lines(ctx: Context, stored: StoredObject, skip: int) -> Iterator[bytes]:
    """The object's lines (rows) after the first `skip`."""
    rest = b""
    number = 0
    for chunk in ctx.objects.iter_read(stored.key):
        rest += chunk
        *whole, rest = rest.split(b"\n")
        for row in whole:
            if row.strip():
                number += 1
                if number > skip:
                    yield row
    if rest.strip() and number + 1 > skip:
        yield rest


def _row_digest(line: bytes) -> bytes:
    import orjson

    if not may_hold_long_integer(line):  # orjson would read 2**64 + 1 as 2**64
        try:
            return hashlib.sha256(orjson.dumps(orjson.loads(line),
                                               option=orjson.OPT_SORT_KEYS)).digest()
        except orjson.JSONDecodeError:
            pass
    # a lone surrogate escape (half an emoji, `\ud83d`) or NaN, valid in a backup line and
    # refused by orjson, or a long integer: the standard library reads each exactly (the
    # same row gets the same form)
    canonical = json.dumps(json.loads(line), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("ascii")).digest()


def _compare(ctx: Context, hold: CopyHold, platform: RowImportPlatform,
             order: RestoreOrder) -> dict[str, Any]:
    """Page the target back: every backup row must be in it, as the backup has it (in insert
    mode a row that was already there and kept may differ; where the restore wrote only
    part of each row, only that part is judged)."""
    mode = cast(RestoreMode, order.mode)
    if isinstance(platform, PartialWrites) and platform.writes_part(order.target, mode):
        missing, target_rows = _missing_written(ctx, platform, platform, order)
    else:
        missing, target_rows = _missing_rows(ctx, platform, order)
    point = dict(hold.job.checkpoint or {})
    kept = int(point.get("kept", 0))
    if missing > (kept if order.mode == "insert" else 0):
        raise VerificationFailed(
            f"after the restore, {missing} of the backup's {order.records} rows are not in "
            f"{hold.job.source}/{order.target} as the backup has them ({target_rows} rows "
            "there); run the restore again (rows already written stay one row each)")
    point.update(after=target_rows, missing=missing)
    return point


def _missing_rows(ctx: Context, platform: RowImportPlatform, order: RestoreOrder) -> tuple[int, int]:
    """(backup rows not in the target as the backup has them, rows in the target)."""
    wanted: dict[bytes, int] = {}
    for stored in order.objects:
        for row in _lines(ctx, stored, skip=0):
            digest = _row_digest(row)
            wanted[digest] = wanted.get(digest, 0) + 1
    target_rows = 0
    for row in _target_lines(platform, order.target):
        target_rows += 1
        digest = _row_digest(row)
        if wanted.get(digest):
            wanted[digest] -= 1
    return sum(wanted.values()), target_rows


def _missing_written(ctx: Context, platform: RowImportPlatform, partial: PartialWrites,
                     order: RestoreOrder) -> tuple[int, int]:
    """As _missing_rows, each target row cut to the columns its backup row set (a partial
    write keeps the others, a column the row lacked at backup time included)."""
    wanted: dict[bytes, tuple[bytes, frozenset[str]]] = {}
    shapes: dict[frozenset[str], frozenset[str]] = {}  # one set per shape: rows share them
    twice = 0  # a row backed up twice is one row in the target
    for stored in order.objects:
        for row in _lines(ctx, stored, skip=0):
            key, columns = partial.written(order.target, row)
            twice += key in wanted
            wanted[key] = (_row_digest(row), shapes.setdefault(columns, columns))
    target_rows = 0
    for row in _target_lines(platform, order.target):
        target_rows += 1
        key, _ = partial.written(order.target, row)
        backed_up = wanted.get(key)
        if backed_up is not None and _row_digest(
                partial.written_part(order.target, row, backed_up[1])) == backed_up[0]:
            del wanted[key]
    return len(wanted) + twice, target_rows


def _target_lines(platform: RowImportPlatform, target: str) -> Iterator[bytes]:
    """The target's rows, one line each, as its backup would hold them."""
    cursor: dict[str, Any] | None = None
    while True:
        page = platform.fetch_page(target, cursor)
        data, _count = platform.encode_page(page)
        yield from (row for row in data.split(b"\n") if row.strip())
        if page.next_cursor is None:
            return
        cursor = page.next_cursor
