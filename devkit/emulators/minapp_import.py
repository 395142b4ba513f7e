"""The MinApp emulator's table schemas and data import, apart from its HTTP plumbing.

Our reading of MinApp's documents (each a lead to confirm on the real platform):

- Tables (ifanrx/hydrogen-sdk-doc, open-api/data/table.md, 创建数据表): a name of a
  letter then letters, digits and ``_`` (at most 32); ``schema.fields`` with ``name`` and
  ``type`` (string, integer, number, boolean, array, object, geojson, file, date,
  reference); ``id``, ``created_by``, ``created_at`` and ``updated_at`` are built-in
  fields added by the platform, and column names starting with ``_`` are the platform's
  own (dashboard/basic-services/schema.md): the emulator refuses them in a create call.
- Import (seeds/minapp-table-export-import.zh.txt, 数据导入): ``POST
  /oserve/v1/table/:table_id/import/``, multipart/form-data with the file in ``file``;
  201 once the task is created, 400 for an invalid file. CSV or JSON; the format is
  "in the help centre", which we take to be what the export writes: JSON Lines (one
  object per line) or CSV with a header row. The task runs later (导入或导出操作并非实时,
  dashboard/basic-services/schema.md) and its result is e-mailed: the emulator applies
  it ``import_delay`` seconds later and keeps the e-mail as a report.
- A record keeps the ``id`` (or ``_id``) it is imported with, so an export imports back
  equal; a record whose id the table already holds is skipped (reported, not written).
  Built-in fields (``id``, ``_id``, ``created_at``, ``created_by``, ``updated_at``,
  ``read_perm``, ``write_perm``, anything starting with ``_``) are kept as given; other
  fields must be columns of the table, and a value of the wrong type is dropped, as the
  record API does ("对于不合法的数据, 知晓云会进行过滤", js-sdk create-record docs).
  CSV cells are read by the column's type (an empty cell is null).
"""

from __future__ import annotations

import csv
import itertools
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any

__all__ = [
    "BUILTIN_FIELDS",
    "FIELD_TYPES",
    "ImportFileError",
    "MultipartError",
    "MultipartFile",
    "check_import_file",
    "infer_schema",
    "is_builtin",
    "read_import_records",
    "receive_multipart",
    "valid_name",
]

BUILTIN_FIELDS = ("id", "_id", "created_at", "created_by", "updated_at", "read_perm", "write_perm")
FIELD_TYPES = ("string", "integer", "number", "boolean", "array", "object", "geojson", "file",
               "date", "reference")
_NAME_RE = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,31}")
MAX_PART_HEADERS = 16 * 1024
MAX_SMALL_FIELD = 64 * 1024


def valid_name(name: Any) -> bool:
    """A table or column name as table.md allows it: a letter, then letters, digits, _."""
    return isinstance(name, str) and _NAME_RE.fullmatch(name) is not None


def is_builtin(name: str) -> bool:
    return name in BUILTIN_FIELDS or name.startswith("_")


