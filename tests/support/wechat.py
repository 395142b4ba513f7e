"""Fixtures for the WeChat emulator."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

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


def at_once(call: Callable[[], object], times: int) -> list[Exception]:
    """`call` from `times` threads released together, as the poller's workers call one
    source's client; what each raised (empty when every call succeeded). With the
    emulator's ``latency`` set, the calls overlap on the wire."""
    start = threading.Barrier(times)
    raised: list[Exception] = []

    def one() -> None:
        start.wait()
        try:
            call()
        except Exception as exc:  # handed back to the test
            raised.append(exc)

    threads = [threading.Thread(target=one) for _ in range(times)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return raised
