"""Unix sockets through dump and restore: socketpairs between and inside processes with data queued both ways,
listeners with accepted and waiting connections, names, peers outside the tree (refused, or closed with
--ext-unix-close), and the states ckpt refuses with the target left running as it was."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ckpt import api
from ckpt.errors import Unsupported
from ckpt.image.reader import Image
from targets import Target, kill_all, spawn, tracer_of
from test_dump_restore import _forget

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="dump/restore needs root (ptrace, clone3 set_tid)")

REPO = Path(__file__).resolve().parents[2]


def _state(pid: int) -> str:
    with open(f"/proc/{pid}/stat", "rb") as f:
        data = f.read()
    return data[data.rindex(b")") + 2:].split()[0].decode()


def _round(t: Target) -> str:
    os.kill(t.pid, signal.SIGUSR1)
    return t.expect("PASS", 15)


@pytest.fixture
def pairs(c_target) -> Iterator:  # noqa: ANN001
    """Start scenarios/unix_pairs.c (optionally connected to @NAME): (target, [R, C]); both killed afterwards."""
    started: list[int] = []

    def start(*args: str) -> tuple[Target, list[int]]:
        t = c_target("unix_pairs", *args, stderr=subprocess.DEVNULL)
        pids = [int(p) for p in t.ready()["pids"].split(",")]
        started.extend(pids)
        return t, pids

    yield start
    kill_all(started)


@pytest.fixture
def outside() -> Iterator:
    """A stream listener of this (test) process at a fresh abstract name: (name without the NUL, listener)."""
    lst = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    name = f"ckpt-test-ext-{os.getpid()}-{id(lst)}"
    lst.bind(b"\0" + name.encode())
    lst.listen(4)
    lst.settimeout(5)
    yield name, lst
    lst.close()


def _unix_entries(image: Path) -> list:
    return [e for e in Image.open(image).file_entries() if e.HasField("unix")]


def test_socketpairs_between_and_inside_processes_round_trip(pairs, tmp_path: Path,  # noqa: ANN001
                                                             restored: list[int]) -> None:
    t, pids = pairs()
    assert _round(t) == "PASS unix_pairs round=1 ext=none"  # the scenario checks itself as it is

    stats = api.dump(t.pid, tmp_path / "img")
    assert stats.processes == 2 and stats.notes == ()
    t.proc.returncode = -signal.SIGKILL  # the dump killed and reaped it
    unix = _unix_entries(tmp_path / "img")
    # Three pairs across (one open file each end) and one inside each process.
    assert len(unix) == 10 and all(e.unix.peer_ino for e in unix)
    dgram = [e for e in unix if e.unix.type == socket.SOCK_DGRAM and e.unix.queue]
    assert {len(e.unix.queue) for e in dgram} == {4} and all(e.unix.queue[0] == b"" for e in dgram)

    r = api.restore(tmp_path / "img", inherit_fds=t.stdio_fds)
    restored.append(r.pid)
    assert sorted(r.processes) == sorted(pids) and all(tracer_of(p) == 0 for p in pids)
    # Every queue exactly as it was (contents and message boundaries), then new messages both ways.
    assert _round(t) == "PASS unix_pairs round=2 ext=none"
    assert _round(t) == "PASS unix_pairs round=3 ext=none"


def test_dump_leave_running_twice_keeps_the_queues(pairs, tmp_path: Path) -> None:  # noqa: ANN001
    """A second dump finds zero-length datagrams the first one peeked (the kernel then hides them from peeks at
    an offset): it reads those queues and sends them back, with a note, and the program sees no difference."""
    t, pids = pairs()
    assert api.dump(t.pid, tmp_path / "img1", leave_running=True).notes == ()
    stats = api.dump(t.pid, tmp_path / "img2", leave_running=True)
    assert stats.notes and all("read and sent again by ckpt" in n for n in stats.notes)
    assert all(tracer_of(p) == 0 for p in pids)
    assert _round(t) == "PASS unix_pairs round=1 ext=none"


def test_peer_outside_the_tree_is_refused_and_the_tree_left_running(pairs, outside,  # noqa: ANN001
                                                                     tmp_path: Path) -> None:
    name, lst = outside
    t, pids = pairs(name)
    conn, _ = lst.accept()
    assert conn.recv(5) == b"hello"
    ino = os.fstat(conn.fileno()).st_ino
    with pytest.raises(Unsupported, match=rf"process {pids[0]}: fd \d+ is a unix stream socket connected to "
                                          rf"socket:\[{ino}\], held by process {os.getpid()} \(\S+\) fd "
                                          rf"{conn.fileno()}, outside the dumped processes") as exc:
        api.dump(t.pid, tmp_path / "img")
    assert "--ext-unix-close" in (exc.value.hint or "")
    assert not (tmp_path / "img").exists()
    assert all(tracer_of(p) == 0 and _state(p) in "RS" for p in pids)
    assert _round(t) == "PASS unix_pairs round=1 ext=open"
    assert conn.recv(1) == b"x"  # the round's write reached us: still connected
    conn.close()


def test_ext_unix_close_restores_a_closed_socket(pairs, outside, tmp_path: Path,  # noqa: ANN001
                                                 restored: list[int]) -> None:
    name, lst = outside
    t, pids = pairs(name)
    conn, _ = lst.accept()
    stats = api.dump(t.pid, tmp_path / "img", ext_unix_close=True)
    t.proc.returncode = -signal.SIGKILL
    assert len(stats.notes) == 1 and "restored with its peer closed (--ext-unix-close)" in stats.notes[0]
    assert conn.recv(10) == b"hello"  # what it had sent, then EOF: the dumped process is gone
    assert conn.recv(10) == b""
    r = api.restore(tmp_path / "img", inherit_fds=t.stdio_fds)
    restored.append(r.pid)
    assert _round(t) == "PASS unix_pairs round=1 ext=closed"  # EOF on read, EPIPE on write; the pairs as before
    conn.close()


def test_ext_unix_close_from_the_cli(pairs, outside, tmp_path: Path, restored: list[int]) -> None:  # noqa: ANN001
    name, lst = outside
    t, pids = pairs(name)
    conn, _ = lst.accept()
    cli = [sys.executable, "-m", "ckpt.cli", "dump", "-t", str(t.pid), "-D", str(tmp_path / "img")]
    refused = subprocess.run(cli, capture_output=True, text=True, cwd=REPO, timeout=60)
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert refused.stderr.startswith(f"ckpt: process {pids[0]}: fd ") and "outside the dumped processes" in refused.stderr
    assert all(tracer_of(p) == 0 for p in pids)
    done = subprocess.run([*cli, "--ext-unix-close"], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "restored with its peer closed (--ext-unix-close)" in done.stderr
    t.proc.wait(timeout=10)  # the CLI traced and killed it; its parent (us) reaps it
    r = api.restore(tmp_path / "img", inherit_fds=t.stdio_fds)
    restored.append(r.pid)
    assert _round(t) == "PASS unix_pairs round=1 ext=closed"
    conn.close()


def test_listeners_with_accepted_and_waiting_connections_and_names(py_target, tmp_path: Path,  # noqa: ANN001
                                                                   restored: list[int]) -> None:
    t = py_target("py_unix.py", str(tmp_path), stderr=subprocess.DEVNULL)
    pids = [int(p) for p in t.ready(20)["pids"].split(",")]
    try:
        stats = api.dump(t.pid, tmp_path / "img")
        t.proc.returncode = -signal.SIGKILL
        assert stats.notes == ()
        by_name = {bytes(e.unix.name): e.unix for e in _unix_entries(tmp_path / "img") if e.unix.state == 10}
        assert len(by_name[f"\0ckpt-ux-{t.pid}-stream".encode()].pending) == 2
        assert len(by_name[os.fsencode(tmp_path / "seq.sock")].pending) == 1
        r = api.restore(tmp_path / "img", inherit_fds=t.stdio_fds)
        restored.append(r.pid)
        # Names (abstract and path), accepted connections re-made through their listener, the waiting ones in
        # order, datagrams queued on a path from two senders, a socket whose peer closed: all checked inside.
        assert _round(t) == "PASS py_unix"
    finally:
        kill_all(pids)


@pytest.mark.parametrize("mode, want", [("rights", "through the pipe"), ("rights-fifo", "fifo-bytes+more")])
def test_descriptor_in_flight_round_trip(py_target, tmp_path: Path, restored: list[int],  # noqa: ANN001
                                         mode: str, want: str) -> None:
    """A pipe's or a FIFO's read end sent (SCM_RIGHTS) and closed by the sender exists only in the queue: it
    comes back in flight, the same pipe as the write end the process kept, its bytes with it
    (test_scm_rights.py has the rest)."""
    t = py_target("py_unix_refusals.py", mode, str(tmp_path), stderr=subprocess.DEVNULL)
    t.ready(20)
    api.dump(t.pid, tmp_path / "img")
    t.proc.returncode = -signal.SIGKILL
    (carrier,) = [e for e in _unix_entries(tmp_path / "img") if e.unix.in_flight]
    assert [len(f.file_ids) for f in carrier.unix.in_flight] == [1]
    r = api.restore(tmp_path / "img", inherit_fds=t.stdio_fds)
    restored.append(r.pid)
    assert _round(t) == f"PASS {mode} {want}"


@pytest.mark.parametrize("mode, message", [
    ("oob", r"is a unix stream socket with urgent data \(MSG_OOB\) queued"),
    ("waiting-data", r"is a unix stream socket connected to the listener at process \d+: fd \d+ that has sent data "
                     r"the listener has not accepted yet"),
    ("waiting-outside", r"is a unix stream socket listening on @\S+ with a connection waiting to be accepted from "
                        r"socket:\[\d+\], held by process \d+ .*, outside the dumped processes"),
])
def test_refusals_leave_the_target_running(py_target, outside, tmp_path: Path, mode: str,  # noqa: ANN001
                                           message: str) -> None:
    name, _ = outside
    t = py_target("py_unix_refusals.py", mode, name + "-" + mode, stderr=subprocess.DEVNULL)
    t.ready(20)
    client = None
    if mode == "waiting-outside":
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        client.connect(f"\0{name}-{mode}".encode())
        client.send(b"out")
    with pytest.raises(Unsupported, match=rf"process {t.pid}: fd \d+ {message}"):
        api.dump(t.pid, tmp_path / "img")
    assert not (tmp_path / "img").exists() and tracer_of(t.pid) == 0
    want = {"oob": "ab ! cd", "waiting-data": "accepted early",
            "waiting-outside": "accepted out"}[mode]
    assert _round(t) == f"PASS {mode} {want}"  # nothing was taken from it
    if client is not None:
        client.close()


def test_established_tcp_connection_only_in_flight_is_refused(py_target, tmp_path: Path) -> None:  # noqa: ANN001
    """A connection no process holds cannot be repaired (--tcp-established): refused, the target runs on."""
    t = py_target("py_unix_refusals.py", "rights-tcp", stderr=subprocess.DEVNULL)
    t.ready(20)
    with pytest.raises(Unsupported, match=rf"^a descriptor in flight \(SCM_RIGHTS\) to process {t.pid}: fd \d+ is an "
                                          r"established IPv4 TCP connection 127\.0\.0\.1:\d+ -> 127\.0\.0\.1:\d+"):
        api.dump(t.pid, tmp_path / "img", tcp_established=True)
    assert not (tmp_path / "img").exists() and tracer_of(t.pid) == 0
    assert _round(t) == "PASS rights-tcp through tcp"


def test_ext_unix_close_drops_a_connection_waiting_from_outside(py_target, outside, tmp_path: Path,  # noqa: ANN001
                                                                restored: list[int]) -> None:
    name, _ = outside
    t = py_target("py_unix_refusals.py", "waiting-outside", name + "-w", stderr=subprocess.DEVNULL)
    t.ready(20)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.connect(f"\0{name}-w".encode())
        stats = api.dump(t.pid, tmp_path / "img", ext_unix_close=True)
        t.proc.returncode = -signal.SIGKILL
    assert len(stats.notes) == 1 and "is dropped (--ext-unix-close)" in stats.notes[0]
    r = api.restore(tmp_path / "img", inherit_fds=t.stdio_fds)
    restored.append(r.pid)
    assert _round(t) == "PASS waiting-outside none"  # listening again, without the dropped connection


_BOUND = """import os, socket, sys, time
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind(sys.argv[1])
s.listen()
os.chmod(sys.argv[1], 0o640)
os.chown(sys.argv[1], 65534, 65534)
print(f"READY pid={os.getpid()}", flush=True)
while True:
    time.sleep(3600)
