"""The destination side of live migration: store the chain, restore when told, report back.

``ckpt receive`` accepts connections, authenticates each peer (the wire's
handshake) apart from the migration that runs — a stranger, however slow or
many, blocks no source and does not count for ``--once`` (:class:`_Door`) —
and keeps the images of one migration at a time as a numbered store
``DIR/<pid>-<time>/1, 2, …`` (the same layout ``--incremental`` uses, so
the parent links the source wrote resolve here).  On "restore" it restores
the newest image detached and answers "running" with the pid.  Until it has
answered, any failure — the link, an "abort" from the source, its own restore
— removes what it created (the restore itself kills a half-built process)
and leaves the source to run on.  The restore is a commit in two steps (ckpt.migrate.source):
the process is built and held frozen — it dies with the receiver — and
"restored" is said; only on the source's "commit" is it let go, and
"running" said.  A link that ends before the commit kills it: the source
runs on.  From the commit on, the restored process is the live one and
stays, whatever happens to the link (the source's original is held in a
stop that outlives its ckpt); Ctrl-C and SIGTERM wait for the answer.
Each step is recorded in DIR's journal before it is taken
(:mod:`ckpt.migrate.journal`), and the door answers a source's
``--recover`` ("outcome": what became of a migration) from it at any time.

The restore is staged (:class:`~ckpt.restore.StagedRestore`): each pre-copy
image is applied to a frozen helper as soon as it is stored, on a thread of
its own, while the next one arrives; an image is acknowledged ("stored") once
the one before it is applied, so the source's round times — which drive its
switch decision — include staging when staging is the slower side, and the
switch-over does not wait for a backlog.  "restore" then only applies the
final delta and the non-memory state, which is what the downtime waits for.  Staging is an optimisation:
if it fails, or an image cannot follow the staged ones, it is dropped (said
on the event log) and the final image is restored plainly.
"""

from __future__ import annotations

import os
import queue
import re
import select
import shutil
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from .. import interrupts, testpoint
from ..errors import CkptError
from ..image.store import hold_dir
from ..resources.tree import kill as kill_helpers
from . import handover, journal
from .wire import DEFAULT_TIMEOUT, Channel, WireError, _address, listen

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from ..restore import RestoreStats, StagedRestore
    from .peers import Allow
    from .tls import TlsConfig

__all__ = ["BACKLOG", "HANDSHAKE_TIMEOUT", "MAX_PENDING", "ReceiveResult", "open_listener", "serve", "serve_on"]

#: A source silent for this long between two messages is taken as gone.
IDLE_TIMEOUT = 120.0
#: Seconds a connection has to prove it knows the token (a few round trips for a real source).
HANDSHAKE_TIMEOUT = 10.0
#: Connections authenticating at the same time at most; one more closes one of them (see _Door).
MAX_PENDING = 64
#: The listen(2) backlog.  Connections are accepted as they come, so it only absorbs bursts.
BACKLOG = 128
#: A stage (applying one image to the staged process) taking longer than this is given up: the
#: switch-over restores plainly.  Below the source's wait for "stored" and "running" (60 s).
STAGE_TIMEOUT = 30.0
#: Seconds the source has to commit once told the process is built (it answers at once): below STAGE_TIMEOUT.
COMMIT_TIMEOUT = 20.0


@dataclass
class ReceiveResult:
    """One migration as the destination saw it."""

    peer: str
    source_pid: int = 0
    pid: int = 0               # the restored process (0: none)
    images: int = 0
    bytes_received: int = 0
    restore_ms: float = 0.0
    outcome: str = ""          # "running", "aborted: …", "failed: …", "dry run"
    store: str = ""
    staged: bool = False       # the switch-over only finished a staged restore
    staging: str = ""          # why it was not staged ("" when it was, or when nothing was restored)
    protocol: int = 0          # the migration protocol version both sides spoke
    source_ckpt: str = ""      # the source's ckpt version, as it said

    def as_dict(self) -> dict:
        return asdict(self)


