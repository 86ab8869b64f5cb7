"""The network lock's rules (ckpt.resources.netlock) in a network namespace of the test's own, read back with nft.

Who holds a rule, where it lives, and which rules a later run removes: see
the module docstring of ckpt.resources.netlock.  The whole dump → restore
cycle, and ckpt killed in the middle of it, are in test_tcp_established.py.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from collections.abc import Iterator

import pytest

from ckpt.kernel import nftables as nft
from ckpt.procfs.task import read_starttime
from ckpt.resources import netlock
from netns import fresh_netns
from targets import spawn

pytestmark = [pytest.mark.skipif(os.geteuid() != 0, reason="nftables needs CAP_NET_ADMIN"),
              pytest.mark.skipif(shutil.which("unshare") is None, reason="unshare (util-linux) is not installed"),
              pytest.mark.skipif(shutil.which("nft") is None, reason="nft (nftables) is not installed")]

ME = f"{os.getpid()}-{read_starttime(os.getpid())}"
NS = f"pidns {os.stat('/proc/self/ns/pid').st_ino}"


@pytest.fixture
def netns() -> Iterator[tuple[int, int]]:
    with fresh_netns() as ns:
        yield ns


def _nft(pid: int, *args: str) -> str:
    return subprocess.run(["nsenter", f"--net=/proc/{pid}/ns/net", "nft", *args], check=True, capture_output=True,
                          text=True).stdout


def _lock(tag: str, port: int = 80, family: int = socket.AF_INET) -> netlock.Lock:
    local, peer = ("10.0.0.1", "10.0.0.2") if family == socket.AF_INET else ("fd00::1", "fd00::2")
    return netlock.Lock.of(family, (local, port), (peer, 5555), tag)


def test_held_in_a_table_of_our_own_then_persisted(netns: tuple[int, int]) -> None:
    pid, fd = netns
    a, b = _lock(netlock.tag("t1", os.getpid(), 3)), _lock(netlock.tag("t1", os.getpid(), 4), 81, socket.AF_INET6)
    assert a.tag == f"ckpt t1 run {ME} pid {ME} fd 3 {NS}"
    h = netlock.Holder(fd)
    h.lock([a])
    h.lock([b])
    mine = f"ckpt-{os.getpid()}"
    assert h.table is not None and h.table.startswith(mine)
    assert netlock.locked(fd) == {a.tag: h.table, b.tag: h.table}
    shown = _nft(pid, "list", "table", "inet", h.table)
    assert "flags owner" in shown and a.rule() in shown and b.rule() in shown, shown  # what nft makes of our rules
    h.persist()  # one transaction: into table inet ckpt, out of ours
    assert netlock.locked(fd) == {a.tag: netlock.TABLE, b.tag: netlock.TABLE}
    assert _nft(pid, "list", "tables").split() == ["table", "inet", "ckpt"]
    h.release()  # persisted locks are not ours any more: they stay
    assert netlock.locked(fd) == {a.tag: netlock.TABLE, b.tag: netlock.TABLE}
    assert netlock.unlock({a.tag}, fd) == [] and netlock.locked(fd) == {b.tag: netlock.TABLE}
    assert netlock.unlock({b.tag, "not there"}, fd) == []
    assert _nft(pid, "list", "tables") == ""  # the table goes with its last rule
    assert h.notes == []


def test_released_locks_go_with_our_table(netns: tuple[int, int]) -> None:
    pid, fd = netns
    h = netlock.Holder(fd)
    h.lock([_lock(netlock.tag("t2", os.getpid(), 3))])
    assert _nft(pid, "list", "tables").split() == ["table", "inet", h.table]
    h.release()
    assert _nft(pid, "list", "tables") == "" and netlock.locked(fd) == {}


def test_kernel_without_owned_tables_holds_them_in_the_shared_table(netns: tuple[int, int],
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Linux < 5.12 refuses NFT_TABLE_F_OWNER as an unknown flag: so does this kernel with a flag it does not know."""
    pid, fd = netns
    monkeypatch.setattr(nft, "NFT_TABLE_F_OWNER", 0x40000000)
    lk = _lock(netlock.tag("t3", os.getpid(), 3))
    h = netlock.Holder(fd)
    h.lock([lk])
    assert h.table is None and len(h.notes) == 1 and "Linux 5.12" in h.notes[0], h.notes
    assert lk.rule(lk.tag + netlock.HELD) in _nft(pid, "list", "table", "inet", netlock.TABLE)
    assert netlock.locked(fd) == {lk.tag: netlock.TABLE}
    h.release()
    assert _nft(pid, "list", "tables") == ""
    h2 = netlock.Holder(fd)
    h2.lock([lk])
    h2.persist()  # the same rule, its comment without " held"
    shown = _nft(pid, "list", "table", "inet", netlock.TABLE)
    assert lk.rule() in shown and netlock.HELD not in shown, shown
    h2.release()
    assert netlock.unlock({lk.tag}, fd) == [] and _nft(pid, "list", "tables") == ""


def test_rules_of_killed_runs_that_harm_a_running_process_are_swept(netns: tuple[int, int]) -> None:
    pid, fd = netns
    dead_run = f"{os.getpid()}-1"  # our pid with another start time: a run that is gone
    with spawn(["true"]) as gone:
        gone.proc.wait()
    gone_proc = f"{gone.pid}-1"
    comments = {
        "held, run killed": f"ckpt a run {dead_run} pid {ME} fd 3 {NS}{netlock.HELD}",
        "persisted, run killed before ending its process": f"ckpt b run {dead_run} pid {ME} fd 4 {NS}",
        "persisted, process ended: waits for the restore": f"ckpt c run {dead_run} pid {gone_proc} fd 5 {NS}",
        "held by a run that lives": f"ckpt d run {ME} pid {ME} fd 6 {NS}{netlock.HELD}",
        "held by a run of another PID namespace": f"ckpt f run {dead_run} pid {ME} fd 9 pidns 1{netlock.HELD}",
        "an image from before run tags": "ckpt e pid 7 fd 8",
    }
    with nft.NftSocket.open(fd) as s:
        s.batch(netlock._persistent([_lock(c, 80 + i) for i, c in enumerate(comments.values())],
                                    list(comments.values())))
    notes = netlock.sweep(fd)
    assert len(notes) == 2 and "ckpt a run" in notes[0] and "ckpt b run" in notes[1], notes
    assert "was killed" in notes[0] and f"ended process {os.getpid()}, which runs on" in notes[1]
    left = set(netlock.locked(fd))
    assert left == {f"ckpt c run {dead_run} pid {gone_proc} fd 5 {NS}", f"ckpt d run {ME} pid {ME} fd 6 {NS}",
                    f"ckpt f run {dead_run} pid {ME} fd 9 pidns 1", "ckpt e pid 7 fd 8"}
    assert netlock.sweep(fd) == []
    # A restore's unlock sweeps too: a rule a killed run left goes with the one it unlocks.
    with nft.NftSocket.open(fd) as s:
        s.batch(netlock._persistent([_lock(comments["held, run killed"], 90)], [comments["held, run killed"]]))
    notes = netlock.unlock({f"ckpt c run {dead_run} pid {gone_proc} fd 5 {NS}", "ckpt e pid 7 fd 8"}, fd)
    assert len(notes) == 1 and "ckpt a run" in notes[0]
    assert set(netlock.locked(fd)) == {f"ckpt d run {ME} pid {ME} fd 6 {NS}",  # a held rule is its run's to drop
                                       f"ckpt f run {dead_run} pid {ME} fd 9 pidns 1"}
