"""Reading a backup object back and comparing it with the source documents."""

from __future__ import annotations

import csv
import io
import json
from typing import Any


def parse_jsonl(data: bytes) -> list[dict[str, Any]]:
    return [json.loads(line) for line in data.decode("utf-8").splitlines() if line]


def csv_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def parse_csv(data: bytes) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(data.decode("utf-8"), newline="")))


def docs_as_csv_rows(docs: list[dict[str, Any]]) -> list[dict[str, str]]:
    columns: dict[str, None] = {"_id": None} if docs else {}
    for doc in docs:
        columns.update(dict.fromkeys(doc))
    return [{c: csv_cell(doc.get(c)) for c in columns} for doc in docs]


def assert_object_equals_docs(data: bytes, docs: list[dict[str, Any]], file_type: str) -> None:
    """Raise AssertionError unless the backup holds exactly `docs`, in order."""
    found: list[Any] = parse_csv(data) if file_type == "csv" else parse_jsonl(data)
    expected: list[Any] = docs_as_csv_rows(docs) if file_type == "csv" else docs
    if found != expected:
        first = next((i for i, (a, b) in enumerate(zip(found, expected, strict=False)) if a != b), None)
        detail = f"; first difference at record {first}: {found[first]!r} != {expected[first]!r}" if first is not None else ""
        raise AssertionError(f"backup holds {len(found)} records, source {len(expected)}{detail}")
