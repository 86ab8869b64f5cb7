"""Pseudo-terminal pairs held inside the tree, and the controlling terminals and sessions they are.

A pair is a ``/dev/ptmx`` master and its ``/dev/pts/N`` slave (tmux, screen,
expect, script).  Only pairs whose master *and* slave are held by processes
of the tree are dumped here (kind PTY: :data:`KIND` claims every pty end and
``/dev/tty``, :func:`dump_tree` pairs them); a slave whose master is outside
the tree is the terminal of a job, re-attached to the restorer's with
``--shell-job`` (:mod:`ckpt.resources.paths`), and a master whose slave no
process of the tree holds is refused.

Dump (from ckpt, on ``pidfd_getfd`` duplicates: a tty's ioctls act on the
terminal, not on the descriptor): the slave's termios (``TCGETS2``; a
master's termios requests act on its slave), the window size, packet mode,
lock state, each end's exclusive mode, and the bytes queued both ways.  A
terminal cannot be peeked, so they are read and put back at once, as pipes
are (:mod:`ckpt.resources.pipes`): the slave's input (written by the master,
not read yet) is read from the slave — in canonical mode one ``read`` per
line, so the line ends are known, then, with ICANON off for a moment, the
line being typed — and put back with ``TIOCSTI``, which hands each byte to
the line discipline synchronously, under a termios that neither echoes nor
signals nor translates and whose special characters are bytes the data does
not use (a ``\\n`` inside a line goes in behind LNEXT, a line ended by VEOF
ends with VEOF again); the master's input (written by the slave) is read
from the master and written back through the slave with OPOST off.  Packet
mode is off meanwhile (a termios change would queue a status byte for the
master).  Refused, naming the terminal: a packet-mode status byte not read
yet, output stopped (^S, ``tcflow``) or a full queue, EXTPROC.

Restore (:class:`PtyPairs`): each pair is opened once, by ckpt, when the
first process that holds an end or has it as its controlling terminal is
built — ``/dev/ptmx``, ``TIOCSPTLCK`` 0, the slave opened — and given its
state before anything can see it (so setting the window size sends no
SIGWINCH).  devpts numbers a new pair with the lowest free index and has no
way to ask for one (``ptmx_open`` → ``devpts_new_index``, an
``ida_alloc_max``); pairs are opened and held until the index comes up, so
the slave keeps its number N when N is free, and is /dev/pts/M with a note
when not.  Each end is installed in the processes with ``pidfd_getfd``.
The controlling terminal is set while the helpers are built: a session
leader takes it (``TIOCSCTTY``) before its children are cloned, so they
inherit it as they did, and a process that had none drops the one it
inherited (``TIOCNOTTY``); once every process is in its group, the leader
gives the foreground to the recorded group (``TIOCSPGRP``), the locks are
set, and each process's ``tty_nr`` and ``tpgid`` are checked.
"""

from __future__ import annotations

import ctypes
import errno
import os
import select
import stat
import struct
import termios
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from .. import interrupts
from ..control.inject import Injector, Scratch
from ..errors import CkptError, RestoreError, Unsupported
from ..image.pb import files_pb2, process_pb2
from ..kernel import tty as kt
from ..kernel.arch_x86_64 import NR
from ..kernel.ioctl import ioctl
from ..kernel.pidfd import dup_from
from ..procfs.stat import Stat, read_stat
from . import paths
from .fdkind import DumpOptions, FdDump, FdKind, OpenFd, Opener, refuse

__all__ = ["FEATURE", "KIND", "dump_tree", "PtyPairs", "controlling", "is_master", "slave_of", "SAME_INDEX_TRIES",
           "PUT_BACK_TIMEOUT"]

#: The image feature (:mod:`ckpt.image.compat`) of an image holding a pty pair.
FEATURE = "pty-pairs"
#: Pairs held open at most while looking for a pair's old index (devpts gives the lowest free one).
SAME_INDEX_TRIES = 256
#: Seconds a write back into a terminal may wait for room.
PUT_BACK_TIMEOUT = 5.0
TIOCSTI = 0x5412
_READ = 1 << 16
#: Input translations and flow control: off while bytes are handed back (they were applied already).
_IFLAG_OFF = (termios.INLCR | termios.IGNCR | termios.ICRNL | termios.IUCLC | termios.IXON | termios.IXOFF
              | termios.ISTRIP | termios.PARMRK)
