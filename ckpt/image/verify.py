"""The one validator of images: ``ckpt verify``, and what ``restore`` checks before it creates a process.

:func:`check_chain` makes every structural check of an image and of its parent
chain; both users run it.  :func:`verify` (``ckpt verify``) also reads every
page chunk and lists every problem, one line each naming the file, instead of
stopping at the first, so a user sees the whole damage at once
(``Report.raise_first()`` turns the first into the matching ``ImageError``,
exit code 2).  :func:`validated_chain` is what restore opens an image with: the
same checks without reading page data (restore checks each chunk as it reads
it), before anything is created, the first problem raised (exit 2).  Checked,
per image:

* inventory.img: magic, kind, format version, end-marker checksum, image id,
  page size, pids and tids in the kernel's range, the leader first, tracked
  address ranges sane, enum values known;
* every listed file: a regular file (never followed through a symbolic link),
  header (magic of the kind its name says, version), size and SHA-256 as
  recorded, end marker; what decoding it costs is bounded before it is decoded
  (:mod:`ckpt.image.bounds`), alone and with the image's other files; every
  record decodes and holds only enum values this ckpt knows;
* no unlisted files; the files a FULL/INCREMENTAL/PRE_DUMP image needs;
* cross references: per-process files of listed pids, thread ids, fd → file ids;
* VMAs: start below end, page aligned, below the user address limit
  (``[vsyscall]``, the kernel's fixed page, is the one VMA above it, and only
  there), sorted, not overlapping, a kind, known protection bits;
* pagemaps: ranges aligned, sorted, not overlapping, not empty, inside the
  process's VMAs (when the image has them), totals as in the head, HERE data in
  stream order and covered by the chunk table; chunks back to back in the pages
  file, each no larger than the chunk size (≤ 16 MiB) and what its codec can
  store; with ``verify``, every chunk's CRC-32, zstd frame and size;
* the chain: each parent present, with the recorded id, no loop, at most
  ``MAX_CHAIN_LENGTH`` images, and every PARENT page of an image covered by its
  parent's pagemap (by induction, found further up).

A restore that opens the same images again (a staged restore opens the chain at
every stage) does not check them twice: an image whose checks passed is
remembered by its path and the SHA-256 of its inventory, which pins the
content of every record file it lists.
"""

from __future__ import annotations

import array
import bisect
import hashlib
import os
from collections import OrderedDict
from collections.abc import Sequence
from itertools import compress, islice, repeat
from operator import add, and_, le, mul, sub
from dataclasses import dataclass, field

from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor
from google.protobuf.message import Message

from ckpt.errors import ChainError, CorruptImage, ImageError, NotAnImage
from ckpt.image import bounds, framing, kinds, sealing, signing
from ckpt.image.chain import walk_chain
from ckpt.image.kinds import Kind, Scope
from ckpt.image.pb import core_pb2, digests_pb2, files_pb2, mm_pb2, pagemap_pb2, process_pb2
from ckpt.image.reader import ChunkReader, Image, decode_pagemap, zstd_bound
from ckpt.image.records import Codec, FileDigest, ImageKind, Pagemap, PageState
from ckpt.kernel.arch_x86_64 import PAGE_SIZE, TASK_SIZE_MAX

#: Bound of a recorded clock or time namespace offset, in ns (under the kernel's KTIME_MAX / 2).
_CLOCK_LIMIT = 1 << 62

__all__ = ["Problem", "Report", "verify", "verify_image", "check_chain", "validated_chain",
           "PID_MAX_LIMIT", "VSYSCALL_START"]

#: The kernel's PID_MAX_LIMIT on 64-bit (include/linux/threads.h): no pid or tid is larger.
PID_MAX_LIMIT = 1 << 22
#: The fixed [vsyscall] page (arch/x86/include/uapi/asm/vsyscall.h), above the user address limit.
VSYSCALL_START = 0xFFFFFFFFFF600000
#: Problems listed per file before the rest are only counted.
_MAX_PROBLEMS_PER_FILE = 20
#: Images remembered as checked (see the module docstring).
_MEMO_SIZE = 256

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
#: VMAs the kernel makes, whose pages no image stores.
_KERNEL_KINDS = frozenset({mm_pb2.Vma.VDSO, mm_pb2.Vma.VVAR, mm_pb2.Vma.VVAR_VCLOCK, mm_pb2.Vma.VSYSCALL})
_PROT_BITS = 0x7  # PROT_READ | PROT_WRITE | PROT_EXEC


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
    per_file: dict[str, int] = field(default_factory=dict)

    def add(self, path: str, problem: str, category: str = "corrupt") -> None:
        n = self.per_file[path] = self.per_file.get(path, 0) + 1
        if n <= _MAX_PROBLEMS_PER_FILE:
            self.problems.append(Problem(path, problem, category))

    def error(self, exc: ImageError) -> None:
        p = Problem.from_error(exc)
        self.add(p.path, p.problem, p.category)

    def close(self) -> None:
        """One line for the problems beyond the first few of a file."""
        for path, n in self.per_file.items():
            if n > _MAX_PROBLEMS_PER_FILE:
                self.problems.append(Problem(path, f"{n - _MAX_PROBLEMS_PER_FILE} more problems not listed"))
        self.per_file = {}


