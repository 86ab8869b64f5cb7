"""Event descriptors: timerfds, a signalfd, inotify instances and an epoll set over them, dumped and restored.

The target (scenarios/evfds.c) reads a 100 ms periodic timerfd and a
signalfd through epoll, and inotify events on a directory; SIGUSR1 makes it
check every descriptor's flags and timer settings and report what it counted.
After a restore its periodic ticks go on, the 30 s timer has no more time
left than before, the wall-clock deadline is the same, the unread expiration
of the 50 ms timer is still there, a SIGUSR2 arrives through the signalfd and
a new file in the directory is reported with the watch descriptor of before.
"""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import termios
import time
from pathlib import Path

import pytest

from ckpt.control.seize import freeze
from ckpt.dump import dump, restore
from ckpt.errors import RestoreError, Unsupported
from ckpt.image.pb import files_pb2
from ckpt.image.reader import Image
from ckpt.kernel.pidfd import dup_from
from ckpt.procfs import snapshot
from ckpt.procfs.fdinfo import FdInfo, read_fdinfo
from ckpt.resources import files
from targets import Target, tracer_of, wait_until
from test_dump_restore import _forget, _parse

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="dump/restore needs root (ptrace, clone3 set_tid)")
K = files_pb2.FileEntry
FDS = range(3, 11)


def _report(t: Target) -> dict[str, str]:
    os.kill(t.pid, signal.SIGUSR1)
    return _parse(t.expect("PASS", timeout=10))


def _inotify_line(t: Target, name: str) -> dict[str, str]:
    """The next INOTIFY line about ``name`` (earlier ones about other names are skipped)."""
    while True:
        line = _parse(t.expect("INOTIFY", timeout=10))
        if line.get("name") == name:
            return line


def _queued(pid: int, fd: int) -> int:
    ours = dup_from(pid, fd)
    try:
        buf = bytearray(4)
        fcntl.ioctl(ours, termios.FIONREAD, buf)
        return int.from_bytes(buf, "little")
    finally:
        os.close(ours)


def _settings(info: FdInfo) -> tuple:
    """What must be the same after a restore: flags and the kind's settings (not the time left or the ticks)."""
    tf = info.timerfd
    return (info.flags, tf and (tf.clockid, tf.settime_flags, tf.it_interval), info.sigmask,
            sorted((w.wd, w.ino, w.sdev, w.mask) for w in info.inotify_watches),
            sorted((e.tfd, e.events, e.data) for e in info.epoll_targets))


def _start(c_target, d: Path, *extra: str) -> Target:  # noqa: ANN001
    t = c_target("evfds", str(d), *extra, stderr=subprocess.DEVNULL)
    assert t.ready() == {"pid": str(t.pid), "dirwd": "1", "filewd": "3"}
    return t


