"""ptrace(2) and waitpid(2) for tracing the threads of a target (include/uapi/linux/ptrace.h).

Every function acts on one *thread* (tid) and raises
``OSError(errno, "ptrace(PTRACE_X, tid): strerror")`` on failure.  Wait statuses
are decoded once, into :class:`WaitStatus`, whose :attr:`WaitStatus.kind` tells
the kind of stop; callers branch on it instead of catching exceptions.
"""

from __future__ import annotations

import ctypes
import enum
import errno as _errno
import os
import signal
from dataclasses import dataclass

from .arch_x86_64 import user_regs_struct
from .libc import libc, raise_errno
from .vm import iovec

__all__ = [
    # requests
    "PTRACE_PEEKTEXT", "PTRACE_PEEKDATA", "PTRACE_POKETEXT", "PTRACE_POKEDATA",
    "PTRACE_CONT", "PTRACE_KILL", "PTRACE_SINGLESTEP", "PTRACE_GETREGS", "PTRACE_SETREGS",
    "PTRACE_ATTACH", "PTRACE_DETACH", "PTRACE_SYSCALL", "PTRACE_SETOPTIONS",
    "PTRACE_GETEVENTMSG", "PTRACE_GETSIGINFO", "PTRACE_SETSIGINFO", "PTRACE_GETREGSET",
    "PTRACE_SETREGSET", "PTRACE_SEIZE", "PTRACE_INTERRUPT", "PTRACE_LISTEN",
    "PTRACE_GETSIGMASK", "PTRACE_SETSIGMASK", "PTRACE_GET_RSEQ_CONFIGURATION", "PTRACE_PEEKSIGINFO",
    "PTRACE_PEEKSIGINFO_SHARED", "PTRACE_SECCOMP_GET_FILTER", "PTRACE_SECCOMP_GET_METADATA",
    "PTRACE_GET_SYSCALL_INFO", "PTRACE_SYSCALL_INFO_ENTRY", "PTRACE_SYSCALL_INFO_EXIT", "SyscallEntry",
    "get_syscall_entry",
    # options and events
    "PTRACE_O_TRACESYSGOOD", "PTRACE_O_TRACEFORK", "PTRACE_O_TRACEVFORK", "PTRACE_O_TRACECLONE",
    "PTRACE_O_TRACEEXEC", "PTRACE_O_TRACEVFORKDONE", "PTRACE_O_TRACEEXIT", "PTRACE_O_TRACESECCOMP",
    "PTRACE_O_EXITKILL", "PTRACE_O_SUSPEND_SECCOMP",
    "PTRACE_EVENT_FORK", "PTRACE_EVENT_VFORK", "PTRACE_EVENT_CLONE", "PTRACE_EVENT_EXEC",
    "PTRACE_EVENT_VFORK_DONE", "PTRACE_EVENT_EXIT", "PTRACE_EVENT_SECCOMP", "PTRACE_EVENT_STOP",
    # regsets, wait flags
    "NT_PRSTATUS", "NT_PRFPREG", "NT_X86_XSTATE", "XSTATE_MAX", "SIGINFO_SIZE", "__WALL",
    # records
    "RseqConfiguration", "StopKind", "WaitStatus",
    # calls
    "seize", "interrupt", "cont", "detach", "singlestep", "syscall_step", "setoptions",
    "getregs", "setregs", "getregset", "setregset", "xstate_size", "get_xstate", "set_xstate",
    "getsigmask", "setsigmask", "get_rseq_configuration", "get_syscall_user_dispatch_mode", "geteventmsg", "getsiginfo",
    "setsiginfo", "peeksiginfo", "peekdata", "pokedata", "waitpid",
    "seccomp_get_filter", "seccomp_get_metadata",
]

