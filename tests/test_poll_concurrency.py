"""The poller advances due jobs several at once, within per-source and per-type caps on
platform calls in flight, counted by two WeChat emulators (real HTTP) each playing one
source: a slow one (300 ms a call) and a fast one."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from devkit.emulators.wechat import WeChatEmulator
from shared.domain.jobs import JobStatus
from shared.service.poll import poll
from shared.service.start import start_run
from tests.support.backup import ENV_ID, SECRET, LocalBackup

JOBS_PER_SOURCE = 8
FAST_APPID = "wx00000000000fa57a"  # its own app: tokens are cached per appid


@pytest.fixture
def fast_emulator() -> Iterator[WeChatEmulator]:
    emulator = WeChatEmulator()
    emulator.start()
    emulator.add_app(FAST_APPID, SECRET)
    emulator.add_env(FAST_APPID, ENV_ID)
    try:
        yield emulator
    finally:
        emulator.stop()


def most_at_once(spans: list[tuple[float, float]]) -> int:
    """The largest number of (start, end) spans that overlap at one instant."""
    edges = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    most = current = 0
    for _, step in edges:  # at a tie an end (-1) sorts before a start: touching is not overlap
        current += step
        most = max(most, current)
    return most


def test_caps_hold_and_a_slow_source_does_not_hold_up_a_fast_one(
    local: LocalBackup, fast_emulator: WeChatEmulator
) -> None:
    slow_emulator = local.emulator
    names = [f"c{i:02d}" for i in range(JOBS_PER_SOURCE)]
    for emulator in (slow_emulator, fast_emulator):
        emulator.polls_until_ready = 5  # every check in the measured tick answers "running"
        for name in names:
            emulator.add_collection(ENV_ID, name, [{"_id": name}])
    config = local.config(
        local.wechat_source("slow", collections=names),
        local.wechat_source("fast", collections=names, appid=FAST_APPID,
                           api_base=fast_emulator.base_url),
        first_check_seconds=0, poll_concurrency=6,
        platform_calls_per_source=2, platform_calls_per_type=3,
    )
    ctx = local.context(config)
    run, _ = start_run(ctx, idempotency_key="caps", trigger="test")
    assert {j.status for j in ctx.state.list_jobs(run.run_id)} == {JobStatus.EXPORTING}

    slow_emulator.latency = 0.3
    for emulator in (slow_emulator, fast_emulator):
        emulator.api_spans.clear()
        emulator.api_most_in_flight = 0
    started = time.monotonic()
    summary = poll(ctx)
    elapsed = time.monotonic() - started

    assert summary.advanced == 2 * JOBS_PER_SOURCE
    slow, fast = slow_emulator.api_spans, fast_emulator.api_spans
    assert len(slow) == len(fast) == JOBS_PER_SOURCE  # one status check per job
    assert slow_emulator.api_most_in_flight == 2  # the per-source cap, reached and held
    assert fast_emulator.api_most_in_flight <= 2
    assert most_at_once(slow + fast) <= 3  # the per-type cap across both sources
    # the fast source finished while the slow one still had most of its calls to make
    assert max(end for _, end in fast) < started + 0.6
    # 8 slow calls two at a time: about 4 × 0.3 s, not 8 × 0.3 s one after another
    assert 1.2 <= elapsed < 2.3
    checked = ctx.state.list_jobs(run.run_id)
    assert all(j.status is JobStatus.EXPORTING and j.version >= 3 for j in checked)
