"""``/proc/PID/maps`` and ``/proc/PID/smaps``: the VMAs of a process.

Line format (``show_map_vma`` in fs/proc/task_mmu.c)::

    start-end perms offset major:minor inode<padding>path

* ``start``/``end`` are hex; ``end`` is exclusive.
* ``perms`` is ``r``/``w``/``x`` or ``-``, then ``s`` (VM_MAYSHARE) or ``p``.
* ``offset`` is ``vm_pgoff << PAGE_SHIFT`` in hex, i.e. *bytes*; kept here as
  :attr:`Vma.offset`, with :attr:`Vma.pgoff` in pages as the kernel stores it.
* ``major:minor`` are hex, ``inode`` decimal.
* The name is padded to column 73; anonymous lines without a name end right
  after the inode followed by one space (seen on 6.18: ``... 00:00 0 \\n``).
* File names come from ``d_path``: a newline inside a name is written as the
  four characters ``\\012`` (``seq_file_path(m, file, "\\n")`` → ``mangle_path``)
  and nothing else is escaped, so a name that really contains ``\\012`` cannot
  be told apart; we decode ``\\012`` back to a newline.
* An unlinked file gets the suffix `` (deleted)`` (``d_path``).  A file that is
  really *named* ``x (deleted)`` looks the same; :func:`read_maps` resolves that
  case by checking whether the suffixed name exists with the same inode.
* Kernel-named areas: ``[heap]`` (brk area), ``[stack]``, ``[vdso]``,
  ``[vvar]``, ``[vvar_vclock]`` (split out of ``[vvar]`` in 6.13),
  ``[vsyscall]`` (above TASK_SIZE), ``[uprobes]``, ``[anon:NAME]`` /
  ``[anon_shmem:NAME]`` (``PR_SET_VMA_ANON_NAME``, 5.17+/6.2+, needs
  CONFIG_ANON_VMA_NAME — not set on these machines); kernels before 4.5 also
  printed ``[stack:TID]`` for thread stacks.
* Shared anonymous memory appears as ``/dev/zero (deleted)``, SysV shm as
  ``/SYSV<key> (deleted)``, memfd as ``/memfd:NAME (deleted)``.
* Reading maps of a running process is not atomic: the kernel may release the
  mmap lock between reads, so a concurrently changing layout can show a VMA
  twice or miss one.  Read it while the target is frozen.
* Kernel threads and zombies have no ``mm``: maps and smaps are empty.

smaps adds, per VMA, ``Key:   N kB`` counters, ``THPeligible:`` and
``ProtectionKey:`` (plain numbers) and a final ``VmFlags:`` line of two-letter
mnemonics.  smaps walks the page tables of every VMA, so it costs far more than
maps; use it only when the counters or VmFlags are needed.
"""

from __future__ import annotations

import mmap as _mmap
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType

from ._proc import ProcDir

__all__ = [
    "PAGE_SIZE",
    "DELETED_SUFFIX",
    "SPECIAL_MAPPINGS",
    "VMFLAG_NAMES",
    "Vma",
    "SmapsVma",
    "parse_maps",
    "parse_smaps",
    "parse_smaps_vmflags",
    "read_maps",
    "read_smaps",
    "read_smaps_vmflags",
]

PAGE_SIZE = 4096
DELETED_SUFFIX = " (deleted)"

#: Areas the kernel installs itself (``_install_special_mapping``); none of
#: them is restored from the image, and uffd-wp refuses them (DESIGN §2).
SPECIAL_MAPPINGS = frozenset({"[vdso]", "[vvar]", "[vvar_vclock]", "[vsyscall]", "[uprobes]"})

