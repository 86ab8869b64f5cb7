"""Open files: a registry that classifies every descriptor once, dumps each open file once, and reopens them.

Dump: for each fd, ``readlink /proc/PID/fd/N`` + ``stat`` through that link +
fdinfo (pos, flags).  Descriptors that share one open file description (dup,
fork) become one :class:`FileEntry` — ``kcmp(KCMP_FILE)`` tells, checked only
between fds on the same inode.  The first kind of :data:`KINDS` that claims
the descriptor fills its entry or refuses it with
:class:`~ckpt.errors.Unsupported` naming the process, fd and what it is; a
descriptor no kind claims is refused too: nothing is skipped silently.  Each
kind is one module holding both sides (:mod:`ckpt.resources.fdkind` says what
a kind is): files by path, deleted files and devices
(:mod:`~ckpt.resources.paths`), pipes and FIFOs (:mod:`~ckpt.resources.pipes`),
memfds, inet and unix sockets, eventfds, epoll, timerfds, signalfds, inotify, the ends of pty pairs
(:mod:`~ckpt.resources.tty`), pidfds (:mod:`~ckpt.resources.pidfd`), O_PATH descriptors
(:mod:`~ckpt.resources.opath`, whatever they point at), files of /proc (:mod:`~ckpt.resources.procfiles`).

What no single open file can decide is done here, once every entry exists:
no end of each pipe is held outside the tree (its other end may be closed),
or one end is stdio handed over (``--inherit-fd``), or the dump is refused naming who holds the other end
(DESIGN §3: stray descriptors happen); the pipe's bytes are read; unix sockets
are linked to their peers (:func:`ckpt.resources.unix.dump_tree`); pty ends pair up and each pair's
state is read (:func:`ckpt.resources.tty.dump_tree`); an epoll's
watches are resolved to entries; where each deleted file's bytes are read from
is noted (:mod:`~ckpt.resources.ghost`: one inode however many open files and
mappings reach it, stored with the memory); each file's
F_SETOWN owner and F_SETSIG signal are recorded; each file lock and lease is
recorded on the descriptor to take it through again (:mod:`ckpt.resources.locks`,
which the restore calls once the process's threads exist).

Restore runs in the helper, which has closed all its descriptors: each file
is made inside it by its kind (so the open is checked against the target's
own credentials — call this before dropping them), moved to its fd numbers
with ``dup3`` (placing is safe: nothing else is open), and given its
FD_CLOEXEC, owner and the status flags its kind could not pass
(:mod:`~ckpt.resources.statusflags`).  In a tree, a file used by several processes is made
once and handed on (:class:`SharedFiles`).
"""

from __future__ import annotations

import fcntl
import os
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from ..control.inject import Injector, Scratch
from ..control.seize import FrozenProcess
from ..errors import CkptError, RestoreError, Unsupported
from ..image.pb import common_pb2, files_pb2
from ..kernel.arch_x86_64 import NR, PAGE_SIZE
from ..kernel.kcmp import same_file
from ..kernel.pidfd import dup_from, pidfd_getfd, pidfd_open
from ..procfs.fdinfo import read_fdinfo
from ..procfs.holders import holders
from ..procfs.snapshot import Snapshot
from . import (epoll, eventfd, fileid, ghost, inotify, locks, memfd, netlink, opath, packet, paths, pidfd, pipes,
               procfiles, signalfd, sockets, statusflags, tcp, timerfd, tty, unix)
from .fdkind import DumpOptions, FdDump, FdKind, OpenFd, Opener, StdioPolicy, refuse
from .paths import SIMPLE_DEVICES
from ._scratch import scratch_for

__all__ = [
    "DELETED_MAX", "SIMPLE_DEVICES", "KINDS", "StdioPolicy", "OpenFd", "FilesDump", "classify", "record", "dump", "restore",
    "content_from_image",
]

FileEntry = files_pb2.FileEntry
K = FileEntry.Kind

#: Largest deleted-but-open file whose content a dump stores.
DELETED_MAX = DumpOptions.deleted_max
#: fcntl commands Python's module lacks, and struct f_owner_ex {int type; pid_t pid;}.
_F_SETSIG, _F_GETSIG, _F_SETOWN_EX, _F_GETOWN_EX = 10, 11, 15, 16
_F_OWNER_PGRP = 2
_F_OWNER_EX = struct.Struct("<ii")
_STDIO = (0, 1, 2)

