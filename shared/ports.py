"""Every protocol the service layer works against, on one page: the state store, the
object store (with resumable uploads), the dispatcher, the platforms (export kind and
paged kind) and the clock. Adapters and platforms implement them; the service layer and
the tests' fakes see nothing else.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

if TYPE_CHECKING:
    from shared.domain.jobs import Job, Run

MIB = 1 << 20
Clock = Callable[[], datetime]
Kind = Literal["export", "paged"]  # how a platform's data is copied


# platforms ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Progress:
    state: Literal["running", "ready", "failed"]
    expected_records: int | None = None
    message: str = ""
    # An export that came in several parts: the expected records of each, in order.
    part_records: list[int | None] | None = None
    # A platform that tracks more than one platform job (e.g. a split export) hands
    # back its updated handle here; the service stores it as the job's platform_job_id.
    platform_job_id: str | None = None
    # What the platform itself says the collection holds (e.g. WeChat's databasecollectionget
    # `count`), given only for an unfiltered export: a free cross-check of expected_records.
    platform_count: int | None = None
    # A running export with something to do at a known moment (e.g. the next part of a split
    # export once the platform's per-table window reopens): check again within this long.
    check_within_seconds: float | None = None


class TokenCache(Protocol):
    """Tokens shared across invocations (the state table implements this)."""

    def cache_get(self, key: str, now: datetime) -> str | None: ...

    def cache_put(self, key: str, value: str, expires_at: datetime) -> None: ...

    def cache_delete(self, key: str) -> None: ...

    def cache_claim(self, key: str, value: str, expires_at: datetime, now: datetime) -> bool:
        """Put `value` under `key` only if no entry live at `now` holds it (an expired one
        does not): compare-and-set on the key, so of callers racing for it exactly one is
        told True, whichever process or function they run in. Released with cache_delete."""


@dataclass(frozen=True)
class PlatformServices:
    """What a platform client is handed besides its settings: the shared token cache and
    how long to wait between in-call retries."""

    tokens: TokenCache
    retry_base_seconds: float


class Platform(Protocol):
    """What every platform offers. Platforms know URLs and errcodes; they know nothing
    about COS or the state table beyond the token cache they are handed."""

    @property
    def file_type(self) -> str:
        """json | csv: decides the extension and how records are counted."""

    def collections(self) -> list[str]:
        """The collections to back up (a table is a collection too)."""

    def discovery(self) -> dict[str, Any] | None:
        """What the last `collections()` found and left out, for the run manifest; None for
        platforms that back up a fixed list."""


class ExportPlatform(Platform, Protocol):
    """A platform that exports a collection as an asynchronous job and hands over a file."""

    def start_blocked(self) -> str | None:
        """Why no export may start in this invocation (the platform's concurrency limit was
        hit), or None."""

    def start(self, collection: str, job_id: str) -> str:
        """Begin an export; returns the platform's job id."""

    def check(self, collection: str, platform_job_id: str) -> Progress: ...

    def open(self, collection: str, platform_job_id: str, part: int = 0, *,
             file_type: str | None = None) -> Iterator[bytes]:
        """Stream the bytes of a finished export (of its `part`-th part, from 0), made in
        `file_type` (the type it was started with; None: the configured one)."""


@dataclass(frozen=True)
class Page:
    """One page of a table read by a paged platform: the platform's answer, kept as the
    platform likes (its rows are decoded by `encode_page`, off the reading thread), and
    where the next page starts."""

    answer: Any
    next_cursor: dict[str, Any] | None  # None: this was the last page


@runtime_checkable
class PagedPlatform(Platform, Protocol):
    """A platform without export jobs (OneDB): the finisher pages through each table
    itself (shared/service/copy_paged.py), checkpointing the cursor, so a killed copy
    resumes where it stopped."""

    def fetch_page(self, collection: str, cursor: dict[str, Any] | None) -> Page:
        """The page starting at `cursor` (None: the table's start). Pages are in key order,
        and the same cursor gives the same page again, so a page can be re-read. Returns as
        soon as the next cursor is known, so the next call can go out at once."""

    def encode_page(self, page: Page) -> tuple[bytes, int]:
        """The page's rows as lines of the backup file (JSON Lines: one row per line),
        and how many rows that is."""