@pytest.mark.parametrize("leave_running", [False, True], ids=["kill", "R"])
def test_event_fds_round_trip(c_target, tmp_path: Path, restored: list[int], leave_running: bool) -> None:  # noqa: ANN001
    d = tmp_path / "dir"
    d.mkdir()
    t = _start(c_target, d)
    pid = t.pid
    wait_until(lambda: read_fdinfo(pid, 5).timerfd.ticks == 1, "the 50 ms timer expired (and is not read)")
    (d / "queued").touch()  # IN_CREATE on fd 8 (read by the target) and fd 9 (never read)
    assert _inotify_line(t, "queued")["wd"] == "1"
    assert _queued(pid, 9) > 0
    time.sleep(0.3)
    before = _report(t)
    t_before = time.monotonic()
    settings = {fd: _settings(read_fdinfo(pid, fd)) for fd in FDS}
    assert settings[6][1][1] == 1  # TFD_TIMER_ABSTIME

    image = tmp_path / "img"
    with pytest.raises(Unsupported, match=r"fd 9 \(inotify\): \d+ bytes of events not yet read") as refused:
        dump(pid, image, leave_running=leave_running)  # unread events cannot be queued again: refused by default
    assert "--tolerate inotify-events" in (refused.value.hint or "")
    assert t.alive() and not image.exists() and _queued(pid, 9) > 0
    stats = dump(pid, image, leave_running=leave_running, tolerate=["inotify-events"])
    assert any("fd 9 (inotify)" in n and "not kept (--tolerate inotify-events)" in n for n in stats.notes), stats.notes
    assert Image.open(image).verify() == []
    kinds = {f.fd: {e.id: e for e in Image.open(image).file_entries()}[f.file_id].kind
             for f in Image.open(image).fds(pid)}
    assert [kinds[fd] for fd in FDS] == [K.TIMERFD] * 4 + [K.SIGNALFD, K.INOTIFY, K.INOTIFY, K.EPOLL]

    if leave_running:
        assert t.alive() and tracer_of(pid) == 0
        assert read_fdinfo(pid, 5).timerfd.ticks == 1 and _queued(pid, 9) > 0  # nothing was consumed
        time.sleep(0.5)
        mid = _report(t)
        elapsed = time.monotonic() - t_before
        # Every period of the freeze was counted: the periodic timer delivered all its ticks.
        assert int(mid["ticks"]) - int(before["ticks"]) >= int(elapsed / 0.1) - 1, (before, mid, elapsed)
        assert abs(int(mid["abs_ms"]) - int(before["abs_ms"])) < 50 and mid["oneshot"] == "1"
        assert {fd: _settings(read_fdinfo(pid, fd)) for fd in FDS} == settings
        os.kill(pid, signal.SIGKILL)
        t.proc.wait(timeout=10)
    else:
        _forget(t)

    time.sleep(0.3)  # checkpointed for a while: relative timers stand still, a wall-clock deadline does not move
    r = restore(image, inherit_fds=t.stdio_fds)
    restored.append(r.pid)
    assert r.pid == pid and r.notes == ()
    assert {fd: _settings(read_fdinfo(pid, fd)) for fd in FDS} == settings
    assert read_fdinfo(pid, 5).timerfd.ticks == 1  # the unread expiration came back (TFD_IOC_SET_TICKS)
    assert _queued(pid, 9) == 0  # the queued event was not kept (the dump said so)
    after = _report(t)
    between_ms = (time.monotonic() - t_before) * 1000
    assert int(after["ticks"]) >= int(before["ticks"])  # the counter in memory carried over
    assert 25_000 < int(after["long_ms"]) <= int(before["long_ms"])
    if not leave_running:  # the 30 s timer lost less than the time between the reports: not the 0.3 s checkpointed
        assert int(before["long_ms"]) - int(after["long_ms"]) < between_ms - 250, (before, after, between_ms)
    assert abs(int(after["abs_ms"]) - int(before["abs_ms"])) < 50  # the same wall-clock deadline
    assert after["oneshot"] == "1"
    wait_until(lambda: int(_report(t)["ticks"]) >= int(after["ticks"]) + 3, "the periodic timer ticks on")

    os.kill(pid, signal.SIGUSR2)  # blocked: only the signalfd (through epoll) takes it
    assert _parse(t.expect("SIGFD", timeout=10)) == {"sig": str(signal.SIGUSR2), "pid": str(os.getpid())}
    (d / "after-restore").touch()
    created = _inotify_line(t, "after-restore")
    assert created["wd"] == "1" and int(created["mask"], 16) & 0x100  # IN_CREATE on the directory's watch
    with open(d / "watched", "a") as f:
        f.write("x")
    assert int(_inotify_line(t, "")["wd"]) == 3  # the file's watch kept wd 3 over the gap at 2
    ours = dup_from(pid, 5)
    try:
        assert int.from_bytes(os.read(ours, 8), "little") == 1
    finally:
        os.close(ours)
    assert tracer_of(pid) == 0 and int(_report(t)["ticks"]) > int(after["ticks"])  # still running, still passing


def test_watch_without_a_path_is_refused_and_the_target_runs_on(c_target, tmp_path: Path) -> None:  # noqa: ANN001
    d = tmp_path / "dir"
    d.mkdir()
    t = _start(c_target, d, "proc")
    wait_until(lambda: read_fdinfo(t.pid, 5).timerfd.ticks == 1, "the 50 ms timer expired")
    before = {fd: _settings(read_fdinfo(t.pid, fd)) for fd in FDS}
    with pytest.raises(Unsupported, match=r"fd 9 is an inotify instance whose watch 2 \(inode 1 of the proc "
                                          r"filesystem .*cannot be reopened by its file handle"):
        dump(t.pid, tmp_path / "img")
    assert not (tmp_path / "img").exists()
    assert t.alive() and tracer_of(t.pid) == 0
    assert {fd: _settings(read_fdinfo(t.pid, fd)) for fd in FDS} == before
    first = int(_report(t)["ticks"])
    wait_until(lambda: int(_report(t)["ticks"]) > first + 2, "the target ticks on")


