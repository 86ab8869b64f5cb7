"""Every kind of bad input gives one line naming the file and the problem, exit code 2.

Each case damages a copy of a golden image the way it happens in practice
(a cut-off copy, a flipped bit, a foreign file, a newer ckpt, a moved or
replaced parent) and checks both the reader (raises at first use) and
``verify`` (lists the problem).
"""

from __future__ import annotations

import shutil
import struct
import zlib
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from ckpt.errors import ChainError, CorruptImage, ImageError, NotAnImage
from ckpt.image import Image, ImageKind, ImageWriter, ProcessInfo, framing, kinds, open_chain, resolve_pages
from ckpt.image.pb import inventory_pb2
from ckpt.image.reader import ChunkReader
from ckpt.image.verify import verify

GOLDEN = Path(__file__).resolve().parents[2] / "images"


@pytest.fixture
def simple(tmp_path: Path) -> Path:
    dst = tmp_path / "simple"
    shutil.copytree(GOLDEN / "simple", dst)
    return dst


@pytest.fixture
def chain(tmp_path: Path) -> Path:
    dst = tmp_path / "chain"
    shutil.copytree(GOLDEN / "chain", dst)
    return dst


def _one_line(err: ImageError, path: Path | str, *words: str) -> str:
    text = str(err)
    assert "\n" not in text, text
    assert text.startswith(f"{path}: "), text
    assert err.exit_code == 2
    for w in words:
        assert w in text, (w, text)
    return text


def _raises(cls: type[ImageError], fn: Callable[[], object]) -> ImageError:
    with pytest.raises(cls) as info:
        fn()
    return info.value


def _verify_says(image_dir: Path, path: Path | str, *words: str) -> None:
    report = verify(image_dir)
    assert not report.ok
    hits = [p for p in report.problems if p.path == str(path) and all(w in p.problem for w in words)]
    assert hits, [str(p) for p in report.problems]
    with pytest.raises(ImageError):
        report.raise_first()


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x10
    path.write_bytes(bytes(data))


def _rewrite_inventory(image_dir: Path, mutate: Callable[[inventory_pb2.Inventory], None]) -> None:
    """Change the inventory and re-encode it properly (header, end marker), as a forger or bug would."""
    path = image_dir / "inventory.img"
    inv = Image.open(image_dir).inventory
    mutate(inv)
    path.write_bytes(framing.encode_file(kinds.INVENTORY.magic, [inv.SerializeToString()], version=inv.format_version))


# -- truncated -------------------------------------------------------------------


def test_truncated_record_file(simple: Path) -> None:
    mm = simple / "mm-1000.img"
    mm.write_bytes(mm.read_bytes()[:-10])
    err = _raises(CorruptImage, lambda: Image.open(simple).mm(1000))
    _one_line(err, mm, "truncated", "inventory.img says")
    _verify_says(simple, mm, "truncated")


def test_truncated_inventory(simple: Path) -> None:
    inv = simple / "inventory.img"
    inv.write_bytes(inv.read_bytes()[:100])
    _one_line(_raises(CorruptImage, lambda: Image.open(simple)), inv, "truncated")
    _verify_says(simple, inv, "truncated")


def test_truncated_pages_file(simple: Path) -> None:
    pages = simple / "pages-1000.img"
    pages.write_bytes(pages.read_bytes()[:-20])
    _one_line(_raises(CorruptImage, lambda: list(Image.open(simple).iter_pages(1000))), pages, "truncated")
    _verify_says(simple, pages, "truncated")


def test_empty_file(simple: Path) -> None:
    core = simple / "core-1000.img"
    core.write_bytes(b"")
    # Opening the image already compares every file's size with the inventory.
    _one_line(_raises(CorruptImage, lambda: Image.open(simple)), core, "size is 0 bytes", "truncated")
    _verify_says(simple, core, "shorter than the 12-byte header")


# -- flipped bytes ---------------------------------------------------------------