# restoring ------------------------------------------------------------------------------
RestoreMode = Literal["new", "insert", "upsert"]  # new: into a collection made for it


@dataclass(frozen=True)
class ImportProgress:
    """How a platform's import job stands (WeChat's databasemigratequeryinfo)."""

    state: Literal["running", "done", "failed"]
    imported: int | None = None  # records the platform says it wrote
    rejected: int | None = None  # records the platform says it could not write
    message: str = ""


@runtime_checkable
class RestorablePlatform(Platform, Protocol):
    """What every platform that can put a backup back offers: the target collection's
    existence, creation and size. A restore goes into a new collection by default, so
    the original is never touched unless the user names it with insert or upsert."""

    @property
    def restore_modes(self) -> frozenset[str]:
        """The RestoreMode values this platform supports (MinApp's import cannot upsert)."""

    def target_exists(self, collection: str) -> bool: ...

    def create_target(self, collection: str, like: str) -> None:
        """Create the empty collection/table `collection`, shaped like `like` (the
        original: MinApp copies its schema). Raises Fatal, saying what to do, where the
        platform cannot create one (OneDB tables are made in its console)."""

    def count(self, collection: str) -> int:
        """How many records the collection/table holds now."""


@runtime_checkable
class TargetNaming(Protocol):
    """A platform whose collection names have rules of their own (MinApp: a table id
    cannot name a new table) names a restore's new collection itself."""

    def default_target(self, collection: str, run_id: str) -> str: ...


@runtime_checkable
class TargetNameRules(Protocol):
    """A platform that documents what a collection/table name may be (MinApp: table.md
    创建数据表) checks a restore's target name against it before anything is written."""

    def target_name_rule(self, name: str) -> str | None:
        """The platform's rule `name` breaks, in words; None if it may name a target."""
        ...


@runtime_checkable
class RestoreCaveats(Protocol):
    """A platform whose export options can make a backup its import does not take back as
    the collection was (MinApp: renamed CSV columns, converted timestamps)."""

    def restore_caveats(self, collection: str) -> list[dict[str, Any]]:
        """Each option set for `collection` that does so: {option, value, why}; [] if none."""
        ...

    def configured_caveats(self) -> list[str]:
        """The same for every collection the config sets options for: one sentence each,
        naming the collection, the option and the fix; [] if none."""
        ...


@runtime_checkable
class ConsoleMadeTargets(Protocol):
    """A platform whose collections/tables cannot be created through its API (OneDB: made
    in its console). A restore into one that does not exist is refused by its plan, so the
    preview never promises a collection the restore cannot make."""

    def missing_target(self, collection: str, like: str) -> str:
        """That `collection` cannot be made here, and how to make it (shaped like `like`)."""
        ...


@runtime_checkable
class TargetShape(Protocol):
    """A platform that must be told which collection a restore's target is shaped like
    before it can read it (OneDB: the target's key columns are the original's)."""

    def restoring_into(self, target: str, original: str) -> None: ...


@runtime_checkable
class FileImportPlatform(RestorablePlatform, Protocol):
    """A platform that imports a whole backup file (WeChat, MinApp)."""

    def send_import(self, collection: str, mode: RestoreMode, *, file_type: str, name: str,
                    chunks: Iterable[bytes], size: int) -> str | None:
        """Upload one backup file (`size` bytes, streamed from `chunks`, never held whole)
        and start importing it into `collection`; the platform's import id, or None when
        the platform gives none and reports no progress (MinApp e-mails the result: the
        service then counts the target's records)."""

    def check_import(self, collection: str, import_id: str) -> ImportProgress: ...


RowOutcome = Literal["written", "kept"]  # kept: insert mode found the row already there


@runtime_checkable
class RowImportPlatform(RestorablePlatform, PagedPlatform, Protocol):
    """A platform written row by row (OneDB). The rows are the backup's lines; reading
    the target back for the final comparison uses `fetch_page`/`encode_page`."""

    def write_row(self, collection: str, mode: RestoreMode, line: bytes) -> RowOutcome:
        """Write one backup line's row. Idempotent: writing the same row again (a resumed
        restore re-sends the rows after its last checkpoint) leaves one row. Safe to call
        from several threads at once."""


