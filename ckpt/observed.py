"""The restore's self-check: the kernel's own account of a process, at the dump and after the restore.

ckpt's records say what ckpt knows how to read; a state it never reads cannot
be missing from them, so a restore checked against its own records would pass
while a lock, a flag or an owner was silently gone.  The check therefore keeps
what the *kernel* prints about the process — ``/proc/PID/status`` (process and
every thread), ``limits``, ``personality``, ``timers``, ``timerslack_ns``,
each thread's seccomp filters (a digest of each program, :func:`ckpt.resources.seccomp.observed_lines`),
``fdinfo/*`` (file locks, epoll targets, timerfd and eventfd state included),
what unix_diag says of each unix socket (:func:`_unix_diag_lines`), what each inet socket
says of its state, addresses and queues (:func:`_inet_lines`), what packet_diag and netlink_diag say of
each packet and netlink socket (:func:`ckpt.resources.packet.lines`, :func:`ckpt.resources.netlink.lines`),
every option of every socket as ``getsockopt`` reports it (``default`` when a
new socket here has the same value: what the program never set compares equal
on a host whose defaults differ), and every mapping's ``smaps`` VmFlags (neighbours that look alike compared as one,
:func:`_coalesced`) — as text, once the dump has read
everything (:func:`observe`), and reads the same from the restored process
while it is still frozen, before it is handed over (:func:`differences`).

Every line must come back equal.  What must differ is masked by name in the
tables below, each with its reason; a line or a field the tables do not name
and that differs fails the restore, so a kernel that prints something new is
checked, not ignored.  Values set only in the restore's last step (each
thread's signal mask and CPU mask, given back as it is let go) are taken as
that step sets them (:func:`settled`), at the dump (whose injections block
every signal) as after the restore.  ``ckpt restore --check=off`` skips the check.
"""

from __future__ import annotations

import os
import re
import socket
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass

from .errors import TargetError, TargetGone
from .image.pb import process_pb2
from .procfs._proc import ProcDir
from .procfs.maps import read_smaps, read_smaps_vmflags
from .kernel.sock_diag import unix_sockets
from .resources import guards, netlink, packet
from .resources.seccomp import observed_lines as seccomp_lines
from .resources.sockets import borrowed, inet_lines, option_lines

__all__ = ["Difference", "observe", "settled", "differences", "describe"]

# --------------------------------------------------------------------------- what may differ, and why

#: (section kind, key) → why a restored process may print something else there.
MASKED: dict[tuple[str, str], str] = {
    ("status", "State"): "a frozen process is in tracing stop at the dump and at the check alike, but which stop varies",
    ("status", "TracerPid"): "the dumper and the restorer are different processes",
    ("status", "PPid"): "compared for every process but the root: a restored root is the restorer's child",
    ("status", "FDSize"): "the size of the descriptor table the kernel grew, not a descriptor",
    ("status", "Ngid"): "NUMA balancing's preferred node of the moment",
    ("status", "voluntary_ctxt_switches"): "counters of the scheduler's work, restarted with the process",
    ("status", "nonvoluntary_ctxt_switches"): "counters of the scheduler's work, restarted with the process",
    ("status", "Cpus_allowed"): "the same mask as Cpus_allowed_list, which is compared",
    ("status", "Mems_allowed"): "the same mask as Mems_allowed_list, which is compared",
    ("status", "CoreDumping"): "0 for any process the dumper could freeze",
    ("audit", "sessionid"): "no call sets an audit session id: writing the loginuid hands out a new one (a "
                            "process in another session than ckpt's is refused at dump: --tolerate audit-session)",
    **{("status", k): "memory usage, not state: the restore maps what the process had, resident or not"
       for k in ("VmPeak", "VmSize", "VmLck", "VmPin", "VmHWM", "VmRSS", "RssAnon", "RssFile", "RssShmem", "VmData",
                 "VmStk", "VmExe", "VmLib", "VmPTE", "VmSwap", "HugetlbPages")},
    ("fdinfo", "mnt_id"): "a mount's id is per boot and per namespace; the file is identified by path",
    ("fdinfo", "ino"): "inode numbers differ for a recreated pipe, socket or deleted file, and on another machine",
    ("fdinfo", "eventfd-id"): "an id the kernel allocates for each eventfd",
    ("fdinfo", "tty-index"): "a pty master's slave number (/dev/pts/N): devpts gives a restored pair the lowest free "
                             "one, N when it is free (ckpt/resources/tty.py)",
    ("fdinfo", "it_value"): "a timerfd's time left runs on; the restore arms it with what was left at the dump",
    ("fdinfo", "ticks"): "a timerfd runs while its process is frozen: one that expires after the dump read it and "
                         "before this account counts a tick here, and comes back with that little time left instead",
}

