"""Memory areas of the memory-flag scenarios (py_vmflags, py_unreadable): mapped with libc through ctypes,
each 16 pages with a hole on each side so that no neighbour merges with it, filled with a per-page pattern."""

import ctypes
import mmap

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
libc.mlock.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]

P = 4096
N = 16
PROT_RW = mmap.PROT_READ | mmap.PROT_WRITE
MAP_PRIVATE, MAP_ANONYMOUS = 0x02, 0x20


def area(flags: int = MAP_PRIVATE | MAP_ANONYMOUS) -> int:
    """N pages mapped with ``flags``, a hole on each side; OSError if mmap refuses."""
    addr = libc.mmap(None, (N + 2) * P, PROT_RW, flags, -1, 0)
    if addr in (None, ctypes.c_void_p(-1).value):
        raise OSError(ctypes.get_errno(), "mmap")
    libc.munmap(addr, P)
    libc.munmap(addr + (N + 1) * P, P)
    return addr + P


def pattern(name: str, page: int) -> bytes:
    return (f"{name}:{page}:".encode() * P)[:P]


def fill(name: str, addr: int, pages: range = range(N)) -> None:
    for i in pages:
        ctypes.memmove(addr + i * P, pattern(name, i), P)
