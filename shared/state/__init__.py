"""The state table: runs, jobs and cached tokens, behind one protocol."""

from shared.state.base import StateStore, open_store

__all__ = ["StateStore", "open_store"]