# -- entry points -----------------------------------------------------------------------------


def verify(path: str | os.PathLike[str], *, chain: bool = True) -> Report:
    """Check the image at ``path`` and (with ``chain``) every ancestor, page chunks too; never raises ImageError."""
    path = os.path.abspath(os.fspath(path))
    try:
        if chain:
            images, chain_error = walk_chain(path, check_sizes=False)
        else:
            images, chain_error = [Image.open(path, check_sizes=False)], None
    except ImageError as exc:
        return Report(path, (), (Problem.from_error(exc),))
    tally = _Tally()
    per_image = check_chain(images, read_chunks=True, tally=tally, parents=chain and chain_error is None)
    problems = [p for image_problems in reversed(per_image) for p in image_problems]  # newest first
    if chain_error is not None:
        problems.append(Problem.from_error(chain_error))
    return Report(path, tuple(i.path for i in images), tuple(problems), tally.files, tally.chunks)


def verify_image(image: Image) -> list[Problem]:
    """Every problem in the files of one image, page chunks too (its parents are not opened)."""
    return check_chain([image], read_chunks=True, parents=False)[0]


def validated_chain(path: str | os.PathLike[str]) -> list[Image]:
    """[base, ..., newest] of the image at ``path``, every structural check passed; else the first problem.

    What restore opens an image with, before it creates anything: the checks of
    :func:`verify` but the reading of page data.  Raises NotAnImage, CorruptImage
    or ChainError (exit code 2).
    """
    images, error = walk_chain(path)
    if error is not None:
        raise error
    todo = [i for i, image in enumerate(images) if _memo_key(image) not in _CHECKED]
    if todo:
        per_image = check_chain(images, read_chunks=False, only=todo[0])
        for index, problems in enumerate(per_image):
            if problems:
                raise problems[0].as_error()
            if index >= todo[0]:
                _remember(images[index])
    return images


def check_chain(images: Sequence[Image], *, read_chunks: bool, tally: _Tally | None = None, parents: bool = True,
                only: int = 0) -> list[list[Problem]]:
    """The problems of each image of a chain (base first), one list per image.

    ``parents``: check each image's PARENT pages against its parent's pagemap
    (the chain must be complete).  ``only``: skip the own files of the images
    before this index (checked already); their pagemaps still serve their
    children's check.
    """
    tally = tally if tally is not None else _Tally()
    out: list[list[Problem]] = []
    pagemaps: dict[str, Pagemap] | None = None  # the previous image's pagemaps, by owner (its children's check)
    for index, image in enumerate(images):
        parent = images[index - 1] if parents and index > 0 else None
        if index < only:
            out.append([])
            pagemaps = None
            continue
        if parent is not None and pagemaps is None:
            pagemaps = _pagemaps_of(parent)
        start = len(tally.problems)
        pagemaps = _ImageCheck(image, tally, read_chunks, parent, pagemaps if parent is not None else None).run()
        tally.close()
        out.append(tally.problems[start:])
        if out[-1]:
            pagemaps = None  # a damaged image is no yardstick for its child
    return out


_CHECKED: OrderedDict[tuple[str, bytes], None] = OrderedDict()


def _memo_key(image: Image) -> tuple[str, bytes]:
    return os.path.realpath(image.path), image.inventory_sha256


def _remember(image: Image) -> None:
    if not image.inventory_sha256:
        return
    _CHECKED[_memo_key(image)] = None
    _CHECKED.move_to_end(_memo_key(image))
    while len(_CHECKED) > _MEMO_SIZE:
        _CHECKED.popitem(last=False)


# -- one image ---------------------------------------------------------------------------------


