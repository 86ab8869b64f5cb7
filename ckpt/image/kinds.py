"""The table of image file kinds: name pattern, magic, and protobuf types.

One row per kind of file.  The reader, ``verify`` and ``show`` all look files
up here — by name when they list a directory, by magic when they decode a
header — so a new kind of file is one new row (and one new .proto).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum

from google.protobuf.message import Message

from ckpt.image.pb import core_pb2, digests_pb2, files_pb2, inventory_pb2, mm_pb2, pagemap_pb2, process_pb2

__all__ = [
    "Scope",
    "Kind",
    "INVENTORY",
    "PROCESS",
    "CORE",
    "MM",
    "FDS",
    "FILES",
    "PAGEMAP",
    "PAGES",
    "DIGESTS",
    "KINDS",
    "BY_MAGIC",
    "MAGIC_NAMES",
    "OWNER_RE",
    "kind_of_file",
    "owner_name",
]

#: What may follow the dash in a per-owner file name: a pid, or a name like "shmem-7".
OWNER_RE = r"[0-9a-z][0-9a-z._-]*"


class Scope(Enum):
    """How many files of a kind an image has."""

    IMAGE = "image"      # one per image (inventory.img, files.img)
    PROCESS = "process"  # one per process, named by pid
    OWNER = "owner"      # one per memory owner: a pid, or a shared-memory name


@dataclass(frozen=True)
class Kind:
    """One kind of image file.

    ``head`` is the type of the first record when the kind has one (e.g. the mm
    fields before the VMAs); ``record`` the type of every other record; both are
    None for the raw page-data file.
    """

    name: str
    magic: bytes
    template: str  # file name, with {key} for the pid / owner
    scope: Scope
    head: type[Message] | None
    record: type[Message] | None
    description: str

    @property
    def is_records(self) -> bool:
        return self.record is not None

    def file_name(self, key: int | str | None = None) -> str:
        """The file name of this kind for a pid / owner (None for per-image kinds)."""
        if self.scope is Scope.IMAGE:
            if key is not None:
                raise ValueError(f"{self.name} files are per image, not per {key!r}")
            return self.template
        if key is None:
            raise ValueError(f"{self.name} files need a pid or owner")
        return self.template.format(key=owner_name(key))

    def match(self, file_name: str) -> str | None:
        """The pid/owner part if ``file_name`` is of this kind ("" for per-image kinds), else None."""
        m = self._regex.fullmatch(file_name)
        if m is None:
            return None
        return m.groupdict().get("key", "")

    @property
    def _regex(self) -> re.Pattern[str]:
        return _REGEXES[self.name]


def owner_name(key: int | str) -> str:
    """Normalise a pid or owner name for use in a file name; reject anything unsafe."""
    if isinstance(key, bool):
        raise TypeError("owner must be a pid or a name")
    if isinstance(key, int):
        if key <= 0:
            raise ValueError(f"invalid pid {key}")
        return str(key)
    if not re.fullmatch(OWNER_RE, key):
        raise ValueError(f"invalid owner name {key!r}: use lower-case letters, digits, '.', '_', '-'")
    return key


INVENTORY = Kind("inventory", b"INVT", "inventory.img", Scope.IMAGE, None, inventory_pb2.Inventory,
                 "what the image is: version, id, parent, processes, file checksums")
PROCESS = Kind("process", b"PROC", "proc-{key}.img", Scope.PROCESS, None, process_pb2.ProcessEntry,
               "process-wide state: ids, credentials, limits, signal handlers")
CORE = Kind("core", b"CORE", "core-{key}.img", Scope.PROCESS, None, core_pb2.ThreadCore,
            "per-thread state: registers, signal mask, rseq, robust list")
MM = Kind("mm", b"MMAP", "mm-{key}.img", Scope.PROCESS, mm_pb2.MmEntry, mm_pb2.Vma,
          "address space: mm fields, then one record per VMA")
FDS = Kind("fds", b"FDTB", "fds-{key}.img", Scope.PROCESS, None, files_pb2.FdEntry,
           "descriptor table: fd number -> open file id")
FILES = Kind("files", b"FILE", "files.img", Scope.IMAGE, None, files_pb2.FileEntry,
             "open file descriptions, shared by id between descriptors")
PAGEMAP = Kind("pagemap", b"PMAP", "pagemap-{key}.img", Scope.OWNER, pagemap_pb2.PagemapHead, pagemap_pb2.PageRange,
               "which pages exist and where their bytes are: here, in the parent, or zero")
PAGES = Kind("pages", b"PAGE", "pages-{key}.img", Scope.OWNER, None, None,
             "page data: chunks (zstd frames) located through the pagemap")
DIGESTS = Kind("digests", b"HASH", "digests-{key}.img", Scope.OWNER, digests_pb2.DigestHead, digests_pb2.PageDigests,
               "per-page content digests of the hash tracking method")

#: Every kind, in the order ``show`` prints files.
KINDS: tuple[Kind, ...] = (INVENTORY, PROCESS, CORE, MM, FDS, FILES, PAGEMAP, PAGES, DIGESTS)
#: The decoder table: kind by magic.
BY_MAGIC: dict[bytes, Kind] = {k.magic: k for k in KINDS}
#: Magic -> kind name, for error messages.
MAGIC_NAMES: dict[bytes, str] = {k.magic: k.name for k in KINDS}

_REGEXES: dict[str, re.Pattern[str]] = {
    k.name: re.compile(re.escape(k.template).replace(re.escape("{key}"), f"(?P<key>{OWNER_RE})"))
    for k in KINDS
}
assert len(BY_MAGIC) == len(KINDS), "duplicate magic"


def kind_of_file(file_name: str) -> tuple[Kind, str] | None:
    """(kind, pid/owner) for a file name of an image, or None if no kind matches."""
    for kind in KINDS:
        key = kind.match(file_name)
        if key is not None:
            return kind, key
    return None
