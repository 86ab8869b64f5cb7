"""seccomp through dump, pre-dump and restore (ckpt/resources/seccomp.py).

The targets check themselves after the restore (scenarios/seccomp.c: threads with a shared filter and one
of their own, a forked child, a filter that kills the process on calls ckpt injects; scenarios/py_seccomp.py:
a Python program that installed its filter through ctypes); the restore's self-check compared each thread's
mode, filter count and a digest of each program with the dump's.  A strict-mode process
(scenarios/seccomp_strict.c) survives pre-dumps and dumps and is still strict after the restore: the kernel
kills it for a call strict mode forbids.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from ckpt import api
from ckpt.errors import Unsupported
from ckpt.image.reader import Image
from ckpt.kernel.seccomp import SECCOMP_FILTER_FLAG_LOG
from ckpt.restore import StagedRestore
from targets import Target, wait_until
from test_dump_restore import _forget

REPO = Path(__file__).resolve().parents[2]
CKPT = [sys.executable, "-m", "ckpt.cli"]

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="dump/restore needs root (ptrace, clone3 set_tid)")


def _status(pid: int, key: str, tid: int | None = None) -> str:
    path = f"/proc/{pid}/status" if tid is None else f"/proc/{pid}/task/{tid}/status"
    with open(path) as f:
        return next(line.split(":", 1)[1].strip() for line in f if line.startswith(key + ":"))


def _seccomp_of(pid: int) -> dict[int, tuple[str, str]]:
    return {int(t): (_status(pid, "Seccomp", int(t)), _status(pid, "Seccomp_filters", int(t)))
            for t in os.listdir(f"/proc/{pid}/task")}


def test_filters_of_threads_and_a_child_come_back(c_target, tmp_path: Path, restored: list[int]) -> None:  # noqa: ANN001
    """A filter that kills the process on memfd_create, prctl and umask and refuses rt_sigaction (ckpt injects them)
    does not hinder the dump; after the restore each thread and the child refuse what they refused."""
    t = c_target("seccomp")
    child = int(t.ready()["child"])
    os.kill(t.pid, signal.SIGUSR1)
    assert t.expect("PASS") == "PASS threads=3 child=1"
    before = {t.pid: _seccomp_of(t.pid), child: _seccomp_of(child)}
    assert sorted(v[1] for v in before[t.pid].values()) == ["1", "1", "2"]

    api.dump(t.pid, tmp_path / "img", leave_running=True)  # the target lives on, its filters untouched
    assert _seccomp_of(t.pid) == before[t.pid]
    os.kill(t.pid, signal.SIGUSR1)
    assert t.expect("PASS") == "PASS threads=3 child=1"

    img = Image.open(tmp_path / "img")
    sc = img.process(t.pid).seccomp
    assert len(sc.filters) == 2  # A once for the three threads, B on top of it
    assert sorted(len(_chain(sc, th)) for th in sc.threads) == [1, 1, 2]
    assert [f.flags for f in sc.filters] == [0, SECCOMP_FILTER_FLAG_LOG]  # B's, as PTRACE_SECCOMP_GET_METADATA says

    api.dump(t.pid, tmp_path / "img2")
    _forget(t)
    r = api.restore(tmp_path / "img2", inherit_fds=t.stdio_fds)
    restored.append(r.pid)
    assert {t.pid: _seccomp_of(t.pid), child: _seccomp_of(child)} == before
    os.kill(t.pid, signal.SIGUSR1)
    assert t.expect("PASS") == "PASS threads=3 child=1"


def _chain(sc, th) -> list[int]:  # noqa: ANN001
    out, at = [], th.filter
    while at:
        out.append(at)
        at = sc.filters[at - 1].parent
    return out


def _echo(t: Target, line: str) -> str:
    t.write(line.encode() + b"\n")
    return t.readline()


def test_a_strict_mode_process_survives_pre_dump_and_dump_and_stays_strict(c_target, tmp_path: Path,  # noqa: ANN001
                                                                            restored: list[int]) -> None:
    t = c_target("seccomp_strict", stdin_pipe=True)
    t.ready()
    assert _echo(t, "one") == "ECHO 1 one"
    assert _status(t.pid, "Seccomp") == "1"
    api.dump(t.pid, tmp_path / "running", leave_running=True)
    assert _echo(t, "one again") == "ECHO 2 one again"
    api.pre_dump(t.pid, tmp_path / "pre")
    assert _echo(t, "two") == "ECHO 3 two"  # alive after the pre-dump's injected calls
    api.dump_delta(t.pid, tmp_path / "img", prev_images_dir=tmp_path / "pre")
    _forget(t)
    r = api.restore(tmp_path / "img", inherit_fds=t.stdio_fds)
    restored.append(r.pid)
    assert _status(t.pid, "Seccomp") == "1"
    assert _echo(t, "three") == "ECHO 4 three"
    t.write(b"getpid\n")  # strict mode kills it for that
    _, status = os.waitpid(r.pid, 0)
    restored.remove(r.pid)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, status


def test_a_strict_mode_thread_beside_a_free_one(c_target, tmp_path: Path, restored: list[int]) -> None:  # noqa: ANN001
    """Strict mode is per thread: only the thread that entered it has it back, and only it dies for getpid."""
    t = c_target("seccomp_strict", "thread", stdin_pipe=True)
    tid = int(t.ready()["tid"])
    assert _echo(t, "one") == "ECHO 1 one"
    before = _seccomp_of(t.pid)
    assert before == {t.pid: ("0", "0"), tid: ("1", "0")}
    api.dump(t.pid, tmp_path / "img")
    _forget(t)
    r = api.restore(tmp_path / "img", inherit_fds=t.stdio_fds)
    restored.append(r.pid)
    assert _seccomp_of(t.pid) == before
    assert _echo(t, "two") == "ECHO 2 two"
    t.write(b"getpid\n")
    wait_until(lambda: not os.path.exists(f"/proc/{t.pid}/task/{tid}"), f"thread {tid} killed by strict mode")
    assert _status(t.pid, "State")[0] not in "ZX"  # its main thread lives on


def test_without_the_suspension_a_process_under_seccomp_is_refused_before_any_call(  # noqa: ANN201
        c_target, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # noqa: ANN001
    """Where the kernel refuses ckpt PTRACE_O_SUSPEND_SECCOMP (ckpt without CAP_SYS_ADMIN, or under seccomp
    itself: made up here), a strict-mode process is refused at the seize, before the first injected call
    would have killed it."""
    t = c_target("seccomp_strict", stdin_pipe=True)
    t.ready()
    assert _echo(t, "one") == "ECHO 1 one"
    monkeypatch.setattr("ckpt.control.seize._suspend_granted", False)
    with pytest.raises(Unsupported, match=f"thread {t.pid} of process {t.pid} runs under seccomp \\(mode 1\\) and "
                                          "the kernel refused ckpt PTRACE_O_SUSPEND_SECCOMP"):
        api.dump(t.pid, tmp_path / "img")
    assert _echo(t, "two") == "ECHO 2 two"
    assert _status(t.pid, "TracerPid") == "0"


def test_a_python_program_keeps_its_filter(py_target, tmp_path: Path, restored: list[int]) -> None:  # noqa: ANN001
    """The issue's real program: a filter installed through ctypes still refuses getppid after the restore."""
    t = py_target("py_seccomp.py")
    t.ready()
    os.kill(t.pid, signal.SIGUSR1)
    assert t.expect("PASS") == "PASS getppid=EPERM"
    api.dump(t.pid, tmp_path / "img")
    _forget(t)
    r = api.restore(tmp_path / "img", inherit_fds=t.stdio_fds)
    restored.append(r.pid)
    assert _status(t.pid, "Seccomp") == "2" and _status(t.pid, "NoNewPrivs") == "1"
    os.kill(t.pid, signal.SIGUSR1)
    assert t.expect("PASS") == "PASS getppid=EPERM"


