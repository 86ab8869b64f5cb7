"""Open files: dump a target with many kinds of fds, restore them into a fresh helper, check both processes."""

from __future__ import annotations

import os
import select
import signal
import subprocess

import pytest

from ckpt.control.seize import freeze
from ckpt.errors import RestoreError, Unsupported
from ckpt.image.pb import files_pb2
from ckpt.kernel.kcmp import same_file
from ckpt.procfs import snapshot
from ckpt.resources import files
from ckpt.resources.files import StdioPolicy
from resources_helpers import fdinfo_of, need_root
from targets import Target, build_c, tracer_of

pytestmark = need_root
K = files_pb2.FileEntry
FDS = (0, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 20)


def start(*args: str, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL) -> Target:
    """scenarios/resources with stderr on /dev/null (pytest's own stderr is a capture file we do not want)."""
    return Target(subprocess.Popen([build_c("resources"), *args], stdin=stdin, stdout=stdout,
                                   stderr=subprocess.DEVNULL, close_fds=True, start_new_session=True))


@pytest.fixture
def procs():
    started: list[Target] = []
    yield lambda *a, **kw: started.append(start(*a, **kw)) or started[-1]
    for t in started:
        t.close()


def files_report(t: Target) -> str:
    os.kill(t.pid, signal.SIGUSR1)
    return t.expect("FILES")


def view(pid: int, fd: int) -> tuple[int, int]:
    """(pos, flags) of an fd."""
    info = fdinfo_of(pid, fd)
    return int(info["pos"]), int(info["flags"], 8)


def read_line(fd: int, timeout: float = 5.0) -> str:
    buf = b""
    while not buf.endswith(b"\n"):
        ready, _, _ = select.select([fd], [], [], timeout)
        assert ready, f"no line (so far {buf!r})"
        chunk = os.read(fd, 1)
        assert chunk, f"EOF (so far {buf!r})"
        buf += chunk
    return buf.decode().rstrip("\n")


def test_files_round_trip(procs, tmp_path) -> None:
    t = procs("files", str(tmp_path))
    t.ready()
    before = {fd: view(t.pid, fd) for fd in FDS}
    links = {fd: os.readlink(f"/proc/{t.pid}/fd/{fd}") for fd in FDS}
    with freeze(t.pid) as proc, snapshot(t.pid) as snap:
        d = files.dump(proc, snap)
    assert tracer_of(t.pid) == 0
    assert {fd: view(t.pid, fd) for fd in FDS} == before  # offsets and flags untouched by the dump

    by_fd = {f.fd: f for f in d.fds}
    entry = {e.id: e for e in d.files}
    kind = {fd: entry[f.file_id].kind for fd, f in by_fd.items()}
    assert kind == {0: K.CHR, 1: K.PIPE, 2: K.CHR, 3: K.REG, 4: K.REG, 5: K.REG, 6: K.REG, 7: K.CHR, 8: K.REG,
                    9: K.DIR, 10: K.PIPE, 11: K.PIPE, 12: K.FIFO, 20: K.CHR}
    assert by_fd[3].file_id == by_fd[4].file_id != by_fd[5].file_id
    assert by_fd[4].fd_flags == 1 and by_fd[3].fd_flags == 0
    assert entry[by_fd[1].file_id].external.startswith("pipe:[")  # our stdout pipe: outside the target
    deleted = entry[by_fd[8].file_id]
    saved = {deleted.content.owner: d.content(deleted.content)}  # read while the target lives
    assert deleted.deleted and deleted.ghost.owner and saved[deleted.content.owner] == b"secret contents"
    pipe_data = [e.pipe.data for e in d.files if e.kind == K.PIPE and e.pipe.data]
    assert len(pipe_data) == 1 and len(pipe_data[0]) == 3072
    fifo = entry[by_fd[12].file_id]
    assert len(fifo.pipe.data) == 100

    # The target still has every byte of its pipe and FIFO, at the same offsets (dump -R).
    want = files_report(t)
    assert "pos3=10 pos5=20 pos6=5 pos8=3 pipe=3072 read=3072" in want and "fifo=100 del=ret co" in want

    t.close()  # as after a dump that kills: the FIFO's buffer goes with its last user
    h = procs("helper", "files")
    h.ready()
    r, w = os.pipe()
    try:
        d2 = [files_pb2.FdEntry.FromString(f.SerializeToString()) for f in d.fds]
        with freeze(h.pid) as hp:
            warnings = files.restore(hp.injector(), d2, d.files, content=lambda ref: saved[ref.owner],
                                     policy=StdioPolicy(inherit={1: w}))
        assert warnings == []
        os.close(w)
        w = -1
        for fd in FDS:
            pos, flags = view(h.pid, fd)
            assert (pos, flags) == before[fd], (fd, links[fd])
            if fd not in (10, 11):  # a new pipe has a new inode
                assert os.readlink(f"/proc/{h.pid}/fd/{fd}") == links[fd], fd
        assert os.readlink(f"/proc/{h.pid}/fd/8") == links[8]  # recreated under its name, deleted again
        assert not (tmp_path / "gone").exists()
        assert same_file(h.pid, 3, 4) and not same_file(h.pid, 3, 5)
        assert os.stat(f"/proc/{h.pid}/fd/10").st_ino == os.stat(f"/proc/{h.pid}/fd/11").st_ino
        os.kill(h.pid, signal.SIGUSR1)
        got = read_line(r)
        assert got == want
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)


