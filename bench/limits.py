"""The physical limits, measured in the same run as everything else (DESIGN §5).

Later rows compare against these keys:

* ``limit.pvr``         process_vm_readv of the workload into a pre-faulted buffer (one call)
* ``limit.pvr_chunk``   the same, one frame at a time into one reused frame-sized buffer
* ``limit.pvr_fresh``   the same into a fresh, unfaulted mapping (why ckpt reuses buffers)
* ``limit.procmem``     ``/proc/PID/mem`` reads (the path for PROT_NONE / exec-only pages)
* ``limit.memmove``     memmove between pre-faulted buffers
* ``limit.fault``       first touch of fresh anonymous memory (what a restore pays per page)
* ``limit.zstd{L}_t{T}``   zstd level L, ZstdCompressor(threads=T), frames of ``--frame-mib``
* ``limit.zstd1_py2``   zstd-1 in two Python threads compressing independent frames
* ``limit.zstd1_{kind}``  zstd-1 on one region kind (heap-like, zero, random)
* ``limit.unzstd1``     decompressing the level-1 frames into a pre-faulted buffer
* ``limit.aead``        sealing and opening the workload as the migration wire does (AES-256-GCM, 1 MiB frames)
* ``limit.tls``         the same through TLS 1.3 (``--tls``: AES-256-GCM records) over a loopback socketpair
* ``limit.ed25519_sign``/``limit.ed25519_verify``  signing and checking an inventory (``--sign-key``)
* ``limit.write``/``limit.fsync``  writing the data to a file next to the repo, and with fsync

Rates are input bytes per second; compression ratios are input/output.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import statistics
import threading
from collections.abc import Iterator
from pathlib import Path

import zstandard

from bench.framework import Context, PrefaultedBuffer, Row, bench, fmt_size
from ckpt.kernel import vm

__all__ = ["memory_reads", "memory_copies", "compression", "crypto", "disk"]

#: Fresh-memory rows use at most this much, so the bench's own peak stays bounded.
FRESH_CAP = 256 << 20
#: memmove / disk writes go through a scratch buffer of this size.
SCRATCH = 64 << 20


@bench("limits", order=0)
def memory_reads(ctx: Context) -> Iterator[Row]:
    wl = ctx.workload
    remote = [(r.addr, r.length) for r in wl.regions]
    local, off = [], 0
    for _, n in remote:
        local.append((ctx.buffer.address + off, n))
        off += n

    def pvr() -> None:
        got = vm.process_vm_readv(wl.pid, local, remote)
        if got != off:
            raise RuntimeError(f"short process_vm_readv: {got}/{off}")

    yield Row("limit.pvr", "process_vm_readv → pre-faulted buffer", off, ctx.repeat(pvr),
              notes=f"{len(remote)} iovecs, one call")
    ctx.loaded = True  # the buffer now holds the workload's memory; later rows use it

    # What a streaming dumper does: read one frame's worth at a time into
    # the same small buffer (it cannot hold a copy of a 100 GiB process).
    frame = ctx.frame_size
    steps = [(r.addr + o, min(frame, r.length - o)) for r in wl.regions for o in range(0, r.length, frame)]
    chunk = PrefaultedBuffer(frame)
    try:
        def pvr_chunked() -> None:
            for a, n in steps:
                if vm.process_vm_readv(wl.pid, [(chunk.address, n)], [(a, n)]) != n:
                    raise RuntimeError(f"short process_vm_readv at {a:#x}")

        yield Row("limit.pvr_chunk", f"process_vm_readv → reused {fmt_size(frame)} buffer", off,
                  ctx.repeat(pvr_chunked), notes=f"{len(steps)} calls")
    finally:
        chunk.close()

    fresh_n = min(off, FRESH_CAP)
    fresh_remote, left = [], fresh_n
    for a, n in remote:
        if left <= 0:
            break
        fresh_remote.append((a, min(n, left)))
        left -= min(n, left)
    times = []
    for _ in range(ctx.runs):
        m = mmap.mmap(-1, fresh_n, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        try:
            base = vm.buffer_address(m)
            fresh_local, o = [], 0
            for _, n in fresh_remote:
                fresh_local.append((base + o, n))
                o += n
            times.extend(ctx.repeat(lambda: vm.process_vm_readv(wl.pid, fresh_local, fresh_remote), runs=1))
        finally:
            m.close()
    yield Row("limit.pvr_fresh", "process_vm_readv → fresh buffer", fresh_n, tuple(times),
              notes="destination faulted on the way")

    scratch = ctx.buffer.view(0, off)

    def procmem() -> None:
        with vm.ProcMem(wl.pid) as mem:
            o = 0
            for r in wl.regions:
                mem.readinto(r.addr, scratch[o:o + r.length])
                o += r.length

    yield Row("limit.procmem", "/proc/PID/mem → pre-faulted buffer", off, ctx.repeat(procmem),
              notes="preadv per region")
    scratch.release()


@bench("limits", order=10)
def memory_copies(ctx: Context) -> Iterator[Row]:
    data = ctx.load_workload()
    n = len(data)
    src = ctx.buffer.address
    dst = PrefaultedBuffer(min(SCRATCH, n))
    try:
        def move() -> None:
            for o in range(0, n, dst.size):
                ctypes.memmove(dst.address, src + o, min(dst.size, n - o))

        yield Row("limit.memmove", "memmove → pre-faulted buffer", n, ctx.repeat(move),
                  notes=f"through a {fmt_size(dst.size)} buffer")
    finally:
        dst.close()
    data.release()

    fresh_n = min(n, FRESH_CAP)
    times = []
    for _ in range(ctx.runs):
        m = mmap.mmap(-1, fresh_n, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        try:
            addr = vm.buffer_address(m)
            times.extend(ctx.repeat(lambda: ctypes.memset(addr, 1, fresh_n), runs=1))
        finally:
            m.close()
    yield Row("limit.fault", "first touch of fresh anonymous memory", fresh_n, tuple(times),
              notes="memset of a new mapping: page faults + zeroing")


def _compress_frames(cctx: zstandard.ZstdCompressor, data: memoryview, frame: int) -> int:
    out = 0
    for o in range(0, len(data), frame):
        out += len(cctx.compress(data[o:o + frame]))
    return out


@bench("limits", order=20)
def compression(ctx: Context) -> Iterator[Row]:
    data = ctx.load_workload()
    n, frame = len(data), ctx.frame_size
    fnote = f"{fmt_size(frame)} frames"
    for level in (1, 3):
        for threads in (1, 2):
            # threads=0 is zstd's single-threaded mode; N >= 1 spawns N workers.
            cctx = zstandard.ZstdCompressor(level=level, threads=threads if threads > 1 else 0)
            sizes: list[int] = []
            times = ctx.repeat(lambda: sizes.append(_compress_frames(cctx, data, frame)))
            yield Row(f"limit.zstd{level}_t{threads}", f"zstd -{level}, {threads} thread{'s' * (threads > 1)}",
                      n, times, ratio=n / sizes[-1], notes=f"{fnote}; ZstdCompressor(threads={threads})")

    # Two Python threads each compressing every other frame: zstandard drops
    # the GIL while compressing, and independent frames need no coordination.
    def two_threads() -> int:
        results = [0, 0]

        def work(k: int) -> None:
            c = zstandard.ZstdCompressor(level=1)
            results[k] = sum(len(c.compress(data[o:o + frame])) for o in range(k * frame, n, 2 * frame))

        ts = [threading.Thread(target=work, args=(k,)) for k in (0, 1)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        return sum(results)

    sizes = []
    times = ctx.repeat(lambda: sizes.append(two_threads()))
    yield Row("limit.zstd1_py2", "zstd -1, 2 Python threads × frames", n, times, ratio=n / sizes[-1],
              notes=f"{fnote}, independent; no zstd-internal threads")

    labels = {"heap": "heap-like", "zero": "zero pages", "random": "random"}
    cctx = zstandard.ZstdCompressor(level=1)
    for r in ctx.workload.regions:
        part = ctx.region_view(r.kind)
        sizes = []
        times = ctx.repeat(lambda: sizes.append(_compress_frames(cctx, part, frame)))
        yield Row(f"limit.zstd1_{r.kind}", f"zstd -1, 1 thread, {labels.get(r.kind, r.kind)} only", len(part),
                  times, ratio=len(part) / sizes[-1], notes=f"{100 * len(part) / n:.0f}% of the workload")
        part.release()

    yield _aead(ctx, data)

    # Decompression: a restore reads frames back.  Frames are compressed
    # one at a time (untimed) and decompressed into a pre-faulted buffer.
    dctx = zstandard.ZstdDecompressor()
    target = PrefaultedBuffer(frame)
    out_view = target.view()
    try:
        times = []
        for _ in range(ctx.runs):
            spent = 0.0
            for o in range(0, n, frame):
                blob = cctx.compress(data[o:o + frame])
                want = min(frame, n - o)
                spent += ctx.repeat(lambda: _decompress_into(dctx, blob, out_view, want), runs=1)[0]
            times.append(spent)
        yield Row("limit.unzstd1", "zstd -d (level-1 frames) → pre-faulted buffer", n, tuple(times),
                  notes=f"{fnote}; rate counts decompressed bytes")
    finally:
        out_view.release()
        target.close()
    data.release()


#: What the migration wire's cipher must sustain on one core (issue 18): never its bottleneck.
AEAD_GOAL = 1.5e9


def _aead(ctx: Context, data: memoryview) -> Row:
    """Seal then open every wire-sized frame of the workload, on one core, with the wire's own sealers."""
    from ckpt.migrate import wire

    key, frame, header = os.urandom(32), wire.CHUNK_SIZE, b"\0\0\0\0"
    n = len(data)

    def run() -> None:
        seal, unseal = wire._Sealer(key), wire._Sealer(key)
        for o in range(0, n, frame):
            if unseal.open(seal.seal(data[o:o + frame], header), header) is None:
                raise RuntimeError("a sealed frame did not open")

    times = ctx.repeat(run)
    rate = n / min(times)
    return Row("limit.aead", "AES-256-GCM seal+open on one core (the migration wire)", n, times,
               notes=f"{fmt_size(frame)} frames, each sealed then opened, their sum timed: goal ≥ "
                     f"{AEAD_GOAL / 1e9:.1f} GB/s {'met' if rate >= AEAD_GOAL else 'MISSED'}")


