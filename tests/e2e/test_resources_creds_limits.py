"""Credentials and process attributes: dump a target that changed them, restore into a root helper, compare /proc."""

from __future__ import annotations

import os
import signal
import subprocess

import pytest

from ckpt.control.seize import freeze
from ckpt.errors import RestoreError
from ckpt.image.pb import process_pb2
from ckpt.kernel.prctl import PR_GET_SECUREBITS, SECBIT_KEEP_CAPS
from ckpt.kernel.arch_x86_64 import NR
from ckpt.kernel.resource import RLIMIT_CORE, RLIMIT_NOFILE, RLIMIT_STACK, prlimit64
from ckpt.procfs import snapshot
from ckpt.resources import creds, limits
from resources_helpers import need_root, start_helper, status_of
from targets import Target, build_c, tracer_of

pytestmark = need_root
CRED_KEYS = ("Uid", "Gid", "Groups", "CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs")


def dump_all(pid: int, *modules) -> process_pb2.ProcessEntry:
    entry = process_pb2.ProcessEntry()
    with freeze(pid) as proc, snapshot(pid) as snap:
        for m in modules:
            entry.MergeFrom(m.dump(proc, snap))
    assert tracer_of(pid) == 0
    return process_pb2.ProcessEntry.FromString(entry.SerializeToString())


def test_creds_round_trip(c_target) -> None:
    t = c_target("resources", "creds")
    t.ready()
    before = status_of(t.pid)
    assert before["Uid"].split() == ["1000", "1001", "1002", "1002"]
    entry = dump_all(t.pid, creds)
    assert all(status_of(t.pid)[k] == before[k] for k in CRED_KEYS)
    c = entry.creds
    assert (c.uid, c.euid, c.suid, c.fsuid, c.gid, c.egid, c.sgid, c.fsgid) == (1000, 1001, 1002, 1002, 1000, 1001, 1002, 1000)
    assert list(c.groups) == [1001, 1002, 4000] and c.securebits == SECBIT_KEEP_CAPS and entry.flags.no_new_privs

    h = start_helper(c_target)
    with freeze(h.pid) as hp:
        creds.restore(hp.injector(), entry)
        assert hp.injector().call(NR.prctl, PR_GET_SECUREBITS, 0, 0, 0, 0) == SECBIT_KEEP_CAPS
    got = status_of(h.pid)
    for key in CRED_KEYS:
        assert got[key] == before[key], key
    # Behaviour: as uid 1000 the helper may signal init (a root process) only through its effective CAP_KILL.
    with freeze(h.pid) as hp:
        assert hp.injector().call(NR.kill, 1, 0) == 0
    assert h.alive()


def test_creds_refuse_more_than_the_restorer_has(c_target) -> None:
    h = start_helper(c_target)
    entry = process_pb2.ProcessEntry()
    c = entry.creds
    st = status_of(h.pid)
    c.cap_bounding = c.cap_permitted = c.cap_effective = int(st["CapBnd"], 16) | 1 << 24  # CAP_SYS_RESOURCE
    with freeze(h.pid) as hp:
        with pytest.raises(RestoreError, match=r"capabilities \[24\]"):
            creds.restore(hp.injector(), entry)
    assert status_of(h.pid)["Uid"] == st["Uid"] and status_of(h.pid)["CapBnd"] == st["CapBnd"]  # nothing changed
    assert h.alive() and tracer_of(h.pid) == 0


def test_limits_round_trip(c_target, tmp_path) -> None:
    t = c_target("resources", "limits", str(tmp_path))
    t.ready()
    entry = dump_all(t.pid, limits)
    sched = limits.dump_sched(t.pid)
    assert entry.cwd == str(tmp_path) and entry.umask == 0o027 and entry.comm == "ckpt-limits"
    assert entry.oom_score_adj == 300 and entry.flags.child_subreaper and entry.flags.pdeath_signal == signal.SIGTERM
    rl = {r.resource: (r.cur, r.max) for r in entry.rlimits}
    assert len(rl) == 16 and rl[RLIMIT_NOFILE] == (200, 300) and rl[RLIMIT_CORE] == (0, 1 << 20)
    assert sched.nice == 5 and sched.cpu_affinity[0] == 1
    assert os.readlink(f"/proc/{t.pid}/cwd") == str(tmp_path) and t.alive()

    h = start_helper(c_target)
    with freeze(h.pid) as hp:
        warnings = limits.restore(hp.injector(), entry)
        warnings += limits.restore_sched(hp.injector(), sched)
    assert warnings == []
    assert os.readlink(f"/proc/{h.pid}/cwd") == str(tmp_path)
    got, want = status_of(h.pid), status_of(t.pid)
    for key in ("Umask", "Name", "Cpus_allowed_list"):
        assert got[key] == want[key], key
    for r in range(16):
        assert prlimit64(h.pid, r) == prlimit64(t.pid, r), r
    with open(f"/proc/{h.pid}/oom_score_adj") as f:
        assert f.read().strip() == "300"
    assert os.getpriority(os.PRIO_PROCESS, h.pid) == 5
    again = dump_all(h.pid, limits)
    for field in ("umask", "comm", "cwd", "root", "personality", "oom_score_adj", "flags", "rlimits"):
        assert getattr(again, field) == getattr(entry, field), field


