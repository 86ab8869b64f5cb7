"""ioctl request numbers, built like the kernel's ``_IOC`` macros (asm-generic/ioctl.h)."""

from __future__ import annotations

import ctypes

__all__ = ["_IOC", "_IO", "_IOR", "_IOW", "_IOWR", "IOC_NONE", "IOC_WRITE", "IOC_READ"]

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