def test_changed_file_is_a_clear_error(procs, tmp_path) -> None:
    t = procs("files", str(tmp_path))
    t.ready()
    with freeze(t.pid) as proc, snapshot(t.pid) as snap:
        d = files.dump(proc, snap)
    (tmp_path / "data").write_bytes(b"something else entirely")
    h = procs("helper", "files")
    h.ready()
    only = [f for f in d.fds if f.fd == 3]
    with freeze(h.pid) as hp:
        with pytest.raises(RestoreError, match=r"data.*changed since the dump \(inode|size"):
            files.restore(hp.injector(), only, d.files)
    with freeze(h.pid) as hp:  # --allow-changed-files: reopened as it is now, with a warning
        warnings = files.restore(hp.injector(), only, d.files, policy=StdioPolicy(allow_changed=True))
    assert len(warnings) == 1 and "changed since the dump" in warnings[0] and "reopened" in warnings[0]
    assert os.readlink(f"/proc/{h.pid}/fd/3") == str(tmp_path / "data")
    (tmp_path / "data").unlink()
    with freeze(h.pid) as hp:  # vanished: an error even when told to allow changes
        with pytest.raises(RestoreError, match="cannot reopen file"):
            files.restore(hp.injector(), only, d.files, policy=StdioPolicy(allow_changed=True))
    assert h.alive() and tracer_of(h.pid) == 0


def test_external_stdio_needs_a_descriptor(procs, tmp_path) -> None:
    t = procs("files", str(tmp_path))
    t.ready()
    with freeze(t.pid) as proc, snapshot(t.pid) as snap:
        d = files.dump(proc, snap)
    h = procs("helper", "files")
    h.ready()
    with freeze(h.pid) as hp:
        with pytest.raises(Unsupported, match="fd 1 of the image is pipe:"):
            files.restore(hp.injector(), [f for f in d.fds if f.fd == 1], d.files)
    assert h.alive()


@pytest.mark.parametrize("extra, message", [
    ("external", r"fd 13 is pipe:\[\d+\], whose other end is held by process \d+ \(resources\) fd 100"),
    ("socket", r"a descriptor in flight \(SCM_RIGHTS\) to process \d+: fd 13 is an epoll instance"),
])
def test_refusals_leave_the_target_running(procs, tmp_path, extra: str, message: str) -> None:
    t = procs("files", str(tmp_path), extra)
    t.ready()
    before = {fd: view(t.pid, fd) for fd in (3, 5, 6, 10, 11, 12)}
    with freeze(t.pid) as proc, snapshot(t.pid) as snap:
        with pytest.raises(Unsupported, match=message):
            files.dump(proc, snap)
    assert tracer_of(t.pid) == 0 and t.alive()
    assert {fd: view(t.pid, fd) for fd in before} == before
    assert "pipe=3072 read=3072" in files_report(t)


def test_terminal_needs_shell_job(procs, tmp_path) -> None:
    master, slave = os.openpty()
    try:
        t = procs("helper", "files", stdin=slave)
        t.ready()
        with freeze(t.pid) as proc, snapshot(t.pid) as snap:
            with pytest.raises(Unsupported, match="fd 0 is the terminal /dev/pts/") as exc:
                files.dump(proc, snap)
            assert "--shell-job" in (exc.value.hint or "")
            d = files.dump(proc, snap, policy=StdioPolicy(shell_job=True))
        assert t.alive() and tracer_of(t.pid) == 0
        (tty,) = [e for e in d.files if e.tty]
        master2, slave2 = os.openpty()
        h = procs("helper", "files")
        h.ready()
        with freeze(h.pid) as hp:
            files.restore(hp.injector(), [f for f in d.fds if f.fd == 0], d.files,
                          policy=StdioPolicy(shell_job=True, tty=os.ttyname(slave2)))
        assert os.readlink(f"/proc/{h.pid}/fd/0") == os.ttyname(slave2)
        os.close(master2)
        os.close(slave2)
    finally:
        os.close(master)
        os.close(slave)
