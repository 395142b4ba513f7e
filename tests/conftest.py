"""Shared pytest fixtures: each real stand-in (emulators, S3 server) lives in tests/support."""

from collections.abc import Iterator

import pytest

from shared import logs

pytest_plugins = [
    "tests.support.cos",
    "tests.support.wechat",
    "tests.support.minapp",
    "tests.support.backup",
    "tests.support.onedb",
    "tests.support.mysql",
    "tests.support.webhook",
    "tests.support.proxy",
    "tests.support.hostile",
]


@pytest.fixture(autouse=True)
def _own_secret_registry() -> Iterator[None]:
    """Secrets a test registers are masked in that test only: the registry is process-wide,
    and a test registering a common word would otherwise redact another test's messages.
    Not with `monkeypatch`: made first by an autouse fixture, it would be undone last, after
    the teardown of fixtures that a test's own patches must not reach."""
    kept = logs._secrets
    logs._secrets = set(kept)
    yield
    logs._secrets = kept
