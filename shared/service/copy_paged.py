"""Paged copies: a platform without export jobs (OneDB) is read page by page straight
into a COS multipart upload, over as many finisher invocations as it takes.

After every uploaded part, the cursor, the upload id and the parts so far are saved on
the job (compare-and-set, renewing the copy lease), so a finisher that is killed or runs
out of time is resumed by the next one from the last saved part. A part uploaded but not
yet saved when a finisher died is simply uploaded again under the same number from the
saved cursor, which replaces it: no row is lost or written twice. A part slower to read
than half the lease renews the lease meanwhile, also while a slow page (or a rate
limit's wait) is outstanding, so the poller does not hand the job to a second finisher
beside this one. A finisher that stops at its time budget (or that the
platform asks to wait past it) parks the rows it has read but not uploaded in a small
side object, so even a very selective filter always moves on.

The job is done only once the completed object, read back from COS, has the bytes, rows
and per-part MD5s that were saved, and a CRC64-ECMA equal both to the one kept over the
parts as they were sent and to COS's own `x-cos-hash-crc64ecma`; its SHA-256 is computed
in that same read.

Overlap: a thread reads pages ahead while this one encodes and uploads. The queue between
them is bounded, so memory is about one part plus a few pages whatever the table's size.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import gc
import hashlib
import logging
import queue
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import TYPE_CHECKING, Any, cast

from pydantic import BaseModel, ConfigDict, Field

from shared.domain.errors import (
    BackupError,
    Fatal,
    RateLimited,
    Retryable,
    RetryLater,
    StorageError,
    VerificationFailed,
)
from shared.domain.jobs import PAGED_CHECKPOINT, Job, JobResult, StoredObject
from shared.domain.layout import CONTENT_TYPES, manifest_key, parked_key
from shared.domain.records import JsonLinesCounter
from shared.integrity import Crc64, crc64
from shared.ports import MIB, Page, PagedPlatform, ResumableUploads
from shared.service.copying import CopyHold, CopyPaused
from shared.service.pacing import Pacer

if TYPE_CHECKING:
    from shared.service.context import Context

log = logging.getLogger(__name__)

_deadlines: weakref.WeakKeyDictionary[CopyHold, float] = weakref.WeakKeyDictionary()
PREFETCH_PAGES = 3  # pages read ahead of the encoder at most (fewer under a rate limit)
MAX_PARTS = 10_000  # COS's limit per multipart upload
READ_CHUNK = MIB
IDLE_TICK = 0.25  # seconds: how often a copy waiting for a page checks its lease


class SavedPart(BaseModel):
    model_config = ConfigDict(defer_build=True)  # built on first use: cold start

    number: int
    etag: str
    bytes: int
    rows: int
    md5: str  # of what was sent; the read-back compares each part against it


class Parked(BaseModel):
    """Rows read but not yet in a part, kept in a side object by a finisher that paused."""

    model_config = ConfigDict(defer_build=True)  # built on first use: cold start
    key: str
    bytes: int
    rows: int
    md5: str
    cursor: dict[str, Any] | None  # where these rows started, to read them again if lost


class PagedState(BaseModel):
    model_config = ConfigDict(defer_build=True)  # built on first use: cold start

    key: str
    upload_id: str | None = None
    cursor: dict[str, Any] | None = None  # where the next page starts; None: at the start
    exhausted: bool = False  # every row is in a saved part
    parts: list[SavedPart] = Field(default_factory=list)
    parked: Parked | None = None
    completed: bool = False  # the multipart upload was completed
    # CRC64-ECMA of the saved parts in order (None: a checkpoint written before it was kept)
    crc64: int | None = None
    steps: int = 0  # progress saves so far
    steps_at_claim: int = 0  # `steps` when the current finisher took the job

    @property
    def rows(self) -> int:
        return sum(p.rows for p in self.parts)

    @property
    def bytes(self) -> int:
        return sum(p.bytes for p in self.parts)


class PagedCopier:
    """Copies a paged platform's table (see the module docstring)."""

    exports = False

    def copy(self, ctx: Context, hold: CopyHold, base_key: str) -> JobResult:
        platform = cast(PagedPlatform, ctx.platforms.get(hold.job.source))
        if not isinstance(ctx.objects, ResumableUploads):
            raise Fatal("this object store cannot resume multipart uploads; paged sources need COS")
        stored = _PagedCopy(ctx, hold, platform, ctx.objects, base_key).run()
        return JobResult(manifest_key=manifest_key(base_key), objects=[stored])

    def progressed(self, job: Job) -> bool:
        saved = (job.checkpoint or {}).get(PAGED_CHECKPOINT)
        return isinstance(saved, dict) and int(saved.get("steps", 0)) > int(saved.get("steps_at_claim", 0))

    def rebased(self, job: Job) -> dict[str, Any] | None:
        """Each stretch of progress excuses one reclaim or error, not more."""
        saved = (job.checkpoint or {}).get(PAGED_CHECKPOINT)
        if not isinstance(saved, dict):
            return job.checkpoint
        return {**(job.checkpoint or {}), PAGED_CHECKPOINT: {**saved, "steps_at_claim": saved.get("steps", 0)}}


