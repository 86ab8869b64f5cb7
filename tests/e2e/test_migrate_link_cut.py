"""The link cut at each message of a migration's switch-over: afterwards exactly one copy runs, and checks out.

A proxy of the test's own sits between the source (`ckpt migrate`, this host)
and the receiver (in a second host: tests/hosts.py).  It forwards whole frames
(the wire's u32 length prefix; their content is sealed, and it needs none of
it), and once armed it swallows the next frame in one direction and cuts both
connections — as a link that dies while that message is in flight.  The source
is paused at a test point (``CKPT_TEST_HOOK=POINT:stop``) while the proxy is
armed, so the frame it swallows is exactly the message named:

=========  =========================  =============================================
message    lost at                    what runs afterwards
=========  =========================  =============================================
restore    source → destination       the original (nothing was built there)
restored   destination → source       the original (the copy, not committed, is killed)
commit     source → destination       neither, in doubt; ``--recover``: the original
running    destination → source       the copy; ``--recover`` ends the original
done       source → destination       the copy (the original was ended already)
=========  =========================  =============================================
"""

from __future__ import annotations

import os
import re
import socket
import struct
import subprocess
import threading
from pathlib import Path

import pytest

from hosts import SecondHost, ckpt_argv
from targets import wait_until
from test_migrate import _free_port, _Mutator, _Receiver, _stores, _token
from test_migrate_switch_kill import (_copy_runs_inside, _nothing_inside, _original_ended, _original_held,
                                      _original_runs, _receiver_again, _state, recover)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="migration needs root (ptrace, clone3, namespaces)")

GUARD = 120.0  # seconds: a hang guard, never a measurement


@pytest.fixture
def mutator(tmp_path: Path):  # noqa: ANN201
    t = _Mutator(tmp_path)
    yield t
    t.close()


