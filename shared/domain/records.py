"""Counting records in an export while it streams, without holding it."""

from __future__ import annotations

from typing import Protocol


class RecordCounter(Protocol):
    def feed(self, chunk: bytes) -> None: ...

    @property
    def total(self) -> int: ...


class JsonLinesCounter:
    """One record per non-empty line; the last line may lack its newline."""

    def __init__(self) -> None:
        self._newlines = 0
        self._last = b"\n"

    def feed(self, chunk: bytes) -> None:
        if chunk:
            self._newlines += chunk.count(b"\n")
            self._last = chunk[-1:]

    @property
    def total(self) -> int:
        return self._newlines + (0 if self._last == b"\n" else 1)


class CsvCounter:
    """Rows after the header; newlines inside quoted fields do not end a row.

    A doubled quote ("") toggles the quote state twice, so tracking the parity of
    quote characters is exact for RFC 4180 files.
    """

    def __init__(self) -> None:
        self._in_quotes = False
        self._rows = 0
        self._last = b"\n"

    def feed(self, chunk: bytes) -> None:
        if not chunk:
            return
        if not self._in_quotes and b'"' not in chunk:
            self._rows += chunk.count(b"\n")
        else:
            for index, segment in enumerate(chunk.split(b'"')):
                if index:
                    self._in_quotes = not self._in_quotes
                if not self._in_quotes:
                    self._rows += segment.count(b"\n")
        self._last = chunk[-1:]

    @property
    def total(self) -> int:
        lines = self._rows + (0 if self._last == b"\n" else 1)
        return max(0, lines - 1)  # the header is not a record


def counter_for(file_type: str) -> RecordCounter:
    return CsvCounter() if file_type == "csv" else JsonLinesCounter()