class _ImageCheck:
    """The checks of one image's own files, and of its PARENT pages against its parent's pagemaps."""

    def __init__(self, image: Image, tally: _Tally, read_chunks: bool, parent: Image | None,
                 parent_pagemaps: dict[str, Pagemap] | None) -> None:
        self.image = image
        self.tally = tally
        self.read_chunks = read_chunks
        self.parent = parent
        self.parent_pagemaps = parent_pagemaps
        self.ps = image.page_size
        self.pids = [p.pid for p in image.inventory.processes]
        self.spans: dict[int, array.array] = {}  # pid -> its VMAs' merged [start, end) pairs (no kernel areas)
        self.pagemaps: dict[str, Pagemap] = {}  # owner -> its pagemap, for the child's check
        self.file_ids: set[int] | None = None
        self.fd_refs: dict[str, list[tuple[int, int]]] = {}  # fds file -> (fd, file id)
        self.cost = 0
        self._decoded: Pagemap | None = None  # the pagemap _read decoded last

    def add(self, path: str, problem: str, category: str = "corrupt") -> None:
        self.tally.add(path, problem, category)

    def run(self) -> dict[str, Pagemap] | None:
        """Check; return the pagemaps by owner (None when one could not be read)."""
        image = self.image
        self.tally.files += 1
        if image.page_size != PAGE_SIZE:  # every other number of the image counts in its pages
            self.add(image.inventory_path, f"page size {image.page_size}, this machine's is {PAGE_SIZE}")
            return None
        self._inventory()
        try:
            present = set(os.listdir(image.path))
        except OSError as exc:
            self.add(image.path, f"cannot list the directory: {exc.strerror}")
            return None
        names = {f.name for f in image.inventory.files}
        for name in sorted(present - names - {kinds.INVENTORY.template, signing.SIGNATURE_FILE, sealing.MAC_FILE}):
            self.add(image.file_path(name), "not listed in inventory.img (left over, or added after the image was written)")
        complete = True
        order = {k.name: i for i, k in enumerate(kinds.KINDS)}
        for digest in sorted(image.files.values(), key=lambda d: (order[_kind_name(d.name)], d.name)):
            complete &= self._file(digest, digest.name in present)
        for pid in (p.pid for p in image.inventory.processes if not p.zombie):  # a zombie has no per-process file
            for req in _REQUIRED[image.kind]:
                if _pid_ok(pid) and (name := req.file_name(pid)) not in image.files:
                    self.add(image.file_path(name), f"missing: a {image.kind.name} image needs it for pid {pid}")
        self._fd_refs()
        if self.cost > bounds.MAX_IMAGE_DECODE_COST:
            self.add(image.inventory_path, f"its files would take ~{self.cost >> 20} MiB to decode together, more than "
                                           f"the {bounds.MAX_IMAGE_DECODE_COST >> 20} MiB this ckpt allows for one image")
        return self.pagemaps if complete else None

    # -- inventory.img --------------------------------------------------------------------------

    def _inventory(self) -> None:
        image, inv, path = self.image, self.image.inventory, self.image.inventory_path
        if len(inv.image_id) != 32 or any(c not in "0123456789abcdef" for c in inv.image_id):
            self.add(path, f"invalid image id {inv.image_id!r} (expected 32 hex digits)")
        if image.kind is ImageKind.FULL and image.parent is not None:
            self.add(path, "a FULL image must not have a parent", "chain")
        if image.kind is ImageKind.INCREMENTAL and image.parent is None:
            self.add(path, "an INCREMENTAL image has no parent link", "chain")
        names = [f.name for f in inv.files]
        if len(set(names)) != len(names):
            self.add(path, "lists a file more than once")
        if len(set(self.pids)) != len(self.pids):
            self.add(path, "lists a process more than once")
        bad = _unknown_enum(inv)
        if bad:
            self.add(path, bad)
        if inv.HasField("clocks"):
            c = inv.clocks  # what a time namespace can show (the kernel keeps its clocks below KTIME_MAX / 2)
            if not (0 <= c.monotonic_ns < _CLOCK_LIMIT and 0 <= c.boottime_ns < _CLOCK_LIMIT
                    and abs(c.monotonic_offset_ns) < _CLOCK_LIMIT and abs(c.boottime_offset_ns) < _CLOCK_LIMIT):
                self.add(path, "clocks out of range (CLOCK_MONOTONIC and CLOCK_BOOTTIME are in [0, 2**62) ns)")
        for p in inv.processes:
            ids = [("pid", p.pid), ("ppid", p.ppid), ("pgid", p.pgid), ("sid", p.sid)]
            wrong = next((f"{name} {value}" for name, value in ids if not 0 <= value <= PID_MAX_LIMIT), None)
            if wrong is not None or p.pid == 0:
                self.add(path, f"process {p.pid}: invalid {wrong or 'pid 0'} (pids are 1..{PID_MAX_LIMIT})")
                continue
            tids = list(p.threads)
            if p.zombie and tids:
                self.add(path, f"process {p.pid}: a zombie with threads {tids[:4]}")
            elif not p.zombie and (not tids or tids[0] != p.pid):
                self.add(path, f"process {p.pid}: its thread list does not start with the leader {p.pid}")
            elif any(not _pid_ok(t) for t in tids) or len(set(tids)) != len(tids):
                self.add(path, f"process {p.pid}: invalid or repeated thread ids")
            if p.HasField("tracking"):
                for what in ("include", "exclude"):
                    for r in getattr(p.tracking, what):
                        if not (r.start < r.end <= TASK_SIZE_MAX and r.start % self.ps == 0 and r.end % self.ps == 0):
                            self.add(path, f"process {p.pid}: tracked range {what} {r.start:#x}-{r.end:#x} is not "
                                           "a page-aligned range of user addresses")
                            break

    # -- the files ------------------------------------------------------------------------------

    def _file(self, digest: FileDigest, present: bool) -> bool:
        """Check one listed file; False when a pagemap of the image could not be read."""
        image = self.image
        path = image.file_path(digest.name)
        found = kinds.kind_of_file(digest.name)
        if found is None:
            self.add(path, "unknown kind of file (its name matches no known kind)")
            return True
        kind, key = found
        if kind.scope is Scope.PROCESS and (not key.isdigit() or int(key) not in self.pids):
            self.add(path, f"belongs to pid {key}, which is not in the inventory's process list")
        if not present:
            self.add(path, "missing: listed in inventory.img but not in the directory")
            return kind is not kinds.PAGEMAP
        self.tally.files += 1
        messages = self._read(path, kind, digest)
        if messages is None:
            return kind is not kinds.PAGEMAP
        if not kind.is_records:
            return True
        bad = next((f"record {i} ({type(m).__name__}): {b}" for i, m in enumerate(messages) if (b := _unknown_enum(m))),
                   None)
        if bad:
            self.add(path, bad)
            return kind is not kinds.PAGEMAP
        check = _KIND_CHECKS.get(kind.name)
        if check is None:
            return True
        return check(self, path, key, messages) is not False

    def _read(self, path: str, kind: Kind, digest: FileDigest) -> list[Message] | None:
        """Header, size, SHA-256 and (for record files) bounded decoding; None on failure."""
        try:
            if kind is kinds.PAGEMAP:  # decoded column by column (decode_pagemap)
                pm, head, cost = decode_pagemap(path, Image.payloads(path, kind, digest))
                self.cost += cost.bytes
                self._decoded = pm
                return [head]
            if kind.is_records:
                messages, cost = Image.decode_file(path, kind, digest)
                self.cost += cost.bytes
                return messages
            fd = framing.open_image_file(path)
            try:
                framing.parse_header(path, os.pread(fd, framing.HEADER_SIZE, 0), kind.magic, names=kinds.MAGIC_NAMES)
                actual = os.fstat(fd).st_size
                if actual != digest.size:
                    raise CorruptImage(path, f"size is {actual} bytes, inventory.img says {digest.size} (truncated or extended)")
                if digest.sha256 and self.read_chunks:  # format 1 hashed the pages file too
                    sha = hashlib.sha256()
                    for offset in range(0, actual, 1 << 20):
                        sha.update(os.pread(fd, min(1 << 20, actual - offset), offset))
                    if sha.digest() != digest.sha256:
                        raise CorruptImage(path, "SHA-256 does not match inventory.img: the file was altered")
            finally:
                os.close(fd)
            return []
        except ImageError as exc:
            self.tally.error(exc)
        except FileNotFoundError:
            self.add(path, "missing: listed in inventory.img but not in the directory")
        except OSError as exc:
            self.add(path, f"cannot read: {exc.strerror}")
        return None

    def _process(self, path: str, key: str, messages: list[Message]) -> None:
        if len(messages) != 1:
            self.add(path, f"holds {len(messages)} records, expected exactly 1 ProcessEntry")
        elif isinstance(messages[0], process_pb2.ProcessEntry) and messages[0].pid != int(key):
            self.add(path, f"describes pid {messages[0].pid}, not {key}")

    def _core(self, path: str, key: str, messages: list[Message]) -> None:
        tids = [c.tid for c in messages if isinstance(c, core_pb2.ThreadCore)]
        ref = next((p for p in self.image.inventory.processes if str(p.pid) == key), None)
        if ref is not None and tids != list(ref.threads):
            self.add(path, f"threads {tids[:8]} differ from the inventory's {list(ref.threads)[:8]}")

    def _mm(self, path: str, key: str, messages: list[Message]) -> None:
        spans = array.array("Q")
        prev_end = 0
        for index, v in enumerate(messages[1:]):
            assert isinstance(v, mm_pb2.Vma)
            problem = _vma_problem(v, prev_end, self.ps)
            if problem:
                kind = mm_pb2.Vma.Kind.DESCRIPTOR.values_by_number[v.kind].name
                self.add(path, f"VMA {index} ({v.start:#x}-{v.end:#x}, {kind}): {problem}")
                continue
            prev_end = v.end
            if v.kind in _KERNEL_KINDS:
                continue
            if spans and spans[-1] == v.start:
                spans[-1] = v.end
            else:
                spans.extend((v.start, v.end))
        if key.isdigit():
            self.spans[int(key)] = spans

    def _fds(self, path: str, key: str, messages: list[Message]) -> None:
        fds = [(e.fd, e.file_id) for e in messages if isinstance(e, files_pb2.FdEntry)]
        numbers = [fd for fd, _ in fds]
        if any(fd < 0 for fd in numbers) or len(set(numbers)) != len(numbers):
            self.add(path, "holds a negative or repeated descriptor number")
        self.fd_refs[path] = fds

    def _files(self, path: str, key: str, messages: list[Message]) -> None:
        ids = [e.id for e in messages if isinstance(e, files_pb2.FileEntry)]
        self.file_ids = set(ids)
        if len(self.file_ids) != len(ids):
            self.add(path, "two open files share one id")

    def _fd_refs(self) -> None:
        files_name = kinds.FILES.file_name()
        if self.file_ids is None and files_name in self.image.files:
            return  # files.img is listed but unreadable: reported already
        for path, fds in self.fd_refs.items():
            if fds and self.file_ids is None:
                self.add(path, f"refers to open files, but the image has no {files_name}")
            elif self.file_ids is not None:
                for fd, file_id in fds:
                    if file_id not in self.file_ids:
                        self.add(path, f"fd {fd} refers to file id {file_id}, which {files_name} lacks")

    def _digests(self, path: str, key: str, messages: list[Message]) -> None:
        head = messages[0]
        assert isinstance(head, digests_pb2.DigestHead)
        if not 1 <= head.digest_size <= 64 or head.page_size != self.ps:
            self.add(path, f"digest size {head.digest_size} / page size {head.page_size} out of range")
            return
        end = 0
        for index, r in enumerate(messages[1:]):
            assert isinstance(r, digests_pb2.PageDigests)
            if r.vaddr % self.ps or r.vaddr < end or r.nr_pages < 1 or r.vaddr + r.nr_pages * self.ps > 1 << 64:
                self.add(path, f"record {index + 1} ({r.vaddr:#x}, {r.nr_pages} pages): unaligned, empty, "
                               "unsorted or overlapping")
                return
            if len(r.digests) != r.nr_pages * head.digest_size:
                self.add(path, f"record {index + 1} ({r.vaddr:#x}): {len(r.digests)} bytes of digests for "
                               f"{r.nr_pages} pages of {head.digest_size}")
                return
            end = r.vaddr + r.nr_pages * self.ps

    # -- pagemaps -------------------------------------------------------------------------------

    def _pagemap(self, path: str, owner: str, messages: list[Message]) -> bool:
        """Check one pagemap (decoded by :meth:`_read`) and its chunks; False when it cannot be read at all."""
        pm, self._decoded = self._decoded, None
        head = messages[0]
        assert isinstance(head, pagemap_pb2.PagemapHead) and pm is not None
        recorded = (head.pages_here, head.pages_parent, head.pages_zero)
        before = len(self.tally.problems)
        if not self._pagemap_head(path, owner, pm):
            return False
        stream = self._ranges(path, owner, pm)
        counts = (pm.count(PageState.HERE), pm.count(PageState.PARENT), pm.count(PageState.ZERO))
        if counts != recorded:
            self.add(path, "page totals in the head (here/parent/zero %d/%d/%d) differ from the ranges (%d/%d/%d)"
                           % (*recorded, *counts))
        self._parent_pages(path, owner, pm)
        self.pagemaps[owner] = pm
        chunks_ok = self._chunk_table(path, pm, stream)
        if chunks_ok and len(self.tally.problems) == before and self.read_chunks:
            self._read_chunks(pm)
        return True

    def _pagemap_head(self, path: str, owner: str, pm: Pagemap) -> bool:
        ps = self.ps
        ok = True
        if pm.owner != owner:
            self.add(path, f"head names owner {pm.owner!r}, the file name {owner!r}")
            ok = False
        expected_pages = kinds.PAGES.file_name(owner)
        if pm.pages_file != expected_pages:
            self.add(path, f"names page data file {pm.pages_file!r}, expected {expected_pages!r}")
            ok = False
        if pm.page_size != ps:
            self.add(path, f"page size {pm.page_size} differs from the inventory's {ps}")
            ok = False
        if pm.chunk_size <= 0 or pm.chunk_size % ps or pm.chunk_size > bounds.MAX_CHUNK_SIZE:
            self.add(path, f"chunk size {pm.chunk_size} is not a positive multiple of the page size {ps} "
                           f"up to {bounds.MAX_CHUNK_SIZE}")
            ok = False
        return ok

    def _ranges(self, path: str, owner: str, pm: Pagemap) -> int:
        """Check the ranges; return the page-data stream they need.

        :func:`_ranges_pass` checks a good pagemap at C speed; only when it
        fails does :func:`_range_problems` go range by range to say what is wrong.
        """
        spans = self.spans.get(int(owner)) if owner.isdigit() else None
        limit = TASK_SIZE_MAX if owner.isdigit() else 1 << 64
        has_parent = self.image.parent is not None
        stream = _ranges_pass(pm, spans, limit, has_parent)
        if stream is not None:
            return stream
        problems, stream = _range_problems(pm, spans, limit, has_parent)
        for text, category in problems:
            self.add(path, text, category)
        return stream

    def _parent_pages(self, path: str, owner: str, pm: Pagemap) -> None:
        """Every PARENT page must be in the parent's pagemap (in any state: the lookup goes on from there)."""
        if self.parent is None or self.parent_pagemaps is None or int(PageState.PARENT) not in pm.states:
            return
        up = self.parent_pagemaps.get(owner)
        if up is None:
            self.add(path, f"pages are marked PARENT but the parent {self.parent.path} has no "
                           f"{kinds.PAGEMAP.file_name(owner)}", "chain")
            return
        ps, want = self.ps, int(PageState.PARENT)
        starts, counts = up.vaddrs, up.nr_pages  # sorted, disjoint (the parent passed its checks)
        j, total = 0, len(starts)
        for vaddr, n, state in zip(pm.vaddrs, pm.nr_pages, pm.states):
            if state != want:
                continue
            pos, stop = vaddr, vaddr + n * ps
            while pos < stop:
                while j < total and starts[j] + counts[j] * ps <= pos:
                    j += 1
                if j >= total or starts[j] > pos:
                    gap_end = stop if j >= total else min(stop, starts[j])
                    self.add(path, f"pages {pos:#x}-{gap_end:#x} are marked PARENT but the parent "
                                   f"{self.parent.path} does not have them", "chain")
                    return
                pos = starts[j] + counts[j] * ps

    def _chunk_table(self, path: str, pm: Pagemap, stream: int) -> bool:
        """The chunk table against the pages file's recorded size; True when the chunks can be read."""
        ps = self.ps
        pages_path = self.image.file_path(pm.pages_file)
        pages_digest = self.image.files.get(pm.pages_file)
        if pages_digest is None:
            self.add(pages_path, f"missing: named by {os.path.basename(path)} but not listed in inventory.img")
            return False
        before = len(self.tally.problems)
        offset, data = framing.HEADER_SIZE, 0
        for i, c in enumerate(pm.chunks):
            where = f"chunk {i}"
            if c.offset != offset:
                self.add(path, f"{where}: at file offset {c.offset:#x}, expected {offset:#x} (chunks must be back to back)")
            if c.data_offset != data:
                self.add(path, f"{where}: covers stream offset {c.data_offset:#x}, expected {data:#x}")
            if c.raw_length <= 0 or c.raw_length % ps or c.raw_length > pm.chunk_size:
                self.add(path, f"{where}: raw length {c.raw_length} is not a multiple of {ps} up to the chunk size "
                               f"{pm.chunk_size}")
            stored_max = c.raw_length if c.codec is Codec.NONE else zstd_bound(c.raw_length)
            if self.image.inventory.HasField("encryption"):
                stored_max += sealing.TAG_SIZE
            if not 0 < c.length <= stored_max:
                self.add(path, f"{where}: {c.length} bytes stored for {c.raw_length} raw, which {c.codec.name} "
                               "never stores")
            if len(self.tally.problems) != before:
                return False
            offset = c.offset + c.length
            data = c.data_offset + c.raw_length
        if data < stream:
            self.add(path, f"chunks hold {data:#x} bytes of page data, the HERE ranges need {stream:#x}")
        if offset != pages_digest.size:
            self.add(pages_path, f"size is {pages_digest.size} bytes in inventory.img, the chunk table ends at {offset}")
        return len(self.tally.problems) == before

    def _read_chunks(self, pm: Pagemap) -> None:
        """Read every chunk: CRC-32 of the stored bytes, zstd frame, size."""
        digest = self.image.files[pm.pages_file]
        try:
            reader = ChunkReader(self.image.file_path(pm.pages_file), pm, digest.size)
        except ImageError:
            return  # the file check already reported it
        with reader:
            for index in range(len(pm.chunks)):
                self.tally.chunks += 1
                try:
                    reader.load(index)
                except ImageError as exc:
                    self.tally.error(exc)