_LFLAG_OFF = (termios.ISIG | termios.ECHO | termios.ECHOE | termios.ECHOK | termios.ECHONL | termios.ECHOCTL
              | termios.ECHOPRT | termios.ECHOKE | termios.NOFLSH | termios.TOSTOP | termios.XCASE
              | termios.FLUSHO | termios.PENDIN | kt.EXTPROC)
#: c_cc entries that are special to canonical mode with IEXTEN (and would act on a byte handed back).
_CANON_CC = (termios.VERASE, termios.VKILL, termios.VWERASE, termios.VREPRINT, termios.VDISCARD)


def _rdev(st: os.stat_result) -> tuple[int, int] | None:
    return (os.major(st.st_rdev), os.minor(st.st_rdev)) if stat.S_ISCHR(st.st_mode) else None


def is_master(st: os.stat_result) -> bool:
    """A pty master (an open of /dev/ptmx or /dev/pts/ptmx)."""
    return _rdev(st) == kt.PTMX_RDEV


def slave_of(st: os.stat_result) -> int | None:
    """N of the pty slave /dev/pts/N ``st`` is, else None."""
    rdev = _rdev(st)
    return kt.slave_index(*rdev) if rdev else None


def _tty_nr(index: int) -> int:
    """The kernel's encoding of a slave's device number, as /proc/PID/stat prints tty_nr (new_encode_dev)."""
    major, minor = kt.PTY_SLAVE_MAJORS.start + index // 256, index % 256
    return (minor & 0xFF) | (major << 8) | ((minor & ~0xFF) << 12)


def _index_of_tty_nr(nr: int) -> int | None:
    major, minor = (nr >> 8) & 0xFFF, (nr & 0xFF) | ((nr >> 12) & 0xFFF00)
    return kt.slave_index(major, minor)


# --- the queues --------------------------------------------------------------------------------

def _ready(fd: int, events: int, timeout_ms: int = 0) -> int:
    """poll(2) of one descriptor.  On a tty it also runs the queued work that moves written bytes into
    the line discipline (n_tty_poll → tty_buffer_flush_work) when nothing is readable yet."""
    p = select.poll()
    p.register(fd, events)
    got = p.poll(timeout_ms)
    return got[0][1] if got else 0


def _readable(fd: int) -> bool:
    return bool(_ready(fd, select.POLLIN) & select.POLLIN)


def _drain(fd: int) -> bytes:
    """Every byte a read of ``fd`` gets now (VMIN 1, VTIME 0, or a master, whose termios is raw)."""
    out = bytearray()
    while _readable(fd):
        chunk = os.read(fd, _READ)
        if not chunk:
            break
        out += chunk
    return bytes(out)


def _line_ends(t: kt.termios2) -> set[int]:
    """The bytes that end a line in canonical mode besides VEOF (VEOL2 only with IEXTEN)."""
    ends = {0x0A, t.c_cc[termios.VEOL]}
    if t.c_lflag & termios.IEXTEN:
        ends.add(t.c_cc[termios.VEOL2])
    return ends


def _drain_input(s: kt.termios2, fd: int, lines: list[files_pb2.PtyInput], partial: bytearray) -> None:
    """Read the slave's input queue into ``lines`` (and ``partial``) as it is read, so that whatever was
    taken can be put back if a later read fails.  ``s``: the slave's termios, set again by the caller."""
    t = kt.termios2.from_buffer_copy(s)
    t.c_cc[termios.VMIN], t.c_cc[termios.VTIME] = 1, 0
    if not s.c_lflag & termios.ICANON:
        kt.tcsets2(fd, t)
        lines.append(files_pb2.PtyInput(data=b""))
        lines[-1].data = _drain(fd)
        if not lines[-1].data:
            lines.pop()
        return
    ends = _line_ends(s)
    for _ in range(_READ):  # a line a read; no more lines than bytes in the queue (each EOF takes one)
        if not _readable(fd):
            break
        data = os.read(fd, _READ)  # one line: canonical reads stop at its end
        lines.append(files_pb2.PtyInput(data=data, eof=not data or data[-1] not in ends))
    t.c_lflag &= ~termios.ICANON  # the line being typed becomes readable (n_tty_set_termios)
    kt.tcsets2(fd, t)
    partial += _drain(fd)