class _PagedCopy:
    def __init__(self, ctx: Context, hold: CopyHold, platform: PagedPlatform,
                 uploads: ResumableUploads, key: str) -> None:
        self.ctx = ctx
        self.hold = hold
        self.platform = platform
        self.uploads = uploads
        self.key = key
        self.collection = hold.job.collection
        self.content_type = CONTENT_TYPES[platform.file_type]
        self.part_size = ctx.config.destination.part_size_mb * MIB
        # One budget per invocation, also across the service's in-call retry of the copy.
        deadline = time.monotonic() + ctx.config.timing.finish_budget_seconds
        if ctx.stop_by is not None:
            deadline = min(deadline, ctx.stop_by)
        self.deadline = _deadlines.setdefault(hold, deadline)
        self.renew_at = float("-inf")  # `time.monotonic()` by which the lease is renewed

    def run(self) -> StoredObject:
        state = self._load()
        # `steps_at_claim` was set once, by the claim (rebased): not here, or the in-call
        # retry of a copy would forget what its first try saved and count a failed try.
        self._save(state, progress=False)  # renews the lease
        if not state.completed:
            if state.upload_id is None:
                self._begin(state)
            try:
                if not state.exhausted:
                    self._page(state)
                self._complete(state)
            except Fatal:  # the job fails: nobody will resume this upload
                self._forget(state)
                raise
            if self._spent():
                raise CopyPaused("time budget spent after completing the upload; verified next")
        return self._verify(state)

    # state -------------------------------------------------------------------------
    def _load(self) -> PagedState:
        saved = (self.hold.job.checkpoint or {}).get(PAGED_CHECKPOINT)
        state = PagedState.model_validate(saved) if saved else PagedState(key=self.key)
        if state.key != self.key:  # e.g. the prefix changed: start over at the new key
            log.warning("paged copy checkpoint is for another key; starting over",
                        extra={"old_key": state.key})
            self._forget(state)
            state = PagedState(key=self.key)
        return state

    def _save(self, state: PagedState, *, progress: bool = True) -> None:
        if progress:
            state.steps += 1
        now = self.ctx.clock()
        seconds = self.ctx.config.timing.copy_lease_seconds
        lease = now + timedelta(seconds=seconds)
        parked = state.parked.rows if state.parked else 0
        self.hold.checkpoint(
            checkpoint={**(self.hold.job.checkpoint or {}), PAGED_CHECKPOINT: state.model_dump(mode="json")},
            progress_records=state.rows + parked,
            lease_until=lease,
            next_check_at=lease,
        )
        self.renew_at = time.monotonic() + seconds / 2

    def _keep_lease(self, state: PagedState) -> None:
        """Renew the lease once half of it has passed without a save (a part slower to read
        than `timing.copy_lease_seconds`, or one page slower than the lease): else the
        poller hands the job to another finisher while this one still uploads parts into
        the same upload. Saves the checkpoint as last saved: nothing read since then is in
        it. Called as pages arrive and while one is awaited, always in the copy's thread,
        so its compare-and-set saves follow one another on the job's latest version."""
        if time.monotonic() >= self.renew_at:
            self._save(state, progress=False)

    def _spent(self) -> bool:
        return time.monotonic() >= self.deadline

    def _forget(self, state: PagedState) -> None:
        """Drop an upload that cannot be resumed (best effort: COS expires stale parts)."""
        if state.upload_id and not state.completed:
            try:
                self.uploads.abort_upload(state.key, state.upload_id)
            except StorageError as exc:
                log.warning("could not abort a stale upload", extra={"reason": str(exc)})

    # upload --------------------------------------------------------------------------
    def _begin(self, state: PagedState) -> None:
        # A finisher killed between starting an upload and saving its id left one behind.
        def abort_stale() -> None:
            for stale in self.uploads.open_uploads(self.key):
                self.uploads.abort_upload(self.key, stale)

        self._sink_call(abort_stale)
        state.upload_id = self._sink_call(lambda: self.uploads.begin_upload(self.key, self.content_type))
        state.crc64 = 0
        self._save(state, progress=False)
        log.info("paged copy started", extra={"collection": self.collection, "key": self.key})

    def _page(self, state: PagedState) -> None:
        buffer, buffered_rows, cursor = self._unpark(state)
        fetch = functools.partial(self.platform.fetch_page, self.collection)
        pacer = Pacer(PREFETCH_PAGES, deadline=self.deadline)
        read_any, following = False, cursor  # following: the cursor after the last page read
        idle = functools.partial(self._keep_lease, state)
        with _settled_heap(), _Prefetch(fetch, cursor, pacer, idle) as pages:
            try:
                for page in pages:
                    data, rows = self.platform.encode_page(page)
                    buffer += data
                    buffered_rows += rows
                    read_any, following = True, page.next_cursor
                    last = page.next_cursor is None
                    if len(buffer) >= self.part_size or last:
                        self._upload_part(state, bytes(buffer), buffered_rows, page.next_cursor,
                                          last)
                        buffer, buffered_rows = bytearray(), 0
                        if last:
                            return
                    self._keep_lease(state)
                    if self._spent():
                        self._park(state, bytes(buffer), buffered_rows, page.next_cursor)
                        log.info("time budget spent; the next invocation resumes the copy",
                                 extra={"rows_so_far": state.rows})
                        raise CopyPaused("time budget spent while paging")
            except RetryLater:  # the platform asks to wait past the budget, or for too long
                if read_any:
                    self._park_before_waiting(state, bytes(buffer), buffered_rows, following)
                raise

    def _park_before_waiting(self, state: PagedState, data: bytes, rows: int,
                             following: dict[str, Any] | None) -> None:
        """Keep the rows read, as at the end of the budget: else an invocation that ends
        waiting on the platform leaves them to be read again, and a table needing more
        than one invocation per part never moves on. Best effort: the wait is what the
        caller is told about."""
        try:
            self._park(state, data, rows, following)
        except Retryable as exc:
            log.warning("could not park the rows read; the next invocation reads them again",
                        extra={"reason": str(exc)})

    def _unpark(self, state: PagedState) -> tuple[bytearray, int, dict[str, Any] | None]:
        """Start from the parked rows, or read them again if their object is gone."""
        parked = state.parked
        if parked is None:
            return bytearray(), 0, state.cursor
        if parked.key != parked_key(self.key):  # never rows from some other object
            log.warning("parked rows recorded at another key; reading them from OneDB again",
                        extra={"parked_key": parked.key})
            return bytearray(), 0, parked.cursor
        try:
            data = self.ctx.objects.read(parked.key)
        except StorageError:
            data = b""
        if len(data) == parked.bytes and _md5(data) == parked.md5:
            return bytearray(data), parked.rows, state.cursor
        log.warning("parked rows are missing or damaged; reading them from OneDB again")
        return bytearray(), 0, parked.cursor

    def _park(self, state: PagedState, data: bytes, rows: int,
              following: dict[str, Any] | None) -> None:
        if not data:  # every row read is in a part: only the cursor moves on
            state.parked, state.cursor = None, following
            self._save(state)
            return
        before = state.parked.cursor if state.parked else state.cursor
        side = parked_key(self.key)
        self._sink_call(lambda: self.ctx.objects.put_stream(
            side, [data], content_type="application/octet-stream"))
        state.parked = Parked(key=side, bytes=len(data), rows=rows, md5=_md5(data),
                              cursor=before)
        state.cursor = following
        self._save(state)

    def _upload_part(self, state: PagedState, data: bytes, rows: int,
                     following: dict[str, Any] | None, last: bool) -> None:
        if not data and state.parts:  # nothing after the last part: no empty part
            state.exhausted, state.cursor, state.parked = True, None, None
            self._save(state)
            return
        number = len(state.parts) + 1
        if number > MAX_PARTS:
            raise Fatal(f"table {self.collection!r} needs more than {MAX_PARTS} parts; raise "
                        "destination.part_size_mb")
        assert state.upload_id is not None
        upload_id = state.upload_id
        try:
            etag = self.uploads.upload_part(self.key, upload_id, number, data)
        except StorageError as exc:
            self._restart_if_gone(state)
            raise Retryable(str(exc)) from None
        state.parts.append(SavedPart(number=number, etag=etag, bytes=len(data), rows=rows,
                                     md5=_md5(data)))
        if state.crc64 is not None:
            state.crc64 = crc64(data, state.crc64)
        state.cursor, state.exhausted, state.parked = following, last, None
        self._save(state)
        log.info("part uploaded", extra={"part": number, "rows_so_far": state.rows})

    def _complete(self, state: PagedState) -> None:
        assert state.upload_id is not None
        parts = [(p.number, p.etag) for p in state.parts]
        try:
            self.uploads.complete_upload(self.key, state.upload_id, parts)
        except StorageError as exc:
            if exc.code != "NoSuchUpload":
                raise Retryable(str(exc)) from None
            # Completed by a finisher killed before it could say so, or gone for good.
            stored = self._sink_call(lambda: self.ctx.objects.head(self.key))
            if stored is None or stored.size != state.bytes:
                self._restart(state, "the multipart upload is gone before it was completed")
        state.completed = True
        self._save(state)

    def _restart_if_gone(self, state: PagedState) -> None:
        """A part refused because its upload no longer exists (aborted while the copy was
        paused: the bucket's lifecycle rule for stale parts, or by hand) would be refused
        on every try: start over. Asked of the bucket's list of unfinished uploads, not
        read from the error, whose code differs between COS (NoSuchUpload) and others."""
        open_ids = self._sink_call(lambda: self.uploads.open_uploads(self.key))
        if state.upload_id not in open_ids:
            self._restart(state, "the multipart upload is gone before it was completed")

    def _restart(self, state: PagedState, why: str) -> None:
        fresh = PagedState(key=self.key, steps=state.steps + 1, steps_at_claim=state.steps + 1)
        self.hold.checkpoint(checkpoint={**(self.hold.job.checkpoint or {}),
                                         PAGED_CHECKPOINT: fresh.model_dump(mode="json")},
                             progress_records=0)
        raise Retryable(f"{why}; the copy of {self.collection!r} starts over")

    # verify ---------------------------------------------------------------------------
    def _verify(self, state: PagedState) -> StoredObject:
        """Read the object back: bytes, rows and each part's MD5 must be what was sent."""
        sha256 = hashlib.sha256()
        read_crc = Crc64()
        counter = JsonLinesCounter()
        parts = iter(state.parts)
        current = next(parts, None)
        left = current.bytes if current else 0
        md5 = hashlib.md5(usedforsecurity=False)
        bad_parts: list[int] = []
        total = 0
        try:
            for chunk in self.ctx.objects.iter_read(self.key, READ_CHUNK):
                sha256.update(chunk)
                read_crc.update(chunk)
                counter.feed(chunk)
                total += len(chunk)
                view = memoryview(chunk)
                while view and current is not None:
                    take = view[:left]
                    md5.update(take)
                    view, left = view[len(take):], left - len(take)
                    if left == 0:
                        if md5.hexdigest() != current.md5:
                            bad_parts.append(current.number)
                        current = next(parts, None)
                        left = current.bytes if current else 0
                        md5 = hashlib.md5(usedforsecurity=False)
        except StorageError as exc:
            raise Retryable(str(exc)) from None
        problems = []
        if total != state.bytes:
            problems.append(f"{total} bytes instead of {state.bytes}")
        if counter.total != state.rows:
            problems.append(f"{counter.total} rows instead of {state.rows}")
        if bad_parts:
            problems.append(f"parts {bad_parts} differ from what was uploaded")
        if state.crc64 is not None and read_crc.crc != state.crc64:
            problems.append(f"CRC64 {read_crc.value} instead of {state.crc64} (what was sent)")
        stored = self._sink_call(lambda: self.ctx.objects.head(self.key))
        if stored is not None and stored.crc64 is not None and stored.crc64 != read_crc.value:
            problems.append(f"a CRC64 of {stored.crc64} by COS's account, but {read_crc.value} "
                            "as read back")
        if problems:
            self._sink_call(lambda: self.ctx.objects.delete(self.key))
            raise VerificationFailed(
                f"the stored copy of {self.collection!r} holds {', '.join(problems)}; it was deleted"
            )
        try:  # parked rows, perhaps left by a finisher killed before saving them
            self.ctx.objects.delete(parked_key(self.key))
        except StorageError as exc:
            log.warning("could not delete parked rows", extra={"reason": str(exc)})
        return StoredObject(key=self.key, bytes=total, sha256=sha256.hexdigest(),
                            records=counter.total, upload_parts=len(state.parts),
                            crc64=read_crc.value)

    @staticmethod
    def _sink_call(call: Callable[[], Any]) -> Any:
        """COS trouble is transient for the service: the copy resumes from its checkpoint."""
        try:
            return call()
        except StorageError as exc:
            raise Retryable(str(exc)) from None


