"""Threads blocked in a syscall resume blocked after a restore, without a spurious EINTR.

``tail -f`` (coreutils, in ``poll(-1)`` on its inotify descriptor) died right
after every restore with "Interrupted system call": poll answers a freeze with
-ERESTART_RESTARTBLOCK, whose restart block stays in the old task.  The
scenario (scenarios/blocked_calls.c) has one thread blocked in each call a
freeze interrupts: sleepers loop over a short sleep and report each round
(how long it took, how many EINTRs it saw), waiters wait an hour or for ever
until the test wakes them after the restore.  Which calls resume with the
remaining time and which with their original timeout: ckpt/resources/blocked.py
and the README; only lower bounds are checked here.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from ckpt.dump import dump, restore
from ckpt.image.pb import core_pb2
from ckpt.image.reader import Image
from ckpt.kernel.arch_x86_64 import NR
from ckpt.resources.blocked import CODE_BEFORE, call_in_code
from targets import Target, spawn, thread_state, tracer_of, wait_in_syscall, wait_until
from test_dump_restore import _drain, _forget, _parse

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="dump/restore needs root (ptrace, clone3 set_tid)")
State = core_pb2.SyscallState

#: One sleep of a sleeper thread (ms): long enough that a dump lands inside one, short enough to see rounds end.
SLEEP_MS = 700
#: The call each thread of blocked_calls blocks in.
CALLS = {
    "nanosleep": NR.nanosleep, "nanosleep_libc": NR.clock_nanosleep, "clock_rel": NR.clock_nanosleep,
    "clock_abs": NR.clock_nanosleep, "poll_sleep": NR.poll,
    "poll": NR.poll, "poll_inf": NR.poll, "ppoll": NR.ppoll, "select": NR.select, "pselect6": NR.pselect6,
    "epoll_wait": NR.epoll_wait, "epoll_inf": NR.epoll_wait, "epoll_pwait": NR.epoll_pwait,
    "epoll_pwait2": NR.epoll_pwait2, "futex": NR.futex, "futex_abs": NR.futex, "futex_libc": NR.futex,
    "sigtimedwait": NR.rt_sigtimedwait, "recv": NR.recvfrom, "accept4": NR.accept4,
}
SLEEPERS = ("nanosleep", "nanosleep_libc", "clock_rel", "clock_abs", "poll_sleep")
WAITERS = tuple(k for k in CALLS if k not in SLEEPERS)


def _start(c_target) -> tuple[Target, dict[str, int]]:  # noqa: ANN001
    t = c_target("blocked_calls", str(SLEEP_MS), stdin_pipe=True, stderr=subprocess.DEVNULL)
    tids = {k: int(v) for k, v in t.ready().items()}
    assert set(tids) == set(CALLS)
    for kind in WAITERS:
        wait_in_syscall(t.pid, tids[kind], CALLS[kind])
    return t, tids


def _blocked(pid: int, tid: int, nr: int) -> None:
    """Wait until the thread is blocked in ``nr``; fail at once if the process ended (a restored process is our
    child: a zombie until the ``restored`` fixture reaps it)."""
    def state() -> bool:
        assert thread_state(pid, pid) != "Z", f"process {pid} exited instead of blocking in syscall {nr}"
        return True

    wait_until(lambda: state() and _in_syscall(pid, tid, nr), f"thread {tid} of {pid} is blocked in syscall {nr}")


def _in_syscall(pid: int, tid: int, nr: int) -> bool:
    try:
        with open(f"/proc/{pid}/task/{tid}/syscall") as f:
            return f.read().split()[0] == str(nr) and thread_state(pid, tid) == "S"
    except (OSError, IndexError):
        return False


def _lines(t: Target, until: str) -> list[str]:
    """Lines read up to and including the first that starts with ``until`` (a FAIL line is kept, not raised)."""
    out = []
    while not (out and out[-1].startswith(until)):
        out.append(t.readline())
    return out


def _rounds(lines: list[str]) -> dict[str, list[dict[str, str]]]:
    out: dict[str, list[dict[str, str]]] = {k: [] for k in SLEEPERS}
    for line in lines:
        if line.startswith("ROUND"):
            out[line.split()[1]].append(_parse(line))
    return out


def _done(lines: list[str]) -> dict[str, dict[str, str]]:
    return {line.split()[1]: _parse(line) for line in lines if line.startswith("DONE")}


def _check_sleepers(t: Target, before: int) -> None:
    """Every sleeper finishes a round after the restore; no round of any saw EINTR or ended early."""
    rounds = _rounds(t.lines[before:])
    while not all(rounds[k] for k in SLEEPERS):
        line = t.readline()
        if line.startswith("ROUND"):
            rounds[line.split()[1]].append(_parse(line))
    for kind in SLEEPERS:
        for r in rounds[kind]:
            assert r["eintr"] == "0", f"{kind} saw EINTR after the restore: {r}"
            assert int(r["ms"]) >= SLEEP_MS, f"{kind} slept less than asked: {r}"


@pytest.mark.parametrize("leave_running", [False, True], ids=["kill", "R"])
def test_blocked_calls_resume_after_restore(c_target, tmp_path: Path, restored: list[int],  # noqa: ANN001
                                            leave_running: bool) -> None:
    t, tids = _start(c_target)
    pid = t.pid
    stats = dump(pid, tmp_path / "img", leave_running=leave_running)
    assert not [n for n in stats.notes if "EINTR" in n], stats.notes
    states = {c.tid: c.syscall for c in Image.open(tmp_path / "img").threads(pid)}
    for kind in WAITERS:  # blocked when frozen (sleepers may be between two rounds)
        st = states[tids[kind]]
        assert st.nr == CALLS[kind] and st.resume in (State.RESTART, State.REISSUE), (kind, st)
    if leave_running:
        os.kill(pid, signal.SIGKILL)  # keep our pipe ends: the restore hands them back
        t.proc.wait(timeout=10)
    else:
        _forget(t)
    _drain(t)  # the rounds the original process reported: only the restored one's count from here
    seen = len(t.lines)
    r = restore(tmp_path / "img", inherit_fds=t.stdio_fds)
    restored.append(r.pid)
    assert r.pid == pid and tracer_of(pid) == 0
    for kind in WAITERS:  # blocked again in their own calls, not failed
        _blocked(pid, tids[kind], CALLS[kind])
    t.write(b"wake\n")
    lines = _lines(t, ("PASS", "FAIL"))
    assert lines[-1] == "PASS", lines
    done = _done(lines)
    assert {k: d["eintr"] for k, d in done.items()} == {k: "0" for k in WAITERS}
    _check_sleepers(t, seen)


def test_restart_syscall_resumes_where_the_code_tells_the_call(c_target, tmp_path: Path,  # noqa: ANN001
                                                              restored: list[int]) -> None:
    """After a first dump -R, the kernel resumes poll and timed futex waits through restart_syscall: a
    second dump sees only that.  glibc's wrappers (``mov $NR, %eax; syscall``) still tell the call and
    resume; calls made through syscall(3) cannot be told: the dump names them, and they get EINTR."""
    t, tids = _start(c_target)
    pid = t.pid
    dump(pid, tmp_path / "first", leave_running=True)
    for kind in ("poll", "poll_inf", "futex", "futex_abs", "futex_libc"):
        wait_in_syscall(pid, tids[kind], NR.restart_syscall)
    if not all(_told(pid, tids[kind]) == CALLS[kind] for kind in ("poll", "poll_inf", "futex_libc")):
        pytest.skip("this libc's poll and sem_timedwait do not load the syscall number just before `syscall`")
    stats = dump(pid, tmp_path / "img")
    _forget(t)
    states = {c.tid: c.syscall for c in Image.open(tmp_path / "img").threads(pid)}
    for kind in ("poll", "poll_inf", "futex_libc"):
        st = states[tids[kind]]
        assert (st.nr, st.resume, st.reissue) == (NR.restart_syscall, State.REISSUE, CALLS[kind]), (kind, st)
    for kind in ("futex", "futex_abs"):
        assert states[tids[kind]].resume == State.EINTR
        assert any(f"thread {tids[kind]} " in n and "restart_syscall" in n for n in stats.notes), stats.notes
    r = restore(tmp_path / "img", inherit_fds=t.stdio_fds)
    restored.append(r.pid)
    for kind in ("poll", "poll_inf", "futex_libc"):
        _blocked(pid, tids[kind], CALLS[kind])
    t.write(b"wake\n")
    done = _done(_lines(t, ("PASS", "FAIL")))
    assert {k: done[k]["eintr"] for k in ("poll", "poll_inf", "futex_libc")} == {"poll": "0", "poll_inf": "0",
                                                                                  "futex_libc": "0"}
    assert {k: done[k]["eintr"] for k in ("futex", "futex_abs")} == {"futex": "1", "futex_abs": "1"}


def _told(pid: int, tid: int) -> int | None:
    """The call the code before a blocked thread's ``rip`` tells (/proc/PID/task/TID/syscall ends with the pc)."""
    with open(f"/proc/{pid}/task/{tid}/syscall") as f:
        pc = int(f.read().split()[-1], 16)
    with open(f"/proc/{pid}/mem", "rb") as mem:
        mem.seek(pc - CODE_BEFORE)
        return call_in_code(mem.read(CODE_BEFORE))


