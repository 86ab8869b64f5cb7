"""File locks: POSIX record locks, OFD locks, flock locks and leases — read from fdinfo, taken again at restore.

Who owns a lock decides where it is taken again (fs/locks.c):

* a **POSIX** record lock (``fcntl F_SETLK``) belongs to the process — its
  descriptor table; it is not inherited across fork and goes when the process
  closes *any* descriptor of the file.  Restored by an injected ``F_SETLK`` in
  that same process, through its descriptor of the open file it was taken
  through, after the last step of the restore that opens or closes a file in it;
* an **OFD** lock (``F_OFD_SETLK``), a **flock** lock and a **lease**
  (``F_SETLEASE``) belong to the open file description, shared by ``dup`` and
  ``fork``: taken once, in one process holding that open file (the one the
  kernel names, if it is in the tree), and every descriptor of it has it again.

``fdinfo/N`` lists exactly these (``show_fd_locks``: the locks taken through
that open file and owned by the process or by the open file), so the dump needs
nothing else.  Byte ranges are recorded from the start of the file (the kernel
keeps them whence-resolved), a range to EOF as length 0.  Each lock is recorded
on the descriptor to take it through (``FdEntry.locks``); a process blocked
waiting for a lock (``F_SETLKW``, ``flock`` without ``LOCK_NB``: the ``->``
lines of /proc/locks) holds nothing: the freeze interrupts its call, which the
restored thread issues again (the kernel's restart, :mod:`ckpt.resources.blocked`),
so it waits again — for a holder of the tree or one outside it alike.

Refused at dump, naming the process, fd and lock: a lease being broken (its
breaker waits on it and the break's timer is the kernel's), a mandatory lock or
another class the kernel prints (DELEG, ACCESS), a POSIX lock owned by a
process outside the tree, and a lock of an open file only in flight in a unix
socket's queue.  A lock that cannot be taken at restore (another process took a
conflicting one since the dump) fails the restore, naming the holder.

A lease sets the open file's owner to its taker (``lease_setup``), as it did
when the program took it; the owner the image recorded is put back after it.
The lease's break notification names the descriptor it was taken through
(``fa_fd``), which the kernel does not show: it is the lowest one here.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from ..control.inject import Injector, Scratch
from ..errors import RestoreError, Unsupported
from ..image.pb import files_pb2
from ..kernel import locks as kl
from ..kernel.arch_x86_64 import NR
from ..procfs.locks import LockLine, parse_lock, read_proc_locks
from ._scratch import scratch_for

__all__ = ["Holder", "dump_tree", "leased", "restore", "describe"]

FileLock = files_pb2.FileLock
_KINDS = {"POSIX": FileLock.POSIX, "OFDLCK": FileLock.OFD, "FLOCK": FileLock.FLOCK, "LEASE": FileLock.LEASE}
_TYPES = {"READ": kl.F_RDLCK, "WRITE": kl.F_WRLCK}
#: fcntl commands for the open file's owner, which F_SETLEASE sets (struct f_owner_ex {int type; pid_t pid;}).
_F_SETOWN_EX, _F_GETOWN_EX = 15, 16
_OWNER_EX_SIZE = 8


@dataclass(frozen=True)
class Holder:
    """One descriptor of an open file as the dump saw it: process, fd, its link, its fdinfo ``lock:`` lines."""

    pid: int
    fd: int
    link: str
    locks: Sequence[str]


def describe(lock: FileLock) -> str:
    """``POSIX write lock on bytes 0-9``, ``flock exclusive lock``, ``read lease`` …"""
    write = lock.type == kl.F_WRLCK
    if lock.kind == FileLock.FLOCK:
        return f"flock {'exclusive' if write else 'shared'} lock"
    if lock.kind == FileLock.LEASE:
        return f"{'write' if write else 'read'} lease"
    end = "EOF" if lock.length == 0 else str(lock.start + lock.length - 1)
    name = "OFD" if lock.kind == FileLock.OFD else "POSIX"
    return f"{name} {'write' if write else 'read'} lock on bytes {lock.start}-{end}"


def leased(lock_lines: Iterable[str]) -> bool:
    """Does the open file hold a lease?  Opening its file anew (as a build-id read does) would break it."""
    return any(" LEASE " in f" {text} " for text in lock_lines)


# --------------------------------------------------------------------------- dump

def _refuse(h: Holder, what: str, why: str, hint: str | None = None) -> Unsupported:
    return Unsupported(f"process {h.pid}: fd {h.fd} ({h.link}) holds {what}, which ckpt cannot restore: {why}",
                       hint=hint)


def _record(h: Holder, text: str) -> tuple[LockLine, FileLock]:
    """The lock of one ``lock:`` line, or Unsupported if it cannot be restored exactly."""
    try:
        line = parse_lock(text)
    except ValueError:
        raise _refuse(h, f"a file lock the kernel prints as {text!r}", "ckpt does not know that form") from None
    kind = _KINDS.get(line.cls)
    if kind is None:
        raise _refuse(h, f"a file lock of class {line.cls} ({text})",
                      "only POSIX, OFD and flock locks and leases can be taken by a process")
    if kind == FileLock.LEASE:
        if line.state != "ACTIVE":
            raise _refuse(h, f"a lease being broken ({text})",
                          "another process is opening the file and waits for the lease holder to give it up",
                          "let the holder release or downgrade the lease (F_SETLEASE), then dump again")
    elif line.state != "ADVISORY":
        raise _refuse(h, f"a {line.state.lower().strip('*')} lock ({text})", "only advisory locks are restored")
    if line.type not in _TYPES:
        raise _refuse(h, f"a file lock of type {line.type} ({text})", "only read and write locks are restored")
    rec = FileLock(kind=kind, type=_TYPES[line.type], pid=line.pid)
    if kind in (FileLock.POSIX, FileLock.OFD):
        rec.start, rec.length = line.start, line.length
    return line, rec


def dump_tree(groups: Sequence[Sequence[Holder]], fd_entries: Mapping[int, Sequence[files_pb2.FdEntry]], *,
              me: int, in_flight: Mapping[tuple[int, int], str] | None = None) -> None:
    """Record every lock of the tree on the FdEntry to take it through; Unsupported for one that cannot be.

    ``groups``: the descriptors of each open file (dup, fork), in the order the
    dump lists them.  ``fd_entries``: the FdEntries of each process (filled).
    ``me``: this process, whose descriptors in ``groups`` are duplicates of
    files in flight in unix sockets (``in_flight`` says where).
    """
    entry_of = {(pid, f.fd): f for pid, fds in fd_entries.items() for f in fds}
    tree = set(fd_entries)
    for group in groups:
        owned: dict[str, tuple[LockLine, FileLock, Holder]] = {}   # the open file's own locks, once each
        posix: dict[tuple[int, str], tuple[FileLock, Holder]] = {}  # (pid, lock): on the pid's first fd
        for h in group:
            for text in h.locks:
                line, rec = _record(h, text)
                key = " ".join(line.text.split()[1:])  # without the index, which counts per fdinfo read
                if rec.kind != FileLock.POSIX:
                    owned.setdefault(key, (line, rec, h))
                    continue
                if h.pid == me:
                    continue  # ckpt holds no POSIX lock: a line here would be another process's
                if line.pid != h.pid:
                    if line.pid in tree:
                        continue  # a descriptor table shared with that process (CLONE_FILES): recorded there
                    raise _refuse(h, f"a POSIX lock of process {line.pid} ({text})",
                                  "it is owned by a process outside the dumped tree that shares its descriptors")
                posix.setdefault((h.pid, key), (rec, h))
        for rec, h in posix.values():
            entry_of[(h.pid, h.fd)].locks.append(rec)
        holders = [h for h in group if h.pid != me]
        for line, rec, h in owned.values():
            if not holders:
                where = (in_flight or {}).get((h.pid, h.fd), f"fd {h.fd} of ckpt")
                raise Unsupported(f"{where} ({h.link}) holds a {describe(rec)}, which ckpt cannot restore: "
                                  "no process of the tree holds the file to take it through",
                                  hint="dump once the program has received the descriptor")
            taker = next((x for x in holders if x.pid == line.pid), holders[0])
            entry_of[(taker.pid, taker.fd)].locks.append(rec)


# --------------------------------------------------------------------------- restore

def _holders_text(pid: int, fd: int) -> str:
    """The locks other processes hold on the file of ``pid``'s ``fd``, as /proc/locks says (for a message)."""
    try:
        st = os.stat(f"/proc/{pid}/fd/{fd}")
        lines = read_proc_locks()
    except OSError:
        return "another process"
    inode = (os.major(st.st_dev), os.minor(st.st_dev), st.st_ino)
    seen = [f"process {ln.pid} ({ln.cls} {ln.type.lower()} {ln.start}-{'EOF' if ln.length == 0 else ln.end})"
            if ln.pid > 0 else f"an open file of another process ({ln.cls} {ln.type.lower()})"
            for ln in lines if ln.inode == inode and not ln.blocked and ln.pid != pid]
    return ", ".join(dict.fromkeys(seen)) or "another process"


