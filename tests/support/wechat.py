"""Fixtures for the WeChat emulator."""

from __future__ import annotations

import multiprocessing
import threading
from collections.abc import Callable, Iterator
from typing import Any, cast

import pytest

from devkit.emulators.wechat import WeChatEmulator
from shared.config import parse_config
from shared.platforms.wechat.platform import WeChatClient

# Processes of their own for "separate functions": spawned, so that nothing of this one
# (a lock, a memo) is inherited.
_SPAWN = multiprocessing.get_context("spawn")


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


def _as_a_function(document: dict[str, Any], environ: dict[str, str], source: str, start: Any,
                   results: Any) -> None:
    """One SCF function in a spawned process: its own state-store client and token memo
    (build_context), then, released with the others, one listing of `source`, which needs
    its token. What it printed, or the error it raised, goes to `results`."""
    from shared.bootstrap import build_context

    config = parse_config(document, environ=environ)
    client = build_context(config, environ=environ).platforms.get(source)
    start.wait(60)
    try:
        results.put(cast(WeChatClient, client).probe())
    except Exception as exc:  # handed back to the test
        results.put(f"{type(exc).__name__}: {exc}")


def probe_as_functions(document: dict[str, Any], environ: dict[str, str],
                       sources: list[str]) -> list[str]:
    """Each of `sources` probed at the same moment from a process of its own, as the
    trigger, the poller and the finisher would: nothing is shared between them but the
    state store and the platform. What each answered, in no particular order."""
    start, results = _SPAWN.Barrier(len(sources)), _SPAWN.Queue()
    processes = [_SPAWN.Process(target=_as_a_function, args=(document, environ, source, start, results))
                 for source in sources]
    for process in processes:
        process.start()
    try:
        return [results.get(timeout=120) for _ in sources]
    finally:
        for process in processes:
            process.join(30)
