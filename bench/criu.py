"""CRIU 4.2 beside ckpt on the same targets (issue 19): dump, ``dump -R`` and its frozen time, restore, image size.

``bench/run.py --only criu`` (or ``criu.writer``, ``criu.redis``, ``criu.tree``).  With
``--quick`` (64 MiB writer, 1/16 of redis's values, 16 × 4 MiB tree) it runs only when
``--only`` names it, so the quick run of every group (a unit test) never builds CRIU.
The measuring instrument of issue 19, whose goals are ratios to CRIU measured
in the same run; nothing of CRIU goes into ckpt or the repository.

**CRIU itself.**  ``../shared/peers/criu-4.2.tar.gz`` (found by walking up from
the repository, or ``$CKPT_BENCH_CRIU_TARBALL``) is unpacked and built with
``make criu`` into ``/var/cache/ckpt-bench/criu-4.2/src`` (``$CKPT_BENCH_CACHE``
moves the root), once: the tarball's sha256 is kept beside the tree and a
different one rebuilds it.  ``make bench-deps`` (run by ``make bench``) installs
its Debian build packages.  When it cannot be built or run, the bench says so
in one line and every CRIU row reads "CRIU unavailable: <reason>"; ckpt's rows
are still measured.

**The targets** (each started in a session of its own, without a terminal, so
neither tool needs ``--shell-job``; none holds a TCP connection at a dump, so
CRIU runs with ``--network-lock skip``):

* ``writer``: bench/workload.c, 1 GiB of random (incompressible) pages, 2 writer
  threads dirtying 20 MB/s of them.
* ``redis``: redis-server holding ``REDIS_KEYS`` values of ``REDIS_VALUE``
  random bytes (~1.3 GB), loaded by ``redis-cli --pipe``, which has exited
  before any dump.  The row's size is the server's RSS at the first dump.
* ``tree``: bench/tree.c, 16 processes × ``--tree-mib`` (64) MiB, the tree
  group's target (85 % heap-like, 15 % random content).

**One cycle** of a tool on a fresh target: ``dump -R`` (timed; the target's
frozen time from the tool's own account), the target checked to still run;
then a full dump (ends it), the target's pids waited free (untimed), ``restore
-d`` (timed, until the command returns with the tree running), the restored
target verified, then killed and every image removed.  ``sync`` runs (untimed)
after every dump, so one tool's writeback never lands in the other's timing.
Per run the two tools' cycles are interleaved (ckpt, CRIU; then CRIU, ckpt; …)
so a drift of the machine hits both; rows give the median of ``--runs``.

**Verified after every restore, for both tools:** the writer was SIGSTOPped
before its full dump and its memory digested (SHA-256 through /proc/PID/mem);
it must come back stopped with the same digest, then (SIGCONT) its pages-written
counter must go on from the dumped value.  Redis: DBSIZE and a GET of sampled
keys against the values loaded (SHA-1s computed by the server).  The tree: every pid back under its parent and
every process's own memory checksum (tree.c's SIGUSR2 check).

**Frozen time.**  ckpt: ``frozen_seconds`` of ``--json-stats`` (first thread
stopped to last let go).  CRIU: its ``stats-dump`` image (two 32-bit magics, a
32-bit length, then a protobuf message of µs fields, read without CRIU's schema):
``freezing_time`` (from starting to seize the tree until all of it is stopped)
+ ``frozen_time`` (until it is let go) — an upper bound, as it includes the
seize of the first thread.  Image sizes count every file of the image
directory but CRIU's own log and stats files.

**Ratio.**  Every ckpt row's notes start with ckpt's median time ÷ CRIU's
("1.70× CRIU's time": ≤ 1.00× meets the issue's goal); the framework's "vs"
column shows the same comparison as a rate (CRIU's time ÷ ckpt's).  Both
tools' times are wall times of the command as a user runs it: ckpt's include
the interpreter's start (~0.1 s), and ckpt syncs its image where CRIU does not.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from google.protobuf import empty_pb2
from google.protobuf.unknown_fields import UnknownFieldSet

from bench.dump import _ckpt
from bench.framework import Context, Row, bench, fmt_size
from bench.tree import Tree
from bench.workload import Workload

__all__ = ["CriuUnavailable", "build_criu", "criu_binary", "criu_dump_stats"]

REPO = Path(__file__).resolve().parent.parent
CRIU_VERSION = "4.2"
TARBALL = f"criu-{CRIU_VERSION}.tar.gz"
CACHE = Path(os.environ.get("CKPT_BENCH_CACHE", "/var/cache/ckpt-bench")) / f"criu-{CRIU_VERSION}"
#: Measured ~1 minute on 2 idle cores; generous for a loaded machine.
BUILD_TIMEOUT = 1800.0
#: One dump or restore of ~1 GiB takes seconds; this only stops a hung one.
COMMAND_TIMEOUT = 600.0

WRITER_MIB, WRITER_THREADS, WRITER_RATE_MBS = 1024, 2, 20
#: ~1.3 GB of values: 4000 bytes each, so value and header fit jemalloc's 4 KiB class.
REDIS_KEYS, REDIS_VALUE = 330_000, 4000
REDIS_BATCH = 1000
REDIS_SAMPLES = 32
REDIS_SERVER = "redis-server"


# --------------------------------------------------------------------------- building CRIU


class CriuUnavailable(Exception):
    """CRIU cannot be built or run here; the message is the one-line reason."""


def find_tarball() -> Path:
    """``$CKPT_BENCH_CRIU_TARBALL``, else ``shared/peers/criu-4.2.tar.gz`` beside the repo or a parent of it."""
    env = os.environ.get("CKPT_BENCH_CRIU_TARBALL")
    if env:
        if not Path(env).is_file():
            raise CriuUnavailable(f"$CKPT_BENCH_CRIU_TARBALL {env} is not a file")
        return Path(env)
    for d in REPO.parents:  # /work/main -> /work/shared; a worktree /work/wt/NAME -> /work/shared too
        p = d / "shared" / "peers" / TARBALL
        if p.is_file():
            return p
    raise CriuUnavailable(f"no {TARBALL} in ../shared/peers (or set CKPT_BENCH_CRIU_TARBALL)")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _build_error(log: Path) -> str:
    """The line of a failed build that says why (the first compiler or make error), shortened."""
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return "no build log"
    for line in lines:
        if "error:" in line or "No such file" in line or "not found" in line:
            return line.strip()[:200]
    return (lines[-1].strip()[:200] if lines else "empty build log")


def build_criu(cache: Path = CACHE) -> Path:
    """CRIU's binary, built from the tarball into ``cache/src`` once; again when the tarball's sha256 changes.

    A lock on ``cache/.lock`` makes a second bench wait for the first one's build and reuse it.
    """
    tarball = find_tarball()
    digest = _sha256(tarball)
    src, stamp = cache / "src", cache / "sha256"
    binary = src / "criu" / "criu"
    try:
        cache.mkdir(parents=True, exist_ok=True)
        lock = open(cache / ".lock", "w")
    except OSError as exc:
        raise CriuUnavailable(f"cannot use the cache {cache}: {exc.strerror}") from None
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if stamp.is_file() and stamp.read_text().strip() == digest and os.access(binary, os.X_OK):
            return binary
        print(f"# criu: building CRIU {CRIU_VERSION} from {tarball} into {src} (about a minute)",
              file=sys.stderr, flush=True)
        stamp.unlink(missing_ok=True)
        shutil.rmtree(src, ignore_errors=True)
        src.mkdir()
        log = cache / "build.log"
        # Called from `make bench`: CRIU's make must not see that make's flags or jobserver.
        env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES")}
        with open(log, "wb") as out:
            for argv in (["tar", "-xzf", str(tarball), "-C", str(src), "--strip-components=1"],
                         ["make", f"-j{os.cpu_count() or 1}", "criu"]):
                try:
                    proc = subprocess.run(argv, cwd=src, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                          env=env, timeout=BUILD_TIMEOUT)
                except FileNotFoundError:
                    raise CriuUnavailable(f"{argv[0]} not found (make bench-deps installs the build packages)") from None
                except subprocess.TimeoutExpired:
                    raise CriuUnavailable(f"{' '.join(argv[:2])} took over {BUILD_TIMEOUT:.0f} s; log {log}") from None
                if proc.returncode != 0:
                    raise CriuUnavailable(f"{argv[0]} failed: {_build_error(log)} (log {log}; make bench-deps installs "
                                          f"the build packages)")
        if not os.access(binary, os.X_OK):
            raise CriuUnavailable(f"the build left no {binary} (log {log})")
        stamp.write_text(digest + "\n")
    return binary


_CRIU: Path | CriuUnavailable | None = None


def criu_binary() -> Path:
    """The built CRIU, checked to run (``criu --version``); built once per bench run. Raises CriuUnavailable."""
    global _CRIU
    if _CRIU is None:
        try:
            binary = build_criu()
            out = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=30)
            if f"Version: {CRIU_VERSION}" not in out.stdout:
                raise CriuUnavailable(f"{binary} --version said {(out.stdout + out.stderr).strip()[:120]!r}")
            _CRIU = binary
            print(f"# criu: CRIU {CRIU_VERSION} at {binary}", file=sys.stderr, flush=True)
        except CriuUnavailable as exc:
            _CRIU = exc
            print(f"# criu: CRIU unavailable: {exc}", file=sys.stderr, flush=True)
        except OSError as exc:
            _CRIU = CriuUnavailable(f"{exc.strerror}: {exc.filename}")
            print(f"# criu: CRIU unavailable: {_CRIU}", file=sys.stderr, flush=True)
    if isinstance(_CRIU, CriuUnavailable):
        raise _CRIU
    return _CRIU


# --------------------------------------------------------------------------- CRIU's stats image


def _fields(buf: bytes) -> dict[int, int | bytes]:
    """The top-level fields of a protobuf message, read without its schema (protobuf's unknown fields)."""
    msg = empty_pb2.Empty()
    msg.ParseFromString(buf)
    return {f.field_number: f.data for f in UnknownFieldSet(msg)}


def criu_dump_stats(path: Path) -> dict[str, int]:
    """CRIU's ``stats-dump``: its times in µs (freezing, frozen, memdump, memwrite) and page counts."""
    data = path.read_bytes()
    size = int.from_bytes(data[8:12], "little")  # after two 32-bit magics (service image, stats)
    entry = _fields(data[12:12 + size])
    dump = entry.get(1)
    if not isinstance(dump, bytes):
        raise ValueError(f"{path}: no dump entry")
    f = _fields(dump)
    names = {1: "freezing_time", 2: "frozen_time", 3: "memdump_time", 4: "memwrite_time", 5: "pages_scanned",
             7: "pages_written"}
    return {name: int(f.get(n, 0)) for n, name in names.items()}  # type: ignore[arg-type]


# --------------------------------------------------------------------------- the two tools


@dataclass(frozen=True)
class Op:
    """One timed command: wall seconds, the target's frozen seconds (a dump), the image's bytes (a dump)."""

    wall: float
    frozen: float | None = None
    image: int | None = None


def image_bytes(path: Path) -> int:
    """Bytes of the image's files, CRIU's own log and stats files not counted."""
    return sum(f.stat().st_size for f in path.rglob("*")
               if f.is_file() and not f.name.endswith(".log") and not f.name.startswith("stats-"))


class Tool(Protocol):
    name: str

    def dump(self, pid: int, images: Path, *, leave_running: bool) -> Op: ...

    def restore(self, images: Path) -> Op: ...


class Ckpt:
    """ckpt's CLI, one process per command as a user runs it (bench/dump.py's runner)."""

    name = "ckpt"

    def dump(self, pid: int, images: Path, *, leave_running: bool) -> Op:
        wall, _, stats = _ckpt("dump", "-t", str(pid), "-D", str(images), *(["-R"] if leave_running else []))
        return Op(wall, stats["frozen_seconds"], image_bytes(images))

    def restore(self, images: Path) -> Op:
        wall, _, _ = _ckpt("restore", "-D", str(images), "-d")
        return Op(wall)


class Criu:
    """CRIU 4.2's CLI: ``dump -t PID -D DIR [--leave-running] --network-lock skip``, ``restore -D DIR -d``."""

    name = "CRIU"

    def __init__(self, binary: Path) -> None:
        self.binary = binary

    def _run(self, images: Path, command: str, *args: str) -> float:
        log = f"{command}.log"  # in the image directory (CRIU's work dir), not counted in its size
        argv = [str(self.binary), command, "-D", str(images), "-o", log, *args]
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                close_fds=True)
        try:
            _, err = proc.communicate(timeout=COMMAND_TIMEOUT)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            try:
                errors = [x for x in (images / log).read_text(errors="replace").splitlines() if "Error" in x]
            except OSError:
                errors = []
            why = errors[0] if errors else err.decode(errors="replace").strip()
            raise RuntimeError(f"criu {command} failed ({proc.returncode}): {why[:300]}")
        return wall

    def dump(self, pid: int, images: Path, *, leave_running: bool) -> Op:
        images.mkdir(mode=0o700)
        wall = self._run(images, "dump", "-t", str(pid), "--network-lock", "skip",
                         *(["--leave-running"] if leave_running else []))
        s = criu_dump_stats(images / "stats-dump")
        return Op(wall, (s["freezing_time"] + s["frozen_time"]) / 1e6, image_bytes(images))

    def restore(self, images: Path) -> Op:
        return Op(self._run(images, "restore", "-d"))


