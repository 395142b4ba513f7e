"""CRC64-ECMA as COS computes it for `x-cos-hash-crc64ecma`, fed in stream order.

COS documents the header as CRC64 per ECMA-182 (https://cloud.tencent.com/document/product/436/40334);
its own SDK checks downloads with `crcmod.mkCrcFun(0x142F0E1EBA9EA3693, initCrc=0,
xorOut=0xffffffffffffffff, rev=True)` (qcloud_cos, resumable_downloader.py): the reflected
ECMA-182 polynomial with all ones in and out (CRC-64/XZ; check value of b"123456789":
0x995DC9BBDF1939FA). None of crcmod's predefined "crc-64*" functions is this one. crcmod is
already installed with the COS SDK, with its C extension.
"""

from __future__ import annotations

from typing import cast

import crcmod

_crc64 = crcmod.mkCrcFun(0x142F0E1EBA9EA3693, initCrc=0, xorOut=0xFFFFFFFFFFFFFFFF, rev=True)


def crc64(data: bytes | memoryview, previous: int = 0) -> int:
    """The CRC64 of `data` following bytes whose CRC64 was `previous` (0: none before)."""
    return cast(int, _crc64(bytes(data) if isinstance(data, memoryview) else data, previous))


class Crc64:
    """A running CRC64 over chunks fed in order; `value` as COS writes it (decimal)."""

    def __init__(self, start: int = 0) -> None:
        self.crc = start

    def update(self, data: bytes | memoryview) -> None:
        self.crc = crc64(data, self.crc)

    @property
    def value(self) -> str:
        return str(self.crc)