def test_flipped_byte_in_record_file(simple: Path) -> None:
    core = simple / "core-1000.img"
    _flip(core, 40)
    _one_line(_raises(CorruptImage, lambda: Image.open(simple).threads(1000)), core, "SHA-256", "altered")
    _verify_says(simple, core, "SHA-256")


def test_flipped_byte_in_inventory(simple: Path) -> None:
    inv = simple / "inventory.img"
    _flip(inv, 60)
    _one_line(_raises(CorruptImage, lambda: Image.open(simple)), inv, "altered")
    _verify_says(simple, inv, "altered")


def test_flipped_byte_in_page_chunk(simple: Path) -> None:
    pages = simple / "pages-1000.img"
    pm = Image.open(simple).pagemap(1000)
    _flip(pages, pm.chunks[2].offset + 5)
    err = _raises(CorruptImage, lambda: [bytes(v) for _, v in Image.open(simple).iter_pages(1000)])
    _one_line(err, pages, "chunk 2", "CRC-32")
    _verify_says(simple, pages, "chunk 2", "CRC-32")
    _verify_says(simple, pages, "SHA-256")


def test_zstd_checksum_catches_what_the_crc_misses(simple: Path) -> None:
    """If a chunk were altered together with its CRC, zstd's content checksum still catches it."""
    pages = simple / "pages-1000.img"
    image = Image.open(simple)
    pm = image.pagemap(1000)
    chunk = pm.chunks[1]
    data = bytearray(pages.read_bytes())
    data[chunk.offset + chunk.length - 1] ^= 0x01  # last byte: part of the frame's content checksum
    pages.write_bytes(bytes(data))
    forged = replace(chunk, crc32=zlib.crc32(data[chunk.offset : chunk.offset + chunk.length]))
    pm2 = replace(pm, chunks=(pm.chunks[0], forged, *pm.chunks[2:]))
    with ChunkReader(str(pages), pm2, None) as reader:
        reader.load(0)
        err = _raises(CorruptImage, lambda: reader.load(1))
    _one_line(err, pages, "chunk 1", "zstd")


# -- wrong magic, wrong kind, newer format -----------------------------------------


def test_wrong_magic(simple: Path) -> None:
    mm = simple / "mm-1000.img"
    data = mm.read_bytes()
    mm.write_bytes(b"\x7fELF" + data[4:])
    _one_line(_raises(CorruptImage, lambda: Image.open(simple).mm(1000)), mm, "wrong magic", "not a ckpt image file")
    _verify_says(simple, mm, "wrong magic")


def test_file_of_another_kind(simple: Path) -> None:
    mm = simple / "mm-1000.img"
    shutil.copy(simple / "core-1000.img", mm)
    err = _raises(CorruptImage, lambda: Image.open(simple))
    _one_line(err, mm, "inventory.img says")  # a different size: caught at open
    _verify_says(simple, mm, "wrong file kind")


def test_inventory_from_the_future(simple: Path) -> None:
    inv = simple / "inventory.img"
    data = bytearray(inv.read_bytes())
    struct.pack_into("<I", data, 8, framing.FORMAT_VERSION + 1)
    inv.write_bytes(bytes(data))
    err = _raises(CorruptImage, lambda: Image.open(simple))
    text = _one_line(err, inv)
    assert text.endswith(f"written by a newer ckpt (format {framing.FORMAT_VERSION + 1}), this ckpt reads ≤ {framing.FORMAT_VERSION}")
    _verify_says(simple, inv, "newer ckpt")


def test_record_file_from_the_future(simple: Path) -> None:
    proc = simple / "proc-1000.img"
    data = bytearray(proc.read_bytes())
    struct.pack_into("<I", data, 8, 7)
    proc.write_bytes(bytes(data))
    _one_line(_raises(CorruptImage, lambda: Image.open(simple).process(1000)), proc, "newer ckpt (format 7)")
    _verify_says(simple, proc, "newer ckpt")


# -- not an image ----------------------------------------------------------------


