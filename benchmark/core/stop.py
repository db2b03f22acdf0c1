"""A signal that asked this process to stop (SIGTERM, SLURM's requeue signal), kept until the command
ends so that it cannot be lost.

The CLI's handler raises its exception where the signal lands. Python drops an exception raised
inside a finalizer (``__del__``, a weakref callback: "Exception ignored in ..."), so a SIGTERM that
arrived while a finalizer ran left the grid training and the command exiting 0, and, the handler
counting it as seen, every later SIGTERM ignored. The handler records the exception here too, and
the places where stopping is safe (between batches, between runs, the command's end) raise it
again with :func:`raise_pending`. An exception that did propagate is caught by the CLI, which
clears the record, so nothing is raised twice.
"""

from __future__ import annotations

import signal
from typing import Any, TypeVar

E = TypeVar("E", bound=BaseException)

_pending: BaseException | None = None


def install(handlers: dict[int, Any]) -> dict[int, Any]:
    """Install signal handlers; returns the previous ones (none outside the main thread). A handler
    of None was installed outside Python: there is nothing to put back."""
    previous = {}
    for signum, handler in handlers.items():
        if handler is None:
            continue
        try:
            previous[signum] = signal.signal(signum, handler)
        except ValueError:  # not the main thread (an embedding caller): signals keep their handlers
            break
    return previous


def request(exc: E) -> E:
    """Record ``exc`` (the first signal's; a later one does not replace it) and return it, for the
    handler to raise."""
    global _pending
    if _pending is None:
        _pending = exc
    return exc


def raise_pending() -> None:
    """Raise the recorded stop, if any (its handler's exception never reached the command)."""
    if _pending is not None:
        raise _pending.with_traceback(None)


def clear() -> None:
    global _pending
    _pending = None
