"""The vDSO across kernels: a process dumped on one kernel keeps calling its vDSO on another.

The vDSO is a small ELF library the kernel maps into every process
(``[vdso]``, with the data pages it reads, ``[vvar]`` and on 6.15+
``[vvar_vclock]``).  Its code and the layout of those pages belong to one
kernel build: 6.18 maps ``[vvar]`` 16 KiB + ``[vvar_vclock]`` 8 KiB + ``[vdso]``
8 KiB, Debian 13's 6.12 ``[vvar]`` 16 KiB + ``[vdso]`` 8 KiB with its functions at
other offsets.  A process does not look the vDSO up again: glibc resolves
``__vdso_clock_gettime`` & co. once at start-up and keeps the addresses
(``GLRO(dl_vdso_clock_gettime)``…), so after a restore on another kernel the old
addresses must still lead somewhere that works.

What a restore does when this kernel's areas differ from the image's (same
kernel: nothing of this, the areas are moved to their recorded addresses):

* this kernel's own vDSO and vvar pages go, in their own relative layout, to a
  free place that overlaps none of the image's mappings (:func:`place`);
* at the image's ``[vdso]`` address goes a *proxy*: a private copy of the old
  vDSO's bytes (the dump keeps them, ``MmEntry.vdso``) in which every exported
  function (the dynamic symbol table, parsed here: :func:`symbols`) starts with
  a jump to the function of the same name in the new vDSO (:func:`plan`), so
  glibc's cached pointers, ``dl_iterate_phdr`` and unwinders reading the old
  ELF headers all keep working;
* ``AT_SYSINFO_EHDR`` of the auxv the restore hands to ``PR_SET_MM_MAP`` names
  the new vDSO (:func:`auxv_with_vdso`).

A function the new vDSO lacks is routed to the system call it stands for (what
the vDSO itself does when it cannot answer: every x86_64 vDSO function but one
has one, with the same arguments in the same registers), e.g. ``getrandom``
restored on 6.1.  ``__vdso_sgx_enter_enclave`` has none: it enters an SGX enclave,
and no restored process has one (enclave pages live in the EPC, which no dump
reads), so it answers ``-EINVAL`` as it does for a call without one.  Any other
symbol that cannot be routed refuses the restore, naming it (:class:`Unroutable`).

The same approach as CRIU's vDSO proxy (``criu/pie/parasite-vdso.c``), written
from scratch.  Limit: a thread caught *inside* the old vDSO's code at the dump
carries on in the proxy's copy, which reads the old vvar pages; there are none
on the new kernel.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from ..control.inject import Injector
from ..features import SAME_VDSO, disabled
from ..image.pb import mm_pb2
from ..kernel.arch_x86_64 import NR, PAGE_SIZE
from ..kernel.mman import MAP_ANONYMOUS, MAP_FIXED_NOREPLACE, MAP_PRIVATE
from ..kernel.vm import ProcMem
from ..procfs.auxv import AT

__all__ = ["Symbol", "VdsoFormatError", "Unroutable", "Route", "symbols", "plan", "check_routable", "proxy_bytes",
           "place", "auxv_with_vdso", "SYSCALL_FALLBACKS", "same_layout", "why_unroutable", "Arrangement", "arrange",
           "map_proxy", "syscall_insn_in"]

_ELFMAG = b"\x7fELF"
_ELFCLASS64, _ELFDATA2LSB, _EM_X86_64 = 2, 1, 62
_PT_LOAD, _PT_DYNAMIC = 1, 2
_DT_NULL, _DT_HASH, _DT_STRTAB, _DT_SYMTAB, _DT_STRSZ, _DT_SYMENT = 0, 4, 5, 6, 10, 11
_DT_GNU_HASH = 0x6FFFFEF5
_STT_FUNC, _SHN_UNDEF = 2, 0
_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
_PHDR = struct.Struct("<IIQQQQQQ")
_DYN = struct.Struct("<qQ")
_SYM = struct.Struct("<IBBHQQ")
#: Bounds for a hostile image: a vDSO has ~15 symbols and a handful of headers.
_MAX_SYMBOLS = 4096
_MAX_HEADERS = 64

#: The system call each vDSO function stands for (arch/x86/entry/vdso/: each falls back to it
#: with the caller's arguments, which are in the syscall's registers: rdi, rsi, rdx).
SYSCALL_FALLBACKS: dict[str, int] = {
    "clock_gettime": NR.clock_gettime, "gettimeofday": NR.gettimeofday, "time": NR.time,
    "getcpu": NR.getcpu, "clock_getres": NR.clock_getres, "getrandom": NR.getrandom,
}
#: Functions with no system call behind them, and what they answer instead (see the module doc).
_ERRNO_STUBS = {"sgx_enter_enclave": -22}  # -EINVAL


class VdsoFormatError(ValueError):
    """The bytes are not a vDSO this module can read (no x86_64 ELF, or its tables out of bounds)."""


class Unroutable(ValueError):
    """An entry point of the old vDSO that cannot be led to the new kernel; the message names it."""


@dataclass(frozen=True)
class Symbol:
    """An exported function of a vDSO: its name, offset from the vDSO's start, and size in bytes."""

    name: str
    offset: int
    size: int


