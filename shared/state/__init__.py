"""The state table: runs, jobs and cached tokens, behind one protocol. Backends: SQL
(SQLite, MySQL) in `sql`, objects in the backup bucket in `cos`; `open_store` picks one."""

from shared.state.base import StateBackendError, StateStore, open_store

__all__ = ["StateBackendError", "StateStore", "open_store"]
