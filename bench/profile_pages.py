"""Standalone profile of the page-data path (PageWriter and the chunk reader), no target process.

Reads the bench workload's memory once (1 GiB by default, 60 % heap-like, 25 %
zero, 15 % random) into a local buffer, then:

* times the pieces of a dump's writer on their own (per-page zero test, copies,
  zstd -1, CRC-32, SHA-256, file writes);
* writes it with :class:`PageWriter` the way ``memory.dump_pages`` does
  (memoryview slices of one reused 4 MiB buffer, refilled by a memmove that
  stands in for process_vm_readv), and reads it back with ``Image.iter_pages``
  / ``iter_chain_pages`` into a pre-faulted destination (standing in for
  process_vm_writev), checking the bytes.

Usage: ``python -m bench.profile_pages [--mib 1024] [--dir DIR] [--parts]``.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import sys
import tempfile
import time
import zlib
from pathlib import Path

import zstandard

from bench.framework import PrefaultedBuffer
from bench.workload import Workload
from ckpt.image import ImageKind, ImageWriter, iter_chain_pages, open_chain
from ckpt.image.reader import Image
from ckpt.kernel import vm

PS = 4096
BUF = 4 << 20


def _rate(n: int, seconds: float) -> str:
    return f"{n / seconds / 1e9:6.2f} GB/s ({seconds * 1e3:7.1f} ms)"


def load_workload(mib: int) -> tuple[PrefaultedBuffer, list[tuple[str, int, int]]]:
    """The workload's memory, read once: (buffer, [(kind, offset, length)])."""
    with Workload(mib) as wl:
        total = wl.total
        src = PrefaultedBuffer(total)
        remote = [(r.addr, r.length) for r in wl.regions]
        local, off, regions = [], 0, []
        for r in wl.regions:
            local.append((src.address + off, r.length))
            regions.append((r.kind, off, r.length))
            off += r.length
        got = vm.process_vm_readv(wl.pid, local, remote)
        assert got == total, (got, total)
    return src, regions


def parts(src: memoryview, out_dir: Path) -> None:
    """Each piece of the writer on its own, over the whole buffer."""
    n = src.nbytes
    zero = bytes(PS)
    buf = bytearray(BUF)
    t = time.perf_counter()
    for off in range(0, n, BUF):
        buf[:] = src[off:off + BUF]
    print(f"  memmove 4 MiB slices        {_rate(n, time.perf_counter() - t)}")
    mv = memoryview(buf)
    t = time.perf_counter()
    for off in range(0, n, BUF):
        for p in range(0, BUF, PS):
            mv[p:p + PS].tobytes() == zero  # noqa: B015 - the old slow path, timed
    print(f"  zero test: slice.tobytes()  {_rate(n, time.perf_counter() - t)}")
    t = time.perf_counter()
    for off in range(0, n, BUF):
        for p in range(0, BUF, PS):
            buf.startswith(zero, p)
    print(f"  zero test: startswith(off)  {_rate(n, time.perf_counter() - t)}")
    zmv = memoryview(zero)
    t = time.perf_counter()
    for off in range(0, n, BUF):
        for p in range(0, BUF, PS):
            mv[p:p + PS] == zmv  # noqa: B015
    print(f"  zero test: memoryview ==    {_rate(n, time.perf_counter() - t)}")
    t = time.perf_counter()
    for off in range(0, n, BUF):
        bytes(src[off:off + BUF])
    print(f"  bytes(view) 4 MiB copies    {_rate(n, time.perf_counter() - t)}")
    cctx = zstandard.ZstdCompressor(level=1, write_checksum=True, write_content_size=True)
    frames = []
    t = time.perf_counter()
    for off in range(0, n, BUF):
        frames.append(cctx.compress(src[off:off + BUF]))
    tc = time.perf_counter() - t
    stored = sum(map(len, frames))
    print(f"  zstd -1 compress            {_rate(n, tc)}  ratio {n / stored:.2f}")
    t = time.perf_counter()
    for f in frames:
        zlib.crc32(f)
    print(f"  crc32 of stored             {_rate(n, time.perf_counter() - t)} (stored {stored >> 20} MiB)")
    t = time.perf_counter()
    h = hashlib.sha256()
    for f in frames:
        h.update(f)
    print(f"  sha256 of stored            {_rate(n, time.perf_counter() - t)}")
    t = time.perf_counter()
    h = hashlib.sha256()
    h.update(src[: 256 << 20])
    print(f"  sha256 raw speed            {_rate(256 << 20, time.perf_counter() - t)}")
    t = time.perf_counter()
    with open(out_dir / "frames", "wb", buffering=1 << 20) as f:
        for fr in frames:
            f.write(fr)
    print(f"  write stored (no fsync)     {_rate(n, time.perf_counter() - t)}")
    dctx = zstandard.ZstdDecompressor()
    out = bytearray(BUF)
    t = time.perf_counter()
    for fr in frames:
        r = dctx.stream_reader(fr, read_across_frames=False)
        r.readinto(out)
        r.read(1)
    print(f"  unzstd stream_reader.readinto {_rate(n, time.perf_counter() - t)}")
    t = time.perf_counter()
    for fr in frames:
        dctx.decompress(fr)
    print(f"  unzstd decompress() (alloc) {_rate(n, time.perf_counter() - t)}")


