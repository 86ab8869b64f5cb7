"""Clocks across boots: a restored tree's CLOCK_MONOTONIC and CLOCK_BOOTTIME carry on (ckpt.resources.timens).

The target (scenarios/timens.c) is a tree of two processes, main and sub, that sample both clocks
every ~2 ms and report the largest forward step and any backward one; main has three timerfds armed
4 s ahead (relative and absolute CLOCK_MONOTONIC, absolute CLOCK_BOOTTIME) and fails if one expires
before 4 s of its own clock passed.  Started with offsets, the tree lives in a time namespace whose
clocks are 10 h (monotonic) and 20 h (boottime) ahead of the host's: restored without a namespace, its
clocks would step back by hours.  "Another boot" cannot be made on one host: CKPT_TEST_OTHER_BOOT=1
makes a restore take it for one.  The bound on a forward step is loose (60 s) against offsets of hours.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from ckpt import api
from ckpt.errors import Unsupported
from ckpt.image.reader import Image
from ckpt.procfs.timens import INIT_TIME_NS_INO, read_time_ns
from ckpt.resources import timens
from ckpt.restore import StagedRestore
from targets import HANG_GUARD, Target, build_c, tracer_of, wait_until
from test_dump_restore import _forget

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="restore needs root (ptrace, clone3 set_tid, setns)"),
    pytest.mark.skipif(not os.path.exists("/proc/self/ns/time"), reason="no time namespaces (CONFIG_TIME_NS)"),
]

NS = 1_000_000_000
HOUR = 3600
MONO_OFF, BOOT_OFF = 10 * HOUR, 20 * HOUR
#: A forward step of the clocks the tests accept: the dump and restore's own time, on a loaded machine.
MAX_STEP_MS = 60_000


def _start(c_target, offsets: bool) -> tuple[Target, int, int]:  # noqa: ANN001
    """The target; (it, main's pid, sub's pid).  With ``offsets``, main's parent is the launcher (``it``)."""
    args = (str(MONO_OFF), str(BOOT_OFF)) if offsets else ()
    t = c_target("timens", *args, stderr=subprocess.DEVNULL)
    ready = t.ready()
    return t, int(ready["pid"]), int(ready["sub"])


def _report(t: Target, pid: int, role: str) -> dict[str, str]:
    os.kill(pid, signal.SIGUSR1)
    line = t.expect(f"PASS role={role}", timeout=HANG_GUARD)
    return dict(part.split("=", 1) for part in line.split()[1:])


def _check_after_restore(t: Target, main: int, sub: int) -> dict[str, str]:
    """Both processes saw no backward step and no big jump; main's three timers expire and sub's sleeper
    wakes, none early."""
    wait_until(lambda: _report(t, main, "main")["fired"] == "RAB", "every timerfd of main expired")
    wait_until(lambda: _report(t, sub, "sub")["fired"] == "S", "sub's absolute clock_nanosleep ended")
    for pid, role in ((main, "main"), (sub, "sub")):
        r = _report(t, pid, role)
        assert r["back"] == "0" and int(r["maxjump_ms"]) < MAX_STEP_MS, (role, r)
    return _report(t, main, "main")


def _dump(t: Target, main: int, img: Path) -> timens.ClockRecord:
    api.dump(main, img)
    if t.pid == main:
        _forget(t)
    rec = timens.recorded(Image.open(img).inventory)
    assert rec is not None
    return rec


def _ns(pid: int) -> int:
    ns = read_time_ns(pid)
    assert ns is not None and ns.children_inode == ns.inode
    return ns.inode


