"""Write the corpus of crafted bad images in ``images/bad/`` (run once; the output is committed).

    .venv/bin/python tests/unit/make_bad_images.py [--force]

Each case is a small image (or a chain of two, ``0`` and ``1``) with one
defect a hostile or broken image can have: a file that is a symbolic link, a
FIFO or ``/dev/zero``; lengths and counts of 2^40; enum values no ckpt wrote;
VMAs that overlap, run backwards or reach kernel addresses; pagemap ranges
that overlap or leave their VMAs; broken parent chains.  Every damaged file is
sealed again (its end marker and the inventory's size and SHA-256 recomputed),
so the defect itself is what a reader meets, not a checksum.
``tests/unit/test_image_hostile.py`` runs ``ckpt verify``, ``show`` and
``restore`` on each and expects exit code 2 and one line naming :attr:`Case.bad`.

A FIFO cannot be committed, and a link to a device is kept out of the
repository (tools that read every file of a checkout would block on it):
those cases (:attr:`Case.runtime`) are committed without the file and
completed by :func:`complete` in the test's copy, as are the cases whose point
is size (a pagemap claiming 2 M ranges is megabytes even when it holds
nothing).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ckpt.image import ImageKind, ImageWriter, ProcessInfo, TrackingInfo, framing, kinds
from ckpt.image.pb import common_pb2, core_pb2, files_pb2, inventory_pb2, mm_pb2, pagemap_pb2, process_pb2
from ckpt.image.reader import read_record_file

REPO = Path(__file__).resolve().parents[2]
CORPUS = REPO / "images" / "bad"
PAGE = 4096
#: The pid of every case: a restore refuses each before it needs the pid.
PID = 31_000
EXE = "/nonexistent/ckpt-bad-image"
FIXED = dict(kernel_release="6.18.0-bad", hostname="bad", boot_id="00000000-0000-4000-8000-00000000bad0",
             created_ns=1_764_000_000_000_000_000)
T40 = 1 << 40


def _page(label: str) -> bytes:
    unit = f"ckpt bad-image page {label}\n".encode()
    return (unit * (PAGE // len(unit) + 1))[:PAGE]


def _vmas() -> list[mm_pb2.Vma]:
    exe = common_pb2.FileIdentity(dev=0x803, ino=131, size=4096, mtime_ns=1_690_000_000_000_000_000, mode=0o100755)
    rw = dict(prot=3, flags=0x22)
    return [
        mm_pb2.Vma(start=0x400000, end=0x401000, prot=5, flags=0x2, kind=mm_pb2.Vma.FILE_PRIVATE, name=EXE, file=exe),
        mm_pb2.Vma(start=0x10000000, end=0x10004000, kind=mm_pb2.Vma.ANON_PRIVATE, **rw),
        mm_pb2.Vma(start=0x10004000, end=0x10005000, prot=0, flags=0x22, kind=mm_pb2.Vma.ANON_PRIVATE),  # a guard
        mm_pb2.Vma(start=0x7FFC00000000, end=0x7FFC00021000, kind=mm_pb2.Vma.STACK, name="[stack]", **rw),
        mm_pb2.Vma(start=0x7FFC000FC000, end=0x7FFC00100000, prot=1, flags=0x22, kind=mm_pb2.Vma.VVAR, name="[vvar]"),
        mm_pb2.Vma(start=0x7FFC00100000, end=0x7FFC00102000, prot=5, flags=0x22, kind=mm_pb2.Vma.VDSO, name="[vdso]"),
        mm_pb2.Vma(start=0xFFFFFFFFFF600000, end=0xFFFFFFFFFF601000, prot=4, flags=0x2, kind=mm_pb2.Vma.VSYSCALL,
                   name="[vsyscall]"),
    ]


def write_base(path: Path, *, image_id: str = "ba" * 16) -> None:
    """A small FULL image of one process, valid in every respect."""
    with ImageWriter(path, kind=ImageKind.FULL, tracking="none", chunk_size=2 * PAGE, image_id=image_id, **FIXED) as w:
        w.write_process(PID, process_pb2.ProcessEntry(pid=PID, ppid=1, pgid=PID, sid=PID, comm="bad", exit_signal=17))
        w.write_threads(PID, [core_pb2.ThreadCore(tid=PID, comm="bad", regs=core_pb2.UserRegsX86_64(rip=0x400100))])
        w.write_mm(PID, mm_pb2.MmEntry(start_code=0x400000, end_code=0x401000, exe_path=EXE), _vmas())
        w.write_fds(PID, [files_pb2.FdEntry(fd=n, file_id=1) for n in range(3)])
        w.write_files([files_pb2.FileEntry(id=1, kind=files_pb2.FileEntry.CHR, path="/dev/null", flags=0o100002)])
        with w.pages(PID) as pw:
            pw.add(0x10000000, _page("a") + _page("b") + bytes(PAGE))  # the zero page is a ZERO range
            pw.add(0x7FFC0001F000, _page("c") + _page("d"))
        w.commit(processes=[ProcessInfo(PID, 1, (PID,), start_time=1, pgid=PID, sid=PID)])


def write_chain(path: Path) -> None:
    """``0``: a PRE_DUMP of the pages; ``1``: an INCREMENTAL whose pages are all in ``0`` but one."""
    path.mkdir()
    info = ProcessInfo(PID, 1, (PID,), start_time=1, pgid=PID, sid=PID, tracking=TrackingInfo("uffd-wp", 1023, 7))
    with ImageWriter(path / "0", kind=ImageKind.PRE_DUMP, tracking="uffd-wp", chunk_size=2 * PAGE,
                     image_id="c0" * 16, **FIXED) as w:
        with w.pages(PID) as pw:
            pw.add(0x10000000, _page("a") + _page("b"))
        w.commit(processes=[info])
    with ImageWriter(path / "1", kind=ImageKind.INCREMENTAL, parent=path / "0", tracking="uffd-wp",
                     chunk_size=2 * PAGE, image_id="c1" * 16, **FIXED) as w:
        w.write_process(PID, process_pb2.ProcessEntry(pid=PID, ppid=1, pgid=PID, sid=PID, comm="bad", exit_signal=17))
        w.write_threads(PID, [core_pb2.ThreadCore(tid=PID, comm="bad", regs=core_pb2.UserRegsX86_64(rip=0x400100))])
        w.write_mm(PID, mm_pb2.MmEntry(start_code=0x400000, end_code=0x401000, exe_path=EXE), _vmas())
        w.write_fds(PID, [])
        with w.pages(PID) as pw:
            pw.add_parent(0x10000000, 2)
            pw.add(0x10002000, _page("e"))
        w.commit(processes=[info])


# -- sealing a damaged file again ---------------------------------------------------------------


def _inventory(d: Path) -> inventory_pb2.Inventory:
    _, messages = read_record_file(str(d / "inventory.img"), kinds.INVENTORY)
    return messages[0]  # type: ignore[return-value]


def write_inventory(d: Path, inv: inventory_pb2.Inventory) -> None:
    (d / "inventory.img").write_bytes(framing.encode_file(kinds.INVENTORY.magic, [inv.SerializeToString()],
                                                          version=inv.format_version))


def reseal_bytes(d: Path, name: str, data: bytes) -> None:
    """Write ``data`` as file ``name`` of image ``d`` and record its new size and SHA-256 in the inventory."""
    (d / name).write_bytes(data)
    inv = _inventory(d)
    for f in inv.files:
        if f.name == name:
            f.size = len(data)
            if f.sha256:
                f.sha256 = hashlib.sha256(data).digest()
    write_inventory(d, inv)


def reseal(d: Path, name: str, payloads: list[bytes]) -> None:
    """File ``name`` holding these record payloads, framed and sealed as the writer does."""
    found = kinds.kind_of_file(name)
    assert found is not None
    reseal_bytes(d, name, framing.encode_file(found[0].magic, payloads))


def records(d: Path, name: str) -> list:
    found = kinds.kind_of_file(name)
    assert found is not None
    return read_record_file(str(d / name), found[0])[1]


def edit_records(d: Path, name: str, fn: Callable[[list], None]) -> None:
    messages = records(d, name)
    fn(messages)
    reseal(d, name, [m.SerializeToString() for m in messages])


def edit_vmas(fn: Callable[[list[mm_pb2.Vma]], None]) -> Callable[[Path], None]:
    return lambda d: edit_records(d, f"mm-{PID}.img", lambda m: fn(m[1:]))


def edit_pagemap(fn: Callable[[pagemap_pb2.PagemapHead, list[list[int]]], None], *, totals: bool = True,
                 pid: int = PID) -> Callable[[Path], None]:
    """Change a pagemap's head and rows ([vaddr, nr_pages, state, data_offset]); totals follow the rows."""

    def apply(d: Path) -> None:
        def change(messages: list) -> None:
            head = messages[0]
            t = head.ranges
            rows = [list(r) for r in zip(t.vaddr, t.nr_pages, t.state, t.data_offset)]
            fn(head, rows)
            for column, i in (("vaddr", 0), ("nr_pages", 1), ("state", 2), ("data_offset", 3)):
                getattr(t, column)[:] = [r[i] for r in rows]
            if totals:
                head.pages_here, head.pages_parent, head.pages_zero = (
                    sum(r[1] for r in rows if r[2] == s) % (1 << 64) for s in (1, 2, 3))

        edit_records(d, f"pagemap-{pid}.img", change)

    return apply


