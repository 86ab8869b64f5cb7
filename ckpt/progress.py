"""Progress events of long operations, and the terminal renderer the CLI uses.

The API never prints: ``dump()``/``restore()`` hand :class:`ProgressEvent`s to
a caller's callback (the orchestrators' phase hook, now carrying byte counts).
The CLI renders them only when stderr is a terminal, so logs, pipes and cron
mails stay quiet.  Rendering uses ``tqdm`` (imported lazily, on the tty path
only): it already does the one ``\\r``-updated line, SI byte units, a smoothed
rate, throttled redraws and clearing the line at the end, with no dependencies
of its own — ``rich`` would do the same at several times the import cost.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Any

__all__ = ["ProgressEvent", "PhaseCallback", "TerminalProgress", "progress_for"]


@dataclass(frozen=True)
class ProgressEvent:
    """One step of a dump or restore.

    ``phase`` names the step ("frozen", "records", "memory", "committed" for a
    dump; "memory", "filled" for a restore).  During "memory" events repeat with
    ``done_bytes`` growing (bytes of page data read from the target, or written
    into the restored process); ``total_bytes`` is 0 when unknown beforehand
    (a dump learns what it stores while scanning pagemap).
    """

    phase: str
    done_bytes: int = 0
    total_bytes: int = 0


PhaseCallback = Callable[[ProgressEvent], None]


class TerminalProgress:
    """Renders memory events as one updating line on ``stream``; cleared by :meth:`close`."""

    def __init__(self, stream: IO[str], verb: str) -> None:
        self._stream = stream
        self._verb = verb
        self._bar: Any = None
        self._done = 0

    def __call__(self, ev: ProgressEvent) -> None:
        if ev.phase != "memory":
            self.close()
            return
        if self._bar is None:
            from tqdm import tqdm  # only ever imported when stderr is a terminal

            self._bar = tqdm(total=ev.total_bytes or None, desc=self._verb, unit="B", unit_scale=True,
                             leave=False, file=self._stream, dynamic_ncols=True)
            # Redrawn at most every 0.1 s (tqdm's default; TQDM_MININTERVAL overrides it).
        if ev.done_bytes > self._done:
            self._bar.update(ev.done_bytes - self._done)
            self._done = ev.done_bytes

    def close(self) -> None:
        """Clear the line (``leave=False``); safe to call twice."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def progress_for(stream: IO[str], verb: str) -> TerminalProgress | None:
    """A renderer when ``stream`` is a terminal, else None (no output, tqdm never imported)."""
    try:
        tty = os.isatty(stream.fileno())
    except (AttributeError, ValueError, OSError):
        tty = False
    return TerminalProgress(stream, verb) if tty else None
