"""AIO contexts (io_setup): the ring ``/[aio] (deleted)`` and the context behind it, dumped and made again.

The aio_context_t a program holds *is* the address of its context's ring, a
shared mapping the kernel made (fs/aio.c); the program passes it to
io_submit/io_getevents/io_destroy, and libaio (or fio) reads the ring's
``head`` and ``tail`` itself.  So the ring must come back at exactly its old
address, owned by a context of the restored process.

Dump (frozen): each ring's header (``struct aio_ring``) is read from the
process's memory.  Refused, naming the process and the ring: a header that is
not the kernel's (magic, size), a ring whose context belongs to another
process (a child inherits the mapping across fork, never the context:
``io_getevents(ctx, 0, 0, NULL, NULL)`` — which only looks the context up —
gives EINVAL), and events completed but not yet reaped (``head != tail``).
What is recorded: the context's slot (``ring->id``), ``ring->nr`` and
``head`` (= ``tail``).  A request submitted and not yet completed leaves no
trace in the ring, nor anywhere a dumper can read (no /proc file, no system
call lists the requests in flight), so it cannot be seen — unless it completes
before the dump ends: every ring's tail is read again once all memory is read,
still frozen (:func:`check_unchanged`), and a ring that moved refuses the dump.
One still pending then completes into the old context, which the dump ends.

Restore (after every other VMA is mapped, the ring's range left free): a
placeholder holds each ring's old range; ``io_setup`` in the target with the
smallest ``nr_events`` that makes a ring of the same size on this machine
(:func:`ckpt.kernel.aio.nr_events_for`; a machine with more possible CPUs
may make only bigger rings: refused), in slot order, with short-lived
contexts filling the slots that were free at the dump so that ``ring->id``
is the same; ``mremap`` moves each new ring onto its old address (the kernel
follows: ``aio_ring_mremap`` sets ``ctx->user_id``), and the head the ring
had is reached by completing and reaping that many empty reads of /dev/null,
so that the kernel's own tail agrees with the ring's.  The ring's event
slots outside ``head..tail`` (events reaped long ago) are not kept: they
come back zero.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Sequence

from ..control.inject import Injector, Scratch
from ..errors import RestoreError, Unsupported
from ..image.pb import mm_pb2
from ..kernel.aio import (
    AIO_RING, AIO_RING_MAGIC, IO_EVENT_SIZE, IOCB, IOCB_CMD_PREAD, AioRingHeader, nr_events_for, possible_cpus, ring_nr,
)
from ..kernel.arch_x86_64 import NR
from ..kernel.mman import MAP_ANONYMOUS, MAP_FIXED_NOREPLACE, MAP_PRIVATE, MREMAP_FIXED, MREMAP_MAYMOVE, PROT_NONE
from ..kernel.vm import ProcMem

__all__ = ["NAME", "FEATURE", "is_ring", "dump_rings", "check_unchanged", "restore_rings"]

#: How maps names a ring (with " (deleted)" after it).
NAME = "/[aio]"
#: The image feature a ring needs: an older ckpt refuses the image instead of failing on the mapping.
FEATURE = "aio-rings"
_POSSIBLE = "/sys/devices/system/cpu/possible"
#: Empty reads submitted at once to move a new ring's head (iocbs, pointers and events fit the scratch area).
_BATCH = 64


def is_ring(v: mm_pb2.Vma) -> bool:
    return v.kind == mm_pb2.Vma.AIO_RING


def _where(pid: int, v: mm_pb2.Vma) -> str:
    return f"process {pid}: the AIO context at {v.start:#x} (its io_setup ring {v.start:#x}-{v.end:#x})"


def dump_rings(pid: int, inj: Injector, mem: ProcMem, vmas: Sequence[mm_pb2.Vma]) -> None:
    """Record the header of every ring of ``vmas`` (``Vma.aio``); Unsupported for a ring no restore gives back."""
    for v in vmas:
        if not is_ring(v):
            continue
        where = _where(pid, v)
        h = AioRingHeader.parse(mem.read(v.start, AIO_RING.size))
        if h.magic != AIO_RING_MAGIC or h.nr != ring_nr(v.end - v.start) or h.header_length != AIO_RING.size:
            raise Unsupported(f"{where} has a header the kernel did not write (magic {h.magic:#x}, nr {h.nr}, "
                              f"header length {h.header_length})")
        try:
            inj.call(NR.io_getevents, v.start, 0, 0, 0, 0, name="io_getevents(ctx, 0, 0)")
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            raise Unsupported(f"{where} is the ring of another process's context (inherited across fork: the "
                              "mapping is copied, the context is not)",
                              hint="ckpt restores a ring together with its own context only") from None
        if h.head != h.tail:
            waiting = (h.tail - h.head) % h.nr
            raise Unsupported(f"{where} has {waiting} completed event(s) not yet reaped (ring head {h.head}, "
                              f"tail {h.tail})", hint="dump when the program has reaped its events (io_getevents)")
        v.aio.CopyFrom(mm_pb2.AioRing(id=h.id, nr=h.nr, head=h.head))


def check_unchanged(pid: int, mem: ProcMem, vmas: Sequence[mm_pb2.Vma]) -> None:
    """At the end of a dump, still frozen: Unsupported if a ring's tail moved since :func:`dump_rings` read it
    (a request in flight at the freeze completed meanwhile; the image holds the ring without it)."""
    for v in vmas:
        if is_ring(v) and v.HasField("aio"):
            h = AioRingHeader.parse(mem.read(v.start, AIO_RING.size))
            if h.tail != v.aio.head:
                raise Unsupported(f"{_where(pid, v)} had a request in flight, which completed during the dump "
                                  f"(ring tail {h.tail}, {v.aio.head} when it was read)",
                                  hint="dump when the program has no AIO requests in flight")


def _setup(inj: Injector, s: Scratch, nr_events: int) -> int:
    """io_setup(nr_events) in the target: the new context's ring address."""
    s.write(0, bytes(8))  # *ctxp must be 0
    try:
        inj.call(NR.io_setup, nr_events, s.addr, name=f"io_setup({nr_events})")
    except OSError as exc:
        hint = ("the machine's AIO limit is reached (/proc/sys/fs/aio-nr against aio-max-nr)"
                if exc.errno == errno.EAGAIN else None)
        raise RestoreError(f"io_setup({nr_events}) failed: {exc.strerror}", hint=hint) from exc
    return int.from_bytes(s.read(0, 8), "little")


