"""Reading files under ``/proc/PID``: the one place where their errors become ckpt errors.

Every parser in :mod:`ckpt.procfs` takes ``bytes`` and is pure; the readers go
through :class:`ProcDir`, which turns what the kernel says about a vanished or
forbidden process into :class:`~ckpt.errors.TargetGone` /
:class:`~ckpt.errors.AccessDenied` (STYLE principle 1), and nothing else in the
package catches ``OSError``.

Quirks handled here (all seen on Linux 6.18):

* A process that exits between ``open`` and ``read`` makes ``read`` fail with
  ESRCH (``proc_single_show`` finds no task), while a process that is already
  gone makes ``open`` fail with ENOENT.
* ESRCH does *not* always mean "gone": ``/proc/PID/auxv`` and ``environ`` give
  ESRCH for a live kernel thread or a zombie, because they have no ``mm``.  We
  tell the two apart by opening ``stat`` again, which works for any process
  that still exists, zombies included.
* ENOENT on an entry below a live process (``fd/N``, ``fdinfo/N``,
  ``task/TID``) means that descriptor was closed or that thread exited, not
  that the process is gone.
* ``/proc/PID`` of a *thread* id also resolves (hidden tid directories), so a
  tid passed as a pid reads that thread's view.
* A directory fd of ``/proc/PID`` stays bound to the process it was opened
  for: after that process dies, opening files through it fails even if the pid
  number has been reused meanwhile.  :class:`ProcDir` can hold such an fd so a
  snapshot never reads a different process by accident (STYLE principle 4).
"""

from __future__ import annotations

import errno
import os

from ..errors import AccessDenied, CkptError, TargetError, TargetGone, translate_oserror

__all__ = ["PROC", "ProcDir"]

#: Mount point of procfs.  Tests may point a ProcDir elsewhere with ``root``.
PROC = "/proc"


class ProcDir:
    """Access to the files of one ``/proc/PID`` directory.

    ``pinned=True`` opens the directory once and reads every file relative to
    that fd (see the module docstring for why); call :meth:`close` (or use it
    as a context manager) when done.  Unpinned, each read resolves the path
    afresh, which is what one-shot readers such as ``read_stat(pid)`` want.
    """

    def __init__(self, pid: int, *, pinned: bool = False, root: str = PROC) -> None:
        self.pid = pid
        self.base = f"{root}/{pid}"
        self._dirfd = -1
        if pinned:
            try:
                self._dirfd = os.open(self.base, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            except OSError as exc:
                raise self._translate(exc, "", check_alive=False) from exc

    # -- lifetime -------------------------------------------------------

    def close(self) -> None:
        if self._dirfd >= 0:
            os.close(self._dirfd)
            self._dirfd = -1

    def __enter__(self) -> "ProcDir":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def pinned(self) -> bool:
        return self._dirfd >= 0

    # -- primitives -----------------------------------------------------

    def _open(self, rel: str) -> int:
        if self._dirfd >= 0:
            return os.open(rel, os.O_RDONLY | os.O_CLOEXEC, dir_fd=self._dirfd)
        return os.open(f"{self.base}/{rel}", os.O_RDONLY | os.O_CLOEXEC)

    def alive(self) -> bool:
        """True while the process exists (a zombie still exists)."""
        try:
            os.close(self._open("stat"))
        except OSError:
            return False
        return True

    def read(self, rel: str, *, tid: int | None = None, no_mm_ok: bool = False) -> bytes:
        """Whole content of ``/proc/PID/<rel>``.

        ``no_mm_ok``: return ``b""`` when the file exists but the process has
        no address space (kernel thread, zombie) and the kernel says ESRCH.
        ``tid`` names the thread when ``rel`` is under ``task/TID`` so a
        vanished thread is reported as such.
        """
        try:
            fd = self._open(rel)
            try:
                # seq_file hands out at most a page-ish per read(); loop to EOF
                # with a large buffer so a big maps/smaps needs few syscalls.
                chunks = []
                while True:
                    chunk = os.read(fd, 1 << 20)
                    if not chunk:
                        break
                    chunks.append(chunk)
            finally:
                os.close(fd)
        except OSError as exc:
            if no_mm_ok and exc.errno == errno.ESRCH and self.alive():
                return b""
            raise self._translate(exc, rel, tid=tid) from exc
        return b"".join(chunks)

    def readlink(self, rel: str) -> str:
        """Target of the symlink ``/proc/PID/<rel>`` (``fd/N``, ``exe``, ``cwd``)."""
        try:
            if self._dirfd >= 0:
                return os.readlink(rel, dir_fd=self._dirfd)
            return os.readlink(f"{self.base}/{rel}")
        except OSError as exc:
            raise self._translate(exc, rel) from exc

    def listdir(self, rel: str) -> list[str]:
        """Names in the directory ``/proc/PID/<rel>`` (``fd``, ``task``)."""
        try:
            if self._dirfd >= 0:
                fd = os.open(rel, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=self._dirfd)
                try:
                    return os.listdir(fd)
                finally:
                    os.close(fd)
            return os.listdir(f"{self.base}/{rel}")
        except OSError as exc:
            raise self._translate(exc, rel) from exc

    # -- the error boundary ---------------------------------------------

    def _translate(self, exc: OSError, rel: str, *, tid: int | None = None, check_alive: bool = True) -> CkptError:
        """Map an OSError from reading ``rel`` to the ckpt error tree."""
        what = f"{self.base}/{rel}" if rel else self.base
        if exc.errno in (errno.ENOENT, errno.ESRCH):
            if not check_alive or not self.alive():
                return TargetGone(self.pid, f"process {self.pid} does not exist (or exited) while reading {what}")
            if tid is not None:
                return TargetGone(self.pid, f"thread {tid} of process {self.pid} exited while reading {what}")
            if exc.errno == errno.ENOENT:
                # fd/N, fdinfo/N closed meanwhile, or a file this kernel lacks.
                return TargetError(self.pid, f"{what} vanished while reading it (closed descriptor?)")
            return CkptError(f"reading {what} failed: {exc.strerror} (process {self.pid} has no address space?)")
        if exc.errno in (errno.EACCES, errno.EPERM):
            return AccessDenied(
                self.pid,
                f"not allowed to read {what}: {exc.strerror}",
                hint="run as root (reading another user's maps, auxv or fds needs ptrace access)",
            )
        return translate_oserror(exc, self.pid, f"reading {what} of")
