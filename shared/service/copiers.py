"""The copier for each platform kind, chosen once from what the registry says."""

from __future__ import annotations

from typing import TYPE_CHECKING

from shared.service.copy_export import ExportCopier
from shared.service.copy_paged import PagedCopier
from shared.service.copying import Copier

if TYPE_CHECKING:
    from shared.service.context import Context

COPIERS: dict[str, Copier] = {"export": ExportCopier(), "paged": PagedCopier()}


def copier_for(ctx: Context, source: str) -> Copier:
    return COPIERS[ctx.platforms.kind(source)]
