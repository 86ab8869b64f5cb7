"""CPUID and XGETBV of the CPU this process runs on, without a compiled extension.

Both are unprivileged instructions with no libc wrapper.  ckpt has no C
extension, so each is a few bytes of machine code placed in an anonymous
mapping of our own (written while it is PROT_READ|PROT_WRITE, then switched
to PROT_READ|PROT_EXEC) and called through a ctypes function pointer.  A
guest sees what its hypervisor reports; that is also what every library in
the process sees, which is the point.

Register names and leaf numbers are Intel's (SDM vol. 2A, "CPUID").
"""

from __future__ import annotations

import ctypes
import functools
import mmap
from typing import NamedTuple

from .libc import check, libc
from .mman import PROT_EXEC, PROT_READ

__all__ = ["CpuidRegs", "cpuid", "xgetbv", "max_leaf", "max_extended_leaf", "CPUID_1_ECX_OSXSAVE"]

#: CPUID.1:ECX bit 27: the OS set CR4.OSXSAVE, so XGETBV may be executed.
CPUID_1_ECX_OSXSAVE = 1 << 27

# cpuid(uint32 leaf /*edi*/, uint32 subleaf /*esi*/, uint32 out[4] /*rdx*/): rbx is callee-saved.
_CPUID_CODE = bytes([
    0x53,                    # push rbx
    0x49, 0x89, 0xD0,        # mov  r8, rdx
    0x89, 0xF8,              # mov  eax, edi
    0x89, 0xF1,              # mov  ecx, esi
    0x0F, 0xA2,              # cpuid
    0x41, 0x89, 0x00,        # mov  [r8], eax
    0x41, 0x89, 0x58, 0x04,  # mov  [r8+4], ebx
    0x41, 0x89, 0x48, 0x08,  # mov  [r8+8], ecx
    0x41, 0x89, 0x50, 0x0C,  # mov  [r8+12], edx
    0x5B,                    # pop  rbx
    0xC3,                    # ret
])
# uint64 xgetbv(uint32 xcr /*edi*/): edx:eax of XCR[ecx].
_XGETBV_CODE = bytes([
    0x89, 0xF9,              # mov  ecx, edi
    0x0F, 0x01, 0xD0,        # xgetbv
    0x48, 0xC1, 0xE2, 0x20,  # shl  rdx, 32
    0x48, 0x09, 0xD0,        # or   rax, rdx
    0xC3,                    # ret
])
_XGETBV_OFFSET = 64


class CpuidRegs(NamedTuple):
    """The four registers one CPUID leaf returns."""

    eax: int
    ebx: int
    ecx: int
    edx: int


class _Stubs:
    """The executable page holding both stubs (kept for the life of the process)."""

    def __init__(self) -> None:
        self._map = mmap.mmap(-1, mmap.PAGESIZE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        self._map[: len(_CPUID_CODE)] = _CPUID_CODE
        self._map[_XGETBV_OFFSET: _XGETBV_OFFSET + len(_XGETBV_CODE)] = _XGETBV_CODE
        anchor = ctypes.c_char.from_buffer(self._map)  # pins the mapping: it can never be closed under us
        self._anchor = anchor
        base = ctypes.addressof(anchor)
        libc.mprotect.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
        check(libc.mprotect(ctypes.c_void_p(base), mmap.PAGESIZE, PROT_READ | PROT_EXEC), "mprotect")
        self.cpuid = ctypes.CFUNCTYPE(None, ctypes.c_uint32, ctypes.c_uint32, ctypes.POINTER(ctypes.c_uint32))(base)
        self.xgetbv = ctypes.CFUNCTYPE(ctypes.c_uint64, ctypes.c_uint32)(base + _XGETBV_OFFSET)


@functools.cache
def _stubs() -> _Stubs:
    return _Stubs()


def cpuid(leaf: int, subleaf: int = 0) -> CpuidRegs:
    """CPUID with EAX = ``leaf``, ECX = ``subleaf``.

    A leaf above :func:`max_leaf` (or :func:`max_extended_leaf`) is not
    refused by the CPU: Intel parts answer with the highest basic leaf's
    data.  Callers check the maximum first.
    """
    out = (ctypes.c_uint32 * 4)()
    _stubs().cpuid(leaf, subleaf, out)
    return CpuidRegs(*out)


def max_leaf() -> int:
    """Highest basic leaf (CPUID.0:EAX)."""
    return cpuid(0).eax


def max_extended_leaf() -> int:
    """Highest extended leaf (CPUID.80000000H:EAX); 0 when there is none."""
    top = cpuid(0x8000_0000).eax
    return top if top & 0x8000_0000 else 0


def xgetbv(xcr: int = 0) -> int:
    """XGETBV of extended control register ``xcr`` (0: XCR0, the state components the OS enabled).

    Faults (SIGILL) unless CPUID.1:ECX.OSXSAVE is set: check :data:`CPUID_1_ECX_OSXSAVE` first.
    """
    return int(_stubs().xgetbv(xcr))
