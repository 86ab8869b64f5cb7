"""ioctl request numbers, built like the kernel's ``_IOC`` macros (asm-generic/ioctl.h)."""

from __future__ import annotations

import ctypes

from .libc import check, libc

__all__ = ["_IOC", "_IO", "_IOR", "_IOW", "_IOWR", "IOC_NONE", "IOC_WRITE", "IOC_READ", "ioctl"]

_IOC_NRBITS = 8
_IOC_TYPEBITS = 8
_IOC_SIZEBITS = 14
_IOC_NRSHIFT = 0
_IOC_TYPESHIFT = _IOC_NRSHIFT + _IOC_NRBITS
_IOC_SIZESHIFT = _IOC_TYPESHIFT + _IOC_TYPEBITS
_IOC_DIRSHIFT = _IOC_SIZESHIFT + _IOC_SIZEBITS

IOC_NONE = 0
IOC_WRITE = 1
IOC_READ = 2


def _size(t: type | int) -> int:
    return t if isinstance(t, int) else ctypes.sizeof(t)


def _IOC(dir_: int, type_: str | int, nr: int, size: int) -> int:
    t = ord(type_) if isinstance(type_, str) else type_
    return (dir_ << _IOC_DIRSHIFT) | (t << _IOC_TYPESHIFT) | (nr << _IOC_NRSHIFT) | (size << _IOC_SIZESHIFT)


def _IO(type_: str | int, nr: int) -> int:
    return _IOC(IOC_NONE, type_, nr, 0)


def _IOR(type_: str | int, nr: int, t: type | int) -> int:
    return _IOC(IOC_READ, type_, nr, _size(t))


def _IOW(type_: str | int, nr: int, t: type | int) -> int:
    return _IOC(IOC_WRITE, type_, nr, _size(t))


def _IOWR(type_: str | int, nr: int, t: type | int) -> int:
    return _IOC(IOC_READ | IOC_WRITE, type_, nr, _size(t))


# A private function object: ``libc.ioctl`` is shared, and its argtypes are global.
_ioctl = libc["ioctl"]
_ioctl.restype = ctypes.c_int
_ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p]


def ioctl(fd: int, request: int, arg: ctypes.Structure | ctypes.Array | int, call: str) -> int:
    """``ioctl(fd, request, &arg)`` (or a plain integer ``arg``); -1 raises OSError naming ``call``."""
    ptr = arg if isinstance(arg, int) else ctypes.addressof(arg)
    ctypes.set_errno(0)
    return check(_ioctl(fd, request, ptr), call)