def _unused(data: Iterable[bytes], avoid: set[int], n: int) -> list[int]:
    used = set(avoid)
    for d in data:
        used.update(d)
    free = [b for b in range(0xFF, 0, -1) if b not in used]
    if len(free) < n:
        raise Unsupported("the bytes queued in a terminal use almost every byte value: they cannot be put back "
                          "with their line ends")
    return free[:n]


def _handing_back(final: kt.termios2, lines: Sequence[files_pb2.PtyInput], partial: bytes) -> tuple[kt.termios2, bytes]:
    """The termios to hand the input back under, and the bytes to hand (see the module doc)."""
    t = kt.termios2.from_buffer_copy(final)
    t.c_iflag &= ~_IFLAG_OFF
    t.c_oflag &= ~termios.OPOST
    t.c_lflag &= ~_LFLAG_OFF
    t.c_cc[termios.VMIN], t.c_cc[termios.VTIME] = 1, 0
    if not final.c_lflag & termios.ICANON:
        t.c_lflag &= ~termios.IEXTEN
        return t, b"".join(ln.data for ln in lines) + partial
    t.c_lflag |= termios.IEXTEN
    ends = _line_ends(final)
    unused, eof, lnext = _unused([*(ln.data for ln in lines), partial], ends, 3)
    for i in _CANON_CC:
        t.c_cc[i] = unused
    t.c_cc[termios.VEOF], t.c_cc[termios.VLNEXT] = eof, lnext
    if not final.c_lflag & termios.IEXTEN:
        t.c_cc[termios.VEOL2] = unused  # no line end in the original: none here either
    out = bytearray()

    def literal(data: bytes) -> None:
        for b in data:
            if b in ends:
                out.append(lnext)
            out.append(b)

    for ln in lines:
        if ln.eof:
            literal(ln.data)
            out.append(eof)
        else:
            literal(ln.data[:-1])
            out.append(ln.data[-1])
    literal(partial)
    return t, bytes(out)


def _write_all(fd: int, data: bytes, what: str) -> None:
    view = memoryview(data)
    while view:
        if not _ready(fd, select.POLLOUT, int(PUT_BACK_TIMEOUT * 1000)) & select.POLLOUT:
            raise CkptError(f"{what}: {len(view)} bytes could not be written back (no room for "
                            f"{PUT_BACK_TIMEOUT:.0f} s)")
        try:
            view = view[os.write(fd, view):]
        except BlockingIOError:
            continue


def _put_back(m: int, s: int, final: kt.termios2, lines: Sequence[files_pb2.PtyInput], partial: bytes,
              output: bytes, what: str) -> None:
    """The slave's input and the master's input into the pair, then ``final`` as the slave's termios."""
    t, data = _handing_back(final, lines, partial)
    kt.tcsets2(s, t)
    try:
        ch = ctypes.c_char()
        for b in data:  # TIOCSTI: straight into the line discipline, one byte at a time, synchronously
            ch.value = bytes((b,))
            ioctl(s, TIOCSTI, ch, "ioctl(TIOCSTI)")
        _write_all(s, output, what)  # OPOST off: as the slave's program wrote them, processed already
    finally:
        kt.tcsets2(s, final)


# --- dump -------------------------------------------------------------------------------------

def _termios_record(t: kt.termios2) -> files_pb2.Termios:
    return files_pb2.Termios(iflag=t.c_iflag, oflag=t.c_oflag, cflag=t.c_cflag, lflag=t.c_lflag, line=t.c_line,
                             cc=bytes(t.c_cc), ispeed=t.c_ispeed, ospeed=t.c_ospeed)


def _termios_of(r: files_pb2.Termios) -> kt.termios2:
    t = kt.termios2(c_iflag=r.iflag, c_oflag=r.oflag, c_cflag=r.cflag, c_lflag=r.lflag, c_line=r.line,
                    c_ispeed=r.ispeed, c_ospeed=r.ospeed)
    cc = bytes(r.cc)[:kt.NCCS]
    ctypes.memmove(t.c_cc, cc, len(cc))
    return t


