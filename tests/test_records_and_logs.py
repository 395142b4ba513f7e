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