def edit_inventory(fn: Callable[[inventory_pb2.Inventory], None], image: str = ".") -> Callable[[Path], None]:
    def apply(d: Path) -> None:
        inv = _inventory(d / image)
        fn(inv)
        write_inventory(d / image, inv)

    return apply


def _zombie(pid: int) -> Callable[[inventory_pb2.Inventory], None]:
    return lambda inv: inv.processes.add(pid=pid, ppid=PID, pgid=PID, sid=PID, zombie=True, comm="z")


def _record_claiming(d: Path) -> None:
    """mm-PID.img whose first record claims 2^31 - 1 bytes (the file is sealed: only the length lies)."""
    body = framing.pack_header(kinds.MM.magic) + (0x7FFFFFFF).to_bytes(4, "little") + b"\x08\x01"
    reseal_bytes(d, f"mm-{PID}.img", body + framing.pack_trailer(hashlib.sha256(body).digest()))


def _leader_second(d: Path) -> None:
    edit_records(d, f"core-{PID}.img", lambda m: m.insert(0, core_pb2.ThreadCore(tid=PID + 1, comm="bad")))
    edit_inventory(lambda inv: inv.processes[0].threads.__setitem__(slice(None), [PID + 1, PID]))(d)


def _chunk(field: str, value: int) -> Callable[[pagemap_pb2.PagemapHead, list[list[int]]], None]:
    return lambda head, rows: setattr(head.chunks[0], field, value)