def write_image(src: memoryview, img: Path) -> float:
    """Dump the buffer the way memory.dump_pages does; return seconds (incl. commit and fsync)."""
    buf = bytearray(BUF)
    view = memoryview(buf)
    n = src.nbytes
    t = time.perf_counter()
    with ImageWriter(img, kind=ImageKind.FULL) as w:
        with w.pages(1) as pw:
            base = 0x10000000
            for off in range(0, n, BUF):
                take = min(BUF, n - off)
                view[:take] = src[off:off + take]  # stands in for process_vm_readv
                # two slices per buffer, as a batch of two ranges would give
                half = take // 2 // PS * PS
                pw.add(base + off, view[:half])
                pw.add(base + off + half, view[half:take])
        w.commit()
    return time.perf_counter() - t


def read_image(img: Path, dst: PrefaultedBuffer, chain: bool) -> float:
    base = 0x10000000
    dv = dst.view()
    t = time.perf_counter()
    if chain:
        it = iter_chain_pages(open_chain(img), 1)
    else:
        it = Image.open(img).iter_pages(1)
    for vaddr, v in it:
        off = vaddr - base
        dv[off:off + v.nbytes] = v  # stands in for process_vm_writev
    return time.perf_counter() - t


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mib", type=int, default=1024)
    ap.add_argument("--dir", default=str(Path(__file__).resolve().parent.parent / ".bench-tmp"))
    ap.add_argument("--parts", action="store_true", help="also time each piece on its own")
    ap.add_argument("--runs", type=int, default=2)
    args = ap.parse_args(argv)
    out_dir = Path(args.dir)
    out_dir.mkdir(exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=out_dir))
    try:
        src, regions = load_workload(args.mib)
        sv = src.view()
        n = sv.nbytes
        print(f"workload: {n >> 20} MiB, " + ", ".join(f"{k} {ln >> 20} MiB" for k, _, ln in regions))
        if args.parts:
            parts(sv, work)
        dst = PrefaultedBuffer(n)
        for run in range(args.runs):
            img = work / f"img{run}"
            tw = write_image(sv, img)
            size = sum(f.stat().st_size for f in img.iterdir())
            print(f"write  PageWriter          {_rate(n, tw)}  image {size >> 20} MiB")
            for chain in (False, True):
                tr = read_image(img, dst, chain)
                name = "iter_chain_pages" if chain else "Image.iter_pages"
                print(f"read   {name:19s} {_rate(n, tr)}")
            ok = dst.view()[:] == sv  # zero pages are not written: dst was zero-filled? see below
            print(f"       round trip {'ok' if ok else 'MISMATCH'}")
            shutil.rmtree(img)
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
