"""Socket options: what a program set comes back (the self-check compares every option getsockopt reports)."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from ckpt import api
from ckpt.errors import RestoreError, Unsupported
from ckpt.image.reader import Image
from ckpt.resources import sockets


def _dumped(py_target, tmp_path: Path, *args: str):  # noqa: ANN001, ANN202
    t = py_target("py_sockopts.py", *args, stderr=subprocess.DEVNULL)
    t.ready(20)
    os.kill(t.pid, signal.SIGUSR1)
    assert t.expect("PASS", timeout=20) == "PASS sockopts round=1"
    return t


def test_options_a_program_set_come_back(py_target, tmp_path: Path, restored: list[int]) -> None:  # noqa: ANN001
    t = _dumped(py_target, tmp_path)
    api.dump(t.pid, tmp_path / "img", tcp_established=True)
    t.proc.returncode = -signal.SIGKILL
    r = api.restore(tmp_path / "img", inherit_fds=t.stdio_fds)  # the self-check compares every option too
    restored.append(r.pid)
    os.kill(t.pid, signal.SIGUSR1)
    assert t.expect("PASS", timeout=20) == "PASS sockopts round=2"


def test_an_option_the_restore_lost_fails_the_self_check(py_target, tmp_path: Path,  # noqa: ANN001
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A deliberate loss (the dump forgets SO_PRIORITY): the restore is refused, naming the socket and option."""
    t = _dumped(py_target, tmp_path)
    real = sockets.changed_options
    monkeypatch.setattr(sockets, "changed_options",
                        lambda sock: [o for o in real(sock) if (o.level, o.name) != (1, 12)])
    # --tcp-close: a failed restore of kept connections would leave their network lock for the next one
    api.dump(t.pid, tmp_path / "img", tcp_close=True)
    t.proc.returncode = -signal.SIGKILL
    # each socket's priority comes back as its IP_TOS gives it (0x10: 6, 0x08: 2), or the default
    with pytest.raises(RestoreError, match=r"came back different from the dump: sockopt/\d+: SO_PRIORITY: '\d' at "
                                           r"the dump, '(6|2|default)' after the restore"):
        api.restore(tmp_path / "img", inherit_fds=t.stdio_fds)
    assert Image.open(tmp_path / "img").verify() == []


def test_classic_socket_filters_come_back_locked(py_target, tmp_path: Path, restored: list[int]) -> None:  # noqa: ANN001
    """SO_ATTACH_FILTER programs on a UDP (locked with SO_LOCK_FILTER), a TCP and a unix socket: read back with
    SO_GET_FILTER by the program after the restore (and by the self-check)."""
    t = _dumped(py_target, tmp_path, "filter")
    api.dump(t.pid, tmp_path / "img", tcp_established=True)
    t.proc.returncode = -signal.SIGKILL
    r = api.restore(tmp_path / "img", inherit_fds=t.stdio_fds)
    restored.append(r.pid)
    os.kill(t.pid, signal.SIGUSR1)
    assert t.expect("PASS", timeout=20) == "PASS sockopts round=2"


def test_an_ebpf_socket_filter_is_refused_at_dump(py_target, tmp_path: Path) -> None:  # noqa: ANN001
    t = _dumped(py_target, tmp_path, "ebpf")
    with pytest.raises(Unsupported, match=r"a socket with an eBPF program attached \(SO_ATTACH_BPF") as e:
        api.dump(t.pid, tmp_path / "img", tcp_close=True)
    assert "cannot be read back" in (e.value.hint or "")
    assert t.proc.poll() is None and not (tmp_path / "img").exists()
