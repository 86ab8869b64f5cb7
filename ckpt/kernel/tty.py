"""Terminal ioctls (tty_ioctl(4), ioctl_tty(2)): termios, window size, and the pseudo-terminal controls.

Stateless wrappers over ``ioctl`` on a descriptor of ours (a duplicate of a
target's, from ``pidfd_getfd``, acts on the same terminal).  Request numbers
are built as ``asm-generic/ioctls.h`` builds them.  On a pty master,
termios and window-size requests act on its slave (drivers/tty/tty_ioctl.c,
``tty_pair_get_tty``): a pair has one termios and one window size.
"""

from __future__ import annotations

import ctypes

from .ioctl import _IO, _IOR, _IOW, ioctl

__all__ = [
    "NCCS", "EXTPROC", "termios2", "winsize", "TCGETS2", "TCSETS2", "TIOCGWINSZ", "TIOCSWINSZ", "TIOCPKT", "TIOCGPKT",
    "TIOCSPTLCK", "TIOCGPTLCK", "TIOCGPTN", "TIOCGEXCL", "TIOCEXCL", "TIOCNXCL", "TIOCSCTTY", "TIOCNOTTY",
    "TIOCSPGRP", "TIOCGPGRP", "TIOCGPTPEER", "FIONREAD", "PTMX_RDEV", "TTY_RDEV", "PTY_SLAVE_MAJORS",
    "tcgets2", "tcsets2", "get_winsize", "set_winsize", "get_int", "set_int", "inq", "slave_index",
]

#: c_cc entries of the kernel's termios (not glibc's 32).
NCCS = 19
#: c_lflag: line editing is done by the master's program (Python's termios module lacks it).
EXTPROC = 0o200000


class termios2(ctypes.Structure):
    """``struct termios2`` (asm-generic/termbits.h): termios with the input and output speeds."""

    _fields_ = [("c_iflag", ctypes.c_uint), ("c_oflag", ctypes.c_uint), ("c_cflag", ctypes.c_uint),
                ("c_lflag", ctypes.c_uint), ("c_line", ctypes.c_ubyte), ("c_cc", ctypes.c_ubyte * NCCS),
                ("c_ispeed", ctypes.c_uint), ("c_ospeed", ctypes.c_uint)]


class winsize(ctypes.Structure):
    _fields_ = [("ws_row", ctypes.c_ushort), ("ws_col", ctypes.c_ushort), ("ws_xpixel", ctypes.c_ushort),
                ("ws_ypixel", ctypes.c_ushort)]


TCGETS2 = _IOR("T", 0x2A, termios2)
TCSETS2 = _IOW("T", 0x2B, termios2)
TIOCGWINSZ = 0x5413
TIOCSWINSZ = 0x5414
TIOCEXCL = 0x540C
TIOCNXCL = 0x540D
TIOCSCTTY = 0x540E
TIOCGPGRP = 0x540F
TIOCSPGRP = 0x5410
FIONREAD = 0x541B
TIOCPKT = 0x5420
TIOCNOTTY = 0x5422
TIOCGPTN = _IOR("T", 0x30, ctypes.c_uint)
TIOCSPTLCK = _IOW("T", 0x31, ctypes.c_int)
TIOCGPKT = _IOR("T", 0x38, ctypes.c_int)
TIOCGPTLCK = _IOR("T", 0x39, ctypes.c_int)
TIOCGEXCL = _IOR("T", 0x40, ctypes.c_int)
TIOCGPTPEER = _IO("T", 0x41)

#: (major, minor) of /dev/ptmx and of /dev/tty (the opener's controlling terminal); the Unix98 slaves'
#: majors (UNIX98_PTY_SLAVE_MAJOR, 8 of them).
PTMX_RDEV = (5, 2)
TTY_RDEV = (5, 0)
PTY_SLAVE_MAJORS = range(136, 144)


def tcgets2(fd: int) -> termios2:
    t = termios2()
    ioctl(fd, TCGETS2, t, "ioctl(TCGETS2)")
    return t


def tcsets2(fd: int, t: termios2) -> None:
    """TCSETS2: now, without waiting for output to drain (TCSETSW2) or flushing input (TCSETSF2)."""
    ioctl(fd, TCSETS2, t, "ioctl(TCSETS2)")


def get_winsize(fd: int) -> winsize:
    w = winsize()
    ioctl(fd, TIOCGWINSZ, w, "ioctl(TIOCGWINSZ)")
    return w


def set_winsize(fd: int, w: winsize) -> None:
    ioctl(fd, TIOCSWINSZ, w, "ioctl(TIOCSWINSZ)")


def get_int(fd: int, request: int, call: str) -> int:
    """An ioctl returning an int through its pointer (TIOCGPTN, TIOCGPKT, TIOCGPTLCK, TIOCGEXCL, FIONREAD)."""
    v = ctypes.c_int(0)
    ioctl(fd, request, v, call)
    return v.value


def set_int(fd: int, request: int, value: int, call: str) -> None:
    """An ioctl reading an int through its pointer (TIOCPKT, TIOCSPTLCK, TIOCSPGRP)."""
    v = ctypes.c_int(value)
    ioctl(fd, request, v, call)


def inq(fd: int) -> int:
    """FIONREAD: bytes a read may return now (in canonical mode, of complete lines only)."""
    return get_int(fd, FIONREAD, "ioctl(FIONREAD)")


def slave_index(major: int, minor: int) -> int | None:
    """N of /dev/pts/N for a slave's device number, None if it is no Unix98 pty slave."""
    if major not in PTY_SLAVE_MAJORS:
        return None
    return (major - PTY_SLAVE_MAJORS.start) * 256 + minor