# --- tail -f -----------------------------------------------------------------------------------------------


def _tail(tmp_path: Path) -> tuple[Target, Path]:
    log = tmp_path / "log"
    log.write_text("before\n")
    t = spawn(["tail", "-f", str(log)], stderr=subprocess.DEVNULL)
    assert t.readline() == "before"
    wait_in_syscall(t.pid, t.pid, NR.poll)
    assert "anon_inode:inotify" in {os.readlink(f"/proc/{t.pid}/fd/{fd}") for fd in os.listdir(f"/proc/{t.pid}/fd")}
    return t, log


def _append(log: Path, text: str) -> None:
    with log.open("a") as f:
        f.write(text)


@pytest.mark.parametrize("how", ["kill", "R", "R-twice"])
def test_tail_f_survives_dump_and_restore(tmp_path: Path, restored: list[int], how: str) -> None:
    """``R-twice``: the image comes from a second dump, when tail's poll was being restarted (restart_syscall)."""
    t, log = _tail(tmp_path)
    try:
        if how == "R-twice":
            dump(t.pid, tmp_path / "first", leave_running=True)
            wait_in_syscall(t.pid, t.pid, NR.restart_syscall)
            if _told(t.pid, t.pid) != NR.poll:
                pytest.skip("this libc's poll does not load the syscall number just before `syscall`")
        stats = dump(t.pid, tmp_path / "img", leave_running=how != "kill")
        assert not [n for n in stats.notes if "EINTR" in n], stats.notes
        if how != "kill":
            wait_in_syscall(t.pid, t.pid, NR.restart_syscall)  # the original follows on
            os.kill(t.pid, signal.SIGKILL)
            t.proc.wait(timeout=10)
        else:
            _forget(t)
        r = restore(tmp_path / "img", inherit_fds=t.stdio_fds)
        restored.append(r.pid)
        _blocked(r.pid, r.pid, NR.poll)  # blocked again, not exited with "Interrupted system call"
        _append(log, "after-restore\n")
        assert t.readline() == "after-restore"
        assert os.path.exists(f"/proc/{r.pid}") and open(f"/proc/{r.pid}/comm").read().strip() == "tail"
    finally:
        t.close()