class _Commit:
    """The restore's ``before_hand_over``: say "restored", wait for the source's "commit" (else raise).

    ``record``: called with the commit, before the process is let go (the journal's "committed").
    """

    def __init__(self, ch: Channel, record: Callable[[], None] = lambda: None) -> None:
        self.ch = ch
        self.record = record
        self.asked = False    # "restored" was said: no second attempt at a restore after this
        self.granted = False  # "commit" came: the process is let go

    def __call__(self) -> None:
        self.asked = True
        self.ch.send({"type": "restored"})
        msg = self.ch.recv(timeout=COMMIT_TIMEOUT)
        if msg.get("type") == "abort":
            raise WireError(f"the source gave the migration up: {msg.get('reason', '')}")
        if msg.get("type") != "commit":
            raise WireError(f"protocol error: expected a 'commit' message, got {msg.get('type')!r}")
        self.record()
        self.granted = True
        testpoint.point("receive.committed")


class _Stager:
    """Runs a :class:`~ckpt.restore.StagedRestore` on a thread of its own, image by image.

    ptrace requests must come from the thread that seized the helper, so
    every call of the staged restore happens on this thread, in the order the
    images were stored.  Staging only saves downtime: when it fails, or an
    image cannot follow the staged ones, it is dropped (:attr:`note` says
    why) and :meth:`finish` returns None — restore the final image plainly.
    A full pre-dump (the source lost its tracking) starts staging afresh.
    """

    def __init__(self, say: Callable[[str], None], cpu_cap: Iterable[str] | None = None,
                 allow_changed_files: bool = False, allow_lower_limits: bool = False) -> None:
        self.say = say
        self.allow_lower_limits = allow_lower_limits
        self.cpu_cap = cpu_cap
        self.allow_changed_files = allow_changed_files
        self.note = ""
        self._staged: StagedRestore | None = None
        self._commit: _Commit | None = None
        self._handed: dict[int, int] | None = None
        self._jobs: queue.Queue[tuple[str, str, Future | None]] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="ckpt-stage", daemon=True)
        self._thread.start()

    def add(self, image_dir: str) -> Future[None]:
        """Stage a stored pre-copy image; returns at once, the future is done once it is applied (or dropped)."""
        fut: Future[None] = Future()
        self._jobs.put(("add", image_dir, fut))
        return fut

    def finish(self, image_dir: str, commit: _Commit | None = None,
               handed: dict[int, int] | None = None) -> "RestoreStats | None":
        """Finish the staged restore with the final image: its stats, or None if staging was dropped.

        ``commit``: asked before the process is let go; once asked, a failure is final (raised).
        ``handed``: the sockets the source handed over (:mod:`ckpt.migrate.handover`).
        """
        if self.note:
            return None  # given up already: not behind a stage that may still hang
        fut: Future[RestoreStats | None] = Future()
        self._commit = commit
        self._handed = handed
        self._jobs.put(("finish", image_dir, fut))
        try:
            r = fut.result(timeout=STAGE_TIMEOUT)
        except TimeoutError:
            self.abandon(f"finishing the staged restore took more than {STAGE_TIMEOUT:.0f} s")
            raise CkptError(f"the staged restore did not finish within {STAGE_TIMEOUT:.0f} s") from None
        if r is not None and self._staged is not None:
            st = self._staged.stages[-1]
            self.say(f"finished the staged restore: {st.pages_written} pages written, {st.pages_reset} reset, "
                     f"memory in {r.memory_seconds * 1e3:.0f} ms, all in {r.total_seconds * 1e3:.0f} ms")
        return r

    def wait_staged(self, fut: Future[None]) -> None:
        """Wait until a stage is done; give staging up if it hangs (the helper is killed)."""
        try:
            fut.result(timeout=STAGE_TIMEOUT)
        except TimeoutError:
            self.abandon(f"staging an image took more than {STAGE_TIMEOUT:.0f} s")

    def abandon(self, why: str) -> None:
        """Give staging up from the receiving thread: no more stages, the helper is killed (its thread reaps it)."""
        self.note = self.note or why
        self.say(f"{why}; the switch-over restores plainly")
        staged = self._staged
        if staged is not None and staged.state == "staged":
            kill_helpers(staged.pids)

    def close(self, *, kill: bool) -> None:
        """End the thread and kill a staged helper; ``kill``: whatever it is by now, even running."""
        staged = self._staged
        if kill and staged is not None:
            kill_helpers(staged.pids)  # ends a stage in progress at once
        self._jobs.put(("close", "", None))
        self._thread.join(timeout=60)

    def _run(self) -> None:
        while True:
            kind, path, fut = self._jobs.get()
            if kind == "close":
                self._drop("")
                return
            assert fut is not None
            if kind == "add":
                self._add(path)
                fut.set_result(None)
                continue
            try:
                fut.set_result(self._finish(path))
            except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread
                fut.set_exception(exc)

    def _add(self, path: str) -> None:
        from ..image.reader import Image
        from ..restore import StagedRestore, StagingMismatch

        if self.note:
            return
        try:
            if self._staged is None or Image.open(path).parent is None:
                self._drop("")  # the first image, or a full one (tracking lost at the source): start from it
                self._staged = StagedRestore(detached=True, cpu_cap=self.cpu_cap,
                                             allow_changed_files=self.allow_changed_files,
                                             allow_lower_limits=self.allow_lower_limits)
                st = self._staged.start(path)
            else:
                st = self._staged.apply(path)
            self.say(f"staged image {os.path.basename(path)}: {st.pages_written} pages written, "
                     f"{st.vmas_mapped} mappings made, {st.pages_reset} pages reset, in {st.seconds * 1e3:.0f} ms")
        except StagingMismatch as exc:
            self._drop(f"image {os.path.basename(path)} cannot be staged ({exc})")
        except Exception as exc:  # noqa: BLE001 - staging is an optimisation: it never fails the migration
            self._drop(f"staging image {os.path.basename(path)} failed ({exc})")

    def _finish(self, path: str) -> "RestoreStats | None":
        staged = self._staged
        if self.note or staged is None or staged.state != "staged":
            self.note = self.note or "nothing was staged"
            return None
        try:
            return staged.finish(path, before_hand_over=self._commit, handed_sockets=self._handed)
        except Exception as exc:  # noqa: BLE001 - the plain restore after it reports a real problem
            if self._commit is not None and self._commit.asked:
                raise  # the source was told it is built: this is the outcome, no second restore
            self._drop(f"finishing the staged restore failed ({exc})")
            return None

    def _drop(self, why: str) -> None:
        """Abort what is staged, then (``why``) give staging up: the pid is free once the note is seen."""
        if self._staged is not None:
            self._staged.abort()
        if why:
            self.note = why
            self.say(f"{why}; the switch-over restores plainly")