# --------------------------------------------------------------------------- the targets


def _wait_pid_free(pid: int, timeout: float = 30.0) -> None:
    """Until ``pid`` is free (an orphan's zombie is init's to reap): a restore needs it."""
    deadline = time.monotonic() + timeout
    while os.path.exists(f"/proc/{pid}"):
        if time.monotonic() > deadline:
            raise RuntimeError(f"pid {pid} still taken {timeout:.0f} s after the dump")
        time.sleep(0.002)


def _runs(pid: int, exe: str) -> bool:
    """Whether ``pid`` runs the program ``exe`` (/proc/PID/exe; redis rewrites its cmdline): never kill a reused pid."""
    try:
        return os.readlink(f"/proc/{pid}/exe") == os.path.realpath(exe)
    except OSError:
        return False


def _kill(pid: int, exe: str) -> None:
    """SIGKILL a restored target (not our child) if it still runs ``exe``; wait until its pid is free."""
    if _runs(pid, exe):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        _wait_pid_free(pid)


def _states(pid: int) -> set[str]:
    """The scheduler states of every thread of ``pid``."""
    out = set()
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat", "rb") as f:
                data = f.read()
        except FileNotFoundError:
            continue
        out.add(data[data.rindex(b")") + 2:].split()[0].decode())
    return out


