"""A fourth platform that lives entirely in the test tree: one settings model, one
export-kind client and one paged-kind client over rows held in memory. Registered
through the public registry by the test that uses it, to prove a new platform needs
no change under shared/ beyond its registry line."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any, ClassVar, Literal

from pydantic import Field

from shared.config.fields import SourceSettings
from shared.ports import Page, PlatformServices, Progress


class ToySource(SourceSettings):
    type: Literal["toy-export", "toy-paged"]
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")
    collections: list[str]
    file_type: Literal["json"] = "json"


class ToyData:
    """The toy platform's whole database: collection -> rows."""

    tables: ClassVar[dict[str, list[dict[str, Any]]]] = {}


class ToyExports:
    """Export kind: an export is ready on the second check."""

    def __init__(self, source: ToySource, services: PlatformServices) -> None:
        self.source = source
        self.file_type = source.file_type
        self.checks: dict[str, int] = {}

    def collections(self) -> list[str]:
        return list(self.source.collections)

    def discovery(self) -> dict[str, Any] | None:
        return None

    def start_blocked(self) -> str | None:
        return None

    def start(self, collection: str, job_id: str) -> str:
        return f"toy-export-{collection}"

    def check(self, collection: str, platform_job_id: str) -> Progress:
        self.checks[collection] = self.checks.get(collection, 0) + 1
        if self.checks[collection] < 2:
            return Progress("running")
        return Progress("ready", expected_records=len(ToyData.tables[collection]))

    def open(self, collection: str, platform_job_id: str, part: int = 0, *,
             file_type: str | None = None) -> Iterator[bytes]:
        for row in ToyData.tables[collection]:
            yield json.dumps(row).encode() + b"\n"


class ToyPages:
    """Paged kind: three rows a page, the cursor is the next offset."""

    page_rows = 3

    def __init__(self, source: ToySource, services: PlatformServices) -> None:
        self.source = source
        self.file_type = source.file_type

    def collections(self) -> list[str]:
        return list(self.source.collections)

    def discovery(self) -> dict[str, Any] | None:
        return None

    def fetch_page(self, collection: str, cursor: dict[str, Any] | None) -> Page:
        start = int((cursor or {}).get("offset", 0))
        rows = ToyData.tables[collection][start:start + self.page_rows]
        following = start + self.page_rows
        more = following < len(ToyData.tables[collection])
        return Page(answer=rows, next_cursor={"offset": following} if more else None)

    def encode_page(self, page: Page) -> tuple[bytes, int]:
        rows = page.answer
        return b"".join(json.dumps(r).encode() + b"\n" for r in rows), len(rows)