# --- requests (include/uapi/linux/ptrace.h, arch/x86/include/uapi/asm/ptrace-abi.h) ---
PTRACE_PEEKTEXT = 1
PTRACE_PEEKDATA = 2
PTRACE_POKETEXT = 4
PTRACE_POKEDATA = 5
PTRACE_CONT = 7
PTRACE_KILL = 8
PTRACE_SINGLESTEP = 9
PTRACE_GETREGS = 12
PTRACE_SETREGS = 13
PTRACE_ATTACH = 16
PTRACE_DETACH = 17
PTRACE_SYSCALL = 24
PTRACE_SETOPTIONS = 0x4200
PTRACE_GETEVENTMSG = 0x4201
PTRACE_GETSIGINFO = 0x4202
PTRACE_SETSIGINFO = 0x4203
PTRACE_GETREGSET = 0x4204
PTRACE_SETREGSET = 0x4205
PTRACE_SEIZE = 0x4206
PTRACE_INTERRUPT = 0x4207
PTRACE_LISTEN = 0x4208
PTRACE_PEEKSIGINFO = 0x4209  # Linux 3.10
PTRACE_GETSIGMASK = 0x420A
PTRACE_SETSIGMASK = 0x420B
PTRACE_SECCOMP_GET_FILTER = 0x420C  # Linux 4.4; needs CAP_SYS_ADMIN and a tracer not under seccomp itself
PTRACE_SECCOMP_GET_METADATA = 0x420D  # Linux 4.16
PTRACE_GET_SYSCALL_INFO = 0x420E  # Linux 5.3
PTRACE_GET_RSEQ_CONFIGURATION = 0x420F  # Linux 5.13
PTRACE_GET_SYSCALL_USER_DISPATCH_CONFIG = 0x4211  # Linux 6.3

# --- events: the value of ``status >> 16`` at a ptrace-event-stop ---
PTRACE_EVENT_FORK = 1
PTRACE_EVENT_VFORK = 2
PTRACE_EVENT_CLONE = 3
PTRACE_EVENT_EXEC = 4
PTRACE_EVENT_VFORK_DONE = 5
PTRACE_EVENT_EXIT = 6
PTRACE_EVENT_SECCOMP = 7
PTRACE_EVENT_STOP = 128  # PTRACE_INTERRUPT, group-stop and initial stops under SEIZE

# --- options (PTRACE_SEIZE data / PTRACE_SETOPTIONS) ---
PTRACE_O_TRACESYSGOOD = 1
PTRACE_O_TRACEFORK = 1 << PTRACE_EVENT_FORK
PTRACE_O_TRACEVFORK = 1 << PTRACE_EVENT_VFORK
PTRACE_O_TRACECLONE = 1 << PTRACE_EVENT_CLONE
PTRACE_O_TRACEEXEC = 1 << PTRACE_EVENT_EXEC
PTRACE_O_TRACEVFORKDONE = 1 << PTRACE_EVENT_VFORK_DONE
PTRACE_O_TRACEEXIT = 1 << PTRACE_EVENT_EXIT
PTRACE_O_TRACESECCOMP = 1 << PTRACE_EVENT_SECCOMP
PTRACE_O_EXITKILL = 1 << 20
PTRACE_O_SUSPEND_SECCOMP = 1 << 21

# --- regset note types (include/uapi/linux/elf.h) ---
NT_PRSTATUS = 1
NT_PRFPREG = 2
NT_X86_XSTATE = 0x202
#: Upper bound for an XSAVE area; the kernel reports the real size (2,432 with AVX-512).
XSTATE_MAX = 1 << 16

#: PTRACE_PEEKSIGINFO flag: read the process-wide (shared) queue instead of the thread's.
PTRACE_PEEKSIGINFO_SHARED = 1

#: sizeof(siginfo_t) on every Linux architecture.
SIGINFO_SIZE = 128
#: Wait for all children, clone or not (wait(2)); needed to wait for non-leader threads.
__WALL = 0x40000000

_SIGSET_SIZE = 8  # the kernel's sigset_t on x86_64: 64 bits

_ptrace = libc["ptrace"]  # private function object: argtypes on ``libc.ptrace`` would be shared
_ptrace.restype = ctypes.c_long
_ptrace.argtypes = [ctypes.c_long, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]

