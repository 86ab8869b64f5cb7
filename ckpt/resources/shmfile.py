"""Files of a tmpfs that a process maps: POSIX shared memory (``shm_open``, files in /dev/shm, as postgres
uses), or any file of a memory filesystem.

Such a file is memory that no disk holds: it is gone with the machine's boot, and another machine never had
it.  The dump records it like a deleted file (:func:`ckpt.resources.ghost.record`: owner, mode, times, the
data ranges; more data than ``--deleted-max`` is refused) in ``Vma.shm_file`` and stores its content once
for the tree (its ``content_owner``, read through the mapping's ``map_files`` entry).  A restore that finds
the file at its path maps it as it is — the other users of that memory see the same pages; one that finds
none (a migration: the destination never had it; or a reboot) makes it again at its path first, from the
image, with its owner, mode and times (:func:`recreate_missing`), so its identity check passes.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable

from ..errors import RestoreError, Unsupported
from ..image.pb import common_pb2, mm_pb2
from . import ghost, hugetlb

__all__ = ["TMPFS_MAGIC", "on_tmpfs", "record", "recreate_missing"]

TMPFS_MAGIC = 0x01021994  # include/uapi/linux/magic.h


def on_tmpfs(link: str) -> bool:
    """The file ``link`` opens (a map_files entry) is a regular file of a tmpfs (not a device node of /dev,
    a devtmpfs, which has the same magic)."""
    fd = os.open(link, os.O_PATH | os.O_CLOEXEC)
    try:
        return stat.S_ISREG(os.fstat(fd).st_mode) and hugetlb.fs_type(fd) == TMPFS_MAGIC
    finally:
        os.close(fd)


def record(link: str, name: str, where: str, limit: int) -> common_pb2.Ghost:
    """The record of the tmpfs file ``link`` opens, known as ``name``; Unsupported past ``limit`` bytes of data."""
    st = os.stat(link)
    g = ghost.record(link, st, name=name, where=where, limit=1 << 62)
    if g.data_bytes > limit:
        raise Unsupported(f"{where} is {name}, a file of a memory filesystem (tmpfs) with {g.data_bytes} bytes of "
                          f"data, more than the {limit} bytes ckpt saves",
                          hint=f"raise the cap with --deleted-max (e.g. --deleted-max {ghost.size_text(g.data_bytes)})")
    return g


def recreate_missing(image: object, vmas: Iterable[mm_pb2.Vma]) -> list[str]:
    """Make again, from ``image``, each tmpfs file of ``vmas`` that is not at its path; the notes of those made."""
    notes = []
    done: set[str] = set()
    owners = set(image.owners())  # type: ignore[attr-defined]
    for v in vmas:
        if not v.HasField("shm_file") or v.name in done or os.path.lexists(v.name):
            continue
        g = v.shm_file
        done.add(v.name)
        try:
            fd = os.open(v.name, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise RestoreError(f"cannot make {v.name} again (the image's copy of that shared memory file): "
                               f"{exc.strerror}") from exc
        try:
            os.ftruncate(fd, g.size)
            if g.owner in owners:
                hugetlb.write_object(fd, image.iter_pages(g.owner))  # type: ignore[attr-defined]
                os.ftruncate(fd, g.size)  # stored pages are whole: the last one may reach past the end
            os.fchown(fd, g.uid, g.gid)
            os.fchmod(fd, stat.S_IMODE(g.mode))
            os.utime(fd, ns=(g.atime_ns, g.mtime_ns))
        except OSError as exc:
            os.close(fd)
            os.unlink(v.name)
            raise RestoreError(f"cannot make {v.name} again: {exc.strerror}") from exc
        os.close(fd)
        notes.append(f"{v.name} was not there: made again from the image ({g.size} bytes)")
    return notes