def _wait_stopped(pid: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while _states(pid) != {"T"}:
        if time.monotonic() > deadline:
            raise RuntimeError(f"pid {pid} is not stopped (thread states {sorted(_states(pid))})")
        time.sleep(0.001)


class Target(Protocol):
    """A process (tree) one cycle dumps, restores and checks."""

    pid: int
    #: Bytes of memory a dump must copy: the rows' size.
    total: int

    def check_running(self) -> None:
        """After ``dump -R``: it still runs and answers."""

    def before_full_dump(self) -> None:
        """Untimed, just before the dump that ends it: what the check after the restore compares with."""

    def dumped(self) -> None:
        """The dump ended it: reap what is ours, wait until every pid of it is free."""

    def check_restored(self) -> str:
        """The restored target is the dumped one and runs; what was verified (RuntimeError if not)."""

    def stop(self) -> None:
        """Kill whatever of it runs (the restored copy too), free its files; idempotent."""


class WriterTarget:
    """bench/workload.c: 1 GiB of random pages, 2 threads writing 20 MB/s of them."""

    def __init__(self, mib: int = WRITER_MIB) -> None:
        self.label = f"{fmt_size(mib << 20)} incompressible, {WRITER_THREADS} writer threads"
        wl = Workload(mib, rate_mbs=WRITER_RATE_MBS, threads=WRITER_THREADS, mix=(0, 0, 100),
                      die_with_parent=False)
        wl.own_session = True
        self.wl = wl.start()
        self.pid = wl.pid
        self.total = wl.total
        self.exe = wl.proc.args[0] if wl.proc is not None else ""
        self.digest = ""
        self.written = 0

    def _written(self) -> int:
        os.kill(self.pid, signal.SIGUSR1)
        words = self.wl._readline(time.monotonic() + 10).split()
        if words[:1] != ["WRITTEN"]:
            raise RuntimeError(f"workload said {' '.join(words)!r}")
        return int(words[1])

    def _digest(self) -> str:
        h = hashlib.sha256()
        fd = os.open(f"/proc/{self.pid}/mem", os.O_RDONLY)
        try:
            for r in self.wl.regions:
                for off in range(0, r.length, 16 << 20):
                    n = min(16 << 20, r.length - off)
                    chunk = os.pread(fd, n, r.addr + off)
                    if len(chunk) != n:
                        raise RuntimeError(f"read {len(chunk)} of {n} bytes at {r.addr + off:#x}")
                    h.update(chunk)
        finally:
            os.close(fd)
        return h.hexdigest()

    def check_running(self) -> None:
        before = self._written()
        deadline = time.monotonic() + 10
        while self._written() <= before:  # its writers go on
            if time.monotonic() > deadline:
                raise RuntimeError("the writer threads stopped after dump -R")
            time.sleep(0.05)

    def before_full_dump(self) -> None:
        self.written = self._written()
        os.kill(self.pid, signal.SIGSTOP)
        _wait_stopped(self.pid)
        self.digest = self._digest()

    def dumped(self) -> None:
        if self.wl.proc is not None:
            self.wl.proc.wait(timeout=30)
            self.wl._forgotten()  # the log stays open: the restored process writes on in it

    def check_restored(self) -> str:
        _wait_stopped(self.pid)
        got = self._digest()
        if got != self.digest:
            raise RuntimeError(f"restored memory differs (sha256 {got[:16]}…, dumped {self.digest[:16]}…)")
        os.kill(self.pid, signal.SIGCONT)
        n = self._written()
        if n < self.written:
            raise RuntimeError(f"restored counter {n} < {self.written} before the dump")
        self.check_running()
        return "came back stopped with the same memory (SHA-256), then wrote on"

    def stop(self) -> None:
        if self.wl.proc is not None:
            self.wl.stop()
        else:
            _kill(self.pid, self.exe)
            self.wl._close_log()


def _wait_listening(port: int, timeout: float = 30.0) -> None:
    """Until something accepts connections on 127.0.0.1:``port``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=timeout).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"nothing listens on port {port} after {timeout:.0f} s") from None
            time.sleep(0.01)


def _resp(*args: bytes) -> bytes:
    """One command in Redis's wire protocol (for ``redis-cli --pipe``)."""
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)


