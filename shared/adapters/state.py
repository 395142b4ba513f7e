"""Opens the state backend that `state.url` names: SQL (SQLite, MySQL) or objects in the
backup bucket (`cos://`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from qcloud_cos import CosS3Client

    from shared.config import Destination, StateSettings
    from shared.ports import StateStore


def open_store(
    state: StateSettings | str,
    destination: Destination | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    client: CosS3Client | None = None,
) -> StateStore:
    """The backend `state.url` names. `cos://` keeps the state in `destination`'s bucket
    (through `client` when given); a plain string is an already resolved URL (password
    included)."""
    url = state if isinstance(state, str) else state.resolved_url()
    if url.startswith("cos://"):
        if destination is None:
            raise ValueError("state.url cos:// keeps the state in the destination bucket; "
                             "open_store needs that destination")
        from shared.adapters.cos.state import CosStateStore

        return CosStateStore(destination, environ, client=client)
    from shared.adapters.sql_state import SqlStateStore

    return SqlStateStore(url)