def _take(inj: Injector, s: Scratch, fd: int, lock: FileLock) -> None:
    if lock.type not in (kl.F_RDLCK, kl.F_WRLCK) or lock.start > kl.OFF_MAX or lock.length > kl.OFF_MAX:
        raise RestoreError(f"fd {fd}: the image holds a file lock no process can take (type {lock.type}, "
                           f"start {lock.start}, length {lock.length})")
    what = describe(lock)
    if lock.kind == FileLock.FLOCK:
        op = (kl.LOCK_EX if lock.type == kl.F_WRLCK else kl.LOCK_SH) | kl.LOCK_NB
        inj.call(NR.flock, fd, op, name=f"flock({fd}) for its {what}")
    elif lock.kind == FileLock.LEASE:
        inj.call(NR.fcntl, fd, _F_GETOWN_EX, s.addr, name=f"fcntl({fd}, F_GETOWN_EX)")
        inj.call(NR.fcntl, fd, kl.F_SETLEASE, lock.type, name=f"fcntl({fd}, F_SETLEASE) for its {what}")
        inj.call(NR.fcntl, fd, _F_SETOWN_EX, s.addr, name=f"fcntl({fd}, F_SETOWN_EX)")  # lease_setup set it
    elif lock.kind in (FileLock.POSIX, FileLock.OFD):
        cmd = kl.F_SETLK if lock.kind == FileLock.POSIX else kl.F_OFD_SETLK
        s.write(_OWNER_EX_SIZE, kl.pack_flock(lock.type, lock.start, lock.length))
        inj.call(NR.fcntl, fd, cmd, s.addr + _OWNER_EX_SIZE, name=f"fcntl({fd}) for its {what}")
    else:
        raise RestoreError(f"fd {fd}: a file lock of unknown kind {lock.kind} in the image")