#: (section kind, key) → the fields of the value that may differ, removed before comparing.
_FIELDS: dict[tuple[str, str], tuple[re.Pattern[str], str]] = {
    # epoll: the target's inode and device (see "ino" above); its fd, events, data and pos stay
    ("fdinfo", "tfd"): (re.compile(r"\s*\b(ino|sdev):\s*[0-9a-f]+"), "inode and device of the watched file"),
    # inotify / fanotify marks: the watched inode's number, device and file handle
    ("fdinfo", "inotify"): (re.compile(r"\s*\b(ino|sdev|fhandle-bytes|fhandle-type|f_handle):\s*[0-9a-f]+"),
                            "the watched inode's number, device and handle"),
    ("fdinfo", "fanotify"): (re.compile(r"\s*\b(ino|sdev|mflags|fhandle-bytes|fhandle-type|f_handle):\s*[0-9a-f]+"),
                             "the marked inode's number, device and handle"),
    # "lock:\t1: POSIX ADVISORY WRITE 1234 00:1a:5678 0 EOF": the lock's place in the kernel's list and the inode
    ("fdinfo", "lock"): (re.compile(r"^\d+:|\b[0-9a-f]+:[0-9a-f]+:\d+\b"), "the lock's list index and dev:inode"),
}

_O_LARGEFILE = 0o100000


def _without_largefile(value: str) -> str:
    try:
        return f"{int(value, 8) & ~_O_LARGEFILE:o}"
    except ValueError:
        return value


#: (section kind, key) → a function giving the part of the value that must come back, and why.
_VALUES: dict[tuple[str, str], tuple[Callable[[str], str], str]] = {
    ("fdinfo", "flags"): (_without_largefile, "O_LARGEFILE: every open(2) of a 64-bit process sets it, and a pipe "
                                              "end reopened through /proc (--inherit-fd) gains it; it changes nothing "
                                              "on x86_64"),
}

def _lock_owner(value: str) -> str:
    """A lock line (index and dev:inode already removed) without the pid of an open file's own lock."""
    words = value.split()
    if len(words) > 3 and words[0] in ("FLOCK", "LEASE"):
        words[3] = "*"
    return " ".join(words)


_VALUES[("fdinfo", "lock")] = (_lock_owner, "a flock lock or a lease belongs to the open file, which processes share "
                                            "across fork: the kernel shows the pid of whichever of them took it (or "
                                            "of one that exited since); the restore takes it in the one the kernel "
                                            "named if it is in the tree, else in another holding the file. POSIX "
                                            "locks keep their pid (their owner), OFD locks show -1")


def _sigq_limit(value: str) -> str:
    return value.partition("/")[2]


_VALUES[("status", "SigQ")] = (_sigq_limit, "the count is of the signals queued for the user across all its "
                                            "processes (the limit after the / is compared)")

#: VmFlags a restored mapping may have or lack: the kernel's or ckpt's bookkeeping, not the program's.
_VMFLAGS_MASKED = {
    "sd": "soft-dirty: every new mapping is wholly soft-dirty; the dump's tracking cleared it",
    "uw": "userfaultfd write-protect: the dump's dirty tracker registers the target's memory",
    "um": "userfaultfd missing-page registration of the dump's tracker",
    "ui": "userfaultfd minor-fault registration of the dump's tracker",
}

#: Mapped file names with a part that must differ, replaced before comparing: a file made with O_TMPFILE
#: never had a name, and the kernel calls it "DIR/#INO" after its inode number, which a file made again
#: cannot have (the same as fdinfo's "ino" above).
_MAPS_NAMES = ((re.compile(r"/#\d+ \(deleted\) \["), "/#INO (deleted) ["),)

#: Kernel areas, which a restore on another kernel puts elsewhere (ckpt/resources/vdso.py checks them).
_KERNEL_AREAS = ("[vdso]", "[vvar]", "[vvar_vclock]")
#: On another kernel or machine, [vsyscall] is there or not as that kernel's configuration says (vsyscall=).
_ELSEWHERE_AREAS = (*_KERNEL_AREAS, "[vsyscall]")
#: status lines whose value is the CPU's or the kernel's unless the thread set it (PR_SET_SPECULATION_CTRL:
#: "thread mitigated", "thread force mitigated", "thread vulnerable" …): compared on another machine only then.
_CPU_STATE = ("Speculation_Store_Bypass", "SpeculationIndirectBranch")


