"""Staged restore (ckpt.restore.StagedRestore): memory built image by image, then the final delta.

A migration's destination applies each pre-copy image while the source still
runs, so the switch-over only applies the final delta and the non-memory
state.  The result must be the process a plain restore of the final image
makes: checked page by page on the busy writer of test_incremental (with
mapping churn between rounds), byte by byte against a plain restore and the
original on a quiet target whose layout the test churns itself (mmap,
munmap, mremap, mprotect, MADV_DONTNEED, zero pages, a private file mapping,
brk), and by the self-check of the many-VMA target.  Failures and abort()
at every stage must leave nothing behind: the pid free, no traced process.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ckpt.control.seize import freeze
from ckpt.dump import dump
from ckpt.errors import RestoreError, UsageError
from ckpt.image import kinds
from ckpt.image.reader import Image
from ckpt.image.records import ImageKind, ProcessInfo
from ckpt.image.store import ImageWriter
from ckpt.incremental import pre_dump
from ckpt.kernel.arch_x86_64 import NR, PAGE_SIZE
from ckpt.kernel.mman import (
    MADV_DONTNEED, MAP_ANONYMOUS, MAP_FIXED_NOREPLACE, MAP_PRIVATE, MREMAP_MAYMOVE, PROT_READ, PROT_WRITE,
)
from ckpt.kernel.vm import ProcMem
from ckpt.procfs.maps import read_maps
from ckpt.restore import StagedRestore, StagingMismatch, restore
from targets import Target, build_c, spawn, traced_threads, tracer_of, wait_until
from test_incremental import NPAGES, _check_pages, _final_dump, _writer

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="restore needs root (ptrace, clone3 set_tid)")

#: glibc without rseq: the kernel writes the current CPU into a registered rseq area on
#: every return to user space, which would make two restored copies differ in that word.
_NO_RSEQ = {**os.environ, "GLIBC_TUNABLES": "glibc.pthread.rseq=0"}
P = PAGE_SIZE
#: Where a restore's trampoline goes when nothing is mapped there (memory.free_area's lowest address).
TRAMPOLINE = 1 << 32


def _gone(pid: int) -> bool:
    return not os.path.exists(f"/proc/{pid}")


def _nothing_left(pid: int) -> None:
    assert _gone(pid), f"process {pid} still exists"
    assert traced_threads(pid, os.getpid()) == []


def _kill_child(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)


# --- the busy writer: every page carries a version -------------------------------------------


@pytest.mark.parametrize("method", ["uffd-wp", "hash"])
def test_staged_restore_of_a_busy_writer(c_target, tmp_path: Path, restored: list[int], method: str) -> None:  # noqa: ANN001
    t, area = _writer(c_target)
    parent: Path | None = None
    pre = []
    for i in (1, 2, 3):
        if i == 2:
            t.write(b"t\n")  # a new writer thread (a new stack VMA) between two pre-dumps
            t.expect("OK")
        s = pre_dump(t.pid, tmp_path / str(i), parent=parent, method=method)
        assert s.notes == () and (s.full == (i == 1))
        assert Image.open(tmp_path / str(i)).has(kinds.MM.file_name(t.pid))  # pre-dumps carry the layout
        pre.append(s)
        parent = tmp_path / str(i)
        time.sleep(0.15)
    truth, final = _final_dump(t, area, tmp_path / "final", parent)

    staged = StagedRestore(inherit_fds=t.stdio_fds)
    first = staged.start(tmp_path / "1")
    assert staged.state == "staged" and tracer_of(staged.pid) == os.getpid()
    later = [staged.apply(tmp_path / "2"), staged.apply(tmp_path / "3")]
    r = staged.finish(tmp_path / "final")
    restored.append(r.pid)
    assert staged.state == "done" and r.pid == t.pid
    assert first.pages_written >= NPAGES
    # Later stages write only what changed — the pages their image stores (the churn's new regions are
    # new pages too) — not the whole memory again.  Bounded by the images, not by a share of NPAGES: how
    # much the writer changes between two pre-dumps depends on how long they take, i.e. on the load.
    assert all(st.pages_written <= s.pages_stored for st, s in zip(later, pre[1:])), (later, pre)
    assert r.pages_written <= final.pages_stored and r.staged_pages >= NPAGES, (r, final)
    assert _check_pages(r.pid, area, truth) == len(truth)
    staged.abort()  # once it runs, abort() leaves it alone
    assert not _gone(r.pid) and tracer_of(r.pid) == 0


# --- a quiet target, churned from outside: staged == plain == the original, byte for byte ----


class _Quiet:
    """scenarios/pages.c (blocked in read(2) between commands); layout changes are injected while frozen."""

    def __init__(self, c_target, tmp_path: Path) -> None:  # noqa: ANN001
        self.t: Target = c_target("pages", "256", stdin_pipe=True, stderr=subprocess.DEVNULL, env=_NO_RSEQ)
        self.area = int(self.t.ready()["area"], 16)
        self.pid = self.t.pid
        self.file = tmp_path / "mapped"
        self.file.write_bytes(b"".join(bytes([0x40 + i]) * P for i in range(8)))
        self.regions: dict[str, int] = {}

    def write(self, *pages: int) -> None:
        """The target itself bumps a byte in each page of its area."""
        self.t.write(("w " + " ".join(map(str, pages)) + "\n").encode())
        assert self.t.expect("OK")

    def churn(self, step: int) -> None:
        """One batch of layout changes, as the process could make them itself."""
        with freeze(self.pid) as proc:
            inj, mem, a = proc.injector(), proc.mem, self.area
            if step == 1:
                r1 = inj.mmap(0, 8 * P, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS)
                mem.write(r1, b"r1" * (4 * P))
                self.regions["r1"] = r1
                inj.madvise(a + 10 * P, 10 * P, MADV_DONTNEED)  # dropped: not in the next pagemap
                inj.madvise(a + 20 * P, 10 * P, MADV_DONTNEED)
                mem.read(a + 20 * P, 10 * P)  # read back: the zero page (ZERO in the next pagemap)
                inj.mprotect(a + 40 * P, 10 * P, PROT_READ)  # splits the area
            elif step == 2:
                inj.munmap(self.regions["r1"] + 4 * P, 4 * P)  # shrinks
                r2 = inj.mmap(0, 4 * P, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS)
                mem.write(r2, b"r2" * (2 * P))
                r2 = inj.call(NR.mremap, r2, 4 * P, 16 * P, MREMAP_MAYMOVE)  # grows, may move
                mem.write(r2 + 12 * P, b"R2" * (2 * P))
                with inj.scratch(P) as scratch:
                    scratch.write(0, os.fsencode(self.file) + b"\0")
                    fd = inj.call(NR.openat, -100 & (2 ** 64 - 1), scratch.addr, os.O_RDONLY, 0)
                f = inj.mmap(0, 8 * P, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0)
                inj.close(fd)
                mem.write(f + 2 * P, b"cow" * 100)  # an anonymous copy; the other pages stay the file's
                self.regions["file"] = f
                inj.mprotect(a + 40 * P, 10 * P, PROT_READ | PROT_WRITE)  # joins the area again
                # where a staged restore puts its trampoline (the lowest free address from 4 GiB up)
                low = inj.mmap(TRAMPOLINE, 4 * P, PROT_READ | PROT_WRITE,
                               MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE)
                mem.write(low, b"low!" * P)
            else:
                f = self.regions["file"]
                inj.madvise(f + 2 * P, P, MADV_DONTNEED)  # the copy is dropped: the file's page again
                mem.write(f + 5 * P, b"COW" * 100)
                brk = inj.call(NR.brk, 0)
                top = inj.call(NR.brk, brk + 4 * P)
                assert top == brk + 4 * P
                mem.write(brk, b"heap" * P)
                inj.madvise(a + 30 * P, 2 * P, MADV_DONTNEED)  # data before, zero page now
                mem.read(a + 30 * P, 2 * P)


def _memory(pid: int) -> dict[int, tuple[str, str, int, bytes]]:
    """Every mapped page but the kernel's vvar: address → (protection, path, file offset, SHA-1 of the bytes)."""
    out: dict[int, tuple[str, str, int, bytes]] = {}
    with ProcMem(pid) as mem:
        for v in read_maps(pid):
            if v.path in ("[vvar]", "[vvar_vclock]", "[vsyscall]"):
                continue
            perms = ("r" if v.read else "-") + ("w" if v.write else "-") + ("x" if v.exec else "-") + \
                    ("s" if v.shared else "p")
            data = mem.read(v.start, v.size)
            for off in range(0, v.size, P):
                out[v.start + off] = (perms, v.path, v.offset + off if v.inode else 0,
                                      hashlib.sha1(data[off:off + P]).digest())
    return out


