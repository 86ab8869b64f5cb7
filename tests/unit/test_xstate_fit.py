"""XSAVE areas between CPUs that enable different components (ckpt.resources.threads.fit_xstate).

The layouts are the two this project meets: this host (AMD, XCR0 0x7: x87, SSE, AVX; 832 bytes) and
a QEMU TCG guest (XCR0 0x21f: also MPX and PKRU; 2696 bytes, PKRU last at 2688)."""

from __future__ import annotations

import struct

import pytest

from ckpt.errors import Unsupported
from ckpt.resources.threads import fit_xstate

PKRU_DEFAULT = 0x55555554


def area(xcr0: int, size: int, bv: int, fill: int, pkru: int | None = None) -> bytes:
    """An XSAVE area: legacy region and AVX halves filled with ``fill``, XCR0 in Linux's sw bytes, XSTATE_BV."""
    out = bytearray(size)
    out[:464] = bytes([fill]) * 464
    struct.pack_into("<Q", out, 464, xcr0)
    struct.pack_into("<Q", out, 512, bv)
    out[576:832] = bytes([fill ^ 0xFF]) * 256
    if pkru is not None:
        struct.pack_into("<I", out, size - 8, pkru)
    return bytes(out)


HOST = dict(xcr0=0x7, size=832)
GUEST = dict(xcr0=0x21F, size=2696)


def test_host_to_guest_carries_x87_sse_avx_and_keeps_the_guests_pkru() -> None:
    image = area(**HOST, bv=0x7, fill=0x11)
    here = area(**GUEST, bv=0x203, fill=0x22, pkru=PKRU_DEFAULT)
    out = fit_xstate(image, here)
    assert len(out) == len(here)
    assert out[:464] == image[:464] and out[576:832] == image[576:832]
    assert struct.unpack_from("<Q", out, 464)[0] == 0x21F  # this CPU's XCR0 stays in the sw bytes
    assert struct.unpack_from("<Q", out, 512)[0] == 0x207  # x87/SSE/AVX as the image's, PKRU as here
    assert struct.unpack_from("<I", out, len(out) - 8)[0] == PKRU_DEFAULT


def test_guest_to_host_drops_components_in_their_initial_state() -> None:
    here = area(**HOST, bv=0x3, fill=0x22)
    image = area(**GUEST, bv=0x21F, fill=0x33, pkru=PKRU_DEFAULT)  # MPX marked, but all zero: initial
    out = fit_xstate(image, here)
    assert len(out) == 832 and out[:464] == image[:464] and out[576:832] == image[576:832]
    assert struct.unpack_from("<Q", out, 512)[0] == 0x7


def test_state_this_cpu_cannot_hold_is_refused() -> None:
    here = area(**HOST, bv=0x3, fill=0x22)
    used = bytearray(area(**GUEST, bv=0x21F, fill=0x33, pkru=PKRU_DEFAULT))
    used[1024] = 1  # MPX bound config in use
    with pytest.raises(Unsupported, match="MPX"):
        fit_xstate(bytes(used), here)
    with pytest.raises(Unsupported, match="protection keys"):
        fit_xstate(area(**GUEST, bv=0x207, fill=0x33, pkru=0x55555550), here)


def test_the_same_layout_is_left_alone() -> None:
    a = area(**HOST, bv=0x7, fill=0x44)
    assert fit_xstate(a, area(**HOST, bv=0x3, fill=0)) is a