_REQUEST_NAMES = {
    value: name for name, value in globals().items()
    if name.startswith("PTRACE_") and not name.startswith(("PTRACE_O_", "PTRACE_EVENT_")) and isinstance(value, int)
}


def _call(request: int, tid: int, addr: int | None = 0, data: int | None = 0) -> int:
    """One ptrace request; -1 raises with the request named (PEEK* must not come here)."""
    ctypes.set_errno(0)
    res = _ptrace(request, tid, addr, data)
    if res == -1:
        raise_errno(f"ptrace({_REQUEST_NAMES.get(request, hex(request))}, {tid})")
    return res


# --- resuming and stopping ---

def seize(tid: int, options: int = 0) -> None:
    """Attach to ``tid`` without stopping it (PTRACE_SEIZE); ``options`` are PTRACE_O_*."""
    _call(PTRACE_SEIZE, tid, 0, options)


def setoptions(tid: int, options: int) -> None:
    _call(PTRACE_SETOPTIONS, tid, 0, options)


def interrupt(tid: int) -> None:
    """Ask a seized thread to stop; it reports a PTRACE_EVENT_STOP (or another stop first)."""
    _call(PTRACE_INTERRUPT, tid)


def cont(tid: int, sig: int = 0) -> None:
    """Resume; ``sig`` is delivered only from a signal-delivery-stop."""
    _call(PTRACE_CONT, tid, 0, sig)


def detach(tid: int, sig: int = 0) -> None:
    """Detach and resume; also clears the trap flag left by single steps."""
    _call(PTRACE_DETACH, tid, 0, sig)


def singlestep(tid: int, sig: int = 0) -> None:
    _call(PTRACE_SINGLESTEP, tid, 0, sig)


def syscall_step(tid: int, sig: int = 0) -> None:
    """Resume until the next syscall-entry or syscall-exit stop (PTRACE_SYSCALL)."""
    _call(PTRACE_SYSCALL, tid, 0, sig)


# --- registers ---

def getregs(tid: int) -> user_regs_struct:
    regs = user_regs_struct()
    _call(PTRACE_GETREGS, tid, 0, ctypes.addressof(regs))
    return regs


def setregs(tid: int, regs: user_regs_struct) -> None:
    _call(PTRACE_SETREGS, tid, 0, ctypes.addressof(regs))


def getregset(tid: int, nt: int, maxlen: int) -> bytes:
    """PTRACE_GETREGSET of note type ``nt`` into a ``maxlen`` buffer.

    Returns exactly the ``iov_len`` the kernel wrote back (the regset's real size).
    """
    buf = ctypes.create_string_buffer(maxlen)
    iov = iovec(ctypes.addressof(buf), maxlen)
    _call(PTRACE_GETREGSET, tid, nt, ctypes.addressof(iov))
    return buf.raw[: iov.iov_len]


def setregset(tid: int, nt: int, data: bytes) -> None:
    """PTRACE_SETREGSET; for NT_X86_XSTATE give the full size (a short buffer gives EFAULT here)."""
    buf = ctypes.create_string_buffer(bytes(data), len(data))
    iov = iovec(ctypes.addressof(buf), len(data))
    _call(PTRACE_SETREGSET, tid, nt, ctypes.addressof(iov))


def xstate_size(tid: int) -> int:
    """Size of this CPU's XSAVE area as the kernel reports it for ``tid``."""
    return len(getregset(tid, NT_X86_XSTATE, XSTATE_MAX))


def get_xstate(tid: int) -> bytes:
    """The thread's XSAVE area (x87/SSE/AVX/AVX-512 state, XCR0 at offset 464)."""
    return getregset(tid, NT_X86_XSTATE, XSTATE_MAX)


def set_xstate(tid: int, data: bytes) -> None:
    setregset(tid, NT_X86_XSTATE, data)


# --- signals ---