def test_a_staged_restore_of_a_filtered_process(py_target, tmp_path: Path, restored: list[int]) -> None:  # noqa: ANN001
    """A migration's destination (StagedRestore: memory built from pre-dumps, then the final delta) puts the
    filter back too."""
    t = py_target("py_seccomp.py")
    t.ready()
    api.pre_dump(t.pid, tmp_path / "1")
    api.dump_delta(t.pid, tmp_path / "final", prev_images_dir=tmp_path / "1")
    _forget(t)
    staged = StagedRestore(inherit_fds=t.stdio_fds)
    staged.start(tmp_path / "1")
    r = staged.finish(tmp_path / "final")
    restored.append(r.pid)
    assert _status(t.pid, "Seccomp") == "2"
    os.kill(t.pid, signal.SIGUSR1)
    assert t.expect("PASS") == "PASS getppid=EPERM"


def test_a_filter_its_process_could_no_longer_install(py_target, tmp_path: Path,  # noqa: ANN001
                                                     restored: list[int]) -> None:
    """Installed as root without no_new_privs, the process then uid 65534 with no capability: the restore
    installs the filter before it sets the credentials (they would not allow it after)."""
    t = py_target("py_seccomp.py", "setuid")
    t.ready()
    api.dump(t.pid, tmp_path / "img")
    _forget(t)
    r = api.restore(tmp_path / "img", inherit_fds=t.stdio_fds)
    restored.append(r.pid)
    assert (_status(t.pid, "Seccomp"), _status(t.pid, "NoNewPrivs"), _status(t.pid, "Uid").split()[0]) == \
        ("2", "0", "65534")
    os.kill(t.pid, signal.SIGUSR1)
    assert t.expect("PASS") == "PASS getppid=EPERM"


def test_a_user_notification_filter_is_refused(py_target, tmp_path: Path) -> None:  # noqa: ANN001
    """Its listener (a supervisor's descriptor) cannot be given back: refused at dump, the target untouched."""
    t = py_target("py_seccomp.py", "notify", stderr=subprocess.DEVNULL)
    t.ready()
    res = subprocess.run([*CKPT, "dump", "-t", str(t.pid), "-D", str(tmp_path / "img")], capture_output=True,
                         text=True, timeout=120, cwd=REPO)
    assert res.returncode == 1, res.stderr
    assert f"thread {t.pid} of process {t.pid}: its seccomp filter 0 (0 the oldest) answers with " \
           "SECCOMP_RET_USER_NOTIF" in res.stderr, res.stderr
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "img").exists() and t.proc.poll() is None
    assert _status(t.pid, "TracerPid") == "0"
