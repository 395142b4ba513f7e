"""Counting records in an export while it streams, without holding it."""

from __future__ import annotations

import json
from typing import Protocol

from pydantic_core import from_json


class RecordCounter(Protocol):
    def feed(self, chunk: bytes) -> None: ...

    @property
    def total(self) -> int: ...


class JsonLinesCounter:
    """Records, not newlines: a record is a non-empty line holding a JSON object
    (https://jsonlines.org/: one JSON value per line; an export's values are documents).
    Blank lines are not records, and a line that is not an object is counted in
    `invalid`, so a file padded with empty or broken lines does not pass as complete.
    The last line may lack its newline; a UTF-8 byte order mark may open the file.

    Parsing every line would cost more than the rest of the copy (about 120 MB/s), so
    the whole lines of a chunk are counted at once when all of them are plainly objects:
    each starts with `{` right after a newline and ends with `}` right before the next
    (two byte counts in C; about 450 MB/s in all), and the first of them parses as one.
    Otherwise (blank lines, whitespace or CRLF around a line, a line that is not `{...}`,
    or that first line not parsing) every line of the chunk is parsed, as are the lines
    cut by chunk boundaries and the last line. What gets through is only a line shaped
    `{...}` whose inside is broken when it is not one of the lines parsed; a truncated
    download, padding, or a file in another format are still caught.
    """

    def __init__(self) -> None:
        self._records = 0
        self.invalid = 0
        self._partial = b""
        self._first_line = True

    def feed(self, chunk: bytes) -> None:
        first = chunk.find(b"\n")
        if first < 0:
            self._partial += chunk
            return
        self._take(self._partial + chunk[:first])
        last = chunk.rfind(b"\n")
        self._partial = chunk[last + 1:]
        if last > first:
            self._take_lines(chunk, first + 1, last + 1)

    def _take_lines(self, chunk: bytes, start: int, end: int) -> None:
        """The whole lines `chunk[start:end]`, each ending in a newline."""
        lines = chunk.count(b"\n", start, end)
        # Every newline but the last sits in `}\n{`, the first line opens with `{` and the
        # last closes with `}`: every line is `{...}` (the pattern cannot overlap itself).
        if (chunk[start] == _OPEN and chunk[end - 2] == _CLOSE
                and chunk.count(b"}\n{", start, end) == lines - 1
                and _is_object(chunk[start:chunk.index(b"\n", start)])):
            self._records += lines
            return
        for line in chunk[start:end - 1].split(b"\n"):
            self._take(line)

    def _take(self, line: bytes) -> None:
        if self._first_line:
            self._first_line = False
            line = line.removeprefix(_BOM)
        if not line.strip():
            return
        if _is_object(line):
            self._records += 1
        else:
            self.invalid += 1

    @property
    def total(self) -> int:
        tail = self._partial.removeprefix(_BOM) if self._first_line else self._partial
        return self._records + (1 if tail.strip() and _is_object(tail) else 0)


_BOM = b"\xef\xbb\xbf"
_OPEN, _CLOSE = ord("{"), ord("}")


def _is_object(line: bytes) -> bool:
    try:
        # pydantic-core's Rust parser: about three times the standard library's speed here
        return isinstance(from_json(line), dict)
    except ValueError:  # not JSON, not UTF-8, or a lone surrogate escape (below)
        pass
    try:
        # "\ud800" alone is valid JSON (RFC 8259 section 7 allows a \u escape of any four hex digits), and
        # JavaScript's JSON.stringify writes a lone surrogate that way; pydantic-core refuses it
        return isinstance(json.loads(line.decode("utf-8")), dict)
    except ValueError:  # not JSON, or not UTF-8 (UnicodeDecodeError is a ValueError)
        return False


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


# orjson reads integers beyond 64 bits as floats, silently: any run of 19 digits (perhaps
# only inside a string) sends the text to the exact, slower standard library instead.
# Found by mapping every digit to 0 and looking for 19 zeros: far faster than a regex.
_DIGITS_TO_ZERO = bytes.maketrans(b"123456789", b"000000000")
_LONG_RUN = b"0" * 19


def may_hold_long_integer(text: bytes) -> bool:
    """Whether JSON `text` may hold an integer orjson would not read exactly."""
    return text.translate(_DIGITS_TO_ZERO).find(_LONG_RUN) >= 0