def _type_of(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def infer_schema(records: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """A schema for a table given by its records (add_table): each non-built-in field
    once, typed by its first non-null value (integer and number meet as number)."""
    types: dict[str, str | None] = {}
    items: dict[str, str] = {}
    for record in records:
        for key, value in record.items():
            if is_builtin(key):
                continue
            found = _type_of(value)
            known = types.get(key)
            if known is None:
                types[key] = found
            elif {known, found} == {"integer", "number"}:
                types[key] = "number"
            if found == "array" and value and key not in items:
                items[key] = _type_of(value[0]) or "string"
    fields = []
    for key, kind in types.items():
        entry: dict[str, Any] = {"name": key, "type": kind or "string", "description": key}
        if entry["type"] == "array":
            entry["items"] = {"type": items.get(key, "string")}
        fields.append(entry)
    return {"fields": fields}


def _fits(kind: str, value: Any) -> bool:
    if value is None:
        return True
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "boolean":
        return isinstance(value, bool)
    if kind in ("string", "date"):
        return isinstance(value, str)
    if kind == "array":
        return isinstance(value, list)
    if kind in ("object", "geojson", "file"):
        return isinstance(value, dict)
    return True  # reference and anything newer: taken as given


def _from_cell(kind: str, cell: str) -> Any:
    """A CSV cell as a value of the column's type (what the export's cells hold)."""
    if cell == "":
        return None
    if kind == "integer":
        return int(cell)
    if kind == "number":
        number = float(cell)
        return int(cell) if re.fullmatch(r"-?[0-9]+", cell) else number
    if kind == "boolean":
        if cell not in ("true", "false"):
            raise ValueError(f"not a boolean: {cell!r}")
        return cell == "true"
    if kind in ("array", "object", "geojson", "file"):
        return json.loads(cell)
    return cell


_BUILTIN_CELL_TYPES = {"created_at": "integer", "updated_at": "integer", "created_by": "integer",
                       "read_perm": "array", "write_perm": "array"}


# --------------------------------------------------------------------------- import files


class ImportFileError(ValueError):
    """A file the import refuses as a whole (HTTP 400 无效的文件)."""


def check_import_file(path: str, file_type: str) -> int:
    """How many records the file holds; ImportFileError when it is not a JSON Lines or CSV
    file the import can read."""
    try:
        return sum(1 for _ in _raw_records(path, file_type))
    except UnicodeDecodeError:
        raise ImportFileError("the file is not UTF-8") from None


def _raw_records(path: str, file_type: str) -> Iterator[dict[str, Any]]:
    with open(path, encoding="utf-8-sig", newline="") as handle:
        if file_type == "json":
            seen = False
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except ValueError:
                    raise ImportFileError(f"line {number} is not JSON") from None
                if not isinstance(record, dict):
                    raise ImportFileError(f"line {number} is not a JSON object")
                seen = True
                yield record
            if not seen:
                raise ImportFileError("the file holds no record")
            return
        reader = csv.reader(handle)
        header = next(reader, None)
        if not header or any(not name for name in header) or len(set(header)) != len(header):
            raise ImportFileError("the CSV file has no header row of distinct column names")
        for number, row in enumerate(reader, start=2):
            if len(row) != len(header):
                raise ImportFileError(f"CSV row {number} has {len(row)} cells, the header {len(header)}")
            yield dict(zip(header, row, strict=True))


@dataclass
class ImportOutcome:
    records: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # why each skipped record was skipped
    dropped_values: int = 0  # values left out: unknown column or wrong type


def read_import_records(path: str, file_type: str, schema: dict[str, Any],
                        taken_ids: set[str], new_id: Any) -> ImportOutcome:
    """The records an import of the file writes, typed by the table's `schema`.
    `taken_ids` (updated) are the ids the table holds; `new_id()` makes one."""
    columns = {f["name"]: str(f.get("type") or "string") for f in schema.get("fields") or []
               if isinstance(f, dict) and isinstance(f.get("name"), str)}
    outcome = ImportOutcome()
    from_csv = file_type == "csv"
    for index, raw in enumerate(_raw_records(path, file_type)):
        record: dict[str, Any] = {}
        try:
            for key, given in raw.items():
                kind = columns.get(key) or _BUILTIN_CELL_TYPES.get(key, "string")
                value = _from_cell(kind, given) if from_csv else given
                if is_builtin(key) or (key in columns and _fits(kind, value)):
                    record[key] = value
                else:
                    outcome.dropped_values += 1
        except ValueError as exc:
            outcome.skipped.append(f"record {index + 1}: {exc}")
            continue
        ids = {str(record[k]) for k in ("id", "_id") if record.get(k) is not None}
        if len(ids) > 1:
            outcome.skipped.append(f"record {index + 1}: id and _id differ")
            continue
        record_id = ids.pop() if ids else str(new_id())
        if record_id in taken_ids:
            outcome.skipped.append(f"record {index + 1}: id {record_id} exists already")
            continue
        taken_ids.add(record_id)
        record.setdefault("id", record_id)
        outcome.records.append(record)
    return outcome


# --------------------------------------------------------------------------- multipart


class MultipartError(ValueError):
    """A multipart/form-data body the emulator cannot read."""


@dataclass
class MultipartFile:
    filename: str
    content_type: str
    size: int


def _boundary(content_type: str) -> bytes:
    kind, _, params = content_type.partition(";")
    if kind.strip().lower() != "multipart/form-data":
        raise MultipartError("send the file as multipart/form-data")
    match = re.search(r'boundary="?([^";]+)"?', params)
    if not match:
        raise MultipartError("the multipart Content-Type has no boundary")
    return match.group(1).encode("latin-1")


def _disposition(headers: bytes) -> tuple[str, str | None, str]:
    """(field name, file name or None, part Content-Type) of one part's headers."""
    text = headers.decode("utf-8", "replace")
    name = filename = None
    content_type = "application/octet-stream"
    for line in text.split("\r\n"):
        key, _, value = line.partition(":")
        if key.strip().lower() == "content-disposition":
            found = re.search(r'(?:^|;)\s*name="([^"]*)"', value)
            name = found.group(1) if found else None
            found = re.search(r'filename="([^"]*)"', value)
            filename = found.group(1) if found else None
        elif key.strip().lower() == "content-type":
            content_type = value.strip()
    if name is None:
        raise MultipartError("a part has no Content-Disposition name")
    return name, filename, content_type


def receive_multipart(content_type: str, chunks: Iterable[bytes], file_field: str,
                      out: IO[bytes]) -> tuple[MultipartFile | None, dict[str, str]]:
    """Stream a multipart/form-data body: the `file_field` part's content goes to `out`
    (never held whole), small fields come back as text. Returns (the file, or None when
    the body had no such part; the other fields)."""
    boundary = _boundary(content_type)
    delimiter = b"\r\n--" + boundary
    buffer = b"\r\n"  # the first delimiter has no CRLF before it; pretend it has
    state = "preamble"
    fields: dict[str, str] = {}
    found: MultipartFile | None = None
    name, filename, part_type, small = "", None, "", bytearray()
    written = 0

    def emit(data: bytes) -> None:
        nonlocal written
        if not data:
            return
        if name == file_field and filename is not None:
            if found is None:
                out.write(data)
            written += len(data)
        else:
            small.extend(data)
            if len(small) > MAX_SMALL_FIELD:
                raise MultipartError(f"field {name!r} is too large")

    pending: Iterable[bytes | None] = itertools.chain(chunks, [None])
    for chunk in pending:
        if chunk is not None:
            buffer += chunk
        while True:
            if state == "preamble":
                at = buffer.find(delimiter)
                if at < 0:
                    buffer = buffer[-len(delimiter):]
                    break
                buffer = buffer[at + len(delimiter):]
                state = "after-delimiter"
            if state == "after-delimiter":
                if len(buffer) < 2:
                    break
                if buffer.startswith(b"--"):
                    if found is None and name == file_field and filename is not None:
                        found = MultipartFile(filename, part_type, written)
                    return found, fields
                if not buffer.startswith(b"\r\n"):
                    raise MultipartError("a boundary is not followed by CRLF")
                buffer = buffer[2:]
                state = "headers"
            if state == "headers":
                end = buffer.find(b"\r\n\r\n")
                if end < 0:
                    if len(buffer) > MAX_PART_HEADERS:
                        raise MultipartError("a part's headers are too long")
                    break
                name, filename, part_type = _disposition(buffer[:end])
                buffer = buffer[end + 4:]
                small = bytearray()
                state = "body"
            if state == "body":
                at = buffer.find(delimiter)
                if at < 0:
                    keep = len(delimiter) - 1
                    if chunk is None:
                        raise MultipartError("the body ends inside a part")
                    emit(buffer[:-keep] if len(buffer) > keep else b"")
                    buffer = buffer[-keep:] if len(buffer) > keep else buffer
                    break
                emit(buffer[:at])
                buffer = buffer[at + len(delimiter):]
                if name == file_field and filename is not None and found is None:
                    found = MultipartFile(filename, part_type, written)
                elif filename is None:
                    fields[name] = small.decode("utf-8", "replace")
                state = "after-delimiter"
                continue
            break
        if chunk is None:
            break
    raise MultipartError("the body ends before the closing boundary")
