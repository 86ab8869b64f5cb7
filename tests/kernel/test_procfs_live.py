"""ckpt.procfs over live processes: every pid on the machine, and a child with a known layout.

The first tier (STYLE principle 14, psutil's test_process_all) runs every
reader over every process and only tolerates processes or threads that exit
meanwhile; a parse error anywhere fails the test.  The second starts a small
Python child that sets up things we can predict — a name with ") (", a mapped
file with a space in its name that it then deletes, a file with a newline in
its name, eventfd/epoll/timerfd/signalfd/inotify descriptors, extra threads —
and checks the records against what it reports.
"""

from __future__ import annotations

import json
import mmap
import os
import select
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ckpt.errors import AccessDenied, TargetError, TargetGone
from ckpt.procfs import (
    AT,
    ProcessRef,
    Snapshot,
    list_fds,
    list_tids,
    read_auxv,
    read_fdinfo,
    read_maps,
    read_smaps,
    read_stat,
    read_status,
    read_task_stat,
    snapshot,
)

# ----------------------------------------------------------------- every pid


def _all_pids() -> list[int]:
    return sorted(int(n) for n in os.listdir("/proc") if n.isdigit())


def _check_layout(maps: list) -> None:
    prev_end = 0
    for v in maps:
        assert v.start < v.end, v
        assert v.start >= prev_end, f"overlap or unsorted at {v}"
        assert v.start % 4096 == 0 and v.end % 4096 == 0, v
        prev_end = v.end


def _read_everything(pid: int) -> str:
    """Run every reader over ``pid``; returns a kind for the tally.

    stat, status and the task list are world-readable and must always work.
    maps, smaps, auxv and the fd directory need ptrace access: even root is
    refused for a process holding capabilities outside our bounding set (seen
    here: the VM's init has CAP_SYS_MODULE, we do not) — that is AccessDenied,
    counted separately, never a parse error.
    """
    with snapshot(pid) as s:
        st = s.stat
        assert st.pid == pid and st.state and st.starttime >= 0
        status = s.status
        assert status.pid == pid and status.tgid == pid
        assert status.kthread in (None, st.is_kthread)
        assert status.name == st.comm or "\n" in st.comm or "\\" in st.comm
        for tid in s.tids:
            try:
                tst = s.task_stat(tid)
                s.task_status(tid)
            except TargetGone:
                continue  # that thread exited meanwhile
            assert tst.pid == tid
        read_stat(pid), read_status(pid), list_tids(pid)  # the unpinned one-shot readers
        try:
            maps, smaps, auxv, fds = s.maps, s.smaps, s.auxv, s.fds
        except AccessDenied:
            return "denied"
        _check_layout(maps)
        if status.state != "Z" and not status.kthread:
            assert len(smaps) >= 1 and len(maps) >= 1
            assert auxv.get(AT.PAGESZ) == 4096 and auxv.raw[-16:] == b"\0" * 16
        if status.kthread:
            assert maps == [] and smaps == [] and auxv.entries == ()
        for fd, target in fds:
            assert target
            try:
                info = s.fdinfo(fd)
            except TargetError as exc:
                if type(exc) is TargetError:
                    continue  # closed meanwhile
                raise
            assert info.fd == fd and info.pos >= 0 and info.mnt_id >= 0
        read_maps(pid), read_auxv(pid), list_fds(pid)
        return "kthread" if status.kthread else ("zombie" if status.state == "Z" else "user")


def test_every_reader_over_every_live_pid() -> None:
    kinds: dict[str, int] = {}
    gone = 0
    for pid in _all_pids():
        try:
            kind = _read_everything(pid)
        except TargetGone:
            gone += 1
            continue
        kinds[kind] = kinds.get(kind, 0) + 1
    assert kinds.get("user", 0) >= 2, kinds  # at least our parent shell and ourselves


