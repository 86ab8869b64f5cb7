"""``ckpt verify``: check every file of an image and of its whole parent chain.

:func:`verify` collects every problem it finds (one line each, naming the file)
instead of stopping at the first, so a user sees the whole damage at once;
``Report.raise_first()`` turns the first one into the matching ``ImageError``
for the CLI (exit code 2).  Checked, per image:

* inventory.img: magic, kind, format version, end-marker checksum, sane fields;
* every listed file: present, header (magic of the kind its name says, version),
  size and SHA-256 as recorded, end marker, every record decodes;
* no unlisted files; the files a FULL/INCREMENTAL/PRE_DUMP image needs;
* cross references: per-process files of listed pids, thread ids, fd → file ids;
* pagemaps: ranges aligned, sorted, not overlapping, counts as in the head,
  HERE data in stream order, not overlapping and covered by the chunk table;
  chunks contiguous in the pages file; every chunk's CRC-32, zstd checksum and size;
* the chain: each parent present, with the recorded id, no loop, and every
  PARENT page found in the parent (transitively).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field

from google.protobuf.message import Message

from ckpt.errors import ChainError, CorruptImage, ImageError, NotAnImage
from ckpt.image import framing, kinds
from ckpt.image.chain import resolve_pages, walk_chain
from ckpt.image.kinds import Kind, Scope
from ckpt.image.pb import core_pb2, files_pb2, pagemap_pb2, process_pb2
from ckpt.image.reader import ChunkReader, Image, _pagemap_from, decode_records
from ckpt.image.records import ImageKind, Pagemap, PageState

__all__ = ["Problem", "Report", "verify", "verify_image"]

_ERRORS: dict[str, type[ImageError]] = {
    "corrupt": CorruptImage,
    "chain": ChainError,
    "not-an-image": NotAnImage,
}

#: Files each kind of image must have for every process it lists.  A PRE_DUMP may also
#: hold the layout (``mm-PID.img``, for a staged restore); pre-dumps older than that lack it.
_REQUIRED: dict[ImageKind, tuple[Kind, ...]] = {
    ImageKind.FULL: (kinds.PROCESS, kinds.CORE, kinds.MM, kinds.FDS, kinds.PAGEMAP, kinds.PAGES),
    ImageKind.INCREMENTAL: (kinds.PROCESS, kinds.CORE, kinds.MM, kinds.FDS, kinds.PAGEMAP, kinds.PAGES),
    ImageKind.PRE_DUMP: (kinds.PAGEMAP, kinds.PAGES),
}


@dataclass(frozen=True)
class Problem:
    """One thing wrong, with the file (or directory) it is in."""

    path: str
    problem: str
    category: str = "corrupt"  # "corrupt", "chain" or "not-an-image"

    def __str__(self) -> str:
        return f"{self.path}: {self.problem}"

    def as_error(self) -> ImageError:
        return _ERRORS[self.category](self.path, self.problem)

    @classmethod
    def from_error(cls, exc: ImageError) -> Problem:
        category = "chain" if isinstance(exc, ChainError) else "not-an-image" if isinstance(exc, NotAnImage) else "corrupt"
        return cls(exc.path, exc.problem, category)


@dataclass(frozen=True)
class Report:
    """The result of :func:`verify`: what was checked and every problem found."""

    path: str
    images: tuple[str, ...] = ()      # the chain that was checked, base first
    problems: tuple[Problem, ...] = ()
    files_checked: int = 0
    chunks_checked: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    def raise_first(self) -> None:
        """Raise the first problem as the matching ImageError (for the CLI); no-op when ok."""
        if self.problems:
            raise self.problems[0].as_error()

    def summary(self) -> str:
        """One line when all is well, else one line per problem."""
        return str(self)

    def __str__(self) -> str:
        if self.ok:
            return (
                f"{self.path}: OK ({len(self.images)} image(s) in the chain, "
                f"{self.files_checked} files, {self.chunks_checked} page chunks checked)"
            )
        return "\n".join(str(p) for p in self.problems)


@dataclass
class _Tally:
    problems: list[Problem] = field(default_factory=list)
    files: int = 0
    chunks: int = 0

    def add(self, path: str, problem: str, category: str = "corrupt") -> None:
        self.problems.append(Problem(path, problem, category))


def verify(path: str | os.PathLike[str], *, chain: bool = True) -> Report:
    """Check the image at ``path`` and (with ``chain``) every ancestor; never raises ImageError."""
    path = os.path.abspath(os.fspath(path))
    tally = _Tally()
    try:
        if chain:
            images, chain_error = walk_chain(path, check_sizes=False)
        else:
            images, chain_error = [Image.open(path, check_sizes=False)], None
    except ImageError as exc:
        return Report(path, (), (Problem.from_error(exc),))
    for image in reversed(images):  # newest first: its problems are listed first
        _verify_image(image, tally)
    if chain_error is not None:
        tally.problems.append(Problem.from_error(chain_error))
    elif chain:
        # Does each PARENT page exist further up?  Skipped for owners whose
        # pagemap somewhere in the chain is already reported as broken.
        damaged = {p.path for p in tally.problems}
        for depth in range(len(images) - 1, 0, -1):
            for owner in images[depth].owners():
                name = kinds.PAGEMAP.file_name(owner)
                if any(img.file_path(name) in damaged for img in images[: depth + 1]):
                    continue
                try:
                    resolve_pages(images[: depth + 1], owner)
                except ImageError as exc:
                    tally.problems.append(Problem.from_error(exc))
    return Report(path, tuple(i.path for i in images), tuple(tally.problems), tally.files, tally.chunks)


def verify_image(image: Image) -> list[Problem]:
    """Every problem in the files of one image (its parents are not opened)."""
    tally = _Tally()
    _verify_image(image, tally)
    return tally.problems


def _verify_image(image: Image, tally: _Tally) -> None:
    inv = image.inventory
    inv_path = image.inventory_path
    tally.files += 1
    if len(inv.image_id) != 32 or any(c not in "0123456789abcdef" for c in inv.image_id):
        tally.add(inv_path, f"invalid image id {inv.image_id!r} (expected 32 hex digits)")
    kind = image.kind
    if kind is ImageKind.FULL and image.parent is not None:
        tally.add(inv_path, "a FULL image must not have a parent", "chain")
    if kind is ImageKind.INCREMENTAL and image.parent is None:
        tally.add(inv_path, "an INCREMENTAL image has no parent link", "chain")
    names = [f.name for f in inv.files]
    if len(set(names)) != len(names):
        tally.add(inv_path, "lists a file more than once")
    pids = [p.pid for p in inv.processes]
    if len(set(pids)) != len(pids):
        tally.add(inv_path, "lists a process more than once")

    try:
        present = set(os.listdir(image.path))
    except OSError as exc:
        tally.add(image.path, f"cannot list the directory: {exc.strerror}")
        return
    for name in sorted(present - set(names) - {kinds.INVENTORY.template}):
        tally.add(image.file_path(name), "not listed in inventory.img (left over, or added after the image was written)")

    decoded: dict[str, list[Message]] = {}
    for digest in sorted(image.files.values(), key=lambda d: d.name):
        path = image.file_path(digest.name)
        found = kinds.kind_of_file(digest.name)
        if found is None:
            tally.add(path, "unknown kind of file (its name matches no known kind)")
            continue
        fkind, key = found
        if fkind.scope is Scope.PROCESS and (not key.isdigit() or int(key) not in pids):
            tally.add(path, f"belongs to pid {key}, which is not in the inventory's process list")
        if digest.name not in present:
            tally.add(path, "missing: listed in inventory.img but not in the directory")
            continue
        tally.files += 1
        messages = _check_file(path, fkind, digest.size, digest.sha256, tally)
        if messages is not None:
            decoded[digest.name] = messages

    for pid in (p.pid for p in inv.processes if not p.zombie):  # a zombie has no per-process file
        for req in _REQUIRED[kind]:
            name = req.file_name(pid)
            if name not in image.files:
                tally.add(image.file_path(name), f"missing: a {kind.name} image needs it for pid {pid}")
    _check_cross_refs(image, decoded, tally)

    for name, messages in decoded.items():
        owner = kinds.PAGEMAP.match(name)
        if owner is None:
            continue
        path = image.file_path(name)
        try:
            pm = _pagemap_from(path, messages)
        except ImageError as exc:
            tally.problems.append(Problem.from_error(exc))
            continue
        head = messages[0]
        assert isinstance(head, pagemap_pb2.PagemapHead)
        ok = _check_pagemap(image, path, owner, pm, head, tally)
        if ok:
            _check_chunks(image, pm, tally)


def _check_file(path: str, kind: Kind, size: int, sha256: bytes, tally: _Tally) -> list[Message] | None:
    """Header, size, SHA-256 and (for record files) framing and decoding; None on failure."""
    try:
        with open(path, "rb") as f:
            head = f.read(framing.HEADER_SIZE)
            framing.parse_header(path, head, kind.magic, names=kinds.MAGIC_NAMES)
            actual = os.fstat(f.fileno()).st_size
            if actual != size:
                raise CorruptImage(path, f"size is {actual} bytes, inventory.img says {size} (truncated or extended)")
            f.seek(0)
            if kind.is_records:
                data = f.read()
                if hashlib.sha256(data).digest() != sha256:
                    raise CorruptImage(path, "SHA-256 does not match inventory.img: the file was altered")
                return decode_records(path, kind, framing.split_records(path, data))
            if not sha256 and kind is kinds.PAGES:
                return []  # format 2: no whole-file hash, each chunk is checked by _check_chunks
            sha = hashlib.sha256()
            for block in iter(lambda: f.read(1 << 20), b""):
                sha.update(block)
            if sha.digest() != sha256:
                raise CorruptImage(path, "SHA-256 does not match inventory.img: the file was altered")
            return []
    except ImageError as exc:
        tally.problems.append(Problem.from_error(exc))
    except OSError as exc:
        tally.add(path, f"cannot read: {exc.strerror}")
    return None


def _check_cross_refs(image: Image, decoded: dict[str, list[Message]], tally: _Tally) -> None:
    file_ids: set[int] | None = None
    files_name = kinds.FILES.file_name()
    if files_name in decoded:
        ids = [e.id for e in decoded[files_name] if isinstance(e, files_pb2.FileEntry)]
        file_ids = set(ids)
        if len(file_ids) != len(ids):
            tally.add(image.file_path(files_name), "two open files share one id")
    for proc in image.inventory.processes:
        pid = proc.pid
        name = kinds.PROCESS.file_name(pid)
        if name in decoded:
            msgs = decoded[name]
            if len(msgs) != 1:
                tally.add(image.file_path(name), f"holds {len(msgs)} records, expected exactly 1 ProcessEntry")
            elif isinstance(msgs[0], process_pb2.ProcessEntry) and msgs[0].pid != pid:
                tally.add(image.file_path(name), f"describes pid {msgs[0].pid}, not {pid}")
        name = kinds.CORE.file_name(pid)
        if name in decoded:
            tids = [c.tid for c in decoded[name] if isinstance(c, core_pb2.ThreadCore)]
            if tids != list(proc.threads):
                tally.add(image.file_path(name), f"threads {tids} differ from the inventory's {list(proc.threads)}")
        name = kinds.FDS.file_name(pid)
        if name in decoded:
            fds = [e for e in decoded[name] if isinstance(e, files_pb2.FdEntry)]
            if fds and file_ids is None:
                tally.add(image.file_path(name), f"refers to open files, but the image has no {files_name}")
            elif file_ids is not None:
                for e in fds:
                    if e.file_id not in file_ids:
                        tally.add(image.file_path(name), f"fd {e.fd} refers to file id {e.file_id}, which {files_name} lacks")


def _check_pagemap(
    image: Image, path: str, owner: str, pm: Pagemap, head: pagemap_pb2.PagemapHead, tally: _Tally
) -> bool:
    """Structure of one pagemap; True when the chunk table can be trusted for reading."""
    before = len(tally.problems)
    ps = image.page_size
    if pm.owner != owner:
        tally.add(path, f"head names owner {pm.owner!r}, the file name {owner!r}")
    expected_pages = kinds.PAGES.file_name(owner)
    if pm.pages_file != expected_pages:
        tally.add(path, f"names page data file {pm.pages_file!r}, expected {expected_pages!r}")
    if pm.page_size != ps:
        tally.add(path, f"page size {pm.page_size} differs from the inventory's {ps}")
    if pm.chunk_size <= 0 or pm.chunk_size % ps:
        tally.add(path, f"chunk size {pm.chunk_size} is not a positive multiple of the page size {ps}")
    if len(tally.problems) != before:
        return False

    end = 0
    stream = 0
    for i, r in enumerate(pm.ranges):
        where = f"range {i} ({r.vaddr:#x}, {r.nr_pages} pages)"
        if r.vaddr % ps:
            tally.add(path, f"{where}: address not page aligned")
        if r.nr_pages <= 0:
            tally.add(path, f"{where}: empty range")
        if r.vaddr < end:
            tally.add(path, f"{where}: not sorted or overlaps the previous range (which ends at {end:#x})")
        end = max(end, r.vaddr + r.nr_pages * ps)
        if end > 1 << 64:
            tally.add(path, f"{where}: runs past the end of the address space")
        if r.state is PageState.HERE:
            # Gaps are allowed (bytes of zero pages a dumper read into its frame); going back is not.
            if r.data_offset < stream or r.data_offset % ps:
                tally.add(path, f"{where}: page data at stream offset {r.data_offset:#x}, "
                                f"expected a page-aligned offset from {stream:#x} on")
            stream = max(stream, r.data_offset) + r.nr_pages * ps
        elif r.state is PageState.PARENT and image.parent is None:
            tally.add(path, f"{where}: marked PARENT but the image has no parent", "chain")
    counts = (pm.count(PageState.HERE), pm.count(PageState.PARENT), pm.count(PageState.ZERO))
    recorded = (head.pages_here, head.pages_parent, head.pages_zero)
    if counts != recorded:
        tally.add(
            path,
            "page totals in the head (here/parent/zero %d/%d/%d) differ from the ranges (%d/%d/%d)" % (*recorded, *counts),
        )

    pages_path = image.file_path(pm.pages_file)
    pages_digest = image.files.get(pm.pages_file)
    if pages_digest is None:
        tally.add(pages_path, f"missing: named by {os.path.basename(path)} but not listed in inventory.img")
        return False
    offset = framing.HEADER_SIZE
    data = 0
    for i, c in enumerate(pm.chunks):
        where = f"chunk {i}"
        if c.offset != offset:
            tally.add(path, f"{where}: at file offset {c.offset:#x}, expected {offset:#x} (chunks must be back to back)")
        if c.data_offset != data:
            tally.add(path, f"{where}: covers stream offset {c.data_offset:#x}, expected {data:#x}")
        if c.raw_length <= 0 or c.raw_length % ps or c.raw_length > pm.chunk_size:
            tally.add(path, f"{where}: raw length {c.raw_length} is not a multiple of {ps} up to the chunk size {pm.chunk_size}")
        offset = c.offset + c.length
        data = c.data_offset + c.raw_length
    if data < stream:
        tally.add(path, f"chunks hold {data:#x} bytes of page data, the HERE ranges need {stream:#x}")
    if offset != pages_digest.size:
        tally.add(pages_path, f"size is {pages_digest.size} bytes in inventory.img, the chunk table ends at {offset}")
    return len(tally.problems) == before


def _check_chunks(image: Image, pm: Pagemap, tally: _Tally) -> None:
    """Read every chunk: CRC-32 of the stored bytes, zstd frame checksum, size."""
    digest = image.files[pm.pages_file]
    try:
        reader = ChunkReader(image.file_path(pm.pages_file), pm, digest.size)
    except ImageError:
        return  # the file check already reported it
    with reader:
        for index in range(len(pm.chunks)):
            tally.chunks += 1
            try:
                reader.load(index)
            except ImageError as exc:
                tally.problems.append(Problem.from_error(exc))
