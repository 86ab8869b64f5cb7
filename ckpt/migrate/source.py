"""The source side of live migration: pre-copy rounds, then the frozen switch-over.

Each round is a pre-dump (only the pages written since the previous one, the
target running) into a local work directory, sent to the destination as an
image directory; :class:`~ckpt.migrate.policy.SwitchPolicy` decides after
each round whether to switch.  The switch-over is a final delta dump whose
``end_target`` hook runs with the target still frozen, as a commit in two steps
(DESIGN §6: at most one copy ever runs; protocol 2 — with a ckpt 0.1.0
destination, which speaks protocol 1, the destination runs its copy as soon
as it is built and says "running", without steps "restored" and "commit", so
a source killed between that and ending its original leaves two copies):

1. the final image goes over; "restore": the destination builds the process
   and holds it frozen before letting it go; "restored".  Anything failing up
   to here — the link, its restore, a timeout, Ctrl-C, either ckpt killed —
   lets the source run on (the dump's hook raises and the dump thaws it, or
   ckpt's death ends the ptrace stop), and the destination kills what it built
   when the link ends without a commit;
2. the source writes its record of the switch-over to disk
   (:class:`~ckpt.migrate.journal.SourceRecord`), queues SIGSTOP to its frozen
   original (a hold that survives ckpt's death, unlike the ptrace stop), then
   sends "commit"; the destination records the commit in its journal, lets
   its copy go, records that, and says "running"; the source kills its
   original and removes its record.  Ctrl-C and SIGTERM wait for the end of
   this step.  If "commit" cannot be sent, the hold is taken back and the
   source runs on; if the destination reports its copy failed, likewise.  If
   the link ends after the commit without an answer, the outcome is in doubt:
   the original stays stopped (:class:`~ckpt.errors.MigrationInDoubt`, exit
   1) and :func:`recover` (``ckpt migrate --recover``) later asks the
   receiver's journal whether its copy runs, then ends or resumes the
   original.  A SIGKILLed source after its hold leaves the same: the original
   stopped, its record on disk, the destination's copy running if the commit
   reached it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

from .. import interrupts, testpoint
from ..control.seize import hold_stopped, unhold
from ..errors import CkptError, MigrationInDoubt, Unsupported, UsageError
from ..image.store import make_held_tmp
from ..kernel.arch_x86_64 import PAGE_SIZE
from ..procfs.timens import read_boot_id
from . import handover
from .journal import OUTCOMES, SourceRecord, new_migration_id, starttime
from .policy import Iteration, SwitchPolicy
from .wire import Channel, PeerError, WireError

if TYPE_CHECKING:
    from .tls import TlsConfig

__all__ = ["DestReads", "MigrateStats", "RoundReport", "migrate", "recover"]

#: Inside the downtime besides the source's frozen state dump (measured by a probe) and the
#: last delta: the destination's staged finish (13-30 ms for 1 GiB here) and the last round
#: trips of the final image and its answers.
FINISH_ESTIMATE = 0.035


@dataclass(frozen=True)
class DestReads:
    """The images the destination restores: its formats (oldest, newest) and features (protocol 2's ``ready``).

    A protocol-1 destination (ckpt 0.1.0) says nothing: it reads formats 1-2
    and knows the features every image listed before the list existed.
    """

    software: str
    formats: tuple[int, int]
    features: frozenset[str]

    @classmethod
    def of(cls, ch: Channel, ready: dict) -> DestReads:
        software = f"ckpt {ch.peer_software}" if ch.peer_software else "its ckpt"
        images = ready.get("images")
        formats = images.get("formats") if isinstance(images, dict) else None
        features = images.get("features") if isinstance(images, dict) else None
        if not (isinstance(formats, list) and len(formats) == 2 and all(type(v) is int for v in formats)  # noqa: E721
                and isinstance(features, list) and all(isinstance(f, str) for f in features)):
            ch.send_error("protocol error: malformed 'ready'")
            raise WireError(f"{ch.who} sent a malformed 'ready' (no image formats and features)")
        return cls(software, (formats[0], formats[1]), frozenset(features))

    def check(self, image_dir: str) -> None:
        """Raise Unsupported, naming what is missing, when the destination would refuse the image at ``image_dir``."""
        from ..image import Image

        inv = Image.open(image_dir).inventory
        lacks = sorted(set(inv.required_features) - self.features)
        low, high = self.formats
        if lacks:
            why = f"it needs {', '.join(lacks)}, which the destination's {self.software} does not restore"
        elif not low <= inv.format_version <= high:
            why = f"it is format {inv.format_version}, the destination's {self.software} reads {low}-{high}"
        else:
            return
        raise Unsupported(f"the destination cannot restore this process's image: {why}",
                          hint="upgrade ckpt on the destination")


@dataclass(frozen=True)
class RoundReport:
    """One pre-copy round, for the progress line and the stats."""

    index: int
    pages: int
    bytes_sent: int
    seconds: float
    dirty_rate_mb_s: float
    predicted_downtime_ms: float
    decision: str


@dataclass
class MigrateStats:
    """What a migration did; ``downtime_ms`` runs from the freeze to the destination's "running"."""

    pid: int
    destination: str
    switched: bool = False           # False: dry run, or the switch-over failed and the source runs on
    dest_pid: int = 0
    downtime_ms: float = 0.0
    predicted_downtime_ms: float = 0.0
    total_ms: float = 0.0
    iterations: int = 0
    bytes_sent: int = 0
    final_pages: int = 0
    final_bytes: int = 0
    restore_ms: float = 0.0          # the destination's restore, as it reported it
    state_ms: float = 0.0            # the probe: the target frozen for all its non-memory state
    reason: str = ""                 # why the rounds stopped
    protocol: int = 0                # the migration protocol version both sides spoke
    destination_ckpt: str = ""       # the destination's ckpt version, as it said
    rounds: list[RoundReport] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


def _run_action(script: str, action: str, pid: int, destination: str) -> list[str]:
    """Run the action script for ``action``; a note when it fails (what it does is the user's)."""
    env = {**os.environ, "CKPT_SCRIPT_ACTION": action, "CKPT_PID": str(pid), "CKPT_DESTINATION": destination}
    try:
        res = subprocess.run([script], env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                             timeout=30, close_fds=True)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return [f"action script {script} ({action}) could not run: {exc}"]
    if res.returncode != 0:
        return [f"action script {script} ({action}) exited {res.returncode}: {res.stderr.strip()[-200:]}"]
    return []


class _Throttle:
    """--bandwidth-limit, coarsely: after each image, sleep until the average rate is within the limit."""

    def __init__(self, limit_bytes_s: float | None) -> None:
        self.limit = limit_bytes_s
        self.t0 = time.monotonic()
        self.sent = 0

    def account(self, nbytes: int) -> None:
        self.sent += nbytes
        if self.limit:
            ahead = self.sent / self.limit - (time.monotonic() - self.t0)
            if ahead > 0:
                time.sleep(ahead)


def migrate(pid: int, host: str, port: int, token: bytes, *, max_downtime: float = 0.100,
            max_iterations: int = 30, bandwidth_limit: float | None = None, dry_run: bool = False,
            track: str | None = None, work_dir: str | None = None, timeout: float = 60.0,
            stop_and_copy: bool = False, tcp_close: bool = False, tcp_established: bool = False,
            action_script: str | None = None, tolerate: frozenset[str] = frozenset(),
            on_round: Callable[[RoundReport], None] | None = None, tls: TlsConfig | None = None) -> MigrateStats:
    """Move process ``pid`` to the ``ckpt receive`` at ``host:port``; see the module docstring.

    ``timeout``: seconds the destination may stay silent (an answer, a
    blocked send) before the migration is given up, the source running on.
    ``stop_and_copy``: no pre-copy at all — freeze, one full image, restore
    there (the baseline that pre-copy's downtime is measured against).

    ``bandwidth_limit``: bytes per second on the wire (None: as fast as it goes).
    ``dry_run``: run the pre-copy rounds, predict the downtime, switch nothing.
    ``track``: the dirty-tracking back-end (default: the best here).
    ``tcp_close``: the final dump takes established TCP connections as closed
    (their peers see the source's end of them; the destination gets closed
    sockets, as ``dump --tcp-close``); without it they make the switch-over fail.
    ``tcp_established``: they move alive instead (``dump --tcp-established``):
    locked here from the final freeze, restored and unlocked there; the
    destination must have their local addresses (else its restore fails,
    naming the address, and the process runs on here with its connections).
    ``tolerate``: the losses the dumps may take (:mod:`ckpt.tolerance`).
    ``tls``: the connection runs in TLS (``migrate --tls``, :mod:`ckpt.migrate.tls`).
    ``action_script``: run (CRIU's ``--action-script``) with
    ``CKPT_SCRIPT_ACTION=post-migrate`` once the destination runs the process
    and before the source ends its copy and lifts its connections' lock —
    where an address the connections use is moved to the destination (their
    peers' retransmissions then reach it).  A failing script is a note: the
    process already runs there.
    Raises CkptError (WireError for the link) with the source still running.
    """
    from .. import api
    from ..dump import dump as _dump
    from ..resources import cpu, tree
    from ..resources.tcp import netns_id

    if max_downtime <= 0 or max_iterations < 1:
        raise UsageError("--max-downtime must be > 0 and --max-iterations ≥ 1")
    if stop_and_copy and dry_run:
        raise UsageError("--stop-and-copy has no pre-copy rounds to try: not with --dry-run")
    t_start = time.monotonic()
    stats = MigrateStats(pid, f"{host}:{port}")
    policy = SwitchPolicy(max_downtime=max_downtime, max_iterations=max_iterations)
    throttle = _Throttle(bandwidth_limit)
    # The rounds' images: a temporary directory that the next run in the same place removes if we are killed.
    work, work_lock = make_held_tmp(work_dir or tempfile.gettempdir(), f"ckpt-migrate-{pid}")
    tracking = False
    migration = new_migration_id()  # names it in both sides' records (journal.py)
    SourceRecord.sweep()  # those of migrations resolved since (their processes gone)
    record_lock: int | None = None  # the flock of our record, from the hold on (--recover waits for us)
    try:
        with Channel.connect(host, port, token, timeout=timeout, tls=tls) as ch:
            # Our CPU and boot: the destination refuses at once when it lacks a feature the process may use,
            # or the time namespace that carries its clocks on from another boot.
            ch.send({"type": "migrate", "pid": pid, "dry_run": dry_run, "cpu": cpu.to_wire(cpu.here()),
                     "boot_id": read_boot_id(), "migration": migration, "netns": netns_id(pid)})
            stats.protocol, stats.destination_ckpt = ch.version, ch.peer_software
            ready = ch.expect("ready")
            reads = DestReads.of(ch, ready)
            # A receiver in our network namespace takes the bound sockets as they are (handover.py).
            offered = ready.get("handover") if isinstance(ready.get("handover"), dict) else None
            # Every record of a final dump, no page, no image: whether the process can be moved
            # at all (before any round is sent), and what its state costs inside the downtime.
            probe = _dump(pid, os.path.join(work, "probe"), probe=True, tcp_close=tcp_close,
                          tcp_established=tcp_established, tolerate=tolerate, hand_over_sockets=offered is not None)
            stats.state_ms = round(probe.frozen_seconds * 1e3, 1)
            policy.fixed_cost = probe.frozen_seconds + FINISH_ESTIMATE

            def send_image(name: str, final: bool) -> int:
                try:
                    reads.check(os.path.join(work, name))
                except CkptError as exc:
                    ch.send({"type": "abort", "reason": str(exc)})
                    raise
                before = ch.bytes_sent
                ch.send({"type": "image", "name": name, "final": final})
                ch.send_dir(os.path.join(work, name), name)
                ch.expect("stored", timeout=timeout)
                sent = ch.bytes_sent - before
                throttle.account(sent)
                return sent

            n, parent = 0, None
            while not stop_and_copy:
                n += 1
                name = str(n)
                t0 = time.monotonic()
                pre = api.pre_dump(pid, os.path.join(work, name), prev_images_dir=parent, track=track)
                tracking = True
                sent = send_image(name, final=False)
                secs = time.monotonic() - t0
                policy.record(Iteration(n - 1, pre.pages_stored, pre.pages_stored * PAGE_SIZE, sent, secs))
                decision = policy.decide()
                rate = policy.dirty_rate()
                report = RoundReport(n - 1, pre.pages_stored, sent, round(secs, 4),
                                     round(rate * PAGE_SIZE / 1e6, 2) if rate == rate else 0.0,
                                     round(decision.predicted_downtime * 1e3, 1), decision.reason)
                stats.rounds.append(report)
                if on_round is not None:
                    on_round(report)
                parent = os.path.join(work, name)
                if decision.switch:
                    stats.reason = decision.reason
                    stats.predicted_downtime_ms = round(decision.predicted_downtime * 1e3, 1)
                    break
            stats.iterations = n
            if stop_and_copy:
                stats.reason = "stop-and-copy"
            if dry_run:
                api.track_stop(pid)
                tracking = False
                ch.send({"type": "abort", "reason": "dry run"})
                stats.bytes_sent = ch.bytes_sent
                return stats

            final = str(n + 1)
            marks: dict[str, float] = {}

            def frozen(event: object) -> None:
                if getattr(event, "phase", "") == "frozen":
                    marks["frozen"] = time.monotonic()

            committing = ExitStack()  # from the hold until the original is killed: Ctrl-C waits

            def switch_over(image_dir: str) -> bool:
                """With the source frozen: the last image goes over, then the commit (module docstring)."""
                nonlocal record_lock
                stats.final_bytes = send_image(final, final=True)
                handed = handover.sockets_of(image_dir) if offered is not None else []
                if handed:
                    handover.send(offered, handed)  # type: ignore[arg-type]
                testpoint.point("migrate.final-sent")
                ch.send({"type": "restore", "name": final, "handover": [i for i, _, _ in handed]})
                ch.expect("restored", timeout=timeout)  # built there, held frozen
                testpoint.point("migrate.restored")
                committing.enter_context(interrupts.deferred())
                held = tree.descendants(pid, include_root=True)  # (frozen: it cannot change)
                # On disk before the hold: whenever the original is held, a record says for which migration.
                record = SourceRecord(migration, pid, f"{host}:{port}", [(p, starttime(p) or 0) for p in held],
                                      time.time())
                record_lock = record.save()
                hold_stopped(held)
                try:
                    testpoint.point("migrate.held")
                    ch.send({"type": "commit"})
                except BaseException:
                    unhold(held)  # the commit did not leave: the destination kills its copy, ours runs on
                    SourceRecord.remove(pid)
                    raise
                testpoint.point("migrate.committed")
                try:
                    running = ch.expect("running", timeout=timeout)
                except PeerError:
                    unhold(held)  # its copy failed after the commit, and it killed it: ours runs on
                    SourceRecord.remove(pid)
                    raise
                except WireError as exc:
                    raise MigrationInDoubt(
                        f"the switch-over of pid {pid} (migration {migration}) is in doubt: {exc}; the destination "
                        f"may run the process. "
                        f"The original is kept stopped (SIGSTOP) so that it never runs twice",
                        hint=f"`ckpt migrate --recover -t {pid} --token-file F` asks the destination's receiver "
                             f"(running, on the same directory) and ends or resumes the original") from exc
                return _running(running)

            def _running(running: dict) -> bool:
                marks["running"] = time.monotonic()
                testpoint.point("migrate.running")
                stats.dest_pid = int(running.get("pid", 0))
                stats.restore_ms = float(running.get("restore_ms", 0.0))
                if action_script:
                    stats.notes.extend(_run_action(action_script, "post-migrate", pid, f"{host}:{port}"))
                return True  # the destination runs it: end the source

            if not stop_and_copy:
                # The destination applies the rounds to the process it is building as they
                # arrive: let it catch up before the freeze rather than inside the downtime.
                ch.send({"type": "sync"})
                ch.expect("synced", timeout=timeout)
            try:
                with committing:
                    last = _dump(pid, os.path.join(work, final), parent=parent, progress=frozen,
                                 end_target=switch_over, tcp_close=tcp_close, tcp_established=tcp_established,
                                 tolerate=tolerate, hand_over_sockets=offered is not None)
                    late = interrupts.take()  # a Ctrl-C the commit held off (none outside it)
                if late is not None:
                    stats.notes.append("interrupted during the commit: the switch-over was finished first")
            except BaseException as exc:
                tracking = False  # the final dump ended tracking either way
                try:
                    ch.send({"type": "abort", "reason": str(exc) or type(exc).__name__})
                except (WireError, OSError):
                    pass
                raise
            tracking = False
            SourceRecord.remove(pid)  # the original is ended: nothing is left to resolve
            stats.final_pages = last.pages_stored
            stats.switched = True
            stats.downtime_ms = round((marks["running"] - marks["frozen"]) * 1e3, 1)
            try:
                ch.send({"type": "done"})
            except (WireError, OSError):
                pass  # the destination runs it and we ended ours: nothing is lost
            stats.bytes_sent = ch.bytes_sent
    except BaseException:
        if tracking:
            try:
                api.track_stop(pid)  # the source runs on, untracked, exactly as before
            except CkptError:
                pass
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if work_lock is not None:
            os.close(work_lock)
        if record_lock is not None:
            os.close(record_lock)
        stats.total_ms = round((time.monotonic() - t_start) * 1e3, 1)
    return stats


@dataclass(frozen=True)
class Recovery:
    """What ``ckpt migrate --recover`` found and did."""

    pid: int
    migration: str
    outcome: str      # "running" (the destination runs it), "not running", or "gone" (nothing held was left)
    ended: tuple[int, ...] = ()
    resumed: tuple[int, ...] = ()


def recover(pid: int, token: bytes | str | None, *, to: tuple[str, int] | None = None, known: str | None = None,
            timeout: float = 60.0, tls: TlsConfig | None = None) -> Recovery:
    """Resolve a switch-over left in doubt: ask the destination's receiver, then end or resume the original.

    ``known``: the outcome ("running" or "not running") when the user has it
    from the destination (``ckpt receive --outcome``); nothing is asked then.
    ``to``: the receiver, when it listens elsewhere than the record says.  ``tls``: as for :func:`migrate`.
    Raises CkptError when the receiver cannot tell yet or knows nothing of the
    migration: the original then stays held.
    """
    from ..resources.tree import kill as kill_tree

    lock = SourceRecord.lock(pid)
    try:
        rec = SourceRecord.load(pid)
        if rec is None:
            raise UsageError(f"no migration of pid {pid} is in doubt here")
        live = rec.live()
        if not live:
            SourceRecord.remove(pid)
            return Recovery(pid, rec.migration, "gone")
        state = known
        if state is None:
            if token is None:
                raise UsageError("--recover asks the destination: give --token-file (or --outcome, if you know it)")
            host, port = to or _split(rec.destination)
            with Channel.connect(host, port, token, timeout=timeout, tls=tls) as ch:
                ch.send({"type": "outcome", "migration": rec.migration})
                state = str(ch.expect("outcome", timeout=timeout).get("state", ""))
        where = f"{to[0]}:{to[1]}" if to else rec.destination
        if state == "running":
            kill_tree(live)  # children first, as a dump ends a tree
            SourceRecord.remove(pid)
            return Recovery(pid, rec.migration, state, ended=tuple(live))
        if state == "not running":
            unhold(live)
            SourceRecord.remove(pid)
            return Recovery(pid, rec.migration, state, resumed=tuple(live))
        if state == "in progress":
            raise CkptError(f"the receiver at {where} is still finishing migration {rec.migration} of pid {pid}; "
                            "the original stays stopped", hint="run --recover again in a moment")
        if state == "unknown":
            raise CkptError(f"the receiver at {where} knows nothing of migration {rec.migration} of pid {pid}; "
                            "the original stays stopped",
                            hint="ask the receiver that took it (its -D directory keeps the journal), or run "
                                 "`ckpt receive -D DIR --outcome ID` there and pass its answer with --outcome")
        raise CkptError(f"the receiver at {where} answered {state!r}, not one of {', '.join(OUTCOMES)}")
    finally:
        os.close(lock)


def _split(destination: str) -> tuple[str, int]:
    host, _, port = destination.rpartition(":")
    return host, int(port)

