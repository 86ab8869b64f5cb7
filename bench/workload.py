"""Build and drive ``bench/workload.c``, the target process of every benchmark.

The workload is compiled on demand into ``bench/bin/`` (gitignored).  A
:class:`Workload` is a context manager: leaving it — normally, by an
exception, or by Ctrl-C — kills and reaps the process.  As a second line of
defence every live workload is killed at interpreter exit, and the C side asks
for SIGKILL when its parent dies (PR_SET_PDEATHSIG), which covers a bench that
is itself SIGKILLed.
"""

from __future__ import annotations

import atexit
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["BenchChild", "Region", "Workload", "build_c", "build_workload", "FILL_H", "WORKLOAD_SRC", "WORKLOAD_BIN"]

BENCH_DIR = Path(__file__).resolve().parent
WORKLOAD_SRC = BENCH_DIR / "workload.c"
WORKLOAD_BIN = BENCH_DIR / "bin" / "workload"
#: The memory content every C target fills its pages with (included by workload.c and tree.c).
FILL_H = BENCH_DIR / "fill.h"


def build_c(src: Path, out: Path, *flags: str, cc: str = "gcc", deps: Sequence[Path] = ()) -> Path:
    """Compile ``src`` into ``out`` if the binary is missing or older than its source (a bench's C target).

    ``deps``: headers it includes (bench/fill.h), which make it stale too.
    """
    if out.exists() and out.stat().st_mtime >= max(f.stat().st_mtime for f in (src, *deps)):
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}")
    cmd = [cc, "-O2", "-g", "-Wall", "-Wextra", *flags, "-o", str(tmp), str(src)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, close_fds=True)
    except FileNotFoundError:
        raise RuntimeError(f"{cc} not found: the benchmarks compile {src.name} (apt-get install gcc)") from None
    if proc.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise RuntimeError(f"building {src.name} failed:\n{' '.join(cmd)}\n{proc.stderr}")
    os.replace(tmp, out)  # atomic: a concurrent bench never runs a half-written binary
    return out


def build_workload(cc: str = "gcc") -> Path:
    """Compile the workload if the binary is missing or older than its source."""
    return build_c(WORKLOAD_SRC, WORKLOAD_BIN, "-pthread", cc=cc, deps=(FILL_H,))


@dataclass(frozen=True)
class Region:
    kind: str  # "heap", "zero" or "random"
    addr: int
    length: int


_LIVE: set["BenchChild"] = set()


@atexit.register
def _kill_leftovers() -> None:
    for child in list(_LIVE):
        child.stop()


class BenchChild:
    """The lifetime of a bench's C target: registered while it runs, killed and reaped by
    :meth:`stop` (idempotent), by leaving the ``with`` block, and at interpreter exit.
    Subclasses start ``self.proc`` in :meth:`start` and free what else they hold in
    :meth:`_release`."""

    what = "process"
    proc: "subprocess.Popen[bytes] | None" = None
    #: Start it in a session of its own (setsid), without a controlling terminal: CRIU refuses a
    #: tree whose session leader it does not dump unless told ``--shell-job`` (bench/criu.py).
    own_session: bool = False
    #: The stdout file of a process started by :meth:`_spawn_logged`, our read side of it, and what
    #: was read from it but not yet taken as a line.
    log_path: str | None = None
    _log: int = -1
    _buf: bytes = b""

    def start(self) -> "BenchChild":
        raise NotImplementedError

    def _spawn_logged(self, argv: list[str]) -> None:
        """Start ``argv`` with only fds 0, 1, 2 (close_fds: a checkpoint target must not carry our
        descriptors, DESIGN §3), its stdout a regular file we tail with :meth:`_readline` — not a pipe
        to us: ckpt refuses a pipe to another process, and the benches checkpoint this one."""
        fd, self.log_path = tempfile.mkstemp(prefix=f"ckpt-{self.what.replace(' ', '-')}-", suffix=".log")
        try:
            self._log = os.open(self.log_path, os.O_RDONLY | os.O_CLOEXEC)
            self._started(subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=fd, stderr=subprocess.DEVNULL,
                                           close_fds=True,  # no stdio pipe to us: a restore reopens each fd
                                           start_new_session=self.own_session))
        finally:
            os.close(fd)

    def _close_log(self) -> None:
        if self._log >= 0:
            os.close(self._log)
            self._log = -1
        if self.log_path:
            try:
                os.unlink(self.log_path)
            except FileNotFoundError:
                pass
            self.log_path = None

    def _gone(self) -> str | None:
        """Why no more line can come from the process (None while it may)."""
        if self.proc is not None and self.proc.poll() is not None:
            return f"{self.what} exited (status {self.proc.returncode})"
        return None

    def _readline(self, deadline: float) -> str:
        """The next line of the process's stdout file (polled: a regular file never blocks)."""
        while b"\n" not in self._buf:
            chunk = os.read(self._log, 65536)
            if chunk:
                self._buf += chunk
                continue
            gone = self._gone()
            if gone is not None:
                raise RuntimeError(gone)
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.what} did not answer in time")
            time.sleep(0.002)
        line, _, self._buf = self._buf.partition(b"\n")
        return line.decode()

    def _started(self, proc: "subprocess.Popen[bytes]") -> None:
        self.proc = proc
        _LIVE.add(self)

    def _release(self, proc: "subprocess.Popen[bytes]") -> None:
        """After the process is reaped (or given up on): close our side of its descriptors."""

    def stop(self) -> None:
        """Kill and reap (idempotent)."""
        p = self.proc
        if p is None:
            return
        if p.poll() is None:
            try:
                p.kill()
            except ProcessLookupError:
                pass
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:  # D state: report rather than hang forever
            raise RuntimeError(f"{self.what} {p.pid} did not die within 30 s of SIGKILL") from None
        finally:
            self._release(p)
            _LIVE.discard(self)
            self.proc = None

    def _forgotten(self) -> None:
        _LIVE.discard(self)
        self.proc = None

    def __enter__(self):  # noqa: ANN204 - the subclass
        return self.start() if self.proc is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise RuntimeError(f"{self.what} not running")
        return self.proc.pid


