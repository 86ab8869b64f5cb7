"""Credentials: uids/gids (real, effective, saved, fs), supplementary groups, capabilities, securebits, no_new_privs.

Dump reads ``/proc/PID/status`` (everything but securebits, which only
``prctl(PR_GET_SECUREBITS)`` injected into the target tells), and each other
thread's ``task/TID/status`` and securebits: credentials and no_new_privs
belong to each thread, and a thread that changed its own with raw syscalls
(not glibc's setuid() & co., which set every thread's) is recorded with its own.

Restore runs injected syscalls in the helper, which starts with the
restorer's credentials, and only ever goes *down* from there: the kernel
checks every step, so a restorer can never hand a process more than the
restorer itself holds; if the image asks for more (a capability outside our
bounding set, clearing no_new_privs) it is refused before anything changes.
The order matters and each step needs what the next takes away:

1. ``setgroups``, ``setresgid``, ``setfsgid`` — need CAP_SETGID, so before uids;
2. ``PR_CAPBSET_DROP`` for each capability leaving the bounding set — needs
   CAP_SETPCAP in the effective set, so while we still have it;
3. securebits with SECBIT_KEEP_CAPS added, so that ``setresuid`` away from
   uid 0 keeps the permitted set (it would otherwise be cleared);
4. ``setresuid``, ``setfsuid`` (the effective set is cleared by the kernel when
   the euid leaves 0; permitted survives thanks to step 3);
5. ``capset`` with effective = permitted, then the final securebits (needs
   CAP_SETPCAP) or just ``PR_SET_KEEPCAPS(0)`` (needs nothing), ambient raises
   (a capability must be permitted and inheritable), and the final ``capset``;
6. ``PR_SET_NO_NEW_PRIVS`` last (it cannot be undone).

Steps whose value already matches are skipped, so a restorer restoring its
own credentials needs no privilege at all.  The result is read back from
/proc and compared; any difference is a RestoreError.
"""

from __future__ import annotations

import ctypes

from ..control.inject import Injector, Query, Scratch
from ..control.seize import FrozenProcess
from ..errors import RestoreError
from ..image.pb import process_pb2
from ..kernel.arch_x86_64 import NR
from ..kernel.prctl import (
    _LINUX_CAPABILITY_VERSION_3, PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, PR_CAP_AMBIENT_RAISE, PR_CAPBSET_DROP,
    PR_GET_SECUREBITS, PR_SET_KEEPCAPS, PR_SET_NO_NEW_PRIVS, PR_SET_SECUREBITS, SECBIT_KEEP_CAPS,
    SECBIT_KEEP_CAPS_LOCKED, cap_last_cap, cap_user_data, cap_user_header,
)
from ..procfs.snapshot import Snapshot
from ..procfs.status import Status, read_task_status
from ._scratch import scratch_for

__all__ = ["dump", "dump_creds", "thread_creds", "restore", "caps"]

_U32 = 0xFFFFFFFF


def caps(mask: int) -> list[int]:
    """Capability numbers set in ``mask``."""
    return [n for n in range(64) if mask >> n & 1]


SECUREBITS = Query("prctl(PR_GET_SECUREBITS)", NR.prctl, (PR_GET_SECUREBITS, 0, 0, 0, 0))
#: What :func:`dump` asks the process (a dump may ask them of a whole tree at once: inject.ask_all).
QUERIES = (SECUREBITS,)


def dump_creds(proc: FrozenProcess, snap: Snapshot) -> process_pb2.Creds:
    """The Creds record of the frozen process (securebits by an injected prctl)."""
    st = snap.status
    return _creds_of(st, proc.injector().ask(SECUREBITS)[0])


def _creds_of(st: Status, securebits: int) -> process_pb2.Creds:
    return process_pb2.Creds(
        uid=st.uid[0], euid=st.uid[1], suid=st.uid[2], fsuid=st.uid[3],
        gid=st.gid[0], egid=st.gid[1], sgid=st.gid[2], fsgid=st.gid[3],
        groups=list(st.groups),
        cap_inheritable=st.capinh, cap_permitted=st.capprm, cap_effective=st.capeff,
        cap_bounding=st.capbnd, cap_ambient=st.capamb or 0, securebits=securebits,
    )