@dataclass(frozen=True)
class Route:
    """One patch of the proxy: the code written at ``offset`` (the old function, all ``names`` of it)."""

    names: tuple[str, ...]
    offset: int
    code: bytes
    to: str  # what it leads to, for messages: "new vDSO +0x...", "syscall 318", "-EINVAL"


def _u(fmt: struct.Struct, data: bytes, off: int) -> tuple:
    if off < 0 or off + fmt.size > len(data):
        raise VdsoFormatError(f"a table at {off:#x} runs past the {len(data)} bytes")
    return fmt.unpack_from(data, off)


def symbols(data: bytes) -> dict[str, Symbol]:
    """The functions a vDSO exports (its dynamic symbol table), by name; aliases share an offset.

    Read as the dynamic linker does (program headers → ``PT_DYNAMIC`` →
    ``DT_SYMTAB``/``DT_STRTAB``, the count from ``DT_HASH`` or ``DT_GNU_HASH``),
    not from section headers, which a loaded image need not have.
    """
    if len(data) < _EHDR.size or data[:4] != _ELFMAG:
        raise VdsoFormatError("no ELF header")
    ident, _type, machine, _v, _entry, phoff, _shoff, _fl, _eh, phentsize, phnum, *_ = _EHDR.unpack_from(data)
    if ident[4] != _ELFCLASS64 or ident[5] != _ELFDATA2LSB or machine != _EM_X86_64:
        raise VdsoFormatError("not a 64-bit little-endian x86_64 ELF")
    if phentsize < _PHDR.size or phnum > _MAX_HEADERS:
        raise VdsoFormatError(f"{phnum} program headers of {phentsize} bytes")
    load = dyn = None
    for i in range(phnum):
        ptype, _f, offset, vaddr, _p, filesz, _m, _a = _u(_PHDR, data, phoff + i * phentsize)
        if ptype == _PT_LOAD and load is None:
            load = (offset, vaddr)
        elif ptype == _PT_DYNAMIC:
            dyn = (offset, filesz)
    if load is None or dyn is None:
        raise VdsoFormatError("no PT_LOAD or no PT_DYNAMIC")

    def at(vaddr: int) -> int:  # a dynamic-section address as an offset into the image
        return vaddr - load[1] + load[0]

    tags: dict[int, int] = {}
    for off in range(dyn[0], dyn[0] + dyn[1] - _DYN.size + 1, _DYN.size):
        tag, val = _u(_DYN, data, off)
        if tag == _DT_NULL:
            break
        tags.setdefault(tag, val)
    if _DT_SYMTAB not in tags or _DT_STRTAB not in tags:
        raise VdsoFormatError("no DT_SYMTAB or DT_STRTAB")
    symtab, strtab = at(tags[_DT_SYMTAB]), at(tags[_DT_STRTAB])
    strsz = tags.get(_DT_STRSZ, len(data) - strtab)
    syment = tags.get(_DT_SYMENT, _SYM.size)
    if syment < _SYM.size:
        raise VdsoFormatError(f"symbol entries of {syment} bytes")
    count = _symbol_count(data, tags, at)
    out: dict[str, Symbol] = {}
    for i in range(1, count):
        name_off, info, _other, shndx, value, size = _u(_SYM, data, symtab + i * syment)
        if info & 0xF != _STT_FUNC or shndx == _SHN_UNDEF:
            continue
        if not 0 <= name_off < strsz or strtab + name_off >= len(data):
            raise VdsoFormatError(f"symbol {i}: its name is outside the string table")
        end = data.find(b"\0", strtab + name_off)
        if end < 0:
            raise VdsoFormatError(f"symbol {i}: its name is not terminated")
        name = data[strtab + name_off:end].decode("ascii", "replace")
        offset = at(value)
        if not 0 <= offset < len(data) or offset + size > len(data):
            raise VdsoFormatError(f"{name} at {offset:#x}+{size} is outside the vDSO")
        out[name] = Symbol(name, offset, size)
    return out


