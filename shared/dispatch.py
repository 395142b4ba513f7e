"""How a ready job reaches the finisher: in-process locally; SCF async invoke when hosted."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol


class Dispatcher(Protocol):
    def dispatch(self, job_id: str) -> None: ...


class InProcessDispatcher:
    """Runs the finisher right here (local runs, tests): same code path, no cloud."""

    def __init__(self, finish: Callable[[str], object]) -> None:
        self._finish = finish

    def dispatch(self, job_id: str) -> None:
        self._finish(job_id)
