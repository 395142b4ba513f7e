"""The copier for each platform kind, chosen from what the registry says. Each copier's
module is imported when a job of its kind first needs it, so a cold start loads only the
copiers its sources use."""

from __future__ import annotations

import importlib
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from shared.service.context import Context
    from shared.service.copying import Copier

_COPIERS = {"export": "shared.service.copy_export:ExportCopier",
            "paged": "shared.service.copy_paged:PagedCopier"}
_built: dict[str, Copier] = {}
_lock = threading.Lock()  # the poller advances jobs from several threads


def copier_for(ctx: Context, source: str) -> Copier:
    kind = ctx.platforms.kind(source)
    with _lock:
        if kind not in _built:
            module, _, name = _COPIERS[kind].partition(":")
            _built[kind] = getattr(importlib.import_module(module), name)()
        return _built[kind]
