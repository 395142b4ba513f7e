"""Shared pytest fixtures: each real stand-in (emulators, S3 server) lives in tests/support."""

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
def _own_secret_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Secrets a test registers are masked in that test only: the registry is process-wide,
    and a test registering a common word would otherwise redact another test's messages."""
    monkeypatch.setattr(logs, "_secrets", set(logs._secrets))
