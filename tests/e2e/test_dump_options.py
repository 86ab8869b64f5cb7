"""`ckpt dump -s` (leave stopped) and the progress line: on a terminal only, silent otherwise.

The target is scenarios/cr_target (64 MiB of patterned memory, self-checking:
one PASS line per round on its stdout pipe).  The tty case runs the real CLI
with its stderr on a pseudo-terminal (``pty.openpty``) and reads what a user
would see.
"""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest

from ckpt.api import dump, restore
from ckpt.errors import UsageError
from ckpt.progress import ProgressEvent, progress_for
from targets import Target, tracer_of, wait_until
from test_dump_restore import _drain, _forget, _result, _start

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="dump/restore needs root (ptrace, clone3 set_tid)")
CKPT = [sys.executable, "-m", "ckpt.cli"]


def _states(pid: int) -> set[str]:
    out = set()
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/stat", "rb") as f:
            data = f.read()
        out.add(data[data.rindex(b")") + 2:].split()[0].decode())
    return out


def _silent(t: Target, seconds: float) -> bool:
    """No line at all on the target's stdout for ``seconds`` (it makes one every round when running)."""
    return not select.select([t.proc.stdout.fileno()], [], [], seconds)[0]


def test_leave_stopped_then_cont(c_target, tmp_path: Path) -> None:  # noqa: ANN001
    t, _ = _start(c_target, tmp_path, 2, False)
    before = _result(t, fresh=True)
    stats = dump(t.pid, tmp_path / "img", leave_stopped=True)
    assert stats.left_stopped and not stats.left_running
    assert tracer_of(t.pid) == 0 and t.alive()
    wait_until(lambda: _states(t.pid) == {"T"}, "every thread is in a group stop")
    _drain(t)
    assert _silent(t, 0.3), "a stopped target went on running"
    os.kill(t.pid, signal.SIGCONT)
    after = _result(t, fresh=True)  # resumes where it was, consistent
    assert int(after["round"]) > int(before["round"])


def test_leave_stopped_excludes_leave_running(c_target, tmp_path: Path) -> None:  # noqa: ANN001
    t, _ = _start(c_target, tmp_path, 0, False)
    with pytest.raises(UsageError, match="exclude"):
        dump(t.pid, tmp_path / "img", leave_running=True, leave_stopped=True)
    res = subprocess.run([*CKPT, "dump", "-t", str(t.pid), "-D", str(tmp_path / "img"), "-R", "-s"],
                         capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=30)
    assert res.returncode == 2 and "not allowed with argument" in res.stderr
    assert not (tmp_path / "img").exists() and t.alive() and tracer_of(t.pid) == 0


def test_cli_leave_stopped_is_quiet_without_a_terminal(c_target, tmp_path: Path) -> None:  # noqa: ANN001
    """-s through the CLI; stderr is a pipe: nothing at all is printed, tqdm is never imported."""
    t, _ = _start(c_target, tmp_path, 0, False)
    code = ("import sys; from ckpt.cli import main; rc = main(sys.argv[1:]); "
            "sys.exit(rc if 'tqdm' not in sys.modules else 99)")
    res = subprocess.run([sys.executable, "-c", code, "dump", "-t", str(t.pid), "-D", str(tmp_path / "img"), "-s"],
                         capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60)
    assert (res.returncode, res.stdout, res.stderr) == (0, "", "")
    wait_until(lambda: _states(t.pid) == {"T"}, "the target is stopped")
    assert tracer_of(t.pid) == 0
    os.kill(t.pid, signal.SIGCONT)
    _result(t, fresh=True)


def _run_on_pty(argv: list[str], pass_fds: tuple[int, ...] = ()) -> tuple[int, str]:
    """Run ``argv`` with stderr on a 100-column pseudo-terminal; its exit code and what the terminal got.

    TQDM_MININTERVAL=0 makes every update visible: a 64 MiB dump takes well under tqdm's 0.1 s redraw interval.
    """
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 25, 100, 0, 0))
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=slave,
                                pass_fds=pass_fds, env={**os.environ, "TQDM_MININTERVAL": "0"})
    finally:
        os.close(slave)
    out = b""
    try:
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: every slave end closed
                break
            if not chunk:
                break
            out += chunk
    finally:
        os.close(master)
    return proc.wait(timeout=60), out.decode(errors="replace")