#: VmFlags mnemonics → kernel flag (``show_smap_vma_flags``, Documentation/
#: filesystems/proc.rst).  The kernel may add or drop mnemonics between
#: releases; unknown ones are kept verbatim in :attr:`Vma.vmflags`.
VMFLAG_NAMES: Mapping[str, str] = MappingProxyType({
    "rd": "VM_READ", "wr": "VM_WRITE", "ex": "VM_EXEC", "sh": "VM_SHARED",
    "mr": "VM_MAYREAD", "mw": "VM_MAYWRITE", "me": "VM_MAYEXEC", "ms": "VM_MAYSHARE",
    "gd": "VM_GROWSDOWN", "pf": "VM_PFNMAP", "dw": "VM_DENYWRITE", "lo": "VM_LOCKED",
    "io": "VM_IO", "sr": "VM_SEQ_READ", "rr": "VM_RAND_READ", "dc": "VM_DONTCOPY",
    "de": "VM_DONTEXPAND", "ac": "VM_ACCOUNT", "nr": "VM_NORESERVE", "ht": "VM_HUGETLB",
    "sf": "VM_SYNC", "ar": "VM_ARCH_1", "wf": "VM_WIPEONFORK", "dd": "VM_DONTDUMP",
    "sd": "VM_SOFTDIRTY", "mm": "VM_MIXEDMAP", "hg": "VM_HUGEPAGE", "nh": "VM_NOHUGEPAGE",
    "mg": "VM_MERGEABLE", "um": "VM_UFFD_MISSING", "uw": "VM_UFFD_WP", "ui": "VM_UFFD_MINOR",
    "ss": "VM_SHADOW_STACK", "sl": "VM_SEALED", "bt": "VM_ARM64_BTI", "mt": "VM_MTE",
    "lf": "VM_LOCKONFAULT", "dp": "VM_DROPPABLE", "gu": "VM_MAYBE_GUARD",
})


_LOCKED_UNNAMED = frozenset({"lo", "??"})


#: VmFlags lines seen, parsed (a process has a handful of distinct ones, in 30,000 VMAs as in 20).
_VMFLAGS_SEEN: dict[bytes, frozenset[str]] = {}


def _vmflags(line: bytes) -> frozenset[str]:
    """The mnemonics of a ``VmFlags:`` line.  Older kernels (Debian 12's 6.1) have no mnemonic for VM_LOCKONFAULT
    and print ``??`` for it (mlock2(MLOCK_ONFAULT) gives ``lo ??``, mlock ``lo``);
    beside ``lo`` (x86's only flag without one there) it is named ``lf`` as later kernels print it."""
    got = _VMFLAGS_SEEN.get(line)
    if got is not None:
        return got
    flags = frozenset(f.decode("ascii", "replace") for f in line.split())
    if _LOCKED_UNNAMED <= flags:
        flags = (flags - {"??"}) | {"lf"}
    if len(_VMFLAGS_SEEN) < 4096:  # bounded: a hostile layout cannot grow it without end
        _VMFLAGS_SEEN[line] = flags
    return flags


@dataclass(frozen=True, slots=True)
class Vma:
    """One line of ``/proc/PID/maps`` (``struct vm_area_struct`` as shown to users)."""

    start: int
    end: int
    read: bool
    write: bool
    exec: bool
    #: ``s`` in maps: VM_MAYSHARE, i.e. mapped MAP_SHARED (even if read-only).
    shared: bool
    #: File offset in bytes of ``start`` (maps prints ``vm_pgoff << PAGE_SHIFT``).
    offset: int
    dev_major: int
    dev_minor: int
    inode: int
    #: Name as the kernel shows it, ``\\012`` decoded, `` (deleted)`` removed;
    #: ``""`` for unnamed anonymous memory.  Non-UTF-8 bytes survive through
    #: ``os.fsencode`` (surrogateescape).
    path: str
    deleted: bool = False
    #: Two-letter VmFlags; only :func:`read_smaps` fills them.
    vmflags: frozenset[str] = frozenset()

    @property
    def size(self) -> int:
        return self.end - self.start

    @property
    def pgoff(self) -> int:
        """``vm_pgoff``: the file offset in pages."""
        return self.offset // PAGE_SIZE

    @property
    def prot(self) -> int:
        """``PROT_*`` bits for mmap/mprotect."""
        return ((_mmap.PROT_READ if self.read else 0) | (_mmap.PROT_WRITE if self.write else 0)
                | (_mmap.PROT_EXEC if self.exec else 0))

    @property
    def perms(self) -> str:
        """The four-letter permission column, as maps prints it."""
        return ("r" if self.read else "-") + ("w" if self.write else "-") + \
            ("x" if self.exec else "-") + ("s" if self.shared else "p")

    @property
    def is_special(self) -> bool:
        """A kernel-installed area: ``[vdso]``, ``[vvar]``, ``[vsyscall]``…"""
        return self.path in SPECIAL_MAPPINGS

    @property
    def is_heap(self) -> bool:
        return self.path == "[heap]"

    @property
    def is_stack(self) -> bool:
        """The main thread's stack (thread stacks are plain anonymous VMAs since 4.5)."""
        return self.path == "[stack]" or self.path.startswith("[stack:")

    @property
    def anon_name(self) -> str | None:
        """NAME from ``[anon:NAME]`` / ``[anon_shmem:NAME]``, else None."""
        for prefix in ("[anon:", "[anon_shmem:"):
            if self.path.startswith(prefix) and self.path.endswith("]"):
                return self.path[len(prefix):-1]
        return None

    @property
    def is_anonymous(self) -> bool:
        """Private or shared memory with no file behind it in maps (inode 0), not special."""
        return self.inode == 0 and not self.is_special

    @property
    def is_file(self) -> bool:
        """Backed by a file (``vm_file`` set): regular, deleted, memfd, shmem, SysV, device."""
        return self.inode != 0 and not self.path.startswith("[anon") and not self.is_special