#: Section kinds an older ckpt did not record: absent at the dump, they are not compared (the descriptor's
#: own sections, ``fdinfo/N`` and ``sockopt/N``, still say whether it is there).
_NEWER = ("inet", "guards", "ksm", "audit")
#: Lines an older ckpt did not record in a section it did: absent from the dump's section, not compared.
#: inet: whether the reading side is shut; sockopt: the classic filter, and the IP-level options of an
#: IPv6 socket (issue 17).
_NEWER_KEYS = {"inet": frozenset({"rdhup"}),
               "sockopt": frozenset({"SO_GET_FILTER", "IP_TOS", "IP_TTL", "IP_MTU_DISCOVER", "IP_FREEBIND",
                                     "IP_TRANSPARENT", "IP_MINTTL", "IP_BIND_ADDRESS_NO_PORT",
                                     "IP_LOCAL_PORT_RANGE"})}
#: Section kinds a kernel may be unable to give (unix_diag is a module a kernel may lack or not load): on
#: another kernel, present on one side only is no difference (``fdinfo/N`` and ``sockopt/N`` still are).
_OPTIONAL_ELSEWHERE = ("unix_diag", "guards", "ksm")
#: Section kinds whose lines differ by kernel version: on another kernel only the keys both sides print are
#: compared (status gains lines over the years; ksm_stat's ksm_merge_any and ksm_mergeable came after 6.12).
_COMMON_KEYS_ELSEWHERE = ("status", "ksm")


def _kind(section: str) -> str:
    if section.startswith("task/"):
        return section.rsplit("/", 1)[-1]
    return section.split("/", 1)[0]


# --------------------------------------------------------------------------- reading

def _status_lines(text: str) -> list[tuple[str, str]]:
    out = []
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            out.append((key.strip(), " ".join(value.split())))
    return out


def _limits_lines(text: str) -> list[tuple[str, str]]:
    lines = text.splitlines()
    out = []
    for line in lines[1:]:  # the first is the header
        if line.strip():
            out.append((line[:26].strip(), " ".join(line[26:].split())))
    return out


def _maps_lines(pid: int, proc: ProcDir, hidden: Sequence[tuple[int, int]]) -> list[tuple[str, str]]:
    out = []
    vmas = read_smaps_vmflags(pid, proc=proc)
    # hugetlb mappings (``ht``) with their page size: smaps read in full only for a process that has one
    huge = ({e.vma.start: e.fields.get("KernelPageSize", 0) for e in read_smaps(pid, proc=proc)}
            if any("ht" in v.vmflags for v in vmas) else {})
    shown: dict[frozenset[str], str] = {}  # a handful of distinct VmFlags sets, in 30,000 VMAs as in 20
    for v in vmas:
        if hidden and any(s < v.end and v.start < e for s, e in hidden):
            continue
        perms = ("r" if v.read else "-") + ("w" if v.write else "-") + ("x" if v.exec else "-") + \
            ("s" if v.shared else "p")
        name = v.path + (" (deleted)" if v.deleted else "")
        flags = shown.get(v.vmflags)
        if flags is None:
            flags = shown[v.vmflags] = " ".join(sorted(f for f in v.vmflags if f not in _VMFLAGS_MASKED))
        page = f" pages of {huge[v.start] >> 10} kB" if v.start in huge and "ht" in v.vmflags else ""
        out.append((f"{v.start:x}-{v.end:x}", f"{perms} {v.offset:x} {name} [{flags}]{page}"))
    return out


def _section(name: str, lines: Iterable[tuple[str, str]]) -> process_pb2.ObservedSection:
    return process_pb2.ObservedSection(name=name, lines=[process_pb2.ObservedLine(key=k, value=v) for k, v in lines])


def _sockopt_lines(pid: int, fd: int) -> list[tuple[str, str]]:
    """Every option of the socket at ``fd`` of ``pid`` (:func:`ckpt.resources.sockets.option_lines`), read
    through a duplicate of it; none for a socket of a family getsockopt cannot name."""
    try:
        with borrowed(pid, fd) as sock:
            return option_lines(sock)
    except OSError:
        return [("unreadable", "")]  # the same at the dump and after the restore, or a difference


