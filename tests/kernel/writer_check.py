"""The no-miss check shared by the tracker tests, against tests/scenarios/writer.c.

Every page the writer owns starts with MAGIC and a version that changes on
every write and never repeats.  Per iteration k the test reads every version
with the writer group-stopped (A_k), lets it run and collects (D_k), reads
again stopped (B_k).  A page whose version in A_k differs
from B_{k-1} — or that was absent from B_{k-1} (new mapping, moved by mremap)
— was written after collect k-1 cleared it and before collect k: it MUST be in
D_k.  D_k may hold more.  At the end the target is stopped and a shadow image
built by clear-then-copy must equal memory page for page.
"""

from __future__ import annotations

import os
import signal
import struct
from dataclasses import dataclass, field

from ckpt.kernel.arch_x86_64 import PAGE_SIZE
from ckpt.kernel.vm import buffer_address, process_vm_readv
from ckpt.procfs.maps import read_maps
from ckpt.track import DirtySet, Tracker
from targets import thread_state, wait_until

MAGIC = 0x5452434B57524954
_MAX_VMA = 1 << 20  # skip thread stacks and big reservations: churn regions and the main area are smaller or known


def read_versions(pid: int, area: tuple[int, int]) -> dict[int, int]:
    """{page address: version} of every page carrying MAGIC in the writer's anonymous memory."""
    out: dict[int, int] = {}
    for v in read_maps(pid):
        if not (v.write and not v.shared and (v.path in ("", "[heap]"))):
            continue
        if v.size > _MAX_VMA and (v.start, v.end) != area and not (area[0] >= v.start and area[1] <= v.end):
            continue
        buf = bytearray(v.size)
        try:
            got = process_vm_readv(pid, [(buffer_address(buf), v.size)], [(v.start, v.size)])
        except OSError:
            continue  # unmapped by the churn thread since maps was read
        for off in range(0, got - got % PAGE_SIZE, PAGE_SIZE):
            magic, version = struct.unpack_from("<QQ", buf, off)
            if magic == MAGIC:
                out[v.start + off] = version
    return out


@dataclass
class Tally:
    iterations: int = 0
    changed: int = 0       # pages that had to be reported
    reported: int = 0      # pages the tracker reported
    misses: list[tuple[int, int]] = field(default_factory=list)  # (iteration, address)
    new_vmas: int = 0
    gone: int = 0
    shadow_pages: int = 0
    shadow_misses: int = 0


def _stopped(pid: int) -> bool:
    try:
        tids = os.listdir(f"/proc/{pid}/task")
        return all(thread_state(pid, int(t)) in ("T", "t") for t in tids)
    except OSError:
        return False


def snapshot(pid: int, area: tuple[int, int]) -> dict[int, int]:
    """read_versions with the writer group-stopped (SIGSTOP): an exact picture, maps included."""
    os.kill(pid, signal.SIGSTOP)
    try:
        wait_until(lambda: _stopped(pid), f"process {pid} is stopped")
        return read_versions(pid, area)
    finally:
        os.kill(pid, signal.SIGCONT)


def check_iteration(tracker: Tracker, pid: int, area: tuple[int, int], before: dict[int, int],
                    tally: Tally, shadow: dict[int, int]) -> dict[int, int]:
    """One A/collect/B round; returns B (the next round's ``before``)."""
    a = snapshot(pid, area)
    ds: DirtySet = tracker.collect()
    b = snapshot(pid, area)
    dirty = set(ds.pages())
    tally.iterations += 1
    tally.reported += len(dirty)
    tally.new_vmas += len(ds.new_vmas)
    tally.gone += len(ds.gone)
    for addr, ver in a.items():
        if before.get(addr) != ver:
            tally.changed += 1
            # A page of a churn region unmapped or moved after A_k needs no reporting; one
            # still holding the same (unique) version after the collect, or any page of the
            # never-unmapped main area, does.
            required = area[0] <= addr < area[1] or b.get(addr) == ver
            if addr not in dirty and required:
                tally.misses.append((tally.iterations, addr))
                if os.environ.get("TRACK_DEBUG"):
                    print("MISS", hex(addr), before.get(addr), ver, b.get(addr),
                          [(hex(v.start), hex(v.end), v.new, len(v.written)) for v in ds.vmas if v.start <= addr < v.end],
                          area[0] <= addr < area[1])
    # the dumper's copy, after the clear: B read now stands for "copied"
    for addr in dirty:
        if addr in b:
            shadow[addr] = b[addr]
    return b


def final_shadow_check(tracker: Tracker, pid: int, area: tuple[int, int], tally: Tally,
                       shadow: dict[int, int]) -> None:
    """Stop the writer, do the last collect+copy, and compare the shadow image with memory."""
    os.kill(pid, signal.SIGSTOP)
    try:
        ds = tracker.collect()
        now = read_versions(pid, area)
        for addr in set(ds.pages()):
            if addr in now:
                shadow[addr] = now[addr]
        tally.shadow_pages = len(now)
        tally.shadow_misses = sum(1 for addr, ver in now.items() if shadow.get(addr) != ver)
    finally:
        os.kill(pid, signal.SIGCONT)