#: A maps line as the kernel prints it (``show_map_vma``); anything else takes the general parse below.
_MAPS_LINE = re.compile(rb"([0-9a-f]+)-([0-9a-f]+) ([r-])([w-])([x-])([sp]) ([0-9a-f]+) ([0-9a-f]+):([0-9a-f]+) "
                        rb"([0-9]+)(?: +(.*))?\Z", re.S)
#: Names seen (bytes as maps prints them → path, deleted); bounded like _VMFLAGS_SEEN.
_NAMES_SEEN: dict[bytes, tuple[str, bool]] = {}


def _name(raw: bytes) -> tuple[str, bool]:
    """(path, deleted) of the name field of a maps line (module doc: ``\\012``, `` (deleted)``)."""
    got = _NAMES_SEEN.get(raw)
    if got is not None:
        return got
    name, deleted = raw, False
    if b"\\012" in name:
        name = name.replace(b"\\012", b"\n")
    if name.endswith(b" (deleted)"):
        deleted = True
        name = name[: -len(b" (deleted)")]
    got = (os.fsdecode(name), deleted)
    if len(_NAMES_SEEN) < 4096:
        _NAMES_SEEN[raw] = got
    return got


def _parse_header(line: bytes, vmflags: frozenset[str] = frozenset()) -> Vma:
    """Parse one maps line (without its newline); ``vmflags`` from its smaps block.

    One regular-expression match for the lines the kernel prints, names looked up once:
    a process may have 30,000 VMAs, and every collection and dump reads them all.
    """
    m = _MAPS_LINE.match(line)
    if m is not None:
        lo, hi, r, w, x, sh, off, major, minor, ino, raw = m.groups()
        path, deleted = _name(raw or b"")
        return Vma(int(lo, 16), int(hi, 16), r == b"r", w == b"w", x == b"x", sh == b"s", int(off, 16),
                   int(major, 16), int(minor, 16), int(ino), path, deleted, vmflags)
    return _parse_header_slowly(line, vmflags)