_KIND_CHECKS = {
    kinds.PROCESS.name: _ImageCheck._process,
    kinds.CORE.name: _ImageCheck._core,
    kinds.MM.name: _ImageCheck._mm,
    kinds.FDS.name: _ImageCheck._fds,
    kinds.FILES.name: _ImageCheck._files,
    kinds.PAGEMAP.name: _ImageCheck._pagemap,
    kinds.DIGESTS.name: _ImageCheck._digests,
}


def _kind_name(file_name: str) -> str:
    found = kinds.kind_of_file(file_name)
    return found[0].name if found is not None else kinds.KINDS[-1].name


def _pid_ok(pid: int) -> bool:
    return 0 < pid <= PID_MAX_LIMIT


def _vma_problem(v: mm_pb2.Vma, prev_end: int, ps: int) -> str | None:
    """What is wrong with one VMA after one ending at ``prev_end``, or None."""
    if v.start >= v.end:
        return "start is not below end"
    if v.start % ps or v.end % ps:
        return "not page aligned"
    if v.kind == mm_pb2.Vma.VSYSCALL:
        if (v.start, v.end) != (VSYSCALL_START, VSYSCALL_START + ps):
            return f"[vsyscall] is the page at {VSYSCALL_START:#x}"
    elif v.end > TASK_SIZE_MAX:
        return f"ends above the user address limit {TASK_SIZE_MAX:#x}"
    if v.start < prev_end:
        return f"not sorted, or overlaps the previous VMA (which ends at {prev_end:#x})"
    if v.kind == mm_pb2.Vma.KIND_UNSPECIFIED:
        return "has no kind"
    if v.prot & ~_PROT_BITS:
        return f"unknown protection bits {v.prot:#x}"
    if v.pgoff % ps:
        return f"file offset {v.pgoff:#x} not page aligned"
    return None


