"""Ctrl-C and the ending signals, held off while the controller's bookkeeping must not be cut.

A signal handler that raises (KeyboardInterrupt for Ctrl-C, the CLI's own for
SIGTERM/SIGHUP/SIGPIPE) strikes between any two bytecodes of the main thread.
In most places that is what we want: the ``with``/``finally`` blocks put the
target back.  But some steps keep the kernel and ckpt's view of a traced
thread in step — a ptrace resume and the note that it runs, a wait and the
note that it stopped — and an exception between the two leaves ckpt waiting
for a stop the kernel already reported (seen: a SIGTERM'd pre-dump hung for
ever in its release).  Inside :func:`deferred` a handler's exception is kept
and raised when the outermost block ends; blocking the signals with
``pthread_sigmask`` would not do, since the kernel then hands a process-wide
signal to one of ckpt's other threads and Python still raises in the main one.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["deferred", "interrupt", "take"]

_depth = 0
_pending: BaseException | None = None


@contextmanager
def deferred() -> Iterator[None]:
    """Hold off :func:`interrupt` until the (outermost) block ends; then raise what it kept."""
    global _depth, _pending
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
    if _depth == 0 and _pending is not None:
        exc, _pending = _pending, None
        raise exc


def interrupt(exc: BaseException) -> None:
    """Raise ``exc`` now, or when the current :func:`deferred` block ends (for signal handlers)."""
    global _pending
    if _depth:
        if _pending is None:
            _pending = exc
        return
    raise exc


def take() -> BaseException | None:
    """Take (and clear) the interruption a :func:`deferred` block holds, for a caller that finishes instead."""
    global _pending
    exc, _pending = _pending, None
    return exc