def _symbol_count(data: bytes, tags: Mapping[int, int], at) -> int:  # noqa: ANN001 - at: vaddr -> offset
    """How many entries the dynamic symbol table has (the ELF gives it only through a hash table)."""
    if _DT_HASH in tags:
        _nbucket, nchain = _u(struct.Struct("<II"), data, at(tags[_DT_HASH]))
        n = nchain
    elif _DT_GNU_HASH in tags:
        h = at(tags[_DT_GNU_HASH])
        nbuckets, symoffset, bloom_size, _shift = _u(struct.Struct("<IIII"), data, h)
        buckets = h + 16 + 8 * bloom_size
        chains = buckets + 4 * nbuckets
        last = max((_u(struct.Struct("<I"), data, buckets + 4 * i)[0] for i in range(min(nbuckets, _MAX_SYMBOLS))),
                   default=0)
        n = symoffset if last < symoffset else last
        if last >= symoffset:  # walk the last bucket's chain to its end (low bit set)
            while n - symoffset < _MAX_SYMBOLS and not _u(struct.Struct("<I"), data, chains + 4 * (n - symoffset))[0] & 1:
                n += 1
            n += 1
    else:
        raise VdsoFormatError("neither DT_HASH nor DT_GNU_HASH: the symbol count is unknown")
    if n > _MAX_SYMBOLS:
        raise VdsoFormatError(f"{n} symbols")
    return n


def _base_name(name: str) -> str:
    return name.removeprefix("__vdso_")


#: The longest patch :func:`_jump` writes (jmp *0(%rip) + the address): what every function must hold.
_LONGEST = 14


def _jump(site: int, target: int) -> bytes:
    """``jmp rel32`` from ``site`` to ``target`` if it reaches, else ``jmp *0(%rip)`` with the address after it
    (no register clobbered either way)."""
    disp = target - (site + 5)
    if -(1 << 31) <= disp < (1 << 31):
        return b"\xe9" + struct.pack("<i", disp)
    return b"\xff\x25\x00\x00\x00\x00" + struct.pack("<Q", target)


def _syscall(nr: int) -> bytes:
    """``mov $nr, %eax; syscall; ret``: the function done by its system call."""
    return b"\xb8" + struct.pack("<I", nr) + b"\x0f\x05\xc3"


def _errno_stub(err: int) -> bytes:
    """``mov $err, %rax; ret`` (sign-extended imm32)."""
    return b"\x48\xc7\xc0" + struct.pack("<i", err) + b"\xc3"


def _room(sym: Symbol, old: Mapping[str, Symbol], length: int) -> int:
    """The bytes from ``sym`` up to the next function (or its size, or the image's end if both are 0)."""
    starts = sorted({s.offset for s in old.values() if s.offset > sym.offset})
    nxt = starts[0] if starts else length
    return min(sym.size or nxt - sym.offset, nxt - sym.offset)


def plan(old: bytes, new: bytes, old_base: int, new_base: int) -> list[Route]:
    """The patches that turn a copy of ``old`` (to sit at ``old_base``) into a proxy of ``new`` (at ``new_base``).

    One route per function address (aliases such as ``time``/``__vdso_time``
    share one); Unroutable if a function can be led nowhere, or its code is too
    short for the patch.  VdsoFormatError if either is unreadable.
    """
    mine = symbols(old)
    theirs = symbols(new)
    by_offset: dict[int, list[Symbol]] = {}
    for s in mine.values():
        by_offset.setdefault(s.offset, []).append(s)
    routes = []
    for offset, syms in sorted(by_offset.items()):
        names = tuple(sorted(s.name for s in syms))
        dest = {theirs[s.name].offset for s in syms if s.name in theirs}
        if len(dest) > 1:
            raise Unroutable(f"the aliases {', '.join(names)} of the image's vDSO are different functions in this "
                             "kernel's")
        site = old_base + offset
        if dest:
            to = new_base + dest.pop()
            code, what = _jump(site, to), f"new vDSO +{to - new_base:#x}"
        else:
            base = {_base_name(n) for n in names}
            nr = {SYSCALL_FALLBACKS[b] for b in base if b in SYSCALL_FALLBACKS}
            err = {_ERRNO_STUBS[b] for b in base if b in _ERRNO_STUBS}
            if len(nr) == 1:
                n = nr.pop()
                code, what = _syscall(n), f"syscall {n}"
            elif len(err) == 1:
                e = err.pop()
                code, what = _errno_stub(e), f"{e}"
            else:
                raise Unroutable(f"this kernel's vDSO has no {names[-1]}, which the image's exports")
        room = _room(syms[0], mine, len(old))
        if room < max(len(code), _LONGEST if dest else len(code)):
            raise Unroutable(f"{names[-1]} of the image's vDSO is {room} bytes, too short for a {len(code)}-byte jump")
        routes.append(Route(names, offset, code, what))
    return routes