class Workload(BenchChild):
    """A running workload process with ``size_mib`` MiB of resident memory.

    ``rate_mbs`` > 0 starts ``threads`` writer threads that dirty that many
    MB/s of pages (for incremental and migration benches); ``mix`` is the
    heap/zero/random split in percent.  ``die_with_parent=False`` (``-k``): for a restore
    that re-arms PR_SET_PDEATHSIG under a parent that then exits (CRIU's ``restore -d``).
    """

    what = "workload"

    def __init__(self, size_mib: int, *, rate_mbs: float = 0, threads: int = 1,
                 mix: tuple[int, int, int] = (60, 25, 15), seed: int = 0x5EED,
                 ready_timeout: float = 300.0, die_with_parent: bool = True) -> None:
        self.size_mib = size_mib
        self.die_with_parent = die_with_parent  # False: workload.c -k (it survives us; stop() kills it)
        self.rate_mbs = rate_mbs
        self.threads = threads
        self.mix = mix
        self.seed = seed
        self.ready_timeout = ready_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self.regions: list[Region] = []

    # -- lifetime -------------------------------------------------------

    def start(self) -> "Workload":
        binary = build_workload()
        argv = [str(binary), "-s", str(self.size_mib), "-r", str(self.rate_mbs), "-t", str(self.threads),
                "-m", ",".join(map(str, self.mix)), "-S", str(self.seed)] + ([] if self.die_with_parent else ["-k"])
        self._spawn_logged(argv)  # only fds 0, 1, 2: the workload refuses anything else too
        try:
            deadline = time.monotonic() + self.ready_timeout
            while True:
                words = self._readline(deadline).split()
                if words[:1] == ["REGION"]:
                    self.regions.append(Region(words[1], int(words[2], 16), int(words[3])))
                elif words[:1] == ["READY"]:
                    break
                else:
                    raise RuntimeError(f"workload said {' '.join(words)!r}")
            self.regions = [r for r in self.regions if r.length]
        except BaseException:
            self.stop()
            raise
        return self

    def _release(self, proc: "subprocess.Popen[bytes]") -> None:
        self._close_log()

    def forget(self, *, keep_log: bool = False) -> str | None:
        """The process was ended by someone else (a dump): drop it without killing its pid again.

        ``keep_log``: leave the stdout file in place (a restore reopens it) and return its path,
        for the caller to remove once the restored process is gone.
        """
        if self.proc is not None:
            try:
                self.proc.wait(timeout=30)
            except ChildProcessError:
                pass
        kept = self.log_path if keep_log else None
        if keep_log:
            self.log_path = None  # _close_log closes our read side but leaves the file
        self._close_log()
        self._forgotten()
        return kept

    # -- facts ----------------------------------------------------------

    @property
    def total(self) -> int:
        return sum(r.length for r in self.regions)

    def pages_written(self, timeout: float = 10.0) -> tuple[int, float]:
        """(pages dirtied by the writer threads, seconds since start), asked via SIGUSR1."""
        os.kill(self.pid, signal.SIGUSR1)
        words = self._readline(time.monotonic() + timeout).split()
        if words[:1] != ["WRITTEN"]:
            raise RuntimeError(f"workload said {' '.join(words)!r}")
        return int(words[1]), float(words[2])
