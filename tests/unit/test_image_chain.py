"""Parent chains: opening them and resolving which image holds each page (ckpt/image/chain.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ckpt.image import (
    Image,
    ImageKind,
    ImageWriter,
    PageSource,
    ProcessInfo,
    iter_chain_pages,
    open_chain,
    resolve_pages,
)
from ckpt.image import reader as reader_mod
from ckpt.image.verify import verify

PS = 4096
BASE = 0x10000
GOLDEN = Path(__file__).resolve().parents[2] / "images"


def golden_page(label: str) -> bytes:
    unit = f"ckpt golden page {label}\n".encode()
    return (unit * (PS // len(unit) + 1))[:PS]


def test_worked_example_of_the_docstring() -> None:
    """images/chain/{0,1} are the example in chain.py's docstring: check the table it shows."""
    chain = open_chain(GOLDEN / "chain" / "1")
    assert [os.path.basename(i.path) for i in chain] == ["0", "1"]
    assert resolve_pages(chain, 2000) == [
        PageSource(0x1000, 1, 0, 0x0000),
        PageSource(0x2000, 1, 1, 0x0000),
        PageSource(0x3000, 1, None, 0),
        PageSource(0x4000, 1, 1, 0x1000),
        PageSource(0x5000, 1, 0, 0x3000),
        PageSource(0x6000, 1, 1, 0x2000),
    ]
    pages = {vaddr: bytes(view) for vaddr, view in iter_chain_pages(chain, 2000)}
    assert pages == {
        0x1000: golden_page("A"),
        0x5000: golden_page("D"),
        0x2000: golden_page("B'"),
        0x4000: golden_page("E"),
        0x6000: golden_page("F"),
    }


def test_chain_of_one() -> None:
    chain = open_chain(GOLDEN / "simple")
    assert len(chain) == 1
    sources = resolve_pages(chain, 1000)
    assert all(s.image in (0, None) for s in sources)
    assert sum(s.nr_pages for s in sources) == 13 + 9


def _snapshot(path: Path, parent: Path | None, memory: dict[int, bytes], previous: dict[int, bytes] | None,
              chunk_pages: int) -> None:
    """Write one image of ``memory`` (page index -> bytes); unchanged pages go to the parent."""
    kind = ImageKind.PRE_DUMP
    with ImageWriter(path, kind=kind, parent=parent, chunk_size=chunk_pages * PS, detect_zero=False) as w:
        with w.pages(9) as pw:
            for index in sorted(memory):
                vaddr = BASE + index * PS
                content = memory[index]
                if previous is not None and previous.get(index) == content:
                    pw.add_parent(vaddr, 1)
                elif content == bytes(PS):
                    pw.add_zero(vaddr, 1)
                else:
                    pw.add(vaddr, content)
        w.commit(processes=[ProcessInfo(9, 1, (9,))])


_op = st.tuples(st.sampled_from(["write", "zero", "unmap"]), st.integers(min_value=0, max_value=23))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(st.lists(_op, max_size=12), min_size=1, max_size=4), chunk_pages=st.integers(1, 4),
       initial=st.sets(st.integers(0, 23), max_size=24))
def test_resolution_matches_a_model_of_memory(tmp_path_factory: pytest.TempPathFactory,
                                              steps: list[list[tuple[str, int]]], chunk_pages: int,
                                              initial: set[int]) -> None:
    root = tmp_path_factory.mktemp("chain")
    memory = {i: os.urandom(16) * (PS // 16) for i in initial}
    _snapshot(root / "0", None, memory, None, chunk_pages)
    previous = dict(memory)
    for n, ops in enumerate(steps, start=1):
        for op, index in ops:
            if op == "write":
                memory[index] = os.urandom(16) * (PS // 16)
            elif op == "zero":
                memory[index] = bytes(PS)
            else:
                memory.pop(index, None)
        _snapshot(root / str(n), root / str(n - 1), memory, previous, chunk_pages)
        previous = dict(memory)
    newest = root / str(len(steps))
    chain = open_chain(newest)
    assert len(chain) == len(steps) + 1
    sources = resolve_pages(chain, 9)
    covered = {s.vaddr + i * PS: s for s in sources for i in range(s.nr_pages)}
    assert set(covered) == {BASE + i * PS for i in memory}
    zero = {a for a, s in covered.items() if s.is_zero}
    assert zero == {BASE + i * PS for i, c in memory.items() if c == bytes(PS)}
    got: dict[int, bytes] = {}
    for vaddr, view in iter_chain_pages(chain, 9, sources):
        for off in range(0, view.nbytes, PS):
            assert vaddr + off not in got, "page read twice"
            got[vaddr + off] = bytes(view[off : off + PS])
    assert got == {BASE + i * PS: c for i, c in memory.items() if c != bytes(PS)}
    assert verify(newest).ok


def test_each_chunk_is_read_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    memory = {i: bytes([i + 1]) * PS for i in range(12)}
    _snapshot(tmp_path / "0", None, memory, None, 2)
    previous = dict(memory)
    for i in (1, 4, 5, 11):
        memory[i] = bytes([0x80 + i]) * PS
    _snapshot(tmp_path / "1", tmp_path / "0", memory, previous, 2)
    loads: list[tuple[str, int]] = []
    original = reader_mod.ChunkReader.load

    def counting(self: reader_mod.ChunkReader, index: int) -> memoryview:
        if self.loaded != index:
            loads.append((self.path, index))
        return original(self, index)

    monkeypatch.setattr(reader_mod.ChunkReader, "load", counting)
    chain = open_chain(tmp_path / "1")
    got: dict[int, bytes] = {}
    for vaddr, view in iter_chain_pages(chain, 9):
        for off in range(0, view.nbytes, PS):
            got[vaddr + off] = bytes(view[off : off + PS])
    assert len(loads) == len(set(loads))
    assert got == {BASE + i * PS: content for i, content in memory.items()}
    # the base's chunk 2 holds pages 4 and 5 only, both overwritten since: it is never read
    base_loads = {i for p, i in loads if p.endswith("/0/pages-9.img")}
    assert base_loads == {0, 1, 3, 4, 5}


def test_three_level_parent_lookup(tmp_path: Path) -> None:
    page = b"x" * PS
    with ImageWriter(tmp_path / "0", kind=ImageKind.PRE_DUMP) as w:
        with w.pages(3) as pw:
            pw.add(0, page)
        w.commit(processes=[ProcessInfo(3, 1, (3,))])
    for n in (1, 2):
        with ImageWriter(tmp_path / str(n), kind=ImageKind.PRE_DUMP, parent=tmp_path / str(n - 1)) as w:
            with w.pages(3) as pw:
                pw.add_parent(0, 1)
            w.commit(processes=[ProcessInfo(3, 1, (3,))])
    chain = open_chain(tmp_path / "2")
    assert resolve_pages(chain, 3) == [PageSource(0, 1, 0, 0)]
    assert [bytes(v) for _, v in iter_chain_pages(chain, 3)] == [page]
    assert Image.open(tmp_path / "2").parent.path == "../1"  # type: ignore[union-attr]
