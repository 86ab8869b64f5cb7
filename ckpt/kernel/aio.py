"""Native AIO (io_setup, include/uapi/linux/aio_abi.h, fs/aio.c): the ring header, iocb and io_event layouts.

The aio_context_t io_setup returns is the address of the context's ring, a
shared mapping ``/[aio] (deleted)`` whose first bytes are ``struct aio_ring``;
the kernel finds the context from it (``lookup_ioctx`` reads ``ring->id``
and checks the address against ``ctx->user_id``).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from .arch_x86_64 import PAGE_SIZE

__all__ = ["AIO_RING_MAGIC", "AIO_RING", "IO_EVENT_SIZE", "IOCB", "IOCB_CMD_PREAD", "AioRingHeader", "ring_nr",
           "nr_events_for", "possible_cpus"]

#: ring->magic as aio_setup_ring writes it.
AIO_RING_MAGIC = 0xA10A10A1
#: struct aio_ring {unsigned id, nr, head, tail, magic, compat_features, incompat_features, header_length;}
AIO_RING = struct.Struct("<8I")
#: sizeof(struct io_event) {u64 data, obj; s64 res, res2;}
IO_EVENT_SIZE = 32
#: struct iocb {u64 aio_data; u32 aio_key, aio_rw_flags; u16 aio_lio_opcode; s16 aio_reqprio; u32 aio_fildes;
#: u64 aio_buf, aio_nbytes; s64 aio_offset; u64 aio_reserved2; u32 aio_flags, aio_resfd;} (little-endian)
IOCB = struct.Struct("<QIIHhIQQqQII")
IOCB_CMD_PREAD = 0


@dataclass(frozen=True)
class AioRingHeader:
    """``struct aio_ring`` as a ring's first 32 bytes hold it."""

    id: int
    nr: int
    head: int
    tail: int
    magic: int
    compat_features: int
    incompat_features: int
    header_length: int

    @classmethod
    def parse(cls, raw: bytes) -> "AioRingHeader":
        return cls(*AIO_RING.unpack_from(raw))


def ring_nr(length: int) -> int:
    """ring->nr of a ring of ``length`` bytes: aio_setup_ring fills whole pages with io_event slots."""
    return (length - AIO_RING.size) // IO_EVENT_SIZE


def nr_events_for(length: int, possible_cpus: int) -> int | None:
    """The smallest io_setup nr_events that makes a ring of ``length`` bytes here (None: none does).

    ioctx_alloc takes max(nr_events, 4 × possible CPUs), doubles it, and
    aio_setup_ring adds 2 slots and rounds up to whole pages: a ring of P
    pages comes from 2·m + 2 slots with m in [64(P−1) − 1, 64P − 2] (4 KiB
    pages).  On a machine with more possible CPUs than the dump's, even
    nr_events 1 may give a bigger ring: then None.
    """
    per_page = PAGE_SIZE // IO_EVENT_SIZE
    pages = length // PAGE_SIZE
    lo, hi = (per_page // 2) * (pages - 1) - 1, (per_page // 2) * pages - 2
    floor = 4 * possible_cpus
    if floor > hi:
        return None
    return 1 if floor >= lo else lo


def possible_cpus(text: str) -> int:
    """num_possible_cpus() from ``/sys/devices/system/cpu/possible`` (``0-3,5``)."""
    n = 0
    for part in text.strip().split(","):
        a, _, b = part.partition("-")
        n += int(b or a) - int(a) + 1
    return n
