"""sock_diag: the listen backlog of another process's sockets, by inode, checked against ss(8)."""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from ckpt.kernel import sock_diag as sd
from ckpt.kernel.sock_diag import listen_backlogs
from targets import spawn

_LISTENERS = r'''
import os, socket, sys, time
out = []
def keep(s, *extra):
    out.append(str(os.fstat(s.fileno()).st_ino))
    out.extend(map(str, extra))
    return s
a = socket.socket(); a.bind(("127.0.0.1", 0)); a.listen(7); keep(a, a.getsockname()[1])
b = socket.socket(socket.AF_INET6); b.bind(("::1", 0)); b.listen(0); keep(b, b.getsockname()[1])
c = socket.socket(socket.AF_UNIX); c.bind("\0ckpt-sock-diag-%d" % os.getpid()); c.listen(33); keep(c)
d = socket.socket(socket.AF_UNIX); d.bind("\0ckpt-sock-diag-b-%d" % os.getpid()); keep(d)  # bound, not listening
e = socket.socket(); e.bind(("127.0.0.1", 0)); e.listen(1 << 20); keep(e, e.getsockname()[1])
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("127.0.0.1", 0)); keep(u)
print(" ".join(out), flush=True)
time.sleep(60)
'''


@pytest.fixture
def listeners():  # noqa: ANN201 - (target, ino_a, port_a, ino_b, port_b, ino_c, ino_d, ino_e, port_e, ino_u)
    with spawn([sys.executable, "-c", _LISTENERS], stderr=subprocess.DEVNULL) as t:
        yield (t, *map(int, t.readline(timeout=20).split()))


def test_struct_sizes_match_the_uapi_headers() -> None:
    sizes = {sd.nlmsghdr: 16, sd.nlattr: 4, sd.inet_diag_sockid: 48, sd.inet_diag_req_v2: 56, sd.inet_diag_msg: 72,
             sd.unix_diag_req: 24, sd.unix_diag_msg: 16, sd.unix_diag_rqlen: 8}
    assert {c.__name__: ctypes.sizeof(c) for c in sizes} == {c.__name__: n for c, n in sizes.items()}


def test_backlogs_of_another_process(listeners) -> None:  # noqa: ANN001
    _, ino_a, port_a, ino_b, port_b, ino_c, ino_d, ino_e, port_e, ino_u = listeners
    somaxconn = int(Path("/proc/sys/net/core/somaxconn").read_text())
    tcp4 = listen_backlogs(socket.AF_INET, socket.IPPROTO_TCP)
    assert tcp4[ino_a] == 7 and tcp4[ino_e] == min(1 << 20, somaxconn) and ino_u not in tcp4
    assert listen_backlogs(socket.AF_INET, socket.IPPROTO_TCP, port=port_a) == {ino_a: 7}  # filtered by the kernel
    assert listen_backlogs(socket.AF_INET6, socket.IPPROTO_TCP, port=port_b) == {ino_b: 0}  # 0 is a real backlog
    unix = listen_backlogs(socket.AF_UNIX)
    assert unix[ino_c] == 33 and ino_d not in unix
    assert listen_backlogs(socket.AF_UNIX, inode=ino_c) == {ino_c: 33}  # exact lookup
    assert listen_backlogs(socket.AF_UNIX, inode=ino_d) == {}  # there, but not listening
    assert listen_backlogs(socket.AF_UNIX, inode=ino_a) == {}  # not a unix socket
    assert listen_backlogs(socket.AF_INET, socket.IPPROTO_UDP).get(ino_u) is None  # UDP has no listeners


@pytest.mark.skipif(shutil.which("ss") is None, reason="ss (iproute2) is not installed")
def test_agrees_with_ss(listeners) -> None:  # noqa: ANN001
    _, ino_a, port_a, ino_b, port_b, ino_c, *_ = listeners
    lines = subprocess.run(["ss", "-Hltnx"], capture_output=True, text=True, check=True).stdout.splitlines()
    send_q = {}
    for line in lines:
        f = line.split()
        send_q[f[5] if f[0] == "u_str" else f[4]] = int(f[3])
    assert send_q[f"127.0.0.1:{port_a}"] == listen_backlogs(socket.AF_INET, socket.IPPROTO_TCP)[ino_a] == 7
    assert send_q[f"[::1]:{port_b}"] == listen_backlogs(socket.AF_INET6, socket.IPPROTO_TCP)[ino_b] == 0
    assert send_q[str(ino_c)] == listen_backlogs(socket.AF_UNIX)[ino_c] == 33


def test_refusals_are_oserrors() -> None:
    with pytest.raises(OSError) as exc:
        listen_backlogs(socket.AF_INET, 255)  # no inet_diag handler for that protocol
    assert exc.value.errno == errno.ENOENT and "sock_diag(family=2, protocol=255" in str(exc.value)
    with pytest.raises(OSError) as exc:
        listen_backlogs(socket.AF_PACKET)
    assert exc.value.errno == errno.EAFNOSUPPORT


def test_own_socket_and_no_leaked_descriptor() -> None:
    before = len(os.listdir("/proc/self/fd"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(11)
        ino = os.fstat(s.fileno()).st_ino
        for _ in range(50):
            assert listen_backlogs(socket.AF_INET, socket.IPPROTO_TCP, port=s.getsockname()[1]) == {ino: 11}
        s.listen(12)  # listen() again changes the backlog: nothing is cached
        assert listen_backlogs(socket.AF_INET, socket.IPPROTO_TCP, port=s.getsockname()[1]) == {ino: 12}
    assert len(os.listdir("/proc/self/fd")) == before


def test_mptcp_listener_through_the_protocol_attribute() -> None:
    """IPPROTO_MPTCP (262) does not fit sdiag_protocol's byte: it goes in INET_DIAG_REQ_PROTOCOL."""
    try:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM, 262)
    except OSError as exc:
        pytest.skip(f"no MPTCP here: {exc}")
    with s:
        s.bind(("127.0.0.1", 0))
        s.listen(9)
        ino = os.fstat(s.fileno()).st_ino
        assert listen_backlogs(socket.AF_INET, 262, port=s.getsockname()[1]) == {ino: 9}
