"""Process attributes: the audit loginuid, membarrier registrations, KSM merge-any, MDWE and the per-thread
PR_SET_TSC and PR_MCE_KILL come back (scenarios/procattrs.c checks each after the restore: PASS).  Its
loginuid write gives it an audit session id of its own, which no restore can give back: the dump is
refused, naming the tolerance, unless ``--tolerate audit-session``."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from ckpt import api
from ckpt.errors import Unsupported
from ckpt.image.reader import Image
from test_dump_restore import _forget

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="dump/restore needs root (ptrace, clone3 set_tid)")


def _unset_loginuid() -> bool:
    with open("/proc/self/loginuid") as f:
        return f.read().strip() == "4294967295"


@pytest.mark.skipif(not os.path.exists("/proc/self/loginuid"), reason="a kernel without audit")
def test_process_attributes_round_trip(c_target, tmp_path: Path, restored: list[int]) -> None:  # noqa: ANN001
    if not _unset_loginuid():
        pytest.skip("the scenario sets its loginuid, which takes CAP_AUDIT_CONTROL once one is set")
    t = c_target("procattrs", stderr=subprocess.DEVNULL)
    ready = t.ready()
    with pytest.raises(Unsupported, match="audit session id") as refused:
        api.dump(t.pid, tmp_path / "refused", leave_running=True)
    assert "--tolerate audit-session" in (refused.value.hint or "")
    stats = api.dump(t.pid, tmp_path / "img", tolerate=["audit-session"])
    _forget(t)
    assert any("audit session id" in n for n in stats.notes), stats.notes
    a = Image.open(tmp_path / "img").process(t.pid).attrs
    assert (a.loginuid, a.mdwe, len(a.threads)) == (1234, int(ready["mdwe"]), 2), a  # MDWE: Linux 6.3
    assert bin(a.membarrier).count("1") == bin(int(ready["membarrier"])).count("1")
    r = api.restore(tmp_path / "img", inherit_fds=t.stdio_fds)
    restored.append(r.pid)
    os.kill(r.pid, signal.SIGUSR1)
    line = t.expect("PASS")
    assert line == "PASS", line


def _sud_readable(pid: int) -> bool:
    """The kernel answers PTRACE_GET_SYSCALL_USER_DISPATCH_CONFIG (6.3; EIO before, and nothing else shows it)."""
    from ckpt.kernel import ptrace
    ptrace.seize(pid)
    try:
        ptrace.interrupt(pid)
        ptrace.waitpid(pid)
        try:
            ptrace.get_syscall_user_dispatch_mode(pid)
        except OSError:
            return False
        return True
    finally:
        ptrace.detach(pid)


def test_syscall_user_dispatch_is_refused(py_target, tmp_path: Path) -> None:  # noqa: ANN001
    """A state ckpt cannot restore is refused at dump, by name, and the process runs on."""
    t = py_target("py_sud.py", stderr=subprocess.DEVNULL)
    t.ready()
    if not _sud_readable(t.pid):
        pytest.skip(f"syscall user dispatch is not detected before Linux 6.3 (no getter): {os.uname().release}")
    with pytest.raises(Unsupported, match="PR_SET_SYSCALL_USER_DISPATCH"):
        api.dump(t.pid, tmp_path / "img")
    assert t.alive()
