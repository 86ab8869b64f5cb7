"""Which file is "the same file" on another machine: path, size, mtime and, for ELF files, the GNU build-id.

A restore may run on another machine than the dump (a migration, an image
copied over) where the program's files come from shared or replicated
storage: the same path, the same bytes, but other device and inode numbers
(DESIGN §8, "Across hosts").  So an image identifies every file it reopens or
maps by what travels with the file — its path, size, mtime and, for an ELF
file, the GNU build-id the linker wrote into it (a hash of the linked
contents; ``ld --build-id``, the default on Debian, Fedora, Ubuntu) — and
never by ``st_dev``/``st_ino``.  Device and inode numbers stay in the record
for humans, and for images written before this (no ``by_path``), which are
checked as they were: dev, ino, size, mtime — they restore on their own machine only.

The build-id is read here in pure Python from the ELF program headers
(``PT_NOTE`` segments, the ``NT_GNU_BUILD_ID`` note of owner ``GNU``), or from
the ``SHT_NOTE`` sections when a file has no program headers (an object file),
both ELF classes and byte orders.  A dump of a big tree maps libc in every
process: :data:`BUILD_IDS` remembers each file's by (dev, ino, size, mtime,
ctime) for the run, so each file is read once.
"""

from __future__ import annotations

import os
import stat
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..image.pb import common_pb2
from ..procfs.timens import read_boot_id

__all__ = ["same_boot", "NT_GNU_BUILD_ID", "build_id", "build_id_of_bytes", "BuildIds", "BUILD_IDS", "identity", "Diff",
           "Mismatch", "compare"]

_ELFMAG = b"\x7fELF"
_ELFCLASS32, _ELFCLASS64 = 1, 2
_ELFDATA2LSB, _ELFDATA2MSB = 1, 2
PT_NOTE = 4
SHT_NOTE = 7
NT_GNU_BUILD_ID = 3
#: Bounds, so that a hostile or corrupt file costs little: headers looked at, and bytes of notes read.
_MAX_HEADERS = 256
_MAX_NOTES = 1 << 16
#: Files not looked into: pseudo-filesystems whose "regular files" run code when read.
_PSEUDO = ("/proc/", "/sys/", "/dev/")

Reader = Callable[[int, int], bytes]  # (offset, size) -> at most size bytes from offset