def _receive(ch: Channel, hello: dict, root: str, *, say: Callable[[str], None], staged: bool = True,
             cpu_cap: Iterable[str] | None = None, allow_changed_files: bool = False,
             allow_lower_limits: bool = False, verify_key: "Ed25519PublicKey | None" = None) -> ReceiveResult:
    """Serve one migration over an authenticated channel (closed on return); see the module docstring.

    ``hello``: its first message, "migrate" (:class:`_Door` reads it).

    ``staged``: restore while the images arrive (the default); False restores
    the final image in one go at the switch-over (the downtime baseline).
    ``cpu_cap``: the CPU checks (:func:`ckpt.resources.cpu.parse_cpu_cap`) of
    the handshake and the restores.  ``allow_changed_files``, ``allow_lower_limits``: as for
    :func:`ckpt.api.restore` (``receive --allow-changed-files``).  ``verify_key``: every image must be
    signed with it, and be as signed (:func:`_check_signed`), before it is staged or restored.
    """
    from .. import api

    result = ReceiveResult(peer=ch.peer, protocol=ch.version, source_ckpt=ch.peer_software)
    store = ""
    store_lock: int | None = None
    confirmed = False
    stager: _Stager | None = None
    staging: Future[None] | None = None  # the newest pre-copy image being staged
    entry: journal.Journal | None = None  # what --recover at the source may ask about (journal.py)
    port: handover.HandoverPort | None = None
    handed: dict[int, int] = {}
    try:
        with ch:
            result.source_pid = int(hello["pid"])
            if "cpu" in hello:  # sources before ckpt recorded CPUs send none: their images are checked
                _check_source_cpu(ch, hello["cpu"], cpu_cap)
            if "boot_id" in hello:  # older sources send none: the restore checks their clocks
                _check_source_boot(ch, hello["boot_id"])
            for stale in _sweep_stores(root):
                say(f"removed {stale}: a receiver killed during that migration left it")
            store = os.path.join(root, f"{result.source_pid}-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}")
            os.makedirs(store, mode=0o700)
            store_lock = hold_dir(store)
            result.store = store
            if journal.valid_id(hello.get("migration")) and not hello.get("dry_run"):
                entry = journal.Journal(hello["migration"], result.source_pid, store)
                entry.set(root, "receiving")
            import ckpt.restore  # noqa: F401 - imported now, not inside the downtime (~80 ms)

            if staged and not hello.get("dry_run"):
                stager = _Stager(say, cpu_cap, allow_changed_files, allow_lower_limits)
            port = handover.offer(hello)  # from our network namespace: its bound sockets come as they are
            # Which images we restore: the source refuses what we would refuse, before sending it.
            ch.send({"type": "ready", "images": image_support(), **({"handover": port.offer()} if port else {})})
            say(f"migration of pid {result.source_pid} from {result.peer} (ckpt {result.source_ckpt or '?'}, "
                f"protocol {result.protocol}) into {store}")
            while True:
                msg = ch.recv(timeout=IDLE_TIMEOUT)
                kind = msg.get("type")
                if kind == "image":
                    name = ch.recv_dir(store)
                    result.images += 1
                    if verify_key is not None:
                        _check_signed(ch, name, verify_key)
                    if stager is not None and staging is not None and not msg.get("final"):
                        # The previous image is applied before this one is acknowledged: staging
                        # overlaps the next transfer, and when it is the slower side the source's
                        # round times show it, so its switch-over never waits for a staging backlog.
                        stager.wait_staged(staging)
                    ch.send({"type": "stored", "name": os.path.basename(name)})
                    if stager is not None and not msg.get("final"):
                        staging = stager.add(name)
                elif kind == "sync":
                    # The source is about to freeze: apply what is queued first, so that
                    # none of it falls into the downtime.
                    if stager is not None and staging is not None:
                        stager.wait_staged(staging)
                    ch.send({"type": "synced"})
                elif kind == "restore":
                    image = os.path.join(store, str(msg["name"]))
                    testpoint.point("receive.restoring")
                    t0 = time.monotonic()
                    ids = [int(i) for i in msg.get("handover") or ()]
                    if ids and port is None:
                        raise WireError("protocol error: sockets handed over to a receiver that offered no port")
                    if ids:
                        handed = port.receive(ids, timeout=COMMIT_TIMEOUT)  # type: ignore[union-attr]
                    commit = _Commit(ch, record=(lambda: entry.set(root, "committed", pid=result.source_pid))
                                     if entry is not None else (lambda: None))
                    with interrupts.deferred():  # a commit must be answered: Ctrl-C waits for it
                        try:
                            r = stager.finish(image, commit, handed) if stager is not None else None
                            result.staged = r is not None
                            result.staging = stager.note if stager is not None else "not asked for"
                            if r is None:
                                r = api.restore(image, detached=True, cpu_cap=cpu_cap, before_hand_over=commit,
                                                allow_changed_files=allow_changed_files,
                                                allow_lower_limits=allow_lower_limits, handed_sockets=handed)
                        except CkptError as exc:
                            ch.send_error(f"restore failed at the destination: {exc}")
                            raise
                        confirmed = True
                        _mark_running(store)
                        testpoint.point("receive.running")
                        result.restore_ms = round((time.monotonic() - t0) * 1e3, 1)
                        result.pid = r.pid
                        try:
                            ch.send({"type": "running", "pid": r.pid, "restore_ms": result.restore_ms})
                        except (WireError, OSError):
                            pass  # ours is the live copy: the source's original stays held (source.py)
                        if entry is not None:  # (after the answer, outside the downtime: "committed" and
                            entry.set(root, "running")  # a live copy read the same until then)
                    say(f"restored as pid {r.pid} in {result.restore_ms:.0f} ms"
                        + (" (staged)" if result.staged else ""))
                    try:
                        ch.expect("done", timeout=IDLE_TIMEOUT)
                    except WireError:
                        pass  # ours is the live copy now: the source's fate is its own business
                    result.outcome = "running"
                    break
                elif kind == "abort":
                    result.outcome = "dry run" if msg.get("reason") == "dry run" else f"aborted: {msg.get('reason', '')}"
                    break
                else:
                    raise WireError(f"unexpected message {kind!r} from the source")
            result.bytes_received = ch.bytes_received
    except BaseException as exc:
        if not result.outcome:
            result.outcome = f"failed: {exc}"
        if stager is not None:
            stager.close(kill=not confirmed)
            stager = None
        if not confirmed:
            _abort(root, entry)
            _clean(store)
            result.store = ""
        if isinstance(exc, (CkptError, OSError)):
            say(f"migration from {result.peer} failed: {exc}")
            return result
        raise
    finally:
        if store_lock is not None:
            os.close(store_lock)
        for fd in handed.values():  # (the restored process has its own descriptors of them)
            os.close(fd)
        if port is not None:
            port.close()
    if stager is not None:
        stager.close(kill=not confirmed)
    if not confirmed:
        _abort(root, entry)
        _clean(store)
        result.store = ""
    say(f"migration from {result.peer}: {result.outcome}")
    return result