def test_not_an_image(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    _one_line(_raises(NotAnImage, lambda: Image.open(empty)), empty, "no inventory.img")
    _one_line(_raises(NotAnImage, lambda: Image.open(tmp_path / "nope")), tmp_path / "nope", "no such directory")
    afile = tmp_path / "afile"
    afile.write_text("hello")
    _one_line(_raises(NotAnImage, lambda: Image.open(afile)), afile, "not a directory")
    report = verify(empty)
    assert [str(p) for p in report.problems] == [f"{empty}: not a ckpt image: no inventory.img"]
    with pytest.raises(NotAnImage):
        report.raise_first()


def test_missing_listed_file(simple: Path) -> None:
    (simple / "fds-1000.img").unlink()
    err = _raises(CorruptImage, lambda: Image.open(simple).fds(1000))
    _one_line(err, simple / "fds-1000.img", "missing")
    _verify_says(simple, simple / "fds-1000.img", "missing")


def test_unlisted_file(simple: Path) -> None:
    (simple / "stray.img").write_bytes(b"x")
    _verify_says(simple, simple / "stray.img", "not listed in inventory.img")


# -- the parent chain --------------------------------------------------------------


def test_chain_is_fine(chain: Path) -> None:
    assert [i.id for i in open_chain(chain / "1")] == ["c0" * 16, "c1" * 16]
    assert verify(chain / "1").ok


def test_missing_parent(chain: Path) -> None:
    shutil.rmtree(chain / "0")
    err = _raises(ChainError, lambda: open_chain(chain / "1"))
    _one_line(err, chain / "1" / "inventory.img", "parent ../0 is missing")
    _verify_says(chain / "1", chain / "1" / "inventory.img", "missing")


def test_parent_is_not_the_recorded_image(chain: Path) -> None:
    shutil.rmtree(chain / "0")
    with ImageWriter(chain / "0", kind=ImageKind.PRE_DUMP) as w:  # a different image at the same path
        w.commit()
    err = _raises(ChainError, lambda: open_chain(chain / "1"))
    _one_line(err, chain / "1" / "inventory.img", "image id", "c0" * 16)
    _verify_says(chain / "1", chain / "1" / "inventory.img", "image id")


def test_loop_in_chain(chain: Path) -> None:
    def point_at_1(inv: inventory_pb2.Inventory) -> None:
        inv.parent.path = "../1"
        inv.parent.image_id = "c1" * 16

    _rewrite_inventory(chain / "0", point_at_1)
    err = _raises(ChainError, lambda: open_chain(chain / "1"))
    _one_line(err, chain / "0" / "inventory.img", "loop")
    _verify_says(chain / "1", chain / "0" / "inventory.img", "loop")


def test_image_that_is_its_own_parent(chain: Path) -> None:
    def self_parent(inv: inventory_pb2.Inventory) -> None:
        inv.parent.path = "."
        inv.parent.image_id = inv.image_id

    _rewrite_inventory(chain / "0", self_parent)
    _one_line(_raises(ChainError, lambda: open_chain(chain / "0")), chain / "0" / "inventory.img", "loop")


def test_parent_page_missing_in_parent(tmp_path: Path) -> None:
    with ImageWriter(tmp_path / "0", kind=ImageKind.PRE_DUMP) as w:
        with w.pages(5) as pw:
            pw.add(0x1000, b"a" * 4096)
        w.commit(processes=[ProcessInfo(5, 1, (5,))])
    with ImageWriter(tmp_path / "1", kind=ImageKind.PRE_DUMP, parent=tmp_path / "0") as w:
        with w.pages(5) as pw:
            pw.add_parent(0x1000, 1)
            pw.add_parent(0x5000, 2)
        w.commit(processes=[ProcessInfo(5, 1, (5,))])
    pagemap = tmp_path / "1" / "pagemap-5.img"
    err = _raises(ChainError, lambda: resolve_pages(open_chain(tmp_path / "1"), 5))
    _one_line(err, pagemap, "0x5000-0x7000", "marked PARENT", "does not have them")
    _verify_says(tmp_path / "1", pagemap, "does not have them")


def test_parent_without_pagemap_for_the_pid(tmp_path: Path) -> None:
    with ImageWriter(tmp_path / "0", kind=ImageKind.PRE_DUMP) as w:
        w.commit()
    with ImageWriter(tmp_path / "1", kind=ImageKind.PRE_DUMP, parent=tmp_path / "0") as w:
        with w.pages(5) as pw:
            pw.add_parent(0x1000, 1)
        w.commit(processes=[ProcessInfo(5, 1, (5,))])
    err = _raises(ChainError, lambda: resolve_pages(open_chain(tmp_path / "1"), 5))
    _one_line(err, tmp_path / "1" / "pagemap-5.img", "has no pagemap-5.img")


def test_parent_marks_without_parent_link(chain: Path) -> None:
    def orphan(inv: inventory_pb2.Inventory) -> None:
        inv.ClearField("parent")
        inv.kind = inventory_pb2.Inventory.PRE_DUMP

    _rewrite_inventory(chain / "1", orphan)
    _verify_says(chain / "1", chain / "1" / "pagemap-2000.img", "marked PARENT but the image has no parent")
    err = _raises(ChainError, lambda: resolve_pages(open_chain(chain / "1"), 2000))
    _one_line(err, chain / "1" / "pagemap-2000.img", "no parent")


# -- bounds the writer and the chain keep ------------------------------------------------------------


def test_writer_refuses_a_pagemap_no_reader_reads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """More ranges than a reader takes: the dump fails (Unsupported) instead of writing an image restore refuses."""
    from ckpt.errors import Unsupported
    from ckpt.image import bounds

    monkeypatch.setattr(bounds, "MAX_VALUES", 3)
    with pytest.raises(Unsupported, match="more than 3 page ranges"):
        with ImageWriter(tmp_path / "img", kind=ImageKind.PRE_DUMP) as w:
            with w.pages(5) as pw:
                for i in range(4):
                    pw.add_zero(0x1000 + 2 * i * 4096, 1)  # gaps: one range each
    assert not (tmp_path / "img").exists()


def test_writer_refuses_a_record_file_no_reader_decodes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ckpt.errors import Unsupported
    from ckpt.image import bounds
    from ckpt.image.pb import files_pb2

    monkeypatch.setattr(bounds, "MAX_DECODE_COST", 10 * bounds.RECORD_COST)
    with pytest.raises(Unsupported, match="fds-5.img would take"):
        with ImageWriter(tmp_path / "img", kind=ImageKind.FULL) as w:
            w.write_fds(5, [files_pb2.FdEntry(fd=n, file_id=1) for n in range(11)])


def test_chain_longer_than_the_bound(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ckpt.image import chain as chain_mod
    from ckpt.image.verify import validated_chain

    parent = None
    for n in range(4):
        with ImageWriter(tmp_path / str(n), kind=ImageKind.PRE_DUMP, parent=parent) as w:
            w.commit()
        parent = tmp_path / str(n)
    monkeypatch.setattr(chain_mod, "MAX_CHAIN_LENGTH", 3)
    err = _raises(ChainError, lambda: validated_chain(tmp_path / "3"))
    _one_line(err, tmp_path / "1" / "inventory.img", "longer than 3 images")


def test_validated_images_are_not_checked_twice(chain: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A staged restore opens its chain at every stage: the images checked already are skipped."""
    from ckpt.image import verify as verify_mod

    calls: list[int] = []
    real = verify_mod.check_chain
    monkeypatch.setattr(verify_mod, "check_chain", lambda images, **kw: calls.append(kw.get("only", 0)) or real(images, **kw))
    assert [i.id for i in verify_mod.validated_chain(chain / "1")] == ["c0" * 16, "c1" * 16]
    assert [i.id for i in verify_mod.validated_chain(chain / "1")] == ["c0" * 16, "c1" * 16]
    assert calls == [0]  # the second time: nothing left to check
    _rewrite_inventory(chain / "1", lambda inv: inv.extra.__setitem__("note", "changed"))  # another image now
    verify_mod.validated_chain(chain / "1")
    assert calls == [0, 1]  # only the changed one
