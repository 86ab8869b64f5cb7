"""Pseudo-terminal pairs held inside the tree, and the controlling terminal and session they are.

scenarios/pty_pair.c: a root holding two pty masters, a child leading its own session with slave A
as its controlling terminal (and slave B), a grandchild in the foreground group holding /dev/tty.
Both directions of both pairs hold unread bytes (a canonical line being typed among them), B is raw
with packet mode on its master and an exclusive slave.  After a restore (and after a dump -R, on
the original) the round must find every byte, setting, the session, the foreground group, /dev/tty,
SIGWINCH through TIOCSWINSZ, and data flowing both ways; the self-check compares fdinfo and status.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from ckpt.dump import dump, restore
from ckpt.errors import Unsupported
from ckpt.image.reader import Image
from ckpt.incremental import pre_dump
from ckpt.procfs.stat import read_stat
from ckpt.restore import StagedRestore, StagingMismatch
from targets import Target, kill_all, tracer_of, wait_until
from test_dump_restore import _forget, _parse

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="dump/restore needs root (ptrace, clone3 set_tid)")


def _round(t: Target) -> dict[str, str]:
    os.kill(t.pid, signal.SIGUSR1)
    return _parse(t.expect("PASS", timeout=30))


def _tty(pid: int) -> tuple[int, int, int, int]:
    st = read_stat(pid)
    return st.session, st.pgrp, st.tty_nr, st.tpgid


def _pts(tty_nr: int) -> int:
    return ((tty_nr >> 8) & 0xFFF) - 136 << 8 | (tty_nr & 0xFF)


@pytest.mark.parametrize("leave_running", [False, True], ids=["kill", "R"])
def test_pty_pairs_and_controlling_terminal_round_trip(c_target, tmp_path: Path, restored: list[int],  # noqa: ANN001
                                                       leave_running: bool) -> None:
    t = c_target("pty_pair", stderr=subprocess.DEVNULL)
    info = t.ready()
    pid, child, grandchild = t.pid, int(info["child"]), int(info["grandchild"])
    tree = [pid, child, grandchild]
    before = {p: _tty(p) for p in tree}
    assert _pts(before[child][2]) == int(info["pts_a"]) and before[child][3] == grandchild
    assert before[grandchild][:2] == (child, grandchild)

    image = tmp_path / "img"
    try:
        stats = dump(pid, image, leave_running=leave_running)
        assert Image.open(image).verify() == []
        entries = Image.open(image).file_entries()
        ptys = sorted((e.pty.index, e.pty.master) for e in entries if e.HasField("pty"))
        a, b = int(info["pts_a"]), int(info["pts_b"])
        assert ptys == sorted([(a, True), (b, True), (a, False), (b, False), (a, False)]), ptys  # + /dev/tty
        if leave_running:
            assert all(tracer_of(p) == 0 for p in tree)
            assert {p: _tty(p) for p in tree} == before
            _round(t)  # what the dump read was put back: the original passes
            kill_all(tree)
            t.proc.wait(timeout=10)
            wait_until(lambda: not any(os.path.exists(f"/proc/{p}") for p in tree[1:]), "the original tree ended")
        else:
            _forget(t)
        assert not stats.notes, stats.notes

        r = restore(image, inherit_fds=t.stdio_fds)
        restored.append(r.pid)
        assert r.pid == pid and sorted(r.processes) == sorted(tree)
        after = {p: _tty(p) for p in tree}
        new_a = _pts(after[child][2])
        assert after[pid][:2] == before[pid][:2] and after[pid][2] == before[pid][2]  # the root's is not ours
        assert after[child][:2] == before[child][:2] and after[child][3] == grandchild
        assert after[grandchild] == (child, grandchild, after[child][2], grandchild)
        if new_a != a:  # devpts gave the pair another number: the restore says so
            assert any(f"/dev/pts/{a} is /dev/pts/{new_a} now" in n for n in r.notes), r.notes
        done = _round(t)
        assert int(done["pts_a"]) == new_a
    finally:
        kill_all(tree)


def test_a_staged_restore_gives_way_to_a_plain_one(c_target, tmp_path: Path, restored: list[int]) -> None:  # noqa: ANN001
    """A migration's staged restore clones children before it knows their controlling terminal: the final
    image is refused as StagingMismatch (nothing changed), and the plain restore it falls back to works."""
    t = c_target("pty_pair", stderr=subprocess.DEVNULL)
    info = t.ready()
    tree = [t.pid, int(info["child"]), int(info["grandchild"])]
    try:
        pre_dump(t.pid, tmp_path / "1")
        dump(t.pid, tmp_path / "final", parent=tmp_path / "1")
        _forget(t)
        staged = StagedRestore(inherit_fds=t.stdio_fds)
        staged.start(tmp_path / "1")
        with pytest.raises(StagingMismatch, match="controlling terminal, which only a plain restore gives back"):
            staged.finish(tmp_path / "final")
        staged.abort()
        r = restore(tmp_path / "final", inherit_fds=t.stdio_fds)
        restored.append(r.pid)
        _round(t)
    finally:
        kill_all(tree)


def test_master_without_its_slave_is_refused(tmp_path: Path, py_target) -> None:  # noqa: ANN001
    """A pty master whose slave no process of the tree holds cannot be restored exactly: refused, and the
    target runs on."""
    t = py_target("py_pty_master.py", stderr=subprocess.DEVNULL)
    t.ready()
    with pytest.raises(Unsupported, match=r"the pseudo-terminal /dev/pts/\d+ \(master: fd \d+ of process \d+\): no "
                                          r"process of the tree holds its slave"):
        dump(t.pid, tmp_path / "img")
    assert not (tmp_path / "img").exists()
    assert t.alive() and tracer_of(t.pid) == 0


# --- real programs: tmux and screen -------------------------------------------------------------

#: A pane's program: counts, and reads a line now and then (what send-keys types comes back as "got:").
COUNTER = 'i=0; while :; do i=$((i+1)); echo count $i; read -t 0.2 line && echo got:$line; done'


def _run(*argv: str | os.PathLike[str], env: dict[str, str] | None = None) -> str:
    return subprocess.run([os.fspath(a) for a in argv], check=True, capture_output=True, text=True, close_fds=True,
                          stdin=subprocess.DEVNULL, env=env, timeout=60).stdout


def _counts(text: str) -> list[int]:
    return [int(line.split()[1]) for line in text.splitlines() if line.startswith("count ") and
            line.split()[1:2] and line.split()[1].isdigit()]


def _tree_of(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for t in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{t}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
        except FileNotFoundError:
            pass
    return out


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed (make sysdeps installs it)")
def test_tmux_server_round_trip(tmp_path: Path) -> None:
    """A tmux server (its client detached) with a pane counting: dumped whole from the server's pid and
    restored; the pane keeps its scrollback, the count goes on, send-keys reaches the pane's program, and
    the server opens a new pane."""
    sock = tmp_path / "sock"

    def tmux(*args: str) -> str:
        return _run("tmux", "-f", "/dev/null", "-S", sock, *args)

    tmux("new-session", "-d", "-x", "80", "-y", "24", "bash", "--norc", "-c", COUNTER)
    pid = int(tmux("display", "-p", "#{pid}"))
    tree: list[int] = []
    try:
        wait_until(lambda: max(_counts(tmux("capture-pane", "-p", "-S", "-")), default=0) >= 40,
                   "the pane counted past its height")
        tree = _tree_of(pid)
        image = tmp_path / "img"
        stats = dump(pid, image)
        assert not stats.notes, stats.notes
        r = restore(image, detached=True)
        assert r.pid == pid and sorted(r.processes) == sorted(tree)
        history = tmux("capture-pane", "-p", "-S", "-")
        seen = _counts(history)
        assert seen[:40] == list(range(1, 41)), history  # the scrollback from before the dump
        wait_until(lambda: max(_counts(tmux("capture-pane", "-p", "-S", "-"))) > max(seen) + 3, "the count goes on")
        tmux("send-keys", "hello", "Enter")
        wait_until(lambda: "got:hello" in tmux("capture-pane", "-p", "-S", "-"), "the pane's program read the keys")
        tmux("new-window", "-d", "echo fresh-pane; exec sleep 600")
        wait_until(lambda: "fresh-pane" in tmux("capture-pane", "-p", "-t", ":1"), "a new pane runs")
    finally:
        try:
            tmux("kill-server")
        except subprocess.CalledProcessError:
            pass
        kill_all(tree or [pid])


@pytest.mark.skipif(shutil.which("screen") is None, reason="screen is not installed (make sysdeps installs it)")
def test_screen_session_round_trip(tmp_path: Path) -> None:
    """A detached screen session counting in its window: dumped whole from the SCREEN process and restored;
    screen -ls still sees it detached (its socket file's mode, which screen reads, is kept), the window
    keeps its scrollback, the count goes on and typed input reaches the program."""
    screens = tmp_path / "screens"
    screens.mkdir(mode=0o700)
    env = {**os.environ, "SCREENDIR": str(screens)}
    env.pop("STY", None)

    def screen(*args: str) -> str:
        return _run("screen", "-S", "ck", *args, env=env)

    def hardcopy() -> str:
        out = tmp_path / "hardcopy"
        out.unlink(missing_ok=True)
        screen("-X", "hardcopy", "-h", str(out))
        wait_until(out.exists, "screen wrote the hardcopy")
        return out.read_text(errors="replace")

    screen("-d", "-m", "bash", "--norc", "-c", COUNTER)
    wait_until(lambda: any(p.name.endswith(".ck") for p in screens.iterdir()), "the session's socket")
    sock = next(p for p in screens.iterdir() if p.name.endswith(".ck"))
    pid = int(sock.name.split(".")[0])
    tree: list[int] = []
    try:
        wait_until(lambda: max(_counts(hardcopy()), default=0) >= 40, "the window counted past its height")
        mode = sock.stat().st_mode
        tree = _tree_of(pid)
        stats = dump(pid, tmp_path / "img")
        assert not stats.notes, stats.notes
        r = restore(tmp_path / "img", detached=True)
        assert r.pid == pid and sorted(r.processes) == sorted(tree)
        assert sock.stat().st_mode == mode
        assert "(Detached)" in subprocess.run(["screen", "-ls"], capture_output=True, text=True, env=env).stdout
        seen = _counts(hardcopy())
        assert seen[:40] == list(range(1, 41)), seen[:50]  # the scrollback from before the dump
        wait_until(lambda: max(_counts(hardcopy()), default=0) > max(seen) + 3, "the count goes on")  # empty mid-write
        screen("-X", "stuff", "hello\n")
        wait_until(lambda: "got:hello" in hardcopy(), "the window's program read the input")
    finally:
        try:
            screen("-X", "quit")
        except subprocess.CalledProcessError:
            pass
        kill_all(tree or [pid])