def test_inotify_gaps_and_masks_restored_into_a_helper(c_target, tmp_path: Path) -> None:  # noqa: ANN001
    """files.restore on its own: wds 1 and 3 (a gap), masks with IN_ONESHOT/IN_EXCL_UNLINK, no event left behind."""
    d = tmp_path / "dir"
    d.mkdir()
    t = _start(c_target, d)
    with freeze(t.pid) as proc, snapshot(t.pid) as snap:
        dumped = files.dump(proc, snap)
    entries = {e.id: e for e in dumped.files}
    (ino,) = [entries[f.file_id] for f in dumped.fds if f.fd == 8]
    assert [(w.wd, w.path, w.mask) for w in ino.inotify.watches] == [
        (1, str(d), 0x100 | 0x200), (3, str(d / "watched"), 0x2 | 0x8 | 0x04000000)]
    h = c_target("resources", "helper")
    h.ready()
    with freeze(h.pid) as hp:
        warnings = files.restore(hp.injector(), [f for f in dumped.fds if f.fd in (8, 9)], dumped.files)
    assert warnings == []
    assert _settings(read_fdinfo(h.pid, 8)) == _settings(read_fdinfo(t.pid, 8))
    assert _queued(h.pid, 8) == 0  # the IN_IGNORED of the temporary watch at wd 2 was read away


def test_unread_expirations_a_kernel_cannot_set_refuse_the_restore(c_target, tmp_path: Path,  # noqa: ANN001
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Without TFD_IOC_SET_TICKS (CONFIG_CHECKPOINT_RESTORE off) the kernel answers ENOTTY: here an ioctl
    number it does not know stands in for it.  The self-check cannot see lost ticks, so the restore refuses."""
    d = tmp_path / "dir"
    d.mkdir()
    t = _start(c_target, d)
    wait_until(lambda: read_fdinfo(t.pid, 5).timerfd.ticks == 1, "the 50 ms timer expired (and is not read)")
    with freeze(t.pid) as proc, snapshot(t.pid) as snap:
        dumped = files.dump(proc, snap)
    h = c_target("resources", "helper")
    h.ready()
    monkeypatch.setattr("ckpt.resources.timerfd.TFD_IOC_SET_TICKS", 0x400854FE)  # _IOW('T', 0xfe, __u64)
    with freeze(h.pid) as hp, pytest.raises(RestoreError, match=r"a timerfd on clock 1 had 1 expiration\(s\) "
                                                                 r"not yet read, and this kernel cannot set them"):
        files.restore(hp.injector(), [f for f in dumped.fds if f.fd == 5], dumped.files)


def test_inotify_watch_on_a_replaced_or_missing_path(c_target, tmp_path: Path) -> None:  # noqa: ANN001
    d = tmp_path / "dir"
    d.mkdir()
    t = _start(c_target, d)
    with freeze(t.pid) as proc, snapshot(t.pid) as snap:
        dumped = files.dump(proc, snap)
    t.close()
    only = [f for f in dumped.fds if f.fd == 8]
    d.rename(tmp_path / "old")
    d.mkdir()
    (d / "watched").touch()
    h = c_target("resources", "helper")
    h.ready()
    here = files.StdioPolicy(same_boot=True)  # an image of this machine: the watch must be on the very inode
    with freeze(h.pid) as hp:
        with pytest.raises(RestoreError, match=rf"inotify watch 1 on '{d}' is on inode \d+ .*, not inode \d+ .* as dumped"):
            files.restore(hp.injector(), only, dumped.files, policy=here)
    with freeze(h.pid) as hp:  # --allow-changed-files: watched as they are now, with a note each
        warnings = files.restore(hp.injector(), only, dumped.files,
                                 policy=files.StdioPolicy(allow_changed=True, same_boot=True))
    assert len(warnings) == 2 and all("watching the path as it is now" in w for w in warnings)
    assert [w.wd for w in read_fdinfo(h.pid, 8).inotify_watches] == [3, 1]
    with freeze(h.pid) as hp:  # an image of another machine: a file of the same type at the path is all one can ask
        assert files.restore(hp.injector(), only, dumped.files) == []
    (d / "watched").unlink()
    with freeze(h.pid) as hp:
        with pytest.raises(RestoreError, match=rf"cannot watch '{d}/watched' again \(inotify wd 3\): No such file"):
            files.restore(hp.injector(), only, dumped.files, policy=files.StdioPolicy(allow_changed=True))
    assert h.alive() and tracer_of(h.pid) == 0
