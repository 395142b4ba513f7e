"""The state table as objects in the backup bucket: nothing more to run on SCF.

Concurrency control without a database (the full argument is in docs/state-on-cos.md):
every write that must not be lost to a race is a *create-only* PUT (`If-None-Match: *` plus
`x-cos-forbid-overwrite: true`), which exactly one writer wins.

- A record (run or job) is a folder of immutable versions `v0000000000.json`, `...01.json`;
  the highest number is the record. Saving version N+1 is a create-only PUT of that key, so
  compare-and-set on `version` holds: two writers holding version N cannot both win.
- A run's idempotency key is claimed by a create-only object holding the run and its jobs.
  That claim is the commit point, preceded by the run's open-runs entry so the poller can
  find it; writing the records and index entries afterwards is a replay anyone may finish
  (a retried trigger, or the poller healing a crashed one).
- Index entries (`open-runs/`, `open-jobs/`, `run-jobs/`) keep the poller from reading
  every record ever written; they are hints, written before the records and removed after
  a record ends, and whoever reads a finished record through one deletes the stale hint.
  `restores/` names every restore run the same way (written before its record, deleted
  after it), so listing restores reads no backup run.
- Two days after a run closes, its records are pruned to their last two versions.
- Versions are never rewritten, so one a store created or read (up to 8 MB of them, by the
  ETag the listing shows) is not fetched again.

The store proves once per process that the bucket refuses a second create-only PUT, and
refuses to work otherwise: a bucket that silently overwrites would break every guarantee.
The proof is a create-only PUT of `_state/create-only.json`, which stays: refused, it took
one request.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any, Generic, TypeVar
from urllib.parse import quote, unquote

from qcloud_cos import CosS3Client
from qcloud_cos.cos_exception import CosClientError, CosServiceError

from shared.adapters.cos.client import ADVICE, UNREACHED, _error_details, cos_client
from shared.config import Destination
from shared.domain.errors import StateError
from shared.domain.jobs import Job, Run, RunStatus, utcnow

log = logging.getLogger(__name__)

PRUNE_AFTER = timedelta(days=2)  # longer than any SCF invocation can hold a version it read
_VERSION = re.compile(r"/v(\d{10})\.json$")
_REFUSED = (409, 412)  # x-cos-forbid-overwrite answers 409; If-None-Match answers 412
_READERS = 8  # parallel GETs when one call reads many records
# A run's snapshot is read whole: 2,000 done jobs are about 2.6 MB of JSON and 18 MB at
# the peak of parsing them, well within a 256 MB poller even with long errors in every
# job; a larger run's jobs are read one by one.
_SNAPSHOT_JOBS = 2000
_CREATE_TRIES = 5
_PRUNE_KEEPS = 2  # versions a prune leaves: the head and the one the ghost check looks for
_DELETE_ROUNDS = 5  # listings of a deleted record that may still find a save's version
_KEPT = 64  # runs a store remembers seeing a record of
# Versions a store remembers (read or written), by their JSON's size: a job's is about 1 kB,
# so a warm poller keeps every running job of a few thousand, well within a 256 MB function.
_REMEMBERED_BYTES = 8 * 1024 * 1024
_INDEXES_KEPT = 8  # runs' indexes kept from run_has_open_jobs for the list_jobs after it
# Written once every restore recorded before `restores/` existed has its entry there.
_RESTORES_INDEXED = "restores-indexed.json"

T = TypeVar("T")
R = TypeVar("R")
K = TypeVar("K")

_verified: set[tuple[str, str, str]] = set()  # (endpoint, bucket, root) proven to refuse overwrites
_verified_lock = threading.Lock()


def _segment(ident: str) -> str:
    """An id as one key segment, whatever characters it holds."""
    return quote(ident, safe="-_.~")


def _versions_by_record(keys: list[str]) -> dict[str, list[int]]:
    """Version keys (`<record>v0000000007.json`) as each record's version numbers, sorted."""
    found: dict[str, list[int]] = {}
    for key in keys:
        if match := _VERSION.search(key):
            found.setdefault(key[:match.start() + 1], []).append(int(match.group(1)))
    return {record: sorted(numbers) for record, numbers in found.items()}


def _abandoned(marker: dict[str, Any], intent: dict[str, Any] | None) -> bool:
    """Whether an open-runs hint whose run has no record points at no run to finish: its
    claim holds another trigger's run, or it has none long after any trigger that wrote the
    hint can still be claiming. A hint without `at` was written after its claim (by
    _materialize, or before hints went first), so a missing claim is gone for good."""
    if intent is not None:
        return True
    written = marker.get("at")
    return written is None or utcnow() - datetime.fromisoformat(written) > PRUNE_AFTER


