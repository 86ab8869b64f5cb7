"""Test targets: compile the C scenarios and run target processes with clean descriptors.

A target gets exactly fds 0, 1, 2 (DESIGN §3: processes started from an IDE or
automation shell inherit stray descriptors): stdin is /dev/null or a pipe the
test writes, stdout a pipe the test reads line by line for READY/PASS/FAIL,
stderr the test's own (pytest captures it).  Every :class:`Target` kills and
reaps its process on ``close()``.
"""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

__all__ = [
    "SCENARIOS", "BIN", "build_c", "spawn", "python_argv", "Target", "wait_in_syscall", "thread_state",
    "tracer_of", "traced_threads", "wait_until", "kill_all", "cpu_flags", "vector_kind", "HANG_GUARD",
]

SCENARIOS = Path(__file__).parent / "scenarios"
BIN = SCENARIOS / "bin"
_CFLAGS_MARK = re.compile(rb"^//\s*cflags:(.*)$", re.M)
#: Seconds a wait for a target goes on before the test fails.  Only a guard against a hang, never a
#: bound on speed: on a loaded 2-core machine a target may not run for seconds.
HANG_GUARD = 60.0


def build_c(name: str) -> Path:
    """Compile ``scenarios/NAME.c`` into ``scenarios/bin/NAME`` unless the binary is newer (than it and
    the scenarios' headers).

    Extra flags come from a ``// cflags: ...`` line in the source (e.g. -no-pie);
    never an instruction-set flag such as -mavx512f: a scenario must run on any
    x86-64, so it picks its instructions at run time (scenarios/vecregs.h).
    Built into a temporary name and renamed, so concurrent runs never see a
    half-written binary.
    """
    src = SCENARIOS / f"{name}.c"
    out = BIN / name
    newest = max(p.stat().st_mtime for p in (src, *SCENARIOS.glob("*.h")))
    if out.exists() and out.stat().st_mtime >= newest:
        return out
    BIN.mkdir(exist_ok=True)
    m = _CFLAGS_MARK.search(src.read_bytes())
    extra = m.group(1).decode().split() if m else []
    tmp = BIN / f".{name}.{os.getpid()}"
    try:
        subprocess.run(["gcc", "-O1", "-g", "-pthread", "-Wall", *extra, "-o", str(tmp), str(src)], check=True)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


class Target:
    """A running target process; reads its stdout lines with timeouts."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        self.pid = proc.pid
        #: What a restore of this target hands over for its stdio pipes (``restore(inherit_fds=...)``):
        #: our end of each pipe, which the restored process reopens with its own access mode.
        self.stdio_fds: dict[int, int] = {1: proc.stdout.fileno()} if proc.stdout is not None else {}
        if proc.stdin is not None:
            self.stdio_fds[0] = proc.stdin.fileno()
        self._buf = b""
        self.lines: list[str] = []  # every line read so far, for failure messages

    @property
    def stdin(self):  # noqa: ANN201 - the pipe, when spawned with stdin_pipe=True
        return self.proc.stdin

    def readline(self, timeout: float = HANG_GUARD) -> str:
        """The next stdout line (without newline); AssertionError on timeout or EOF."""
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"target {self.pid}: no line within {timeout}s (so far: {self.lines})")
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise AssertionError(f"target {self.pid}: stdout closed (exit {self.proc.poll()}); lines {self.lines}")
                self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        text = line.decode(errors="replace")
        self.lines.append(text)
        return text

    def expect(self, prefix: str, timeout: float = HANG_GUARD) -> str:
        """Read lines until one starts with ``prefix``; fail on a FAIL line."""
        while True:
            line = self.readline(timeout)
            if line.startswith(prefix):
                return line
            if line.startswith("FAIL"):
                raise AssertionError(f"target {self.pid}: {line}")

    def ready(self, timeout: float = HANG_GUARD) -> dict[str, str]:
        """Wait for the READY line and return its ``key=value`` fields."""
        line = self.expect("READY", timeout)
        return dict(part.split("=", 1) for part in line.split()[1:] if "=" in part)

    def write(self, data: bytes) -> None:
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def close(self) -> None:
        """Kill (SIGKILL) and reap; safe to call twice and on a dead process."""
        if self.proc.poll() is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(timeout=10)
        for f in (self.proc.stdin, self.proc.stdout):
            if f is not None:
                f.close()

    def __enter__(self) -> "Target":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def spawn(argv: Sequence[str | os.PathLike[str]], *, stdin_pipe: bool = False,
          env: dict[str, str] | None = None, stderr: int | None = None) -> Target:
    """Start ``argv`` with only fds 0, 1, 2 and in its own session.

    ``stderr=subprocess.DEVNULL`` for targets that are dumped and restored:
    pytest's own stderr is a deleted capture file or a pipe to a process
    outside the test, neither of which a restore should have to recreate.
    """
    proc = subprocess.Popen(
        [os.fspath(a) for a in argv],
        stdin=subprocess.PIPE if stdin_pipe else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=stderr,
        close_fds=True,
        start_new_session=True,
        env=env,
    )
    return Target(proc)


def python_argv(script: str, *args: str) -> list[str]:
    """argv for a Python scenario run by the interpreter running the tests."""
    return [sys.executable, "-u", str(SCENARIOS / script), *args]


def wait_until(cond: Callable[[], bool], what: str, timeout: float = HANG_GUARD) -> None:
    """Poll ``cond`` every 2 ms; AssertionError naming ``what`` after ``timeout`` seconds (a hang guard)."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting until {what}")
        time.sleep(0.002)


def wait_in_syscall(pid: int, tid: int, nr: int, timeout: float = HANG_GUARD) -> None:
    """Poll /proc/PID/task/TID/syscall until the thread is blocked in syscall ``nr``."""
    def blocked() -> bool:
        try:
            with open(f"/proc/{pid}/task/{tid}/syscall") as f:
                fields = f.read().split()
        except OSError:
            return False
        return bool(fields) and fields[0] == str(nr) and thread_state(pid, tid) == "S"

    wait_until(blocked, f"thread {tid} of {pid} is blocked in syscall {nr}", timeout)


def thread_state(pid: int, tid: int) -> str:
    """The one-letter state of a thread (field 3 of its stat, after the last ')')."""
    with open(f"/proc/{pid}/task/{tid}/stat", "rb") as f:
        data = f.read()
    return data[data.rindex(b")") + 2:].split()[0].decode()


def tracer_of(pid: int) -> int:
    """TracerPid from /proc/PID/status (0 when not traced)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("TracerPid:"):
                return int(line.split()[1])
    return 0


def traced_threads(pid: int, tracer: int) -> list[int]:
    """Threads of ``pid`` whose TracerPid is ``tracer`` (none once a controller released them)."""
    out = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return []
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                for line in f:
                    if line.startswith("TracerPid:") and int(line.split()[1]) == tracer:
                        out.append(int(tid))
        except FileNotFoundError:
            continue
    return out


def kill_all(pids: Sequence[int]) -> None:
    """SIGKILL every pid that still exists (a target's children, which ``Target.close`` does not reach)."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags as /proc/cpuinfo lists them (the kernel drops one whose state XCR0 lacks)."""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("flags"):
                return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def vector_kind() -> str:
    """Which registers scenarios/vecregs.h holds on this CPU: "zmm" (AVX-512F), "ymm" (AVX) or "xmm"."""
    flags = cpu_flags()
    return "zmm" if "avx512f" in flags else "ymm" if "avx" in flags else "xmm"