#: A migration's store in the receiver's directory: ``SOURCEPID-TIME-RECEIVERPID``.
_STORE_NAME = re.compile(r"\d+-\d{8}T\d{6}-\d+")
#: In a store whose process runs here (kept); a store without it whose receiver is gone was left by a kill.
RUNNING_MARK = ".running"


def _mark_running(store: str) -> None:
    with open(os.path.join(store, RUNNING_MARK), "w"):
        pass


def _sweep_stores(root: str) -> list[str]:
    """Remove the stores of migrations that never ran here and whose receiver is gone (its flock free)."""
    removed = []
    for entry in os.scandir(root):
        if (not _STORE_NAME.fullmatch(entry.name) or not entry.is_dir(follow_symlinks=False)
                or os.path.exists(os.path.join(entry.path, RUNNING_MARK))):
            continue
        fd = hold_dir(entry.path)
        if fd is None:
            continue  # a receiver still works in it (or no flock here: leave it)
        try:
            shutil.rmtree(entry.path, ignore_errors=True)
        finally:
            os.close(fd)
        removed.append(entry.path)
    return removed


def image_support() -> dict[str, list]:
    """What ``ready`` tells a protocol-2 source: the image formats (oldest, newest) and the features we restore."""
    from ..image import compat, framing

    return {"formats": [framing.MIN_FORMAT_VERSION, framing.FORMAT_VERSION], "features": sorted(compat.FEATURES)}