def _inet_lines(pid: int, fd: int) -> list[tuple[str, str]]:
    """The state, addresses and queues of the inet socket at ``fd`` of ``pid``
    (:func:`ckpt.resources.sockets.inet_lines`), read through a duplicate of it; none for another family."""
    try:
        with borrowed(pid, fd) as sock:
            return inet_lines(sock, pid)
    except OSError as exc:
        return [("unreadable", exc.strerror or str(exc))]


def _family(pid: int, fd: int) -> int:
    """The address family of the socket at ``fd`` of ``pid``; -1 when it cannot be read."""
    try:
        with borrowed(pid, fd) as sock:
            return sock.family
    except OSError:
        return -1


def _unix_diag_lines(ino: int) -> list[tuple[str, str]]:
    """What unix_diag says of the unix socket of inode ``ino`` that a restore must give back: its state,
    whether it is connected, its shutdown bits, its name and whether a file names it, the bytes waiting to
    be read (a listener: the connections waiting and its backlog).  Not the memory its sent data holds
    (``wqueue`` of a connected socket: truesize, which depends on how the bytes were written), nor inode
    numbers.  None for another family, or a socket unix_diag does not see (another network namespace)."""
    try:
        d = unix_sockets(ino).get(ino)
    except OSError:
        return []
    if d is None:
        return []
    lines = [("state", str(d.state)), ("connected", "yes" if d.peer is not None else "no"),
             ("shutdown", str(d.shutdown)), ("name", (d.name or b"").hex()), ("file", "yes" if d.vfs else "no")]
    if d.state == 10:  # TCP_LISTEN
        return lines + [("waiting", str(len(d.icons))), ("backlog", str(d.wqueue))]
    return lines + [("rqueue", str(d.rqueue))]


def settled(sigmask: int, cpus: Iterable[int] | None = None) -> dict[str, str]:
    """A thread's lines as it runs once let go, where ckpt holds them otherwise while it is frozen: the signal
    mask (all blocked during injections, dump and restore) and, in a restore, the CPU mask (pinned)."""
    out = {"SigBlk": f"{sigmask:016x}"}
    if cpus is not None:
        out["Cpus_allowed_list"] = _cpu_list(cpus)
    return out


def _audit_section(text: Callable[[str], str]) -> list[process_pb2.ObservedSection]:
    """``loginuid`` and ``sessionid`` (absent without CONFIG_AUDIT)."""
    try:
        return [_section("audit", [("loginuid", text("loginuid").strip()), ("sessionid", text("sessionid").strip())])]
    except TargetError:  # a file this kernel lacks
        return []


def observe(pid: int, tids: Iterable[int], *, hidden: Sequence[tuple[int, int]] = (),
            skip_fds: Collection[int] = (), threads: Mapping[int, Mapping[str, str]] | None = None
            ) -> process_pb2.Observed:
    """What the kernel prints about the frozen process ``pid`` with threads ``tids``.

    ``hidden``: address ranges ckpt itself has mapped in it (left out).
    ``skip_fds``: descriptors that are ckpt's, not the program's (a parked tracker).
    ``threads``: per tid, status lines to take as given (:func:`settled`) instead of as read now.
    """
    given = threads or {}

    def status(rel: str, tid: int) -> list[tuple[str, str]]:
        mine = given.get(tid, {})
        return [(k, mine.get(k, v)) for k, v in _status_lines(text(rel))]

    with ProcDir(pid, pinned=True) as proc:
        def text(rel: str) -> str:
            return proc.read(rel).decode(errors="replace")

        sections = [_section("status", status("status", pid))]
        for tid in sorted(tids):
            lines = status(f"task/{tid}/status", tid)
            sections.append(_section(f"task/{tid}/status", lines))
            if dict(lines).get("Seccomp") == "2":  # filter mode: its programs, through ptrace (frozen by us)
                sections.append(_section(f"task/{tid}/seccomp", seccomp_lines(tid)))
        sections.append(_section("limits", _limits_lines(text("limits"))))
        sections.append(_section("personality", [("personality", text("personality").strip())]))
        sections.append(_section("timers", _status_lines(text("timers"))))
        sections.append(_section("timerslack_ns", [("timerslack_ns", text("timerslack_ns").strip())]))
        sections.extend(_audit_section(text))
        for fd in sorted(int(n) for n in proc.listdir("fdinfo")):
            if fd in skip_fds:
                continue
            try:
                body = text(f"fdinfo/{fd}")
            except TargetGone:  # closed meanwhile: cannot happen to a frozen process, but not ours to judge
                continue
            sections.append(_section(f"fdinfo/{fd}", _status_lines(body)))
            link = proc.readlink(f"fd/{fd}")
            if link.startswith("socket:["):
                sections.append(_section(f"sockopt/{fd}", _sockopt_lines(pid, fd)))
                inet = _inet_lines(pid, fd)
                if inet:
                    sections.append(_section(f"inet/{fd}", inet))
                unix = _unix_diag_lines(int(link[len("socket:["):-1]))
                if unix:
                    sections.append(_section(f"unix_diag/{fd}", unix))
                other = {socket.AF_PACKET: ("packet", packet.lines),
                         socket.AF_NETLINK: ("netlink", netlink.lines)}.get(_family(pid, fd))
                if other and (got := other[1](int(link[len("socket:["):-1]))):
                    sections.append(_section(f"{other[0]}/{fd}", got))
        sections.append(_section("maps", _maps_lines(pid, proc, hidden)))
        if guards.scan_reports_guards():  # page table markers, in no /proc text
            sections.append(_section("guards", guards.observed_lines(pid)))
        if os.path.exists(f"/proc/{pid}/ksm_stat"):  # (KSM built in) prctl(PR_SET_MEMORY_MERGE), not the counters
            sections.append(_section("ksm", [(k, v) for k, v in _status_lines(text("ksm_stat"))
                                             if k in ("ksm_merge_any", "ksm_mergeable")]))
    return process_pb2.Observed(sections=sections)