def test_self_smaps_agrees_with_maps() -> None:
    # Our own layout is stable between the two reads if we allocate nothing in between.
    maps = read_maps(os.getpid())
    smaps = read_smaps(os.getpid())
    assert [(v.start, v.end, v.path) for v in maps] == [(e.vma.start, e.vma.end, e.vma.path) for e in smaps]


# ----------------------------------------------------------------- a child with a known layout

CHILD = textwrap.dedent(r"""
    import ctypes, json, mmap, os, select, signal, sys, threading
    libc = ctypes.CDLL(None, use_errno=True)
    d = sys.argv[1]
    libc.prctl(15, b"a) (b c", 0, 0, 0)            # PR_SET_NAME
    libc.prctl(38, 1, 0, 0, 0)                     # PR_SET_NO_NEW_PRIVS
    os.umask(0o027)
    os.nice(5)
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, lambda *a: None)

    def addr(m):
        return ctypes.addressof(ctypes.c_char.from_buffer(m))

    spaced = os.path.join(d, "my data file.bin")
    with open(spaced, "wb") as f:
        f.write(b"s" * 3 * 4096)
    fd = os.open(spaced, os.O_RDWR)
    shared = mmap.mmap(fd, 3 * 4096, mmap.MAP_SHARED)
    os.close(fd)
    os.unlink(spaced)

    nl = os.path.join(d, "new\nline.bin")
    with open(nl, "wb") as f:
        f.write(b"n" * 2 * 4096)
    fd = os.open(nl, os.O_RDONLY)
    private = mmap.mmap(fd, 4096, access=mmap.ACCESS_COPY, offset=4096)
    os.close(fd)

    dontdump = mmap.mmap(-1, 16 * 4096, mmap.MAP_PRIVATE)
    dontdump.madvise(mmap.MADV_DONTDUMP)
    wipe = mmap.mmap(-1, 4 * 4096, mmap.MAP_PRIVATE)  # CPython defaults to MAP_SHARED
    wipe.madvise(getattr(mmap, "MADV_WIPEONFORK", 18))

    efd = os.eventfd(7)
    ep = select.epoll()
    ep.register(efd, select.EPOLLIN)
    tfd = libc.timerfd_create(1, 0o2000000)        # CLOCK_MONOTONIC, TFD_CLOEXEC
    class ts(ctypes.Structure): _fields_ = [("s", ctypes.c_long), ("ns", ctypes.c_long)]
    class its(ctypes.Structure): _fields_ = [("interval", ts), ("value", ts)]
    assert libc.timerfd_settime(tfd, 0, ctypes.byref(its(ts(2, 0), ts(100, 0))), None) == 0
    sigset = (ctypes.c_uint64 * 16)()
    sigset[0] = 1 << (signal.SIGUSR1 - 1)
    sfd = libc.signalfd(-1, sigset, 0)
    ifd = libc.inotify_init1(0)
    wd = libc.inotify_add_watch(ifd, d.encode(), 0x100)  # IN_CREATE
    r, w = os.pipe()

    stop = threading.Event()
    threads = [threading.Thread(target=stop.wait) for _ in range(2)]
    for t in threads:
        t.start()
    signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGUSR1])

    print(json.dumps(dict(shared=addr(shared), private=addr(private), dontdump=addr(dontdump),
                          wipe=addr(wipe), spaced=spaced, nl=nl, efd=efd, epfd=ep.fileno(), tfd=tfd,
                          sfd=sfd, ifd=ifd, wd=wd, pipe_r=r, pipe_w=w)), flush=True)
    sys.stdin.read()                                # until the test closes our stdin
    stop.set()
""")


@pytest.fixture(scope="module")
def child(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[subprocess.Popen, dict]]:
    d = tmp_path_factory.mktemp("procfs child")
    # close_fds (the default) keeps stray descriptors of our own parent out of the child (DESIGN §3).
    p = subprocess.Popen([sys.executable, "-c", CHILD, str(d)], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, close_fds=True)
    try:
        assert p.stdout is not None
        line = p.stdout.readline()
        assert line, f"child died: {p.wait()}"
        yield p, json.loads(line)
    finally:
        p.kill()
        p.wait(timeout=10)
        for f in (p.stdin, p.stdout):
            if f:
                f.close()