class _CuttingProxy:
    """127.0.0.1:PORT → ``upstream``, frame by frame; :meth:`arm` makes it lose the next frame one way."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self._lock = threading.Lock()
        self._armed: str | None = None  # "up" (source → destination) or "down"
        self.lost: str | None = None
        self._conns: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def arm(self, direction: str) -> None:
        with self._lock:
            self._armed = direction

    def close(self) -> None:
        self.listener.close()
        self._cut()

    def _cut(self) -> None:
        for c in self._conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _serve(self) -> None:
        try:
            src, _ = self.listener.accept()
        except OSError:
            return
        dst = socket.create_connection(self.upstream, timeout=GUARD)
        dst.settimeout(None)
        self._conns = [src, dst]
        threading.Thread(target=self._pump, args=(src, dst, "up"), daemon=True).start()
        threading.Thread(target=self._pump, args=(dst, src, "down"), daemon=True).start()

    def _pump(self, a: socket.socket, b: socket.socket, direction: str) -> None:
        try:
            while True:
                header = _read(a, 4)
                frame = header + _read(a, struct.unpack(">I", header)[0])
                with self._lock:
                    lose = self._armed == direction
                    if lose:
                        self._armed, self.lost = None, direction
                if lose:
                    self._cut()  # the frame dies with the link
                    return
                b.sendall(frame)
        except OSError:
            self._cut()


def _read(s: socket.socket, n: int) -> bytes:
    data = bytearray()
    while len(data) < n:
        chunk = s.recv(n - len(data))
        if not chunk:
            raise ConnectionResetError("closed")
        data += chunk
    return bytes(data)


def _migrate_through(proxy: _CuttingProxy, t: _Mutator, token: Path, point: str, direction: str
                     ) -> subprocess.CompletedProcess[str]:
    """``ckpt migrate`` through the proxy, paused at ``point`` while the proxy is armed to lose a frame."""
    env = {**os.environ, "TMPDIR": str(token.parent), "CKPT_TEST_HOOK": f"{point}:stop"}
    mig = subprocess.Popen(ckpt_argv("migrate", "-t", t.pid, "--to", f"127.0.0.1:{proxy.port}", "--token-file",
                                     token, "--max-downtime", "200"),
                           env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True, close_fds=True)
    try:
        wait_until(lambda: _state(mig.pid) == "T" or mig.poll() is not None, f"ckpt migrate stops at {point}",
                   timeout=GUARD)
        assert mig.poll() is None, mig.communicate()
        proxy.arm(direction)
        os.kill(mig.pid, 18)  # SIGCONT
        out, err = mig.communicate(timeout=GUARD)
    finally:
        if mig.poll() is None:
            mig.kill()
            mig.wait()
    assert "Traceback" not in err, err
    assert proxy.lost == direction, "the proxy lost no frame"
    return subprocess.CompletedProcess(mig.args, mig.returncode, out, err)


def _cut(host: SecondHost, tmp_path: Path, t: _Mutator, point: str, direction: str
         ) -> tuple[SecondHost, int, Path, _Receiver, subprocess.CompletedProcess[str]]:
    """A receiver in the second host, and a migration of ``t`` to it through a proxy that loses the next frame
    going ``direction`` once the source is at ``point``: (host, port, token, receiver, the migration)."""
    port, token = _free_port(), _token(tmp_path)
    rx = _Receiver(host, tmp_path, token, port)
    proxy = _CuttingProxy((host.address, port))
    try:
        res = _migrate_through(proxy, t, token, point, direction)
    finally:
        proxy.close()
    return host, port, token, rx, res


@pytest.mark.parametrize("message, point, direction", [
    ("restore", "migrate.final-sent", "up"),
    ("restored", "migrate.final-sent", "down"),
])
def test_a_link_lost_before_the_commit_leaves_the_original_running(second_host: SecondHost, tmp_path: Path,
                                                                   mutator: _Mutator, message: str, point: str,
                                                                   direction: str) -> None:
    host, port, token, rx, res = _cut(second_host, tmp_path, mutator, point, direction)
    assert res.returncode == 1 and "in doubt" not in res.stderr, res.stderr
    assert rx.result()["outcome"].startswith("failed"), rx.err.read_text()
    _nothing_inside(host)
    _original_runs(mutator)
    assert not _stores(rx.store)
    assert not Path(f"/run/ckpt/migrate/{mutator.pid}.json").exists()


def test_a_lost_commit_holds_both_until_recover_resumes_the_original(second_host: SecondHost, tmp_path: Path,
                                                                     mutator: _Mutator) -> None:
    """Neither copy runs while in doubt; with no receiver to ask, the journal is read on the destination
    (`receive --outcome ID`) and its answer given to `--recover --outcome`."""
    host, port, token, rx, res = _cut(second_host, tmp_path, mutator, "migrate.held", "up")
    assert res.returncode == 1 and "in doubt" in res.stderr, res.stderr
    rx.result()
    _nothing_inside(host)  # the copy never had its commit: killed
    _original_held(mutator)
    migration = re.search(r"\(migration ([0-9a-f]{32})\)", res.stderr).group(1)  # type: ignore[union-attr]
    asked = host.run(ckpt_argv("receive", "-D", rx.store, "--outcome", migration), stdout=subprocess.PIPE,
                     stderr=subprocess.PIPE, text=True)
    out, err = asked.communicate(timeout=GUARD)
    assert asked.returncode == 0 and out.strip() == "not running", out + err
    assert "resumed the original" in recover(mutator.pid, token, "--outcome", "not-running").stdout
    _original_runs(mutator)


def test_a_lost_running_leaves_the_copy_and_recover_ends_the_original(second_host: SecondHost, tmp_path: Path,
                                                                      mutator: _Mutator) -> None:
    host, port, token, rx, res = _cut(second_host, tmp_path, mutator, "migrate.held", "down")
    assert res.returncode == 1 and "in doubt" in res.stderr, res.stderr
    assert rx.result()["outcome"] == "running", rx.err.read_text()
    _original_held(mutator)
    _copy_runs_inside(host, mutator)
    # --recover asks the receiver at the address the source used: here it is the proxy's, gone, so --to.
    _receiver_again(host, tmp_path, token, port)
    assert "ended the original" in recover(mutator.pid, token, "--to", f"{host.address}:{port}").stdout
    _original_ended(mutator)
    _copy_runs_inside(host, mutator)


def test_a_lost_done_changes_nothing(second_host: SecondHost, tmp_path: Path, mutator: _Mutator) -> None:
    host, port, token, rx, res = _cut(second_host, tmp_path, mutator, "migrate.running", "up")
    assert res.returncode == 0, res.stderr
    assert rx.result()["outcome"] == "running", rx.err.read_text()
    _original_ended(mutator)
    _copy_runs_inside(host, mutator)
    assert not Path(f"/run/ckpt/migrate/{mutator.pid}.json").exists()
