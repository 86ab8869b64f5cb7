"""Credentials in an image are what the kernel showed, and never more than the image's owner could have had.

Two checks on the same records (:mod:`ckpt.resources.creds` writes and
restores them):

* **At dump** (:func:`check_dump`, after every resource of a process is read):
  each thread's uids, gids, groups, capability sets, no_new_privs and seccomp
  mode and filter count, as the image records them (``creds`` or the thread's
  own ``thread_creds``, ``seccomp``), must equal what the kernel shows now in
  ``/proc/PID/task/TID/status``, the process still frozen.  Only securebits
  come from an injected call (``prctl(PR_GET_SECUREBITS)``: no /proc file shows
  them); the injector checks that the kernel ran that very call
  (:mod:`ckpt.control.inject`, PTRACE_GET_SYSCALL_INFO).  A difference refuses
  the dump, naming the process, thread and field.

* **At restore** (:func:`refuse_beyond_owner`, before anything is created):
  an image directory owned by a user other than root is what that user could
  write, re-sealed checksums included, so its records are only as good as
  that user's word.  Such an image may claim no uid but its owner's, no gid or
  supplementary group outside the owner's groups (the group database), and no
  capability in CapInh, CapPrm, CapEff or CapAmb: a process of that user, dumped
  by that user, has none of them beyond what the user itself could hold, and a
  root restore would otherwise hand them over.  The bounding set, securebits,
  no_new_privs and seccomp only take privileges away; whatever the owner
  claims of them gives the process nothing its owner could not have given
  itself.  A signature by a key the restorer trusts (``--verify-key``) lifts
  the rule: the signer vouches for every record.  When the owner itself
  restores, its own groups and permitted capabilities count as the owner's
  (the kernel would let it hand those on in any case).
"""

from __future__ import annotations

import os
import pwd
import threading
from collections.abc import Iterable, Iterator

from ..control.seize import FrozenProcess
from ..errors import ImageError, TargetError
from ..image.pb import process_pb2
from ..procfs.status import Status, read_task_status
from .creds import caps
from .seccomp import chain_of

__all__ = ["check_dump", "refuse_beyond_owner", "owner_groups"]


def _fields(c: process_pb2.Creds, nnp: bool) -> dict[str, object]:
    return {
        "uids (real, effective, saved, fs)": (c.uid, c.euid, c.suid, c.fsuid),
        "gids (real, effective, saved, fs)": (c.gid, c.egid, c.sgid, c.fsgid),
        "groups": tuple(c.groups), "CapInh": c.cap_inheritable, "CapPrm": c.cap_permitted,
        "CapEff": c.cap_effective, "CapBnd": c.cap_bounding, "CapAmb": c.cap_ambient, "NoNewPrivs": nnp,
    }


def _kernel_fields(st: Status) -> dict[str, object]:
    return {
        "uids (real, effective, saved, fs)": st.uid, "gids (real, effective, saved, fs)": st.gid,
        "groups": st.groups, "CapInh": st.capinh, "CapPrm": st.capprm, "CapEff": st.capeff,
        "CapBnd": st.capbnd, "CapAmb": st.capamb or 0, "NoNewPrivs": bool(st.nonewprivs),
    }


def _thread_records(entry: process_pb2.ProcessEntry, tid: int) -> tuple[process_pb2.Creds, bool]:
    """The credentials and no_new_privs the image gives thread ``tid`` (its own, else the process's)."""
    own = next((t for t in entry.thread_creds if t.tid == tid), None)
    return (entry.creds, entry.flags.no_new_privs) if own is None else (own.creds, own.no_new_privs)


def _seccomp_of(entry: process_pb2.ProcessEntry) -> dict[int, tuple[int, int]]:
    """{tid: (mode, number of filters)} as the image records them (threads not listed: mode 0)."""
    if not entry.HasField("seccomp"):
        return {}
    msg = entry.seccomp
    return {t.tid: (t.mode, len(chain_of(msg, t))) for t in msg.threads}


def check_dump(proc: FrozenProcess, entry: process_pb2.ProcessEntry) -> None:
    """Refuse (TargetError) a record of ``proc`` that the kernel's account of its threads denies (module doc)."""
    seccomp = _seccomp_of(entry)
    for tid in sorted(proc.threads):
        st = read_task_status(proc.pid, tid)
        creds, nnp = _thread_records(entry, tid)
        kernel, recorded = _kernel_fields(st), _fields(creds, nnp)
        if st.seccomp is not None:
            kernel["seccomp mode and filters"] = (st.seccomp, st.seccomp_filters or 0)
            recorded["seccomp mode and filters"] = seccomp.get(tid, (0, 0))
        diff = [f"{k}: recorded {recorded[k]}, the kernel shows {kernel[k]}" for k in kernel if kernel[k] != recorded[k]]
        if diff:
            raise TargetError(proc.pid, f"process {proc.pid}, thread {tid}: the credentials to be recorded are not "
                                        f"the kernel's (/proc/{proc.pid}/task/{tid}/status): " + "; ".join(diff)
                                        + ": refusing to record them")


def owner_groups(uid: int) -> frozenset[int]:
    """The gids user ``uid`` belongs to by the group database (none for a uid it does not know)."""
    try:
        pw = pwd.getpwuid(uid)
    except KeyError:
        return frozenset()
    return frozenset(os.getgrouplist(pw.pw_name, pw.pw_gid))


def _who(uid: int) -> str:
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def _claims(c: process_pb2.Creds, owner: int, groups: frozenset[int], held: int) -> Iterator[str]:
    """What record ``c`` claims beyond what user ``owner`` (member of ``groups``, holding capabilities ``held``)
    could have had."""
    uids = sorted({c.uid, c.euid, c.suid, c.fsuid} - {owner})
    if uids:
        yield f"uid {', '.join(map(str, uids))}"
    gids = sorted({c.gid, c.egid, c.sgid, c.fsgid, *c.groups} - groups)
    if gids:
        yield f"gid {', '.join(map(str, gids))} (not groups of the owner)"
    for name, mask in (("CapInh", c.cap_inheritable), ("CapPrm", c.cap_permitted), ("CapEff", c.cap_effective),
                       ("CapAmb", c.cap_ambient)):
        if mask & ~held:
            yield f"{name} capabilities {caps(mask & ~held)}"


def refuse_beyond_owner(image_dir: str, entries: Iterable[tuple[int, process_pb2.ProcessEntry]], owner: int) -> None:
    """Refuse (ImageError) records of an image owned by ``owner`` that claim more than that user had (module doc).

    ``entries``: (pid, ProcessEntry) of every live process the restore would make.
    """
    if owner == 0:
        return
    groups, held = owner_groups(owner), 0
    if owner == os.geteuid():  # the owner restores: what it has itself, the kernel lets it hand on anyway
        groups |= {os.getgid(), os.getegid(), *os.getgroups()}
        held = read_task_status(os.getpid(), threading.get_native_id()).capprm
    for pid, entry in entries:
        threads = [(pid, entry.creds), *((t.tid, t.creds) for t in entry.thread_creds)]
        for tid, c in threads:
            claims = list(_claims(c, owner, groups, held))
            if claims:
                who = f"process {pid}" + (f", thread {tid}," if tid != pid else "")
                raise ImageError(image_dir, f"{who} claims {'; '.join(claims)}, but the image directory is owned by "
                                            f"{_who(owner)}, who could not have had that: an image another user "
                                            "could write is only as trusted as that user",
                                 hint=f"restore it as {_who(owner)}, or sign it at dump (--sign-key) and restore "
                                      "with --verify-key")
