"""Files ckpt writes once its work is done (``--json-stats``, ``--pidfile``): checked first, written whole.

A dump that ends its target and then fails to write the stats file, or a
restore whose process runs while ckpt exits 1 over its pidfile, has done the
work and reports failure.  So every such path is checked before the target is
touched — its directory exists and takes a new file (probed with an unnamed
``O_TMPFILE``, which leaves nothing behind, else with ``access``) and the path
is no directory — and written at the end into a temporary name beside it and
renamed over it, so a reader sees the old file or the whole new one.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass

from .errors import UsageError

__all__ = ["OutputFile"]


@dataclass(frozen=True)
class OutputFile:
    """A file to write at the end of a command; :meth:`check` it before the work."""

    path: str
    option: str  # the option that named it, for messages

    @classmethod
    def checked(cls, path: str | os.PathLike[str] | None, option: str) -> "OutputFile | None":
        """:meth:`check` ``path`` now (None: the option was not given)."""
        if path is None:
            return None
        out = cls(os.path.abspath(os.fspath(path)), option)
        out.check()
        return out

    def _refuse(self, problem: str, hint: str | None = None) -> UsageError:
        return UsageError(f"{self.option} {self.path}: {problem}", hint=hint)

    def check(self) -> None:
        """UsageError unless a file can be written at :attr:`path` (its directory exists and is writable)."""
        parent = os.path.dirname(self.path)
        if not os.path.exists(parent):
            raise self._refuse(f"directory {parent} does not exist")
        if not os.path.isdir(parent):
            raise self._refuse(f"{parent} is not a directory")
        if os.path.isdir(self.path):
            raise self._refuse("is a directory", hint="give a file name")
        try:
            fd = os.open(parent, os.O_TMPFILE | os.O_WRONLY | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
                raise self._refuse(f"cannot create a file in {parent}: {(exc.strerror or str(exc)).lower()}") from exc
            if not os.access(parent, os.W_OK | os.X_OK):  # a file system without O_TMPFILE
                raise self._refuse(f"cannot create a file in {parent}: permission denied") from exc
        else:
            os.close(fd)

    def write(self, text: str) -> None:
        """Write ``text`` to a temporary name beside :attr:`path` and rename it over :attr:`path`."""
        tmp = os.path.join(os.path.dirname(self.path), f".{os.path.basename(self.path)}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(text)
            os.replace(tmp, self.path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