def _containing(vmas: list, addr: int):
    (v,) = [v for v in vmas if v.start <= addr < v.end]
    return v


def _wait_asleep(pid: int, timeout: float = 5.0) -> None:
    """The child prints its addresses just *before* it blocks in read(): wait for the block."""
    deadline = time.monotonic() + timeout
    while read_stat(pid).state != "S" and time.monotonic() < deadline:
        time.sleep(0.005)


def test_child_stat_and_status(child: tuple[subprocess.Popen, dict]) -> None:
    p, _ = child
    _wait_asleep(p.pid)
    with snapshot(p.pid) as s:
        assert s.stat.comm == "a) (b c" and s.stat.nice == 5 and s.stat.ppid == os.getpid()
        assert s.stat.num_threads == 3 and s.stat.state == "S"
        st = s.status
        assert st.name == "a) (b c" and st.umask == 0o027 and st.threads == 3
        assert st.nonewprivs is True and st.ppid == os.getpid()
        assert st.sigign & (1 << (signal.SIGUSR2 - 1))
        assert st.sigcgt & (1 << (signal.SIGHUP - 1))
        assert st.sigblk & (1 << (signal.SIGUSR1 - 1))  # main thread only
        assert st.uid == (os.getuid(),) * 4 and st.nspid is not None and st.nspid[0] == p.pid
        assert s.stat.start_brk > 0 and s.stat.arg_start < s.stat.arg_end  # we may ptrace it
        tids = s.tids
        assert len(tids) == 3 and p.pid in tids
        for tid in tids:
            t = s.task_stat(tid)
            assert t.pid == tid and t.comm == "a) (b c"  # threads inherit the creator's comm
        assert read_task_stat(p.pid, tids[-1]).pid == tids[-1]


def test_child_maps_deleted_spaced_and_newline_files(child: tuple[subprocess.Popen, dict]) -> None:
    p, info = child
    vmas = read_maps(p.pid)
    sh = _containing(vmas, info["shared"])
    assert sh.path == info["spaced"] and sh.deleted and sh.shared and sh.size == 3 * 4096
    assert sh.read and sh.write and sh.is_file and sh.offset == 0
    pr = _containing(vmas, info["private"])
    assert pr.path == info["nl"] and "\n" in pr.path and not pr.deleted and not pr.shared
    assert pr.offset == 4096 and pr.pgoff == 1
    names = {v.path for v in vmas}
    assert {"[heap]", "[stack]", "[vdso]"} <= names


def test_child_smaps_vmflags(child: tuple[subprocess.Popen, dict]) -> None:
    p, info = child
    entries = read_smaps(p.pid)
    vmas = [e.vma for e in entries]
    assert [v.start for v in vmas] == [v.start for v in read_maps(p.pid)]
    assert "dd" in _containing(vmas, info["dontdump"]).vmflags
    assert "wf" in _containing(vmas, info["wipe"]).vmflags
    (stack,) = [v for v in vmas if v.is_stack]
    assert {"rd", "wr", "gd"} <= stack.vmflags
    sh = _containing(vmas, info["shared"])
    assert {"sh", "ms"} <= sh.vmflags
    shared_entry = next(e for e in entries if e.vma.start == sh.start)
    assert shared_entry.size == 3 * 4096


def test_child_auxv(child: tuple[subprocess.Popen, dict]) -> None:
    p, _ = child
    with snapshot(p.pid) as s:
        auxv, maps = s.auxv, s.maps
    (vdso,) = [v for v in maps if v.path == "[vdso]"]
    assert auxv[AT.SYSINFO_EHDR] == vdso.start
    assert auxv[AT.PAGESZ] == mmap.PAGESIZE
    exe = os.readlink(f"/proc/{p.pid}/exe")
    entry = _containing(maps, auxv[AT.ENTRY])
    assert entry.path == exe and entry.exec
    assert AT.RANDOM in auxv and AT.EXECFN in auxv and AT.PHDR in auxv
    assert len(auxv.raw) % 16 == 0 and auxv.raw[-16:] == b"\0" * 16