def _check_source_cpu(ch: Channel, record: object, cpu_cap: Iterable[str] | None) -> None:
    """Refuse a process from a CPU whose features this one lacks, before any image is sent."""
    from ..resources import cpu

    try:
        cpu.check(cpu.from_wire(record), cpu.parse_cpu_cap(cpu_cap))
    except CkptError as exc:
        ch.send_error(f"{exc} (the receiver's --cpu-cap relaxes this check)")
        raise


def _check_signed(ch: Channel, image_dir: str, key: "Ed25519PublicKey") -> None:
    """Refuse a received image that is not signed with ``key``, or not as signed (its page data read in full)."""
    from ..errors import CorruptImage
    from ..image import signing

    why = signing.image_problem(image_dir, key)
    if why is not None:
        ch.send_error(f"the destination restores only images signed with its key (receive --verify-key): image "
                      f"{os.path.basename(image_dir)}: {why}")
        raise CorruptImage(image_dir, why)


def _check_source_boot(ch: Channel, boot_id: object) -> None:
    """Refuse, before any image is sent, a process whose clocks this kernel cannot carry on (no time namespaces)."""
    from ..resources import timens

    try:
        timens.check_from_boot(str(boot_id))
    except CkptError as exc:
        ch.send_error(str(exc))
        raise


