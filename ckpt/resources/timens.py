"""Clocks across hosts: a restored tree's CLOCK_MONOTONIC and CLOCK_BOOTTIME carry on from the dump.

Those two clocks count from a boot.  Every deadline a program keeps on them
— a timeout measured with ``clock_gettime``, an absolute timerfd, a
``pthread_cond_timedwait`` or futex deadline, ``clock_nanosleep(TIMER_ABSTIME)``
— and every elapsed time it computes would jump by hours, forward or back,
if the process came back on another machine or after a reboot.  A time
namespace (Linux 5.6) shifts both clocks for its members by offsets fixed
before its first member enters; ckpt restores into one when it must.

Dump (:func:`dump`, into the inventory): the clocks as the tree saw them
(its namespace's offsets included) once every record was dumped, CLOCK_REALTIME
then, the boot (the inventory's ``boot_id``), and whether the tree was in a
time namespace of its own with which offsets.  Refused, naming the processes:
a tree spread over several time namespaces, and a process that unshared
CLONE_NEWTIME and has not forked since (its next children would go into a
namespace no process is in yet, which ckpt would have to recreate) — ckpt
restores clocks exactly or not at all.

The rule at restore (:func:`plan`):

=========================================  ==================  ==========================================
image                                      time namespace      the restored process sees
=========================================  ==================  ==========================================
no clock record (an older ckpt's image)    none, as before     the host's clocks
the host's namespace, same boot            none                its clocks as if it had never stopped
                                                               (the time it spent in the image counts)
its own namespace, same boot               new, the offsets    the same: the clocks of the namespace it
                                           it had              was in (and of its old neighbours there)
another boot (``boot_id`` differs)         new, offsets        its clocks carry on from the dumped values;
                                           dumped - now        the time in the image does not count (CRIU's
                                                               choice: a timeout never expires because of
                                                               the migration itself)
=========================================  ==================  ==========================================

"Same boot" compares the inventory's ``boot_id`` with this machine's
(``/proc/sys/kernel/random/boot_id``).  A new namespace needs CONFIG_TIME_NS:
without it such a restore is refused.  CLOCK_REALTIME cannot be namespaced:
the process reads the destination's wall clock, which jumps by the downtime
(and by the difference between the two machines' clocks); a timer or sleep on
an absolute CLOCK_REALTIME time still expires at its wall-clock time.

How (:class:`TimeNamespace`): one namespace for the whole tree, made as the
root is finished: an injected ``unshare(CLONE_NEWTIME)`` in the root's helper
makes a namespace for its future children, ckpt writes the offsets into
``/proc/ROOT/timens_offsets`` (the kernel takes them only while no process is
in it), and each helper joins it with an injected ``setns(CLONE_NEWTIME)``
before its threads exist (it wants a single-threaded caller: EUSERS).  setns
moves the caller itself at once and points its vvar pages at the namespace's
(``vdso_join_timens``), wherever the restore moved them; a process's clone
children share its namespace.  Joining late instead of cloning the root's
helper into the namespace: a staged restore (migration) creates the helpers
from the first pre-copy image, long before the final dump says where the
clocks stood, and the jump the process sees is then only the restore's last
steps.  The kernel's limits: |offset| ≤ KTIME_SEC_MAX and the namespace's
clock (now + offset) within [0, KTIME_SEC_MAX / 2], which offsets continuing
a real clock always meet; writing them needs CAP_SYS_TIME, unshare and setns
CAP_SYS_ADMIN.

Timers stay right in the new namespace: relative ones (itimers, POSIX timers,
relative timerfds) are armed with the time they had left, absolute
CLOCK_MONOTONIC/BOOTTIME timerfds at the process's clock now (read inside
its helper, in its namespace: ckpt's own clock is the host's) plus that time
left, after the helper joined.  A thread blocked in an absolute wait restarts
it with the same deadline, on a clock that carries on.

Test aid: ``CKPT_TEST_OTHER_BOOT=1`` makes a restore take this boot for
another one (a test cannot reboot its host).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass

from ..control.inject import Injector, Scratch
from ..errors import RestoreError, Unsupported
from ..image.pb import clocks_pb2, inventory_pb2
from ..kernel.arch_x86_64 import NR
from ..kernel.clone import CLONE_NEWTIME
from ..procfs.timens import INIT_TIME_NS_INO, TimensOffsets, read_boot_id, read_time_ns

__all__ = ["CLOCK_MONOTONIC", "CLOCK_BOOTTIME", "OTHER_BOOT_ENV", "ClockRecord", "dump", "to_pb", "recorded",
           "Plan", "plan", "TimeNamespace", "check_from_boot", "describe"]

CLOCK_REALTIME = 0
CLOCK_MONOTONIC = 1
CLOCK_BOOTTIME = 7
#: Set to 1: a restore takes this boot for another one (tests).
OTHER_BOOT_ENV = "CKPT_TEST_OTHER_BOOT"
_NS = 1_000_000_000
log = logging.getLogger(__name__)
_O_RDONLY_CLOEXEC = os.O_RDONLY | os.O_CLOEXEC
_AT_FDCWD = -100 & ((1 << 64) - 1)


@dataclass(frozen=True)
class ClockRecord:
    """The clocks of a dumped tree (what ``Inventory.clocks`` holds) and the boot they count from."""

    monotonic_ns: int
    boottime_ns: int
    realtime_ns: int
    own_time_ns: bool = False
    offsets: TimensOffsets = TimensOffsets()
    time_ns_inode: int = 0
    boot_id: str = ""


def _own_offsets() -> TimensOffsets:
    """This process's offsets against the host's clocks (0, 0 on the host's, or without time namespaces)."""
    me = read_time_ns(os.getpid())
    return me.offsets if me is not None and not me.initial else TimensOffsets()


def _host_now() -> tuple[int, int]:
    """(CLOCK_MONOTONIC, CLOCK_BOOTTIME) of the host now, whatever namespace ckpt runs in."""
    mine = _own_offsets()
    return (time.clock_gettime_ns(CLOCK_MONOTONIC) - mine.monotonic_ns,
            time.clock_gettime_ns(CLOCK_BOOTTIME) - mine.boottime_ns)


def dump(pids: Iterable[int]) -> clocks_pb2.Clocks:
    """The clocks of the (frozen) processes ``pids`` as they see them now; Unsupported if ckpt cannot restore them.

    Zombies have no namespace to read and are skipped by the caller.
    """
    seen: dict[int, list[int]] = {}
    ns = None
    for pid in pids:
        t = read_time_ns(pid)
        if t is None:
            continue  # no time namespaces on this kernel: the host's clocks
        if t.children_inode != t.inode:
            raise Unsupported(f"process {pid} unshared its time namespace (CLONE_NEWTIME) and has not forked since: "
                              "its next children would be in a namespace that no process is in yet, which ckpt "
                              "cannot recreate", hint="dump it once it has forked, or dump its children instead")
        seen.setdefault(t.inode, []).append(pid)
        ns = ns or t
    if len(seen) > 1:
        groups = "; ".join(f"{'the host' if ino == INIT_TIME_NS_INO else f'time:[{ino}]'}: "
                           f"{', '.join(map(str, ps[:8]))}" for ino, ps in seen.items())
        raise Unsupported(f"the processes of the tree are in {len(seen)} time namespaces ({groups}): ckpt restores a "
                          "tree into one time namespace", hint="dump each namespace's processes apart")
    own = ns is not None and not ns.initial
    offsets = ns.offsets if own and ns is not None else TimensOffsets()
    host_mono, host_boot = _host_now()
    return clocks_pb2.Clocks(
        monotonic_ns=host_mono + offsets.monotonic_ns, boottime_ns=host_boot + offsets.boottime_ns,
        realtime_ns=time.clock_gettime_ns(CLOCK_REALTIME), own_time_ns=own,
        monotonic_offset_ns=offsets.monotonic_ns, boottime_offset_ns=offsets.boottime_ns,
        time_ns_inode=ns.inode if ns is not None else 0)


def to_pb(rec: ClockRecord) -> clocks_pb2.Clocks:
    return clocks_pb2.Clocks(monotonic_ns=rec.monotonic_ns, boottime_ns=rec.boottime_ns, realtime_ns=rec.realtime_ns,
                             own_time_ns=rec.own_time_ns, monotonic_offset_ns=rec.offsets.monotonic_ns,
                             boottime_offset_ns=rec.offsets.boottime_ns, time_ns_inode=rec.time_ns_inode)


def recorded(inventory: inventory_pb2.Inventory) -> ClockRecord | None:
    """The clocks an image records; None for a pre-dump or an image of an older ckpt."""
    if not inventory.HasField("clocks"):
        return None
    c = inventory.clocks
    return ClockRecord(c.monotonic_ns, c.boottime_ns, c.realtime_ns, c.own_time_ns,
                       TimensOffsets(c.monotonic_offset_ns, c.boottime_offset_ns), c.time_ns_inode, inventory.boot_id)


@dataclass(frozen=True)
class Plan:
    """What a restore does about time: ``mode`` is "none" (the host's clocks), "same" (a new namespace
    with the recorded offsets) or "continue" (a new namespace whose clocks carry on from the dumped values)."""

    mode: str
    record: ClockRecord | None = None
    reason: str = ""

    @property
    def new_ns(self) -> bool:
        return self.mode != "none"


def plan(inventory: inventory_pb2.Inventory, *, boot_id: str | None = None) -> Plan:
    """The module doc's rule for the image with this inventory, restored here (``boot_id``: this boot's)."""
    rec = recorded(inventory)
    if rec is None:
        return Plan("none", None, "the image records no clocks")
    here = read_boot_id() if boot_id is None else boot_id
    other = os.environ.get(OTHER_BOOT_ENV) == "1"
    if rec.boot_id and rec.boot_id == here and not other:
        if rec.own_time_ns:
            return Plan("same", rec, "same boot, in a time namespace of its own: the offsets it had")
        if not _on_host_clocks():  # ckpt runs in a time namespace: not the clocks the tree had
            return Plan("same", rec, "same boot, on the host's clocks, restored from inside a time namespace")
        return Plan("none", rec, "same boot, on the host's clocks")
    why = "another boot (forced by CKPT_TEST_OTHER_BOOT)" if other else "another boot or machine"
    return Plan("continue", rec, f"{why}: the clocks carry on from the dump")


def check_from_boot(boot_id: str) -> None:
    """Refuse (RestoreError) at once a process that comes from the boot ``boot_id`` when its restore here would
    need a time namespace this kernel lacks: a migration's receiver says so at the handshake, not after the copy."""
    if boot_id and boot_id == read_boot_id() and os.environ.get(OTHER_BOOT_ENV) != "1":
        return  # the same boot: its clocks are the host's, or a namespace it already had (the kernel has them)
    TimeNamespace(Plan("continue", None, "it comes from another boot or machine")).check()


def _on_host_clocks() -> bool:
    """This process's children get the host's clocks (or the kernel has no time namespaces)."""
    me = read_time_ns(os.getpid())
    return me is None or me.children_inode == INIT_TIME_NS_INO


class TimeNamespace:
    """The time namespace of one restored tree (see the module doc): made for the first process
    :meth:`enter` is called with (the root), joined by every other one."""

    def __init__(self, p: Plan) -> None:
        self.plan = p
        self.root = 0
        #: The offsets written (against the host's clocks), once the namespace exists.
        self.offsets: TimensOffsets | None = None

    def check(self) -> None:
        """Refuse early (RestoreError) when a namespace is needed and this kernel has none."""
        if self.plan.new_ns and not os.path.exists("/proc/self/ns/time"):
            raise RestoreError(f"the process needs a time namespace ({self.plan.reason}), and this kernel has none "
                               "(CONFIG_TIME_NS): its CLOCK_MONOTONIC and CLOCK_BOOTTIME would jump",
                               hint="restore it on a kernel with time namespaces (Linux 5.6+, CONFIG_TIME_NS=y)")

    def enter(self, pid: int, inj: Injector, scratch: Scratch) -> None:
        """Move the (single-threaded) helper ``pid`` into the tree's namespace, making it if ``pid`` is the first."""
        if not self.plan.new_ns:
            return
        if not self.root:
            self._create(pid, inj)
            path = "/proc/self/ns/time_for_children"
        else:
            path = f"/proc/{self.root}/ns/time"
        scratch.write(0, path.encode() + b"\0")
        try:
            fd = inj.call(NR.openat, _AT_FDCWD, scratch.addr, _O_RDONLY_CLOEXEC, 0, name=f"openat({path!r})")
            try:
                inj.call(NR.setns, fd, CLONE_NEWTIME, name="setns(CLONE_NEWTIME)")
            finally:
                inj.close(fd)
        except OSError as exc:
            raise RestoreError(f"process {pid} cannot join its time namespace: {os.strerror(exc.errno or 0)}") from exc

    def _create(self, pid: int, inj: Injector) -> None:
        """A namespace for ``pid``'s children, with the plan's offsets (written while nobody is in it)."""
        rec = self.plan.record
        assert rec is not None
        try:
            inj.call(NR.unshare, CLONE_NEWTIME, name="unshare(CLONE_NEWTIME)")
        except OSError as exc:
            raise RestoreError(f"cannot make a time namespace for process {pid} ({self.plan.reason}): "
                               f"{os.strerror(exc.errno or 0)}",
                               hint="time namespaces need Linux 5.6+ with CONFIG_TIME_NS and CAP_SYS_ADMIN") from exc
        if self.plan.mode == "same":
            offsets = rec.offsets
        else:
            host_mono, host_boot = _host_now()
            offsets = TimensOffsets(rec.monotonic_ns - host_mono, rec.boottime_ns - host_boot)
        text = "".join(f"{clock} {ns // _NS} {ns % _NS}\n" for clock, ns in
                       ((CLOCK_MONOTONIC, offsets.monotonic_ns), (CLOCK_BOOTTIME, offsets.boottime_ns)))
        try:
            with open(f"/proc/{pid}/timens_offsets", "w") as f:
                f.write(text)
        except OSError as exc:
            raise RestoreError(f"cannot set the time namespace offsets of process {pid} "
                               f"({text.strip()!r}): {exc.strerror}") from exc
        self.root, self.offsets = pid, offsets
        log.info("time namespace of the tree of %d (%s): offsets monotonic %+.3f s, boottime %+.3f s", pid,
                 self.plan.reason, offsets.monotonic_ns / _NS, offsets.boottime_ns / _NS)


def describe(c: clocks_pb2.Clocks, boot_id: str) -> dict[str, object]:
    """What ``ckpt show`` prints of an image's clocks."""
    return {
        "monotonic": f"{c.monotonic_ns / _NS:.3f} s", "boottime": f"{c.boottime_ns / _NS:.3f} s",
        "realtime_ns": c.realtime_ns, "boot_id": boot_id,
        "time_ns": (f"own (time:[{c.time_ns_inode}]), offsets monotonic {c.monotonic_offset_ns / _NS:+.3f} s, "
                    f"boottime {c.boottime_offset_ns / _NS:+.3f} s") if c.own_time_ns else "the host's",
    }