def _parse_header_slowly(line: bytes, vmflags: frozenset[str]) -> Vma:
    """Any line :data:`_MAPS_LINE` does not match (odd spacing, other permission letters), or an error."""
    # maxsplit=5 keeps the name whole, spaces and trailing spaces included;
    # the padding before it is swallowed as separator whitespace.
    parts = line.split(None, 5)
    if len(parts) < 5:
        raise ValueError(f"maps: malformed line {line[:200]!r}")
    rng, perms, off, dev, ino = parts[:5]
    name = parts[5] if len(parts) == 6 else b""
    try:
        lo, _, hi = rng.partition(b"-")
        major, _, minor = dev.partition(b":")
        start, end = int(lo, 16), int(hi, 16)
        offset, inode = int(off, 16), int(ino)
        dmaj, dmin = int(major, 16), int(minor, 16)
    except ValueError:
        raise ValueError(f"maps: malformed line {line[:200]!r}") from None
    if len(perms) != 4:
        raise ValueError(f"maps: malformed permissions in {line[:200]!r}")
    deleted = False
    if b"\\012" in name:
        name = name.replace(b"\\012", b"\n")
    if name.endswith(b" (deleted)"):
        deleted = True
        name = name[: -len(b" (deleted)")]
    return Vma(
        start=start, end=end,
        read=perms[0:1] == b"r", write=perms[1:2] == b"w", exec=perms[2:3] == b"x",
        shared=perms[3:4] == b"s",
        offset=offset, dev_major=dmaj, dev_minor=dmin, inode=inode,
        path=os.fsdecode(name), deleted=deleted, vmflags=vmflags,
    )


def parse_maps(data: bytes) -> list[Vma]:
    """Parse the bytes of a ``/proc/PID/maps`` file."""
    return [_parse_header(line) for line in data.split(b"\n") if line]


@dataclass(frozen=True, slots=True)
class SmapsVma:
    """One VMA of ``/proc/PID/smaps``: the maps line plus its counters.

    Sizes are in bytes (smaps prints kB).  ``fields`` holds every numeric line
    by its smaps key (``"Rss"``, ``"Pss_Dirty"``, ``"KSM"`` …), so counters
    that only some kernels print are still reachable; the attributes are the
    ones ckpt reads, 0 when this kernel lacks the line.
    """

    vma: Vma
    size: int
    rss: int
    pss: int
    shared_clean: int
    shared_dirty: int
    private_clean: int
    private_dirty: int
    anonymous: int
    anon_huge_pages: int
    swap: int
    locked: int
    thp_eligible: bool | None
    protection_key: int | None
    fields: Mapping[str, int] = field(hash=False, compare=True)

    @property
    def vmflags(self) -> frozenset[str]:
        return self.vma.vmflags


def _is_smaps_key(line: bytes) -> bool:
    # Header lines start with "start-end"; counter lines with "Key:".  A
    # counter key can start with a hex letter ("AnonHugePages"), so look for
    # the colon ending the first token rather than at the first character.
    first = line.split(None, 1)[0] if line.strip() else b""
    return first.endswith(b":") and b"-" not in first


def _smaps_entry(vma: Vma, counters: dict[str, int], flags: frozenset[str]) -> SmapsVma:
    g = counters.get
    thp = g("THPeligible")
    return SmapsVma(
        vma=replace(vma, vmflags=flags),
        size=g("Size", vma.size), rss=g("Rss", 0), pss=g("Pss", 0),
        shared_clean=g("Shared_Clean", 0), shared_dirty=g("Shared_Dirty", 0),
        private_clean=g("Private_Clean", 0), private_dirty=g("Private_Dirty", 0),
        anonymous=g("Anonymous", 0), anon_huge_pages=g("AnonHugePages", 0),
        swap=g("Swap", 0), locked=g("Locked", 0),
        thp_eligible=None if thp is None else bool(thp),
        protection_key=g("ProtectionKey"),
        fields=MappingProxyType(counters),
    )


def parse_smaps(data: bytes) -> list[SmapsVma]:
    """Parse the bytes of a ``/proc/PID/smaps`` file."""
    out: list[SmapsVma] = []
    vma: Vma | None = None
    counters: dict[str, int] = {}
    flags: frozenset[str] = frozenset()
    keys: dict[bytes, str] = {}
    for line in data.split(b"\n"):
        if not line:
            continue
        # Counter keys start with a capital letter; headers with a hex digit, which the kernel
        # prints in lower case (a dump parses a few hundred lines per process: keep it cheap).
        if not 65 <= line[0] <= 90 and not _is_smaps_key(line):
            if vma is not None:
                out.append(_smaps_entry(vma, counters, flags))
            vma, counters, flags = _parse_header(line), {}, frozenset()
            continue
        if vma is None:
            raise ValueError(f"smaps: counter before the first VMA: {line[:200]!r}")
        key, _, rest = line.partition(b":")
        k = keys.get(key)
        if k is None:
            k = keys[key] = key.decode("ascii", "replace")
        if k == "VmFlags":
            flags = _vmflags(rest)
            continue
        words = rest.split()
        if not words:
            continue
        try:
            value = int(words[0])
        except ValueError:
            continue  # a future non-numeric line: ignore rather than fail a dump
        if len(words) > 1 and words[1] == b"kB":
            value *= 1024
        counters[k] = value
    if vma is not None:
        out.append(_smaps_entry(vma, counters, flags))
    return out


