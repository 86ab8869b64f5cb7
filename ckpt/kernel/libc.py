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
# The same function called through PyDLL: the GIL stays held across the call (see syscall()).
_syscall_gil = ctypes.PyDLL(libc._name, use_errno=True).syscall
_syscall_gil.restype = ctypes.c_long


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


def syscall(nr: int, *args: int, name: str | None = None, hold_gil: bool = False) -> int:
    """Do raw syscall ``nr`` in *this* process with integer (or pointer) arguments.

    Arguments are passed as ``c_long``/``c_void_p`` so 64-bit values survive.
    ``hold_gil``: keep the GIL through the call, for a fork-like clone: a plain
    ctypes call lets it go, and if another thread takes it meanwhile, the child
    (a copy with only the calling thread) waits for it for ever on return.
    """
    cargs = []
    for a in args:
        if isinstance(a, int):
            cargs.append(ctypes.c_ulong(a & 0xFFFFFFFFFFFFFFFF))
        else:
            cargs.append(a)
    ctypes.set_errno(0)
    res = (_syscall_gil if hold_gil else _syscall)(ctypes.c_long(nr), *cargs)
    return check(res, name or f"syscall {nr}")