# "dump: read: 36.1MB [00:00, 1.76GB/s]" (no total known) or "restore: write:  50%|███  | 33.6M/67.3M [00:00<00:00, 1.65GB/s]"
_LINE = re.compile(r"\r(dump: read|restore: write): [^\r]*?[\d.]+[kMG]?B?[ /][^\r]*?[\d.]+[kMG]?B/s")


def _one_cleared_line(text: str, verb: str) -> None:
    """Updates by \\r on one line, with bytes and a rate, erased at the end (no newline left behind)."""
    hits = [m.group(1) for m in _LINE.finditer(text)]
    assert hits.count(verb) >= 2, repr(text)
    assert "\n" not in text, repr(text)
    assert text.endswith("\r") and text.rsplit("\r", 2)[-2].strip() == "", repr(text)


def test_cli_progress_on_a_terminal(c_target, tmp_path: Path) -> None:  # noqa: ANN001
    """dump and restore -d through the CLI with stderr on a pty: the progress line; the restore still works."""
    t, _ = _start(c_target, tmp_path, 1, False)
    rc, text = _run_on_pty([*CKPT, "dump", "-t", str(t.pid), "-D", str(tmp_path / "img")])
    assert rc == 0, text
    t.proc.wait(timeout=10)  # killed by the CLI's dump; we are its parent, so the pid is ours to release
    _one_cleared_line(text, "dump: read")
    _drain(t)
    ins, outs = t.proc.stdin.fileno(), t.proc.stdout.fileno()
    rc, text = _run_on_pty([*CKPT, "restore", "-D", str(tmp_path / "img"), "-d",
                            "--inherit-fd", f"fd[{ins}]:0", "--inherit-fd", f"fd[{outs}]:1"], pass_fds=(ins, outs))
    try:
        assert rc == 0, text
        _one_cleared_line(text, "restore: write")
        _result(t)  # the restored process checks itself and reports
    finally:
        os.kill(t.pid, signal.SIGKILL)


def test_progress_events_carry_bytes(c_target, tmp_path: Path, restored: list[int]) -> None:  # noqa: ANN001, F811
    """The API callback: memory events with growing byte counts, ending at what the stats report."""
    t, _ = _start(c_target, tmp_path, 0, False)
    events: list[ProgressEvent] = []
    stats = dump(t.pid, tmp_path / "img", progress=events.append)
    _forget(t)
    phases = [e.phase for e in events]
    assert phases[0] == "frozen" and phases[-1] == "committed" and "records" in phases
    mem = [e.done_bytes for e in events if e.phase == "memory"]
    assert len(mem) > 2 and mem == sorted(mem) and mem[-1] == stats.bytes_read >= 64 << 20
    _drain(t)
    back: list[ProgressEvent] = []
    r = restore(tmp_path / "img", inherit_fds=t.stdio_fds, progress=back.append)
    restored.append(r.pid)
    mem_r = [e for e in back if e.phase == "memory"]
    assert len(mem_r) > 2 and [e.done_bytes for e in mem_r] == sorted(e.done_bytes for e in mem_r)
    assert mem_r[-1].done_bytes == mem_r[-1].total_bytes == r.bytes_written
    _result(t)


def test_progress_renderer_only_for_terminals(tmp_path: Path) -> None:
    with open(tmp_path / "log", "w") as f:
        assert progress_for(f, "x") is None
    assert progress_for(sys.stderr if not sys.stderr.isatty() else open(os.devnull, "w"), "x") is None


_DELETED_HOLDER = (
    "import os, sys, time\n"
    "path = sys.argv[1]\n"
    "fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)\n"
    "os.write(fd, b'x' * 200_000)\n"
    "os.unlink(path)\n"
    "print('READY fd=%d' % fd, flush=True)\n"
    "while True:\n    time.sleep(0.01)\n    print('PASS', flush=True)\n"
)