def _notes(data: bytes, order: str, align: int) -> bytes:
    """The NT_GNU_BUILD_ID descriptor among the notes in ``data`` (Elf_Nhdr: namesz, descsz, type; each part padded)."""
    off = 0
    pad = (lambda n: -(-n // align) * align)
    while off + 12 <= len(data):
        namesz, descsz, ntype = struct.unpack_from(order + "III", data, off)
        name_at = off + 12
        desc_at = name_at + pad(namesz)
        end = desc_at + pad(descsz)
        if desc_at + descsz > len(data):
            return b""
        if ntype == NT_GNU_BUILD_ID and data[name_at:name_at + namesz] == b"GNU\0" and descsz:
            return bytes(data[desc_at:desc_at + descsz])
        off = end
    return b""


def build_id(read: Reader) -> bytes:
    """The GNU build-id of the ELF image ``read`` gives access to; b"" if it is no ELF or has none."""
    head = read(0, 64)
    if len(head) < 52 or head[:4] != _ELFMAG or head[4] not in (_ELFCLASS32, _ELFCLASS64) \
            or head[5] not in (_ELFDATA2LSB, _ELFDATA2MSB):
        return b""
    order = "<" if head[5] == _ELFDATA2LSB else ">"
    if head[4] == _ELFCLASS64:
        if len(head) < 64:
            return b""
        phoff, shoff = struct.unpack_from(order + "QQ", head, 32)
        phentsize, phnum, shentsize, shnum = struct.unpack_from(order + "HHHH", head, 54)
        ph_fmt, ph_fields = order + "IIQQQQQQ", ("type", "flags", "offset", "vaddr", "paddr", "filesz", "memsz", "align")
        sh_fmt, sh_fields = order + "IIQQQQIIQQ", ("name", "type", "flags", "addr", "offset", "size", "link", "info",
                                                   "addralign", "entsize")
    else:
        phoff, shoff = struct.unpack_from(order + "II", head, 28)
        phentsize, phnum, shentsize, shnum = struct.unpack_from(order + "HHHH", head, 42)
        ph_fmt, ph_fields = order + "IIIIIIII", ("type", "offset", "vaddr", "paddr", "filesz", "memsz", "flags", "align")
        sh_fmt, sh_fields = order + "IIIIIIIIII", ("name", "type", "flags", "addr", "offset", "size", "link", "info",
                                                   "addralign", "entsize")
    # Program headers first (what a loaded image has), then sections (an object file has only those).
    for table, count, entsize, fmt, fields, note_type, size_field in (
            (phoff, phnum, phentsize, ph_fmt, ph_fields, PT_NOTE, "filesz"),
            (shoff, shnum, shentsize, sh_fmt, sh_fields, SHT_NOTE, "size")):
        if not table or not count or entsize < struct.calcsize(fmt):
            continue
        count = min(count, _MAX_HEADERS)
        raw = read(table, count * entsize)
        for i in range(len(raw) // entsize):
            h = dict(zip(fields, struct.unpack_from(fmt, raw, i * entsize)))
            if h["type"] != note_type or not h[size_field]:
                continue
            align = 8 if h.get("align", h.get("addralign")) == 8 else 4
            found = _notes(read(h["offset"], min(h[size_field], _MAX_NOTES)), order, align)
            if found:
                return found
    return b""


def build_id_of_bytes(data: bytes) -> bytes:
    """The GNU build-id of an ELF image held in memory (the vDSO)."""
    return build_id(lambda off, size: data[off:off + size])


def _key(st: os.stat_result) -> tuple[int, int, int, int, int]:
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


class BuildIds:
    """Build-ids of files by (dev, ino, size, mtime, ctime): each file is read once per run.

    ctime changes with every write and every utimes, and a new file on a
    reused inode gets its own: a key that matches names the same bytes.
    """

    MAX = 4096  # entries kept; then it starts over (a receiver runs for days)

    def __init__(self) -> None:
        self._ids: dict[tuple[int, int, int, int, int], bytes] = {}
        self.reads = 0  # files actually read, for tests

    def of_fd(self, fd: int, st: os.stat_result | None = None) -> bytes:
        """The build-id of the open regular file ``fd`` (b"" for other files)."""
        st = os.fstat(fd) if st is None else st
        if not stat.S_ISREG(st.st_mode) or st.st_size < 52:
            return b""
        key = _key(st)
        found = self._ids.get(key)
        if found is None:
            self.reads += 1
            found = build_id(lambda off, size: os.pread(fd, size, off))
            if len(self._ids) >= self.MAX:
                self._ids.clear()
            self._ids[key] = found
        return found

    def of_path(self, path: str, name: str = "") -> tuple[os.stat_result, bytes]:
        """(stat, build-id) of the file ``path`` opens — a /proc link included; ``name`` is the path the
        program knew it by, to leave pseudo-filesystems alone.  OSError if it cannot be opened."""
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY)
        try:
            st = os.fstat(fd)
            return st, b"" if (name or path).startswith(_PSEUDO) else self.of_fd(fd, st)
        finally:
            os.close(fd)


#: The build-ids of this run.
BUILD_IDS = BuildIds()


def identity(st: os.stat_result, build: bytes = b"") -> common_pb2.FileIdentity:
    """The image's record of a file: path-independent fields of ``st`` and its build-id (``by_path`` set)."""
    return common_pb2.FileIdentity(dev=st.st_dev, ino=st.st_ino, size=st.st_size, mtime_ns=st.st_mtime_ns,
                                   ctime_ns=st.st_ctime_ns, mode=st.st_mode, build_id=build, by_path=True,
                                   rdev=st.st_rdev if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else 0)


@dataclass(frozen=True)
class Diff:
    """One way a file differs from the image's record: ``what`` ("size"…), its value here and in the image."""

    what: str
    now: str
    was: str

    def __str__(self) -> str:
        return f"{self.what} {self.now} here, {self.was} in the image"


@dataclass(frozen=True)
class Mismatch:
    """How a file differs from the image's record of it (empty: it is the same file)."""

    diffs: tuple[Diff, ...] = ()
    legacy: bool = False  # the image predates by_path: it was compared by device and inode too
    vouched: bool = False  # the image has a build-id and the file has the same one

    def __bool__(self) -> bool:
        return bool(self.diffs)

    @property
    def names(self) -> list[str]:
        return [d.what for d in self.diffs]

    @property
    def same_contents(self) -> bool:
        """Only the mtime differs and the build-id vouches for the bytes: the same linked ELF file (a copy
        that did not keep its mtime).  What ``--allow-changed-files`` accepts for a mapped file."""
        return self.names == ["mtime"] and self.vouched

    def text(self, path: str) -> str:
        line = f"{path} changed since the dump ({'; '.join(map(str, self.diffs))})"
        if self.legacy:
            line += (": the image was written before ckpt identified files by path, size, mtime and build-id, "
                     "so it restores only where its files have the same device and inode numbers")
        return line


def _hex(b: bytes) -> str:
    return b.hex() if b else "none"


def compare(st: os.stat_result, want: common_pb2.FileIdentity, read_build_id: Callable[[], bytes]) -> Mismatch:
    """How the file ``st`` (found at the image's path) differs from ``want``.

    ``read_build_id`` gives the file's build-id; it is called only when the
    image has one (a file that had none — no ELF, or unreadable to the dumper —
    is checked by size and mtime).  A directory or device is checked by its
    type (and a device by its number), never by its size or times.
    """
    if not want.by_path:  # an older image: as checked then
        return Mismatch(tuple(Diff(what, fmt(now), fmt(was)) for what, now, was, fmt in (
            ("device", st.st_dev, want.dev, hex), ("inode", st.st_ino, want.ino, str),
            ("size", st.st_size, want.size, str), ("mtime", st.st_mtime_ns, want.mtime_ns, _when))
            if now != was), legacy=True)
    diffs: list[Diff] = []
    if want.mode and stat.S_IFMT(st.st_mode) != stat.S_IFMT(want.mode):
        return Mismatch((Diff("type", _kind(st.st_mode), _kind(want.mode)),))
    if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
        if st.st_rdev != want.rdev:
            diffs.append(Diff("device number", _devno(st.st_rdev), _devno(want.rdev)))
        return Mismatch(tuple(diffs))
    if not stat.S_ISREG(st.st_mode):
        return Mismatch()
    if st.st_size != want.size:
        diffs.append(Diff("size", str(st.st_size), str(want.size)))
    if st.st_mtime_ns != want.mtime_ns:
        diffs.append(Diff("mtime", _when(st.st_mtime_ns), _when(want.mtime_ns)))
    vouched = False
    if want.build_id:
        now = read_build_id()
        vouched = now == want.build_id
        if not vouched:
            diffs.append(Diff("build-id", _hex(now), _hex(want.build_id)))
    return Mismatch(tuple(diffs), vouched=vouched)


def same_boot(boot_id: str) -> bool:
    """Whether an image with this ``Inventory.boot_id`` was taken on this machine since it booted: only then
    do device and inode numbers name the same files (and only on the filesystem they were on)."""
    return bool(boot_id) and read_boot_id() == boot_id


def _when(ns: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ns // 10**9)) + f".{ns % 10**9:09d} UTC"


def _devno(rdev: int) -> str:
    return f"{os.major(rdev)}:{os.minor(rdev)}"


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISREG, "a regular file"), (stat.S_ISDIR, "a directory"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISLNK, "a symbolic link"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return f"mode {mode:o}"