def thread_creds(proc: FrozenProcess, creds: process_pb2.Creds, nnp: bool) -> list[process_pb2.ThreadCreds]:
    """The threads whose credentials (task status, securebits asked of each thread) are not ``creds``/``nnp``."""
    out = []
    for tid in sorted(proc.threads):
        if tid == proc.pid:
            continue
        st = read_task_status(proc.pid, tid)
        mine = _creds_of(st, proc.injector(tid).ask(SECUREBITS)[0])
        if mine != creds or bool(st.nonewprivs) != nnp:
            out.append(process_pb2.ThreadCreds(tid=tid, creds=mine, no_new_privs=bool(st.nonewprivs)))
    return out


def dump(proc: FrozenProcess, snap: Snapshot) -> process_pb2.ProcessEntry:
    """A ProcessEntry fragment with ``creds``, ``flags.no_new_privs`` and the threads whose own differ."""
    entry = process_pb2.ProcessEntry(creds=dump_creds(proc, snap))
    entry.flags.no_new_privs = bool(snap.status.nonewprivs)
    entry.thread_creds.extend(thread_creds(proc, entry.creds, entry.flags.no_new_privs))
    return entry


def _prctl(inj: Injector, option: int, arg: int = 0, arg3: int = 0, *, what: str) -> int:
    return inj.call(NR.prctl, option, arg, arg3, 0, 0, name=f"prctl({what})")


def _capset(inj: Injector, s: Scratch, inh: int, prm: int, eff: int) -> None:
    hdr = cap_user_header(_LINUX_CAPABILITY_VERSION_3, 0)
    lo = cap_user_data(eff & _U32, prm & _U32, inh & _U32)
    hi = cap_user_data(eff >> 32, prm >> 32, inh >> 32)
    s.write(0, bytes(hdr) + bytes(lo) + bytes(hi))
    inj.call(NR.capset, s.addr, s.addr + ctypes.sizeof(hdr), name=f"capset(inh={inh:#x}, prm={prm:#x}, eff={eff:#x})")


def _refuse_more(c: process_pb2.Creds, cur: Status, no_new_privs: bool) -> None:
    """The image may not hold what the helper (i.e. the restorer) does not: say so before changing anything."""
    problems = []
    extra_bnd = c.cap_bounding & ~cur.capbnd
    if extra_bnd:
        problems.append(f"bounding capabilities {caps(extra_bnd)} that the restorer's bounding set lacks")
    extra_prm = (c.cap_permitted | c.cap_ambient) & ~cur.capprm
    if extra_prm:
        problems.append(f"permitted capabilities {caps(extra_prm)} that the restorer does not hold")
    if cur.nonewprivs and not no_new_privs:
        problems.append("no_new_privs clear, but the restorer runs with no_new_privs set")
    if problems:
        raise RestoreError("cannot restore credentials: the image has " + "; ".join(problems),
                           hint="restore as root (with the capabilities the process had)")


