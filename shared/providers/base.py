"""What the pipeline needs from a platform. Providers know URLs and errcodes; they know
nothing about COS or the state table beyond the small token cache they are handed."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, Protocol, TypeVar, runtime_checkable

from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from shared.errors import Retryable


@dataclass(frozen=True)
class Progress:
    state: Literal["running", "ready", "failed"]
    expected_records: int | None = None
    message: str = ""
    # An export that came in several parts: the expected records of each, in order.
    part_records: list[int | None] | None = None
    # A provider that tracks more than one platform job (e.g. a split export) hands
    # back its updated handle here; the pipeline stores it as the job's remote_id.
    remote_id: str | None = None


class TokenCache(Protocol):
    """Tokens shared across invocations (the state table implements this)."""

    def cache_get(self, key: str, now: datetime) -> str | None: ...

    def cache_put(self, key: str, value: str, expires_at: datetime) -> None: ...

    def cache_delete(self, key: str) -> None: ...


class Provider(Protocol):
    @property
    def file_type(self) -> str:
        """json | csv: decides the extension and how records are counted."""

    def targets(self) -> list[str]:
        """The collections/tables to back up."""

    def discovery(self) -> dict[str, Any] | None:
        """What the last `targets()` found and left out, for the run manifest; None for
        providers that back up a fixed list."""

    def start_blocked(self) -> str | None:
        """Why no export may start in this invocation (the platform's concurrency limit was
        hit), or None."""

    def start(self, target: str, job_id: str) -> str:
        """Begin an export; returns the platform's job id."""

    def check(self, target: str, remote_id: str) -> Progress: ...

    def open(self, target: str, remote_id: str, part: int = 0) -> Iterator[bytes]:
        """Stream the bytes of a finished export (of its `part`-th part, from 0)."""


@dataclass(frozen=True)
class Page:
    """One page of a table read by a paged provider: the platform's answer, kept as the
    provider likes (its rows are decoded by `encode_page`, off the reading thread), and
    where the next page starts."""

    answer: Any
    next_cursor: dict[str, Any] | None  # None: this was the last page


@runtime_checkable
class PagedProvider(Provider, Protocol):
    """A platform without export jobs (OneDB): the finisher pages through each table
    itself (shared/paged.py), checkpointing the cursor, so a killed copy resumes where it
    stopped. The pipeline never calls `start`, `check` or `open` on it."""

    def fetch_page(self, target: str, cursor: dict[str, Any] | None) -> Page:
        """The page starting at `cursor` (None: the table's start). Pages are in key order,
        and the same cursor gives the same page again, so a page can be re-read. Returns as
        soon as the next cursor is known, so the next call can go out at once."""

    def encode_page(self, page: Page) -> tuple[bytes, int]:
        """The page's rows as lines of the backup file (JSON Lines: one row per line),
        and how many rows that is."""


T = TypeVar("T")


def with_retries(call: Callable[[], T], *, attempts: int, base_seconds: float) -> T:
    """Run `call`, retrying `Retryable` failures with exponential backoff, then re-raise."""
    retrying = Retrying(
        retry=retry_if_exception_type(Retryable),
        stop=stop_after_attempt(attempts),
        wait=wait_exponential(multiplier=base_seconds, max=30),
        reraise=True,
    )
    return retrying(call)