class _Recent(Generic[K, T]):
    """The last `size` values put, by key, for a store's threads to share."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._items: OrderedDict[K, T] = OrderedDict()
        self._lock = threading.Lock()

    def put(self, key: K, value: T) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self._size:
                self._items.popitem(last=False)

    def get(self, key: K) -> T | None:
        with self._lock:
            return self._items.get(key)

    def pop(self, key: K) -> T | None:
        with self._lock:
            return self._items.pop(key, None)


class _Versions:
    """The versions a store has read or written, as the listing names them (key and ETag),
    least recently used first out once their JSON passes `limit` bytes; for its threads
    to share. Only the very object remembered answers: an ETag "identifies the object
    content upon creation, and can be used to check whether the object content is changed"
    (COS common response headers, https://www.tencentcloud.com/document/product/436/7729),
    and every version holds a fresh writer token, so a version deleted and written again
    under its key has another ETag."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._size = 0
        self._items: OrderedDict[str, tuple[str, bytes]] = OrderedDict()
        self._lock = threading.Lock()

    def put(self, key: str, etag: str, body: bytes) -> None:
        with self._lock:
            self._drop(key)
            if len(body) > self._limit:
                return
            self._items[key] = (etag, body)
            self._size += len(body)
            while self._size > self._limit:
                self._drop(next(iter(self._items)))

    def get(self, key: str, etag: str) -> bytes | None:
        with self._lock:
            kept = self._items.get(key)
            if kept is None or kept[0] != etag:
                return None
            self._items.move_to_end(key)
            return kept[1]

    def forget(self, key: str) -> None:
        with self._lock:
            self._drop(key)

    def remembered(self) -> list[str]:
        with self._lock:
            return list(self._items)

    def _drop(self, key: str) -> None:
        kept = self._items.pop(key, None)
        if kept is not None:
            self._size -= len(kept[1])


def _etag(headers: Mapping[str, Any]) -> str | None:
    """An answer's ETag, unquoted as a listing's is compared (header names vary in case)."""
    for name, value in headers.items():
        if name.lower() == "etag" and value:
            return str(value).strip('"')
    return None


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class CosStateStore:
    """StateStore over objects under `<destination.prefix>/_state/` in the destination bucket."""

    def __init__(self, destination: Destination, environ: Mapping[str, str] | None = None,
                 *, verify: bool = True, client: CosS3Client | None = None) -> None:
        self._client = client or cos_client(destination, environ)
        self._bucket = destination.bucket
        self._root = f"{destination.prefix}/_state/" if destination.prefix else "_state/"
        self._encryption: dict[str, str] = (
            {"ServerSideEncryption": destination.server_side_encryption}
            if destination.server_side_encryption
            else {}
        )
        self._endpoint = destination.endpoint or destination.region
        # Versions this store created or read: a version is never rewritten, and every
        # read of one follows a listing that still shows it (with its ETag), so it is taken
        # from here, not fetched again (a finisher closing its run reads the job it just
        # saved; a warm poller's next tick reads only the jobs that changed).
        self._memory = _Versions(_REMEMBERED_BYTES)
        # Runs a record of which this store has seen: every creator writes a run's whole
        # index before any record, so an index listed after that is whole (until deleted).
        self._seen_runs: _Recent[str, bool] = _Recent(_KEPT)
        # Such whole indexes, as run_has_open_jobs found them with no job open, for the
        # list_jobs closing the run makes next (once): the index is not listed twice.
        self._indexes: _Recent[str, list[str]] = _Recent(_INDEXES_KEPT)
        self._restores_indexed = False  # seen _RESTORES_INDEXED: never looked for again
        if verify:  # `doctor` opens the store unverified and runs the probe itself
            self.check_create_only()

    def __repr__(self) -> str:
        return f"CosStateStore(bucket={self._bucket!r}, root={self._root!r})"

    # runs -----------------------------------------------------------------
    def create_run(self, run: Run, jobs: list[Job]) -> tuple[Run, bool]:
        claim = f"{self._root}claims/{_digest(run.idempotency_key)}.json"
        intent: dict[str, Any] = {
            "idempotency_key": run.idempotency_key,
            "run": run.model_dump(mode="json"),
            "jobs": [job.model_dump(mode="json") for job in jobs],
        }
        # The open-runs hint goes before the claim: a trigger killed right after claiming
        # has then left the poller a pointer to the claim, which it finishes (_open_run).
        marker = self._open_marker(run.run_id)
        if run.status is RunStatus.RUNNING:
            self._put_json(marker, {"claim": claim, "at": utcnow().isoformat()})
        won = self._create_json(claim, intent)
        if not won:
            stored_intent = self._get_json(claim)
            if stored_intent is None:
                raise StateError(f"COS state: claim {claim!r} was refused but cannot be read")
            intent = stored_intent
        run_id = str(intent["run"]["run_id"])
        if run_id != run.run_id:
            self._delete(marker)  # another trigger's claim: our hint points at no run of ours
        self._materialize(claim, intent)
        stored = self.get_run(run_id)
        if stored is None:
            raise StateError(f"COS state: run {run_id!r} unreadable right after it was written")
        if won:
            self.prune(utcnow())
        return stored, won

    def get_run(self, run_id: str) -> Run | None:
        doc = self._latest(self._record("runs", run_id))
        if doc is None:
            return None
        self._seen_runs.put(run_id, True)
        return Run.model_validate(doc)

    def find_run(self, idempotency_key: str) -> Run | None:
        claim = f"{self._root}claims/{_digest(idempotency_key)}.json"
        intent = self._get_json(claim)
        if intent is None:
            return None
        run_id = str(intent["run"]["run_id"])
        run = self.get_run(run_id)
        if run is None:  # claimed by a creator that died before writing it: finish it
            self._materialize(claim, intent)
            run = self.get_run(run_id)
        return run

    def list_runs(self, limit: int = 20, before: str | None = None) -> list[Run]:
        base = f"{self._root}runs/"
        _, folders = self._list(base, delimiter="/")
        ids = sorted((unquote(f[len(base):].rstrip("/")) for f in folders), reverse=True)
        if before:
            ids = [i for i in ids if i < before]
        return [r for r in self._map(self.get_run, ids[:limit]) if r is not None]

    def list_restores(self, limit: int = 20, before: str | None = None) -> list[Run]:
        """The `restores/` index listed (about a page per thousand restores), and only the
        runs it names read: the backups between restores cost nothing. An entry with no
        run (one being created, or deleted) is passed over."""
        self._index_earlier_restores()
        ids = sorted(self._names(self._restore_marker("")), reverse=True)
        if before:
            ids = [i for i in ids if i < before]
        found: list[Run] = []
        while ids and len(found) < limit:
            batch, ids = ids[:limit - len(found)], ids[limit - len(found):]
            found += [r for r in self._map(self.get_run, batch)
                      if r is not None and r.operation == "restore"]
        return found

    def _index_earlier_restores(self) -> None:
        """Give every restore recorded before the `restores/` index existed its entry: once
        per bucket, reading every run, then _RESTORES_INDEXED says it is done. Restores
        recorded since have theirs from _materialize; two stores doing this at once write
        the same entries."""
        if self._restores_indexed:
            return
        done = self._root + _RESTORES_INDEXED
        if not self._exists(done):
            base = f"{self._root}runs/"
            _, folders = self._list(base, delimiter="/")
            runs = self._map(self.get_run, [unquote(f[len(base):].rstrip("/")) for f in folders])
            self._map(lambda run: self._put_json(self._restore_marker(run.run_id), {}),
                      [r for r in runs if r is not None and r.operation == "restore"])
            self._put_json(done, {"at": utcnow().isoformat()})
        self._restores_indexed = True

    def open_runs(self) -> list[Run]:
        found = self._map(self._open_run, self._names(f"{self._root}open-runs/"))
        return [r for r in found if r is not None]

    def save_run(self, run: Run) -> Run | None:
        stored = run.model_copy(update={"version": run.version + 1})
        if not self._compare_and_set(self._record("runs", run.run_id), run.version, stored):
            return None
        if stored.status is not RunStatus.RUNNING:
            self._put_json(f"{self._root}closed/{_segment(run.run_id)}",
                           {"finished_at": utcnow().isoformat()})
            self._delete(self._open_marker(run.run_id))
        return stored

    # jobs -----------------------------------------------------------------
    def get_job(self, job_id: str) -> Job | None:
        doc = self._latest(self._record("jobs", job_id))
        if doc is None:
            return None
        job = Job.model_validate(doc)
        self._seen_runs.put(job.run_id, True)
        return job

    def list_jobs(self, run_id: str, *, skip: Collection[str] = ()) -> list[Job]:
        """The run's index, and beside it one listing of every version of the jobs whose
        ids start with the run's (`job_id_for`'s ids all do): a page holds a thousand
        keys, where a listing per job took a request each. A job that listing missed is
        looked up on its own. With `skip`, the index is listed first, and when no more
        jobs are left than one round of readers, each is looked up on its own instead
        (two requests apiece, not every version of the run).

        A run of more jobs than that (up to `_SNAPSHOT_JOBS`) keeps a snapshot of them once
        they have all ended (`_state/snapshots/<run_id>.json`): a job whose listed highest
        version is the snapshot's is taken from it, not read. Versions are never
        rewritten, so a taken job is the one a read would have returned; a job saved since
        (acknowledged, pruned) is read, and the snapshot written again when many were."""
        index = self._run_jobs(run_id)
        every = f"{self._root}jobs/{_segment(run_id)}."
        versions: dict[str, list[int]] = {}
        etags: dict[str, str] = {}
        whole = None if skip else self._indexes.pop(run_id)
        if skip:
            left_out = frozenset(skip)
            ids = [i for i in self._names(index) if i not in left_out]
            if len(ids) > _READERS:
                versions = _versions_by_record(self._list(every, etags=etags)[0])
        elif whole is not None:
            ids, versions = whole, _versions_by_record(self._list(every, etags=etags)[0])
        else:
            with ThreadPoolExecutor(max_workers=1) as side:
                listed = side.submit(self._list, every, "", etags)
                ids = self._names(index)
                versions = _versions_by_record(listed.result()[0])
        snapshotted = bool(versions) and _READERS < len(ids) <= _SNAPSHOT_JOBS
        snapshot = self._snapshot(run_id) if snapshotted else {}
        records = {job_id: self._record("jobs", job_id) for job_id in ids}
        taken = {}
        for job_id in ids:
            kept, numbers = snapshot.get(job_id), versions.get(records[job_id])
            if kept is not None and numbers and kept[0] == numbers[-1]:
                taken[job_id] = kept
        afresh = [job_id for job_id in ids if job_id not in taken]
        found = [*taken.values(), *filter(None, self._map(
            lambda job_id: self._newest(records[job_id], versions.get(records[job_id]), etags),
            afresh))]
        jobs = sorted((Job.model_validate(doc) for _, doc in found), key=lambda j: j.job_id)
        if (snapshotted and not skip and len(afresh) > _READERS and len(jobs) == len(ids)
                and all(j.status.terminal for j in jobs)):
            self._save_snapshot(run_id, found)
        return jobs

    def _snapshot(self, run_id: str) -> dict[str, tuple[int, dict[str, Any]]]:
        """The run's snapshot: each job's version number and document, by job id; empty
        when there is none or it is not readable (then every job is read, as without one)."""
        doc = self._get_json(self._snapshot_key(run_id))
        try:
            if doc is not None and doc["format"] == 1:
                return {entry["doc"]["job_id"]: (int(entry["version"]), entry["doc"])
                        for entry in doc["jobs"]}
        except (KeyError, TypeError, ValueError):
            log.warning("COS state: a run's snapshot is unreadable; its jobs are read instead",
                        extra={"run_id": run_id})
        return {}

    def _save_snapshot(self, run_id: str, jobs: list[tuple[int, dict[str, Any]]]) -> None:
        try:
            self._put_json(self._snapshot_key(run_id), {"format": 1, "jobs": [
                {"version": number, "doc": doc} for number, doc in jobs]})
        except StateError as exc:  # only a saving missed: the next full read writes it
            log.warning("COS state: could not save a run's snapshot",
                        extra={"run_id": run_id, "reason": str(exc)})

    def _snapshot_key(self, run_id: str) -> str:
        return f"{self._root}snapshots/{_segment(run_id)}.json"

    def run_has_open_jobs(self, run_id: str) -> bool:
        """Only the run's jobs that still have an open-jobs hint are read (two listings
        and, while the run is busy, usually one record): a hint is written before its job
        and removed only after the job ends, so a job without one has ended."""
        whole = self._seen_runs.get(run_id) is not None  # asked before the index is listed
        hinted, of_run = self._map(self._names, [self._hint(""), self._run_jobs(run_id)])
        for job_id in sorted(set(hinted) & set(of_run)):
            job = self.get_job(job_id)
            if job is None or not job.status.terminal:  # None: being written right now
                return True
            self._delete(self._hint(job_id))  # a stale hint: the job ended
        if whole and len(of_run) <= _SNAPSHOT_JOBS:
            self._indexes.put(run_id, of_run)
        return False

    def due_jobs(self, now: datetime, limit: int = 100) -> list[Job]:
        ids = self._names(self._hint(""))
        due = []
        for job_id, job in zip(ids, self._map(self.get_job, ids), strict=True):
            if job is None:
                continue  # its run is being written right now
            if job.status.terminal:
                self._delete(self._hint(job_id))  # a stale hint: the job ended
            elif job.next_check_at <= now:
                due.append(job)
        return sorted(due, key=lambda j: j.next_check_at)[:limit]

    def save_job(self, job: Job) -> Job | None:
        stored = job.model_copy(update={"version": job.version + 1, "updated_at": utcnow()})
        if not self._compare_and_set(self._record("jobs", job.job_id), job.version, stored):
            return None
        self._seen_runs.put(job.run_id, True)
        if stored.status.terminal:
            self._delete(self._hint(job.job_id))
        return stored

    def delete_run(self, run_id: str) -> None:
        """Its jobs' snapshot and jobs first, then their index entries and the open-jobs
        hints of those that had not ended, then the run, then its markers and its claim: a
        run still listed may have lost jobs already, never the reverse. Like a deleted SQL
        row, the idempotency key is free again afterwards, and nothing of the run is left
        for a save racing the delete to bring back (see _delete_record)."""
        run = self.get_run(run_id)
        self._indexes.pop(run_id)
        self._delete(self._snapshot_key(run_id))
        index = self._run_jobs(run_id)
        job_ids = self._names(index)
        self._map(self._delete_record, [self._record("jobs", j) for j in job_ids])
        # A hint goes after its record, as when a job ends: a delete cut short leaves every
        # job it did not delete in the poller's sight. Left, a hint would cost every poll a
        # listing of its gone record, for ever; listed once, only the ones left are deleted.
        of_run = frozenset(job_ids)
        hinted = [j for j in self._names(self._hint("")) if j in of_run]
        self._map(self._delete, [self._hint(j) for j in hinted] + [index + _segment(j) for j in job_ids])
        self._delete_record(self._record("runs", run_id))
        for marker in ("closed", "open-runs", "restores"):
            self._delete(f"{self._root}{marker}/{_segment(run_id)}")
        if run is not None:
            self._delete(f"{self._root}claims/{_digest(run.idempotency_key)}.json")

    def _delete_record(self, record: str) -> None:
        """Every version, oldest first as pruning does, listed again until none is left: a
        save whose version N+1 landed after a listing, while N was still there, was told it
        won, and its version is deleted in the next round, as a SQL delete deletes a save
        committed before it. A save landing once N is gone is a ghost and drops itself."""
        for round_ in range(_DELETE_ROUNDS + 1):
            numbers = self._versions(record)
            if not numbers:
                return
            if round_ == _DELETE_ROUNDS:
                break
            for number in numbers:
                self._delete(self._version_key(record, number))
        raise StateError(f"COS state: {record!r} kept being written while it was deleted; "
                         "deleting it again finishes the job (retention tries at its next run)")

    # token cache ------------------------------------------------------------
    def cache_get(self, key: str, now: datetime) -> str | None:
        doc = self._get_json(self._cache_key(key))
        if doc is None or datetime.fromisoformat(doc["expires_at"]) <= now:
            return None
        return str(doc["value"])

    def cache_put(self, key: str, value: str, expires_at: datetime) -> None:
        self._put_json(self._cache_key(key), {"value": value, "expires_at": expires_at.isoformat()})

    def cache_delete(self, key: str) -> None:
        self._delete(self._cache_key(key))

    def cache_claim(self, key: str, value: str, expires_at: datetime, now: datetime) -> bool:
        """A create-only PUT, which exactly one writer wins. An expired entry is deleted and
        the PUT made once more; two claims meeting the same expired entry may then both
        delete, so keys claimed this way should outlive their use (the alarm's: years)."""
        document = {"value": value, "expires_at": expires_at.isoformat()}
        cache_key = self._cache_key(key)
        if self._create_json(cache_key, document):
            return True
        if self.cache_get(key, now) is not None:
            return False
        self._delete(cache_key)
        return self._create_json(cache_key, document)

    # pruning ---------------------------------------------------------------
    def prune(self, now: datetime) -> int:
        """Cut the records of runs closed more than PRUNE_AFTER ago down to their last two
        versions; the number of runs pruned."""
        base = f"{self._root}closed/"
        pruned = 0
        for run_id in self._names(base):
            marker = self._get_json(base + _segment(run_id))
            if marker is None or now - datetime.fromisoformat(marker["finished_at"]) < PRUNE_AFTER:
                continue
            job_ids = self._names(self._run_jobs(run_id))
            records = [self._record("runs", run_id)] + [self._record("jobs", j) for j in job_ids]
            self._map(self._prune_record, records)
            self._delete(base + _segment(run_id))
            pruned += 1
        return pruned

    def _prune_record(self, record: str) -> None:
        # Oldest first: the ghost check in _compare_and_set relies on version N being gone
        # before N+1 is. The two newest stay: a writer that has just put version N+1 on
        # head N checks for N next, and a prune listing N+1 must not take N from under it.
        for number in self._versions(record)[:-_PRUNE_KEEPS]:
            self._delete(self._version_key(record, number))

    # records ---------------------------------------------------------------
    def _run_jobs(self, run_id: str) -> str:
        """The prefix of a run's index of its jobs (an entry per job id)."""
        return f"{self._root}run-jobs/{_segment(run_id)}/"

    def _hint(self, job_id: str) -> str:
        """The open-jobs hint of a job (of none: the index's prefix)."""
        return f"{self._root}open-jobs/{_segment(job_id)}"

    def _record(self, kind: str, ident: str) -> str:
        return f"{self._root}{kind}/{_segment(ident)}/"

    @staticmethod
    def _version_key(record: str, number: int) -> str:
        return f"{record}v{number:010d}.json"

    def _versions(self, record: str) -> list[int]:
        return self._listed(record)[0]

    def _listed(self, record: str) -> tuple[list[int], dict[str, str]]:
        """The record's version numbers, and the ETag of each version key."""
        etags: dict[str, str] = {}
        return _versions_by_record(self._list(record, etags=etags)[0]).get(record, []), etags

    def _latest(self, record: str) -> dict[str, Any] | None:
        """The newest version's document."""
        newest = self._newest(record)
        return newest[1] if newest is not None else None

    def _newest(self, record: str, versions: list[int] | None = None,
                etags: Mapping[str, str] | None = None) -> tuple[int, dict[str, Any]] | None:
        """The newest version's number and document (`versions` and their `etags`: the
        record's, listed already)."""
        if versions is None:
            versions, etags = self._listed(record)
        for number in reversed(versions):
            key = self._version_key(record, number)
            stored = self._read_version(key, (etags or {}).get(key))
            if stored is not None:  # else deleted since the listing (a ghost): look lower
                return number, stored["doc"]
        return None

    def _read_version(self, key: str, etag: str | None) -> dict[str, Any] | None:
        """A version the listing showed with `etag`: from memory when this store has that
        very object, else fetched (and remembered)."""
        known = self._memory.get(key, etag) if etag else None
        if known is not None:
            return dict(json.loads(known))
        fetched = self._download(key)
        if fetched is None:
            return None
        body, tag = fetched
        document = self._parse(key, body)
        if tag:
            self._memory.put(key, tag, body)
        return document

    def _compare_and_set(self, record: str, version: int, stored: Run | Job) -> bool:
        """Write version+1 if nobody has; true when this call's write is the record now."""
        new_key = self._version_key(record, version + 1)
        if not self._create_json(new_key, {"doc": stored.model_dump(mode="json")}):
            return False  # somebody else wrote version+1: we lost the race
        # The key was free. It is also free when the record never existed, was deleted, or
        # when pruning removed it (and, before it, version N): then this write is a ghost.
        # Version N still being there rules all three out.
        if self._exists(self._version_key(record, version)):
            return True
        self._memory.forget(new_key)  # not the record's: never to be read as ours
        self._drop_ghost(record, version + 1)
        return False

    def _drop_ghost(self, record: str, number: int) -> None:
        """Delete version `number`, whose base is gone, unless the version above it exists:
        a prune keeps two versions, so it takes the base only once it also listed a version
        written on top of ours, whose own ghost check needs ours. Kept, ours is never read
        (the record's head is higher) and is at worst a ghost left below that head."""
        if number + 1 not in self._versions(record):
            self._delete(self._version_key(record, number))

    def _materialize(self, claim: str, intent: dict[str, Any]) -> None:
        """Write what a claim promises; safe to repeat, by anyone, at any time."""
        run = Run.model_validate(intent["run"])
        jobs = [Job.model_validate(j) for j in intent["jobs"]]

        def index(job: Job) -> None:
            self._put_json(self._run_jobs(run.run_id) + _segment(job.job_id), {})
            if not job.status.terminal:
                self._put_json(self._hint(job.job_id), {})

        # Index entries first, so no record is ever out of the poller's sight.
        if run.status is RunStatus.RUNNING:
            self._put_json(self._open_marker(run.run_id), {"claim": claim})
        if run.operation == "restore":
            self._put_json(self._restore_marker(run.run_id), {})
        self._map(index, jobs)
        # Version 0, create-only: a replay leaves records that have moved on alone.
        self._map(lambda j: self._create_json(
            self._version_key(self._record("jobs", j.job_id), 0), {"doc": j.model_dump(mode="json")}
        ), jobs)
        self._create_json(self._version_key(self._record("runs", run.run_id), 0),
                          {"doc": run.model_dump(mode="json")})

    def _open_marker(self, run_id: str) -> str:
        return f"{self._root}open-runs/{_segment(run_id)}"

    def _restore_marker(self, run_id: str) -> str:
        """A restore run's entry in the `restores/` index (of none: the index's prefix)."""
        return f"{self._root}restores/{_segment(run_id)}"

    def _open_run(self, run_id: str) -> Run | None:
        marker_key = self._open_marker(run_id)
        run = self.get_run(run_id)
        if run is None:  # being created, or its creator died after the claim: finish it
            marker = self._get_json(marker_key)
            intent = self._get_json(marker["claim"]) if marker else None
            if marker is None:
                return None
            if intent is None or intent["run"]["run_id"] != run_id:
                if _abandoned(marker, intent):
                    self._delete(marker_key)
                return None
            log.info("finishing a run whose creation was cut short", extra={"run_id": run_id})
            self._materialize(marker["claim"], intent)
            run = self.get_run(run_id)
        if run is not None and run.status is not RunStatus.RUNNING:
            self._delete(marker_key)  # a stale hint: the run ended
            return None
        return run

    def _cache_key(self, key: str) -> str:
        return f"{self._root}cache/{_digest(key)}.json"

    def _names(self, prefix: str) -> list[str]:
        keys, _ = self._list(prefix)
        return [unquote(k[len(prefix):]) for k in keys if "/" not in k[len(prefix):]]

    def _map(self, fn: Callable[[T], R], items: list[T]) -> list[R]:
        if len(items) <= 1:
            return [fn(i) for i in items]
        with ThreadPoolExecutor(min(_READERS, len(items))) as pool:
            return list(pool.map(fn, items))

    # objects ---------------------------------------------------------------
    def check_create_only(self, *, again: bool = False) -> None:
        """Prove that this bucket refuses a second create-only PUT, once per process (or
        `again`, whatever this process proved before). The proof is a create-only PUT of a
        marker object that stays: refused, it is one request. When it is not (the first
        store ever, or a bucket that overwrites: never versioned, or versioned since), a
        second create-only PUT of it must be refused."""
        marker = (self._endpoint, self._bucket, self._root)
        with _verified_lock:
            if marker in _verified and not again:
                return
        probe = f"{self._root}create-only.json"
        if not self._refused(probe) and not self._refused(probe):
            raise StateError(
                f"COS bucket {self._bucket!r} let a create-only PUT (If-None-Match: *, "
                "x-cos-forbid-overwrite: true) overwrite an existing object, so the state "
                "store cannot tell which of two racing functions won. COS ignores "
                "x-cos-forbid-overwrite on a bucket whose versioning is enabled or suspended "
                "(once enabled, versioning can only be suspended, never turned off: "
                "https://cloud.tencent.com/document/product/436/19883). Use a bucket that "
                "never had versioning, or keep the state in MySQL: state.url: "
                "mysql+pymysql://..."
            )
        with _verified_lock:
            _verified.add(marker)

    def _refused(self, key: str) -> bool:
        """Whether a create-only PUT of `key` is refused. A refusal is all the probe asks
        for, so unlike _create_json it reads nothing back: whatever made the key taken (the
        marker of an earlier store, or an SDK resend of this very PUT), the bucket refused."""
        try:
            with self._errors("create-only upload", key):
                self._client.put_object(
                    Bucket=self._bucket, Key=key, Body=b'{"probe": "create-only"}',
                    ContentType="application/json", IfNoneMatch="*",
                    Metadata={"x-cos-forbid-overwrite": "true"}, **self._encryption)
        except _Refused:
            return True
        return False

    def versioning(self) -> str | None:
        """The bucket's versioning status (GetBucketVersioning): "Enabled", "Suspended", or
        None when it was never enabled: GET Bucket versioning returns no status for a bucket
        that never had it, and once enabled it can only be suspended, never switched off
        (cloud.tencent.com/document/api/436/19889). COS ignores x-cos-forbid-overwrite on a
        bucket that has had versioning (PUT Object, cloud.tencent.com/document/api/436/7749)."""
        try:
            with self._errors("read versioning of", self._bucket):
                answer = self._client.get_bucket_versioning(Bucket=self._bucket)
        except _Missing:
            return None
        status = answer.get("Status") if isinstance(answer, dict) else None
        if status in (None, ""):
            return None
        if status not in ("Enabled", "Suspended"):
            raise StateError(f"COS answered GetBucketVersioning of {self._bucket!r} with status "
                             f"{status!r}, not Enabled or Suspended; check the bucket's "
                             "versioning in the COS console")
        return str(status)

    def _create_json(self, key: str, document: dict[str, Any]) -> bool:
        """Create-only PUT; true if this call created the object. An SDK retry of our own
        successful PUT is refused too, so a refusal is checked against our writer token."""
        token = uuid.uuid4().hex
        body = json.dumps({**document, "writer": token}, ensure_ascii=False).encode("utf-8")
        for attempt in range(_CREATE_TRIES):
            try:
                with self._errors("create-only upload", key):
                    answer = self._client.put_object(
                        Bucket=self._bucket, Key=key, Body=body, ContentType="application/json",
                        IfNoneMatch="*", Metadata={"x-cos-forbid-overwrite": "true"},
                        **self._encryption,
                    )
                tag = _etag(answer) if isinstance(answer, Mapping) else None
                if tag and _VERSION.search(key):  # a record's version: never rewritten
                    self._memory.put(key, tag, body)
                return True
            except _Refused:
                existing = self._get_json(key)
            if existing is not None:
                return existing.get("writer") == token
            # Refused, yet nothing there: a conflicting write was in flight and failed. Again.
            time.sleep(0.05 * (attempt + 1))
        raise StateError(f"COS state: create-only upload of {key!r} kept conflicting")

    def _put_json(self, key: str, document: dict[str, Any]) -> None:
        body = json.dumps(document, ensure_ascii=False).encode("utf-8")
        with self._errors("upload", key):
            self._client.put_object(Bucket=self._bucket, Key=key, Body=body,
                                    ContentType="application/json", **self._encryption)

    def _get_json(self, key: str) -> dict[str, Any] | None:
        fetched = self._download(key)
        return None if fetched is None else self._parse(key, fetched[0])

    def _download(self, key: str) -> tuple[bytes, str | None] | None:
        """The object's body and ETag; None when there is no such object."""
        try:
            with self._errors("download", key):
                response = self._client.get_object(Bucket=self._bucket, Key=key)
                body = b"".join(response["Body"].get_stream(64 * 1024))
        except _Missing:
            return None
        return body, _etag(response)

    @staticmethod
    def _parse(key: str, body: bytes) -> dict[str, Any]:
        try:
            document: dict[str, Any] = json.loads(body)
        except ValueError:
            raise StateError(f"COS state object {key!r} is not JSON; was it cut off?") from None
        return document

    def _exists(self, key: str) -> bool:
        try:
            with self._errors("head", key):
                self._client.head_object(Bucket=self._bucket, Key=key)
        except _Missing:
            return False
        return True

    def _delete(self, key: str) -> None:
        try:
            with self._errors("delete", key):
                self._client.delete_object(Bucket=self._bucket, Key=key)
        except _Missing:
            pass
        finally:  # every deleted version goes through here: none is answered from memory
            self._memory.forget(key)

    def _list(self, prefix: str, delimiter: str = "",
              etags: dict[str, str] | None = None) -> tuple[list[str], list[str]]:
        """Every key and common prefix under `prefix`, across pages; with `etags`, each
        key's ETag is put there too."""
        keys: list[str] = []
        folders: list[str] = []
        marker = ""
        while True:
            with self._errors("list", prefix):
                page = self._client.list_objects(Bucket=self._bucket, Prefix=prefix,
                                                 Delimiter=delimiter, Marker=marker, MaxKeys=1000)
            for content in page.get("Contents", []):
                keys.append(content["Key"])
                if etags is not None and (tag := _etag(content)):
                    etags[content["Key"]] = tag
            folders.extend(p["Prefix"] for p in page.get("CommonPrefixes", []))
            if page.get("IsTruncated") != "true":
                return keys, folders
            marker = page.get("NextMarker") or max(keys[-1:] + folders[-1:])

    @contextmanager
    def _errors(self, action: str, key: str) -> Iterator[None]:
        """SDK errors as StateError naming the key and COS code, never a signature;
        404 and create-only refusals as the private signals the callers handle."""
        try:
            yield
        except CosServiceError as exc:
            status = int(exc.get_status_code())
            code, _ = _error_details(exc)  # the SDK's own getter fails on partial answers
            if status == 404 and code != "NoSuchBucket":  # a missing bucket is no missing object
                raise _Missing from None
            if status in _REFUSED and action == "create-only upload":
                raise _Refused from None
            advice = (_STATE_ACCESS if (status == 403 and code not in ADVICE) or code == "AccessDenied"
                      else ADVICE.get(code, ""))
            raise StateError(
                f"COS {action} of {key!r} in {self._bucket!r} failed: HTTP {status} {code}"
                + (f": {advice}" if advice else "")) from None
        except CosClientError as exc:
            raise StateError(f"COS {action} of {key!r} failed: {exc}; {UNREACHED}") from None


# What to check when the state cannot be read or written, beside cos_errors' ADVICE.
_STATE_ACCESS = ("check that the keys (destination.secret_id/secret_key, or the SCF role's) "
                 "may read and write <prefix>/_state/ in destination.bucket")


class _Missing(Exception):
    """404: no such object."""


class _Refused(Exception):
    """409/412 on a create-only PUT: the key is taken."""
