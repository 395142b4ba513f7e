"""CRC64 as COS computes it, chained over pieces, against crcmod (the COS SDK's own)."""

from __future__ import annotations

import random

import crcmod
import pytest

from shared.integrity import Crc64, crc64

SDK_CRC64 = crcmod.mkCrcFun(0x142F0E1EBA9EA3693, initCrc=0, xorOut=0xFFFFFFFFFFFFFFFF, rev=True)


def test_check_value() -> None:
    assert crc64(b"123456789") == 0x995DC9BBDF1939FA == SDK_CRC64(b"123456789")


@pytest.mark.parametrize("seed", range(5))
def test_chained_over_any_pieces_equals_the_sdks_crc_of_the_whole(seed: int) -> None:
    rng = random.Random(seed)
    data = rng.randbytes(rng.randint(0, 300_000))
    running = Crc64()
    index = 0
    while index < len(data):
        step = rng.choice([0, 1, 7, 4096, rng.randint(1, 100_000)])
        piece = data[index:index + step]
        running.update(memoryview(piece) if rng.random() < 0.5 else piece)
        index += step
    assert running.value == str(SDK_CRC64(data))
    assert crc64(data[1000:], crc64(data[:1000])) == SDK_CRC64(data)
