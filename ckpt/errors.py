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
import re

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
    "IncompatibleImage",
    "ChainError",
    "UnsafeDirectory",
    "RestoreError",
    "MigrationInDoubt",
    "translate_oserror",
    "describe_oserror",
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


class IncompatibleImage(CorruptImage):
    """A sound image this ckpt cannot restore right: it needs a feature this ckpt does not know.

    (A subclass of CorruptImage, which a newer *format* number raises: callers
    that tell unreadable images apart from others keep doing so.)
    """


class ChainError(ImageError):
    """The parent chain is broken: missing parent, wrong parent id, a loop."""


class UnsafeDirectory(ImageError):
    """An image directory (or one above it) another user could change under ckpt (see ckpt.image.dirs)."""


class RestoreError(CkptError):
    """A restore failed; whatever it had created was removed."""


class MigrationInDoubt(CkptError):
    """A migration's switch-over was committed but the destination never confirmed: its copy may run.

    The source's original is kept in a group stop (never two running copies, DESIGN §6); which copy
    lives is for the user (or a later recovery) to decide, from what the destination runs.
    """


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


_PROC_PID = re.compile(r"/proc/(\d+)(?:/|$)")

#: errno -> (what happened to the file, as the end of a sentence; a hint or None).
_ERRNO_SENTENCES: dict[int, tuple[str, str | None]] = {
    _errno.ENOENT: ("does not exist", None),
    _errno.ENOTDIR: ("is not a directory (or a component of the path is not)", None),
    _errno.EISDIR: ("is a directory, where a file was expected", None),
    _errno.EEXIST: ("already exists", "remove it or pick another name"),
    _errno.ENOSPC: ("cannot be written: no space left on the device", "free some space, or write somewhere else"),
    _errno.EDQUOT: ("cannot be written: disk quota exceeded", "free some space, or write somewhere else"),
    _errno.EROFS: ("is on a read-only file system", "write somewhere else"),
    _errno.EMFILE: ("cannot be opened: ckpt has too many files open", "raise the limit of open files (ulimit -n)"),
    _errno.ENFILE: ("cannot be opened: the system has too many files open", None),
    _errno.ELOOP: ("has too many levels of symbolic links", None),
    _errno.ENAMETOOLONG: ("is too long a name", None),
}


def _not_allowed_hint() -> str:
    if os.geteuid() != 0:
        return "run ckpt as root (checkpointing another process needs CAP_SYS_PTRACE and more)"
    return ("root may still be refused: a process of another user namespace or container (pid 1 of the host, "
            "for one), or one a security module (Yama ptrace_scope, lockdown) protects, cannot be checkpointed "
            "from here")


def describe_oserror(exc: OSError) -> CkptError:
    """An ``OSError`` that reached the command line untranslated, as a sentence with a hint.

    A refusal on ``/proc/PID/...`` is an :class:`AccessDenied` naming the
    process (exit 2, as every refusal to trace); otherwise the file and what
    went wrong, in words (exit 1: paths a user gives are checked before, so
    what is left is the system failing ckpt).
    """
    path = exc.filename if isinstance(exc.filename, str) else None
    m = _PROC_PID.match(path or "")
    if m and exc.errno in (_errno.EPERM, _errno.EACCES):
        pid = int(m.group(1))
        return AccessDenied(pid, f"not allowed to read {path} of process {pid}: "
                                 f"{(exc.strerror or 'permission denied').lower()}", hint=_not_allowed_hint())
    if m and exc.errno in (_errno.ENOENT, _errno.ESRCH):
        pid = int(m.group(1))
        return TargetGone(pid, f"process {pid} does not exist (or exited)")
    what = path or "the kernel refused a call ckpt made"
    if exc.errno in (_errno.EPERM, _errno.EACCES):
        doing = "not permitted" if exc.errno == _errno.EPERM else "permission denied"
        if os.geteuid() != 0:
            hint = _not_allowed_hint()
        elif path:
            hint = "check the permissions of the path, and that its file system is not mounted read-only"
        else:
            hint = ("root here may lack a capability (a container's root often has no CAP_SYS_RESOURCE or "
                    "CAP_SYS_ADMIN); --debug shows the call")
        return CkptError(f"{what}: {doing}", hint=hint)
    sentence = _ERRNO_SENTENCES.get(exc.errno or 0)
    if sentence is not None and path:
        return CkptError(f"{path} {sentence[0]}", hint=sentence[1])
    return CkptError(f"{what}: {(exc.strerror or str(exc)).lower()}" if exc.strerror else f"{what}: {exc}")