#: The SHA-1 of each key's value, computed by the server (its Lua): binary values need no parsing here.
_DIGESTS = "local t = {} for i, k in ipairs(KEYS) do t[i] = redis.sha1hex(redis.call('GET', k)) end return t"


class RedisTarget:
    """redis-server with ``keys`` random values of REDIS_VALUE bytes, loaded by ``redis-cli --pipe``; no connection
    is open at a dump (redis-cli has exited)."""

    def __init__(self, scratch: Path, keys: int = REDIS_KEYS) -> None:
        self.keys = keys
        self.label = f"redis-server, {keys * REDIS_VALUE / 1e9:.2f} GB of random values"
        exe, self.cli = shutil.which(REDIS_SERVER), shutil.which("redis-cli")
        if exe is None or self.cli is None:
            raise RuntimeError("redis-server or redis-cli not found (make install installs them)")
        self.exe = exe
        with socket.socket() as s:  # a free port (redis binds with SO_REUSEADDR)
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.dir = Path(tempfile.mkdtemp(prefix="redis-", dir=scratch))
        fd, self.log = tempfile.mkstemp(prefix="ckpt-bench-redis-", suffix=".log")
        try:
            self.proc: subprocess.Popen[bytes] | None = subprocess.Popen(
                [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                 "--dir", str(self.dir), "--daemonize", "no", "--logfile", ""],
                stdin=subprocess.DEVNULL, stdout=fd, stderr=subprocess.STDOUT, close_fds=True,
                start_new_session=True)
        finally:
            os.close(fd)
        self.pid = self.proc.pid
        self.samples: dict[bytes, str] = {}  # key -> SHA-1 of its value
        try:
            _wait_listening(self.port)
            self._load()
            self.total = self._rss()
        except BaseException:
            self.stop()
            raise

    def _cli(self, *args: str, stdin: int | None = subprocess.DEVNULL) -> subprocess.Popen[bytes]:
        assert self.cli is not None
        return subprocess.Popen([self.cli, "-h", "127.0.0.1", "-p", str(self.port), *args], stdin=stdin,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, close_fds=True)

    def _load(self) -> None:
        step = max(1, self.keys // REDIS_SAMPLES)
        cli = self._cli("--pipe", stdin=subprocess.PIPE)
        assert cli.stdin is not None and cli.stdout is not None
        try:
            for start in range(0, self.keys, REDIS_BATCH):
                n = min(REDIS_BATCH, self.keys - start)
                blob = os.urandom(n * REDIS_VALUE)
                out = []
                for i in range(n):
                    key, value = b"key:%08d" % (start + i), blob[i * REDIS_VALUE:(i + 1) * REDIS_VALUE]
                    out.append(_resp(b"SET", key, value))
                    if (start + i) % step == 0:
                        self.samples[key] = hashlib.sha1(value).hexdigest()
                cli.stdin.write(b"".join(out))
            cli.stdin.close()
            said = cli.stdout.read().decode(errors="replace")
        finally:
            cli.kill()
            cli.wait()
        if f"errors: 0, replies: {self.keys}" not in said:
            raise RuntimeError(f"redis-cli --pipe said {said.strip()[-200:]!r}")

    def _rss(self) -> int:
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")

    def _ask(self, *args: str) -> list[str]:
        cli = self._cli("--raw", *args)
        out, _ = cli.communicate(timeout=60)
        if cli.returncode != 0:
            raise RuntimeError(f"redis-cli {args[0]} failed: {out.decode(errors='replace').strip()[:200]}")
        return out.decode().split()

    def _check(self) -> None:
        _wait_listening(self.port)
        keys = self._ask("DBSIZE")
        if keys != [str(self.keys)]:
            raise RuntimeError(f"DBSIZE {' '.join(keys)}, loaded {self.keys}")
        names = list(self.samples)
        got = self._ask("EVAL", _DIGESTS, str(len(names)), *(k.decode() for k in names))
        if got != [self.samples[k] for k in names]:
            raise RuntimeError("a sampled value differs from the one loaded (SHA-1)")

    def check_running(self) -> None:
        self._check()

    def before_full_dump(self) -> None:
        pass

    def dumped(self) -> None:
        if self.proc is not None:
            self.proc.wait(timeout=30)
            self.proc = None
        _wait_pid_free(self.pid)

    def check_restored(self) -> str:
        self._check()
        return f"DBSIZE {self.keys}, the values of {len(self.samples)} sampled keys right (SHA-1 by the server)"

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=30)
            self.proc = None
        else:
            _kill(self.pid, self.exe)
        shutil.rmtree(self.dir, ignore_errors=True)
        if self.log:
            Path(self.log).unlink(missing_ok=True)
            self.log = ""