def restore(inj: Injector, fds: Sequence[files_pb2.FdEntry], *, scratch: Scratch | None = None) -> None:
    """Take every lock the image records on the descriptors ``fds`` of the process of ``inj``, as it did.

    Call once the process's descriptors are all in place and nothing in it will close one again.
    RestoreError when a lock cannot be taken (a conflicting one is held outside, or the file is open
    where a lease forbids it), naming the lock and who holds the file.
    """
    todo = [(f.fd, lock) for f in fds for lock in f.locks]
    if not todo:
        return
    with scratch_for(inj, scratch, _OWNER_EX_SIZE + kl.FLOCK.size) as s:
        for fd, lock in todo:
            try:
                _take(inj, s, fd, lock)
            except OSError as exc:
                try:
                    path = os.readlink(f"/proc/{inj.pid}/fd/{fd}")
                except OSError:
                    path = "?"
                if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    why = ("the file is open elsewhere, which a lease does not allow"
                           if lock.kind == FileLock.LEASE else
                           f"it is held by {_holders_text(inj.pid, fd)}")
                    raise RestoreError(f"process {inj.pid}: fd {fd} ({path}): cannot take its {describe(lock)} "
                                       f"again: {why}",
                                       hint="the lock was free once the dumped process ended, and another process "
                                            "has taken it since: let that one release it, then restore again") from exc
                raise RestoreError(f"process {inj.pid}: fd {fd} ({path}): cannot take its {describe(lock)} "
                                   f"again: {os.strerror(exc.errno or 0)}") from exc