@runtime_checkable
class PartialWrites(Protocol):
    """A row-by-row platform whose restore, in some modes, sets only the columns each backup
    row holds and keeps the others the target row has (OneDB: upsert of a backup made with
    getColumns). Its read-back judges each target row by what the restore wrote."""

    def writes_part(self, collection: str, mode: RestoreMode) -> bool:
        """Does a restore into `collection` in `mode` write only part of each row?"""

    def written(self, collection: str, line: bytes) -> tuple[bytes, frozenset[str]]:
        """(the row's identity, the same for its backup line and the target's line; the
        columns writing this backup line sets)."""

    def written_part(self, collection: str, found: bytes, columns: frozenset[str]) -> bytes:
        """`found` (a target line) holding only `columns`: what a partial write of it set."""


class Platforms(Protocol):
    """The configured sources' platforms, built on first use."""

    def get(self, source: str) -> Platform: ...

    def kind(self, source: str) -> Kind: ...


# objects ------------------------------------------------------------------------------
@dataclass(frozen=True)
class StreamSummary:
    """What was streamed, known before the object is committed."""

    bytes: int
    sha256: str  # hex
    parts: int  # uploaded parts; a single PUT counts as one
    crc64: str | None = None  # CRC64-ECMA of the bytes sent, decimal as COS writes it


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    crc64: str | None = None  # COS's x-cos-hash-crc64ecma, when the store gives one
    storage_class: str = "STANDARD"  # x-cos-storage-class; absent means STANDARD


class ObjectStore(Protocol):
    def put_stream(
        self,
        key: str,
        chunks: Iterable[bytes],
        *,
        content_type: str,
        before_commit: Callable[[StreamSummary], None] | None = None,
    ) -> StreamSummary: ...

    def put_json(self, key: str, document: Mapping[str, Any]) -> None: ...

    def head(self, key: str) -> ObjectInfo | None: ...

    def read(self, key: str) -> bytes: ...

    def iter_read(self, key: str, chunk_size: int = MIB) -> Iterator[bytes]: ...

    def list(self, prefix: str) -> list[ObjectInfo]: ...

    def delete(self, key: str) -> None: ...

    def set_storage_class(self, key: str, storage_class: str) -> None:
        """Move an object to another storage class in place (same key, same content)."""


@runtime_checkable
class ResumableUploads(Protocol):
    """What a paged copy needs besides `ObjectStore`: multipart uploads whose id and parts
    are kept by the caller, so an upload started by one process is finished by another."""

    def begin_upload(self, key: str, content_type: str) -> str: ...

    def upload_part(self, key: str, upload_id: str, number: int, data: bytes) -> str: ...

    def complete_upload(self, key: str, upload_id: str, parts: Iterable[tuple[int, str]]) -> None: ...

    def abort_upload(self, key: str, upload_id: str) -> None: ...

    def open_uploads(self, key: str) -> tuple[str, ...]: ...

    def uploads_under(self, prefix: str) -> tuple[tuple[str, str], ...]:
        """(key, upload id) of every unfinished multipart upload under `prefix`."""


# state --------------------------------------------------------------------------------
class StateStore(TokenCache, Protocol):
    """Runs, jobs and cached tokens. Writes are compare-and-set on `version`, so two
    functions racing on the same job cannot both win."""

    def create_run(self, run: Run, jobs: list[Job]) -> tuple[Run, bool]:
        """Store a run and its jobs atomically; if a run with the same idempotency key
        exists, store nothing and return that run with False."""

    def get_run(self, run_id: str) -> Run | None: ...

    def find_run(self, idempotency_key: str) -> Run | None:
        """The run created under `idempotency_key`, or None."""

    def list_runs(self, limit: int = 20, before: str | None = None) -> list[Run]:
        """Newest first; `before` is a run id to page from."""

    def list_restores(self, limit: int = 20, before: str | None = None) -> list[Run]:
        """The runs whose operation is "restore", newest first, paged as list_runs is;
        found without reading the backup runs recorded between them."""

    def open_runs(self) -> list[Run]: ...

    def save_run(self, run: Run) -> Run | None:
        """Write if the stored version equals run.version; the stored run, or None."""

    def get_job(self, job_id: str) -> Job | None: ...

    def list_jobs(self, run_id: str, *, skip: Collection[str] = ()) -> list[Job]:
        """The run's jobs by id, leaving out (and not reading) those in `skip`."""

    def run_has_open_jobs(self, run_id: str) -> bool:
        """Has some job of the run not ended yet? Answered without reading every job, so
        a finisher can ask it after each copy even when the run has thousands of jobs."""

    def due_jobs(self, now: datetime, limit: int = 100) -> list[Job]:
        """Unfinished jobs whose next_check_at has come, oldest first."""

    def save_job(self, job: Job) -> Job | None:
        """Write if the stored version equals job.version; the stored job, or None."""

    def delete_run(self, run_id: str) -> None:
        """Forget a closed run and its jobs (retention); deleting twice is harmless. A save
        racing it either lands first and is deleted with the rest, or is refused (None):
        once it returns, nothing of the run is left. StateError when saves kept landing:
        deleting again finishes the job."""