def _read_pair(m: int, s: int, pair: files_pb2.PtyPair, what: str) -> None:
    """The state of the pair behind our duplicates ``m`` (master) and ``s`` (slave) into ``pair``; its queues
    are read and put back (see the module doc)."""
    final = kt.tcgets2(s)
    pair.termios.CopyFrom(_termios_record(final))
    w = kt.get_winsize(s)
    pair.winsize.CopyFrom(files_pb2.Winsize(row=w.ws_row, col=w.ws_col, xpixel=w.ws_xpixel, ypixel=w.ws_ypixel))
    pair.packet = bool(kt.get_int(m, kt.TIOCGPKT, "ioctl(TIOCGPKT)"))
    pair.locked = bool(kt.get_int(m, kt.TIOCGPTLCK, "ioctl(TIOCGPTLCK)"))
    pair.master_exclusive = bool(kt.get_int(m, kt.TIOCGEXCL, "ioctl(TIOCGEXCL)"))
    pair.slave_exclusive = bool(kt.get_int(s, kt.TIOCGEXCL, "ioctl(TIOCGEXCL)"))
    if final.c_lflag & kt.EXTPROC:
        raise Unsupported(f"{what} is in EXTPROC mode (line editing done by the master's program), which ckpt "
                          "cannot restore")
    if pair.packet and _ready(m, select.POLLPRI) & select.POLLPRI:
        raise Unsupported(f"{what}: its master has a packet-mode status byte (TIOCPKT) it has not read yet",
                          hint="dump again once the program has read it")
    if not _ready(s, select.POLLOUT) & select.POLLOUT:
        raise Unsupported(f"{what}: its output is stopped (^S or tcflow) or its master's queue is full",
                          hint="dump again once the terminal's output flows")
    lines: list[files_pb2.PtyInput] = []
    partial, output = bytearray(), b""
    with interrupts.deferred():  # what is read lives only here until it is back
        if pair.packet:
            kt.set_int(m, kt.TIOCPKT, 0, "ioctl(TIOCPKT, 0)")
        try:
            try:
                _drain_input(final, s, lines, partial)
                output = _drain(m)
            finally:
                try:
                    _put_back(m, s, final, lines, bytes(partial), output, what)
                except OSError as exc:
                    raise CkptError(f"{what}: its queued bytes could not be put back ({exc}); the program lost "
                                    "them") from exc
        finally:
            if pair.packet:
                kt.set_int(m, kt.TIOCPKT, 1, "ioctl(TIOCPKT, 1)")  # (which clears the status: none was pending)
    pair.input.extend(lines)
    pair.partial, pair.output = bytes(partial), output


def _index_of(fd: int) -> int:
    return kt.get_int(fd, kt.TIOCGPTN, "ioctl(TIOCGPTN)")


def _claims(o: OpenFd) -> bool:
    """A master, a slave, or /dev/tty: a pair's end if :func:`dump_tree` finds the pair in the tree."""
    return is_master(o.st) or slave_of(o.st) is not None or _rdev(o.st) == kt.TTY_RDEV


def _ctty_of(pid: int) -> int | None:
    """The index of the pty slave that is the controlling terminal of ``pid``, if it is one."""
    nr = read_stat(pid).tty_nr
    return _index_of_tty_nr(nr) if nr else None


def _dump(d: FdDump, e: files_pb2.FileEntry) -> None:
    """The end's index and side; the pair's state comes with :func:`dump_tree`.  /dev/tty of a process whose
    controlling terminal is no pty slave is a plain terminal (:mod:`ckpt.resources.paths`)."""
    if _rdev(d.o.st) == kt.TTY_RDEV:
        index = None if d.in_flight_only else _ctty_of(d.pid)
        if index is None:
            e.kind = files_pb2.FileEntry.CHR
            paths.CHR_KIND.dump(d, e)
            return
        e.pty.CopyFrom(files_pb2.Pty(index=index, via_ctty=True))
        return
    if d.in_flight_only:
        raise d.refuse(f"a pty end ({d.o.link}) in flight in a unix socket's queue (SCM_RIGHTS): ckpt restores a "
                       "pty pair only from the descriptors of processes", "dump once the program has received it")
    if is_master(d.o.st):
        dup = dup_from(d.pid, d.fd)
        try:
            e.pty.CopyFrom(files_pb2.Pty(index=_index_of(dup), master=True))
        finally:
            os.close(dup)
    else:
        e.pty.CopyFrom(files_pb2.Pty(index=slave_of(d.o.st)))


