"""The kernel an image was taken on: uname, and the areas it maps into every process ([vvar], [vdso] …).

The vDSO is kernel code the process calls into (``clock_gettime``), and the
vvar pages it reads hold the kernel's data in a layout of that kernel's
version: the image records the areas of the kernel it was taken on — their
names and sizes, the vDSO's GNU build-id and a SHA-256 of its bytes — taken
from ckpt's own process (the kernel gives every 64-bit process the same
ones), with ``uname -r``, ``-v`` and ``-m``.  ``ckpt show`` prints them.

A restore compares each process's recorded areas with this kernel's before
it creates anything (:func:`check_areas`).  The same kernel's are moved to
their addresses; another kernel's vDSO is routed to this one's
(:mod:`ckpt.resources.vdso`), and what cannot be routed is refused, naming
both kernels.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ..errors import Unsupported
from ..image.pb import inventory_pb2, mm_pb2
from ..procfs.maps import read_maps
from . import vdso
from .fileid import build_id_of_bytes

__all__ = ["AREA_NAMES", "Kernel", "here", "here_vdso", "recorded", "check_areas", "refusal"]

#: The areas the kernel installs in a process, as /proc/PID/maps names them.
AREA_NAMES = ("[vvar]", "[vvar_vclock]", "[vdso]", "[vsyscall]")
_KINDS = {mm_pb2.Vma.VDSO: "[vdso]", mm_pb2.Vma.VVAR: "[vvar]", mm_pb2.Vma.VVAR_VCLOCK: "[vvar_vclock]"}


@dataclass(frozen=True)
class Kernel:
    """A kernel as an image records it (or as this machine runs it)."""

    release: str                          # uname -r
    version: str = ""                     # uname -v ("" in images of an older ckpt)
    machine: str = ""                     # uname -m
    areas: tuple[tuple[str, int], ...] = ()  # (name, bytes) in address order; () when not recorded
    vdso_build_id: bytes = b""
    vdso_sha256: bytes = b""

    def __str__(self) -> str:
        return " ".join(p for p in ("Linux", self.release, self.version, self.machine) if p)

    def layout(self) -> str:
        """The areas as "[vvar] 16384, [vdso] 8192 bytes" (empty when not recorded)."""
        return ", ".join(f"{name} {size}" for name, size in self.areas) + " bytes" if self.areas else ""

    def to_pb(self) -> inventory_pb2.KernelAreas:
        return inventory_pb2.KernelAreas(areas=[inventory_pb2.KernelArea(name=n, size=s) for n, s in self.areas],
                                         vdso_build_id=self.vdso_build_id, vdso_sha256=self.vdso_sha256)


@functools.cache
def here() -> Kernel:
    """This machine's kernel, its areas read from ckpt's own process (once per run)."""
    u = os.uname()
    areas = tuple((v.path, v.end - v.start) for v in read_maps(os.getpid()) if v.path in AREA_NAMES)
    data = here_vdso()
    build, digest = (build_id_of_bytes(data), hashlib.sha256(data).digest()) if data else (b"", b"")
    return Kernel(u.release, u.version, u.machine, areas, build, digest)


@functools.cache
def here_vdso() -> bytes:
    """This kernel's vDSO: the bytes of ckpt's own ``[vdso]`` (readable, in our memory); b"" if it has none."""
    for v in read_maps(os.getpid()):
        if v.path == "[vdso]":
            return ctypes.string_at(v.start, v.end - v.start)
    return b""


def recorded(inv: inventory_pb2.Inventory) -> Kernel:
    """The kernel an image's inventory names (only its release in an image of an older ckpt)."""
    a = inv.kernel_areas
    return Kernel(inv.kernel_release, inv.kernel_version, inv.arch, tuple((x.name, x.size) for x in a.areas),
                  a.vdso_build_id, a.vdso_sha256)


def _problem(vmas: Sequence[mm_pb2.Vma], mm: mm_pb2.MmEntry, mine: Kernel, code: bytes) -> str:
    """Why a process's recorded kernel areas cannot be given on this kernel ("" if they can: the same
    areas, or a vDSO this kernel's (``code``) can stand in for through :mod:`ckpt.resources.vdso`)."""
    recorded = {v.kind: v.end - v.start for v in vmas if v.kind in _KINDS}
    if not any(v.kind == mm_pb2.Vma.VDSO and v.start for v in vmas):
        return ""  # no vDSO to call into: the areas only go out of the way
    sizes = dict(mine.areas)
    if recorded == {k: sizes[n] for k, n in _KINDS.items() if n in sizes} \
            and not (mm.vdso_sha256 and mine.vdso_sha256 and mm.vdso_sha256 != mine.vdso_sha256):
        return ""
    if not code:
        return "its vDSO differs from this kernel's, which cannot be read here to route it to"
    return vdso.why_unroutable(mm, code)


def refusal(why: str, theirs: Kernel | None = None, mine: Kernel | None = None) -> Unsupported:
    """The error for kernel areas that cannot be restored here: one line naming both kernels (``theirs``:
    the image's, when known)."""
    mine = here() if mine is None else mine
    was = f"the image was taken on {theirs}{f' ({theirs.layout()})' if theirs.layout() else ''}, " if theirs else ""
    return Unsupported(f"{was}this is {mine} ({mine.layout()}): {why}",
                       hint="restore it on a machine running the kernel the image was taken on")


def check_areas(inv: inventory_pb2.Inventory, layouts: Iterable[tuple[mm_pb2.MmEntry, Sequence[mm_pb2.Vma]]],
                mine: Kernel | None = None, code: bytes | None = None) -> None:
    """Refuse (Unsupported, naming both kernels) an image whose processes had vDSO/vvar areas this kernel
    cannot give them: not the same ones, and a vDSO that cannot be routed to this kernel's (``code``;
    ``mine`` and ``code`` default to this machine's)."""
    mine = here() if mine is None else mine
    code = here_vdso() if code is None else code
    for mm, vmas in layouts:
        why = _problem(vmas, mm, mine, code)
        if why:
            raise refusal(why, recorded(inv), mine)