# -- the cases --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One bad image: what is wrong, which file the error names, and how it is made."""

    name: str
    bad: str                                   # the file the one line names, relative to the case directory
    words: tuple[str, ...]                     # what that line says
    make: Callable[[Path], None] | None = None  # the damage, applied to a copy of the base image
    chain: bool = False                        # the case is a chain: the image is ``1``
    runtime: str | None = None                 # "fifo", "devzero" or "large": completed in the test's copy

    @property
    def image(self) -> str:
        return "1" if self.chain else "."


_P = f"pagemap-{PID}.img"
_M = f"mm-{PID}.img"
CASES: tuple[Case, ...] = (
    # -- what a file is ---------------------------------------------------------------------------
    Case("inventory-symlink", "inventory.img", ("symbolic link",),
         lambda d: ((d / "inventory.img").unlink(), (d / "inventory.img").symlink_to("/etc/passwd"))),
    Case("mm-symlink", _M, ("symbolic link",), lambda d: ((d / _M).unlink(), (d / _M).symlink_to("/etc/passwd"))),
    Case("inventory-dir", "inventory.img", ("directory",),
         lambda d: ((d / "inventory.img").unlink(), (d / "inventory.img").mkdir(), (d / "inventory.img/.keep").touch())),
    Case("inventory-devzero", "inventory.img", ("symbolic link",), runtime="devzero"),
    Case("pages-devzero", f"pages-{PID}.img", ("symbolic link",), runtime="devzero"),
    Case("inventory-fifo", "inventory.img", ("FIFO",), runtime="fifo"),
    Case("core-fifo", f"core-{PID}.img", ("FIFO",), runtime="fifo"),
    Case("stray-file", "stray.img", ("not listed",), lambda d: (d / "stray.img").write_bytes(b"x")),
    # -- lengths and sizes ------------------------------------------------------------------------
    Case("record-claims-2g", _M, ("record 0 claims 2147483647 bytes",), _record_claiming),
    Case("inventory-size-2^40", f"fds-{PID}.img", ("inventory.img says 1099511627776",),
         edit_inventory(lambda inv: setattr(next(f for f in inv.files if f.name == f"fds-{PID}.img"), "size", T40))),
    Case("truncated-core", f"core-{PID}.img", ("truncated",),
         lambda d: (d / f"core-{PID}.img").write_bytes((d / f"core-{PID}.img").read_bytes()[:-9])),
    Case("chunk-length-2^40", _P, ("chunk 0", "1099511627776 bytes stored"), edit_pagemap(_chunk("length", T40))),
    Case("chunk-raw-2^40", _P, ("chunk 0", "raw length 1099511627776"), edit_pagemap(_chunk("raw_length", T40))),
    Case("chunk-size-2^40", _P, ("chunk size 1099511627776",), edit_pagemap(lambda h, r: setattr(h, "chunk_size", T40))),
    Case("range-2^40-pages", _P, ("range 1", "runs past"), edit_pagemap(lambda h, r: r[1].__setitem__(1, T40))),
    Case("pagemap-2m-ranges", _P, ("2000000", "PageRangeTable"), runtime="large"),
    Case("inventory-1m-processes", "inventory.img", ("1100001", "Inventory.processes"), runtime="large"),
    # -- pagemaps ---------------------------------------------------------------------------------
    Case("pagemap-overlap", _P, ("range 1", "overlaps"), edit_pagemap(lambda h, r: r[1].__setitem__(0, 0x10001000))),
    Case("pagemap-unsorted", _P, ("range 2", "not sorted"),
         edit_pagemap(lambda h, r: r.__setitem__(slice(1, 3), [r[2], r[1]]))),
    Case("pagemap-unaligned", _P, ("range 1", "not page aligned"),
         edit_pagemap(lambda h, r: r[1].__setitem__(0, 0x10002010))),
    Case("pagemap-outside-vma", _P, ("range 1", "not inside a VMA"),
         edit_pagemap(lambda h, r: r[1].__setitem__(0, 0x20000000))),
    Case("pagemap-in-vdso", _P, ("range 2", "not inside a VMA"),
         edit_pagemap(lambda h, r: r[2].__setitem__(0, 0x7FFC00100000))),
    Case("pagemap-empty-range", _P, ("range 1", "empty range"), edit_pagemap(lambda h, r: r[1].__setitem__(1, 0))),
    Case("pagemap-unknown-state", _P, ("state", "unknown value 7"), edit_pagemap(lambda h, r: r[1].__setitem__(2, 7))),
    Case("pagemap-unknown-codec", _P, ("codec", "unknown value 9"), edit_pagemap(_chunk("codec", 9))),
    Case("pagemap-columns-differ", _P, ("columns differ",),
         lambda d: edit_records(d, _P, lambda m: m[0].ranges.data_offset.append(0))),
    Case("pagemap-data-past-chunks", _P, ("the HERE ranges need",),
         edit_pagemap(lambda h, r: r[2].__setitem__(3, 0x100000))),
    Case("pagemap-totals", _P, ("page totals",), edit_pagemap(lambda h, r: setattr(h, "pages_here", 99), totals=False)),
    Case("pagemap-parent-without-parent", _P, ("marked PARENT but the image has no parent",),
         edit_pagemap(lambda h, r: r[1].__setitem__(2, 2))),
    # -- VMAs -------------------------------------------------------------------------------------
    Case("vma-start-after-end", _M, ("VMA 2", "start is not below end"),
         edit_vmas(lambda v: (setattr(v[2], "start", 0x10006000)))),
    Case("vma-overlap", _M, ("VMA 2", "overlaps"), edit_vmas(lambda v: setattr(v[2], "start", 0x10003000))),
    Case("vma-unaligned", _M, ("VMA 2", "not page aligned"), edit_vmas(lambda v: setattr(v[2], "end", 0x10004800))),
    Case("vma-kernel-address", _M, ("VMA 2", "user address limit"),
         edit_vmas(lambda v: (setattr(v[2], "start", 0xFFFF888000000000), setattr(v[2], "end", 0xFFFF888000001000)))),
    Case("vma-vsyscall-moved", _M, ("VMA 6", "[vsyscall]"),
         edit_vmas(lambda v: (setattr(v[6], "start", 0xFFFFFFFFFF500000), setattr(v[6], "end", 0xFFFFFFFFFF501000)))),
    Case("vma-unknown-kind", _M, ("Vma.kind", "unknown value 99"), edit_vmas(lambda v: setattr(v[2], "kind", 99))),
    Case("vma-no-kind", _M, ("VMA 2", "no kind"), edit_vmas(lambda v: setattr(v[2], "kind", 0))),
    Case("vma-prot-bits", _M, ("VMA 2", "protection bits"), edit_vmas(lambda v: setattr(v[2], "prot", 0x10))),
    # -- other records ----------------------------------------------------------------------------
    Case("core-unknown-resume", f"core-{PID}.img", ("resume", "unknown value 99"),
         lambda d: edit_records(d, f"core-{PID}.img", lambda m: setattr(m[0].syscall, "resume", 99))),
    Case("files-unknown-kind", "files.img", ("FileEntry.kind", "unknown value 99"),
         lambda d: edit_records(d, "files.img", lambda m: setattr(m[0], "kind", 99))),
    Case("fd-without-file", f"fds-{PID}.img", ("fd 1", "file id 9"),
         lambda d: edit_records(d, f"fds-{PID}.img", lambda m: setattr(m[1], "file_id", 9))),
    Case("proc-other-pid", f"proc-{PID}.img", ("describes pid 4242",),
         lambda d: edit_records(d, f"proc-{PID}.img", lambda m: setattr(m[0], "pid", 4242))),
    # -- inventory --------------------------------------------------------------------------------
    Case("inventory-unknown-kind", "inventory.img", ("invalid image kind 99",),
         edit_inventory(lambda inv: setattr(inv, "kind", 99))),
    Case("inventory-pid-0", "inventory.img", ("invalid pid 0",), edit_inventory(_zombie(0))),
    Case("inventory-pid-huge", "inventory.img", ("invalid pid 5000000",), edit_inventory(_zombie(5_000_000))),
    Case("inventory-leader-second", "inventory.img", ("does not start with the leader",), _leader_second),
    Case("inventory-page-size", "inventory.img", ("page size 65536",),
         edit_inventory(lambda inv: setattr(inv, "page_size", 65536))),
    # -- chains -----------------------------------------------------------------------------------
    Case("chain-loop", "0/inventory.img", ("loop",), edit_inventory(
        lambda inv: (inv.parent.CopyFrom(inventory_pb2.ParentLink(path="../1", image_id="c1" * 16)),
                     setattr(inv, "kind", inventory_pb2.Inventory.PRE_DUMP)), "0"), chain=True),
    Case("chain-parent-missing", "1/inventory.img", ("parent ../0 is missing",),
         lambda d: shutil.rmtree(d / "0"), chain=True),
    Case("chain-parent-id", "1/inventory.img", ("image id",),
         edit_inventory(lambda inv: setattr(inv.parent, "image_id", "c2" * 16), "1"), chain=True),
    Case("chain-parent-pages", f"1/{_P}", ("marked PARENT", "does not have them"),
         lambda d: edit_pagemap(lambda h, r: r[1].__setitem__(2, 2))(d / "1"), chain=True),
)


