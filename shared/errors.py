"""How platform failures are classified; the pipeline acts on the class, not the platform."""

from __future__ import annotations


class PlatformError(Exception):
    """Base for every failure reported by or while talking to a platform."""


class Retryable(PlatformError):
    """Transient (system busy, network, cut-off download): try again with backoff."""


class RetryLater(PlatformError):
    """The platform asks us to wait (quota, concurrency, rate limit): not a failure."""


class TokenRejected(PlatformError):
    """The platform rejected our token; the client refreshes once and then gives up."""


class Fatal(PlatformError):
    """Configuration or caller problem that retrying cannot fix; the message says what to fix."""


class Forgotten(PlatformError):
    """The platform no longer knows an export job: start the export again."""


class VerificationFailed(Fatal):
    """The copy does not match what the platform reported; it is never stored as done."""