def _abort(root: str, entry: journal.Journal | None) -> None:
    """The copy was not confirmed: record it gone — unless the commit came, when whether it was let go is
    for :func:`journal.outcome` to find out (it looks for the copy once this receiver is gone)."""
    if entry is not None and entry.state == "receiving":
        try:
            entry.set(root, "aborted")
        except OSError:
            pass  # a gone receiver's "receiving" reads the same


def _clean(store: str) -> None:
    if store:
        shutil.rmtree(store, ignore_errors=True)


class _Door:
    """The receiver's front door: strangers are dealt with apart from the migration that runs.

    A thread accepts every connection at once (the listen backlog never fills)
    and authenticates each on a thread of its own within ``handshake_timeout``
    seconds, so half a frame, an idle connection or an HTTP client holds up
    nobody but itself.  At most ``max_pending`` handshakes run at a time; one
    more connection closes the oldest of the peer address that holds the most
    of them — idle ones are the oldest, while a real source proves itself
    within a few round trips, and a flood from one address cannot push out a
    source connecting from another.  An authenticated source is
    handed to the serving thread by :meth:`next_source` when no migration runs,
    else told that one does and closed.
    """

    def __init__(self, listener: socket.socket, token: str | bytes, say: Callable[[str], None], *,
                 handshake_timeout: float = HANDSHAKE_TIMEOUT, max_pending: int = MAX_PENDING,
                 root: str | None = None, tls: TlsConfig | None = None, allow: Allow | None = None) -> None:
        self._listener = listener
        self._root = root
        self._token = token
        self._tls = tls      # receive --tls: a source must be in TLS, with a certificate of our CA
        self._allow = allow  # receive --allow: the source addresses let in
        self._say = say
        self._handshake_timeout = handshake_timeout
        self._max_pending = max_pending
        self._lock = threading.Lock()
        self._pending: dict[_Pending, None] = {}  # oldest first; an entry's socket stays open while it is here
        self._handshakes: set[threading.Thread] = set()
        self._busy = False    # a source was handed over and its migration is not over
        self._closed = False
        self._sources: queue.Queue[tuple[Channel, dict]] = queue.Queue()
        self._wake, self._waker = socket.socketpair()
        listener.setblocking(False)
        self._acceptor: threading.Thread | None = threading.Thread(target=self._accept_loop, name="ckpt-accept",
                                                                   daemon=True)
        self._acceptor.start()

    def next_source(self) -> tuple[Channel, dict]:
        """Wait for an authenticated source and its "migrate"; the door counts a migration as running until
        :meth:`done`."""
        while True:
            try:
                return self._sources.get(timeout=1.0)  # (a timeout: Ctrl-C is seen within a second)
            except queue.Empty:
                continue

    def done(self) -> None:
        """The migration of the source handed over is over: the next one may come in."""
        with self._lock:
            self._busy = False

    def stop_accepting(self) -> None:
        """Close the listening socket (the port is free again); handshakes under way go on."""
        if self._acceptor is not None:
            self._waker.send(b"x")
            self._acceptor.join()
            self._acceptor = None
            self._listener.close()

    def close(self) -> None:
        """Stop accepting, cut every handshake under way, drop sources not taken yet.

        The handshake threads are waited for (briefly: cut, they end at once),
        so none is left writing to stderr while the interpreter exits.
        """
        self.stop_accepting()
        with self._lock:
            self._closed = True
            for entry in self._pending:
                _shut(entry.conn)
            self._pending.clear()  # their threads close them, quietly
            threads = list(self._handshakes)
        while not self._sources.empty():
            self._sources.get_nowait()[0].close()
        deadline = time.monotonic() + 2.0
        for t in threads:
            t.join(timeout=max(0.0, deadline - time.monotonic()))
        self._wake.close()
        self._waker.close()

    def _accept_loop(self) -> None:
        poller = select.poll()
        poller.register(self._listener.fileno(), select.POLLIN)
        poller.register(self._wake.fileno(), select.POLLIN)
        pause = -1  # ms: out of descriptors, accepting waits a little before retrying
        while True:
            if any(fd == self._wake.fileno() for fd, _ in poller.poll(pause)):
                return
            try:
                conn, addr = self._listener.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                continue
            except OSError as exc:
                if pause < 0:
                    self._say(f"accepting a connection failed: {exc.strerror or exc}")
                pause = 100
                continue
            pause = -1
            host, port = addr[:2]
            if self._allow is not None and not self._allow.admits(host):
                conn.close()  # before any byte of the protocol
                self._say(f"refused a connection from {_address(addr)}: not an address of --allow {self._allow}")
                continue
            self._admit(_Pending(conn, host, f"[{host}]:{port}" if ":" in host else f"{host}:{port}"))

    def _admit(self, entry: _Pending) -> None:
        dropped: _Pending | None = None
        with self._lock:
            if len(self._pending) >= self._max_pending:
                # The oldest connection of the address that holds the most: one flooding address
                # cannot push out a source connecting from another.
                held = Counter(e.host for e in self._pending)
                most = max(held.values())
                dropped = next(e for e in self._pending if held[e.host] == most)
                del self._pending[dropped]
                _shut(dropped.conn)  # its handshake fails at once; its thread closes the socket
            self._pending[entry] = None
        if dropped is not None:
            self._say(f"closed the connection from {dropped.peer}: {self._max_pending} connections were "
                      "waiting to authenticate (the oldest of the address with the most goes)")
        thread = threading.Thread(target=self._handshake, args=(entry,), name="ckpt-handshake", daemon=True)
        with self._lock:
            self._handshakes.add(thread)
        try:
            thread.start()
        except RuntimeError:  # no thread to be had: this connection goes
            with self._lock:
                self._handshakes.discard(thread)
                self._pending.pop(entry, None)
                entry.conn.close()

    def _handshake(self, entry: _Pending) -> None:
        try:
            self._authenticate(entry)
        finally:
            with self._lock:
                self._handshakes.discard(threading.current_thread())

    def _authenticate(self, entry: _Pending) -> None:
        ch: Channel | None = None
        why: object = ""
        try:
            # The channel gets a duplicate: this socket stays open (for _shut) until we leave _pending.
            ch = Channel.accept(entry.conn.dup(), self._token, io_timeout=self._handshake_timeout, tls=self._tls)
        except (CkptError, OSError) as exc:
            why = exc
        except Exception as exc:  # noqa: BLE001 - a stranger's bytes must never take the receiver down
            why = f"internal error: {type(exc).__name__}: {exc}"
        with self._lock:
            dropped = entry not in self._pending  # by the cap, or by close()
            self._pending.pop(entry, None)
            entry.conn.close()
        if ch is None:
            if not dropped:
                self._say(f"refused a connection: {why}")
            return
        if dropped:
            ch.close()
            return
        try:
            first = ch.recv(timeout=self._handshake_timeout)
        except (CkptError, OSError) as exc:
            self._say(f"{ch.peer} authenticated, then: {exc}")
            ch.close()
            return
        if first.get("type") == "outcome":
            self._answer_outcome(ch, first)
            return
        if first.get("type") != "migrate":  # (refused here: a --once receiver has stopped listening by the time
            ch.send_error(f"protocol error: expected 'migrate', got {first.get('type')!r}")  # it is handed over)
            ch.close()
            return
        ch.timeout = DEFAULT_TIMEOUT  # authenticated: the migration's own timeouts from now on
        with self._lock:
            closed, busy = self._closed, self._busy
            if not closed and not busy:
                self._busy = True
                self._sources.put((ch, first))
                return
        if busy and not closed:
            ch.send_error("another migration is in progress at this destination; try again once it is over")
            self._say(f"refused a migration from {ch.peer}: another one is in progress")
        else:
            ch.send_error("this destination is shutting down")
        ch.close()


    def _answer_outcome(self, ch: Channel, msg: dict) -> None:
        """``ckpt migrate --recover`` asks what became of a migration: the journal says (even while one runs)."""
        migration = msg.get("migration")
        try:
            if self._root is None or not journal.valid_id(migration):
                state = "unknown"
            else:
                state, _ = journal.outcome(self._root, str(migration))
            ch.send({"type": "outcome", "state": state})
            self._say(f"{ch.peer} asked what became of migration {_printable_id(migration)}: {state}")
        except (CkptError, OSError) as exc:
            self._say(f"answering {ch.peer} about migration {_printable_id(migration)} failed: {exc}")
        finally:
            ch.close()


