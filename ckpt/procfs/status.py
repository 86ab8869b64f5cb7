"""``/proc/PID/status`` (``proc_pid_status`` in fs/proc/array.c): ids, signals, capabilities.

Lines are ``Key:\\tvalue``.  Which keys exist depends on the kernel and on the
task, so everything that has not always been there is optional (None):

* ``Umask`` (4.7+) is missing for zombies and for tasks without an fs_struct.
* ``NStgid``/``NSpid``/``NSpgid``/``NSsid`` (4.1+) list the id in every pid
  namespace from the reader's level down to the task's own (DESIGN §6 relies
  on ``NSpid: <host pid> <pid inside>``).
* ``CapAmb`` (4.3+), ``NoNewPrivs`` (4.10+), ``Seccomp`` (3.8+, needs
  CONFIG_SECCOMP), ``Seccomp_filters`` (5.9+), ``Kthread`` (recent kernels
  only; :attr:`ckpt.procfs.stat.Stat.is_kthread` answers on any kernel from
  PF_KTHREAD), ``Ngid`` (3.13+, NUMA).
* The ``Vm*``/``Rss*`` lines are absent for kernel threads and zombies.
* ``Name`` is escaped (``proc_task_name(..., escape=true)``): a newline is
  printed as ``\\n`` and a backslash as ``\\\\``, unlike the raw comm in stat.
* ``Groups`` ends with a space after the last group, or is ``" "``/empty when
  there are none.
* ``SigQ`` is ``queued/limit``; the ``Sig*`` and ``Cap*`` masks are 64-bit hex.
  ``SigPnd``/``SigBlk`` are per *thread* (read ``task/TID/status`` for other
  threads); ``ShdPnd``/``SigIgn``/``SigCgt`` are process-wide.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from ._proc import ProcDir

__all__ = ["Status", "parse_status", "read_status", "read_task_status", "read_status_values", "parse_cpu_list"]


@dataclass(frozen=True, slots=True)
class Status:
    """The parts of ``/proc/PID/status`` ckpt uses, named after their keys.

    ``uid``/``gid`` are (real, effective, saved, filesystem).  Memory sizes in
    ``vm`` are in bytes, keyed as printed (``"VmRSS"``, ``"RssAnon"`` …).
    ``fields`` keeps every line's raw text for anything not parsed here.
    """

    name: str
    umask: int | None
    state: str
    tgid: int
    ngid: int | None
    pid: int
    ppid: int
    tracerpid: int
    uid: tuple[int, int, int, int]
    gid: tuple[int, int, int, int]
    fdsize: int
    groups: tuple[int, ...]
    nstgid: tuple[int, ...] | None
    nspid: tuple[int, ...] | None
    nspgid: tuple[int, ...] | None
    nssid: tuple[int, ...] | None
    kthread: bool | None
    threads: int
    #: (signals queued for the real uid, RLIMIT_SIGPENDING)
    sigq: tuple[int, int]
    sigpnd: int
    shdpnd: int
    sigblk: int
    sigign: int
    sigcgt: int
    capinh: int
    capprm: int
    capeff: int
    capbnd: int
    capamb: int | None
    nonewprivs: bool | None
    seccomp: int | None
    seccomp_filters: int | None
    cpus_allowed_list: str
    mems_allowed_list: str | None
    voluntary_ctxt_switches: int
    nonvoluntary_ctxt_switches: int
    vm: Mapping[str, int] = field(hash=False)
    fields: Mapping[str, str] = field(hash=False)

    @property
    def cpus_allowed(self) -> frozenset[int]:
        """CPU numbers of the affinity mask."""
        return parse_cpu_list(self.cpus_allowed_list)


def parse_cpu_list(text: str) -> frozenset[int]:
    """Decode a kernel cpu list such as ``0-3,8,10-11``."""
    cpus: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        lo, sep, hi = part.partition("-")
        cpus.update(range(int(lo), int(hi) + 1) if sep else (int(lo),))
    return frozenset(cpus)


def _unescape_name(raw: str) -> str:
    # Only "\n" and "\\" are escaped (seq_escape_str with only="\n\\").
    out, i = [], 0
    while i < len(raw):
        c = raw[i]
        if c == "\\" and i + 1 < len(raw) and raw[i + 1] in "n\\":
            out.append("\n" if raw[i + 1] == "n" else "\\")
            i += 2
        else:
            out.append(c)
            i += 1
    return "".join(out)


def parse_status(data: bytes) -> Status:
    """Parse the bytes of a ``status`` file (process or thread)."""
    f: dict[str, str] = {}
    for line in data.split(b"\n"):
        key, sep, value = line.partition(b":")
        if not sep:
            continue
        k = key.decode("ascii", "replace")
        # Name keeps its trailing spaces (a comm may end in one): drop only
        # the tab after the colon.  Other values are numbers, padded.
        value = value[1:] if k == "Name" and value.startswith(b"\t") else value.strip(b" \t")
        # surrogateescape: a raw non-UTF-8 byte in Name must not abort the parse.
        f[k] = os.fsdecode(value)

    def req(key: str) -> str:
        try:
            return f[key]
        except KeyError:
            raise ValueError(f"status: no {key!r} line") from None

    def ints(key: str) -> tuple[int, ...]:
        return tuple(int(x) for x in req(key).split())

    def opt_ints(key: str) -> tuple[int, ...] | None:
        return tuple(int(x) for x in f[key].split()) if key in f else None

    def opt_int(key: str, base: int = 10) -> int | None:
        return int(f[key], base) if key in f else None

    def hexmask(key: str) -> int:
        return int(req(key), 16)

    uid, gid = ints("Uid"), ints("Gid")
    if len(uid) != 4 or len(gid) != 4:
        raise ValueError(f"status: Uid/Gid need 4 values: {uid} {gid}")
    queued, _, limit = req("SigQ").partition("/")
    vm: dict[str, int] = {}
    for key, value in f.items():
        if (key.startswith(("Vm", "Rss")) or key == "HugetlbPages") and value.endswith(" kB"):
            vm[key] = int(value[:-3]) * 1024
    kthread = None if "Kthread" not in f else f["Kthread"] == "1"
    return Status(
        name=_unescape_name(req("Name")),
        umask=opt_int("Umask", 8),
        state=req("State")[:1],
        tgid=int(req("Tgid")), ngid=opt_int("Ngid"), pid=int(req("Pid")), ppid=int(req("PPid")),
        tracerpid=int(req("TracerPid")),
        uid=(uid[0], uid[1], uid[2], uid[3]), gid=(gid[0], gid[1], gid[2], gid[3]),
        fdsize=int(req("FDSize")),
        groups=tuple(int(x) for x in f.get("Groups", "").split()),
        nstgid=opt_ints("NStgid"), nspid=opt_ints("NSpid"), nspgid=opt_ints("NSpgid"), nssid=opt_ints("NSsid"),
        kthread=kthread,
        threads=int(req("Threads")),
        sigq=(int(queued), int(limit)),
        sigpnd=hexmask("SigPnd"), shdpnd=hexmask("ShdPnd"), sigblk=hexmask("SigBlk"),
        sigign=hexmask("SigIgn"), sigcgt=hexmask("SigCgt"),
        capinh=hexmask("CapInh"), capprm=hexmask("CapPrm"), capeff=hexmask("CapEff"), capbnd=hexmask("CapBnd"),
        capamb=opt_int("CapAmb", 16),
        nonewprivs=None if "NoNewPrivs" not in f else f["NoNewPrivs"] == "1",
        seccomp=opt_int("Seccomp"), seccomp_filters=opt_int("Seccomp_filters"),
        cpus_allowed_list=req("Cpus_allowed_list"),
        mems_allowed_list=f.get("Mems_allowed_list"),
        voluntary_ctxt_switches=int(req("voluntary_ctxt_switches")),
        nonvoluntary_ctxt_switches=int(req("nonvoluntary_ctxt_switches")),
        vm=MappingProxyType(vm),
        fields=MappingProxyType(f),
    )


def read_status(pid: int, *, proc: ProcDir | None = None) -> Status:
    """``/proc/PID/status`` of a process (its main thread's per-thread fields)."""
    return parse_status((proc or ProcDir(pid)).read("status"))


def read_task_status(pid: int, tid: int, *, proc: ProcDir | None = None) -> Status:
    """``/proc/PID/task/TID/status``: per-thread SigPnd/SigBlk, caps, ctx switches."""
    return parse_status((proc or ProcDir(pid)).read(f"task/{tid}/status", tid=tid))


def read_status_values(pid: int, *keys: str, tid: int | None = None, proc: ProcDir | None = None) -> list[str]:
    """The values (stripped) of a few lines of ``/proc/PID/status`` (``task/TID/status`` with ``tid``).

    Without parsing the rest: for a caller that needs a field or two, a full
    :func:`read_status` parses ~60 lines (~40 µs here) into a :class:`Status`.
    """
    proc = proc or ProcDir(pid)
    data = b"\n" + (proc.read("status") if tid is None else proc.read(f"task/{tid}/status", tid=tid))
    out = []
    for key in keys:
        tag = b"\n" + key.encode() + b":"
        at = data.find(tag)
        if at < 0:
            raise ValueError(f"status: no {key!r} line")
        start = at + len(tag)
        end = data.find(b"\n", start)
        out.append(os.fsdecode(data[start:end if end >= 0 else None].strip(b" \t")))
    return out
