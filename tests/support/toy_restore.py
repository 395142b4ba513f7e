"""A toy platform that can be backed up and restored, for the status page's restore tests
while the real platforms' restore methods are written elsewhere: an export-kind platform
(ExportPlatform) that imports whole backup files (FileImportPlatform, shared/ports.py),
its database one JSON file (`data_file`), so the test and `baas-backup serve` in its own
process see the same collections. An import moves through its statuses like WeChat's:
running at the first check, done at the next (while a file `<data_file>.hold` exists, not
before it is deleted), reporting what it wrote and rejected.

`python -m tests.support.toy_restore <baas-backup arguments>` is the CLI with this
platform registered (type `toy-files`)."""

from __future__ import annotations

import json
import os
import sys
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from shared.config.fields import SourceSettings
from shared.platforms import registry
from shared.ports import ImportProgress, PlatformServices, Progress, RestoreMode

TYPE = "toy-files"
_LOCK = threading.Lock()  # the poller thread and the HTTP threads share the file


class ToyFilesSource(SourceSettings):
    type: Literal["toy-files"]
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")
    collections: list[str]
    data_file: str


def read(path: str | Path) -> dict[str, Any]:
    """The whole database: {"tables": {name: rows}, "imports": {id: import}}."""
    try:
        data: dict[str, Any] = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        data = {}
    data.setdefault("tables", {})
    data.setdefault("imports", {})
    return data


def write(path: str | Path, data: dict[str, Any]) -> None:
    part = Path(f"{path}.{os.getpid()}.{threading.get_ident()}.tmp")
    part.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    os.replace(part, path)


class ToyFiles:
    file_type = "json"
    restore_modes = frozenset({"new", "insert", "upsert"})

    def __init__(self, source: ToyFilesSource, services: PlatformServices) -> None:
        self.source = source
        self.path = source.data_file

    def _tables(self) -> dict[str, list[dict[str, Any]]]:
        tables: dict[str, list[dict[str, Any]]] = read(self.path)["tables"]
        return tables

    # backing up
    def collections(self) -> list[str]:
        return list(self.source.collections)

    def discovery(self) -> dict[str, Any] | None:
        return None

    def start_blocked(self) -> str | None:
        return None

    def start(self, collection: str, job_id: str) -> str:
        return f"toy-export-{collection}"

    def check(self, collection: str, platform_job_id: str) -> Progress:
        return Progress("ready", expected_records=len(self._tables()[collection]))

    def open(self, collection: str, platform_job_id: str, part: int = 0, *,
             file_type: str | None = None) -> Iterator[bytes]:
        for row in self._tables()[collection]:
            yield json.dumps(row, ensure_ascii=False).encode() + b"\n"

    # restoring
    def target_exists(self, collection: str) -> bool:
        return collection in self._tables()

    def create_target(self, collection: str, like: str) -> None:
        with _LOCK:
            data = read(self.path)
            data["tables"].setdefault(collection, [])
            write(self.path, data)

    def count(self, collection: str) -> int:
        return len(self._tables().get(collection, []))

    def send_import(self, collection: str, mode: RestoreMode, *, file_type: str, name: str,
                    chunks: Iterable[bytes], size: int) -> str | None:
        received = b"".join(chunks)  # all of it: the last chunk's end checks the SHA-256
        rows = [json.loads(line) for line in received.splitlines() if line.strip()]
        with _LOCK:
            data = read(self.path)
            import_id = f"toy-import-{len(data['imports']) + 1}"
            data["imports"][import_id] = {"collection": collection, "mode": mode, "name": name,
                                          "rows": rows, "checks": 0, "state": "running"}
            write(self.path, data)
        return import_id

    def check_import(self, collection: str, import_id: str) -> ImportProgress:
        with _LOCK:
            data = read(self.path)
            job = data["imports"][import_id]
            job["checks"] += 1
            held = Path(f"{self.path}.hold").exists()  # a test keeps the import running
            if job["state"] == "running" and job["checks"] >= 2 and not held:
                table = data["tables"].setdefault(job["collection"], [])
                where = {row.get("_id"): index for index, row in enumerate(table)}
                imported = rejected = 0
                for row in job["rows"]:
                    there = where.get(row.get("_id"))
                    if there is None:
                        where[row.get("_id")] = len(table)
                        table.append(row)
                        imported += 1
                    elif job["mode"] == "upsert":
                        table[there] = row
                        imported += 1
                    else:
                        rejected += 1
                job.update(state="done", imported=imported, rejected=rejected)
            write(self.path, data)
        if job["state"] == "running":
            return ImportProgress("running")
        return ImportProgress("done", imported=job["imported"], rejected=job["rejected"])


def register() -> None:
    registry.register(registry.PlatformEntry(TYPE, ToyFilesSource, ToyFiles, "export"))  # type: ignore[arg-type]


def unregister() -> None:
    registry.unregister(TYPE)


if __name__ == "__main__":
    register()
    from shared.entrypoints.cli import main

    sys.exit(main(sys.argv[1:]))
