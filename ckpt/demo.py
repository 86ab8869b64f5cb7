"""``make demo`` / ``ckpt demo``: a short, real session with a live sample process.

What it shows today (issue 2, the foundation): ``ckpt check`` on this
machine; a sample process that is frozen (every thread seized), asked for its
pid by an injected syscall, and whose memory is written into an image while
frozen; the process carrying on unharmed afterwards; then ``ckpt verify`` and
``ckpt show`` on that image.  The image is a memory-only snapshot (kind
PRE_DUMP); full ``dump``/``restore`` replace this step when they land.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

from .control.seize import freeze
from .image import ImageKind, ImageWriter, ProcessInfo
from .image.verify import verify
from .kernel.vm import ProcMem, buffer_address, process_vm_readv
from .procfs import read_maps

__all__ = ["main", "snapshot_memory", "MemorySnapshot"]

#: The sample: a Python process with 64 MiB of patterned memory, counting.
SAMPLE = textwrap.dedent("""
    import sys, time
    blob = bytearray(64 << 20)
    for i in range(0, len(blob), 4096):
        blob[i:i + 8] = i.to_bytes(8, "little")
    n = 0
    print("READY", flush=True)
    while True:
        n += 1
        if n % 200 == 0:
            print(n, flush=True)
        time.sleep(0.001)
""")

_SKIP = ("[vdso]", "[vvar]", "[vvar_vclock]", "[vsyscall]")


@dataclass(frozen=True)
class MemorySnapshot:
    """What :func:`snapshot_memory` did: where, how much, and how long the target was frozen."""

    image_dir: str
    vmas: int
    bytes_read: int
    frozen_ms: float
    injected_getpid: int


def snapshot_memory(pid: int, image_dir: str, *, chunk: int = 4 << 20) -> MemorySnapshot:
    """Freeze ``pid``, write every readable private VMA into a PRE_DUMP image, release it.

    Reads go through one pre-faulted, reused buffer (fresh memory is several
    times slower to fill than re-touched memory here); areas that
    ``process_vm_readv`` cannot read (PROT_NONE, exec-only) go through /proc/PID/mem.
    """
    buf = bytearray(chunk)
    addr = buffer_address(buf)
    view = memoryview(buf)
    total = 0
    with ImageWriter(image_dir, kind=ImageKind.PRE_DUMP, tracking="none") as writer:
        t0 = time.perf_counter()
        with freeze(pid) as frozen:
            got_pid = frozen.injector().getpid()
            vmas = [v for v in read_maps(pid) if not v.shared and v.path not in _SKIP]
            pages = writer.pages(pid)
            with ProcMem(pid) as mem:
                for vma in vmas:
                    for start in range(vma.start, vma.end, chunk):
                        n = min(chunk, vma.end - start)
                        if not vma.read or process_vm_readv(pid, [(addr, n)], [(start, n)]) != n:
                            mem.readinto(start, view[:n])
                        pages.add(start, view[:n])
                        total += n
            pages.close()
            threads = tuple(sorted(frozen.threads))
        frozen_ms = (time.perf_counter() - t0) * 1e3
        ppid = int(Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[1])
        final = writer.commit([ProcessInfo(pid=pid, ppid=ppid, threads=threads)])
    return MemorySnapshot(final, len(vmas), total, frozen_ms, got_pid)


def _step(title: str) -> None:
    print(f"\n== {title}", flush=True)


def main() -> int:
    from . import api

    _step("ckpt check: what this kernel offers, found by trying it")
    report = api.check()
    print(report.format_table())
    if not report.can_dump_restore:
        print("\nthis machine cannot run ckpt; stopping the demo", file=sys.stderr)
        return 1

    work = tempfile.mkdtemp(prefix="ckpt-demo-")
    _step(f"start a sample process (Python, 64 MiB of patterned memory, counting); images in {work}")
    proc = subprocess.Popen([sys.executable, "-c", SAMPLE], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, close_fds=True, text=True)
    try:
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "READY":
            print("the sample process did not start", file=sys.stderr)
            return 1
        before = int(proc.stdout.readline())
        print(f"pid {proc.pid}, counter at {before}")

        _step("freeze it, inject getpid(), write its memory into an image, release it")
        snap = snapshot_memory(proc.pid, os.path.join(work, "snapshot"))
        print(f"injected getpid() returned {snap.injected_getpid} (the target's own pid: "
              f"{'yes' if snap.injected_getpid == proc.pid else 'NO'})")
        print(f"{snap.vmas} VMAs, {snap.bytes_read / 2**20:.1f} MiB read; "
              f"target frozen for {snap.frozen_ms:.0f} ms")

        _step("the sample carries on as if nothing happened")
        after = int(proc.stdout.readline())
        alive = proc.poll() is None and after > before
        print(f"counter now at {after}: {'still running' if alive else 'NOT RUNNING'}")

        _step("ckpt verify: every file, checksum and page chunk")
        result = verify(snap.image_dir)
        print(result.summary())

        _step("ckpt show (summary)")
        text = api.show(snap.image_dir)
        print("\n".join(text.splitlines()[:6]))
        size = sum(f.stat().st_size for f in Path(snap.image_dir).iterdir())
        print(f"\nimage size {size / 2**20:.1f} MiB for {snap.bytes_read / 2**20:.1f} MiB of memory "
              f"(zero pages are not stored; the rest is zstd level 1)")

        ok = alive and result.ok and snap.injected_getpid == proc.pid
        _step("summary")
        print("PASS: froze, injected, snapshotted and released a live process" if ok else "FAIL")
        print("full dump and restore arrive with issue 3 (see README)")
        return 0 if ok else 1
    finally:
        proc.kill()
        proc.wait()
        subprocess.run(["rm", "-rf", work], check=False)


if __name__ == "__main__":
    sys.exit(main())