def test_own_namespace_same_boot_keeps_its_offsets(c_target, tmp_path: Path, restored: list[int]) -> None:  # noqa: ANN001
    t, main, sub = _start(c_target, offsets=True)
    before = read_time_ns(main)
    assert before is not None and not before.initial and _ns(sub) == before.inode
    rec = _dump(t, main, tmp_path / "img")
    assert rec.own_time_ns and rec.time_ns_inode == before.inode
    assert (rec.offsets.monotonic_ns, rec.offsets.boottime_ns) == (MONO_OFF * NS, BOOT_OFF * NS)
    host_mono = timens._host_now()[0]  # after the dump
    assert host_mono - HANG_GUARD * NS < rec.monotonic_ns - MONO_OFF * NS <= host_mono  # the tree's clock, 10 h ahead
    text = api.show(tmp_path / "img")
    assert f"offsets monotonic +{MONO_OFF}.000 s, boottime +{BOOT_OFF}.000 s" in text and "clocks monotonic" in text

    r = api.restore(tmp_path / "img", inherit_fds=t.stdio_fds)
    restored.extend((r.pid, sub))
    assert r.pid == main and tracer_of(main) == 0
    after = read_time_ns(main)
    assert after is not None and not after.initial and _ns(sub) == after.inode  # one namespace for the tree
    assert after.offsets == before.offsets  # the same boot: the clocks it had, and its old neighbours have
    _check_after_restore(t, main, sub)