class TreeTarget:
    """bench/tree.c: 16 processes × ``tree_mib`` MiB (the tree group's target)."""

    def __init__(self, tree_mib: int) -> None:
        tree = Tree(tree_mib, die_with_parent=False)
        tree.own_session = True
        self.tree = tree.start()
        self.label = f"tree {len(tree.pids)} × {fmt_size(tree_mib << 20)}"
        self.pid = tree.root
        self.total = tree.total

    def check_running(self) -> None:
        self.tree.check()

    def before_full_dump(self) -> None:
        pass

    def dumped(self) -> None:
        self.tree.dumped()
        self.tree.wait_free()

    def check_restored(self) -> str:
        self.tree.restored(self.tree.pids)
        return "every pid back under its parent, every process's memory checksum right"

    def stop(self) -> None:
        self.tree.stop()


# --------------------------------------------------------------------------- cycles and rows


@dataclass(frozen=True)
class Cycle:
    """One tool on one fresh target: ``dump -R``, a full dump, the restore."""

    dump_r: Op
    dump: Op
    restore: Op
    verified: str


def _cycle(tool: Tool, target: Target, scratch: Path) -> Cycle:
    images_r, images = scratch / f"{tool.name}-R", scratch / tool.name
    try:
        dump_r = tool.dump(target.pid, images_r, leave_running=True)
        shutil.rmtree(images_r)
        os.sync()
        target.check_running()
        target.before_full_dump()
        dump = tool.dump(target.pid, images, leave_running=False)
        target.dumped()
        os.sync()
        restore = tool.restore(images)
        verified = target.check_restored()
        return Cycle(dump_r, dump, restore, verified)
    finally:
        target.stop()
        shutil.rmtree(images_r, ignore_errors=True)
        shutil.rmtree(images, ignore_errors=True)


