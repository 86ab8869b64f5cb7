"""The libc handle and the single errno checker every binding goes through."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from typing import Any

__all__ = ["libc", "check", "check_ptr", "raise_errno", "syscall", "errno_of"]

#: libc loaded with ``use_errno`` so ``ctypes.get_errno()`` is meaningful.
libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)

_syscall = libc.syscall
_syscall.restype = ctypes.c_long


def raise_errno(call: str, err: int | None = None) -> None:
    """Raise ``OSError`` for ``call`` with ``err`` (default: the saved ctypes errno)."""
    if err is None:
        err = ctypes.get_errno()
    raise OSError(err, f"{call}: {os.strerror(err)}")


def errno_of(exc: BaseException) -> int | None:
    """The errno carried by an exception, or None."""
    return getattr(exc, "errno", None)


def check(result: int, call: str) -> int:
    """Return ``result`` unless it is -1, in which case raise with the saved errno."""
    if result == -1:
        raise_errno(call)
    return result


def check_ptr(result: Any, call: str) -> Any:
    """Like :func:`check` for calls that return ``(void *)-1`` on failure (mmap)."""
    if result is None or result in (-1, 0xFFFFFFFFFFFFFFFF):
        raise_errno(call)
    return result


def syscall(nr: int, *args: int, name: str | None = None) -> int:
    """Do raw syscall ``nr`` in *this* process with integer (or pointer) arguments.

    Arguments are passed as ``c_long``/``c_void_p`` so 64-bit values survive.
    """
    cargs = []
    for a in args:
        if isinstance(a, int):
            cargs.append(ctypes.c_ulong(a & 0xFFFFFFFFFFFFFFFF))
        else:
            cargs.append(a)
    ctypes.set_errno(0)
    res = _syscall(ctypes.c_long(nr), *cargs)
    return check(res, name or f"syscall {nr}")
