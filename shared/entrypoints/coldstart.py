"""A cold start with the garbage collector paused.

A cold start makes some 46,000 objects (modules, classes, pydantic's validators) and
almost none of them is garbage, yet the collector passes over them again and again as
they pile up: about a tenth of a handler's cold start on the build machine
(`scripts/bench package`, "ready"). So each handler file pauses it before its imports,
and the first invocation resumes it once its context is built (a doctor run, before its
checks: it is no cold start to hurry), freezing what the start made (`gc.freeze`): those
objects are never traversed again, so the invocation's own collections stay as small as
in a warm instance. What the start left as garbage (some
650 objects, cycles pydantic's schema building leaves) stays frozen with it: a
one-time cost per instance, smaller than the full collection that would free it (60-80
ms on the build machine)."""

from __future__ import annotations

import gc
import sys
from collections.abc import Callable
from functools import wraps
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")
# Loaded means this process already holds the handlers' code: not a cold start.
HANDLERS_MODULE = "shared.entrypoints.scf"


class _State:
    paused = False


def pause() -> None:
    """Pause collection for the imports ahead, in a process that has not loaded the
    handlers' code yet (a test loading a handler file in a warm process is left alone)
    and whose collector is on."""
    if HANDLERS_MODULE in sys.modules or not gc.isenabled():
        return
    gc.disable()
    _State.paused = True


def resume() -> None:
    """The cold start is over: what it made is frozen and collection is on again. Once;
    nothing when `pause` did not pause."""
    if not _State.paused:
        return
    _State.paused = False
    gc.freeze()
    gc.enable()


def ends_cold_start(handler: Callable[P, R]) -> Callable[P, R]:
    """`handler` resumes collection when it returns or raises, whatever path it took
    (one that built no context, such as a malformed event, included)."""

    @wraps(handler)
    def wrapped(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return handler(*args, **kwargs)
        finally:
            resume()

    return wrapped