# --------------------------------------------------------------------------- comparing

@dataclass(frozen=True)
class Difference:
    section: str
    key: str
    dumped: str | None     # None: no such line (or section) at the dump
    restored: str | None   # None: no such line (or section) after the restore

    def __str__(self) -> str:
        where = f"{self.section}: {self.key}" if self.key else self.section
        if self.dumped is None:
            return f"{where}: {self.restored!r} after the restore, absent at the dump"
        if self.restored is None:
            return f"{where}: {self.dumped!r} at the dump, absent after the restore"
        return f"{where}: {self.dumped!r} at the dump, {self.restored!r} after the restore"


def _cpu_list(cpus: Iterable[int]) -> str:
    """A CPU set as the kernel prints a list ("0-3,6")."""
    out, run = [], []
    for c in sorted(cpus):
        if run and c == run[-1] + 1:
            run.append(c)
            continue
        if run:
            out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
        run = [c]
    if run:
        out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
    return ",".join(out)


def _coalesced(lines: Iterable[process_pb2.ObservedLine]) -> list[process_pb2.ObservedLine]:
    """Adjacent mappings that look the same (protection, backing, flags, a file offset that runs on) as one:
    the kernel keeps such neighbours apart for reasons no program sees (each its own anon_vma after a fork,
    the dump's tracker registering part of an area) and a restore's fresh mappings merge."""
    out: list[process_pb2.ObservedLine] = []
    last: tuple[int, int, str, int, str] | None = None  # start, end, perms, offset, rest
    for ln in lines:
        lo, _, hi = ln.key.partition("-")
        perms, off, rest = (ln.value.split(" ", 2) + ["", ""])[:3]
        try:
            start, end, offset = int(lo, 16), int(hi, 16), int(off, 16)
        except ValueError:
            out.append(ln)
            last = None
            continue
        named_file = rest.startswith("/")
        if (last is not None and last[1] == start and last[2] == perms and last[4] == rest
                and (not named_file or last[3] + (last[1] - last[0]) == offset)):
            last = (last[0], end, perms, last[3], rest)
            out[-1] = process_pb2.ObservedLine(key=f"{last[0]:x}-{end:x}", value=out[-1].value)
            continue
        last = (start, end, perms, offset, rest)
        out.append(process_pb2.ObservedLine(key=ln.key, value=ln.value))
    return out