#: Every kind of descriptor ckpt handles, in the order they are asked to claim one (a /proc file, O_PATH or not;
#: an O_PATH descriptor by its flags, whatever it names; a pipe's or a socket's link before the file types by
#: mode; a memfd, a regular file by its mode, by its /memfd: name first; a pty's end, a character device, before
#: the other devices).
KINDS: tuple[FdKind, ...] = (
    procfiles.KIND, opath.KIND, pipes.PIPE_KIND, sockets.KIND, unix.KIND, epoll.KIND, eventfd.KIND, timerfd.KIND,
    signalfd.KIND, inotify.KIND, pidfd.KIND, memfd.KIND, paths.REG_KIND, paths.DIR_KIND, pipes.FIFO_KIND, tty.KIND,
    paths.CHR_KIND, packet.KIND, netlink.KIND,
)
_BY_KIND = MappingProxyType({k.kind: k for k in KINDS})


@dataclass(frozen=True)
class FilesDump:
    """The fds of each process, the open files they name (once for the tree), the saved contents of deleted files."""

    fds_of: Mapping[int, tuple[files_pb2.FdEntry, ...]]
    files: tuple[FileEntry, ...]
    contents: Mapping[str, bytes]
    #: A /proc path opening each deleted file the tree holds, by content owner: its bytes are stored with
    #: the memory (ckpt.dump), read while the tree is frozen.
    sources: Mapping[str, str] = field(default_factory=dict)

    @property
    def fds(self) -> tuple[files_pb2.FdEntry, ...]:
        """The fds of the only (or first) process."""
        return next(iter(self.fds_of.values()), ())

    def content(self, ref: common_pb2.ContentRef) -> bytes:
        """The whole content (holes as zeros); a deleted file's is read now, so only while the tree lives."""
        if ref.owner in self.contents:
            return self.contents[ref.owner]
        return _object_bytes(self.sources[ref.owner], ref.size)

    def write(self, writer: object) -> None:
        """Into an ImageWriter: fds-<pid>.img per process, files.img, and the contents as page data."""
        for pid, fds in self.fds_of.items():
            writer.write_fds(pid, fds)  # type: ignore[attr-defined]
            if any(f.locks for f in fds):
                writer.require("file-locks")  # type: ignore[attr-defined]
        writer.write_files(self.files)  # type: ignore[attr-defined]
        if any(e.HasField("pty") for e in self.files):
            writer.require(tty.FEATURE)  # type: ignore[attr-defined]
        if any(e.unix.name_unlinked for e in self.files):
            writer.require(unix.FEATURE)  # type: ignore[attr-defined]
        for owner, data in self.contents.items():
            with writer.pages(owner) as pw:  # type: ignore[attr-defined]
                pw.add(0, data.ljust(-(-len(data) // PAGE_SIZE) * PAGE_SIZE, b"\0"))


def content_from_image(image: object) -> Callable[[common_pb2.ContentRef], bytes]:
    """A content loader for :func:`restore` reading an image's page data (absent pages are zeros)."""
    def load(ref: common_pb2.ContentRef) -> bytes:
        buf = bytearray(-(-ref.size // PAGE_SIZE) * PAGE_SIZE)
        for vaddr, view in image.iter_pages(ref.owner):  # type: ignore[attr-defined]
            buf[vaddr:vaddr + len(view)] = view
        return bytes(buf[:ref.size])
    return load


# --- classification -------------------------------------------------------

def classify(pid: int, o: OpenFd) -> FdKind:
    """The kind that claims a descriptor (:data:`KINDS`), or Unsupported naming it."""
    for k in KINDS:
        if k.claims is not None and k.claims(o):
            return k
    if o.link.startswith("anon_inode:"):
        raise refuse(pid, o.fd, f"an anonymous inode ({o.link[len('anon_inode:'):]})")
    raise refuse(pid, o.fd, f"{o.link} (mode {o.st.st_mode:o})")


# --- dump -----------------------------------------------------------------

def _open_fds(pid: int, snap: Snapshot, skip: frozenset[int] = frozenset()) -> list[OpenFd]:
    out = []
    for fd, link in snap.fds:
        if fd in skip:
            continue  # ckpt's own parked dirty-tracking userfaultfd: never part of the image
        try:
            st = os.stat(f"/proc/{pid}/fd/{fd}")
        except OSError as exc:
            raise refuse(pid, fd, f"{link} and cannot be examined ({exc.strerror})") from exc
        out.append(OpenFd(fd, link, st, snap.fdinfo(fd)))
    return out


def _group(fds: list[tuple[int, OpenFd]]) -> list[list[tuple[int, OpenFd]]]:
    """(pid, descriptor)s grouped by open file description (dup in one process, fork across processes),
    each group in the given order, groups by their first member."""
    by_inode: dict[tuple[int, int], list[list[tuple[int, OpenFd]]]] = {}
    groups: list[list[tuple[int, OpenFd]]] = []
    for pid, o in fds:
        candidates = by_inode.setdefault(o.dev_ino, [])
        for g in candidates:
            gpid, go = g[0]
            if same_file(gpid, go.fd, o.fd, pid):
                g.append((pid, o))
                break
        else:
            g = [(pid, o)]
            candidates.append(g)
            groups.append(g)
    return groups


def _may_carry(o: OpenFd) -> bool:
    """Can this descriptor's receive queue hold descriptors in flight?  Only those are peeked early: a peek
    marks a zero-length datagram as peeked, and the queue's own dump then has to read and resend it."""
    return o.link.startswith("socket:[") and o.info.scm_fds != 0


@dataclass
class _Carried:
    """The descriptors in flight in the unix sockets of a frozen tree (SCM_RIGHTS, not received yet):
    ckpt's duplicates, from a peek, held while the tree is dumped so that each joins the registry like a
    descriptor of one more process — this one.  ``where``: how a message names each."""

    opens: list[OpenFd] = field(default_factory=list)
    where: dict[tuple[int, int], str] = field(default_factory=dict)

    @classmethod
    def collect(cls, fds: Sequence[tuple[int, OpenFd]]) -> "_Carried":
        """Peek the queue of every unix socket with descriptors in flight (fdinfo's ``scm_fds``), and of
        sockets found in flight, each socket once."""
        me, out = os.getpid(), cls()
        todo = [(pid, o, f"process {pid}: fd {o.fd}") for pid, o in fds if _may_carry(o)]
        seen: set[tuple[int, int]] = set()
        try:
            while todo:
                pid, o, where = todo.pop()
                if o.dev_ino in seen:
                    continue
                seen.add(o.dev_ino)
                try:
                    got = unix.peek_descriptors(pid, o.fd) or []
                except OSError:
                    continue  # not to be read here: the socket's own dump says why, or refuses
                for fd in got:
                    path = f"/proc/self/fd/{fd}"
                    try:
                        c = OpenFd(fd, os.readlink(path), os.stat(path), read_fdinfo(me, fd))
                    except BaseException:
                        os.close(fd)
                        raise
                    out.opens.append(c)
                    out.where[(me, fd)] = label = f"a descriptor in flight (SCM_RIGHTS) to {where}"
                    if _may_carry(c):
                        todo.append((me, c, label))
        except BaseException:
            out.close()
            raise
        return out

    def relabel(self, exc: Unsupported, pid: int, fd: int) -> Unsupported:
        """``exc`` about ckpt's duplicate, told of the descriptor in flight it stands for."""
        where = self.where.get((pid, fd))
        if where is None:
            return exc
        return Unsupported(str(exc).replace(f"process {pid}: fd {fd} is", f"{where} is", 1), hint=exc.hint)

    def close(self) -> None:
        for o in self.opens:
            os.close(o.fd)
        self.opens.clear()


def dump(proc: FrozenProcess, snap: Snapshot, *, policy: StdioPolicy = StdioPolicy(),
         first_id: int = 1, deleted_max: int = DELETED_MAX, tcp_close: bool = False, ext_unix_close: bool = False,
         skip_fds: frozenset[int] = frozenset(), notes: list[str] | None = None) -> FilesDump:
    """The fds of one frozen process: :func:`dump_tree` of a tree of one."""
    return dump_tree([(proc, snap, skip_fds)], policy=policy, first_id=first_id, deleted_max=deleted_max,
                     tcp_close=tcp_close, ext_unix_close=ext_unix_close, notes=notes)


def dump_tree(members: Sequence[tuple[FrozenProcess, Snapshot, frozenset[int]]], *,
              policy: StdioPolicy = StdioPolicy(), first_id: int = 1, deleted_max: int = DELETED_MAX,
              tcp_close: bool = False, ext_unix_close: bool = False, notes: list[str] | None = None,
              tcp_session: "tcp.Session | None" = None, tolerate: frozenset[str] = frozenset(),
              hand_over: bool = False) -> FilesDump:
    """Classify and record every fd of the frozen processes; refuses (Unsupported) before touching anything.

    ``members``: (process, its snapshot, fds to leave out) — the fds that are
    ckpt's, not the target's (the parked tracking userfaultfd, checked by inode
    by the caller).  A descriptor shared between processes (inherited across
    fork) is one FileEntry, and a pipe is dumped when no process outside the
    tree holds an end of it.  ``notes`` collects what was saved less than
    exactly (see sockets.dump); ``tolerate``, the losses the user lets through
    (:mod:`ckpt.tolerance`); ``hand_over``: bound inet sockets are handed to the restore (a migration
    within one network namespace, :class:`~ckpt.resources.fdkind.DumpOptions`).
    """
    opens = [(proc.pid, o) for proc, snap, skip in members for o in _open_fds(proc.pid, snap, skip)]
    carried = _Carried.collect(opens)
    opts = DumpOptions(policy=policy, deleted_max=deleted_max, tcp_close=tcp_close, tcp_session=tcp_session,
                       notes=notes, tolerate=tolerate, tree=frozenset(proc.pid for proc, _, _ in members),
                       hand_over=hand_over)
    try:
        out = _dump_tree(members, opens, carried, opts, first_id=first_id, ext_unix_close=ext_unix_close)
    finally:
        carried.close()
    _dump_owners(out, {tid for proc, _, _ in members for tid in proc.threads})
    return out


def _dump_owners(fdump: FilesDump, tids: set[int]) -> None:
    """Each open file's owner (F_SETOWN/F_SETOWN_EX: who gets its SIGIO/SIGURG) and signal (F_SETSIG), read
    from a duplicate of it (the owner is the open file's, so any of its descriptors tells).  An owner that is
    not a process or thread of the tree is refused: the restore could not name it."""
    first: dict[int, tuple[int, int]] = {}
    for pid, fds in fdump.fds_of.items():
        for f in fds:
            first.setdefault(f.file_id, (pid, f.fd))
    pidfds: dict[int, int] = {}
    try:
        for e in fdump.files:
            if e.id not in first or opath.is_opath(e.flags):
                continue  # only in flight (SCM_RIGHTS): no descriptor of the tree to ask; O_PATH: no owner
            pid, fd = first[e.id]
            if pid not in pidfds:
                pidfds[pid] = pidfd_open(pid)
            mine = pidfd_getfd(pidfds[pid], fd)
            try:
                kind, owner = _F_OWNER_EX.unpack(fcntl.fcntl(mine, _F_GETOWN_EX, bytes(_F_OWNER_EX.size)))
                sig = fcntl.fcntl(mine, _F_GETSIG)
            finally:
                os.close(mine)
            _record_owner(e, pid, fd, kind, owner, sig, tids)
    finally:
        for pfd in pidfds.values():
            os.close(pfd)


def _record_owner(e: FileEntry, pid: int, fd: int, kind: int, owner: int, sig: int, tids: set[int]) -> None:
    """``e.fown`` when the file has an owner or a signal; Unsupported for an owner the tree does not hold."""
    if not owner and not sig:
        return
    if owner and owner not in tids:  # a group's id is its leader's pid
        what = "process group" if kind == _F_OWNER_PGRP else "process or thread"
        raise Unsupported(f"fd {fd} of process {pid} ({e.path or K.Name(e.kind)}) sends its SIGIO to "
                          f"{what} {owner}, outside the dumped tree (F_SETOWN)",
                          hint="dump the owner with it (-t of a common ancestor)")
    e.fown.CopyFrom(files_pb2.Fown(pid=owner, pid_type=kind, signum=sig))


def _dump_tree(members: Sequence[tuple[FrozenProcess, Snapshot, frozenset[int]]],
               opens: list[tuple[int, OpenFd]], carried: _Carried, opts: DumpOptions, *, first_id: int,
               ext_unix_close: bool) -> FilesDump:
    me = os.getpid()
    pids = [proc.pid for proc, _, _ in members]
    groups = _group(opens + [(me, o) for o in carried.opens])
    entries: list[FileEntry] = []
    fd_entries: dict[int, list[files_pb2.FdEntry]] = {pid: [] for pid in pids}
    contents: dict[str, bytes] = {}
    sources: dict[str, str] = {}
    pipe_ends: dict[int, list[tuple[FileEntry, int, OpenFd]]] = {}
    epolls: list[tuple[FileEntry, int, OpenFd]] = []

    # Pass 1: decide every kind and refuse what cannot be done, before any pipe is touched.
    for n, g in enumerate(groups):
        pid, o = g[0]
        try:
            entries.append(record(FdDump(pid, o, opts, in_flight_only=pid == me), first_id + n))
        except Unsupported as exc:
            raise carried.relabel(exc, pid, o.fd) from None
        e = entries[-1]
        if e.kind in (K.PIPE, K.FIFO):
            pipe_ends.setdefault(o.st.st_ino, []).append((e, pid, o))
        elif e.kind == K.EPOLL:
            epolls.append((e, pid, o))
        for pid2, o2 in g:
            if pid2 != me:
                fd_entries[pid2].append(files_pb2.FdEntry(
                    fd=o2.fd, fd_flags=fcntl.FD_CLOEXEC if o2.info.flags & os.O_CLOEXEC else 0, file_id=e.id))

    locks.dump_tree([[locks.Holder(p, o2.fd, o2.link, o2.info.locks) for p, o2 in g] for g in groups], fd_entries,
                    me=me, in_flight=carried.where)
    # Pty ends pair up across the tree (a slave whose master is not in it is a terminal, --shell-job); each pair's
    # state is read, its queues put back at once.
    tty.dump_tree([(e, g[0][0], g[0][1]) for e, g in zip(entries, groups) if e.kind == K.PTY], opts)
    # Unix sockets are linked to their peers across the tree (refused or, ext_unix_close, closed if outside it).
    unix.dump_tree([(e, g[0][0], g[0][1].fd) for e, g in zip(entries, groups) if e.kind == K.UNIX],
                   ext_unix_close=ext_unix_close, notes=opts.notes, carried=_file_of(entries, groups),
                   labels=carried.where, tolerate=opts.tolerate)
    for e, pid, o in epolls:  # watches name fds of the epoll's process: resolved once every fd has its FileEntry
        file_of = {f.fd: f.file_id for f in fd_entries[pid]}
        inode_of = {o2.fd: (o2.st.st_ino, file_of[o2.fd]) for g in groups for p2, o2 in g if p2 == pid}
        epoll.dump_watches(pid, o.fd, o.info, e, inode_of, file_of)

    holding = holders({ends[0][2].link for ends in pipe_ends.values()}, skip=set(pids),
                      skip_fds=carried.where) if pipe_ends else {}
    for ino, ends in pipe_ends.items():
        link = ends[0][2].link
        readers = [(e, p, o) for e, p, o in ends if o.info.flags & os.O_ACCMODE in (os.O_RDONLY, os.O_RDWR)]
        writers = [(e, p, o) for e, p, o in ends if o.info.flags & os.O_ACCMODE in (os.O_WRONLY, os.O_RDWR)]
        others = holding.get(link, [])
        if others:
            if all(o.fd in _STDIO for _, _, o in ends):
                for e, _, _ in ends:
                    e.external = link  # the restorer must hand over a descriptor (StdioPolicy.inherit)
                continue
            peer = ", ".join(others)
            fds_of: dict[int, list[str]] = {}
            flying: list[str] = []
            for _, p, o in ends:
                if (p, o.fd) in carried.where:
                    flying.append(carried.where[(p, o.fd)])
                else:
                    fds_of.setdefault(p, []).append(str(o.fd))
            where = "; ".join([*(f"process {p}: fd {', '.join(fds)}" for p, fds in fds_of.items()), *flying])
            raise Unsupported(f"{where} is {link}, whose other end is held by {peer}",
                              hint="ckpt dumps a pipe only when no process outside the dumped tree holds an end "
                                   "of it; let the peer exit, or restore stdio with an inherited descriptor")
        if readers and writers:
            _, rpid, ro = readers[0]
            _, wpid, wo = writers[0]
            data, capacity = pipes.steal_and_put_back(rpid, ro.fd, wo.fd, write_pid=wpid)
        else:  # its other end is closed: its readers get the bytes, then EOF; its writers EPIPE
            data, capacity = pipes.steal_one_end(ends[0][1], ends[0][2].fd)
        for e, _, _ in ends:
            e.pipe.capacity = capacity
        min(ends, key=lambda epo: epo[0].id)[0].pipe.data = data

    for e, g in zip(entries, groups):
        pid, o = g[0]
        if e.ghost.owner and pid != me:  # a deleted file: stored once with the memory, from this fd
            sources.setdefault(e.ghost.owner, f"/proc/{pid}/fd/{o.fd}")
        elif (e.kind == K.MEMFD or e.ghost.owner) and pid == me:  # in flight only: its bytes are stored here
            contents[e.content.owner] = _object_bytes(f"/proc/self/fd/{o.fd}", e.content.size)
    return FilesDump(MappingProxyType({pid: tuple(fds) for pid, fds in fd_entries.items()}), tuple(entries),
                     MappingProxyType(contents), MappingProxyType(sources))


def record(d: FdDump, file_id: int) -> FileEntry:
    """The FileEntry of the open file behind ``d``, filled by its kind, or Unsupported naming it."""
    o = d.o
    k = classify(d.pid, o)
    e = FileEntry(id=file_id, kind=k.kind, flags=o.info.flags & ~os.O_CLOEXEC, pos=o.info.pos,
                  mnt_id=o.info.mnt_id, identity=fileid.identity(o.st))
    e.path = o.link[:-len(paths.DELETED)] if o.link.endswith(paths.DELETED) else o.link
    k.dump(d, e)
    ghost.dump_fd(e, d.pid, o.fd, o.link, o.st, d.opts.deleted_max)  # a deleted file, directory or FIFO: one inode
    return e


def _file_of(entries: Sequence[FileEntry], groups: Sequence[Sequence[tuple[int, OpenFd]]]) -> Callable[[int], int]:
    """A function giving the FileEntry id of a descriptor of ckpt (one a peek received): the entry whose
    open file it is, found by kcmp among the entries on its inode."""
    me = os.getpid()
    by_inode: dict[tuple[int, int], list[tuple[int, int, int]]] = {}
    for e, g in zip(entries, groups):
        pid, o = g[0]
        by_inode.setdefault(o.dev_ino, []).append((e.id, pid, o.fd))

    def file_of(fd: int) -> int:
        st = os.fstat(fd)
        for file_id, pid, gfd in by_inode.get((st.st_dev, st.st_ino), []):
            if same_file(pid, gfd, fd, me):
                return file_id
        raise CkptError("a descriptor in flight in a unix socket's queue appeared while the tree was dumped "
                        "(a sender outside the tree?)", hint="dump again")
    return file_of


def _object_bytes(path: str, size: int) -> bytes:
    """The bytes of a memfd (holes as zeros): one no process holds, stored with the files."""
    buf = bytearray(size)
    for offset, data in memfd.read_content(path):
        n = max(0, min(len(data), size - offset))
        buf[offset:offset + n] = data[:n]
    return bytes(buf)


# --- restore --------------------------------------------------------------

@dataclass
class _Restorer(Opener):
    """Makes each open file of one process through its kind, and puts it at its fd numbers."""

    wanted: frozenset[int] = frozenset()
    high: int = 0

    def open(self, e: FileEntry, fds: list[int]) -> int:
        """The open file ``e`` (for the image's ``fds``) made in the target, with its owner and signal."""
        fd = self._open(e, fds)
        statusflags.settle(self, fd, e)  # those its kind could not pass (O_ASYNC, an epoll's O_NONBLOCK …)
        if e.HasField("fown"):
            self.s.write(0, _F_OWNER_EX.pack(e.fown.pid_type, e.fown.pid))
            self.inj.call(NR.fcntl, fd, _F_SETOWN_EX, self.s.addr, name=f"fcntl({fd}, F_SETOWN_EX, {e.fown.pid})")
            if e.fown.signum:
                self.inj.call(NR.fcntl, fd, _F_SETSIG, e.fown.signum, name=f"fcntl({fd}, F_SETSIG)")
        return fd

    def _open(self, e: FileEntry, fds: list[int]) -> int:
        if e.external:  # a pipe to a process outside the image: the restorer hands one over
            ours = [self.policy.inherit.get(fd) for fd in fds]
            if None in ours:
                raise Unsupported(f"fd {fds[0]} of the image is {e.external}, connected to a process outside the "
                                  "image", hint=f"pass an inherited descriptor for fd {fds[0]} (--inherit-fd)")
            return self.openat(f"/proc/{os.getpid()}/fd/{ours[0]}", paths.open_flags(e), f"inherited fd {ours[0]} as")
        if e.HasField("ghost"):  # a deleted file, directory or FIFO: the restore's one copy of its inode
            return ghost.restore(self, e, fds)
        k = _BY_KIND.get(e.kind)
        if k is None:
            raise Unsupported(f"file {e.id} ({e.path}) is of kind {K.Name(e.kind)}, which ckpt cannot restore")
        return k.restore(self, e, fds)

    def place(self, t: int, fds: list[files_pb2.FdEntry]) -> None:
        """Put temporary fd ``t`` at every number of ``fds`` (with its FD_CLOEXEC), then drop ``t``."""
        numbers = [f.fd for f in fds]
        for f in fds:
            cloexec = bool(f.fd_flags & fcntl.FD_CLOEXEC)
            if f.fd == t:
                self.inj.call(NR.fcntl, t, fcntl.F_SETFD, fcntl.FD_CLOEXEC if cloexec else 0, name="fcntl(F_SETFD)")
            else:
                self.inj.call(NR.dup3, t, f.fd, os.O_CLOEXEC if cloexec else 0, name=f"dup3({t}, {f.fd})")
        if t not in numbers:
            self.inj.close(t)

    def out_of_the_way(self, t: int, mine: list[int]) -> int:
        """A temporary fd on a number another file still needs is moved above every wanted number."""
        if t in self.wanted and t not in mine:
            moved = self.inj.call(NR.fcntl, t, fcntl.F_DUPFD_CLOEXEC, self.high, name="fcntl(F_DUPFD_CLOEXEC)")
            self.inj.close(t)
            return moved
        return t


#: The user of a file in flight in a unix socket's queue, beside the processes (SharedFiles).
_IN_FLIGHT = -1


class SharedFiles:
    """The open files that more than one process of a tree uses, held by the restorer between processes.

    Each is opened once, inside the first process that needs it (like any
    file); the restorer keeps a duplicate (``pidfd_getfd``), and every later
    process installs that duplicate with an injected ``pidfd_getfd`` of the
    restorer: one open file description again — shared offset and status
    flags, one pipe.  A pipe counts as shared when its ends are used by
    different processes; both ends are kept when it is created.  So do the
    unix sockets created together (:func:`ckpt.resources.unix.groups`: the
    ends of a connection, a listener and its connections).  A file in flight
    in a unix socket's queue counts as shared: the restorer sends its
    duplicate (:meth:`dup`), whoever else uses it.
    """

    def __init__(self, fds_of: Mapping[int, Sequence[files_pb2.FdEntry]], files: Sequence[FileEntry]) -> None:
        users: dict[int, set[int]] = {}
        for pid, fds in fds_of.items():
            for f in fds:
                users.setdefault(f.file_id, set()).add(pid)
        by_pipe: dict[int, list[int]] = {}
        for e in files:
            if e.kind == K.PIPE:
                by_pipe.setdefault(e.pipe.pipe_id, []).append(e.id)
            elif e.kind == K.UNIX:
                for f in e.unix.in_flight:
                    for i in f.file_ids:
                        users.setdefault(i, set()).add(_IN_FLIGHT)
        for ids in [*by_pipe.values(), *unix.groups(files)]:  # created together: sockets of one connection too
            together = set().union(*(users.get(i, set()) for i in ids))
            for i in ids:
                users[i] = together
        self.shared = frozenset(i for i, who in users.items() if len(who) > 1 or _IN_FLIGHT in who)
        self._held: dict[int, int] = {}  # FileEntry id → our duplicate

    def has(self, file_id: int) -> bool:
        return file_id in self._held

    def keep(self, pid: int, fd: int, file_id: int) -> None:
        """Hold a duplicate of ``fd`` of ``pid`` for the other processes, if they use it."""
        if file_id not in self.shared or file_id in self._held:
            return
        self._held[file_id] = dup_from(pid, fd)

    def dup(self, file_id: int) -> int:
        """A new descriptor of ours on the held ``file_id`` (the caller closes it)."""
        return os.dup(self._held[file_id])

    def install(self, inj: Injector, file_id: int) -> int:
        """The held duplicate of ``file_id`` as a new fd of the process of ``inj`` (O_CLOEXEC)."""
        return inj.receive(self._held[file_id], f"file {file_id}")

    def close(self) -> None:
        for fd in self._held.values():
            os.close(fd)
        self._held.clear()


def restore(inj: Injector, fds: "list[files_pb2.FdEntry] | tuple[files_pb2.FdEntry, ...]",
            files: "list[FileEntry] | tuple[FileEntry, ...]", *,
            content: Callable[[common_pb2.ContentRef], bytes] | None = None,
            policy: StdioPolicy = StdioPolicy(), scratch: Scratch | None = None,
            shared: SharedFiles | None = None, memfds: memfd.MemfdObjects | None = None,
            ptys: tty.PtyPairs | None = None, ghosts: ghost.GhostObjects | None = None) -> list[str]:
    """Open every file of ``files`` that ``fds`` names inside the process of ``inj`` at its fd numbers.

    ``content`` loads a deleted file's bytes (:func:`content_from_image`,
    or ``FilesDump.content``).  Returns warnings (e.g. a pipe capacity that
    could not be set).  Fds are placed over whatever the helper has there.
    ``shared``: in a tree, the files other processes use too (taken from it
    when an earlier process opened them, handed to it when this one does).
    ``memfds``: the restore's memfd objects (created by their first user); ``ghosts`` its deleted files
    (likewise; without it, made from ``content`` and finished here).
    ``ptys``: the restore's pty pairs (:class:`ckpt.resources.tty.PtyPairs`; None: this call's own).
    A file in flight in a unix socket's queue is opened when the socket's
    group is created, and sent from the restorer (kept by ``shared``, or by a
    SharedFiles of this call).
    """
    by_id = {e.id: e for e in files}
    users: dict[int, list[files_pb2.FdEntry]] = {}
    for f in fds:
        if f.file_id not in by_id:
            raise RestoreError(f"fd {f.fd} names file {f.file_id}, which the image does not have")
        users.setdefault(f.file_id, []).append(f)
    wanted = frozenset(f.fd for f in fds)

    def no_content(ref: common_pb2.ContentRef) -> bytes:
        raise RestoreError(f"the content of a deleted file ({ref.owner}) was not handed to the restore")

    warnings: list[str] = []
    with scratch_for(inj, scratch, PAGE_SIZE) as s:
        pr = pipes.PipeRestorer(inj, s, warnings, high=max(wanted, default=0) + 1)
        fifo_owner: dict[int, int] = {}
        for e in files:
            if e.kind in (K.PIPE, K.FIFO):
                pr.learn(e)
            if e.kind == K.FIFO:
                fifo_owner[e.pipe.pipe_id] = min(e.id, fifo_owner.get(e.pipe.pipe_id, e.id))
        # A pipe's bytes go in wherever it is created (once: SharedFiles hands it on); a FIFO's
        # (and its capacity) by the process holding its first entry, the one the dump gave
        # them to: every process of a tree opens the FIFO by its path, a second fill would double them.
        pr.fill_fifos = {pipe_id for pipe_id, eid in fifo_owner.items() if eid in users}
        own = shared is None and any(e.unix.in_flight for e in files if e.kind == K.UNIX)
        sh = SharedFiles({inj.pid: fds}, files) if own else shared
        ur = unix.UnixRestorer(inj, s, files)
        own_ptys = tty.PtyPairs(files) if ptys is None else None
        own_ghosts = ghosts is None
        gh = (ghost.GhostObjects(fill=ghost.fill_from_bytes(content or no_content), creators=ghost.creators(files))
              if ghosts is None else ghosts)
        r = _Restorer(inj, s, policy, content or no_content, warnings, pr, ur,
                      memfds if memfds is not None else memfd.MemfdObjects(),
                      ptys=ptys if ptys is not None else own_ptys, ghosts=gh, wanted=wanted,
                      high=max(wanted, default=0) + 1)

        def carried(file_id: int) -> int:
            """A descriptor of ours on file ``file_id``, to send in flight: opened here by its first user."""
            if file_id not in by_id or sh is None:
                raise RestoreError(f"a unix socket's queue carries file {file_id}, which the image does not have")
            if not sh.has(file_id):
                t = r.open(by_id[file_id], [])
                try:
                    sh.keep(inj.pid, t, file_id)
                finally:
                    inj.close(t)
            return sh.dup(file_id)

        ur.carried = carried
        shared = sh
        try:
            for file_id, its in sorted(users.items(), key=lambda kv: min(f.fd for f in kv[1])):
                mine = [f.fd for f in its]
                if shared is not None and shared.has(file_id):
                    t = shared.install(inj, file_id)
                else:
                    t = r.open(by_id[file_id], mine)
                    if shared is not None:
                        shared.keep(inj.pid, t, file_id)
                t = r.out_of_the_way(t, mine)
                for ends in pr.ends.values():  # the other ends of a new pipe must not sit on a wanted number
                    for k, fd in list(ends.items()):
                        ends[k] = r.out_of_the_way(fd, [])
                        if shared is not None:  # another process may use it
                            shared.keep(inj.pid, ends[k], k)
                for fid, fd in ur.unclaimed.items():  # the other sockets of a new connection, likewise
                    ur.unclaimed[fid] = r.out_of_the_way(fd, [])
                    if shared is not None:
                        shared.keep(inj.pid, ur.unclaimed[fid], fid)
                r.place(t, its)
            for e, epfd in r.epolls:
                epoll.add_watches(inj, s, epfd, e, fds)
            if own_ghosts:
                gh.finish()
        finally:
            pr.close()
            ur.close()
            if own_ptys is not None:
                warnings.extend(own_ptys.notes)
                own_ptys.close()
            if own_ghosts:
                gh.close()
            if own and sh is not None:
                sh.close()
    return warnings