def test_deleted_max(tmp_path: Path) -> None:
    """--deleted-max caps the content of deleted-but-open files; a bigger one fails naming the fd and size."""
    from targets import spawn

    with spawn([sys.executable, "-c", _DELETED_HOLDER, str(tmp_path / "gone")], stderr=subprocess.DEVNULL) as t:
        fd = t.ready()["fd"]
        from ckpt.errors import Unsupported

        with pytest.raises(Unsupported, match=rf"fd {fd} is the deleted file .* of 200000 bytes") as info:
            dump(t.pid, tmp_path / "img", deleted_max=100_000)
        assert "--deleted-max" in (info.value.hint or "")
        assert not (tmp_path / "img").exists() and t.alive() and tracer_of(t.pid) == 0
        res = subprocess.run([*CKPT, "dump", "-t", str(t.pid), "-D", str(tmp_path / "img"), "-R",
                              "--deleted-max", "100K"], capture_output=True, text=True, stdin=subprocess.DEVNULL,
                             timeout=60)
        lines = [ln for ln in res.stderr.splitlines() if not ln.startswith("hint:")]
        assert res.returncode == 1 and len(lines) == 1 and "200000 bytes" in lines[0], res.stderr
        assert "hint: raise the cap with --deleted-max (e.g. --deleted-max 196K)" in res.stderr
        res = subprocess.run([*CKPT, "dump", "-t", str(t.pid), "-D", str(tmp_path / "img"), "-R",
                              "--deleted-max", "1M"], capture_output=True, text=True, stdin=subprocess.DEVNULL,
                             timeout=60)
        assert res.returncode == 0, res.stderr
        assert t.alive() and tracer_of(t.pid) == 0
        res = subprocess.run([*CKPT, "dump", "-t", str(t.pid), "-D", str(tmp_path / "img2"), "--deleted-max", "lots"],
                             capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60)
        assert res.returncode == 2 and "not a size" in res.stderr


def test_end_target_decides_while_frozen(c_target, tmp_path: Path) -> None:  # noqa: ANN001
    """The migration hook: asked with the image committed and the target frozen; False lets it
    run on (rollback), an exception too (and propagates), True ends it."""
    from ckpt.dump import dump as dump_hooked

    t, _ = _start(c_target, tmp_path, 2, False)
    seen: list[tuple[str, set[str]]] = []

    def keep(image: str) -> bool:
        seen.append((image, _states(t.pid)))
        return False

    stats = dump_hooked(t.pid, tmp_path / "a", end_target=keep)
    assert stats.left_running and t.alive() and tracer_of(t.pid) == 0
    assert seen == [(str(tmp_path / "a"), {"t"})]  # asked once, image complete, every thread in a ptrace stop
    assert (tmp_path / "a" / "inventory.img").exists()
    _result(t, fresh=True)  # still running and consistent

    def fail(image: str) -> bool:
        raise RuntimeError("destination gone")

    with pytest.raises(RuntimeError, match="destination gone"):
        dump_hooked(t.pid, tmp_path / "b", end_target=fail)
    assert t.alive() and tracer_of(t.pid) == 0
    _result(t, fresh=True)

    with pytest.raises(UsageError):
        dump_hooked(t.pid, tmp_path / "c", end_target=lambda _: True, leave_running=True)
    dump_hooked(t.pid, tmp_path / "d", end_target=lambda _: True)
    _forget(t)  # ended, and reaped by the dump (we are its parent)
    assert not os.path.exists(f"/proc/{t.pid}")


def test_probe_dumps_the_state_and_writes_nothing(c_target, tmp_path: Path) -> None:  # noqa: ANN001
    """dump(probe=True): every record, no page, no image; the target runs on (a migration's pre-flight)."""
    from ckpt.dump import dump as dump_hooked

    t, _ = _start(c_target, tmp_path, 2, False)
    stats = dump_hooked(t.pid, tmp_path / "probe", probe=True)
    assert stats.left_running and stats.threads == 3 and stats.vmas > 0 and stats.frozen_seconds > 0
    assert not (tmp_path / "probe").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".probe")]
    assert t.alive() and tracer_of(t.pid) == 0
    _result(t, fresh=True)
    with pytest.raises(UsageError):
        dump_hooked(t.pid, tmp_path / "p2", probe=True, leave_running=True)
