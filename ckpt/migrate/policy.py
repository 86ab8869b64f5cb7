"""When to stop pre-copying and switch over: the downtime prediction of live migration.

Pre-copy sends the pages written since the previous iteration while the
target runs.  Switching over freezes the target and sends the last delta
plus all other state, so the downtime is about

    the cost of the last delta — what it will weigh on the wire ÷ the bandwidth
    measured so far, or the newest round's cost per page times its pages,
    whichever is more — + the fixed cost (freeze, non-memory state, restore
    at the destination).

The last delta is predicted from the newest iteration: the pages written
while it was being sent are what the next one must carry (the write rate is
taken as steady), shrunk by the compression ratio seen on the wire.  The
policy switches when that prediction fits ``max_downtime``, when iterations
stop converging (the predicted delta did not shrink by ``min_progress``
twice in a row: the target writes faster than the link drains), or at the
iteration cap — QEMU's and CRIU's migrators stop on the same three signals
(DESIGN §6).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..kernel.arch_x86_64 import PAGE_SIZE

__all__ = ["Iteration", "Decision", "SwitchPolicy", "DEFAULT_FIXED_COST"]

#: Freeze + non-memory state + the destination's finish, when nothing better is known; the
#: source replaces it with its probe's measured frozen time plus an estimate of the finish.
DEFAULT_FIXED_COST = 0.060


@dataclass(frozen=True)
class Iteration:
    """One pre-copy round as the source saw it."""

    index: int            # 0: the first, full copy
    pages: int            # pages sent (HERE): the ones written since the previous round
    raw_bytes: int        # their size before compression
    wire_bytes: int       # what went on the wire for this round (image files, framing)
    seconds: float        # from this round's get+clear to the destination's acknowledgement


@dataclass(frozen=True)
class Decision:
    switch: bool
    reason: str                # why (for the progress line and the stats)
    predicted_downtime: float  # seconds, for a switch now
    predicted_bytes: int       # the last delta on the wire


@dataclass
class SwitchPolicy:
    """Decides after each iteration; feed it with :meth:`record`."""

    max_downtime: float = 0.100
    max_iterations: int = 30
    min_progress: float = 0.10       # a round must shrink the predicted delta by this fraction
    fixed_cost: float = DEFAULT_FIXED_COST
    history: list[Iteration] = field(default_factory=list)

    def record(self, it: Iteration) -> None:
        self.history.append(it)

    @property
    def bandwidth(self) -> float:
        """Wire bytes per second of the rounds so far: pre-dump, compression and the link together."""
        secs = sum(it.seconds for it in self.history)
        return sum(it.wire_bytes for it in self.history) / secs if secs > 0 else 0.0

    @property
    def wire_ratio(self) -> float:
        """Wire bytes per raw byte of page data so far (compression; 1.0 before any data)."""
        raw = sum(it.raw_bytes for it in self.history)
        return sum(it.wire_bytes for it in self.history) / raw if raw else 1.0

    def dirty_rate(self) -> float:
        """Pages per second the target writes: the newest round carried what was written during the one before."""
        if len(self.history) < 2 or self.history[-2].seconds <= 0:
            return float("nan")
        return self.history[-1].pages / self.history[-2].seconds

    def predict(self) -> tuple[float, int]:
        """(downtime seconds, wire bytes) of a switch-over right now.

        The last delta holds what was written while the newest round ran: the
        dirty rate times that round's length.  Unknown after only the full
        copy (no rate yet): infinite.
        """
        rate = self.dirty_rate()
        if rate != rate:  # nan: no delta round yet
            return float("inf"), 0
        last = self.history[-1]
        pages = rate * last.seconds
        wire = int(pages * PAGE_SIZE * self.wire_ratio)
        bw = self.bandwidth
        by_link = wire / bw if bw > 0 else float("inf")
        # A delta round costs more per page than the full copy that dominates the bandwidth (its
        # tracker get+clear, image commit and staging do not shrink with the pages), and so does
        # the switch-over's last delta: the newest round's own cost per page is the better guess.
        by_round = pages * last.seconds / last.pages if last.pages else 0.0
        return max(by_link, by_round) + self.fixed_cost, wire

    def _stalled(self) -> int:
        """How many of the newest deltas in a row did not shrink by ``min_progress`` (the full copy aside)."""
        count = 0
        for i in range(len(self.history) - 1, 1, -1):
            if self.history[i].pages <= self.history[i - 1].pages * (1 - self.min_progress):
                break
            count += 1
        return count

    def decide(self) -> Decision:
        """Switch now, or run another pre-copy round."""
        seconds, wire = self.predict()
        n = len(self.history)
        if seconds <= self.max_downtime:
            return Decision(True, f"predicted downtime {seconds * 1e3:.0f} ms fits {self.max_downtime * 1e3:.0f} ms",
                            seconds, wire)
        if n >= self.max_iterations:
            return Decision(True, f"iteration cap ({self.max_iterations}) reached", seconds, wire)
        if self._stalled() >= 2:
            before, now = self.history[-2].pages, self.history[-1].pages
            return Decision(True, f"not converging ({before} → {now} pages per round)", seconds, wire)
        return Decision(False, f"predicted downtime {seconds * 1e3:.0f} ms > {self.max_downtime * 1e3:.0f} ms",
                        seconds, wire)