def _range_problems(pm: Pagemap, spans: array.array | None, limit: int, has_parent: bool
                    ) -> tuple[list[tuple[str, str]], int]:
    """Range by range, what is wrong ([(text, category)]), and the page-data stream the good ranges need."""
    ps = pm.page_size
    here, parent = int(PageState.HERE), int(PageState.PARENT)
    problems: list[tuple[str, str]] = []
    end = stream = span = 0
    for i, (vaddr, n, state, data_offset) in enumerate(zip(pm.vaddrs, pm.nr_pages, pm.states, pm.data_offsets)):
        where = f"range {i} ({vaddr:#x}, {n} pages)"
        stop = vaddr + n * ps
        problem = None
        if vaddr % ps:
            problem = "address not page aligned"
        elif n <= 0:
            problem = "empty range"
        elif vaddr < end:
            problem = f"not sorted or overlaps the previous range (which ends at {end:#x})"
        elif stop > limit:
            problem = f"runs past {limit:#x}, the end of the {'user ' if limit == TASK_SIZE_MAX else ''}address space"
        elif spans is not None:
            while span < len(spans) and spans[span + 1] <= vaddr:
                span += 2
            if span >= len(spans) or spans[span] > vaddr or stop > spans[span + 1]:
                problem = "not inside a VMA of the process (mm file)"
        if problem is not None:  # left out of every later check, so it is reported once
            problems.append((f"{where}: {problem}", "corrupt"))
            continue
        end = stop
        if state == here:
            # Gaps are allowed (bytes of zero pages a dumper read into its frame); going back is not.
            if data_offset < stream or data_offset % ps:
                problems.append((f"{where}: page data at stream offset {data_offset:#x}, expected a page-aligned "
                                 f"offset from {stream:#x} on", "corrupt"))
            stream = max(stream, data_offset) + n * ps
        elif state == parent and not has_parent:
            problems.append((f"{where}: marked PARENT but the image has no parent", "chain"))
    return problems, stream