def getsigmask(tid: int) -> int:
    """The thread's blocked-signal mask; bit ``n-1`` is signal ``n``."""
    mask = ctypes.c_uint64()
    _call(PTRACE_GETSIGMASK, tid, _SIGSET_SIZE, ctypes.addressof(mask))
    return mask.value


def setsigmask(tid: int, mask: int) -> None:
    """Set the blocked mask (the kernel silently keeps SIGKILL and SIGSTOP unblocked)."""
    value = ctypes.c_uint64(mask & 0xFFFFFFFFFFFFFFFF)
    _call(PTRACE_SETSIGMASK, tid, _SIGSET_SIZE, ctypes.addressof(value))


def getsiginfo(tid: int) -> bytes:
    """The raw ``siginfo_t`` (128 bytes) of the signal that caused the current stop."""
    buf = ctypes.create_string_buffer(SIGINFO_SIZE)
    _call(PTRACE_GETSIGINFO, tid, 0, ctypes.addressof(buf))
    return buf.raw


def setsiginfo(tid: int, info: bytes) -> None:
    buf = ctypes.create_string_buffer(bytes(info), SIGINFO_SIZE)
    _call(PTRACE_SETSIGINFO, tid, 0, ctypes.addressof(buf))


class _ptrace_peeksiginfo_args(ctypes.Structure):
    _fields_ = [("off", ctypes.c_uint64), ("flags", ctypes.c_uint32), ("nr", ctypes.c_int32)]


def peeksiginfo(tid: int, *, shared: bool = False, batch: int = 32) -> list[bytes]:
    """Every queued ``siginfo_t`` of the thread (or, ``shared``, of its process), oldest first.

    Non-destructive: the signals stay queued.  Signals pending without a queue
    entry (the queue was full) are not listed: compare with SigPnd/ShdPnd.
    """
    out: list[bytes] = []
    buf = ctypes.create_string_buffer(SIGINFO_SIZE * batch)
    while True:
        args = _ptrace_peeksiginfo_args(len(out), PTRACE_PEEKSIGINFO_SHARED if shared else 0, batch)
        n = _call(PTRACE_PEEKSIGINFO, tid, ctypes.addressof(args), ctypes.addressof(buf))
        raw = buf.raw
        out.extend(raw[i * SIGINFO_SIZE:(i + 1) * SIGINFO_SIZE] for i in range(n))
        if n < batch:
            return out


def geteventmsg(tid: int) -> int:
    """The event message of the last ptrace-event-stop (new tid for CLONE, exit code for EXIT)."""
    msg = ctypes.c_ulong()
    _call(PTRACE_GETEVENTMSG, tid, 0, ctypes.addressof(msg))
    return msg.value


# --- rseq ---