def test_child_fds_and_fdinfo(child: tuple[subprocess.Popen, dict]) -> None:
    p, info = child
    with snapshot(p.pid) as s:
        fds = dict(s.fds)
        assert {0, 1, 2} <= fds.keys()
        assert fds[info["efd"]] == "anon_inode:[eventfd]"
        assert fds[info["epfd"]] == "anon_inode:[eventpoll]"
        assert fds[info["tfd"]] == "anon_inode:[timerfd]"
        assert fds[info["sfd"]] == "anon_inode:[signalfd]"
        assert fds[info["ifd"]] == "anon_inode:inotify"
        assert fds[info["pipe_r"]].startswith("pipe:[")
        # CPython's mmap keeps a dup of the file's fd: the unlinked one shows " (deleted)".
        assert info["spaced"] + " (deleted)" in fds.values()

        assert s.fdinfo(info["efd"]).eventfd_count == 7
        (target,) = s.fdinfo(info["epfd"]).epoll_targets
        assert target.tfd == info["efd"] and target.events & select.EPOLLIN
        assert target.data & 0xFFFFFFFF == info["efd"]
        t = s.fdinfo(info["tfd"]).timerfd
        assert t is not None and t.clockid == 1 and t.it_interval == (2, 0) and 90 <= t.it_value[0] <= 100
        assert s.fdinfo(info["tfd"]).flags & os.O_CLOEXEC
        assert s.fdinfo(info["sfd"]).sigmask == 1 << (signal.SIGUSR1 - 1)
        (watch,) = s.fdinfo(info["ifd"]).inotify_watches
        assert watch.wd == info["wd"] and watch.mask & 0x100
        pipe = s.fdinfo(info["pipe_r"])
        assert pipe.ino == int(fds[info["pipe_r"]][6:-1]) and pipe.flags & os.O_ACCMODE == os.O_RDONLY
        assert s.fdinfo(info["pipe_w"]).flags & os.O_ACCMODE == os.O_WRONLY
        assert s.fdinfo(0) is s.fdinfo(0)  # read once per snapshot
        assert s.maps is s.maps
    with pytest.raises(TargetError, match="vanished"):
        read_fdinfo(p.pid, 999_999)  # not open: the process is alive, so not TargetGone
    with pytest.raises(TargetError) as ei:
        read_fdinfo(p.pid, 999_999)
    assert not isinstance(ei.value, TargetGone)


def test_exited_process_is_target_gone_and_snapshot_stays_pinned(tmp_path: Path) -> None:
    p = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        ref = ProcessRef.of(p.pid)
        snap = Snapshot(ref)
        assert snap.stat.starttime == ref.starttime and ref.is_current()
    finally:
        p.kill()
        p.wait(timeout=10)
        assert p.stdin is not None
        p.stdin.close()
    try:
        assert not ref.is_current()
        with pytest.raises(TargetGone):
            ref.check()
        with pytest.raises(TargetGone):
            snap.status  # noqa: B018 - first read after the process is gone
        with pytest.raises(TargetGone):
            read_maps(p.pid)
        with pytest.raises(TargetGone):
            list_fds(p.pid)
    finally:
        snap.close()


def test_kernel_thread_has_no_mm() -> None:
    # kthreadd is pid 2 on every Linux; auxv of a task without mm gives ESRCH (read as empty).
    st = read_status(2)
    if not st.kthread and st.kthread is not None:
        pytest.skip("pid 2 is not kthreadd here (pid namespace?)")
    assert read_auxv(2).entries == () and read_maps(2) == [] and read_stat(2).vsize == 0