def test_hard_limit_that_cannot_be_raised_is_refused_or_lowered_on_request(c_target) -> None:
    """Root without CAP_SYS_RESOURCE cannot raise a hard limit: the restore fails, naming it; asked to
    (--allow-lower-limits: a list to fill), it restores what fits and says what did not."""
    if int(status_of(os.getpid())["CapEff"], 16) >> 24 & 1:
        pytest.skip("this restorer has CAP_SYS_RESOURCE: it may raise hard limits")
    h = start_helper(c_target)
    prlimit64(h.pid, RLIMIT_STACK, (1 << 20, 2 << 20))  # the helper starts below the image's limit
    entry = process_pb2.ProcessEntry()
    entry.rlimits.add(resource=RLIMIT_STACK, name="STACK", cur=4 << 20, max=16 << 20)
    entry.rlimits.add(resource=RLIMIT_NOFILE, name="NOFILE", cur=100, max=150)
    with freeze(h.pid) as hp, pytest.raises(RestoreError, match="RLIMIT_STACK: the hard limit 16777216 cannot be "
                                                                "raised from 2097152 here"):
        limits.restore_rlimits(hp.injector(), entry.rlimits)
    lowered: list[int] = []
    with freeze(h.pid) as hp:
        warnings = limits.restore_rlimits(hp.injector(), entry.rlimits, lowered=lowered)
    assert lowered == [RLIMIT_STACK]
    assert len(warnings) == 1 and "RLIMIT_STACK" in warnings[0] and "CAP_SYS_RESOURCE" in warnings[0]
    assert prlimit64(h.pid, RLIMIT_STACK) == (2 << 20, 2 << 20)
    assert prlimit64(h.pid, RLIMIT_NOFILE) == (100, 150)


def test_session_leader_and_group_leader(c_target) -> None:
    """A session leader gets setsid(); a group leader in another session setpgid(0, 0)."""
    exe = build_c("resources")
    # Helpers that are neither (same session and group as us), unlike c_target's own sessions.
    plain = [Target(subprocess.Popen([exe, "helper"], stdout=subprocess.PIPE, close_fds=True)) for _ in range(2)]
    try:
        for p in plain:
            p.ready()
        lead = process_pb2.ProcessEntry(pid=500, sid=500, pgid=500)
        group = process_pb2.ProcessEntry(pid=600, sid=1, pgid=600)
        for p, entry in zip(plain, (lead, group)):
            with freeze(p.pid) as hp:
                assert limits.restore_session(hp.injector(), entry) == []
        s0, s1 = (open(f"/proc/{p.pid}/stat").read().rsplit(")", 1)[1].split() for p in plain)
        assert (int(s0[2]), int(s0[3])) == (plain[0].pid, plain[0].pid)  # pgrp, session
        assert int(s1[2]) == plain[1].pid and int(s1[3]) == os.getsid(0)
        member = process_pb2.ProcessEntry(pid=700, sid=800, pgid=99999)
        with freeze(plain[1].pid) as hp:
            (warning,) = limits.restore_session(hp.injector(), member)
        assert "process group 99999" in warning
    finally:
        for p in plain:
            p.close()


def test_deleted_cwd_is_made_again_and_entered(c_target, tmp_path) -> None:
    """A working directory deleted under the process: dumped as a ghost (it used to be refused), the
    target left running, and a restore enters an empty directory made again under the old name, then
    removed: the helper's cwd is "PATH (deleted)" as the target's is."""
    d = tmp_path / "gone"
    d.mkdir()
    t = c_target("resources", "limits", str(d))
    t.ready()
    d.rmdir()
    entry = dump_all(t.pid, limits)
    assert t.alive() and tracer_of(t.pid) == 0
    assert entry.cwd == str(d) and entry.HasField("cwd_ghost") and entry.cwd_ghost.mode & 0o170000 == 0o040000
    h = start_helper(c_target)
    with freeze(h.pid) as hp:
        limits.restore(hp.injector(), entry)
    assert os.readlink(f"/proc/{h.pid}/cwd") == f"{d} (deleted)"
    assert os.stat(f"/proc/{h.pid}/cwd").st_nlink == 0 and not d.exists()