def _pagemaps_of(image: Image) -> dict[str, Pagemap] | None:
    """The pagemaps of an image checked earlier, by owner; None if one cannot be read."""
    out: dict[str, Pagemap] = {}
    for owner in image.owners():
        try:
            out[owner] = image.pagemap(owner)
        except ImageError:
            return None
    return out


def _ranges_pass(pm: Pagemap, spans: array.array | None, limit: int, has_parent: bool) -> int | None:
    """The page-data stream a pagemap's ranges need when they pass every check of :meth:`_ImageCheck._ranges`,
    else None.  No bytecode runs per range (map, compress and bisect loop in C): ~20 times faster than the loop.
    """
    vaddrs, counts, offsets = pm.vaddrs, pm.nr_pages, pm.data_offsets
    nranges, ps = len(vaddrs), pm.page_size
    if not nranges:
        return 0
    mask = ps - 1
    states = bytes(pm.states)
    if 0 in counts or any(map(and_, vaddrs, repeat(mask))) or (not has_parent and int(PageState.PARENT) in states):
        return None
    try:
        ends = array.array("Q", map(add, vaddrs, map(mul, counts, repeat(ps))))
    except OverflowError:  # past 2^64
        return None
    if not all(map(le, islice(ends, nranges - 1), islice(vaddrs, 1, None))) or ends[-1] > limit:
        return None  # not sorted, overlapping, or past the end
    if spans is not None:  # each range inside the span starting at or before it
        starts, stops = spans[0::2], spans[1::2]
        after = array.array("Q", map(bisect.bisect_right, repeat(starts), vaddrs))
        if 0 in after or not all(map(le, ends, map(stops.__getitem__, map(sub, after, repeat(1))))):
            return None
    here = states.translate(_IS_HERE)
    here_offsets = array.array("Q", compress(offsets, here))
    if not here_offsets:
        return 0
    if any(map(and_, here_offsets, repeat(mask))):
        return None
    try:
        here_ends = array.array("Q", map(add, here_offsets, map(mul, compress(counts, here), repeat(ps))))
    except OverflowError:
        return None
    if not all(map(le, islice(here_ends, len(here_ends) - 1), islice(here_offsets, 1, None))):
        return None  # HERE data not in stream order
    return here_ends[-1]


