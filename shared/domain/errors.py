"""The one error tree. Every adapter translates its SDK's or HTTP client's exceptions into
these classes at its edge, so the service layer acts on the class alone: retry with
backoff, wait, refresh a token once, restart an export, or fail with what to fix.

    BackupError
    ├── Retryable            transient: try again with backoff
    │   ├── StorageError     the object store (COS) failed; `key` and `code` say where
    │   └── StateError       the state backend failed or broke its promises
    ├── RetryLater           the platform asks us to wait: not a failure
    │   └── RateLimited      a call refused for a rate limit; `retry_after` is the hint
    ├── TokenRejected        refresh the token once, then give up
    ├── Forgotten            the platform no longer knows an export: start it again
    └── Fatal                retrying cannot fix it; the message says what to fix
        └── VerificationFailed   the copy does not match what the platform reported
"""

from __future__ import annotations


class BackupError(Exception):
    """Base of every failure the product classifies."""


class Retryable(BackupError):
    """Transient (system busy, network, cut-off download): try again with backoff."""


class RetryLater(BackupError):
    """The platform asks us to wait (quota, concurrency, rate limit): not a failure."""


class RateLimited(RetryLater):
    """One call refused for the platform's rate limit (e.g. HTTP 429). A paged copy waits
    and asks again in place (at least `retry_after` seconds when the platform said so);
    only a refusal that persists leaves the copy to a later invocation."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class TokenRejected(BackupError):
    """The platform rejected our token; the client refreshes once and then gives up."""


class Fatal(BackupError):
    """Configuration or caller problem that retrying cannot fix; the message says what to fix."""


class Forgotten(BackupError):
    """The platform no longer knows an export job: start the export again."""


class VerificationFailed(Fatal):
    """The copy does not match what the platform reported; it is never stored as done."""


class StorageError(Retryable):
    """An object store operation failed. The message names the key and the COS error code,
    never a secret."""

    def __init__(self, message: str, *, key: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.key = key
        self.code = code


class StateError(Retryable):
    """The state backend failed or does not keep its promises (e.g. a bucket that lets a
    create-only write overwrite). The message names the object or table, never a secret."""


class CommitRefused(Exception):
    """Raised by a `before_commit` callback to refuse a stream; the upload is aborted.
    Not a classified failure: the callback's own error is what the caller sees."""
