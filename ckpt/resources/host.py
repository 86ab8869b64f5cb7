"""The kernel an image was taken on: uname, and the areas it maps into every process ([vvar], [vdso] …).

The vDSO is kernel code the process calls into (``clock_gettime``), and the
vvar pages it reads hold the kernel's data in a layout of that kernel's
version: the image records the areas of the kernel it was taken on — their
names and sizes, the vDSO's GNU build-id and a SHA-256 of its bytes — taken
from ckpt's own process (the kernel gives every 64-bit process the same
ones), with ``uname -r``, ``-v`` and ``-m``.  ``ckpt show`` prints them.

A restore compares each process's recorded areas with this kernel's before
it creates anything (:func:`check_areas`, what :func:`ckpt.resources.memory.move_vdso`
would refuse later) and, where they differ, refuses naming both kernels.
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
from .fileid import build_id_of_bytes

__all__ = ["AREA_NAMES", "Kernel", "here", "recorded", "check_areas"]

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
    areas, build, digest = [], b"", b""
    for v in read_maps(os.getpid()):
        if v.path in AREA_NAMES:
            areas.append((v.path, v.end - v.start))
            if v.path == "[vdso]":  # our own mapping, readable: its bytes straight from memory
                data = ctypes.string_at(v.start, v.end - v.start)
                build, digest = build_id_of_bytes(data), hashlib.sha256(data).digest()
    return Kernel(u.release, u.version, u.machine, tuple(areas), build, digest)


def recorded(inv: inventory_pb2.Inventory) -> Kernel:
    """The kernel an image's inventory names (only its release in an image of an older ckpt)."""
    a = inv.kernel_areas
    return Kernel(inv.kernel_release, inv.kernel_version, inv.arch, tuple((x.name, x.size) for x in a.areas),
                  a.vdso_build_id, a.vdso_sha256)


def _problem(vmas: Sequence[mm_pb2.Vma], mm: mm_pb2.MmEntry, mine: Kernel) -> str:
    """What in a process's recorded kernel areas this kernel does not give ("" if nothing)."""
    sizes = dict(mine.areas)
    for v in vmas:
        name = _KINDS.get(v.kind)
        if name is None:
            continue
        if name not in sizes:
            return f"the image has a {name} area, this kernel gives none"
        if sizes[name] != v.end - v.start:
            return f"this kernel's {name} is {sizes[name]} bytes, the image's {v.end - v.start}"
    has_vdso = any(v.kind == mm_pb2.Vma.VDSO and v.start for v in vmas)
    if has_vdso and mm.vdso_sha256 and mine.vdso_sha256 and mm.vdso_sha256 != mine.vdso_sha256:
        return "this kernel's vDSO code differs from the image's"
    return ""


def check_areas(inv: inventory_pb2.Inventory, layouts: Iterable[tuple[mm_pb2.MmEntry, Sequence[mm_pb2.Vma]]],
                mine: Kernel | None = None) -> None:
    """Refuse (Unsupported, naming both kernels) an image whose processes had vDSO/vvar areas this kernel
    does not give in the same size and content: the process's code calls into the vDSO it had."""
    mine = here() if mine is None else mine
    for mm, vmas in layouts:
        why = _problem(vmas, mm, mine)
        if why:
            theirs = recorded(inv)
            raise Unsupported(
                f"the image was taken on {theirs}{f' ({theirs.layout()})' if theirs.layout() else ''}, "
                f"this is {mine} ({mine.layout()}): {why}",
                hint="restore it on a machine running the kernel the image was taken on")