def _normalized(kind: str, lines: Iterable[process_pb2.ObservedLine], *, root: bool,
                masked_areas: Callable[[str, str], bool]) -> Counter[tuple[str, str]]:
    out: Counter[tuple[str, str]] = Counter()
    for ln in lines:
        key, value = ln.key, ln.value
        if (kind, key) in MASKED and not (key == "PPid" and not root):
            continue
        if kind == "maps" and masked_areas(key, value):
            continue
        if kind == "maps":
            for pattern, instead in _MAPS_NAMES:
                value = pattern.sub(instead, value)
        rule = _FIELDS.get((kind, key))
        if rule is not None:
            value = " ".join(rule[0].sub("", value).split())
        fix = _VALUES.get((kind, key))
        if fix is not None:
            value = fix[0](value)
        out[(key, value)] += 1
    return out


def differences(dumped: process_pb2.Observed, restored: process_pb2.Observed, *, root: bool,
                routed_vdso: bool = False, joins_restorer: tuple[bool, bool] = (False, False),
                tolerated: Collection[tuple[str, str]] = (), elsewhere: bool = False) -> list[Difference]:
    """Every line of the kernel's account that the restore changed, masks applied (see the module doc).

    ``root``: the tree's root (its parent is the restorer).  ``routed_vdso``: the restore put this kernel's
    vDSO elsewhere and a proxy at the old one (another kernel): the kernel areas are not compared.
    ``joins_restorer``: (session, group) the process takes from the restorer, having had one whose leader
    was not dumped (the root of a job started from a shell, and its children): NSsid / NSpgid not compared.
    ``tolerated``: (section kind or name, key) the user let differ, each with its note (``--allow-lower-limits``,
    ``--ext-unix-close``).
    ``elsewhere``: restored on another kernel or boot than the dump's.  Each kernel prints its own set of
    status lines (``Kthread``, ``untag_mask``, ``x86_Thread_features`` … come and go between versions): a
    line only one side has is that, not a loss, and only lines both print are compared; the kernel areas
    are the kernel's (checked before the restore began), and the speculation lines describe the CPU unless
    the thread set them.
    """
    def masked_area(key: str, value: str) -> bool:
        areas = _ELSEWHERE_AREAS if elsewhere else _KERNEL_AREAS if routed_vdso else ()
        return any(value.rsplit(" [", 1)[0].endswith(" " + a) for a in areas)

    before = {s.name: s for s in dumped.sections}
    after = {s.name: s for s in restored.sections}
    out: list[Difference] = []
    for name in sorted(before.keys() | after.keys()):
        kind = _kind(name)
        if (name not in after or name not in before) and elsewhere and kind in _OPTIONAL_ELSEWHERE:
            continue
        if name not in after:
            out.append(Difference(name, "", "present", None))
            continue
        if name not in before:
            if kind not in _NEWER:
                out.append(Difference(name, "", None, "present"))
            continue
        if before[name] == after[name]:  # the same lines normalize alike: nothing to compare (most sections)
            continue
        bl, al = before[name].lines, after[name].lines
        if kind == "maps":
            bl, al = _coalesced(bl), _coalesced(al)
        skip = {k for k, joined in zip(("NSsid", "NSpgid"), joins_restorer) if joined}
        skip |= {k for s, k in tolerated if s in (kind, name)}
        skip |= _NEWER_KEYS.get(kind, frozenset()) - {ln.key for ln in bl}
        if elsewhere and kind in _COMMON_KEYS_ELSEWHERE:
            common = {ln.key for ln in bl} & {ln.key for ln in al}
            skip |= {ln.key for ln in (*bl, *al) if ln.key not in common}
        if elsewhere and kind == "status":
            skip |= {k for k in _CPU_STATE if not any(ln.key == k and ln.value.startswith("thread")
                                                      for ln in (*bl, *al))}
        b = _normalized(kind, [ln for ln in bl if ln.key not in skip], root=root, masked_areas=masked_area)
        a = _normalized(kind, [ln for ln in al if ln.key not in skip], root=root, masked_areas=masked_area)
        if a == b:
            continue
        keys = sorted({k for k, _ in (b - a)} | {k for k, _ in (a - b)})
        for key in keys:
            bv = [v for k, v in b.elements() if k == key]
            av = [v for k, v in a.elements() if k == key]
            out.append(Difference(name, key, "; ".join(bv) if bv else None, "; ".join(av) if av else None))
    return out


def describe(pid: int, diffs: Sequence[Difference], limit: int = 6) -> str:
    """One sentence for the error: the process and its first differences."""
    shown = "; ".join(str(d) for d in diffs[:limit])
    more = f" (and {len(diffs) - limit} more)" if len(diffs) > limit else ""
    return f"process {pid} came back different from the dump: {shown}{more}"