def _restore(r: Opener, e: files_pb2.FileEntry, fds: list[int]) -> int:
    if r.ptys is None:
        raise RestoreError(f"file {e.id} is an end of the pty pair /dev/pts/{e.pty.index}, and the restore has no "
                           "pty pairs to give")
    return r.ptys.open(r.inj, e, r.openat)


#: The registry's entry (:data:`ckpt.resources.files.KINDS`).
KIND = FdKind(files_pb2.FileEntry.PTY, _claims, _dump, _restore)


def dump_tree(ends: Sequence[tuple[files_pb2.FileEntry, int, OpenFd]], opts: DumpOptions) -> None:
    """Pair the pty ends of a tree (entry, pid and descriptor of each open file) and read each pair's state
    into its master's entry.  A slave (or /dev/tty) whose master the tree does not hold is a terminal of
    the job, handled as :mod:`ckpt.resources.paths` does (``--shell-job``, else refused); a master whose
    slave the tree does not hold is refused."""
    masters: dict[int, tuple[files_pb2.FileEntry, int, OpenFd]] = {}
    slaves: dict[int, list[tuple[int, OpenFd]]] = {}
    for e, pid, o in ends:
        if e.pty.master:
            if e.pty.index in masters:
                raise refuse(pid, o.fd, f"a pty master of index {e.pty.index}, as is file "
                             f"{masters[e.pty.index][0].id}: the tree uses two devpts instances")
            masters[e.pty.index] = (e, pid, o)
    for e, pid, o in ends:
        if e.pty.master:
            continue
        if e.pty.index not in masters:  # the job's terminal, outside the tree
            e.ClearField("pty")
            e.kind = files_pb2.FileEntry.CHR
            paths.CHR_KIND.dump(FdDump(pid, o, opts), e)
        elif not e.pty.via_ctty:  # (/dev/tty names it through the holder: it may have dropped it since)
            slaves.setdefault(e.pty.index, []).append((pid, o))
    for index, (e, mpid, mo) in sorted(masters.items()):
        what = f"the pseudo-terminal /dev/pts/{index} (master: fd {mo.fd} of process {mpid})"
        held = slaves.get(index)
        if not held:
            raise Unsupported(f"{what}: no process of the tree holds its slave (closed, never opened, or held "
                              "outside the tree)", hint="ckpt restores a pty pair whose both ends the tree holds")
        if len({o.st.st_dev for _, o in held}) > 1:
            raise Unsupported(f"{what}: slaves of that index on two devpts instances are held by the tree")
        spid, so = held[0]
        m = dup_from(mpid, mo.fd)
        try:
            s = dup_from(spid, so.fd)
            try:
                _read_pair(m, s, e.pty.pair, what)
            finally:
                os.close(s)
        finally:
            os.close(m)


def controlling(files: Iterable[files_pb2.FileEntry], stats: Mapping[int, Stat]) -> dict[int, process_pb2.Ctty]:
    """The processes whose controlling terminal is the slave of a pair of the image, with its foreground group.

    Unsupported for what a restore could not give back: such a terminal in a session whose leader is not
    dumped, a process that is not its session's leader and whose parent (which it inherits the terminal
    from) has another, or a foreground group with no process of the tree in it.
    """
    pairs = {e.pty.index for e in files if e.HasField("pty")}
    out: dict[int, process_pb2.Ctty] = {}
    for pid, st in stats.items():
        index = _index_of_tty_nr(st.tty_nr) if st.tty_nr else None
        if index in pairs:
            out[pid] = process_pb2.Ctty(index=index, foreground=st.tpgid)
    groups = {st.pgrp for st in stats.values()}
    for pid, c in out.items():
        st = stats[pid]
        where = f"process {pid}: its controlling terminal /dev/pts/{c.index}"
        if st.session not in stats:
            raise Unsupported(f"{where} belongs to session {st.session}, whose leader is not dumped",
                              hint="dump the session leader with it (-t of its ancestor)")
        if st.session != pid and st.ppid in stats and out.get(st.ppid) != c:
            raise Unsupported(f"{where} is not its parent's ({st.ppid}), and it does not lead its session: a "
                              "restored process can only inherit it")
        if c.foreground > 0 and c.foreground not in groups:
            raise Unsupported(f"{where} has foreground process group {c.foreground}, which no process of the tree "
                              "is in")
    return out


