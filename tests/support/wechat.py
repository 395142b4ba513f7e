"""Fixtures for the WeChat emulator."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from devkit.emulators.wechat import WeChatEmulator


@pytest.fixture
def wechat_emulator() -> Iterator[WeChatEmulator]:
    """A started emulator without apps (add them with ``add_app``/``add_env``).

    Knobs (``polls_until_ready``, ``token_ttl``, ``link_ttl``) are attributes and can be
    changed inside the test. The server is stopped and its export files deleted after.
    """
    emulator = WeChatEmulator()
    emulator.start()
    try:
        yield emulator
    finally:
        emulator.stop()