#: The start of a header line inside a block of counter lines (those start with a capital letter).
_SMAPS_HEADER_IN = re.compile(rb"\n[0-9a-f]")


def parse_smaps_vmflags(data: bytes) -> list[Vma]:
    """The VMAs of a ``/proc/PID/smaps`` file with their VmFlags, without the counters.

    A dump needs only these: taken from the header and ``VmFlags:`` lines
    alone, about 4x cheaper than :func:`parse_smaps` (~0.45 ms for the 23
    VMAs of a small C program here, most of a dump's time per process beside
    its memory).  Every block ends with its VmFlags line (since 3.8); a file
    where one does not is parsed in full instead.
    """
    parts = data.split(b"\nVmFlags:")
    if len(parts) > 1:
        heads, flags = [], []
        for i, part in enumerate(parts):
            if i:
                line, _, part = part.partition(b"\n")
                flags.append(line)
            head, _, counters = part.partition(b"\n")
            if _SMAPS_HEADER_IN.search(counters):
                break  # a block without VmFlags: two headers between two VmFlags lines
            if head:
                heads.append(head)
        else:
            if len(heads) == len(flags):
                try:
                    return [_parse_header(h, _vmflags(line))
                            for h, line in zip(heads, flags)]
                except ValueError:
                    pass  # a malformed header: the full parse says where
    return [e.vma for e in parse_smaps(data)]


def _resolve_deleted(proc: ProcDir, vmas: list[Vma]) -> list[Vma]:
    """Undo a false " (deleted)": a live file whose name really ends that way.

    Checked through ``/proc/PID/root`` so the name is looked up in the
    target's own mount namespace and root.  Costs one stat per suffixed VMA.
    """
    out = []
    for v in vmas:
        if v.deleted and v.path.startswith("/"):
            try:
                st = os.stat(f"{proc.base}/root{v.path}{DELETED_SUFFIX}")
            except OSError:
                st = None
            if (st is not None and st.st_ino == v.inode
                    and os.major(st.st_dev) == v.dev_major and os.minor(st.st_dev) == v.dev_minor):
                v = replace(v, path=v.path + DELETED_SUFFIX, deleted=False)
        out.append(v)
    return out


def read_maps(pid: int, *, proc: ProcDir | None = None) -> list[Vma]:
    """VMAs of ``pid`` from ``/proc/PID/maps`` (empty for kernel threads and zombies)."""
    proc = proc or ProcDir(pid)
    return _resolve_deleted(proc, parse_maps(proc.read("maps")))


def read_smaps(pid: int, *, proc: ProcDir | None = None) -> list[SmapsVma]:
    """VMAs of ``pid`` with counters and VmFlags from ``/proc/PID/smaps``."""
    proc = proc or ProcDir(pid)
    entries = parse_smaps(proc.read("smaps"))
    fixed = _resolve_deleted(proc, [e.vma for e in entries])
    return [e if e.vma is v else replace(e, vma=v) for e, v in zip(entries, fixed)]


def read_smaps_vmflags(pid: int, *, proc: ProcDir | None = None) -> list[Vma]:
    """VMAs of ``pid`` with their VmFlags (from ``/proc/PID/smaps``; see :func:`parse_smaps_vmflags`)."""
    proc = proc or ProcDir(pid)
    return _resolve_deleted(proc, parse_smaps_vmflags(proc.read("smaps")))
