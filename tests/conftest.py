"""Shared pytest fixtures: each real stand-in (emulators, S3 server) lives in tests/support."""

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
