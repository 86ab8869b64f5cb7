"""Injected syscalls that a dying controller cannot turn into harm.

The danger (DESIGN §8, measured): while a syscall is injected, the thread's
registers are the call's — ``rip`` at a ``syscall`` instruction somewhere,
the arguments in its registers.  If ckpt dies then (SIGKILL, OOM), the kernel
detaches the thread and it runs on from there with those registers, and dies
or corrupts itself.  So every injected call into a target is set up to end in
the thread's own context *by itself*:

* ``rip`` is a ``syscall; ret`` sequence found in the target's code (libc and
  ld.so have several), ``rsp`` points at a signal frame written for this thread
  whose first word (``pretcode``) is the address of a ``mov $15, %eax|%rax;
  syscall`` sequence (glibc's ``__restore_rt``);
* so after the call, with or without a tracer, the thread executes ``ret`` into
  ``rt_sigreturn``, which reloads every register, the FPU/vector state and the
  blocked mask from the frame (:mod:`ckpt.kernel.sigframe`);
* with a tracer, the thread is held at the call's syscall-exit stop before the
  ``ret`` (PTRACE_SYSCALL: no single step, so no trap flag is ever armed that
  would kill it with SIGTRAP once the tracer is gone, DESIGN §4);
* signals are blocked while calls are injected (the frame holds the thread's
  own mask), so none is dequeued onto an injected frame.

Between two calls the thread stays at the exit stop of the last one, which is
itself a safe place: resumed without a tracer it runs ``ret`` → rt_sigreturn.
Releasing the thread puts its own mask and registers back at that stop; the
detach wakes it through the kernel's signal path, which restarts an
interrupted syscall by its own rules.

Where the frames live: the first calls of a process make an area for them
(and for the calls' output buffers) with a frame written below a thread's
stack pointer, beyond the red zone — the place the kernel itself writes a
signal frame.  The last call unmaps it the same way.  The area is a memfd
named :data:`AREA_NAME`; one left by a killed run (or its descriptor) is
found and removed by the next run (:func:`leftover_areas`, :func:`leftover_fds`).

If ckpt dies during a call, the thread resumes the call it was in as if a
signal had interrupted it and been handled: a syscall interrupted at the seize
(``-ERESTART*``) is issued again with its original arguments, so a relative
sleep or timeout starts over from its full length (the kernel's own restart
block would have resumed it with the time left; rt_sigreturn discards it).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

from ..kernel.arch_x86_64 import PAGE_SIZE, SYSCALL_INSN, TASK_SIZE_MAX, user_regs_struct
from ..kernel.vm import ProcMem
from ..procfs.fdinfo import list_fds
from ..procfs.maps import Vma

__all__ = [
    "AREA_NAME", "AREA_PATH", "RED_ZONE", "Chain", "find_chain", "resume_context", "stack_slot", "AreaLayout",
    "leftover_areas", "leftover_fds",
]

#: The memfd name of every area ckpt maps in a target: maps shows ``/memfd:NAME (deleted)``, so an
#: area (or its descriptor) that a killed run left is known for ckpt's by the name the kernel gave
#: it at creation — nothing is written in it first, no instant leaves an unmarked one.  (Anonymous
#: memory, shared or private, cannot be named on kernels without CONFIG_ANON_VMA_NAME; a private
#: one also merges with its neighbour, hiding the target's own data behind the area's address.)
AREA_NAME = "ckpt-injection-area"
AREA_PATH = f"/memfd:{AREA_NAME}"
#: Bytes below ``rsp`` that a leaf function may use without moving it (x86_64 ABI).
RED_ZONE = 128

_SYSCALL_RET = SYSCALL_INSN + b"\xc3"
_SIGRETURN = (b"\x48\xc7\xc0\x0f\x00\x00\x00" + SYSCALL_INSN,  # mov $15, %rax; syscall (glibc, musl, Go)
              b"\xb8\x0f\x00\x00\x00" + SYSCALL_INSN)  # mov $15, %eax; syscall
_RESTARTS = (512, 513, 514, 516)  # -ERESTARTSYS, -ERESTARTNOINTR, -ERESTARTNOHAND, -ERESTART_RESTARTBLOCK
_U64 = (1 << 64) - 1


@dataclass(frozen=True)
class Chain:
    """The two code sequences an injected call runs through: ``syscall; ret``, then rt_sigreturn."""

    syscall_ret: int
    sigreturn: int


#: Offsets found per mapped file: (path, dev, inode, file offset, size) -> (syscall_ret, sigreturn)
#: offsets inside that mapping, either None when absent.  Forks and re-runs map the same libc.
_CHAIN_CACHE: dict[tuple[str, int, int, int, int], tuple[int | None, int | None]] = {}


def _search(mem: ProcMem, vma: Vma) -> tuple[int | None, int | None]:
    chunk = 1 << 20
    ret_at = sig_at = None
    pos = vma.start
    while pos < vma.end and (ret_at is None or sig_at is None):
        data = mem.read(pos, min(chunk + 16, vma.end - pos))  # overlap: a sequence cut between chunks is seen
        if ret_at is None:
            i = data.find(_SYSCALL_RET)
            ret_at = None if i < 0 else pos + i - vma.start
        if sig_at is None:
            for pattern in _SIGRETURN:
                i = data.find(pattern)
                if i >= 0:
                    sig_at = pos + i - vma.start
                    break
        pos += chunk
    return ret_at, sig_at


def find_chain(mem: ProcMem, vmas: Sequence[Vma]) -> Chain | None:
    """The ``syscall; ret`` and rt_sigreturn sequences in the target's code, or None if it maps none.

    Any executable, readable mapping will do (the CPU decodes from wherever
    ``rip`` points); ld.so and libc come first, and what a file holds is
    remembered for the next process mapping the same file (then checked in
    memory, a few bytes).
    """
    code = [v for v in vmas if v.exec and v.read and v.end <= TASK_SIZE_MAX and v.path != "[vsyscall]"]
    code.sort(key=lambda v: not ("/ld-" in v.path or "/libc" in v.path))
    found: dict[str, int] = {}
    for vma in code:
        key = (vma.path, os.makedev(vma.dev_major, vma.dev_minor), vma.inode, vma.offset, vma.size) if vma.inode else None
        got = _CHAIN_CACHE.get(key) if key else None
        if got is not None and not _still(mem, vma, got):
            got = None
        if got is None:
            got = _search(mem, vma)
            if key:
                _CHAIN_CACHE[key] = got
        for name, off in zip(("syscall_ret", "sigreturn"), got):
            if off is not None and name not in found:
                found[name] = vma.start + off
        if len(found) == 2:
            return Chain(**found)
    return None


def _still(mem: ProcMem, vma: Vma, offsets: tuple[int | None, int | None]) -> bool:
    """The remembered sequences are still at their offsets in this mapping."""
    ret_off, sig_off = offsets
    try:
        if ret_off is not None and mem.read(vma.start + ret_off, 3) != _SYSCALL_RET:
            return False
        if sig_off is not None and not any(mem.read(vma.start + sig_off, len(p)) == p for p in _SIGRETURN):
            return False
    except OSError:
        return False
    return True


def rewound(regs: user_regs_struct, codes: Sequence[int]) -> user_regs_struct:
    """``regs`` put back onto the ``syscall`` it was interrupted in, if ``rax`` is -code for one of ``codes``.

    ``rax = orig_rax; rip -= 2; orig_rax = -1``: resumed, the thread issues
    the call again.  Anything else (not in a syscall, a call finished with its
    result) is returned unchanged.  A new frame; ``regs`` is not modified.
    """
    out = regs.copy()
    if regs.orig_rax < 1 << 63 and (-regs.rax & _U64) in codes:
        out.rax = regs.orig_rax
        out.rip = regs.rip - len(SYSCALL_INSN)
        out.orig_rax = _U64
    return out


def resume_context(regs: user_regs_struct) -> user_regs_struct:
    """The registers a frame resumes the thread with, given those it was frozen with.

    rt_sigreturn does no syscall restart (it sets ``orig_rax = -1``), so a
    thread frozen inside an interrupted syscall (``rax = -ERESTART*``) is put
    back onto its ``syscall`` instruction with the call's number: it issues
    the call again, as after a handler with SA_RESTART.
    """
    out = rewound(regs, _RESTARTS)
    out.orig_rax = _U64
    return out


def stack_slot(vmas: Sequence[Vma], rsp: int, size: int) -> int | None:
    """Where a ``size``-byte frame may go below ``rsp`` (64-byte aligned), or None.

    Beyond the red zone, inside the one mapping ``rsp`` is in, which must be a
    stack-like one: private, writable, anonymous or ``[stack]`` (never the
    ``[heap]``, where a thread running a handler on a malloc'd alternate stack
    would have other data right below it).
    """
    for v in vmas:
        if v.start <= rsp < v.end or (rsp == v.end and v.path == "[stack]"):
            if v.shared or not (v.read and v.write) or v.path not in ("", "[stack]"):
                return None
            at = (rsp - RED_ZONE - size) & ~63
            return at if at >= v.start else None
    return None


@dataclass(frozen=True)
class AreaLayout:
    """ckpt's area in one target: output buffers for the calls, then one frame per thread."""

    scratch_offset: int
    scratch_size: int
    frame_offset: int
    frame_size: int
    frames: int

    @classmethod
    def for_threads(cls, threads: int, frame_bytes: int, scratch: int = 2 * PAGE_SIZE) -> "AreaLayout":
        return cls(0, scratch, scratch, -(-frame_bytes // 64) * 64, threads)

    @property
    def size(self) -> int:
        end = self.frame_offset + self.frame_size * self.frames
        return -(-end // PAGE_SIZE) * PAGE_SIZE


def leftover_areas(vmas: Sequence[Vma]) -> list[Vma]:
    """Areas of an earlier (killed) ckpt run still mapped in the process whose ``vmas`` these are."""
    return [v for v in vmas if v.path == AREA_PATH and v.deleted]


def leftover_fds(pid: int) -> list[int]:
    """Descriptors of such areas still open in ``pid`` (a run killed between creating and closing one)."""
    return [fd for fd, link in list_fds(pid) if link == f"{AREA_PATH} (deleted)"]