# --- restore ----------------------------------------------------------------------------------

@dataclass
class _Made:
    """A pair opened for the restore: our master (the processes' master is this open file) and our own open
    of its slave (to set it up, and to install for TIOCSCTTY), until :meth:`PtyPairs.close`."""

    index: int
    master: int
    slave: int


class PtyPairs:
    """The pty pairs of a restore, each opened once, by ckpt, when a process first needs it (see the module doc)."""

    def __init__(self, files: Iterable[files_pb2.FileEntry]) -> None:
        self.pairs = {e.pty.index: e for e in files if e.HasField("pty") and e.pty.master}
        self.made: dict[int, _Made] = {}
        self.notes: list[str] = []

    def __bool__(self) -> bool:
        return bool(self.pairs)

    def _pair(self, index: int) -> _Made:
        made = self.made.get(index)
        if made is not None:
            return made
        e = self.pairs.get(index)
        if e is None:
            raise RestoreError(f"the image names the pty /dev/pts/{index}, whose pair it does not hold")
        flags = os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC
        m = _open_master(index, flags)
        try:
            kt.set_int(m, kt.TIOCSPTLCK, 0, "ioctl(TIOCSPTLCK, 0)")
            new = kt.get_int(m, kt.TIOCGPTN, "ioctl(TIOCGPTN)")
            s = os.open(f"/dev/pts/{new}", flags)
        except BaseException:
            os.close(m)
            raise
        made = self.made[index] = _Made(new, m, s)
        p = e.pty.pair
        w = p.winsize
        _put_back(m, s, _termios_of(p.termios), p.input, p.partial, p.output, f"the pseudo-terminal /dev/pts/{new}")
        kt.set_winsize(s, kt.winsize(w.row, w.col, w.xpixel, w.ypixel))  # no group to signal yet: no SIGWINCH
        if p.packet:
            kt.set_int(m, kt.TIOCPKT, 1, "ioctl(TIOCPKT, 1)")
        for fd, on in ((m, p.master_exclusive), (s, p.slave_exclusive)):
            if on:
                ioctl(fd, kt.TIOCEXCL, 0, "ioctl(TIOCEXCL)")
        if new != index:
            self.notes.append(f"the pseudo-terminal /dev/pts/{index} is /dev/pts/{new} now (that number was taken): "
                              "a program that reads its terminal's name sees the new one")
        return made

    def open(self, inj: Injector, e: files_pb2.FileEntry, openat: Callable[[str, int, str], int]) -> int:
        """The end ``e`` as a new descriptor of the process of ``inj`` (its status flags set).  ``openat(path,
        flags, what)``: opens a path in that process (for /dev/tty, which names the opener's terminal)."""
        made = self._pair(e.pty.index)
        keep = e.flags & ~(os.O_NONBLOCK | os.O_ASYNC | os.O_CREAT | os.O_EXCL | os.O_TRUNC | os.O_CLOEXEC)
        if e.pty.via_ctty:
            fd = openat("/dev/tty", keep | os.O_NOCTTY | os.O_CLOEXEC, "its controlling terminal")
        elif e.pty.master:
            fd = inj.receive(made.master, f"pty master {made.index}")
        else:
            ours = os.open(f"/dev/pts/{made.index}", keep | os.O_NOCTTY | os.O_CLOEXEC)
            try:
                fd = inj.receive(ours, f"/dev/pts/{made.index}")
            finally:
                os.close(ours)
        if e.flags & (os.O_NONBLOCK | os.O_ASYNC):  # in the process: O_ASYNC makes it the owner (tty_fasync)
            inj.call(NR.fcntl, fd, 4, e.flags & (os.O_NONBLOCK | os.O_ASYNC | os.O_APPEND),  # F_SETFL
                     name=f"fcntl({fd}, F_SETFL)")
        return fd

    def _ioctl(self, inj: Injector, made: _Made, request: int, arg: int, call: str) -> None:
        """``ioctl`` on the pair's slave in the process of ``inj``, through a descriptor installed for it."""
        fd = inj.receive(made.slave, f"/dev/pts/{made.index}")
        try:
            inj.call(NR.ioctl, fd, request, arg, name=call)
        finally:
            inj.close(fd)

    def take_ctty(self, inj: Injector, entry: process_pb2.ProcessEntry) -> None:
        """Give the helper of ``entry`` its controlling terminal, before its children are cloned (they inherit
        it): a session leader takes it; a process that had none drops the one of ours it inherited."""
        if not self.pairs:
            return
        now = read_stat(inj.pid).tty_nr
        ours = {_tty_nr(m.index): m for m in self.made.values()}
        if entry.HasField("ctty"):
            made = self._pair(entry.ctty.index)
            if now == _tty_nr(made.index):
                return
            if entry.sid != entry.pid:
                raise RestoreError(f"process {entry.pid} cannot get its controlling terminal /dev/pts/{made.index}: "
                                   "it does not lead its session, and its parent does not have it")
            try:
                self._ioctl(inj, made, kt.TIOCSCTTY, 0, "ioctl(TIOCSCTTY)")
            except OSError as exc:
                raise RestoreError(f"process {entry.pid}: /dev/pts/{made.index} cannot be made its controlling "
                                   f"terminal: {exc.strerror}") from exc
        elif now in ours:
            self._ioctl(inj, ours[now], kt.TIOCNOTTY, 0, "ioctl(TIOCNOTTY)")

    def finish(self, procs: Mapping[int, tuple[Injector, Scratch, process_pb2.ProcessEntry]]) -> list[str]:
        """Once every process is in its group: foreground groups, locks; then each process's terminal and
        foreground group as /proc/PID/stat prints them must be the dump's (RestoreError otherwise)."""
        if not self.pairs:
            return []
        for pid, (inj, scratch, entry) in procs.items():
            c = entry.ctty if entry.HasField("ctty") else None
            if c is not None and entry.sid == pid and c.foreground > 0 and c.foreground != entry.pgid:
                scratch.write(0, struct.pack("<i", c.foreground))
                try:
                    self._ioctl(inj, self._pair(c.index), kt.TIOCSPGRP, scratch.addr, f"ioctl(TIOCSPGRP, {c.foreground})")
                except OSError as exc:
                    raise RestoreError(f"process group {c.foreground} cannot be made the foreground of "
                                       f"/dev/pts/{c.index}: {exc.strerror}") from exc
        for index, e in self.pairs.items():
            if e.pty.pair.locked:
                kt.set_int(self._pair(index).master, kt.TIOCSPTLCK, 1, "ioctl(TIOCSPTLCK, 1)")
        ours = {_tty_nr(m.index) for m in self.made.values()}
        for pid, (_, _, entry) in procs.items():
            st = read_stat(pid)
            if entry.HasField("ctty"):
                made = self._pair(entry.ctty.index)
                want = (_tty_nr(made.index), entry.ctty.foreground)
                if (st.tty_nr, st.tpgid) != want:
                    raise RestoreError(f"process {pid}: controlling terminal {st.tty_nr:#x} with foreground group "
                                       f"{st.tpgid} after the restore, wanted /dev/pts/{made.index} ({want[0]:#x}) "
                                       f"and {want[1]}")
            elif st.tty_nr in ours:
                raise RestoreError(f"process {pid} has a controlling terminal of the restore it did not have")
        return list(self.notes)

    def close(self) -> None:
        for made in self.made.values():
            os.close(made.slave)
            os.close(made.master)
        self.made.clear()


def _open_master(index: int, flags: int) -> int:
    """A new pair, numbered ``index`` if that number is free: devpts hands out the lowest free index, so the
    pairs below it are held open until it comes (at most :data:`SAME_INDEX_TRIES`), then closed."""
    held: list[int] = []
    try:
        while True:
            m = os.open("/dev/ptmx", flags)
            got = kt.get_int(m, kt.TIOCGPTN, "ioctl(TIOCGPTN)")
            if got >= index or len(held) >= SAME_INDEX_TRIES:
                return m
            held.append(m)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EIO) and held:  # kernel.pty.max reached: take one of those
            return held.pop()
        raise RestoreError(f"cannot open a pseudo-terminal (/dev/ptmx): {exc.strerror}") from exc
    finally:
        for fd in held:
            os.close(fd)