def restore(inj: Injector, entry: process_pb2.ProcessEntry, *, scratch: Scratch | None = None) -> None:
    """Give the thread of ``inj`` the credentials of ``entry`` (see the module doc for the order).

    Credentials belong to each thread (glibc's setuid() broadcasts to all of
    them): a multi-threaded process needs this once per thread.  A thread with
    its own (``entry.thread_creds``, set with raw syscalls) gets those.
    """
    own = next((t for t in entry.thread_creds if t.tid == inj.tid), None)
    c = entry.creds if own is None else own.creds
    want_nnp = entry.flags.no_new_privs if own is None else own.no_new_privs
    cur = read_task_status(inj.pid, inj.tid)
    _refuse_more(c, cur, want_nnp)
    if _same(cur, c, want_nnp) and _prctl(inj, PR_GET_SECUREBITS, what="PR_GET_SECUREBITS") == c.securebits:
        return  # already the image's (a root process restored by root): a dozen injected calls less
    with scratch_for(inj, scratch, 256) as s:
        groups = list(c.groups)
        if tuple(groups) != cur.groups:
            s.write(0, b"".join(g.to_bytes(4, "little") for g in groups))
            inj.call(NR.setgroups, len(groups), s.addr, name=f"setgroups({groups})")
        if (c.gid, c.egid, c.sgid) != cur.gid[:3]:
            inj.call(NR.setresgid, c.gid, c.egid, c.sgid, name=f"setresgid({c.gid}, {c.egid}, {c.sgid})")
        inj.call(NR.setfsgid, c.fsgid, name=f"setfsgid({c.fsgid})")  # returns the old value, never fails
        for cap in caps(cur.capbnd & ~c.cap_bounding):
            if cap <= cap_last_cap():
                _prctl(inj, PR_CAPBSET_DROP, cap, what=f"PR_CAPBSET_DROP, {cap}")

        uids_change = (c.uid, c.euid, c.suid) != cur.uid[:3]
        cur_bits = _prctl(inj, PR_GET_SECUREBITS, what="PR_GET_SECUREBITS")
        bits = c.securebits
        if uids_change and not bits & SECBIT_KEEP_CAPS:
            bits = (bits | SECBIT_KEEP_CAPS) & ~SECBIT_KEEP_CAPS_LOCKED  # keep the permitted set across setresuid
        if bits != cur_bits:
            _prctl(inj, PR_SET_SECUREBITS, bits, what=f"PR_SET_SECUREBITS, {bits:#x}")
        if uids_change:
            inj.call(NR.setresuid, c.uid, c.euid, c.suid, name=f"setresuid({c.uid}, {c.euid}, {c.suid})")
        inj.call(NR.setfsuid, c.fsuid, name=f"setfsuid({c.fsuid})")

        # Everything permitted is effective for a moment: the last securebits step may need CAP_SETPCAP.
        _capset(inj, s, c.cap_inheritable, c.cap_permitted, c.cap_permitted)
        if bits != c.securebits:
            if bits & ~c.securebits == SECBIT_KEEP_CAPS and not bits & SECBIT_KEEP_CAPS_LOCKED:
                _prctl(inj, PR_SET_KEEPCAPS, 0, what="PR_SET_KEEPCAPS, 0")
            else:
                _prctl(inj, PR_SET_SECUREBITS, c.securebits, what=f"PR_SET_SECUREBITS, {c.securebits:#x}")
        _prctl(inj, PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, what="PR_CAP_AMBIENT, CLEAR_ALL")
        for cap in caps(c.cap_ambient):
            _prctl(inj, PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, cap, what=f"PR_CAP_AMBIENT, RAISE, {cap}")
        _capset(inj, s, c.cap_inheritable, c.cap_permitted, c.cap_effective)
        if want_nnp and not cur.nonewprivs:
            _prctl(inj, PR_SET_NO_NEW_PRIVS, 1, what="PR_SET_NO_NEW_PRIVS, 1")
        final_bits = _prctl(inj, PR_GET_SECUREBITS, what="PR_GET_SECUREBITS")
    _verify(inj.pid, inj.tid, c, want_nnp, final_bits)


def _same(st: "Status", c: process_pb2.Creds, nnp: bool) -> bool:
    """Everything /proc/PID/task/TID/status shows of the credentials is already the image's."""
    return (st.uid == (c.uid, c.euid, c.suid, c.fsuid) and st.gid == (c.gid, c.egid, c.sgid, c.fsgid)
            and st.groups == tuple(c.groups) and st.capinh == c.cap_inheritable and st.capprm == c.cap_permitted
            and st.capeff == c.cap_effective and st.capbnd == c.cap_bounding and (st.capamb or 0) == c.cap_ambient
            and bool(st.nonewprivs) == nnp)


def _verify(pid: int, tid: int, c: process_pb2.Creds, nnp: bool, securebits: int) -> None:
    st = read_task_status(pid, tid)
    got = {
        "uids": st.uid, "gids": st.gid, "groups": st.groups, "CapInh": st.capinh, "CapPrm": st.capprm,
        "CapEff": st.capeff, "CapBnd": st.capbnd, "CapAmb": st.capamb or 0, "NoNewPrivs": bool(st.nonewprivs),
        "securebits": securebits,
    }
    want = {
        "uids": (c.uid, c.euid, c.suid, c.fsuid), "gids": (c.gid, c.egid, c.sgid, c.fsgid),
        "groups": tuple(c.groups), "CapInh": c.cap_inheritable, "CapPrm": c.cap_permitted,
        "CapEff": c.cap_effective, "CapBnd": c.cap_bounding, "CapAmb": c.cap_ambient, "NoNewPrivs": nnp,
        "securebits": c.securebits,
    }
    diff = {k: (got[k], want[k]) for k in want if got[k] != want[k]}
    if diff:
        raise RestoreError(f"credentials of {pid}/{tid} differ after restore (got, wanted): {diff}")