def _differences(a: dict, b: dict) -> list[str]:
    keys = sorted(set(a) | set(b))
    return [f"{k:#x}: {a.get(k)} != {b.get(k)}" for k in keys if a.get(k) != b.get(k)]


@pytest.mark.parametrize("method", ["uffd-wp", "hash"])
def test_staged_equals_plain_restore_through_layout_churn(c_target, tmp_path: Path, method: str) -> None:  # noqa: ANN001
    q = _Quiet(c_target, tmp_path)
    parent: Path | None = None
    for i in (1, 2, 3):
        pre_dump(q.pid, tmp_path / str(i), parent=parent, method=method)
        parent = tmp_path / str(i)
        q.write(1, 2, 3, 20 + i, 50 + i)
        q.churn(i)
    q.write(7, 8)
    original: dict = {}

    def hook(ev: object) -> None:
        if getattr(ev, "phase", "") == "records" and not original:
            original.update(_memory(q.pid))

    dump(q.pid, tmp_path / "final", parent=parent, progress=hook)
    q.t.proc.returncode = -signal.SIGKILL  # killed and reaped by the dump
    assert Image.open(tmp_path / "final").kind is ImageKind.INCREMENTAL and original

    staged = StagedRestore(inherit_fds=q.t.stdio_fds)
    stages = [staged.start(tmp_path / "1"), staged.apply(tmp_path / "2")]
    tramp = staged._procs[staged.pid].ws.tramp
    stages.append(staged.apply(tmp_path / "3"))  # maps a region over that trampoline: it moves out of the way
    assert tramp != TRAMPOLINE or staged._procs[staged.pid].ws.tramp != tramp
    r = staged.finish(tmp_path / "final")
    try:
        after_staged = _memory(r.pid)
    finally:
        _kill_child(r.pid)
    stages.append(staged.stages[-1])
    # the churn went through every path: new pieces mapped, ranges unmapped, pages dropped and zeroed
    assert sum(s.vmas_mapped for s in stages[1:]) >= 4 and sum(s.ranges_unmapped for s in stages[1:]) >= 2, stages
    assert sum(s.pages_reset for s in stages[1:]) >= 10 + 1 + 2, stages

    r2 = restore(tmp_path / "final", inherit_fds=q.t.stdio_fds)
    try:
        after_plain = _memory(r2.pid)
        # and it still works: the restored process answers a command, its memory as it should be
        q.write(9)
        with ProcMem(r2.pid) as mem:
            assert mem.read(q.area + 9 * P + 8, 1) == b"\x01"
    finally:
        _kill_child(r2.pid)
    assert _differences(after_staged, after_plain) == []
    assert _differences(after_staged, original) == []


