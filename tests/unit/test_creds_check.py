"""ckpt/resources/creds_check.py against the kernel's account of this very process (no target needed)."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest

from ckpt.errors import ImageError, TargetError
from ckpt.image.pb import process_pb2
from ckpt.procfs.status import read_task_status
from ckpt.resources import creds_check
from ckpt.resources.creds import _creds_of


def _us() -> tuple[SimpleNamespace, process_pb2.ProcessEntry]:
    """This process as a frozen one would be seen, and the entry an honest dump records for it."""
    pid = os.getpid()
    st = read_task_status(pid, pid)
    entry = process_pb2.ProcessEntry(creds=_creds_of(st, 0))
    entry.flags.no_new_privs = bool(st.nonewprivs)
    return SimpleNamespace(pid=pid, threads={pid: None}), entry


def test_an_honest_record_passes() -> None:
    proc, entry = _us()
    creds_check.check_dump(proc, entry)  # type: ignore[arg-type]


@pytest.mark.parametrize("field, word", [("cap_effective", "CapEff"), ("uid", r"uids \(real, effective, saved, fs\)"),
                                         ("groups", "groups")])
def test_a_record_the_kernel_denies_refuses_the_dump(field: str, word: str) -> None:
    proc, entry = _us()
    if field == "groups":
        entry.creds.groups.append(4242)
    elif field == "uid":
        entry.creds.uid += 1
    else:
        entry.creds.cap_effective ^= 1 << 5
    with pytest.raises(TargetError, match=rf"process {proc.pid}, thread {proc.pid}: .*{word}: recorded"):
        creds_check.check_dump(proc, entry)  # type: ignore[arg-type]


def test_a_seccomp_mode_the_kernel_denies_refuses_the_dump() -> None:
    proc, entry = _us()
    entry.seccomp.threads.append(process_pb2.ThreadSeccomp(tid=proc.pid, mode=1))
    with pytest.raises(TargetError, match="seccomp mode and filters: recorded"):
        creds_check.check_dump(proc, entry)  # type: ignore[arg-type]


def _entry(uid: int, gid: int, *, prm: int = 0, groups: tuple[int, ...] = ()) -> process_pb2.ProcessEntry:
    return process_pb2.ProcessEntry(creds=process_pb2.Creds(
        uid=uid, euid=uid, suid=uid, fsuid=uid, gid=gid, egid=gid, sgid=gid, fsgid=gid, groups=list(groups),
        cap_permitted=prm, cap_effective=prm, cap_bounding=(1 << 41) - 1))


def test_root_owned_images_may_claim_anything() -> None:
    creds_check.refuse_beyond_owner("img", [(7, _entry(0, 0, prm=(1 << 41) - 1))], 0)


def test_an_owner_with_no_user_entry_has_no_groups_to_claim() -> None:
    with pytest.raises(ImageError, match=r"claims gid 12345 \(not groups of the owner\)"):
        creds_check.refuse_beyond_owner("img", [(7, _entry(12345, 12345))], 12345)


def test_a_thread_of_its_own_is_held_to_the_same_rule() -> None:
    entry = _entry(65534, 65534)
    entry.thread_creds.append(process_pb2.ThreadCreds(tid=8, creds=_entry(65534, 65534, prm=1 << 21).creds))
    creds_check.refuse_beyond_owner("img", [(7, _entry(65534, 65534))], 65534)
    with pytest.raises(ImageError, match=r"process 7, thread 8, claims CapPrm capabilities \[21\]"):
        creds_check.refuse_beyond_owner("img", [(7, entry)], 65534)
