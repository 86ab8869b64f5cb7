"""The error tree of ckpt, and the one place that maps each error to an exit code.

Kernel bindings raise plain ``OSError`` (errno + the name of the call).  The
layers above translate them here, once, into errors that name the process or
the file involved and carry a hint for the user.  The CLI prints
``ckpt: <message>`` (plus the hint) and exits with ``exit_code``; it never
shows a traceback for any ``CkptError``.
"""

from __future__ import annotations

import errno as _errno
import os

__all__ = [
    "EXIT_FAILURE",
    "EXIT_USAGE",
    "CkptError",
    "UsageError",
    "TargetError",
    "TargetGone",
    "AccessDenied",
    "Unsupported",
    "ImageError",
    "NotAnImage",
    "CorruptImage",
    "ChainError",
    "RestoreError",
    "translate_oserror",
]

#: Something went wrong while ckpt did its work (a failed dump, a failed restore).
EXIT_FAILURE = 1
#: The user's input was wrong: bad option, no such pid, not an image, corrupt image.
EXIT_USAGE = 2


class CkptError(Exception):
    """Base of every error ckpt reports to a user."""

    exit_code: int = EXIT_FAILURE

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class UsageError(CkptError):
    """A command line or API call that cannot be carried out as given."""

    exit_code = EXIT_USAGE


class TargetError(CkptError):
    """A problem with the target process, naming its pid."""

    exit_code = EXIT_USAGE

    def __init__(self, pid: int, message: str, *, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.pid = pid


class TargetGone(TargetError):
    """The process (or one of its threads) does not exist, or exited meanwhile."""


class AccessDenied(TargetError):
    """The process exists but cannot be traced or read by us."""


class Unsupported(CkptError):
    """A resource or kernel feature ckpt cannot handle (yet), named precisely."""


class ImageError(CkptError):
    """Base for problems with an image directory; ``path`` names the file or dir."""

    exit_code = EXIT_USAGE

    def __init__(self, path: str | os.PathLike[str], problem: str, *, hint: str | None = None) -> None:
        super().__init__(f"{os.fspath(path)}: {problem}", hint=hint)
        self.path = os.fspath(path)
        self.problem = problem


class NotAnImage(ImageError):
    """The directory does not hold a ckpt image (no inventory, wrong magic)."""


class CorruptImage(ImageError):
    """An image file is truncated, altered, or of a format we cannot read."""


class ChainError(ImageError):
    """The parent chain is broken: missing parent, wrong parent id, a loop."""


class RestoreError(CkptError):
    """A restore failed; whatever it had created was removed."""


def translate_oserror(exc: OSError, pid: int, doing: str) -> CkptError:
    """Turn an ``OSError`` raised while acting on ``pid`` into a ckpt error.

    ``doing`` is a short phrase ("seizing", "reading memory of") used in the message.
    ESRCH means the target (or a thread) is gone; EPERM/EACCES that we may not
    trace it.  Anything else stays a generic failure that keeps the kernel's words.
    """
    if exc.errno == _errno.ESRCH or (exc.errno == _errno.ENOENT and not os.path.exists(f"/proc/{pid}")):
        return TargetGone(pid, f"process {pid} does not exist (or exited) while {doing} it")
    if exc.errno in (_errno.EPERM, _errno.EACCES):
        return AccessDenied(
            pid,
            f"not allowed to trace process {pid} while {doing} it: {exc.strerror}",
            hint="run as root, and check that no other tracer (gdb, strace) is attached",
        )
    return CkptError(f"{doing} process {pid} failed: {exc}")
