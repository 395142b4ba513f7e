"""In-memory fakes of the ports, for fast unit tests of the service layer. The contract
tests run the same suites against these and the real adapters (SQL/COS state, COS on
moto), so a fake cannot drift from what it stands for."""

from __future__ import annotations

import hashlib
import itertools
import json
import threading
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from shared.domain.errors import StorageError
from shared.domain.jobs import Job, Run, RunStatus
from shared.ports import MIB, ObjectInfo, StreamSummary


class MemoryState:
    """The `StateStore` port in a dict, with the same compare-and-set rules."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.runs: dict[str, Run] = {}
        self.jobs: dict[str, Job] = {}
        self.cache: dict[str, tuple[str, datetime]] = {}
        self.writes = 0

    def create_run(self, run: Run, jobs: list[Job]) -> tuple[Run, bool]:
        with self._lock:
            for stored in self.runs.values():
                if stored.idempotency_key == run.idempotency_key:
                    return stored, False
            self.runs[run.run_id] = run
            self.jobs.update({j.job_id: j for j in jobs})
            return run, True

    def get_run(self, run_id: str) -> Run | None:
        return self.runs.get(run_id)

    def find_run(self, idempotency_key: str) -> Run | None:
        return next((r for r in self.runs.values() if r.idempotency_key == idempotency_key), None)

    def list_runs(self, limit: int = 20, before: str | None = None) -> list[Run]:
        ids = sorted((i for i in self.runs if before is None or i < before), reverse=True)
        return [self.runs[i] for i in ids[:limit]]

    def list_restores(self, limit: int = 20, before: str | None = None) -> list[Run]:
        restores = [r for r in self.list_runs(len(self.runs), before) if r.operation == "restore"]
        return restores[:limit]

    def open_runs(self) -> list[Run]:
        return [r for r in self.runs.values() if r.status is RunStatus.RUNNING]

    def save_run(self, run: Run) -> Run | None:
        with self._lock:
            current = self.runs.get(run.run_id)
            if current is None or current.version != run.version:
                return None
            stored = run.model_copy(update={"version": run.version + 1})
            self.runs[run.run_id] = stored
            self.writes += 1
            return stored

    def get_job(self, job_id: str) -> Job | None:
        return self.jobs.get(job_id)

    def list_jobs(self, run_id: str, *, skip: Collection[str] = ()) -> list[Job]:
        return sorted((j for j in self.jobs.values() if j.run_id == run_id and j.job_id not in skip),
                      key=lambda j: j.job_id)

    def run_has_open_jobs(self, run_id: str) -> bool:
        return any(j.run_id == run_id and not j.status.terminal for j in self.jobs.values())

    def due_jobs(self, now: datetime, limit: int = 100) -> list[Job]:
        due = [j for j in self.jobs.values() if not j.status.terminal and j.next_check_at <= now]
        return sorted(due, key=lambda j: j.next_check_at)[:limit]

    def save_job(self, job: Job) -> Job | None:
        with self._lock:
            current = self.jobs.get(job.job_id)
            if current is None or current.version != job.version:
                return None
            stored = job.model_copy(update={"version": job.version + 1,
                                            "updated_at": datetime.now(timezone.utc)})
            self.jobs[job.job_id] = stored
            self.writes += 1
            return stored

    def delete_run(self, run_id: str) -> None:
        with self._lock:
            self.runs.pop(run_id, None)
            for job_id in [i for i, j in self.jobs.items() if j.run_id == run_id]:
                del self.jobs[job_id]

    def cache_get(self, key: str, now: datetime) -> str | None:
        found = self.cache.get(key)
        return found[0] if found and found[1] > now else None

    def cache_put(self, key: str, value: str, expires_at: datetime) -> None:
        self.cache[key] = (value, expires_at)

    def cache_delete(self, key: str) -> None:
        self.cache.pop(key, None)

    def cache_claim(self, key: str, value: str, expires_at: datetime, now: datetime) -> bool:
        with self._lock:
            found = self.cache.get(key)
            if found is not None and found[1] > now:
                return False
            self.cache[key] = (value, expires_at)
            return True


@dataclass
class _Upload:
    key: str
    parts: dict[int, bytes] = field(default_factory=dict)


class MemoryObjects:
    """The `ObjectStore` and `ResumableUploads` ports in a dict. `fail_puts` makes the
    next N streamed writes fail after reading their first chunk (a broken connection)."""

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self.classes: dict[str, str] = {}  # key -> storage class, when not STANDARD
        self.thawed: set[str] = set()  # archived keys with a restored, readable copy
        self.uploads: dict[str, _Upload] = {}
        self.fail_puts = 0
        self._ids = itertools.count(1)

    def put_stream(self, key: str, chunks: Iterable[bytes], *, content_type: str,
                   before_commit: Callable[[StreamSummary], None] | None = None) -> StreamSummary:
        data = bytearray()
        for chunk in chunks:
            data += chunk
            if self.fail_puts:
                self.fail_puts -= 1
                raise StorageError(f"COS upload of {key!r} failed: InternalError (fake)",
                                   key=key, code="InternalError")
        summary = StreamSummary(bytes=len(data), sha256=hashlib.sha256(data).hexdigest(),
                                parts=1)
        if before_commit is not None:
            before_commit(summary)
        self.objects[key] = bytes(data)
        return summary

    def put_json(self, key: str, document: Mapping[str, Any]) -> None:
        self.objects[key] = json.dumps(document, ensure_ascii=False, indent=2).encode()

    def head(self, key: str) -> ObjectInfo | None:
        data = self.objects.get(key)
        return None if data is None else ObjectInfo(
            key=key, size=len(data), storage_class=self.classes.get(key, "STANDARD"))

    def read(self, key: str) -> bytes:
        return b"".join(self.iter_read(key))

    def iter_read(self, key: str, chunk_size: int = MIB) -> Iterator[bytes]:
        if self.classes.get(key) in ("ARCHIVE", "DEEP_ARCHIVE") and key not in self.thawed:
            raise StorageError(f"COS download of {key!r} failed: InvalidObjectState (HTTP 403)",
                               key=key, code="InvalidObjectState")
        if key not in self.objects:
            raise StorageError(f"COS download of {key!r} failed: NoSuchKey (HTTP 404)",
                               key=key, code="NoSuchKey")
        data = self.objects[key]
        yield from (data[i:i + chunk_size] for i in range(0, len(data), chunk_size))

    def list(self, prefix: str) -> list[ObjectInfo]:
        return [ObjectInfo(key=k, size=len(v), storage_class=self.classes.get(k, "STANDARD"))
                for k, v in sorted(self.objects.items()) if k.startswith(prefix)]

    def delete(self, key: str) -> None:
        self.objects.pop(key, None)
        self.classes.pop(key, None)

    def set_storage_class(self, key: str, storage_class: str) -> None:
        if key not in self.objects:
            raise StorageError(f"COS storage class change of {key!r} failed: no such object",
                               key=key, code="NoSuchKey")
        self.classes[key] = storage_class

    def begin_upload(self, key: str, content_type: str) -> str:
        upload_id = f"upload-{next(self._ids)}"
        self.uploads[upload_id] = _Upload(key)
        return upload_id

    def upload_part(self, key: str, upload_id: str, number: int, data: bytes) -> str:
        self._upload(key, upload_id).parts[number] = data
        return hashlib.md5(data, usedforsecurity=False).hexdigest()

    def complete_upload(self, key: str, upload_id: str, parts: Iterable[tuple[int, str]]) -> None:
        upload = self._upload(key, upload_id)
        self.objects[key] = b"".join(upload.parts[number] for number, _ in parts)
        del self.uploads[upload_id]

    def abort_upload(self, key: str, upload_id: str) -> None:
        self.uploads.pop(upload_id, None)

    def open_uploads(self, key: str) -> tuple[str, ...]:
        return tuple(i for i, u in self.uploads.items() if u.key == key)

    def uploads_under(self, prefix: str) -> tuple[tuple[str, str], ...]:
        return tuple((u.key, i) for i, u in self.uploads.items() if u.key.startswith(prefix))

    def _upload(self, key: str, upload_id: str) -> _Upload:
        upload = self.uploads.get(upload_id)
        if upload is None or upload.key != key:
            raise StorageError(f"COS upload of {key!r} failed: NoSuchUpload (HTTP 404)",
                               key=key, code="NoSuchUpload")
        return upload


class MovingClock:
    """A clock the test moves by hand."""

    def __init__(self, start: datetime | None = None) -> None:
        self.now = start or datetime(2026, 11, 1, 2, 0, tzinfo=timezone.utc)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


class RecordingDispatcher:
    """Remembers hand-offs instead of running the finisher."""

    def __init__(self) -> None:
        self.dispatched: list[str] = []

    def dispatch(self, job_id: str) -> None:
        self.dispatched.append(job_id)


class RecordingNotifier:
    def __init__(self) -> None:
        self.sent: list[tuple[Run, list[Job]]] = []
        self.alerts: list[str] = []
        self.pinged: list[bool] = []  # per notification: whether the heartbeat was pinged
        self.accepting = True  # False: every webhook is down (or refuses)
        self.quiet = False  # True: nothing to send (no webhook, or a quiet success)

    def sends(self, run: Run) -> bool:
        return not self.quiet

    def notify(self, run: Run, jobs: list[Job], *, heartbeat: bool = True) -> bool:
        self.sent.append((run, jobs))
        self.pinged.append(heartbeat)
        return self.accepting

    def alert(self, text: str) -> bool:
        self.alerts.append(text)
        return True
