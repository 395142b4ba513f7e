"""Downloads read the socket in wide steps: what has arrived is taken at once, nothing
is waited for, and the end of the stream is not lost."""

from __future__ import annotations

from typing import Any

import httpcore

from shared.adapters.wide_reads import WIDE_READ, WideReadStream


class Arrived(httpcore.NetworkStream):
    """A stream whose received data is `pieces` (one per socket read, like TLS records);
    `ready` says whether another piece has arrived; then the end (b"", again and again)."""

    def __init__(self, pieces: list[bytes], ready: int | None = None) -> None:
        self.pieces = pieces
        self.ready = len(pieces) if ready is None else ready
        self.asked: list[int] = []

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        self.asked.append(max_bytes)
        if not self.pieces:
            return b""
        piece = self.pieces.pop(0)
        self.ready -= 1
        assert len(piece) <= max_bytes
        return piece

    def get_extra_info(self, info: str) -> Any:
        assert info == "is_readable"
        return self.ready > 0 or not self.pieces  # the end reads as ready


def test_a_read_asks_for_a_wide_step_whatever_httpcore_asks() -> None:
    inner = Arrived([b"x" * WIDE_READ])
    assert WideReadStream(inner).read(64 * 1024) == b"x" * WIDE_READ
    assert inner.asked == [WIDE_READ]


def test_records_already_received_are_read_in_the_same_step_and_the_end_is_kept() -> None:
    records = [bytes([65 + n]) * 16384 for n in range(5)]
    inner = Arrived(list(records))
    stream = WideReadStream(inner)
    assert stream.read(65536) == b"".join(records)
    assert stream.read(65536) == b""
    assert stream.read(65536) == b""


def test_nothing_is_waited_for() -> None:
    inner = Arrived([b"a" * 100, b"b" * 100, b"c" * 100], ready=2)
    stream = WideReadStream(inner)
    assert stream.read(65536) == b"a" * 100 + b"b" * 100  # c has not arrived yet
    assert stream.read(65536) == b"c" * 100


def test_a_step_never_takes_more_than_it_asked_for() -> None:
    inner = Arrived([b"a" * (WIDE_READ - 10), b"b" * 10, b"c" * 10])
    stream = WideReadStream(inner)
    assert stream.read(65536) == b"a" * (WIDE_READ - 10) + b"b" * 10
    assert inner.asked == [WIDE_READ, 10]
    assert stream.read(65536) == b"c" * 10