#: Bytes of the TLS row's stream; of the message the signature rows sign (an inventory listing ~60 files).
TLS_BYTES, INVENTORY_BYTES = 256 << 20, 4096
#: Signatures per timed run of a signature row.
SIGNATURES = 2000


@bench("limits", order=25, workload=False)
def crypto(ctx: Context) -> Iterator[Row]:
    """TLS 1.3 on one core as the wire runs it, and Ed25519 as image signing uses it."""
    yield _tls(ctx)
    yield from _ed25519(ctx)


def _tls(ctx: Context) -> Row:
    """The wire's TLS streams (ckpt/migrate/tls.py) at both ends of a socketpair, on one thread: seal+open."""
    import socket
    import tempfile

    from ckpt.migrate import tls
    from tests.tlscerts import CA

    frame = 1 << 20
    data = memoryview(os.urandom(frame))
    with tempfile.TemporaryDirectory() as d:
        ca = CA(Path(d))
        a, b = ca.issue("source"), ca.issue("receiver")
        client = tls.load(server_side=False, cacert=str(a.cacert), cert=str(a.cert), key=str(a.key))
        server = tls.load(server_side=True, cacert=str(b.cacert), cert=str(b.cert), key=str(b.key))
    s1, s2 = socket.socketpair()
    for s in (s1, s2):
        s.setblocking(False)
    streams: dict[str, tls.TlsStream] = {}

    def side(name: str, config: tls.TlsConfig, sock: socket.socket) -> None:
        streams[name] = config.wrap(sock, "127.0.0.1", lambda readable: True, name)

    threads = [threading.Thread(target=side, args=("client", client, s1)),
               threading.Thread(target=side, args=("server", server, s2))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    tx, rx = streams["client"], streams["server"]
    sink = bytearray(frame)

    def run() -> None:
        for _ in range(TLS_BYTES // frame):
            views, got = [data], 0
            while views or tx.unsent:
                try:
                    n = tx.send(views)
                except BlockingIOError:
                    n = 0
                views = [views[0][n:]] if views and n < views[0].nbytes else []
                while got < frame:  # drain what arrived, so the socket never fills
                    try:
                        got += rx.recv_into(memoryview(sink)[got:])
                    except BlockingIOError:
                        break
            while got < frame:
                try:
                    got += rx.recv_into(memoryview(sink)[got:])
                except BlockingIOError:
                    pass

    try:
        times = ctx.repeat(run)
    finally:
        s1.close()
        s2.close()
    return Row("limit.tls", "TLS 1.3 AES-256-GCM seal+open on one core (migrate --tls)", TLS_BYTES, times,
               baseline="limit.aead", notes=f"{fmt_size(frame)} writes through a socketpair, both ends "
                                            "on one thread (records of 16 KiB, memory BIOs as the wire)")


def _ed25519(ctx: Context) -> Iterator[Row]:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    public, message = key.public_key(), os.urandom(INVENTORY_BYTES)
    signature = key.sign(message)
    times = ctx.repeat(lambda: [key.sign(message) for _ in range(SIGNATURES)])
    per = statistics.median(times) / SIGNATURES
    yield Row("limit.ed25519_sign", "Ed25519 sign of an inventory (dump --sign-key)", INVENTORY_BYTES * SIGNATURES,
              times, notes=f"{fmt_size(INVENTORY_BYTES)} message: {per * 1e6:.0f} µs a signature")
    times = ctx.repeat(lambda: [public.verify(signature, message) for _ in range(SIGNATURES)])
    per = statistics.median(times) / SIGNATURES
    yield Row("limit.ed25519_verify", "Ed25519 verify of an inventory (restore --verify-key)",
              INVENTORY_BYTES * SIGNATURES, times,
              notes=f"{fmt_size(INVENTORY_BYTES)} message: {per * 1e6:.0f} µs a check")


def _decompress_into(dctx: zstandard.ZstdDecompressor, blob: bytes, out: memoryview, want: int) -> None:
    with dctx.stream_reader(blob) as reader:
        got = 0
        while got < want:
            k = reader.readinto(out[got:want])
            if not k:
                break
            got += k
    if got != want:
        raise RuntimeError(f"decompressed {got} of {want} bytes")


def _open_tmpfile(directory: Path) -> int:
    """An unnamed file in ``directory`` (O_TMPFILE): nothing to clean up, even after SIGKILL."""
    try:
        return os.open(directory, os.O_TMPFILE | os.O_WRONLY | os.O_CLOEXEC, 0o600)
    except OSError:
        import tempfile
        fd, name = tempfile.mkstemp(prefix=".bench-disk-", dir=directory)
        os.unlink(name)
        return fd


@bench("limits", order=30)
def disk(ctx: Context) -> Iterator[Row]:
    data = ctx.load_workload()
    n = len(data)
    chunk = min(SCRATCH, n)
    write_times, sync_times = [], []
    for _ in range(ctx.runs):
        fd = _open_tmpfile(ctx.tmpdir)
        try:
            def write() -> None:
                for o in range(0, n, chunk):
                    view = data[o:o + chunk]
                    done = 0
                    while done < len(view):
                        done += os.write(fd, view[done:])
            write_times.extend(ctx.repeat(write, runs=1))
            sync_times.extend(ctx.repeat(lambda: os.fsync(fd), runs=1))
        finally:
            os.close(fd)
    both = tuple(w + s for w, s in zip(write_times, sync_times))
    where = f"{fmt_size(chunk)} writes, {ctx.tmpdir}"
    yield Row("limit.write", "write to a file (page cache)", n, tuple(write_times), notes=where)
    yield Row("limit.fsync", "write + fsync to a file", n, both, notes="time includes the write")
    data.release()