class _ptrace_rseq_configuration(ctypes.Structure):
    _fields_ = [
        ("rseq_abi_pointer", ctypes.c_uint64),
        ("rseq_abi_size", ctypes.c_uint32),
        ("signature", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("pad", ctypes.c_uint32),
    ]


@dataclass(frozen=True)
class RseqConfiguration:
    """Where a thread registered its ``struct rseq`` (0/0 when it did not)."""

    rseq_abi_pointer: int
    rseq_abi_size: int
    signature: int
    flags: int


def get_rseq_configuration(tid: int) -> RseqConfiguration:
    conf = _ptrace_rseq_configuration()
    _call(PTRACE_GET_RSEQ_CONFIGURATION, tid, ctypes.sizeof(conf), ctypes.addressof(conf))
    return RseqConfiguration(conf.rseq_abi_pointer, conf.rseq_abi_size, conf.signature, conf.flags)


# --- the syscall a stop is in ---

#: ``op`` of struct ptrace_syscall_info (include/uapi/linux/ptrace.h).
PTRACE_SYSCALL_INFO_NONE = 0
PTRACE_SYSCALL_INFO_ENTRY = 1
PTRACE_SYSCALL_INFO_EXIT = 2
PTRACE_SYSCALL_INFO_SECCOMP = 3


class _ptrace_syscall_info(ctypes.Structure):
    """struct ptrace_syscall_info with its ``entry`` member (``seccomp`` begins the same way)."""

    _fields_ = [
        ("op", ctypes.c_uint8),
        ("pad", ctypes.c_uint8 * 3),
        ("arch", ctypes.c_uint32),
        ("instruction_pointer", ctypes.c_uint64),
        ("stack_pointer", ctypes.c_uint64),
        ("nr", ctypes.c_uint64),
        ("args", ctypes.c_uint64 * 6),
        ("ret_data", ctypes.c_uint32),
        ("reserved", ctypes.c_uint32),
    ]


@dataclass(frozen=True)
class SyscallEntry:
    """The kernel's account of the syscall a thread is in at a syscall-entry stop (``op`` ENTRY), else ``op``."""

    op: int
    instruction_pointer: int  # the address after the ``syscall`` instruction
    nr: int
    args: tuple[int, ...]


def get_syscall_entry(tid: int) -> SyscallEntry:
    """PTRACE_GET_SYSCALL_INFO of a thread in a ptrace stop; ``nr``/``args`` mean something only for op ENTRY."""
    info = _ptrace_syscall_info()
    _call(PTRACE_GET_SYSCALL_INFO, tid, ctypes.sizeof(info), ctypes.addressof(info))
    return SyscallEntry(info.op, info.instruction_pointer, info.nr, tuple(info.args))


def get_syscall_user_dispatch_mode(tid: int) -> int:
    """The thread's PR_SET_SYSCALL_USER_DISPATCH mode (0: off), from ``struct ptrace_sud_config``."""
    conf = (ctypes.c_uint64 * 4)()  # mode, selector, offset, len
    _call(PTRACE_GET_SYSCALL_USER_DISPATCH_CONFIG, tid, ctypes.sizeof(conf), ctypes.addressof(conf))
    return conf[0]


# --- seccomp ---

#: Size of one classic BPF instruction (struct sock_filter: u16 code, u8 jt, u8 jf, u32 k).
_SOCK_FILTER_SIZE = 8


def seccomp_get_filter(tid: int, index: int) -> bytes:
    """The program of the ``index``-th filter of the thread's chain (0: the oldest), as its
    ``struct sock_filter`` array; ENOENT past the oldest, EMEDIUMTYPE in strict mode or without a filter."""
    n = _call(PTRACE_SECCOMP_GET_FILTER, tid, index, None)
    buf = ctypes.create_string_buffer(n * _SOCK_FILTER_SIZE)
    got = _call(PTRACE_SECCOMP_GET_FILTER, tid, index, ctypes.addressof(buf))
    return buf.raw[: got * _SOCK_FILTER_SIZE]


class _seccomp_metadata(ctypes.Structure):
    _fields_ = [("filter_off", ctypes.c_uint64), ("flags", ctypes.c_uint64)]


def seccomp_get_metadata(tid: int, index: int) -> int:
    """The flags the ``index``-th filter was installed with that the kernel keeps (SECCOMP_FILTER_FLAG_LOG)."""
    md = _seccomp_metadata(index, 0)
    _call(PTRACE_SECCOMP_GET_METADATA, tid, ctypes.sizeof(md), ctypes.addressof(md))
    return md.flags


# --- memory words ---

def peekdata(tid: int, addr: int) -> int:
    """Read one 8-byte word (unsigned).  errno is cleared first: -1 is valid data."""
    ctypes.set_errno(0)
    # glibc's wrapper returns the word itself and sets errno only on failure.
    res = _ptrace(PTRACE_PEEKDATA, tid, addr, None)
    if res == -1:
        err = ctypes.get_errno()
        if err:
            raise_errno(f"ptrace(PTRACE_PEEKDATA, {tid}, {addr:#x})", err)
    return res & 0xFFFFFFFFFFFFFFFF


def pokedata(tid: int, addr: int, word: int) -> None:
    _call(PTRACE_POKEDATA, tid, addr, word & 0xFFFFFFFFFFFFFFFF)


# --- waiting ---

class StopKind(enum.Enum):
    """What a wait status reports, in ptrace(2)'s vocabulary."""

    EXITED = "exited"
    KILLED = "killed"                    # terminated by a signal
    SIGNAL_DELIVERY = "signal-delivery"  # a signal is about to be delivered (incl. SIGTRAP of a single step)
    GROUP_STOP = "group-stop"            # job-control stop seen under PTRACE_SEIZE
    EVENT_STOP = "event-stop"            # PTRACE_EVENT_STOP with SIGTRAP: our PTRACE_INTERRUPT, or a new thread's first stop
    SYSCALL = "syscall"                  # syscall-entry/exit stop (needs PTRACE_O_TRACESYSGOOD)
    PTRACE_EVENT = "ptrace-event"        # fork/clone/exec/exit... events
    CONTINUED = "continued"


_GROUP_STOP_SIGNALS = frozenset({signal.SIGSTOP, signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU})


@dataclass(frozen=True)
class WaitStatus:
    """A decoded wait status of one thread."""

    pid: int
    status: int

    @property
    def exited(self) -> bool:
        return os.WIFEXITED(self.status)

    @property
    def signaled(self) -> bool:
        return os.WIFSIGNALED(self.status)

    @property
    def stopped(self) -> bool:
        return os.WIFSTOPPED(self.status)

    @property
    def exit_code(self) -> int | None:
        return os.WEXITSTATUS(self.status) if self.exited else None

    @property
    def termsig(self) -> int | None:
        return os.WTERMSIG(self.status) if self.signaled else None

    @property
    def stopsig(self) -> int | None:
        """The stop signal, with the 0x80 syscall-stop bit removed."""
        return (os.WSTOPSIG(self.status) & 0x7F) if self.stopped else None

    @property
    def event(self) -> int:
        """``status >> 16``: a PTRACE_EVENT_* value, 0 outside ptrace-event-stops."""
        return (self.status >> 16) & 0xFF if self.stopped else 0

    @property
    def kind(self) -> StopKind:
        if self.exited:
            return StopKind.EXITED
        if self.signaled:
            return StopKind.KILLED
        if not self.stopped:
            return StopKind.CONTINUED
        raw = os.WSTOPSIG(self.status)
        if self.event == PTRACE_EVENT_STOP:
            # Under SEIZE a group-stop is an event stop carrying the stop signal;
            # PTRACE_INTERRUPT and a new thread's first stop carry SIGTRAP.
            return StopKind.GROUP_STOP if raw in _GROUP_STOP_SIGNALS else StopKind.EVENT_STOP
        if self.event:
            return StopKind.PTRACE_EVENT
        if raw == (signal.SIGTRAP | 0x80):
            return StopKind.SYSCALL
        return StopKind.SIGNAL_DELIVERY

    @property
    def gone(self) -> bool:
        """The thread no longer exists (exited or killed)."""
        return self.exited or self.signaled

    def __str__(self) -> str:
        k = self.kind
        if k is StopKind.EXITED:
            return f"{self.pid} exited with {self.exit_code}"
        if k is StopKind.KILLED:
            return f"{self.pid} killed by {signal.Signals(self.termsig).name}"
        sig = self.stopsig
        name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else str(sig)
        return f"{self.pid} {k.value} stop ({name}, event {self.event})"


def waitpid(pid: int, options: int = 0) -> WaitStatus | None:
    """``waitpid(pid, options | __WALL)``; None when WNOHANG found nothing.

    EINTR is retried (PEP 475); other errors raise ``OSError`` naming the call.
    """
    try:
        got, status = os.waitpid(pid, options | __WALL)
    except OSError as exc:
        err = exc.errno or _errno.EINVAL
        raise OSError(err, f"waitpid({pid}): {os.strerror(err)}") from None
    if got == 0:
        return None
    return WaitStatus(got, status)