def check_routable(old: bytes, new: bytes) -> list[Route]:
    """:func:`plan` with bases that force the longest jumps: what any placement can do (raises the same)."""
    return plan(old, new, 0, 1 << 40)


def proxy_bytes(old: bytes, routes: Sequence[Route]) -> bytes:
    """The old vDSO's bytes with every route written over its function's first bytes, padded to whole pages."""
    out = bytearray(old)
    for r in routes:
        out[r.offset:r.offset + len(r.code)] = r.code
    out += bytes(-len(out) % PAGE_SIZE)
    return bytes(out)


def place(current: Mapping[int, tuple[int, int]], taken: Iterable[tuple[int, int]], near: int,
          low: int = 1 << 32, high: int = (1 << 47) - (1 << 32)) -> dict[int, tuple[int, int]]:
    """Where this kernel's areas (``current``: kind → (start, end), their relative layout kept: the vDSO
    reads the vvar pages at fixed offsets from itself) go so that they overlap none of ``taken``:
    the free place closest above ``near``, else the closest below it, else the lowest one free."""
    lo = min(s for s, _ in current.values())
    span = max(e for _, e in current.values()) - lo
    busy = sorted((s, e) for s, e in taken if e > s)

    def fits(at: int) -> bool:
        return low <= at and at + span <= high and not any(s < at + span and at < e for s, e in busy)

    candidates = [near] + [e for _, e in busy if e >= near] + [s - span for s, _ in busy if s - span < near]
    candidates = [c - c % PAGE_SIZE for c in candidates]
    above = sorted(c for c in candidates if c >= near)
    below = sorted((c for c in candidates if c < near), reverse=True)
    for at in [*above, *below]:
        if fits(at):
            return {k: (at + s - lo, at + e - lo) for k, (s, e) in current.items()}
    at = low
    for s, e in busy:  # the lowest gap
        if s >= at + span:
            break
        at = max(at, -(-e // PAGE_SIZE) * PAGE_SIZE)
    if not fits(at):
        raise Unroutable(f"no free {span}-byte place for this kernel's vDSO and vvar pages")
    return {k: (at + s - lo, at + e - lo) for k, (s, e) in current.items()}


def auxv_with_vdso(raw: bytes, base: int) -> bytes:
    """The auxv with ``AT_SYSINFO_EHDR`` set to ``base`` (the new vDSO); other entries as they were."""
    pair = struct.Struct("=QQ")
    out = bytearray(raw)
    for off in range(0, len(raw) - pair.size + 1, pair.size):
        key, _ = pair.unpack_from(raw, off)
        if key == AT.SYSINFO_EHDR:
            pair.pack_into(out, off, key, base)
        elif key == AT.NULL:
            break
    return bytes(out)


# ---------------------------------------------------------------------------
# restore
# ---------------------------------------------------------------------------

_VDSO, _VVAR, _VVAR_VCLOCK = mm_pb2.Vma.VDSO, mm_pb2.Vma.VVAR, mm_pb2.Vma.VVAR_VCLOCK


def same_layout(recorded: Mapping[int, tuple[int, int]], current: Mapping[int, tuple[int, int]],
                recorded_sha256: bytes, current_vdso: bytes) -> bool:
    """The image's kernel areas (kind → (start, end)) are this kernel's: the same kinds and sizes, and the
    same vDSO code (when the image has its digest).  Then a restore only moves them to their addresses."""
    if set(recorded) != set(current):
        return False
    if any(e - s != current[k][1] - current[k][0] for k, (s, e) in recorded.items()):
        return False
    return not (recorded_sha256 and _VDSO in recorded and hashlib.sha256(current_vdso).digest() != recorded_sha256)


def why_unroutable(mm: mm_pb2.MmEntry, current_vdso: bytes) -> str:
    """Why the image's vDSO (``mm.vdso``) cannot be routed to ``current_vdso`` ("" if it can)."""
    if not mm.vdso:
        return "the image holds no copy of its vDSO (an image of an older ckpt) to route to this kernel's"
    if mm.vdso_sha256 and hashlib.sha256(mm.vdso).digest() != mm.vdso_sha256:
        return "the image's copy of its vDSO does not match the digest recorded with it"
    try:
        check_routable(mm.vdso, current_vdso)
    except VdsoFormatError as exc:
        return f"a vDSO cannot be read: {exc}"
    except Unroutable as exc:
        return str(exc)
    return ""


@dataclass(frozen=True)
class Arrangement:
    """Where a restore puts the kernel's areas (kind → (start, end)) and, on another kernel, the proxy of
    the image's vDSO: (address, bytes, prot), and the new vDSO's start for AT_SYSINFO_EHDR."""

    areas: dict[int, tuple[int, int]]
    proxy: tuple[int, bytes, int] | None = None
    vdso_base: int | None = None
    #: Kinds the image lacks (the process unmapped them): put out of the way in ``areas`` until the
    #: restore's last step, which unmaps them (the helper's clones and its last call may still need them).
    gone: frozenset[int] = frozenset()

    @property
    def routed(self) -> bool:
        return self.proxy is not None


def arrange(recorded: Mapping[int, mm_pb2.Vma], current: Mapping[int, tuple[int, int]], mm: mm_pb2.MmEntry,
            current_vdso: bytes, taken: Iterable[tuple[int, int]]) -> Arrangement:
    """Where this kernel's areas (``current``, in the helper) go for the image's (``recorded``).

    The same kernel: at the image's addresses.  Another: free of ``taken``
    (the image's mappings, its old kernel areas included, and the restorer's),
    near the old vDSO, with the proxy of the old one planned (Unroutable if a
    function cannot be routed, VdsoFormatError if a vDSO cannot be read).
    """
    rec = {k: (v.start, v.end) for k, v in recorded.items()}
    if same_layout(rec, current, mm.vdso_sha256, current_vdso) and SAME_VDSO not in disabled():
        return Arrangement(rec)
    kept = {k: current[k] for k in rec if k in current}
    if (set(rec) < set(current) and (_VDSO not in rec or SAME_VDSO not in disabled())
            and same_layout(rec, kept, mm.vdso_sha256, current_vdso if _VDSO in rec else b"")):
        # The process unmapped some (or all) of them, the rest are this kernel's: those where they were,
        # the others out of the way until the release unmaps them.
        others = {k: v for k, v in current.items() if k not in rec}
        near = min((s for s, _ in rec.values()), default=min(s for s, _ in current.values()))
        return Arrangement({**rec, **place(others, [*taken, *rec.values()], near)}, gone=frozenset(others))
    if _VDSO not in recorded or _VDSO not in current:
        raise Unroutable("the image's process unmapped its vDSO and kept vvar pages this kernel lays out otherwise"
                         if _VDSO in current else "this kernel maps no vDSO, which the image's process calls")
    why = why_unroutable(mm, current_vdso)
    if why:
        raise Unroutable(why)
    old = recorded[_VDSO]
    areas = place(current, taken, old.end)
    base = areas[_VDSO][0]
    routes = plan(bytes(mm.vdso), current_vdso, old.start, base)
    data = proxy_bytes(bytes(mm.vdso), routes)
    if len(data) != old.end - old.start:
        raise Unroutable(f"the image's vDSO copy is {len(data)} bytes, its area {old.end - old.start}")
    return Arrangement(areas, (old.start, data, old.prot), base)


def map_proxy(inj: Injector, mem: ProcMem, at: int, data: bytes, prot: int) -> None:
    """Map the proxy of the old vDSO at ``at`` (free): private anonymous memory with its final protection,
    its bytes written through /proc/PID/mem (which writes read-only pages too)."""
    got = inj.mmap(at, len(data), prot, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE)
    if got != at:  # a kernel before 4.17 takes MAP_FIXED_NOREPLACE as a hint
        inj.munmap(got, len(data))
        raise Unroutable(f"the old vDSO's place {at:#x} could not be mapped (the kernel gave {got:#x})")
    mem.write(at, data)


def syscall_insn_in(mem: ProcMem, vmas: Iterable[mm_pb2.Vma]) -> int:
    """Address of a ``syscall`` instruction (0f 05) in the image's executable mappings, now restored: the
    restore's last call runs from there when the process had no vDSO to run it from."""
    for v in vmas:
        if v.prot & 0x4 and v.kind not in (mm_pb2.Vma.VDSO, mm_pb2.Vma.VVAR, mm_pb2.Vma.VVAR_VCLOCK,
                                           mm_pb2.Vma.VSYSCALL):
            at = mem.read(v.start, v.end - v.start).find(b"\x0f\x05")
            if at >= 0:
                return v.start + at
    raise Unroutable("no syscall instruction in the process's executable mappings to end the restore with "
                     "(it unmapped its vDSO)")
