"""Build and drive ``bench/writer.c``, a target that times its own page writes (the per-write cost of tracking).

The binary is compiled on demand into ``bench/bin/`` (gitignored), like the
workload.  A :class:`Writer` is a context manager: leaving it — normally, by an
exception, or by Ctrl-C — kills and reaps the process; every live writer is
also killed at interpreter exit, and the C side asks for SIGKILL when its
parent dies (PR_SET_PDEATHSIG), which covers a bench that is itself SIGKILLed.
"""

from __future__ import annotations

import os
import select
import subprocess
import time
from pathlib import Path

from bench.workload import BenchChild, build_c

__all__ = ["Writer", "build_writer", "WRITER_SRC", "WRITER_BIN"]

BENCH_DIR = Path(__file__).resolve().parent
WRITER_SRC = BENCH_DIR / "writer.c"
WRITER_BIN = BENCH_DIR / "bin" / "writer"


def build_writer(cc: str = "gcc") -> Path:
    """Compile the writer if the binary is missing or older than its source."""
    return build_c(WRITER_SRC, WRITER_BIN, cc=cc)


class Writer(BenchChild):
    """A running writer with ``size_mib`` MiB of resident, already-written pages."""

    what = "writer"

    def __init__(self, size_mib: int, ready_timeout: float = 60.0) -> None:
        self.size_mib = size_mib
        self.ready_timeout = ready_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self.addr = 0
        self.length = 0
        self._buf = b""

    def start(self) -> "Writer":
        binary = build_writer()
        # close_fds: the target must not carry our descriptors (the tracker injects into it).
        self._started(subprocess.Popen([str(binary), "-s", str(self.size_mib)], stdin=subprocess.PIPE,
                                       stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, close_fds=True))
        try:
            words = self._readline(self.ready_timeout).split()
            if words[:1] != ["READY"]:
                raise RuntimeError(f"writer said {' '.join(words)!r}")
            self.addr, self.length = int(words[1], 16), int(words[2])
        except BaseException:
            self.stop()
            raise
        return self

    def _release(self, proc: "subprocess.Popen[bytes]") -> None:
        for f in (proc.stdin, proc.stdout):
            if f is not None:
                try:
                    f.close()
                except OSError:  # EPIPE flushing to a dead process
                    pass

    @property
    def pages(self) -> int:
        return self.length // 4096

    def send(self, command: str) -> None:
        """Start a command; its reply is read with :meth:`reply`."""
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(command.encode() + b"\n")
        self.proc.stdin.flush()

    def reply(self, timeout: float) -> tuple[int, float] | None:
        """``(writes, seconds)`` of the last command, or None if it has not answered within ``timeout``."""
        line = self._readline(timeout, missing_ok=True)
        if line is None:
            return None
        words = line.split()
        if words[:1] not in (["ROUND"], ["SUSTAIN"]) or len(words) != 3:
            raise RuntimeError(f"writer said {line!r}")
        return int(words[1]), int(words[2]) / 1e9

    def run(self, command: str, timeout: float = 60.0) -> tuple[int, float]:
        """Send ``command`` and wait for its ``(writes, seconds)``."""
        self.send(command)
        got = self.reply(timeout)
        if got is None:
            raise TimeoutError(f"writer did not answer {command!r} within {timeout} s")
        return got

    def _readline(self, timeout: float, *, missing_ok: bool = False) -> str | None:
        assert self.proc is not None and self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = max(0.0, deadline - time.monotonic())  # 0: still look, once
            if not select.select([fd], [], [], left)[0]:
                if missing_ok:
                    return None
                raise TimeoutError("writer did not answer in time")
            chunk = os.read(fd, 4096)
            if not chunk:
                raise RuntimeError(f"writer exited (status {self.proc.wait()})")
            self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        return line.decode()