#: bytes.translate table: 1 for HERE, 0 for every other state.
_IS_HERE = bytes(int(i == PageState.HERE) for i in range(256))


# -- enum values ---------------------------------------------------------------------------------

#: Per message type, the fields that are enums or lead to one.
_ENUM_PLANS: dict[str, list[FieldDescriptor]] = {}


def _enum_plan(desc: Descriptor) -> list[FieldDescriptor]:
    plan = _ENUM_PLANS.get(desc.full_name)
    if plan is not None:
        return plan
    _ENUM_PLANS[desc.full_name] = []  # a recursive type has none while it is being planned
    plan = [f for f in desc.fields if f.enum_type is not None or (f.message_type is not None and _enum_plan(f.message_type))]
    _ENUM_PLANS[desc.full_name] = plan
    return plan


_KNOWN: dict[str, frozenset[int]] = {}


def _known_values(enum_type: EnumDescriptor) -> frozenset[int]:
    known = _KNOWN.get(enum_type.full_name)
    if known is None:
        known = _KNOWN[enum_type.full_name] = frozenset(v.number for v in enum_type.values)
    return known


def _unknown_enum(message: Message) -> str | None:
    """"FIELD holds unknown value N" for the first enum value this ckpt does not know, else None.

    proto3 keeps such values as plain numbers; an older ckpt cannot act on
    what a newer one meant by them, so an image holding one is refused.
    """
    for f in _enum_plan(message.DESCRIPTOR):
        value = getattr(message, f.name)
        if f.enum_type is not None:
            known = _known_values(f.enum_type)
            values = value if f.is_repeated else (value,)
            if not known.issuperset(values):
                bad = next(v for v in values if v not in known)
                return (f"{f.full_name.removeprefix('ckpt.v1.')} holds unknown value {bad} "
                        "(written by a newer ckpt?)")
            continue
        if f.message_type.GetOptions().map_entry:
            continue  # no map of ours holds enums
        if f.is_repeated:
            for element in value:
                found = _unknown_enum(element)
                if found:
                    return found
        elif message.HasField(f.name):
            found = _unknown_enum(value)
            if found:
                return found
    return None
