"""Real processes the issue names: a many-VMA layout, a signal storm, a double-forked daemon.

Each target checks itself (scenarios/*.c) and answers PASS/FAIL on its stdout
pipe, which the test hands back to the restore with ``inherit_fds``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ckpt.dump import dump, restore
from ckpt.errors import CkptError
from ckpt.procfs.task import read_starttime
from ckpt.image.reader import Image
from targets import Target, build_c, tracer_of, wait_until
from test_dump_restore import _drain, _forget, _parse

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="dump/restore needs root (ptrace, clone3 set_tid)")
NR_HUGEPAGES = Path("/proc/sys/vm/nr_hugepages")


def _check(t: Target, timeout: float = 10.0) -> dict[str, str]:
    _drain(t)
    os.kill(t.pid, signal.SIGUSR1)
    line = t.expect("CHECK", timeout)
    assert line.startswith("CHECK PASS"), line
    return _parse(line[len("CHECK"):])


@pytest.fixture
def hugepages() -> Iterator[None]:
    """Two free 2 MiB huge pages for the test, or a clean skip where the kernel refuses them."""
    try:
        old = NR_HUGEPAGES.read_text().strip()
        NR_HUGEPAGES.write_text("2\n")
        if int(NR_HUGEPAGES.read_text()) < 2:
            raise OSError("fewer huge pages than asked for")
    except OSError as exc:
        pytest.skip(f"cannot reserve huge pages here: {exc}")
    yield
    NR_HUGEPAGES.write_text(old + "\n")


@pytest.mark.parametrize("huge", [False, True], ids=["vmas", "vmas+hugetlb"])
def test_many_vmas(c_target, tmp_path: Path, restored: list[int], huge: bool,  # noqa: ANN001, F811
                   request: pytest.FixtureRequest) -> None:
    if huge:
        request.getfixturevalue("hugepages")
    t = c_target("many_vmas", str(tmp_path / "f"), *(["hugetlb"] if huge else []), stdin_pipe=True,
                 stderr=subprocess.DEVNULL)
    ready = t.ready()
    assert int(ready["vmas"]) > 400
    before = _check(t)
    stats = dump(t.pid, tmp_path / "img")
    _forget(t)
    assert stats.vmas > 400
    r = restore(tmp_path / "img", inherit_fds=t.stdio_fds)
    restored.append(r.pid)
    after = _check(t)
    assert int(after["round"]) == int(before["round"]) + 1
    assert tracer_of(t.pid) == 0


def _storm(pid: int, n: int, base: int) -> subprocess.Popen[bytes]:
    """Another process sigqueues n values per real-time signal (plus standard signals) at ``pid``."""
    return subprocess.Popen([build_c("sig_storm"), "send", str(pid), str(n), str(base)], stdout=subprocess.DEVNULL,
                            stdin=subprocess.DEVNULL)


def _settled(t: Target, rt: int | list[int | None], timeout: float = 10.0) -> dict[str, str]:
    """Ask for reports until the real-time signals' last values are ``rt`` (None: any); the queue takes a while."""
    want = rt if isinstance(rt, list) else [rt] * 8
    deadline = time.monotonic() + timeout
    while True:
        got = _check(t)
        assert got["wrong"] == "0"
        seen = [int(v) if w is not None else None for v, w in zip(got["rt"].split(","), want)]
        if seen == want or time.monotonic() > deadline:
            assert seen == want, got
            return got
        time.sleep(0.05)


def _queue_filling(pid: int) -> None:
    """Wait until real-time signals wait in the shared queue: the storm is on (the sender beats the handlers)."""
    rt_bits = ((1 << 8) - 1) << (signal.SIGRTMIN - 1)
    wait_until(lambda: int(_status_field(pid, "ShdPnd"), 16) & rt_bits, "real-time signals are queued")


def _status_field(pid: int, key: str) -> str:
    with open(f"/proc/{pid}/status") as f:
        return next(line.split(":", 1)[1].strip() for line in f if line.startswith(key + ":"))


