"""A wall-clock budget for CPU work that runs inside one request (sampling).

``with time_budget(60):`` sets a deadline for the code it wraps, in this
thread's context (``contextvars``: each request thread has its own), and
loops that may run long call ``check_deadline()`` once per step: one clock
read. Past the deadline it raises ``Unavailable`` naming the setting, so no
parameter choice (a temperature of 1e-308, a band no chain reaches) keeps a
server thread busy after the budget; ``cancel_on`` stops it sooner when the
client has gone.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from .errors import Unavailable

_DEADLINE: ContextVar[tuple[float, float] | None] = ContextVar("oodsynth_deadline", default=None)
_CANCEL: ContextVar[threading.Event | None] = ContextVar("oodsynth_cancel", default=None)


@contextmanager
def cancel_on(event: threading.Event) -> Iterator[None]:
    """``check_deadline`` also stops the body once ``event`` is set (e.g. the client went away)."""
    token = _CANCEL.set(event)
    try:
        yield
    finally:
        _CANCEL.reset(token)


@contextmanager
def time_budget(seconds: float | None) -> Iterator[None]:
    """Run the body under a budget of ``seconds`` (no budget when None)."""
    token = _DEADLINE.set(None if seconds is None else (time.monotonic() + seconds, seconds))
    try:
        yield
    finally:
        _DEADLINE.reset(token)


def check_deadline() -> None:
    """Raise ``Unavailable`` when the enclosing ``time_budget`` has run out or its request was cancelled."""
    cancel = _CANCEL.get()
    if cancel is not None and cancel.is_set():
        raise Unavailable("request", "the request was cancelled (the client went away)")
    limit = _DEADLINE.get()
    if limit is not None and time.monotonic() > limit[0]:
        raise Unavailable(
            "sample_time_budget_s",
            f"the sampler ran past its time budget of {limit[1]:g} s "
            "(settings OODSYNTH_SAMPLE_TIME_BUDGET_S); ask for fewer vectors or change its params",
        )