def complete(case: Case, d: Path) -> None:
    """Finish a copy of a :attr:`Case.runtime` case (see the module docstring)."""
    path = d / case.bad
    if case.runtime in ("fifo", "devzero"):
        path.unlink(missing_ok=True)
        if case.runtime == "fifo":
            os.mkfifo(path, 0o600)
        else:
            path.symlink_to("/dev/zero")
    elif case.name == "pagemap-2m-ranges":
        # A second range table, merged into the first by any protobuf reader: 2 M more ZERO ranges
        # of one page, one byte per value (packed): 8 MB in all.
        n = 2_000_000 - 3
        table = b"".join(_field(column, value * n) for column, value in ((1, b"\0"), (2, b"\1"), (3, b"\3"), (4, b"\0")))
        (head,) = records(d, _P)
        reseal(d, _P, [head.SerializeToString() + _field(9, table)])
    elif case.name == "inventory-1m-processes":
        inv = _inventory(d)  # 1.1 M more empty ProcessRefs, two bytes each
        body = inv.SerializeToString() + _field(8, b"") * 1_100_000
        (d / "inventory.img").write_bytes(framing.encode_file(kinds.INVENTORY.magic, [body], version=inv.format_version))


def _field(number: int, payload: bytes) -> bytes:
    """One length-delimited protobuf field."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="replace the corpus")
    parser.add_argument("--out", type=Path, default=CORPUS, help="directory to write into (default: images/bad)")
    args = parser.parse_args(argv)
    if args.out.exists():
        if not args.force:
            print(f"{args.out} exists (--force rewrites it)")
            return 0
        shutil.rmtree(args.out)
    args.out.mkdir(parents=True)
    for case in CASES:
        d = args.out / case.name
        (write_chain if case.chain else write_base)(d)
        if case.make is not None:
            case.make(d)
    print(f"wrote {len(CASES)} bad images in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