def _last_queued(image: Path, pid: int) -> list[int]:
    """Per real-time signal, the highest sigqueue value waiting in the image's queues (0 if none)."""
    last = [0] * 8
    img = Image.open(image)
    for p in [*img.process(pid).shared_pending, *(q for core in img.threads(pid) for q in core.pending)]:
        i = p.signo - signal.SIGRTMIN
        if 0 <= i < 8:
            last[i] = max(last[i], int.from_bytes(p.siginfo[24:28], "little", signed=True))  # si_value
    return last


def test_signal_storm_during_dump(c_target, tmp_path: Path, restored: list[int]) -> None:  # noqa: ANN001, F811
    """SA_SIGINFO handlers on a sigaltstack, real-time and standard signals sent during the dump by another process."""
    t = c_target("sig_storm", "target", stdin_pipe=True, stderr=subprocess.DEVNULL)
    t.ready()
    # 1. dump -R in the middle of a storm: nothing is lost, nothing reordered, the target never crashes.
    sender = _storm(t.pid, 1000, 0)
    _queue_filling(t.pid)
    dump(t.pid, tmp_path / "img1", leave_running=True)
    assert sender.wait(timeout=30) == 0 and tracer_of(t.pid) == 0
    std = [int(c) for c in _settled(t, 1000)["std"].split(",")]
    assert all(1 <= c <= 1000 // 16 for c in std), std  # standard signals may merge while pending, never multiply
    # 2. dump (kill) with the queue full of a second storm; the restore redelivers the queued values in order.
    sender = _storm(t.pid, 1000, 1_000_000)
    _queue_filling(t.pid)
    dump(t.pid, tmp_path / "img2")
    queued = _last_queued(tmp_path / "img2", t.pid)
    # The queue was filling as the freeze began: it is in the image, including the signals the
    # injected syscalls dequeued while frozen (held back by the injector, saved as the thread's own).
    assert any(queued), queued
    _forget(t)
    assert sender.wait(timeout=30) in (0, 3)  # 3: the target vanished under it (ESRCH)
    r = restore(tmp_path / "img2", inherit_fds=t.stdio_fds)
    restored.append(r.pid)
    # the queue came back whole and in order: each signal ends on its last queued value
    _settled(t, [q or None for q in queued])
    # 3. the restored handlers, siginfo and alternate stack take a third storm.
    sender = _storm(t.pid, 500, 2_000_000)
    assert sender.wait(timeout=30) == 0
    _settled(t, 2_000_500)


def _daemon_status(prefix: Path, pid: int, timeout: float = 10.0) -> dict[str, str]:
    """Ask the daemon (SIGUSR1) for a fresh status file and parse it."""
    status = Path(f"{prefix}.status")
    status.unlink(missing_ok=True)
    os.kill(pid, signal.SIGUSR1)
    wait_until(status.exists, "the daemon wrote its status", timeout)
    line = status.read_text().strip()
    assert line.startswith("PASS"), line
    return _parse(line)


def test_setsid_daemon(tmp_path: Path) -> None:
    """A double-forked setsid daemon on /dev/null: same pid, still leader of its own session and group."""
    prefix = tmp_path / "d"
    assert subprocess.run([build_c("daemon"), str(prefix)], stdin=subprocess.DEVNULL, timeout=10).returncode == 0
    pidfile = Path(f"{prefix}.pid")
    wait_until(pidfile.exists, "the daemon wrote its pid")
    pid = int(pidfile.read_text())
    start = read_starttime(pid)
    try:
        before = _daemon_status(prefix, pid)
        assert before["sid"] == before["pgid"] == str(pid) and before["ppid"] != str(os.getpid())
        dump(pid, tmp_path / "img")
        r = restore(tmp_path / "img", detached=True)  # waits for init to reap the killed one
        start = read_starttime(pid)
        after = _daemon_status(prefix, r.pid)
        assert (after["pid"], after["sid"], after["pgid"]) == (str(pid),) * 3
        assert int(after["round"]) == int(before["round"]) + 1
        assert after["ppid"] != str(os.getpid()) and tracer_of(pid) == 0
        assert [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in (0, 1, 2)] == ["/dev/null"] * 3
    finally:
        try:
            if read_starttime(pid) == start:
                os.kill(pid, signal.SIGKILL)
        except (OSError, CkptError):
            pass
        wait_until(lambda: not os.path.exists(f"/proc/{pid}"), "init reaped the daemon", timeout=10)