def _ms(s: float) -> str:
    return f"{s * 1e3:.0f} ms" if s < 1 else f"{s:.2f} s"


def _compare(ctx: Context, key: str, start: Callable[[Path], Target]) -> Iterator[Row]:
    """``ctx.runs`` cycles of each tool on fresh targets, interleaved; ckpt's and CRIU's rows side by side."""
    if ctx.quick and not any(g.split(".")[0] == "criu" for g in ctx.only):
        # As the kernels group: a --quick run of everything (tests/unit/test_bench_smoke.py) builds no CRIU.
        print(f"#   criu.{key}: skipped by --quick unless named by --only (it builds CRIU: a minute)",
              file=sys.stderr, flush=True)
        return
    tools: list[Tool] = [Ckpt()]
    unavailable = None
    try:
        tools.append(Criu(criu_binary()))
    except CriuUnavailable as exc:
        unavailable = f"CRIU unavailable: {exc}"
    cycles: dict[str, list[Cycle]] = {t.name: [] for t in tools}
    errors: dict[str, str] = {"CRIU": unavailable} if unavailable else {}
    label, nbytes = "", 0
    load = os.getloadavg()[0]  # other work on the machine is part of the figures: said in the notes
    scratch = Path(tempfile.mkdtemp(prefix="bench-criu-", dir=ctx.tmpdir))
    try:
        for run in range(ctx.runs):
            for tool in tools if run % 2 == 0 else tools[::-1]:
                if tool.name in errors:
                    continue
                try:
                    target = start(scratch)
                    label, nbytes = target.label, max(nbytes, target.total)  # type: ignore[attr-defined]
                    cycles[tool.name].append(_cycle(tool, target, scratch))
                except Exception as exc:  # noqa: BLE001 - one tool's failure must not hide the other's rows
                    errors[tool.name] = f"{type(exc).__name__}: {exc}"
                print(f"#   criu.{key} run {run + 1} {tool.name}: "
                      + (f"FAILED {errors[tool.name]}" if tool.name in errors else "done"), file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    yield from _rows(key, label or key, nbytes, cycles, errors,
                     load=f"load average (1 min) {load:.1f} at the start, {os.getloadavg()[0]:.1f} at the end")


def _median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def _rows(key: str, label: str, nbytes: int, cycles: dict[str, list[Cycle]], errors: dict[str, str],
          load: str = "") -> Iterator[Row]:
    phases: list[tuple[str, str, Callable[[Cycle], float]]] = [
        ("dump", "dump (ends it)", lambda c: c.dump.wall),
        ("dump_R", "dump -R (keeps running)", lambda c: c.dump_r.wall),
        ("frozen_R", "dump -R: target frozen", lambda c: c.dump_r.frozen or 0.0),
        ("restore", "restore -d", lambda c: c.restore.wall),
    ]
    ck, cr = cycles.get("ckpt", []), cycles.get("CRIU", [])
    for phase, what, get in phases:
        ck_t, cr_t = [get(c) for c in ck], [get(c) for c in cr]
        extra_ck, extra_cr = [], []
        if phase in ("dump", "dump_R"):
            op = (lambda c: c.dump) if phase == "dump" else (lambda c: c.dump_r)
            ck_img, cr_img = _median([op(c).image or 0 for c in ck]), _median([op(c).image or 0 for c in cr])
            ck_fr, cr_fr = _median([op(c).frozen or 0 for c in ck]), _median([op(c).frozen or 0 for c in cr])
            if ck:
                extra_ck.append(f"image {fmt_size(ck_img)}" + (f" ({ck_img / cr_img:.2f}× CRIU's)" if cr else "")
                                + f", frozen {_ms(ck_fr)}")
            if cr:
                extra_cr.append(f"image {fmt_size(cr_img)}, frozen {_ms(cr_fr)} (freezing + frozen of its stats)")
            if phase == "dump" and load:
                extra_cr.append(load)
        if phase == "restore":
            for c_list, extra in ((ck, extra_ck), (cr, extra_cr)):
                if c_list:
                    extra.append(f"verified: {c_list[-1].verified}")
        ratio = f"{_median(ck_t) / _median(cr_t):.2f}× CRIU's time" if ck_t and cr_t else ""
        yield Row(f"criu.{key}.{phase}.ckpt", f"ckpt {what}, {label}", nbytes, tuple(ck_t),
                  baseline=f"criu.{key}.{phase}.criu", notes="; ".join(x for x in (ratio, *extra_ck) if x),
                  error=errors.get("ckpt") if not ck_t else None)
        yield Row(f"criu.{key}.{phase}.criu", f"CRIU {CRIU_VERSION} {what}, {label}", nbytes, tuple(cr_t),
                  notes="; ".join(extra_cr), error=errors.get("CRIU") if not cr_t else None)
    for name, msg in errors.items():  # a failure after some good runs: said, not hidden behind their medians
        if cycles.get(name):
            yield Row(f"criu.{key}.failed.{name}", f"{name} on {label}", nbytes, (), error=msg)


@bench("criu", order=500, workload=False)
def writer(ctx: Context) -> Iterator[Row]:
    """1 GiB of incompressible pages (``--size-mib`` with --quick), 2 writer threads: ckpt and CRIU."""
    mib = ctx.size >> 20 if ctx.quick else WRITER_MIB
    yield from _compare(ctx, "writer", lambda scratch: WriterTarget(mib))


@bench("criu", order=501, workload=False)
def redis(ctx: Context) -> Iterator[Row]:
    """redis-server with ~1.3 GB of values (1/16 of it with --quick): ckpt and CRIU."""
    keys = REDIS_KEYS // 16 if ctx.quick else REDIS_KEYS
    yield from _compare(ctx, "redis", lambda scratch: RedisTarget(scratch, keys))


@bench("criu", order=502, workload=False)
def tree(ctx: Context) -> Iterator[Row]:
    """16 processes × 64 MiB: ckpt and CRIU."""
    yield from _compare(ctx, "tree", lambda scratch: TreeTarget(ctx.tree_mib))