# --- the many-VMA target: shared memory views, file mappings, PROT_NONE, growsdown... --------


def test_staged_restore_of_many_vmas(c_target, tmp_path: Path, restored: list[int]) -> None:  # noqa: ANN001
    t = c_target("many_vmas", str(tmp_path / "f"), stdin_pipe=True, stderr=subprocess.DEVNULL)
    assert int(t.ready()["vmas"]) > 400

    def check() -> str:
        os.kill(t.pid, signal.SIGUSR1)
        line = t.expect("CHECK", 10)
        assert line.startswith("CHECK PASS"), line
        return line

    check()
    pre_dump(t.pid, tmp_path / "1")
    check()
    pre_dump(t.pid, tmp_path / "2", parent=tmp_path / "1")
    check()
    dump(t.pid, tmp_path / "final", parent=tmp_path / "2")
    t.proc.returncode = -signal.SIGKILL
    staged = StagedRestore(inherit_fds=t.stdio_fds)
    staged.start(tmp_path / "1")
    staged.apply(tmp_path / "2")
    r = staged.finish(tmp_path / "final")
    restored.append(r.pid)
    assert r.vmas > 400
    check()


# --- abort at every stage; images that do not chain ---------------------------------------------


@pytest.fixture
def chain_of_pages(tmp_path: Path) -> Iterator[tuple[Target, Path]]:
    """Pre-dumps 1, 2, 3 and the final dump of a quiet target (killed by the dump).

    The target runs a copy of scenarios/bin/pages of its own: a test changes its mtime.
    """
    binary = tmp_path / "pages"
    shutil.copy2(build_c("pages"), binary)
    t = spawn([binary, "256"], stdin_pipe=True, stderr=subprocess.DEVNULL)
    try:
        t.ready()
        parent: Path | None = None
        for i in (1, 2, 3):
            pre_dump(t.pid, tmp_path / str(i), parent=parent)
            parent = tmp_path / str(i)
            t.write(f"w {i} {i + 10}\n".encode())
            t.expect("OK")
        dump(t.pid, tmp_path / "final", parent=parent)
        t.proc.returncode = -signal.SIGKILL
        wait_until(lambda: _gone(t.pid), "the dumped target is gone")
        yield t, tmp_path
    finally:
        t.close()