# telling people ------------------------------------------------------------------------
class Notifier(Protocol):
    """Tells people how a run ended (webhooks, heartbeat) and raises alerts; never
    raises itself: a message that cannot be delivered is logged, and never keeps a run
    from closing."""

    def sends(self, run: Run) -> bool:
        """Whether `notify` would send `run`'s notification to a webhook (not for a quiet
        success, nor with no webhook configured): only then is it kept to send again."""

    def notify(self, run: Run, jobs: list[Job], *, heartbeat: bool = True) -> bool:
        """Tell the webhooks how `run` ended (and ping the heartbeat, unless `heartbeat` is
        False: a notification sent again pings nothing); whether it reached someone, as
        `alert` says it."""

    def alert(self, text: str) -> bool:
        """A message about the backups as a whole (they stopped, they recovered); whether
        it reached someone: True when a webhook accepted it, or when none is configured
        (nothing to deliver to: it is logged); False when every configured one failed."""


# dispatch -----------------------------------------------------------------------------
class Dispatcher(Protocol):
    """Hands a ready job to the finisher (in-process locally, SCF async Invoke hosted)."""

    def dispatch(self, job_id: str) -> None: ...


# the doctor ----------------------------------------------------------------------------
# Each probe makes a few real calls and returns what it proved, in a sentence; when
# something is wrong it raises BackupError (or ConfigError) saying what and how to fix it.
@runtime_checkable
class CredentialProbe(Protocol):
    """A platform client that can prove its source's credentials work with one cheap call."""

    def probe(self) -> str: ...


@dataclass(frozen=True)
class Deployed:
    """A deployed function's answer to the doctor: what was proven, and a digest of the
    config it loaded ("" when it is too old to say), for the doctor to compare."""

    detail: str
    config: str
    proven: bool = True  # False: not checked, `detail` says why and how to check it


class Deployment(Protocol):
    """What `doctor` checks besides the config and the sources."""

    def bucket(self) -> str:
        """The destination bucket answers a listing under the prefix with these keys."""

    def objects(self) -> str:
        """A probe object under the prefix is written, read back and deleted."""

    def create_only(self) -> str | None:
        """A second create-only writer is refused and bucket versioning was never enabled;
        None when the state is not kept in the bucket (nothing relies on it)."""

    def state(self) -> str:
        """The state backend answers a read."""

    def finisher(self) -> Deployed | None:
        """The finisher function can be invoked with these credentials and loads its config;
        None when the config copies in-process (dispatch.mode local)."""

    def poller(self) -> Deployed | None:
        """The poller function can be invoked, loads its config and reaches the state store,
        advancing no job; None with dispatch.mode local."""

    def trigger(self) -> str | None:
        """The digest of the config the deployed trigger runs; None when it cannot be told.
        Raises, saying the fix, when the trigger answers that it cannot load its config."""

    def webhooks(self) -> int:
        """How many webhooks are configured."""

    def webhook(self, index: int, send: bool) -> str:
        """The webhook answers; with `send`, it accepts a test message."""

    def heartbeat(self, send: bool) -> str | None:
        """The heartbeat monitor takes a connection (no ping: any request would count as
        one); with `send`, it accepts a success ping. None when none is configured."""
