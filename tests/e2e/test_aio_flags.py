"""An AIO context (io_setup) and every descriptor's status flags, through a dump and a restore.

The targets check themselves after the restore (scenarios/aio.c, scenarios/fdflags.c); the restore's
self-check compares each descriptor's fdinfo ``flags:`` line and every mapping with the dump's.
"""

from __future__ import annotations

import os
import signal
import socket
from pathlib import Path

import pytest

from ckpt import api
from ckpt.errors import Unsupported
from ckpt.image.reader import Image
from ckpt.kernel import sock_diag
from ckpt.progress import ProgressEvent
from targets import Target, kill_all
from test_dump_restore import _forget

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="dump/restore needs root (ptrace, clone3 set_tid)")


def _kernel() -> tuple[int, int]:
    major, minor = os.uname().release.split(".")[:2]
    return int(major), int(minor)


def _unix_diag() -> bool:
    """Does sock_diag report unix sockets here (the kernel guests do not load unix_diag: ckpt refuses them)?"""
    a, b = socket.socketpair()
    try:
        return bool(sock_diag.unix_sockets(os.fstat(a.fileno()).st_ino))
    except OSError:
        return False
    finally:
        a.close()
        b.close()


def _skipped(d: Path) -> str:
    """What scenarios/fdflags.c cannot set up here: O_DIRECT where ``d``'s filesystem refuses it (tmpfs before
    6.6, as in the kernel guests' overlay), on a memfd before 6.6, MFD_NOEXEC_SEAL before 6.3, a unix
    socketpair where sock_diag does not report unix sockets."""
    try:
        os.close(os.open(d / "probe", os.O_RDWR | os.O_CREAT | os.O_DIRECT, 0o600))
        direct_file = True
    except OSError:
        direct_file = False
    return ",".join([*([] if direct_file else ["O_DIRECT-file"]),
                     *(["O_DIRECT-memfd"] if _kernel() < (6, 6) else []),
                     *(["MFD_NOEXEC_SEAL"] if _kernel() < (6, 3) else []),
                     *([] if _unix_diag() else ["unix"])]) or "none"


def _round_trip(t: Target, img: Path, restored: list[int]) -> None:
    api.dump(t.pid, img)
    _forget(t)
    r = api.restore(img, inherit_fds=t.stdio_fds)
    restored.append(r.pid)
    os.kill(t.pid, signal.SIGUSR1)


def test_an_aio_context_comes_back_at_its_address_with_its_slot_and_head(c_target, tmp_path: Path,  # noqa: ANN001
                                                                         restored: list[int]) -> None:
    t = c_target("aio", str(tmp_path / "data"), "used")
    ready = t.ready()
    assert (ready["id"], ready["nr"], ready["head"]) == ("1", "511", "5")  # slot 0 freed; 200 events: 4 pages
    img = tmp_path / "img"
    _round_trip(t, img, restored)
    rings = [v.aio for v in Image.open(img).mm(t.pid)[1] if v.HasField("aio")]
    assert [(a.id, a.nr, a.head) for a in rings] == [(1, 511, 5)]
    assert t.expect("PASS") == "PASS head=8"


def test_a_parent_and_its_child_each_get_their_own_context_back(c_target, tmp_path: Path,  # noqa: ANN001
                                                                 restored: list[int]) -> None:
    t = c_target("aio", str(tmp_path / "data"), "tree")
    child = int(t.ready()["child"])
    img = tmp_path / "img"
    _round_trip(t, img, restored)
    assert [v.aio.id for p in (t.pid, child) for v in Image.open(img).mm(p)[1] if v.HasField("aio")] == [1, 1]
    assert t.expect("PASS") == "PASS child head=8"
    assert t.expect("PASS") == "PASS head=8"


def test_completed_events_not_yet_reaped_are_refused_and_the_target_runs_on(c_target, tmp_path: Path) -> None:  # noqa: ANN001
    t = c_target("aio", str(tmp_path / "data"), "unreaped")
    ctx = t.ready()["ctx"]
    with pytest.raises(Unsupported, match=rf"process {t.pid}: the AIO context at {ctx} .* 1 completed event\(s\) "
                                          "not yet reaped"):
        api.dump(t.pid, tmp_path / "img")
    assert t.alive() and not (tmp_path / "img").exists()


def test_a_request_in_flight_that_completes_during_the_dump_is_refused(c_target, tmp_path: Path) -> None:  # noqa: ANN001
    t = c_target("aio", str(tmp_path / "data"), "poll", stdin_pipe=True)
    ctx = t.ready()["ctx"]
    sent: list[str] = []

    def complete_the_poll(ev: ProgressEvent) -> None:  # once the rings were read, before the memory is
        if ev.phase == "memory" and not sent:
            sent.append(ev.phase)
            t.write(b"x")  # stdin readable: the IOCB_CMD_POLL in flight completes into the ring

    with pytest.raises(Unsupported, match=rf"process {t.pid}: the AIO context at {ctx} .* had a request in "
                                          r"flight, which completed during the dump \(ring tail 6, 5 when"):
        api.dump(t.pid, tmp_path / "img", progress=complete_the_poll)
    assert sent and t.alive() and not (tmp_path / "img").exists()
    os.kill(t.pid, signal.SIGUSR1)
    assert t.expect("PASS") == "PASS polled head=9"


def test_a_ring_inherited_across_fork_is_refused_naming_the_child(c_target, tmp_path: Path) -> None:  # noqa: ANN001
    t = c_target("aio", str(tmp_path / "data"), "forked")
    ready = t.ready()
    try:
        with pytest.raises(Unsupported, match=rf"process {ready['child']}: the AIO context at {ready['ctx']} .*"
                                              "inherited across fork"):
            api.dump(t.pid, tmp_path / "img")
        assert t.alive()
        os.kill(t.pid, signal.SIGUSR1)
        assert t.expect("PASS") == "PASS head=8"
    finally:
        kill_all([t.pid, int(ready["child"])])  # the child outlived the fixture's kill of its parent


def test_every_descriptor_keeps_its_status_flags_fd_flags_seals_and_mode(c_target, tmp_path: Path,  # noqa: ANN001
                                                                         restored: list[int]) -> None:
    d = tmp_path / "dir"
    d.mkdir()
    t = c_target("fdflags", str(d), *([] if _unix_diag() else ["nounix"]))
    ready = t.ready()
    assert ready["skipped"] == _skipped(d), "what this kernel and filesystem take"
    os.kill(t.pid, signal.SIGUSR1)
    assert t.expect("PASS") == f"PASS fds={ready['fds']}"  # the target's own check holds before the dump
    _round_trip(t, tmp_path / "img", restored)
    assert t.expect("PASS") == f"PASS fds={ready['fds']}"
