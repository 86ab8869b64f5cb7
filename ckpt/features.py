"""Kernel facilities ckpt relies on, found by trying each one (behind ``ckpt check``).

Version numbers lie (back-ports, config options, sysctls, missing
capabilities), so every probe *does* the thing once on a throw-away object:
seizes and injects into a short-lived child, scans a page of our own memory,
creates a userfaultfd, forks with a chosen pid, puts a socket in repair mode.
The result is one frozen record, computed once per run.

Test aid: ``CKPT_DISABLE=pagemap_scan,uffd_wp,soft_dirty`` (any of them)
makes those probes fail as if the kernel lacked the facility, so the fallback
paths (pagemap reads instead of PAGEMAP_SCAN, soft-dirty or hash instead of
uffd-wp) run on a kernel that has everything.  ``same_vdso`` makes a restore take
this kernel's vDSO for another kernel's, so the routing of
:mod:`ckpt.resources.vdso` runs on the kernel the image was taken on.  It is read
here and nowhere else.
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import mmap
import os
import platform
import socket
import struct
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from .errors import Unsupported, UsageError
from .kernel import pagemap as pm
from .kernel import uffd
from .kernel.arch_x86_64 import NR, PAGE_SIZE
from .kernel.vm import ProcMem, buffer_address, read_memory

__all__ = ["Probe", "Features", "probe_features", "select_tracking", "TRACKING_METHODS", "DISABLE_ENV", "SAME_VDSO",
           "disabled", "pagemap_scan_works", "zero_pfns", "tracking_working"]

#: Dirty-tracking back-ends in order of preference (DESIGN §2).
TRACKING_METHODS = ("uffd-wp", "soft-dirty", "hash")
#: The test aid (module docstring): facilities to treat as missing.
DISABLE_ENV = "CKPT_DISABLE"
#: What ``CKPT_DISABLE=same_vdso`` turns off: a restore's use of the same kernel's vDSO as it is.
SAME_VDSO = "same vDSO"
#: Names CKPT_DISABLE takes → the probe each one fails.
_DISABLE_NAMES = {"pagemap_scan": "PAGEMAP_SCAN", "uffd_wp": "userfaultfd WP_ASYNC", "soft_dirty": "soft-dirty",
                  "same_vdso": SAME_VDSO}

TCP_REPAIR = 19  # <linux/tcp.h>
PR_SET_MM = 35
PR_SET_MM_MAP_SIZE = 15
#: Linux writes the xfeatures mask (XCR0) into the first software-reserved bytes of
#: the FXSAVE area it hands to PTRACE_GETREGSET NT_X86_XSTATE (gdb reads it there too).
XSTATE_XCR0_OFFSET = 464


@dataclass(frozen=True)
class Probe:
    """The outcome of trying one facility."""

    name: str
    ok: bool
    detail: str
    #: True when dump/restore cannot work without it.
    required: bool = False


@dataclass(frozen=True)
class Features:
    """Everything ``ckpt check`` found, plus the choices that follow from it."""

    kernel: str
    machine: str
    probes: tuple[Probe, ...]
    tracking: str
    #: Every tracking back-end that works here, in order of preference.
    backends: tuple[str, ...] = ()
    #: How pages are listed: "pagemap-scan" (PAGEMAP_SCAN) or "pagemap-read" (classic entries).
    page_listing: str = ""
    xstate_size: int | None = None
    xcr0: int | None = None
    pid_max: int | None = None
    extra: dict[str, object] = field(default_factory=dict)
    #: A real dump and restore of a child (``ckpt check``: :mod:`ckpt.selftest`); None: not run.
    selftest: Probe | None = None

    def probe(self, name: str) -> Probe | None:
        return next((p for p in self.probes if p.name == name), None)

    def has(self, name: str) -> bool:
        p = self.probe(name)
        return bool(p and p.ok)

    @property
    def can_dump_restore(self) -> bool:
        return all(p.ok for p in self.probes if p.required) and (self.selftest is None or self.selftest.ok)

    def as_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["probes"] = [asdict(p) for p in self.probes]
        d["selftest"] = asdict(self.selftest) if self.selftest is not None else None
        d["can_dump_restore"] = self.can_dump_restore
        return d

    def format_table(self) -> str:
        width = max(len(p.name) for p in self.probes)
        lines = [f"kernel {self.kernel} ({self.machine})", ""]
        for p in self.probes:
            mark = "yes" if p.ok else ("NO " if p.required else "no ")
            lines.append(f"  {p.name:<{width}}  {mark}  {p.detail}")
        lines.append("")
        lines.append(f"dirty tracking: {self.tracking} (back-ends here: {', '.join(self.backends)})")
        lines.append(f"page listing: {self.page_listing}")
        if self.selftest is not None:
            lines.append(f"{self.selftest.name}: {'yes' if self.selftest.ok else 'FAILED'}  {self.selftest.detail}")
        missing = ", ".join(p.name for p in self.probes if p.required and not p.ok)
        if self.can_dump_restore:
            tried = "tried for real" if self.selftest is not None else "by the probes (not tried)"
            lines.append(f"dump/restore: supported on this machine ({tried})")
        elif missing:
            lines.append(f"dump/restore: NOT possible here (missing: {missing})")
        else:
            lines.append("dump/restore: NOT working here (the real dump/restore above failed)")
        return "\n".join(lines)


def _try(name: str, fn: Callable[[], str], *, required: bool = False) -> Probe:
    """Run one probe; any exception becomes a failed probe carrying its message."""
    try:
        return Probe(name, True, fn(), required)
    except Exception as e:  # a probe must never abort the whole check
        return Probe(name, False, f"{type(e).__name__}: {e}" if not isinstance(e, OSError) else str(e), required)


class _Anon:
    """A few pages of our own anonymous memory, for probes that scan or protect memory."""

    def __init__(self, npages: int) -> None:
        self.size = npages * PAGE_SIZE
        self.map = mmap.mmap(-1, self.size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        self.addr = buffer_address(memoryview(self.map))

    def touch(self, page: int) -> None:
        self.map[page * PAGE_SIZE] = 1

    def close(self) -> None:
        self.map.close()


def _probe_pagemap_scan() -> str:
    area = _Anon(4)
    try:
        area.touch(1)
        with open("/proc/self/pagemap", "rb", buffering=0) as f:
            regions = list(pm.pagemap_scan(
                f.fileno(), area.addr, area.addr + area.size,
                category_mask=pm.PAGE_IS_PRESENT, return_mask=pm.PAGE_IS_PRESENT))
        pages = sum((r.end - r.start) // PAGE_SIZE for r in regions)
        if pages != 1:
            raise OSError(errno.EINVAL, f"PAGEMAP_SCAN saw {pages} present pages, expected 1")
        return "ioctl on /proc/PID/pagemap reports present pages"
    finally:
        area.close()


def _probe_uffd_wp_async() -> str:
    """Register our own pages for async write-protect, write one, get+clear it."""
    area = _Anon(8)
    fd = -1
    try:
        for p in range(8):
            area.touch(p)
        fd = uffd.userfaultfd(os.O_CLOEXEC | os.O_NONBLOCK)
        want = uffd.UFFD_FEATURE_WP_ASYNC | uffd.UFFD_FEATURE_WP_UNPOPULATED
        features, _ = uffd.uffd_api(fd, want)
        if features & want != want:
            raise OSError(errno.ENOTSUP, f"UFFDIO_API lacks WP_ASYNC/WP_UNPOPULATED (features {features:#x})")
        uffd.register(fd, area.addr, area.size, uffd.UFFDIO_REGISTER_MODE_WP)
        flags = pm.PM_SCAN_WP_MATCHING | pm.PM_SCAN_CHECK_WPASYNC
        with open("/proc/self/pagemap", "rb", buffering=0) as f:
            # First get+clear write-protects everything (all pages count as written once).
            list(pm.pagemap_scan(f.fileno(), area.addr, area.addr + area.size, flags=flags,
                                 category_mask=pm.PAGE_IS_WRITTEN, return_mask=pm.PAGE_IS_WRITTEN))
            area.touch(3)
            area.touch(5)
            regions = list(pm.pagemap_scan(f.fileno(), area.addr, area.addr + area.size, flags=flags,
                                           category_mask=pm.PAGE_IS_WRITTEN, return_mask=pm.PAGE_IS_WRITTEN))
            again = list(pm.pagemap_scan(f.fileno(), area.addr, area.addr + area.size, flags=flags,
                                         category_mask=pm.PAGE_IS_WRITTEN, return_mask=pm.PAGE_IS_WRITTEN))
        written = sorted({(a - area.addr) // PAGE_SIZE for r in regions for a in range(r.start, r.end, PAGE_SIZE)})
        if written != [3, 5] or again:
            raise OSError(errno.EIO, f"get+clear saw pages {written}, then {len(again)} regions; expected [3, 5] then none")
        return "userfaultfd async write-protect + PAGEMAP_SCAN get+clear exact"
    finally:
        if fd >= 0:
            os.close(fd)
        area.close()


def _probe_soft_dirty() -> str:
    """Clear soft-dirty bits of our own process, write a page, look for bit 55."""
    area = _Anon(2)
    try:
        area.touch(0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("4")
        area.touch(1)
        with open("/proc/self/pagemap", "rb", buffering=0) as f:
            entries = pm.read_pagemap_entries(f.fileno(), area.addr, 2)
        if not any(pm.pm_soft_dirty(e) for e in entries):
            raise OSError(errno.ENOTSUP, "no soft-dirty bit after a write (kernel built without CONFIG_MEM_SOFT_DIRTY)")
        return "clear_refs 4 + pagemap bit 55 (whole-process clear, not atomic)"
    finally:
        area.close()


@functools.cache
def disabled() -> frozenset[str]:
    """The probes ``CKPT_DISABLE`` turns off (names of _DISABLE_NAMES); UsageError on an unknown name."""
    names = {n.strip() for n in os.environ.get(DISABLE_ENV, "").split(",") if n.strip()}
    unknown = names - _DISABLE_NAMES.keys()
    if unknown:
        raise UsageError(f"{DISABLE_ENV}: unknown facility {', '.join(sorted(unknown))} "
                         f"(choose from {', '.join(_DISABLE_NAMES)})")
    return frozenset(_DISABLE_NAMES[n] for n in names)


def _unless_disabled(name: str, fn: Callable[[], str]) -> Callable[[], str]:
    def run() -> str:
        if name in disabled():
            raise OSError(errno.ENOTSUP, f"disabled by {DISABLE_ENV} (a test aid)")
        return fn()
    return run


@functools.cache
def _cheap_probe(name: str) -> Probe:
    """A probe that needs no other process (our own memory only), run once per process."""
    disabled()  # a bad CKPT_DISABLE is the user's mistake (UsageError), not a failed probe
    fn = {"PAGEMAP_SCAN": _probe_pagemap_scan, "userfaultfd WP_ASYNC": _probe_uffd_wp_async,
          "soft-dirty": _probe_soft_dirty, "pidfd_getfd": _probe_pidfd_getfd_self,
          "pagemap entries": _probe_pagemap_entries}[name]
    return _try(name, _unless_disabled(name, fn))


def pagemap_scan_works() -> bool:
    """PAGEMAP_SCAN (Linux 6.7) lists pages here; else lists come from pagemap reads (probed once)."""
    return _cheap_probe("PAGEMAP_SCAN").ok


def tracking_working() -> set[str]:
    """Names of the probes the tracking back-ends need that work here, without seizing any process.

    Seizing and injecting are not tried (the tracker that needs them says so
    clearly when they fail); a probe of the whole machine is ``ckpt check``.
    """
    names = ("PAGEMAP_SCAN", "pagemap entries", "userfaultfd WP_ASYNC", "soft-dirty", "pidfd_getfd")
    return {n for n in names if _cheap_probe(n).ok} | {"ptrace + syscall injection"}


def _probe_pidfd_getfd_self() -> str:
    from .kernel import pidfd

    pfd = pidfd.pidfd_open(os.getpid())
    try:
        os.close(pidfd.pidfd_getfd(pfd, pfd))
    finally:
        os.close(pfd)
    return "pidfd_open + pidfd_getfd"


@functools.cache
def zero_pfns() -> pm.ZeroPfns:
    """The zero page's pfn and the huge zero page's first pfn, seen in our own page tables (0: unknown).

    Read faults on never-written anonymous memory map them; pfns are visible
    to CAP_SYS_ADMIN only.  A page listing from pagemap reads needs them to
    report PAGE_IS_PFNZERO, which a soft-dirty delta relies on: a page dropped
    and then only read maps the zero page without setting its soft-dirty bit.
    """
    small = huge = 0
    with open("/proc/self/pagemap", "rb", buffering=0) as f:
        area = _Anon(1)
        try:
            _ = area.map[0]
            small = pm.pm_pfn(pm.read_pagemap_entries(f.fileno(), area.addr, 1)[0])
        finally:
            area.close()
        hp = 512
        big = _Anon(2 * hp)
        try:
            off = (-big.addr) % (hp * PAGE_SIZE)
            try:
                big.map.madvise(mmap.MADV_HUGEPAGE, off, hp * PAGE_SIZE)
            except OSError:
                pass  # no THP: no huge zero page either
            _ = big.map[off]
            entries = pm.read_pagemap_entries(f.fileno(), big.addr + off, hp)
            first = pm.pm_pfn(entries[0])
            if first and first != small and first % hp == 0 and all(
                    pm.pm_pfn(e) == first + i for i, e in enumerate(entries)):
                huge = first
        finally:
            big.close()
    return pm.ZeroPfns(small, huge, hp)


def _probe_pagemap_entries() -> str:
    """Classic pagemap entries: what lists pages without PAGEMAP_SCAN."""
    area = _Anon(2)
    try:
        area.touch(1)
        with open("/proc/self/pagemap", "rb", buffering=0) as f:
            cats = pm.page_categories(f.fileno(), area.addr, 2)
        if [c & pm.PAGE_IS_PRESENT for c in cats] != [0, pm.PAGE_IS_PRESENT]:
            raise OSError(errno.EIO, f"pagemap entries say present {list(cats)}, expected [0, {pm.PAGE_IS_PRESENT}]")
    finally:
        area.close()
    z = zero_pfns()
    if not z.small:
        return "read in batches; pfns hidden (no CAP_SYS_ADMIN): zero pages are not recognised"
    return (f"read in batches; zero page pfn {z.small:#x}"
            + (f", huge zero page pfn {z.huge:#x}" if z.huge else ", no huge zero page seen"))


def _probe_tcp_repair() -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR, 1)
        s.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR, 0)
    return "setsockopt(TCP_REPAIR) accepted"


def _probe_clone3_set_tid() -> str:
    from .kernel import clone

    pid_max = int(open("/proc/sys/kernel/pid_max").read())
    # A pid well away from the allocator's cursor, free now; retry a few on a race.
    last = int(open("/proc/sys/kernel/ns_last_pid").read())
    for attempt in range(16):
        want = (last + 1000 + 97 * attempt) % (pid_max - 300) + 300
        if os.path.exists(f"/proc/{want}"):
            continue
        # clone3 from a forked child (clone.clone3 says why), with CLONE_PARENT: the clone is ours to reap.
        mid = os.fork()
        if mid == 0:
            code = 1
            try:
                code = 0 if clone.clone3(clone.CLONE_PARENT, exit_signal=0, set_tid=[want]) == want else 2
            except OSError as e:
                code = 100 + (e.errno or 0)
            finally:
                os._exit(code)  # the clone leaves here too, at once
        code = os.waitstatus_to_exitcode(os.waitpid(mid, 0)[1])
        if code == 100 + errno.EEXIST:
            continue
        if code >= 100:
            raise OSError(code - 100, f"clone3(set_tid=[{want}]): {os.strerror(code - 100)}")
        if code != 0:
            raise OSError(errno.EINVAL, f"clone3 did not give pid {want}")
        os.waitpid(want, 0)
        return f"a child got the requested pid {want} (pid_max {pid_max})"
    raise OSError(errno.EEXIST, "no free pid found to try")


def _probe_time_ns() -> str:
    """A time namespace with offsets, made in a forked child (unshare changes its children's clocks for good)."""
    from .kernel import clone
    from .kernel.arch_x86_64 import NR
    from .kernel.libc import syscall

    if not os.path.exists("/proc/self/ns/time"):
        raise OSError(errno.ENOENT, "no /proc/self/ns/time: this kernel has no time namespaces (CONFIG_TIME_NS)")
    child = os.fork()
    if child == 0:
        code = 1
        try:
            syscall(NR.unshare, clone.CLONE_NEWTIME, name="unshare(CLONE_NEWTIME)")
            with open("/proc/self/timens_offsets", "w") as f:
                f.write("1 1 0\n7 1 0\n")
            code = 0
        except OSError as e:
            code = 100 + (e.errno or 0)
        finally:
            os._exit(code)
    code = os.waitstatus_to_exitcode(os.waitpid(child, 0)[1])
    if code >= 100:
        raise OSError(code - 100, f"unshare(CLONE_NEWTIME) and its offsets: {os.strerror(code - 100)}")
    if code != 0:
        raise OSError(errno.EINVAL, "the time namespace probe failed")
    return "unshare(CLONE_NEWTIME) with offsets: a restore on another boot keeps the clocks going"


def _vdso_detail() -> str:
    sizes = {}
    with open("/proc/self/maps") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 6 and parts[5].startswith("["):
                lo, hi = (int(x, 16) for x in parts[0].split("-"))
                if parts[5] in ("[vdso]", "[vvar]", "[vvar_vclock]", "[vsyscall]"):
                    sizes[parts[5]] = (hi - lo) // PAGE_SIZE
    if "[vdso]" not in sizes:
        raise OSError(errno.ENOENT, "no [vdso] mapping")
    return ", ".join(f"{k} {v} pages" for k, v in sizes.items())


class _Target:
    """A short-lived child to seize and inject into: ``sleep``, parked in clock_nanosleep."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            ["sleep", "60"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, close_fds=True, start_new_session=True)
        # Let it reach its sleep (and register rseq) before we seize it.
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            try:
                with open(f"/proc/{self.proc.pid}/stat") as f:
                    if f.read().rsplit(")", 1)[1].split()[0] == "S":
                        break
            except OSError:
                break
            time.sleep(0.005)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


def _probe_target(results: dict[str, object]) -> list[Probe]:
    """Probes that need a live process: ptrace, injection, memory access, registers."""
    from .control.seize import freeze, suspend_granted
    from .kernel import pidfd, ptrace

    probes: list[Probe] = []
    target = _Target()
    try:
        pid = target.pid

        def seize_inject() -> str:
            t0 = time.perf_counter()
            with freeze(pid) as frozen:
                inj = frozen.injector()
                got = inj.getpid()
                with inj.scratch(PAGE_SIZE) as scratch:
                    inj.call(NR.prctl, PR_SET_MM, PR_SET_MM_MAP_SIZE, scratch.addr, 0, 0, name="prctl")
                    results["prctl_mm_map_size"] = struct.unpack("I", scratch.read(0, 4))[0]
                tid = frozen.main_thread.tid
                xstate = ptrace.get_xstate(tid)
                results["xstate_size"] = len(xstate)
                results["xcr0"] = struct.unpack_from("<Q", xstate, XSTATE_XCR0_OFFSET)[0]
                try:
                    rseq = ptrace.get_rseq_configuration(tid)
                    results["rseq"] = f"registered, {rseq.rseq_abi_size} bytes at {rseq.rseq_abi_pointer:#x}" \
                        if rseq.rseq_abi_pointer else "not registered by this libc"
                except OSError as e:
                    results["rseq"] = f"PTRACE_GET_RSEQ_CONFIGURATION failed: {e}"
            ms = (time.perf_counter() - t0) * 1e3
            if got != pid:
                raise OSError(errno.EINVAL, f"injected getpid returned {got}, expected {pid}")
            return f"seize, inject getpid/mmap/prctl, release: {ms:.1f} ms"

        probes.append(_try("ptrace + syscall injection", seize_inject, required=True))
        probes.append(Probe("PTRACE_O_SUSPEND_SECCOMP", suspend_granted(),
                            "injected calls pass by a target's seccomp filters and strict mode" if suspend_granted()
                            else "refused (needs CAP_SYS_ADMIN, ckpt not under seccomp): a process under seccomp "
                                 "is refused"))

        def vm_readv() -> str:
            with open(f"/proc/{pid}/maps") as f:
                lo = int(next(line for line in f if "[stack]" in line).split("-")[0], 16)
            return f"read {len(read_memory(pid, lo, PAGE_SIZE))} bytes of the target's stack"

        probes.append(_try("process_vm_readv", vm_readv, required=True))

        def proc_mem() -> str:
            with open(f"/proc/{pid}/maps") as f:
                line = next(line for line in f if " r--p " in line or " r-xp " in line)
            lo = int(line.split("-")[0], 16)
            with ProcMem(pid, writable=True) as m:
                data = m.read(lo, 16)
                m.write(lo, data)  # forced write to a read-only page, same bytes
            return "read and forced write of a read-only page"

        probes.append(_try("/proc/PID/mem", proc_mem, required=True))

        def pidfd_getfd() -> str:
            pfd = pidfd.pidfd_open(pid)
            try:
                fd = pidfd.pidfd_getfd(pfd, 0)
                os.close(fd)
            finally:
                os.close(pfd)
            return "pidfd_open + pidfd_getfd took a descriptor from the target"

        probes.append(_try("pidfd_getfd", pidfd_getfd))
    finally:
        target.close()
    return probes


def _from_results(name: str, results: dict[str, object], key: str, fmt: Callable[[object], str],
                  *, required: bool = False) -> Probe:
    """A probe whose value was measured by :func:`_probe_target` (absent: it failed there)."""
    if key in results:
        return Probe(name, True, fmt(results[key]), required)
    return Probe(name, False, "not measured: the target probe failed", required)


@functools.cache
def probe_features() -> Features:
    """Try every facility once; the result is cached for the life of the process."""
    results: dict[str, object] = {}
    probes = _probe_target(results)
    probes += [
        _from_results("xstate (NT_X86_XSTATE)", results, "xstate_size",
                      lambda n: f"{n} bytes, XCR0 {results['xcr0']:#x}", required=True),
        _from_results("rseq", results, "rseq", str),
        _from_results("PR_SET_MM_MAP", results, "prctl_mm_map_size",
                      lambda n: f"struct prctl_mm_map is {n} bytes", required=True),
        _try("clone3 set_tid (same pid)", _probe_clone3_set_tid, required=True),
        _try("vDSO", _vdso_detail),
        _cheap_probe("PAGEMAP_SCAN"),
        dataclasses.replace(_cheap_probe("pagemap entries"), required=True),
        _cheap_probe("userfaultfd WP_ASYNC"),
        _cheap_probe("soft-dirty"),
        _try("TCP_REPAIR", _probe_tcp_repair),
        _try("time namespaces", _probe_time_ns),
    ]
    ok = {p.name for p in probes if p.ok}
    return Features(
        kernel=platform.release(),
        machine=platform.machine(),
        probes=tuple(probes),
        tracking=select_tracking(ok),
        backends=tuple(m for m in TRACKING_METHODS if _usable(ok)[m]),
        page_listing="pagemap-scan" if "PAGEMAP_SCAN" in ok else "pagemap-read",
        xstate_size=results.get("xstate_size"),  # type: ignore[arg-type]
        xcr0=results.get("xcr0"),  # type: ignore[arg-type]
        pid_max=int(open("/proc/sys/kernel/pid_max").read()),
        extra={k: v for k, v in results.items() if k not in ("xstate_size", "xcr0")},
    )


def _usable(working: set[str]) -> dict[str, bool]:
    """Each tracking back-end: do the facilities it needs work (``working``: names of probes that passed)?"""
    return {
        "uffd-wp": {"userfaultfd WP_ASYNC", "PAGEMAP_SCAN", "ptrace + syscall injection", "pidfd_getfd"} <= working,
        "soft-dirty": {"soft-dirty", "pagemap entries"} <= working,
        "hash": True,
    }


def select_tracking(working: set[str], requested: str | None = None) -> str:
    """The dirty-tracking back-end: ``requested`` if it works here, else the best that does.

    ``working`` holds the names of the probes that succeeded.
    """
    usable = _usable(working)
    if requested is not None:
        if requested not in usable:
            raise UsageError(f"unknown tracking method {requested!r} (choose from {', '.join(TRACKING_METHODS)})")
        if not usable[requested]:
            raise Unsupported(f"tracking method {requested!r} does not work on this kernel (see `ckpt check`)")
        return requested
    return next(m for m in TRACKING_METHODS if usable[m])
