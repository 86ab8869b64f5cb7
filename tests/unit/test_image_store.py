"""Writing and reading images: round trips, streaming pages, atomic commit (ckpt/image/store.py, reader.py)."""

from __future__ import annotations

import hashlib
import os
import stat
import zlib
from pathlib import Path

import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ckpt.errors import ImageError, NotAnImage, UsageError
from ckpt.image import Image, ImageKind, ImageWriter, PageState, ProcessInfo, TrackingInfo, framing, kinds
from ckpt.image.pb import core_pb2, files_pb2, mm_pb2, process_pb2
from ckpt.image.verify import verify

PS = 4096


def _page(n: int) -> bytes:
    return (n.to_bytes(8, "little") * (PS // 8))


def _writer(path: Path, **kw: object) -> ImageWriter:
    kw.setdefault("kind", ImageKind.PRE_DUMP)
    return ImageWriter(path, **kw)  # type: ignore[arg-type]


def _read_all_pages(image: Image, owner: int | str) -> dict[int, bytes]:
    """vaddr -> page bytes for every HERE page."""
    out: dict[int, bytes] = {}
    for vaddr, view in image.iter_pages(owner):
        assert view.nbytes % PS == 0
        for off in range(0, view.nbytes, PS):
            out[vaddr + off] = bytes(view[off : off + PS])
    return out


def test_full_image_round_trip(tmp_path: Path) -> None:
    final = tmp_path / "img"
    with ImageWriter(final, kind=ImageKind.FULL, tracking="hash", chunk_size=2 * PS) as w:
        w.write_process(7, process_pb2.ProcessEntry(pid=7, ppid=1, comm="t"))
        w.write_threads(7, [core_pb2.ThreadCore(tid=7, regs=core_pb2.UserRegsX86_64(rip=0x401000)), core_pb2.ThreadCore(tid=8)])
        w.write_mm(7, mm_pb2.MmEntry(brk=0x602000), [mm_pb2.Vma(start=0x10000, end=0x13000, kind=mm_pb2.Vma.ANON_PRIVATE)])
        w.write_fds(7, [files_pb2.FdEntry(fd=0, file_id=1)])
        w.write_files([files_pb2.FileEntry(id=1, kind=files_pb2.FileEntry.CHR, path="/dev/null")])
        with w.pages(7) as pw:
            pw.add(0x10000, _page(1) + _page(2) + _page(3))
        result = w.commit(processes=[ProcessInfo(7, 1, (7, 8), start_time=99, tracking=TrackingInfo("hash"))],
                          extra={"note": "x"})
    assert result == str(final)
    image = Image.open(final)
    assert image.kind is ImageKind.FULL and image.parent is None and len(image.id) == 32
    assert image.processes == (ProcessInfo(7, 1, (7, 8), 99, TrackingInfo("hash", -1, 0)),)
    assert image.inventory.extra == {"note": "x"} and image.inventory.tracking == "hash"
    assert image.process(7).comm == "t"
    assert [t.tid for t in image.threads(7)] == [7, 8] and image.threads(7)[0].regs.rip == 0x401000
    mm, vmas = image.mm(7)
    assert mm.brk == 0x602000 and vmas[0].kind == mm_pb2.Vma.ANON_PRIVATE
    assert image.fds(7)[0].file_id == 1 and image.file_entries()[0].path == "/dev/null"
    pm = image.pagemap(7)
    assert [(r.vaddr, r.nr_pages, r.state) for r in pm.ranges] == [(0x10000, 3, PageState.HERE)]
    assert len(pm.chunks) == 2  # 3 pages in chunks of 2
    assert _read_all_pages(image, 7) == {0x10000: _page(1), 0x11000: _page(2), 0x12000: _page(3)}
    assert verify(final).ok
    assert image.verify() == []


def test_inventory_lists_every_file_with_digest(tmp_path: Path) -> None:
    final = tmp_path / "img"
    with _writer(final) as w:
        with w.pages(5) as pw:
            pw.add(0, _page(9))
        w.commit(processes=[ProcessInfo(5, 1, (5,))])
    image = Image.open(final)
    assert sorted(os.listdir(final)) == sorted([*image.files, "inventory.img"])
    for name, digest in image.files.items():
        data = (final / name).read_bytes()
        assert digest.size == len(data)
        # Page data is checked per chunk (format 2): no whole-file hash to compute while dumping.
        assert digest.sha256 == (b"" if name.startswith("pages-") else hashlib.sha256(data).digest())


def test_zstd_chunks_have_a_crc_and_no_frame_checksum(tmp_path: Path) -> None:
    """Format 2: zstd frames skip XXH64 (slow on raw bytes); the chunk's CRC-32 catches a flipped byte."""
    final = tmp_path / "img"
    with _writer(final) as w:
        with w.pages(5) as pw:
            pw.add(0, bytes(range(256)) * 16 * 8)
        w.commit(processes=[ProcessInfo(5, 1, (5,))])
    pm = Image.open(final).pagemap(5)
    data = bytearray((final / "pages-5.img").read_bytes())
    chunk = pm.chunks[0]
    assert len(pm.chunks) == 1 and chunk.crc32 == zlib.crc32(data[chunk.offset:chunk.offset + chunk.length])
    assert not zstandard.get_frame_parameters(bytes(data[chunk.offset:chunk.offset + chunk.length])).has_checksum
    assert verify(final).ok
    data[chunk.offset + chunk.length // 2] ^= 0x40
    (final / "pages-5.img").write_bytes(data)
    report = verify(final)
    assert not report.ok and "chunk 0" in str(report.problems[0])


def test_zero_pages_detected_and_not_stored(tmp_path: Path) -> None:
    final = tmp_path / "img"
    data = bytes(PS) * 2 + _page(1) + bytes(PS) + _page(2) * 2 + bytes(PS)
    with _writer(final) as w:
        with w.pages(5) as pw:
            pw.add(0x100000, memoryview(bytearray(data))[0:])  # a memoryview, not the object itself
        w.commit(processes=[ProcessInfo(5, 1, (5,))])
    pm = Image.open(final).pagemap(5)
    assert [(r.vaddr - 0x100000) // PS for r in pm.ranges] == [0, 2, 3, 4, 6]
    assert [r.state for r in pm.ranges] == [PageState.ZERO, PageState.HERE, PageState.ZERO, PageState.HERE, PageState.ZERO]
    assert sum(c.raw_length for c in pm.chunks) == 3 * PS


def test_detect_zero_off_stores_zero_pages(tmp_path: Path) -> None:
    final = tmp_path / "img"
    with _writer(final, detect_zero=False) as w:
        with w.pages(5) as pw:
            pw.add(0, bytes(2 * PS))
        w.commit(processes=[ProcessInfo(5, 1, (5,))])
    pm = Image.open(final).pagemap(5)
    assert [(r.state, r.nr_pages) for r in pm.ranges] == [(PageState.HERE, 2)]


def test_no_compress_stores_raw_chunks(tmp_path: Path) -> None:
    final = tmp_path / "img"
    with _writer(final, compress_level=None, chunk_size=PS) as w:
        with w.pages(5) as pw:
            pw.add(0, _page(1) + _page(2))
        w.commit(processes=[ProcessInfo(5, 1, (5,))])
    image = Image.open(final)
    pm = image.pagemap(5)
    assert {c.codec.name for c in pm.chunks} == {"NONE"} and all(c.length == PS for c in pm.chunks)
    assert (final / "pages-5.img").stat().st_size == framing.HEADER_SIZE + 2 * PS
    assert _read_all_pages(image, 5) == {0: _page(1), PS: _page(2)}
    assert verify(final).ok


def test_chunks_that_do_not_shrink_are_stored_raw(tmp_path: Path) -> None:
    """Adaptive compression: a chunk of random bytes is stored as it is (codec NONE, no zstd spent on it, none
    at restore) beside zstd chunks of compressible pages, in one pages file; all read back, and verify."""
    final = tmp_path / "img"
    rnd = os.urandom(64 * PS)
    heap = b"".join(_page(i % 7 + 1) for i in range(64))
    with _writer(final, chunk_size=64 * PS) as w:
        with w.pages(5) as pw:
            pw.add(0, rnd + heap + rnd)
        w.commit(processes=[ProcessInfo(5, 1, (5,))])
    image = Image.open(final)
    pm = image.pagemap(5)
    assert [c.codec.name for c in pm.chunks] == ["NONE", "ZSTD", "NONE"]
    assert pm.chunks[0].length == 64 * PS and pm.chunks[1].length < 64 * PS // 2
    pages = _read_all_pages(image, 5)
    assert b"".join(pages[a] for a in sorted(pages)) == rnd + heap + rnd
    assert verify(final).ok


def test_adjacent_ranges_merge(tmp_path: Path) -> None:
    final = tmp_path / "img"
    with _writer(final) as w:
        with w.pages(5) as pw:
            pw.add(0, _page(1))
            pw.add(PS, _page(2))
            pw.add_zero(2 * PS, 1)
            pw.add_zero(3 * PS, 2)
            pw.add(10 * PS, _page(3))
        w.commit(processes=[ProcessInfo(5, 1, (5,))])
    pm = Image.open(final).pagemap(5)
    assert [(r.vaddr // PS, r.nr_pages, r.state) for r in pm.ranges] == [
        (0, 2, PageState.HERE), (2, 3, PageState.ZERO), (10, 1, PageState.HERE)
    ]


def test_shared_memory_owner_name(tmp_path: Path) -> None:
    final = tmp_path / "img"
    with _writer(final) as w:
        with w.pages("shmem-3") as pw:
            pw.add(0, _page(4))
        w.commit()
    image = Image.open(final)
    assert image.owners() == ["shmem-3"]
    assert _read_all_pages(image, "shmem-3") == {0: _page(4)}


# -- page streams of every shape (property based) -------------------------------

_run = st.tuples(
    st.integers(min_value=0, max_value=3),          # gap before the run, in pages
    st.sampled_from(["data", "zero", "zero-data", "mixed"]),
    st.integers(min_value=1, max_value=9),          # pages
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(runs=st.lists(_run, max_size=8), chunk_pages=st.integers(min_value=1, max_value=5),
       level=st.sampled_from([None, 1, 3]), seed=st.integers(min_value=0, max_value=1 << 30))
def test_pages_round_trip(tmp_path_factory: pytest.TempPathFactory, runs: list[tuple[int, str, int]],
                          chunk_pages: int, level: int | None, seed: int) -> None:
    final = tmp_path_factory.mktemp("rt") / "img"
    expected: dict[int, bytes] = {}
    zeros: set[int] = set()
    vaddr = 0x7F0000000000
    with _writer(final, chunk_size=chunk_pages * PS, compress_level=level) as w:
        with w.pages(42) as pw:
            for gap, how, npages in runs:
                vaddr += gap * PS
                if how == "zero":
                    pw.add_zero(vaddr, npages)
                    zeros.update(vaddr + i * PS for i in range(npages))
                else:
                    buf = bytearray()
                    for i in range(npages):
                        is_zero = how == "zero-data" or (how == "mixed" and (seed >> i) & 1)
                        page = bytes(PS) if is_zero else os.urandom(8) * (PS // 8)
                        buf += page
                        (zeros.add if is_zero else lambda a: expected.__setitem__(a, page))(vaddr + i * PS)  # type: ignore[func-returns-value]
                    pw.add(vaddr, bytes(buf) if seed & 1 else buf)
                vaddr += npages * PS
            stats = pw.close()
        w.commit(processes=[ProcessInfo(42, 1, (42,))])
    image = Image.open(final)
    assert _read_all_pages(image, 42) == expected
    pm = image.pagemap(42)
    got_zero = {r.vaddr + i * PS for r in pm.ranges if r.state is PageState.ZERO for i in range(r.nr_pages)}
    assert got_zero == zeros
    assert stats.pages_here == len(expected) and stats.pages_zero == len(zeros)
    assert all(c.raw_length <= chunk_pages * PS for c in pm.chunks)
    assert verify(final).ok


# -- misuse ---------------------------------------------------------------------


def test_pages_out_of_order_or_unaligned(tmp_path: Path) -> None:
    with _writer(tmp_path / "img") as w:
        pw = w.pages(5)
        pw.add(0x10000, _page(1))
        with pytest.raises(ValueError, match="increasing address order"):
            pw.add(0x10000, _page(1))
        with pytest.raises(ValueError, match="not page aligned"):
            pw.add_zero(0x20001, 1)
        with pytest.raises(ValueError, match="not a multiple"):
            pw.add(0x30000, b"x" * 100)
        with pytest.raises(ValueError, match="has no parent"):
            pw.add_parent(0x40000, 1)
        w.abort()


def test_wrong_message_type_for_kind(tmp_path: Path) -> None:
    with _writer(tmp_path / "img") as w:
        with pytest.raises(TypeError, match="must be MmEntry"):
            w.write_records("mm-5.img", kinds.MM, [mm_pb2.Vma()])
        with pytest.raises(ValueError, match="does not fit kind"):
            w.write_records("core-5.img", kinds.MM, [])
        w.abort()


def test_per_process_file_of_unlisted_pid_is_refused(tmp_path: Path) -> None:
    with _writer(tmp_path / "img") as w:
        w.write_threads(9, [core_pb2.ThreadCore(tid=9)])
        with pytest.raises(ValueError, match="pid 9"):
            w.commit(processes=[ProcessInfo(5, 1, (5,))])
        w.abort()
    assert not (tmp_path / "img").exists()


def test_kind_and_parent_must_agree(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="needs a parent"):
        ImageWriter(tmp_path / "a", kind=ImageKind.INCREMENTAL)
    base = tmp_path / "base"
    with _writer(base) as w:
        w.commit()
    with pytest.raises(UsageError, match="FULL image has no parent"):
        ImageWriter(tmp_path / "b", kind=ImageKind.FULL, parent=base)
    with pytest.raises(NotAnImage):
        ImageWriter(tmp_path / "c", kind=ImageKind.INCREMENTAL, parent=tmp_path / "nothing")


def test_leaving_without_commit_is_an_error_and_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="without commit"):
        with _writer(tmp_path / "img"):
            pass
    assert os.listdir(tmp_path) == []


# -- atomic commit, cleanup, permissions -----------------------------------------


def test_exception_removes_temp_dir(tmp_path: Path) -> None:
    with pytest.raises(ZeroDivisionError):
        with _writer(tmp_path / "img") as w:
            with w.pages(5) as pw:
                pw.add(0, _page(1))
            assert os.path.isdir(w.tmp_dir or "")
            1 / 0  # noqa: B018
    assert os.listdir(tmp_path) == []


def test_keyboard_interrupt_removes_temp_dir(tmp_path: Path) -> None:
    with pytest.raises(KeyboardInterrupt):
        with _writer(tmp_path / "img") as w:
            pw = w.pages(5)
            pw.add(0, _page(1))
            raise KeyboardInterrupt
    assert os.listdir(tmp_path) == []


def test_temp_dir_is_hidden_beside_final_until_commit(tmp_path: Path) -> None:
    with _writer(tmp_path / "img") as w:
        tmp = w.tmp_dir
        assert tmp is not None and os.path.dirname(tmp) == str(tmp_path)
        assert os.path.basename(tmp).startswith(".img.")
        assert not (tmp_path / "img").exists()
        with pytest.raises(NotAnImage):
            Image.open(tmp)  # no inventory yet: never taken for an image
        w.commit()
    assert os.listdir(tmp_path) == ["img"]


def test_permissions_even_with_umask_zero(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        with _writer(tmp_path / "img") as w:
            assert stat.S_IMODE(os.stat(w.tmp_dir or "").st_mode) == 0o700
            with w.pages(5) as pw:
                pw.add(0, _page(1))
            w.commit(processes=[ProcessInfo(5, 1, (5,))])
    finally:
        os.umask(old)
    final = tmp_path / "img"
    assert stat.S_IMODE(final.stat().st_mode) == 0o700
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in final.iterdir()}
    assert modes and set(modes.values()) == {0o600}, modes


def test_final_dir_existing_is_refused_early(tmp_path: Path) -> None:
    final = tmp_path / "img"
    final.mkdir()
    (final / "something").write_text("x")
    with pytest.raises(ImageError) as info:
        _writer(final)
    assert str(info.value) == f"{final}: already exists and is not empty; refusing to overwrite it"
    assert info.value.exit_code == 2
    (tmp_path / "file").write_text("x")
    with pytest.raises(ImageError, match="not a directory"):
        _writer(tmp_path / "file")


def test_final_dir_appearing_during_write_is_refused_at_commit(tmp_path: Path) -> None:
    final = tmp_path / "img"
    with pytest.raises(ImageError, match="already exists and is not empty"):
        with _writer(final) as w:
            final.mkdir()
            (final / "other").write_text("x")
            w.commit()
    assert sorted(os.listdir(tmp_path)) == ["img"]  # ours was removed, theirs untouched
    assert os.listdir(final) == ["other"]


def test_empty_final_dir_is_replaced(tmp_path: Path) -> None:
    final = tmp_path / "img"
    final.mkdir(mode=0o755)
    with _writer(final) as w:
        w.commit()
    assert Image.open(final).kind is ImageKind.PRE_DUMP
    assert stat.S_IMODE(final.stat().st_mode) == 0o700


def test_missing_destination_parent(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="does not exist"):
        _writer(tmp_path / "no" / "img")


def _borrowed_image(path: Path, use_runs: bool, layout: list[tuple[int, int, str]]) -> None:
    """Write ``layout`` ((vaddr, npages, "here"|"parent"|"zero"), address order) through a borrowed buffer."""
    parent = path.parent / "parent"
    if not parent.exists():
        with _writer(parent) as w:
            with w.pages(5) as pw:
                pw.add(0, _page(1))
            w.commit(processes=[ProcessInfo(5, 1, (5,))])
    with _writer(path, parent=parent) as w:
        with w.pages(5) as pw:
            view = pw.borrow()
            off, runs = 0, []
            for vaddr, n, what in layout:
                if what == "here":
                    for i in range(n):  # every 3rd page of a run is zero: detected inside the run
                        view[off + i * PS:off + (i + 1) * PS] = bytes(PS) if i % 3 == 2 else _page(vaddr + i * PS)
                    runs.append((vaddr, n * PS, PageState.HERE, off))
                    off += n * PS
                else:
                    runs.append((vaddr, n * PS, PageState.PARENT if what == "parent" else PageState.ZERO, 0))
            if use_runs:
                pw.add_runs(runs)
            else:
                for vaddr, nbytes, state, boff in runs:
                    if state is PageState.HERE:
                        pw.add_borrowed(vaddr, boff, nbytes)
                    elif state is PageState.PARENT:
                        pw.add_parent(vaddr, nbytes // PS)
                    else:
                        pw.add_zero(vaddr, nbytes // PS)
            pw.submit_borrowed()
        w.commit(processes=[ProcessInfo(5, 1, (5,))])


def test_add_runs_records_what_the_single_calls_do(tmp_path: Path) -> None:
    import random

    rnd = random.Random(4)
    layout, vaddr = [], 0x10000
    for _ in range(300):
        n = rnd.choice([1, 1, 1, 2, 3, 7])
        layout.append((vaddr, n, rnd.choice(["here", "here", "parent", "zero"])))
        vaddr += (n + rnd.choice([0, 0, 1, 5])) * PS
    layout = [r for r in layout if r[2] != "here"] + [r for r in layout if r[2] == "here"][:200]
    layout.sort()
    _borrowed_image(tmp_path / "runs", True, layout)
    _borrowed_image(tmp_path / "calls", False, layout)
    a, b = Image.open(tmp_path / "runs").pagemap(5), Image.open(tmp_path / "calls").pagemap(5)
    assert a.ranges == b.ranges and len(a.ranges) > 300
    assert _read_all_pages(Image.open(tmp_path / "runs"), 5) == _read_all_pages(Image.open(tmp_path / "calls"), 5)


@pytest.mark.parametrize("runs,message", [
    ([(0x2000, PS, PageState.HERE, 0), (0x1000, PS, PageState.HERE, PS)], "increasing address order"),
    ([(0x1000, PS + 1, PageState.HERE, 0)], "bad page run"),
    ([(0x1000, PS, PageState.HERE, 3)], "bad borrowed run"),
    ([(0x1000, 8 << 20, PageState.HERE, 0)], "bad borrowed run"),
])
def test_add_runs_checks_like_the_single_calls(tmp_path: Path, runs: list, message: str) -> None:  # noqa: ANN001
    with _writer(tmp_path / "img") as w:
        pw = w.pages(5)
        pw.borrow()
        with pytest.raises(ValueError, match=message):
            pw.add_runs(runs)
        pw.release_borrowed()
        w.abort()  # nothing to keep
    with _writer(tmp_path / "img2") as w:
        with pytest.raises(ValueError, match="no parent"):
            w.pages(5).add_runs([(0x1000, PS, PageState.PARENT, 0)])
        w.abort()