"""


def test_a_bound_socket_file_keeps_its_mode_and_owner(tmp_path: Path) -> None:
    """bind(2) makes the socket file from the umask and the binder's ids: the restore makes it as the dump found
    it (screen keeps a session's state in its socket file's mode bits)."""
    path = tmp_path / "bound.sock"
    t = spawn([sys.executable, "-c", _BOUND, str(path)], stderr=subprocess.DEVNULL)
    pid = t.pid
    try:
        t.ready()
        before = os.stat(path)
        api.dump(pid, tmp_path / "img")
        _forget(t)
        r = api.restore(tmp_path / "img", inherit_fds=t.stdio_fds, detached=True)
        assert r.pid == pid
        after = os.stat(path)
        assert (after.st_mode, after.st_uid, after.st_gid) == (before.st_mode, 65534, 65534)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as c:
            c.connect(str(path))  # the restored listener is there
    finally:
        kill_all([pid])


def test_bound_and_connected_datagrams_unconnected_seqpackets_and_reused_paths(py_target, tmp_path: Path,  # noqa: ANN001
                                                                               restored: list[int]) -> None:
    """A datagram socket bound and connected to a bound peer of the tree, with a datagram queued each way (each
    read with its sender's name); seqpacket sockets never connected (one bound); a path bound again after
    its first socket closed: all come back as they were."""
    t = py_target("py_unix_details.py", str(tmp_path), stderr=subprocess.DEVNULL)
    t.ready(20)
    api.dump(t.pid, tmp_path / "img")
    t.proc.returncode = -signal.SIGKILL
    r = api.restore(tmp_path / "img", inherit_fds=t.stdio_fds)
    restored.append(r.pid)
    assert _round(t) == "PASS details round=1 ext=none"


def test_a_datagram_socket_connected_outside_the_tree(py_target, tmp_path: Path,  # noqa: ANN001
                                                      restored: list[int]) -> None:
    """Bound and connected to a socket of another process: refused at dump, naming it, with the process left
    running; with --ext-unix-close it comes back bound and connected to a closed peer (ECONNREFUSED)."""
    peer = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    peer.bind(str(tmp_path / "outside.sock"))
    try:
        t = py_target("py_unix_details.py", str(tmp_path), f"--ext={tmp_path / 'outside.sock'}",
                      stderr=subprocess.DEVNULL)
        t.ready(20)
        with pytest.raises(Unsupported, match=rf"process {t.pid}: fd \d+ is a unix datagram socket connected to "
                                              rf"socket:\[\d+\], held by process {os.getpid()} .*outside the dumped "
                                              "processes"):
            api.dump(t.pid, tmp_path / "img")
        assert tracer_of(t.pid) == 0 and not (tmp_path / "img").exists()
        api.dump(t.pid, tmp_path / "img", ext_unix_close=True)
        t.proc.returncode = -signal.SIGKILL
        r = api.restore(tmp_path / "img", inherit_fds=t.stdio_fds)
        restored.append(r.pid)
        assert _round(t) == "PASS details round=1 ext=refused"
    finally:
        peer.close()


def test_a_path_bound_again_while_its_first_socket_is_open_is_refused(py_target, tmp_path: Path) -> None:  # noqa: ANN001
    """Two sockets of the tree with one name: the first's file removed and the second bound there.  A restore
    cannot bind the first (its path names the second's file): refused at dump, naming it."""
    t = py_target("py_unix_details.py", str(tmp_path), "--replaced", stderr=subprocess.DEVNULL)
    t.ready(20)
    new = os.stat(tmp_path / "re.sock").st_ino
    with pytest.raises(Unsupported, match=rf"process {t.pid}: fd \d+ is a unix datagram socket bound to "
                                          rf"{tmp_path / 're.sock'}, whose file was deleted since and the path now "
                                          rf"names another socket \(inode {new}\)"):
        api.dump(t.pid, tmp_path / "img")
    assert tracer_of(t.pid) == 0 and not (tmp_path / "img").exists()
    assert _round(t) == "PASS details round=1 ext=none"


@pytest.mark.parametrize("kind", ["stream", "dgram", "seqpacket"])
def test_a_message_queued_with_credentials_is_refused(py_target, tmp_path: Path, kind: str) -> None:  # noqa: ANN001
    """A socketpair whose receiving end has SO_PASSCRED, a message queued on it: a read gets the sender's
    credentials, which a restore cannot give again — refused at dump, naming it, the process left running."""
    t = py_target("py_unix_details.py", str(tmp_path), f"--passcred={kind}", stderr=subprocess.DEVNULL)
    t.ready(20)
    with pytest.raises(Unsupported, match=rf"process {t.pid}: fd \d+ is a unix \w+ socket with SO_PASSCRED set and 1 "
                                          r"message\(s\) queued: a read of them gets their senders' credentials"):
        api.dump(t.pid, tmp_path / "img")
    assert tracer_of(t.pid) == 0 and not (tmp_path / "img").exists()
    assert _round(t) == "PASS details round=1 ext=none"  # the message and its credentials untouched
