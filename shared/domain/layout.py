"""Where objects go in the bucket. Every key stays under the prefix whatever a
collection is called: names are percent-encoded into a single path segment."""

from __future__ import annotations

import string

_SAFE = frozenset(string.ascii_letters + string.digits + "_-")
EXTENSIONS = {"json": "jsonl", "csv": "csv"}
CONTENT_TYPES = {"json": "application/x-ndjson; charset=utf-8", "csv": "text/csv; charset=utf-8"}


def safe_segment(name: str) -> str:
    """Reversible, one segment, never '.' or '..': keep [A-Za-z0-9_-], %XX the rest."""
    return "".join(ch if ch in _SAFE else "".join(f"%{b:02X}" for b in ch.encode()) for ch in name)


def _join(*parts: str) -> str:
    return "/".join(p for p in parts if p)


def run_folder(prefix: str, run_id: str) -> str:
    return _join(prefix, "runs", safe_segment(run_id))


def data_key(prefix: str, run_id: str, source: str, collection: str, file_type: str) -> str:
    name = f"{safe_segment(collection)}.{EXTENSIONS[file_type]}"
    return _join(run_folder(prefix, run_id), safe_segment(source), name)


def part_key(data_object_key: str, number: int) -> str:
    """`orders.jsonl` -> `orders.part-0002.jsonl`: numbered parts of one backup."""
    stem, _, extension = data_object_key.rpartition(".")
    return f"{stem}.part-{number:04d}.{extension}"


def parked_key(data_object_key: str) -> str:
    """Where a paused paged copy keeps the rows it read but has not uploaded yet."""
    return f"{data_object_key}.parked"


def manifest_key(data_object_key: str) -> str:
    return f"{data_object_key}.manifest.json"


def prune_record_key(prefix: str, name: str) -> str:
    return _join(prefix, "prunes", f"{name}.json")


def run_manifest_key(prefix: str, run_id: str) -> str:
    return _join(run_folder(prefix, run_id), "run-manifest.json")


def restore_manifest_key(prefix: str, restore_id: str) -> str:
    return _join(prefix, "restores", f"{safe_segment(restore_id)}.json")