def test_other_boot_clocks_carry_on(c_target, tmp_path: Path, restored: list[int],  # noqa: ANN001
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    t, main, sub = _start(c_target, offsets=True)
    rec = _dump(t, main, tmp_path / "img")
    monkeypatch.setenv(timens.OTHER_BOOT_ENV, "1")
    assert timens.plan(Image.open(tmp_path / "img").inventory).mode == "continue"
    r = api.restore(tmp_path / "img", inherit_fds=t.stdio_fds)
    restored.extend((r.pid, sub))
    after = read_time_ns(main)
    assert after is not None and not after.initial and _ns(sub) == after.inode
    # Offsets that continue the dumped clocks: the old ones less the time the tree spent in the image.
    for got, had in ((after.offsets.monotonic_ns, MONO_OFF * NS), (after.offsets.boottime_ns, BOOT_OFF * NS)):
        assert had - MAX_STEP_MS * 1_000_000 < got <= had
    r1 = _check_after_restore(t, main, sub)
    assert int(r1["mono"]) >= rec.monotonic_ns and int(r1["boot"]) >= rec.boottime_ns


def test_host_clocks_other_boot_gets_a_namespace(c_target, tmp_path: Path, restored: list[int],  # noqa: ANN001
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    t, main, sub = _start(c_target, offsets=False)
    assert _ns(main) == INIT_TIME_NS_INO
    rec = _dump(t, main, tmp_path / "img")
    assert not rec.own_time_ns and rec.offsets == timens.TimensOffsets()
    assert "time namespace: the host's" in api.show(tmp_path / "img")
    monkeypatch.setenv(timens.OTHER_BOOT_ENV, "1")
    r = api.restore(tmp_path / "img", inherit_fds=t.stdio_fds)
    restored.extend((r.pid, sub))
    assert _ns(main) != INIT_TIME_NS_INO and _ns(sub) == _ns(main)
    off = read_time_ns(main).offsets
    assert -MAX_STEP_MS * 1_000_000 < off.monotonic_ns <= 0 and -MAX_STEP_MS * 1_000_000 < off.boottime_ns <= 0
    _check_after_restore(t, main, sub)


def test_host_clocks_same_boot_stay_on_the_host(c_target, tmp_path: Path, restored: list[int]) -> None:  # noqa: ANN001
    t, main, sub = _start(c_target, offsets=False)
    rec = _dump(t, main, tmp_path / "img")
    api.merge(tmp_path / "img", tmp_path / "flat")  # a merged image keeps the clocks and the boot they count from
    assert timens.recorded(Image.open(tmp_path / "flat").inventory) == rec
    r = api.restore(tmp_path / "img", inherit_fds=t.stdio_fds)
    restored.extend((r.pid, sub))
    assert _ns(main) == INIT_TIME_NS_INO and _ns(sub) == INIT_TIME_NS_INO
    _check_after_restore(t, main, sub)


def test_staged_restore_other_boot(c_target, tmp_path: Path, restored: list[int],  # noqa: ANN001
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A migration's restore: helpers made from a pre-copy image, the namespace made at the switch-over."""
    t, main, sub = _start(c_target, offsets=True)
    api.pre_dump(main, tmp_path / "p1")
    api.dump_delta(main, tmp_path / "final", prev_images_dir=tmp_path / "p1")
    monkeypatch.setenv(timens.OTHER_BOOT_ENV, "1")
    staged = StagedRestore(inherit_fds=t.stdio_fds)
    staged.start(tmp_path / "p1")
    assert _ns(main) == INIT_TIME_NS_INO  # the helpers exist, on the host's clocks so far
    r = staged.finish(tmp_path / "final")
    restored.extend((r.pid, sub))
    assert _ns(main) != INIT_TIME_NS_INO and _ns(sub) == _ns(main)
    _check_after_restore(t, main, sub)


def test_unshared_launcher_is_refused(c_target, tmp_path: Path, restored: list[int]) -> None:  # noqa: ANN001
    """The launcher unshared for its children and stays on the host's clocks: its tree is refused, left running."""
    t, main, sub = _start(c_target, offsets=True)
    restored.extend((main, sub))  # (not our children: only killed at the end)
    with pytest.raises(Unsupported, match=r"unshared its time namespace .* has not forked since"):
        api.dump(t.pid, tmp_path / "img")
    assert not (tmp_path / "img").exists()
    assert all(tracer_of(p) == 0 for p in (t.pid, main, sub)) and t.alive()
    assert _report(t, main, "main")["back"] == "0"
    api.dump(main, tmp_path / "img2", leave_running=True)  # its children's tree alone is one namespace
    assert timens.recorded(Image.open(tmp_path / "img2").inventory).own_time_ns


def test_migration_to_another_boot(second_host, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    """ckpt migrate / receive (staged restore in the second host) with a receiver that takes it for another boot."""
    import re
    import time

    from test_migrate import _free_port, _migrate, _Receiver, _token

    host, port, token = second_host, _free_port(), _token(tmp_path)
    log = tmp_path / "timens.log"

    def line(pattern: str, after: int = 0) -> re.Match[str]:
        deadline = time.monotonic() + HANG_GUARD
        while time.monotonic() < deadline:
            for text in log.read_text(errors="replace").splitlines()[after:]:
                if m := re.search(pattern, text):
                    return m
            time.sleep(0.02)
        raise AssertionError(f"no line {pattern!r} in {log.read_text()[-500:]}")

    with open(log, "wb") as out:  # stdout in a file: a pipe to us could not move to the other host
        launcher = subprocess.Popen([build_c("timens"), str(MONO_OFF), str(BOOT_OFF)], stdin=subprocess.DEVNULL,
                                    stdout=out, stderr=subprocess.DEVNULL, close_fds=True, start_new_session=True)
    moved: list[int] = []
    try:
        m = line(r"READY pid=(\d+) sub=(\d+)")
        main, sub = int(m.group(1)), int(m.group(2))
        monkeypatch.setenv(timens.OTHER_BOOT_ENV, "1")  # the receiver's environment
        rx = _Receiver(host, tmp_path, token, port)
        monkeypatch.delenv(timens.OTHER_BOOT_ENV)
        res, _stats = _migrate(host, main, port, token, tmp_path)
        assert res.returncode == 0, res.stderr
        result = rx.result()
        assert result["outcome"] == "running" and result["staged"], result  # helpers made from the first round
        moved = [host.host_pid(main), host.host_pid(sub)]
        ns = read_time_ns(moved[0])
        assert ns is not None and not ns.initial and _ns(moved[1]) == ns.inode
        assert MONO_OFF * NS - MAX_STEP_MS * 1_000_000 < ns.offsets.monotonic_ns <= MONO_OFF * NS
        n = len(log.read_text().splitlines())

        def report(pid: int, role: str) -> dict[str, str]:
            nonlocal n
            host.check_output(["kill", "-USR1", str(pid)])
            got = line(rf"(PASS|FAIL) role={role}.*", after=n)
            n = len(log.read_text().splitlines())
            assert got.group(1) == "PASS", got.group(0)
            return dict(part.split("=", 1) for part in got.group(0).split()[1:])

        wait_until(lambda: report(main, "main")["fired"] == "RAB", "every timerfd of main expired")
        wait_until(lambda: report(sub, "sub")["fired"] == "S", "sub's absolute clock_nanosleep ended")
        for pid, role in ((main, "main"), (sub, "sub")):
            r = report(pid, role)
            assert r["back"] == "0" and int(r["maxjump_ms"]) < MAX_STEP_MS, (role, r)
    finally:
        for pid in moved:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        launcher.kill()
        launcher.wait(timeout=10)
