"""The x86_64 ``struct rt_sigframe`` that ``rt_sigreturn`` reads: layout only, no policy.

``rt_sigreturn`` takes a thread's whole user context from memory — every
general register, ``rip``, the flags, the blocked-signal mask and the
FPU/vector state — and resumes it there.  The kernel builds such a frame
when it runs a signal handler; the controller builds one itself to make an
injected syscall end in the thread's own context even when nobody is left to
put that context back (:mod:`ckpt.control.guard`).

Layout (arch/x86/include/asm/sigframe.h, uapi/asm/sigcontext.h, uapi/asm/ucontext.h)::

    +0    pretcode              return address: popped by the ``ret`` after the syscall
    +8    struct ucontext       uc_flags, uc_link, uc_stack, uc_mcontext, uc_sigmask (304 bytes)
    +320  fpstate               xsave area (64-byte aligned), FP_XSTATE_MAGIC2 after it

``rt_sigreturn`` finds the frame at ``rsp - 8`` (the ``ret`` popped ``pretcode``).
"""

from __future__ import annotations

import struct

from .arch_x86_64 import user_regs_struct

__all__ = [
    "UC_FP_XSTATE", "UC_SIGCONTEXT_SS", "UC_STRICT_RESTORE_SS", "FP_XSTATE_MAGIC1", "FP_XSTATE_MAGIC2",
    "SS_INVALID_MODE", "XFEATURE_XTILEDATA", "UCONTEXT_SIZE", "FPSTATE_OFFSET", "frame_size", "rt_sigframe",
]

UC_FP_XSTATE = 0x1
UC_SIGCONTEXT_SS = 0x2
UC_STRICT_RESTORE_SS = 0x4
#: ``struct _fpx_sw_bytes`` (in the fxsave area's software-reserved bytes at 464) starts with this.
FP_XSTATE_MAGIC1 = 0x46505853
#: Written right after the xsave area (at ``fpstate + xstate_size``).
FP_XSTATE_MAGIC2 = 0x46505845
_SW_BYTES_OFFSET = 464
_SW_BYTES = struct.Struct("<IIQI28x")  # struct _fpx_sw_bytes: magic1, extended_size, xfeatures, xstate_size, padding
#: The xsave header (XSTATE_BV first) follows the 512-byte legacy area.
_XSAVE_HEADER_OFFSET = 512
#: XTILEDATA (AMX tiles): the one state component a task must ask for (arch_prctl ARCH_REQ_XCOMP_PERM),
#: last in the standard layout; a task that has not asked takes signal frames without it.
XFEATURE_XTILEDATA = 18
_XTILEDATA_SIZE = 8192
#: ``uc_stack.ss_flags`` that is neither 0, SS_ONSTACK nor SS_DISABLE: ``restore_altstack()``
#: then fails with EINVAL before changing anything, and rt_sigreturn ignores that error — so
#: the frame leaves the thread's alternate signal stack as it is without knowing it.
SS_INVALID_MODE = 3

_SIGCONTEXT_REGS = ("r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15",
                    "rdi", "rsi", "rbp", "rbx", "rdx", "rax", "rcx", "rsp", "rip", "eflags")
_UCONTEXT = struct.Struct("<QQ QiiQ 18Q HHHH QQQQ Q 8Q Q")
UCONTEXT_SIZE = _UCONTEXT.size  # 304
FPSTATE_OFFSET = 320  # 8 + 304 rounded up to 64


def frame_size(xstate_len: int) -> int:
    """Bytes a frame with an ``xstate_len``-byte xsave area takes at most (MAGIC2 may follow the area)."""
    return FPSTATE_OFFSET + xstate_len + 4


def rt_sigframe(at: int, pretcode: int, regs: user_regs_struct, sigmask: int, xstate: bytes) -> bytes:
    """The frame to place at address ``at`` (64-byte aligned) so that rt_sigreturn resumes ``regs``.

    ``xstate``: the thread's NT_X86_XSTATE regset (standard xsave format, as
    large as the CPU's full user state; ptrace puts XCR0 in the first
    software-reserved word).  The frame's software-reserved bytes say what the
    kernel is to load back: every enabled component, in a size no larger than
    the task's own (the AMX tiles only if they are in use, which means the task
    was allowed them).  ``sigmask``: the blocked mask to resume with.  The
    thread's alternate signal stack is left alone (:data:`SS_INVALID_MODE`).
    """
    if at % 64:
        raise ValueError(f"a signal frame's xsave area must be 64-byte aligned (frame at {at:#x})")
    xcr0, = struct.unpack_from("<Q", xstate, _SW_BYTES_OFFSET)
    in_use, = struct.unpack_from("<Q", xstate, _XSAVE_HEADER_OFFSET)
    features, xstate_size = xcr0, len(xstate)
    tiles = 1 << XFEATURE_XTILEDATA
    if xcr0 & tiles and not in_use & tiles:
        features, xstate_size = xcr0 & ~tiles, len(xstate) - _XTILEDATA_SIZE
    if not xcr0 & 0x3 or xstate_size < _XSAVE_HEADER_OFFSET + 64:
        raise ValueError(f"unexpected xstate regset: XCR0 {xcr0:#x}, {len(xstate)} bytes")
    fpstate = at + FPSTATE_OFFSET
    uc = _UCONTEXT.pack(
        UC_FP_XSTATE | UC_SIGCONTEXT_SS | UC_STRICT_RESTORE_SS, 0,  # uc_flags, uc_link
        0, SS_INVALID_MODE, 0, 0,  # uc_stack: ss_sp, ss_flags, pad, ss_size
        *(getattr(regs, r) for r in _SIGCONTEXT_REGS),
        regs.cs & 0xFFFF, 0, 0, regs.ss & 0xFFFF,  # cs, gs, fs, ss
        0, 0, 0, 0,  # err, trapno, oldmask, cr2
        fpstate, *([0] * 8),
        sigmask,
    )
    area = bytearray(max(len(xstate), xstate_size + 4))
    area[:len(xstate)] = xstate
    _SW_BYTES.pack_into(area, _SW_BYTES_OFFSET, FP_XSTATE_MAGIC1, xstate_size + 4, features, xstate_size)
    struct.pack_into("<I", area, xstate_size, FP_XSTATE_MAGIC2)
    out = bytearray(FPSTATE_OFFSET + len(area))
    struct.pack_into("<Q", out, 0, pretcode)
    out[8:8 + len(uc)] = uc
    out[FPSTATE_OFFSET:] = area
    return bytes(out)
