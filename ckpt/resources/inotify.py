"""inotify instances: every watch, by path, re-added so that each keeps its watch descriptor.

Dump: fdinfo lists each watch as wd, inode, ``sdev``, mask and an exportfs
file handle — no path.  The handle is opened (``open_by_handle_at``, relative
to a mount of the filesystem whose MAJOR:MINOR is ``sdev`` in the target's
mountinfo) and the new descriptor's ``/proc/self/fd`` link is the path.  A
watch whose filesystem prints no usable handle, or whose inode has no path any
more, is refused.  Events queued and not yet read are not kept: a note says
how many bytes were waiting (FIONREAD on a duplicate of the descriptor).

Restore: ``inotify_init1`` and ``inotify_add_watch`` in increasing wd order.
The kernel hands out wds cyclically from 1 (``idr_alloc_cyclic``: one more
than the last one given, a freed number is not reused before the range
wraps), so wds 1..n come back as they were.  A gap is made by adding a
temporary watch on the path of the next real one and removing it again.
Removing a watch queues an IN_IGNORED event, so when there are gaps every
watch is first added with no event in its mask (IN_MASK_ADD alone), those
IN_IGNORED events are read away, and then each watch gets its mask (adding a
path already watched changes that watch and keeps its wd).  At most
:data:`MAX_WD_GAPS` temporary watches: more is refused at dump.  The new
instance's fdinfo must show each wd on the inode saved for it where device
and inode numbers mean something — an image of this machine since its boot,
with the watch on the filesystem it was on (or an image written before ckpt
identified files by path) — and elsewhere (another machine, or another
filesystem mounted there) on a file of the type saved; else refused, or a
note with --allow-changed-files.  Where the next *new* wd will be is not
kept: after the restore it is one more than the highest wd.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import struct
import termios
from collections.abc import Sequence

from ..control.inject import Injector, Scratch
from ..errors import RestoreError, Unsupported
from ..tolerance import lose
from ..image.pb import files_pb2
from ..kernel.arch_x86_64 import NR
from ..kernel.fhandle import kernel_dev, open_by_handle_at
from ..kernel.pidfd import dup_from
from ..procfs.fdinfo import InotifyWatch, read_fdinfo
from ..procfs.mountinfo import Mount, read_mountinfo
from . import fileid
from .fdkind import FdDump, FdKind, Opener, anon

__all__ = ["MAX_WD_GAPS", "IN_MASK_ADD", "IN_DONT_FOLLOW", "IN_IGNORED", "KIND", "dump", "restore"]

#: Most watch descriptors missing below the highest one that a restore recreates (two syscalls each).
MAX_WD_GAPS = 4096
IN_IGNORED = 0x00008000
IN_DONT_FOLLOW = 0x02000000
IN_MASK_ADD = 0x20000000
_EVENT = struct.Struct("<iIII")  # struct inotify_event: wd, mask, cookie, len, then the name
_DELETED = " (deleted)"


# --- dump -----------------------------------------------------------------

class _Mounts:
    """Descriptors on one mount of each filesystem the watches are on, found in the target's mountinfo."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._mounts: tuple[Mount, ...] | None = None
        self._fds: dict[int, int] = {}

    def mounts_of(self, sdev: int) -> list[Mount]:
        """The target's mounts of the filesystem ``sdev``, whole-filesystem ones first."""
        if self._mounts is None:
            self._mounts = read_mountinfo(self.pid)
        major, minor = kernel_dev(sdev)
        return sorted((m for m in self._mounts if (m.major, m.minor) == (major, minor)), key=lambda m: m.root != "/")

    def fd_for(self, sdev: int) -> int | None:
        if sdev in self._fds:
            return self._fds[sdev]
        for m in self.mounts_of(sdev):
            try:
                fd = os.open(f"/proc/{self.pid}/root{m.mount_point}", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            except OSError:
                continue
            st = os.fstat(fd)  # a mount point hidden by a later mount opens another filesystem
            if (os.major(st.st_dev), os.minor(st.st_dev)) == kernel_dev(sdev):
                self._fds[sdev] = fd
                return fd
            os.close(fd)
        return None

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()


def _resolve(pid: int, fd: int, w: InotifyWatch, mounts: _Mounts) -> tuple[str, os.stat_result]:
    """The path of the inode ``w`` watches, and its stat."""
    major, minor = kernel_dev(w.sdev)
    fs = next((f"{m.fstype} " for m in mounts.mounts_of(w.sdev)), "")
    what = (f"process {pid}: fd {fd} is an inotify instance whose watch {w.wd} (inode {w.ino} of the {fs}filesystem "
            f"{major}:{minor})")
    hint = "ckpt finds the path of a watched inode through its file handle"
    if w.f_handle is None or w.fhandle_type is None:
        raise Unsupported(f"{what} has no file handle in fdinfo", hint=hint)
    mfd = mounts.fd_for(w.sdev)
    if mfd is None:
        raise Unsupported(f"{what} is on a filesystem the process has no mount of")
    try:
        h = open_by_handle_at(mfd, w.fhandle_type, w.f_handle)
    except OSError as exc:
        raise Unsupported(f"{what} cannot be reopened by its file handle ({os.strerror(exc.errno)})", hint=hint) from exc
    try:
        path = os.readlink(f"/proc/self/fd/{h}")
        st = os.fstat(h)
    finally:
        os.close(h)
    if st.st_ino != w.ino or path.endswith(_DELETED) or not path.startswith("/"):
        raise Unsupported(f"{what} has no path any more ({path})", hint="a watch is re-added by path")
    return path, st


def _queued_bytes(pid: int, fd: int) -> int:
    """FIONREAD on a duplicate: the bytes of events waiting to be read."""
    ours = dup_from(pid, fd)
    try:
        buf = bytearray(4)
        fcntl.ioctl(ours, termios.FIONREAD, buf)
        return int.from_bytes(buf, "little", signed=True)
    finally:
        os.close(ours)


def dump(d: FdDump, entry: files_pb2.FileEntry) -> None:
    pid, fd, notes = d.pid, d.fd, d.opts.notes
    watches = sorted(d.info.inotify_watches, key=lambda w: w.wd)
    gaps = watches[-1].wd - len(watches) if watches else 0
    if gaps > MAX_WD_GAPS:
        raise d.refuse(f"an inotify instance whose {len(watches)} watches have wds up to {watches[-1].wd}: "
                       f"recreating the {gaps} numbers in between takes too long (at most {MAX_WD_GAPS})")
    out = files_pb2.Inotify()
    mounts = _Mounts(pid)
    try:
        for w in watches:
            path, st = _resolve(pid, fd, w, mounts)
            out.watches.append(files_pb2.InotifyWatch(
                wd=w.wd, mask=w.mask, path=path,
                target=fileid.identity(st)))
    finally:
        mounts.close()
    queued = _queued_bytes(pid, fd)
    if queued:
        lose("inotify-events", d.opts.tolerate, f"process {pid}: fd {fd} (inotify)",
             f"{queued} bytes of events not yet read", notes)
    entry.inotify.CopyFrom(out)


# --- restore --------------------------------------------------------------

def _add(inj: Injector, s: Scratch, fd: int, w: files_pb2.InotifyWatch, mask: int) -> int:
    raw = os.fsencode(w.path) + b"\0"
    if len(raw) > s.size:
        raise RestoreError(f"inotify watch {w.wd} on {w.path!r}: path too long")
    s.write(0, raw)
    if stat.S_ISLNK(w.target.mode):
        mask |= IN_DONT_FOLLOW  # the watch was on the link itself
    try:
        return inj.call(NR.inotify_add_watch, fd, s.addr, mask, name=f"inotify_add_watch({w.path!r})")
    except OSError as exc:
        raise RestoreError(f"cannot watch {w.path!r} again (inotify wd {w.wd}): {os.strerror(exc.errno)}",
                           hint="the watched file must still exist where it was when the process was dumped") from exc


def _drain(inj: Injector, s: Scratch, fd: int, temporary: set[int]) -> int:
    """Read every queued event (the instance is non-blocking); how many were not IN_IGNORED of a temporary wd."""
    others = 0
    while True:
        try:
            n = inj.call(NR.read, fd, s.addr, s.size, name="read(inotify)")
        except OSError as exc:
            if exc.errno == errno.EAGAIN:
                return others
            raise
        data = s.read(0, n)
        off = 0
        while off + _EVENT.size <= n:
            wd, mask, _, length = _EVENT.unpack_from(data, off)
            others += not (wd in temporary and mask & IN_IGNORED)
            off += _EVENT.size + length


def _check_targets(pid: int, fd: int, watches: Sequence[files_pb2.InotifyWatch], warnings: list[str],
                   allow_changed: bool, same_boot: bool) -> None:
    now = {w.wd: w for w in read_fdinfo(pid, fd).inotify_watches}
    for w in watches:
        got = now.get(w.wd)
        dev = (os.major(w.target.dev), os.minor(w.target.dev))
        by_type = w.target.by_path and not (same_boot and got is not None and kernel_dev(got.sdev) == dev)
        if got is not None and by_type:  # another machine's (or filesystem's) file at the path: its type
            try:
                mode = os.lstat(w.path).st_mode if stat.S_ISLNK(w.target.mode) else os.stat(w.path).st_mode
            except OSError:
                mode = 0
            if stat.S_IFMT(mode) == stat.S_IFMT(w.target.mode):
                continue
            msg = f"inotify watch {w.wd} on {w.path!r}: the file there is not of the type it was (mode {mode:o}, was {w.target.mode:o})"
        elif got is not None and got.ino == w.target.ino and kernel_dev(got.sdev) == dev:
            continue
        else:
            where = "is gone" if got is None else f"is on inode {got.ino} (device {':'.join(map(str, kernel_dev(got.sdev)))})"
            msg = f"inotify watch {w.wd} on {w.path!r} {where}, not inode {w.target.ino} (device {dev[0]}:{dev[1]}) as dumped"
        if got is not None and allow_changed:
            warnings.append(f"{msg}; watching the path as it is now")
            continue
        raise RestoreError(msg, hint="restore the file as it was, dump again, or pass --allow-changed-files")


def restore(r: Opener, entry: files_pb2.FileEntry, fds: list[int]) -> int:
    """A new inotify instance with every saved watch at its wd (see the module docstring).

    A watched file is checked by its inode when the image was taken on this
    machine since it booted (``r.policy.same_boot``, :func:`fileid.same_boot`).
    """
    inj, s, warnings = r.inj, r.s, r.warnings
    allow_changed, same_boot = r.policy.allow_changed, r.policy.same_boot
    watches = sorted(entry.inotify.watches, key=lambda w: w.wd)
    wds = [w.wd for w in watches]
    if len(set(wds)) != len(wds) or (wds and (wds[0] < 1 or wds[-1] - len(wds) > MAX_WD_GAPS)):
        raise RestoreError(f"file {entry.id}: an inotify instance with impossible watch descriptors {wds[:10]}")
    gaps = bool(wds) and wds[-1] != len(wds)
    fd = inj.call(NR.inotify_init1, os.O_CLOEXEC | os.O_NONBLOCK, name="inotify_init1")
    try:
        temporary: set[int] = set()
        nxt = 1  # the wd the kernel hands out next
        for w in watches:
            while True:
                got = _add(inj, s, fd, w, IN_MASK_ADD if gaps or not w.mask else w.mask)
                if got != nxt:
                    raise RestoreError(f"inotify watch on {w.path!r}: the kernel gave wd {got}, not {nxt}",
                                       hint="another watch of this instance is on the same file now")
                nxt = got + 1
                if got == w.wd:
                    break
                temporary.add(got)  # a number below w.wd that the image does not have: taken and given back
                inj.call(NR.inotify_rm_watch, fd, got, name=f"inotify_rm_watch({got})")
        if gaps:
            lost = _drain(inj, s, fd, temporary)
            if lost:
                warnings.append(f"inotify: {lost} event(s) that arrived while its watches were re-added were dropped")
            for w in watches:
                got = _add(inj, s, fd, w, w.mask or IN_MASK_ADD)
                if got != w.wd:
                    raise RestoreError(f"inotify watch on {w.path!r}: the kernel gave wd {got}, not {w.wd}")
        _check_targets(inj.pid, fd, watches, warnings, allow_changed, same_boot)
        if not entry.flags & os.O_NONBLOCK:
            inj.call(NR.fcntl, fd, fcntl.F_SETFL, 0, name="fcntl(F_SETFL)")
    except BaseException:
        inj.close(fd)
        raise
    return fd


KIND = FdKind(files_pb2.FileEntry.INOTIFY, anon("anon_inode:inotify"), dump, restore)  # no brackets
