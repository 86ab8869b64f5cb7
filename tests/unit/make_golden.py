"""Write the golden images in ``images/`` (run once; the output is committed).

    .venv/bin/python tests/unit/make_golden.py [--force]

The format tests (test_image_golden.py) decode the committed bytes and check
known values; they never run this script, so a change of the format that
would make old images unreadable fails them.  Ids, times and host details are
fixed here so the output is reproducible (only zstd may encode differently
with another library version, which the tests do not depend on).

* ``images/simple``: a FULL image of one process (pid 1000) with two threads,
  a few VMAs of different kinds, open files, and pages stored in several chunks
  with zero ranges in between.
* ``images/chain/0`` and ``images/chain/1``: the worked example of the delta
  format in ckpt/image/chain.py — a PRE_DUMP base and an INCREMENTAL delta
  whose pagemap has PARENT ranges.
* ``images/v2``: format 2 (2026-11) — a PRE_DUMP whose zstd chunks carry no
  CRC-32 and whose pages file has no SHA-256 in the inventory, tracking a
  selection of address ranges (``pre-dump --ranges/--exclude-ranges``).
* ``images/encrypted`` (2026-12): a PRE_DUMP encrypted at rest (ckpt/image/sealing.py) with the key in
  ``images/encrypted.key`` — public test data, never a key to use.  Its salt is random: rewriting it
  gives other bytes that decode the same.

Images that exist are left alone (``--force`` rewrites them all).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys

from ckpt.image import ImageKind, ImageWriter, ProcessInfo, TrackingInfo
from ckpt.image.pb import common_pb2, core_pb2, files_pb2, mm_pb2, process_pb2

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
IMAGES = os.path.join(REPO, "images")
PAGE = 4096
SIMPLE_ID = "5e" * 16
CHAIN0_ID = "c0" * 16
CHAIN1_ID = "c1" * 16
V2_ID = "f2" * 16
ENCRYPTED_ID = "e5" * 16
#: The golden encrypted image's key: public test data (images/encrypted.key), never a key to use.
GOLDEN_KEY = bytes(range(0x40, 0x60))
FIXED = dict(kernel_release="6.18.0-golden", hostname="golden", boot_id="00000000-0000-4000-8000-000000000000",
             cpu=None, kernel=None)  # the golden images predate the CPU and kernel records
EXE = "/usr/bin/golden-sample"


def page(label: str) -> bytes:
    """Content of one golden page: the label repeated (the tests rebuild it the same way)."""
    unit = f"ckpt golden page {label}\n".encode()
    return (unit * (PAGE // len(unit) + 1))[:PAGE]


def pages(vaddr: int, n: int) -> bytes:
    return b"".join(page(hex(vaddr + i * PAGE)) for i in range(n))


def _regs(rip: int, rsp: int, fs_base: int, **kw: int) -> core_pb2.UserRegsX86_64:
    return core_pb2.UserRegsX86_64(rip=rip, rsp=rsp, fs_base=fs_base, cs=0x33, ss=0x2B, eflags=0x246, **kw)


def _sigactions() -> list[process_pb2.SigAction]:
    acts = [process_pb2.SigAction(signo=n) for n in range(1, 65)]
    acts[1] = process_pb2.SigAction(signo=2, handler=0x555555554800, flags=0x14000000, restorer=0x7F0000001000, mask=1 << 14)
    acts[12] = process_pb2.SigAction(signo=13, handler=1)  # SIGPIPE ignored
    return acts


def write_simple(root: str) -> None:
    pid, tid = 1000, 1001
    exe_id = common_pb2.FileIdentity(dev=0x803, ino=131, size=16000, mtime_ns=1_690_000_000_000_000_000, mode=0o100755)
    vmas = [
        mm_pb2.Vma(start=0x555555554000, end=0x555555556000, prot=5, flags=0x2, kind=mm_pb2.Vma.FILE_PRIVATE, name=EXE, pgoff=0, file=exe_id, vm_flags="rd ex mr mw me sd"),
        mm_pb2.Vma(start=0x555555556000, end=0x555555557000, prot=3, flags=0x2, kind=mm_pb2.Vma.FILE_PRIVATE, name=EXE, pgoff=0x2000, file=exe_id, vm_flags="rd wr mr mw me ac sd", tracked=True),
        mm_pb2.Vma(start=0x555555557000, end=0x555555578000, prot=3, flags=0x22, kind=mm_pb2.Vma.HEAP, name="[heap]", vm_flags="rd wr mr mw me ac sd", tracked=True),
        mm_pb2.Vma(start=0x7F0000000000, end=0x7F0000010000, prot=3, flags=0x22, kind=mm_pb2.Vma.ANON_PRIVATE, vm_flags="rd wr mr mw me ac sd", tracked=True),
        mm_pb2.Vma(start=0x7F0000010000, end=0x7F0000011000, prot=0, flags=0x22, kind=mm_pb2.Vma.ANON_PRIVATE, vm_flags="mr mw me ac sd"),
        mm_pb2.Vma(start=0x7FFC00000000, end=0x7FFC00021000, prot=3, flags=0x122, kind=mm_pb2.Vma.STACK, name="[stack]", vm_flags="rd wr mr mw me gd ac", tracked=True),
        mm_pb2.Vma(start=0x7FFC000FC000, end=0x7FFC00100000, prot=1, flags=0x22, kind=mm_pb2.Vma.VVAR, name="[vvar]", vm_flags="rd mr pf io de dd sd"),
        mm_pb2.Vma(start=0x7FFC00100000, end=0x7FFC00102000, prot=5, flags=0x22, kind=mm_pb2.Vma.VDSO, name="[vdso]", vm_flags="rd ex mr mw me de sd"),
    ]
    mm = mm_pb2.MmEntry(
        start_code=0x555555554000, end_code=0x555555556000, start_data=0x555555556000, end_data=0x555555557000,
        start_brk=0x555555557000, brk=0x555555578000, start_stack=0x7FFC00020F00,
        arg_start=0x7FFC00020F10, arg_end=0x7FFC00020F27, env_start=0x7FFC00020F27, env_end=0x7FFC00020FF0,
        auxv=(6).to_bytes(8, "little") + PAGE.to_bytes(8, "little") + bytes(16),
        exe_path=EXE, exe=exe_id,
    )
    threads = [
        core_pb2.ThreadCore(
            tid=pid, comm="golden", regs=_regs(0x555555554A10, 0x7FFC00020E00, 0x7F0000002740, rax=0xFFFFFFFFFFFFFDFC, orig_rax=230),
            xstate=bytes(range(256)) * 2, sigmask=0, clear_child_tid=0x7F0000002A10,
            rseq=core_pb2.Rseq(abi_pointer=0x7F0000002E00, size=32, signature=0x53053053),
            robust_list=core_pb2.RobustList(head=0x7F0000002A20, len=24),
            sigaltstack=core_pb2.SigAltStack(flags=2),
            syscall=core_pb2.SyscallState(nr=230, result=-516, resume=core_pb2.SyscallState.EINTR),
            timer_slack_ns=50_000,
            sched=core_pb2.SchedState(policy=0, nice=0, cpu_affinity=b"\x03"),
        ),
        core_pb2.ThreadCore(
            tid=tid, comm="golden-worker", regs=_regs(0x555555554B20, 0x7F000000FE00, 0x7F000000F6C0, rax=0xFFFFFFFFFFFFFE00, orig_rax=202),
            xstate=bytes(range(255, -1, -1)) * 2, sigmask=1 << 1, clear_child_tid=0x7F000000F990,
            rseq=core_pb2.Rseq(abi_pointer=0x7F000000FA80, size=32, signature=0x53053053),
            robust_list=core_pb2.RobustList(head=0x7F000000F9A0, len=24),
            sigaltstack=core_pb2.SigAltStack(flags=2),
            syscall=core_pb2.SyscallState(nr=202, result=-512, resume=core_pb2.SyscallState.RESTART),
            pending=[common_pb2.PendingSignal(signo=10, siginfo=(10).to_bytes(4, "little") + bytes(124))],
            timer_slack_ns=50_000,
            sched=core_pb2.SchedState(policy=0, nice=0, cpu_affinity=b"\x03"),
        ),
    ]
    proc = process_pb2.ProcessEntry(
        pid=pid, ppid=1, pgid=pid, sid=pid, comm="golden",
        creds=process_pb2.Creds(uid=1000, euid=1000, suid=1000, fsuid=1000, gid=1000, egid=1000, sgid=1000, fsgid=1000,
                                groups=[1000, 27], cap_bounding=0x1FFFFFFFFFF),
        rlimits=[process_pb2.Rlimit(resource=3, name="STACK", cur=8 << 20, max=(1 << 64) - 1),
                 process_pb2.Rlimit(resource=7, name="NOFILE", cur=1024, max=524288)],
        umask=0o022, cwd="/home/golden", root="/", personality=0, sigactions=_sigactions(),
        start_time=123456, exit_signal=17, oom_score_adj=0, cgroup="/user.slice",
        flags=process_pb2.ProcessFlags(dumpable=1),
    )
    fds = [
        files_pb2.FdEntry(fd=0, file_id=1),
        files_pb2.FdEntry(fd=1, file_id=2),
        files_pb2.FdEntry(fd=2, file_id=2),
        files_pb2.FdEntry(fd=3, fd_flags=1, file_id=3),
        files_pb2.FdEntry(fd=4, fd_flags=1, file_id=3),
    ]
    file_entries = [
        files_pb2.FileEntry(id=1, kind=files_pb2.FileEntry.CHR, path="/dev/null", flags=0o100000,
                            identity=common_pb2.FileIdentity(dev=0x5, ino=4, mode=0o20666)),
        files_pb2.FileEntry(id=2, kind=files_pb2.FileEntry.PIPE, path="pipe:[5555]", flags=0o100001,
                            pipe=files_pb2.Pipe(pipe_id=5555, capacity=65536, data=b"unread output\n")),
        files_pb2.FileEntry(id=3, kind=files_pb2.FileEntry.REG, path="/tmp/golden.log", flags=0o102001, pos=42,
                            identity=common_pb2.FileIdentity(dev=0x803, ino=777, size=42, mtime_ns=1_699_999_999_000_000_000, mode=0o100644)),
    ]
    final = os.path.join(root, "simple")
    with ImageWriter(final, kind=ImageKind.FULL, tracking="none", chunk_size=4 * PAGE, image_id=SIMPLE_ID,
                     created_ns=1_700_000_000_000_000_000, **FIXED) as w:
        w.write_process(pid, proc)
        w.write_threads(pid, threads)
        w.write_mm(pid, mm, vmas)
        w.write_fds(pid, fds)
        w.write_files(file_entries)
        with w.pages(pid) as pw:
            pw.add(0x555555556000, pages(0x555555556000, 1))
            heap = bytearray(pages(0x555555557000, 6))
            heap[3 * PAGE : 4 * PAGE] = bytes(PAGE)  # one zero page inside the heap run
            pw.add(0x555555557000, heap)
            pw.add_zero(0x7F0000000000, 8)
            pw.add(0x7F0000008000, pages(0x7F0000008000, 5))
            pw.add(0x7FFC0001F000, pages(0x7FFC0001F000, 2))
        w.commit(processes=[ProcessInfo(pid, 1, (pid, tid), start_time=123456)],
                 extra={"generator": "tests/unit/make_golden.py"})


def _chain_process(pid: int) -> tuple[process_pb2.ProcessEntry, core_pb2.ThreadCore, mm_pb2.MmEntry, list[mm_pb2.Vma]]:
    proc = process_pb2.ProcessEntry(pid=pid, ppid=1, pgid=pid, sid=pid, comm="chain", start_time=777, exit_signal=17)
    core = core_pb2.ThreadCore(tid=pid, comm="chain", regs=_regs(0x401000, 0x6FF0, 0))
    mm = mm_pb2.MmEntry(start_code=0x400000, end_code=0x401000)
    vmas = [mm_pb2.Vma(start=0x1000, end=0x7000, prot=3, flags=0x22, kind=mm_pb2.Vma.ANON_PRIVATE, tracked=True)]
    return proc, core, mm, vmas


def write_chain(root: str) -> None:
    pid = 2000
    chain = os.path.join(root, "chain")
    os.makedirs(chain, exist_ok=True)
    tracking = TrackingInfo("uffd-wp", parked_fd=1023, uffd_inode=4711)
    info = ProcessInfo(pid, 1, (pid,), start_time=777, tracking=tracking)
    with ImageWriter(os.path.join(chain, "0"), kind=ImageKind.PRE_DUMP, tracking="uffd-wp", chunk_size=2 * PAGE,
                     image_id=CHAIN0_ID, created_ns=1_700_000_100_000_000_000, **FIXED) as w:
        with w.pages(pid) as pw:
            pw.add(0x1000, page("A") + page("B") + page("C"))
            pw.add(0x4000, bytes(PAGE))  # detected as ZERO
            pw.add(0x5000, page("D"))
        w.commit(processes=[info])
    with ImageWriter(os.path.join(chain, "1"), kind=ImageKind.INCREMENTAL, parent=os.path.join(chain, "0"),
                     tracking="uffd-wp", chunk_size=2 * PAGE, image_id=CHAIN1_ID,
                     created_ns=1_700_000_200_000_000_000, **FIXED) as w:
        proc, core, mm, vmas = _chain_process(pid)
        w.write_process(pid, proc)
        w.write_threads(pid, [core])
        w.write_mm(pid, mm, vmas)
        w.write_fds(pid, [])
        with w.pages(pid) as pw:
            pw.add_parent(0x1000, 1)
            pw.add(0x2000, page("B'"))
            pw.add_zero(0x3000, 1)
            pw.add(0x4000, page("E"))
            pw.add_parent(0x5000, 1)
            pw.add(0x6000, page("F"))
        w.commit(processes=[info])


def write_v2(root: str) -> None:
    pid = 3000
    tracking = TrackingInfo("uffd-wp", parked_fd=1022, uffd_inode=4712, include=((0x10000, 0x20000),),
                            exclude=((0x14000, 0x15000),))
    with ImageWriter(os.path.join(root, "v2"), kind=ImageKind.PRE_DUMP, tracking="uffd-wp", chunk_size=2 * PAGE,
                     image_id=V2_ID, created_ns=1_764_000_000_000_000_000, **FIXED) as w:
        with w.pages(pid) as pw:
            pw.add(0x10000, page("G") + page("H") + page("I"))
            pw.add(0x13000, bytes(PAGE))  # detected as ZERO
            pw.add(0x15000, page("J"))
        w.commit(processes=[ProcessInfo(pid, 1, (pid,), start_time=888, tracking=tracking)])


def write_encrypted(root: str) -> None:
    from ckpt.image import sealing

    pid = 4000
    key_path = os.path.join(root, "encrypted.key")
    with open(key_path, "wb") as f:
        f.write(sealing.KEY_FILE_PREFIX + GOLDEN_KEY.hex().encode() + b"\n")
    os.chmod(key_path, 0o600)
    with sealing.encrypting(sealing.EncryptionKey(GOLDEN_KEY, key_path)):
        with ImageWriter(os.path.join(root, "encrypted"), kind=ImageKind.PRE_DUMP, tracking="uffd-wp",
                         chunk_size=2 * PAGE, image_id=ENCRYPTED_ID, created_ns=1_765_000_000_000_000_000,
                         **FIXED) as w:
            with w.pages(pid) as pw:
                pw.add(0x10000, page("K") + page("L") + page("M"))
                pw.add(0x13000, bytes(PAGE))  # detected as ZERO
                pw.add(0x14000, page("N"))
            w.commit(processes=[ProcessInfo(pid, 1, (pid,), start_time=999)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="replace existing golden images")
    parser.add_argument("--out", default=IMAGES, help="directory to write into (default: images/)")
    args = parser.parse_args(argv)
    writers = {"simple": write_simple, "chain": write_chain, "v2": write_v2, "encrypted": write_encrypted}
    os.makedirs(args.out, exist_ok=True)
    wrote = []
    for name, write in writers.items():
        target = os.path.join(args.out, name)
        if os.path.exists(target):
            if not args.force:
                continue  # golden images must stay stable
            shutil.rmtree(target)
        write(args.out)
        wrote.append(name)
    print(f"wrote golden images {', '.join(wrote) or '(none: all exist; --force rewrites)'} in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