def _printable_id(migration: object) -> str:
    return migration if journal.valid_id(migration) else "(malformed id)"  # type: ignore[return-value]


@dataclass(eq=False)
class _Pending:
    """A connection that has not authenticated yet."""

    conn: socket.socket
    host: str  # the peer's address
    peer: str  # and port, as messages name it


def _shut(conn: socket.socket) -> None:
    """End a connection another thread is using (it sees the end and closes the socket itself)."""
    try:
        conn.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already ended by the peer


def serve(host: str, port: int, root: str, token: str | bytes, *, once: bool = False,
          on_event: Callable[[str], None] | None = None,
          on_listening: Callable[[tuple[str, int]], None] | None = None, staged: bool = True,
          cpu_cap: Iterable[str] | None = None, allow_changed_files: bool = False,
          allow_lower_limits: bool = False, verify_key: "Ed25519PublicKey | None" = None,
          tls: TlsConfig | None = None, allow: Allow | None = None) -> list[ReceiveResult]:
    """Listen on ``host:port`` (:func:`open_listener`), then :func:`serve_on` it."""
    with open_listener(host, port) as s:
        if on_listening is not None:
            on_listening(s.getsockname()[:2])
        return serve_on(s, root, token, once=once, on_event=on_event, staged=staged, cpu_cap=cpu_cap,
                        allow_changed_files=allow_changed_files, allow_lower_limits=allow_lower_limits,
                        verify_key=verify_key, tls=tls, allow=allow)