def _md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


class _Prefetch:
    """Reads pages in a thread of its own, at most `pacer.depth` pages ahead of the reader;
    a page refused for a rate limit is asked again in place after the pacer's wait (see
    shared/service/pacing.py); the fetcher's error is raised in the reader's thread, in
    order. While the reader waits for a page, it calls `idle` every IDLE_TICK seconds."""

    def __init__(self, fetch: Callable[[dict[str, Any] | None], Page],
                 cursor: dict[str, Any] | None, pacer: Pacer,
                 idle: Callable[[], None] = lambda: None) -> None:
        self._fetch = fetch
        self._cursor = cursor
        self.pacer = pacer
        self._idle = idle
        self._queue: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=pacer.max_depth)
        self._stop = threading.Event()
        context = contextvars.copy_context()  # log lines keep the run and job ids
        self._thread = threading.Thread(target=context.run, args=(self._run,),
                                        name="paged-prefetch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        cursor = self._cursor
        try:
            while not self._stop.is_set():
                page = self._paced_fetch(cursor)
                if page is None or not self._put(("page", page)) or page.next_cursor is None:
                    return
                cursor = page.next_cursor
        except BackupError as exc:
            self._put(("error", exc))
        except Exception as exc:
            self._put(("error", Retryable(f"reading pages failed: {type(exc).__name__}: {exc}")))

    def _paced_fetch(self, cursor: dict[str, Any] | None) -> Page | None:
        """One page, asked again in place while the platform says "too many calls";
        None when stopped meanwhile."""
        while not self._stop.is_set():
            while self._queue.qsize() >= self.pacer.depth:  # read-ahead shrunk: wait
                if self._stop.wait(0.01):
                    return None
            self.pacer.wait_turn(self._stop)
            try:
                page = self._fetch(cursor)
            except RateLimited as exc:
                wait = self.pacer.refused(exc)  # raises once the refusal persists
                log.info("platform rate limit; asking for the page again",
                         extra={"wait_seconds": round(wait, 3), "read_ahead": self.pacer.depth})
                self._stop.wait(wait)
                continue
            self.pacer.accepted()
            return page
        return None

    def _put(self, item: tuple[str, Any]) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _next(self) -> tuple[str, Any]:
        while True:
            try:
                return self._queue.get(timeout=IDLE_TICK)
            except queue.Empty:
                self._idle()  # a page slower than the lease must not cost the lease

    def __iter__(self) -> Iterator[Page]:
        while True:
            kind, value = self._next()
            if kind == "error":
                raise value
            yield value
            if value.next_cursor is None:
                return

    def __enter__(self) -> _Prefetch:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=120)  # a call under way ends within the HTTP timeout


@contextlib.contextmanager
def _settled_heap() -> Iterator[None]:
    """Keep the cyclic GC off everything that existed before paging began (modules,
    clients, config): each page makes some 15,000 dicts, and the full collections they
    trigger would otherwise walk the whole heap again and again, stalling the reads."""
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()