def _header(mem: ProcMem, addr: int) -> AioRingHeader:
    return AioRingHeader.parse(mem.read(addr, AIO_RING.size))


def restore_rings(inj: Injector, s: Scratch, mem: ProcMem, vmas: Sequence[mm_pb2.Vma]) -> None:
    """Every ring of ``vmas`` made again at its address, with its slot, size and head (see the module doc)."""
    rings = sorted((v for v in vmas if is_ring(v)), key=lambda v: v.aio.id)
    if not rings:
        return
    with open(_POSSIBLE) as f:
        cpus = possible_cpus(f.read())
    for v in rings:  # nothing may take the old ranges while the new rings are made
        inj.mmap(v.start, v.end - v.start, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE)
    fillers: list[int] = []
    taken: set[int] = set()
    try:
        for v in rings:
            length = v.end - v.start
            nr_events = nr_events_for(length, cpus)
            if nr_events is None:
                raise RestoreError(f"the AIO ring at {v.start:#x} has {length} bytes, and io_setup makes bigger "
                                   f"rings on this machine ({cpus} possible CPUs)")
            while min(set(range(len(taken) + 1)) - taken) < v.aio.id:  # a slot free at the dump: hold it
                fillers.append(addr := _setup(inj, s, 1))
                taken.add(_header(mem, addr).id)
            addr = _setup(inj, s, nr_events)
            h = _header(mem, addr)
            taken.add(h.id)
            if (h.id, h.nr) != (v.aio.id, v.aio.nr):
                raise RestoreError(f"the AIO ring at {v.start:#x}: io_setup made slot {h.id} with {h.nr} events, "
                                   f"the dump had slot {v.aio.id} with {v.aio.nr}")
            inj.call(NR.mremap, addr, length, length, MREMAP_MAYMOVE | MREMAP_FIXED, v.start,
                     name=f"mremap(aio ring, {v.start:#x})")
            if v.aio.head:
                _advance(inj, s, v.start, v.aio.head)
            h = _header(mem, v.start)
            if (h.head, h.tail) != (v.aio.head, v.aio.head):
                raise RestoreError(f"the AIO ring at {v.start:#x} has head {h.head}, tail {h.tail} after its "
                                   f"restore, not {v.aio.head}")
    finally:
        for addr in fillers:
            inj.call(NR.io_destroy, addr, name="io_destroy(a slot filler)")


def _advance(inj: Injector, s: Scratch, ctx: int, head: int) -> None:
    """Complete and reap ``head`` empty reads on the new context: its ring's head and tail (and the kernel's
    own tail) become ``head``, as the dump saw them."""
    s.write(0, b"/dev/null\0")
    fd = inj.call(NR.openat, -100, s.addr, os.O_RDONLY | os.O_CLOEXEC, 0, name="openat('/dev/null')")
    batch = min(_BATCH, s.size // (IOCB.size + 8 + IO_EVENT_SIZE))
    ptrs, events = batch * IOCB.size, batch * (IOCB.size + 8)
    try:
        done = 0
        while done < head:
            n = min(batch, head - done)
            s.write(0, b"".join(IOCB.pack(0, 0, 0, IOCB_CMD_PREAD, 0, fd, 0, 0, 0, 0, 0, 0) for _ in range(n)))
            s.write(ptrs, b"".join((s.addr + i * IOCB.size).to_bytes(8, "little") for i in range(n)))
            got = inj.call(NR.io_submit, ctx, n, s.addr + ptrs, name=f"io_submit({n} empty reads)")
            if got != n:
                raise RestoreError(f"the AIO ring at {ctx:#x}: {got} of {n} empty reads submitted")
            reaped = inj.call(NR.io_getevents, ctx, n, n, s.addr + events, 0, name=f"io_getevents({n})")
            if reaped != n:
                raise RestoreError(f"the AIO ring at {ctx:#x}: {reaped} of {n} empty reads reaped")
            done += n
    finally:
        inj.close(fd)
