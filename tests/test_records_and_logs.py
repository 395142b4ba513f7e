"""Record counting across arbitrary chunk boundaries, and the log redactor."""

from __future__ import annotations

import csv
import io
import json
import logging
import random

import pytest

from devkit.compare import docs_as_csv_rows
from devkit.sample_data import make_docs
from shared.domain.layout import data_key, safe_segment
from shared.domain.records import CsvCounter, JsonLinesCounter
from shared.logs import JsonFormatter, log_context, redact, register_secret


def chunked(data: bytes, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    pieces, index = [], 0
    while index < len(data):
        step = rng.randint(1, 64)
        pieces.append(data[index:index + step])
        index += step
    return pieces


@pytest.mark.parametrize("seed", range(5))
def test_csv_counter_matches_the_csv_module(seed: int) -> None:
    rows = docs_as_csv_rows(make_docs(200, seed=seed))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    counter = CsvCounter()
    for piece in chunked(buffer.getvalue().encode(), seed):
        counter.feed(piece)
    assert counter.total == 200


def test_jsonl_counter_counts_a_last_line_without_newline() -> None:
    counter = JsonLinesCounter()
    for piece in chunked(b'{"a":1}\n{"b":"\xe4\xb8\xad"}\n{"c":3}', 1):
        counter.feed(piece)
    assert counter.total == 3
    assert JsonLinesCounter().total == 0 and CsvCounter().total == 0


def reference_jsonl_count(data: bytes) -> tuple[int, int]:
    """(records, invalid) by parsing every line with the standard library."""
    records = invalid = 0
    for line in data.removeprefix(b"\xef\xbb\xbf").split(b"\n"):
        if not line.strip():
            continue
        try:
            is_object = isinstance(json.loads(line.decode("utf-8")), dict)
        except ValueError:
            is_object = False
        records, invalid = (records + 1, invalid) if is_object else (records, invalid + 1)
    return records, invalid


@pytest.mark.parametrize("seed", range(8))
def test_jsonl_counter_matches_parsing_every_line(seed: int) -> None:
    """Whatever mix of objects, blank, padded, CRLF and broken lines, and whatever the
    chunk sizes (small ones cut every line, large ones take whole runs of lines at once),
    the counts are those of parsing every line."""
    rng = random.Random(seed)
    objects = [json.dumps(doc, ensure_ascii=rng.random() < 0.5).encode()
               for doc in make_docs(300, seed=seed)]
    odd = [b"", b"   ", b"\r", b"[1]", b'"text"', b"not json", b"{", b"}", b"{}", b"{\"a\": 1",
           b'"a": 1}', b"  {\"padded\": true}  ", b'{"crlf": 1}\r', b"\xff{}", b"{\"x\": NaN}"]
    lines = [rng.choice(odd) if rng.random() < 0.05 * (seed % 4) else rng.choice(objects)
             for _ in range(3000)]
    data = (b"\xef\xbb\xbf" if seed % 2 else b"") + b"\n".join(lines)
    if seed % 3:
        data += b"\n"
    size = [64, 4096, 65536, 1 << 20][seed % 4]
    counter = JsonLinesCounter()
    index = 0
    while index < len(data):
        step = rng.randint(1, size)
        counter.feed(data[index:index + step])
        index += step
    assert (counter.total, counter.invalid) == reference_jsonl_count(data)


def test_jsonl_counter_refuses_lines_shaped_like_objects_that_are_not_json() -> None:
    """Another format whose lines look like objects (a shell's dump, Python reprs) is not
    taken for JSON Lines by the quick check on whole runs of lines."""
    lines = b"".join(b'{ "_id" : ObjectId("%024d"), "n" : %d }\n' % (i, i) for i in range(5000))
    counter = JsonLinesCounter()
    for index in range(0, len(lines), 65536):
        counter.feed(lines[index:index + 65536])
    assert counter.total == 0 and counter.invalid == 5000


def test_jsonl_counter_drops_a_byte_order_mark_cut_by_a_chunk_boundary() -> None:
    counter = JsonLinesCounter()
    for piece in (b"\xef", b"\xbb", b'\xbf{"a": 1}\n{"b": 2}\n'):
        counter.feed(piece)
    assert counter.total == 2 and counter.invalid == 0


def test_keys_stay_under_the_prefix_whatever_the_name() -> None:
    for name in ["../../etc/passwd", "..", ".", "a/b", "订单 2024", "x%2F"]:
        key = data_key("backups", "run1", "shop", name, "json")
        assert key.startswith("backups/runs/run1/shop/") and key.count("/") == 4
        assert ".." not in key.split("/")
    assert safe_segment("订单") != safe_segment("订单 ")


def test_redaction_covers_urls_bodies_headers_and_known_values() -> None:
    register_secret("my-registered-secret-1")
    text = redact(
        'POST https://api.weixin.qq.com/tcb/x?access_token=TOKEN123 '
        'GET http://cos/x.json?q-sign-algorithm=sha1&q-signature=abc '
        '{"access_token": "tok", "secret": "s"} Authorization: Bearer eyJ.x.y '
        'value my-registered-secret-1'
    )
    for leaked in ("TOKEN123", "q-signature=abc", '"tok"', '"s"', "eyJ.x.y", "my-registered-secret-1"):
        assert leaked not in text


def test_log_lines_are_json_with_context() -> None:
    record = logging.LogRecord("t", logging.INFO, __file__, 1, "copy %s", ("done",), None)
    record.bytes = 10
    with log_context(run_id="r1", job_id="j1"):
        line = JsonFormatter().format(record)
    entry = json.loads(line)
    assert entry["message"] == "copy done" and entry["run_id"] == "r1" and entry["job_id"] == "j1"
    assert entry["bytes"] == 10