def test_abort_at_every_stage_leaves_nothing(chain_of_pages: tuple[Target, Path]) -> None:
    t, d = chain_of_pages
    StagedRestore().abort()  # nothing started: nothing to do
    for applied in (0, 1, 2):
        s = StagedRestore(inherit_fds=t.stdio_fds)
        s.start(d / "1")
        assert not _gone(t.pid) and tracer_of(t.pid) == os.getpid()
        for i in range(applied):
            s.apply(d / str(i + 2))
        s.abort()
        _nothing_left(t.pid)
        s.abort()  # idempotent
        assert s.state == "aborted"
        with pytest.raises(UsageError):
            s.apply(d / "2")
    # and once finished it runs, untraced
    s = StagedRestore(inherit_fds=t.stdio_fds)
    s.start(d / "1")
    s.apply(d / "2")
    s.apply(d / "3")
    r = s.finish(d / "final")
    assert tracer_of(r.pid) == 0 and s.state == "done"
    _kill_child(r.pid)


def test_images_that_do_not_chain_are_refused_cleanly(chain_of_pages: tuple[Target, Path], tmp_path: Path) -> None:
    t, d = chain_of_pages
    s = StagedRestore(inherit_fds=t.stdio_fds)
    s.start(d / "1")
    with pytest.raises(StagingMismatch, match="not a delta of the images staged so far"):
        s.apply(d / "3")  # its parent is 2, which was skipped
    with pytest.raises(StagingMismatch, match="not a delta"):
        s.finish(d / "final")
    # nothing was changed by the refused images: the right ones still give the process
    assert s.state == "staged" and tracer_of(t.pid) == os.getpid()
    s.apply(d / "2")
    s.apply(d / "3")
    r = s.finish(d / "final")
    try:
        t.write(b"w 5\n")
        assert t.expect("OK")
    finally:
        _kill_child(r.pid)
    wait_until(lambda: _gone(t.pid), "the restored process is gone")

    # a pre-dump without a layout (written before pre-dumps carried one): refused before anything exists
    old = tmp_path / "old"
    with ImageWriter(old, kind=ImageKind.PRE_DUMP) as w:
        w.pages(t.pid).add(0x10000, memoryview(bytes(P)))
        w.commit(processes=[ProcessInfo(t.pid, 1, (t.pid,))])
    with pytest.raises(StagingMismatch, match="no memory layout"):
        StagedRestore().start(old)
    _nothing_left(t.pid)
    # a pre-dump is no final image, an executable changed since the dump is refused (as restore() does):
    # both before anything changed; a failure inside a stage kills the helper
    s = StagedRestore()  # no inherit_fds: the stdio pipes to this test cannot be reopened
    s.start(d / "1")
    with pytest.raises(UsageError, match="pre-dump"):
        s.finish(d / "2")
    s.apply(d / "2")
    s.apply(d / "3")
    st = os.stat(d / "pages")
    os.utime(d / "pages", ns=(st.st_atime_ns, st.st_mtime_ns + 1))  # same bytes, another mtime: "changed"
    with pytest.raises(RestoreError, match="changed since the dump"):
        s.finish(d / "final")
    assert s.state == "staged" and tracer_of(t.pid) == os.getpid()
    os.utime(d / "pages", ns=(st.st_atime_ns, st.st_mtime_ns))
    with pytest.raises(RestoreError, match="pipe"):
        s.finish(d / "final")
    assert s.state == "aborted"
    _nothing_left(t.pid)


# --- in a migration: the receiver stages the pre-copy images ----------------------------------


def test_migration_finishes_a_staged_restore(second_host, tmp_path: Path) -> None:  # noqa: ANN001
    from test_migrate import _free_port, _migrate, _Mutator, _Receiver, _token

    host, port, token = second_host, _free_port(), _token(tmp_path)
    t = _Mutator(tmp_path)
    try:
        t.wait_for(r"GEN g=\d+")
        rx = _Receiver(host, tmp_path, token, port)
        res, stats = _migrate(host, t.pid, port, token, tmp_path, "--max-downtime", "200")
        assert res.returncode == 0, res.stderr
        result = rx.result()
        assert result["outcome"] == "running" and result["staged"] and result["staging"] == "", result
        t.proc.wait(timeout=10)
        n = len(t.lines())
        host.check_output(["kill", "-USR1", str(t.pid)])
        m = t.wait_for(r"CHECK (PASS|FAIL)(.*)", after=n)
        assert m.group(1) == "PASS", m.group(0)
        # the switch-over applied the final delta only: far less than the ~20 MB the first round brought
        assert stats["restore_ms"] > 0 and stats["final_pages"] < stats["rounds"][0]["pages"] // 4, stats
    finally:
        t.close()