def open_listener(host: str, port: int) -> socket.socket:
    """The receiver's listening socket; a bad address is a UsageError (before anything else is done)."""
    return listen(host, port, backlog=BACKLOG)


def serve_on(listener: socket.socket, root: str, token: str | bytes, *, once: bool = False,
             on_event: Callable[[str], None] | None = None, staged: bool = True,
             cpu_cap: Iterable[str] | None = None, allow_changed_files: bool = False,
             allow_lower_limits: bool = False, verify_key: "Ed25519PublicKey | None" = None,
             tls: TlsConfig | None = None, allow: Allow | None = None) -> list[ReceiveResult]:
    """Accept migrations on a listening socket into ``root``: one with ``once``, else until interrupted.

    Only authenticated sources count: strangers (:class:`_Door`) neither
    block a migration nor end a ``once`` receiver.  One migration runs at a
    time, on this thread; with ``once`` the listener is closed as soon as it
    starts, so the restored process can bind the same address and port (a
    server migrated to the receiver's own port).  ``staged``, ``cpu_cap``, ``allow_changed_files``,
    ``allow_lower_limits``, ``verify_key``: see
    :func:`_receive`.  ``tls``: sources must come in TLS (:mod:`ckpt.migrate.tls`); ``allow``: only
    from these addresses (others are closed at accept).
    """
    os.makedirs(root, mode=0o700, exist_ok=True)
    lock = threading.Lock()  # one line at a time from the door's threads and ours

    def say(msg: str) -> None:
        if on_event is not None:
            with lock:
                on_event(msg)

    results: list[ReceiveResult] = []
    journal.prune(root)
    door = _Door(listener, token, say, root=root, tls=tls, allow=allow)
    try:
        while True:
            ch, hello = door.next_source()
            if once:
                door.stop_accepting()
            try:
                results.append(_receive(ch, hello, root, say=say, staged=staged, cpu_cap=cpu_cap,
                                        allow_changed_files=allow_changed_files,
                                        allow_lower_limits=allow_lower_limits, verify_key=verify_key))
            finally:
                door.done()
            if once:
                return results
    finally:
        door.close()
