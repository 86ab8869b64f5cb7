"""``make stress``: kill ckpt at random moments of its commands; the target must never be harmed.

    .venv/bin/python bench/stress.py [--kills 200] [--mib 256] [--seed N] [--json FILE]

The target is ``tests/scenarios/mig_writer.c``: writer threads rewriting whole
pages at a steady rate, which on SIGUSR1 checks every page and table entry
against its own counters (a write a checkpoint lost or a page it corrupted
fails the check).  Each round runs one ckpt command against it and sends it
SIGKILL, SIGTERM or SIGINT after a random part of the time that command takes
(measured once, unkilled, first): ``dump -R``, ``dump`` (the target ends when
the dump completes: it is restored from that image), ``pre-dump`` (in a chain),
``migrate --dry-run`` to a ``receive`` on loopback (the source killed), the
same with the ``receive`` killed, and ``restore -d`` of a dumped target.

After each kill the target is *harmed* if it is gone (and was not ended by a
completed dump), stays traced or stopped, has another blocked-signal mask
than it started with, or fails its check.  A restore killed before it
finished must leave no process under the pid, and the next restore of the
image must work.  *Leftovers* are what a killed run left that the next run
has to remove: injection areas or their descriptors in the target, a second
userfaultfd, temporary image directories; the next ckpt command is checked
to have removed them.  The report: kills tried, targets harmed (the goal is
0), leftovers found and left after the next run.

Real migrations (``migrate-real``, ``receive-real``): the receiver runs
inside a second host on this machine (tests/hosts.py: PID, mount and network
namespaces), a fresh ``ckpt receive --once`` each round; ``migrate-real``
kills the source ``ckpt migrate`` (at a random moment of its pre-copy rounds,
final dump, switch-over, or aimed at a point of an injected call, a tracker,
or a step of the commit: ``migrate.final-sent``, ``migrate.restored``,
``migrate.held``, ``migrate.committed``, ``migrate.running``);
``receive-real`` kills the receiver (at a random moment, or aimed at
``receive.restoring``, ``restore-handing-over``, ``receive.committed``,
``receive.running``).  Once both commands ended, a migration is *harmed*
unless exactly one copy of the target runs: either the original on this host
(untraced, not stopped, its own masks, passing its check) and no process of
it in the second host, or the copy in the second host (likewise) and the
original gone — never none, never two running; and nothing is left in the
second host but the init and that copy (no helper, zombie or traced thread).
One outcome is *held* rather than harmed — the switch-over was committed and
its outcome is in doubt (a source SIGKILLed after its hold, or a receiver
killed after the commit): the original is in a group stop, untraced, so at
most the copy runs (ckpt.migrate.source, DESIGN §6); the stress resolves it
as a user would — ``ckpt receive --outcome ID`` on the receiver's directory,
whose answer must be what runs in the second host, then ``ckpt migrate
--recover --outcome`` — and checks the survivor.  *Leftovers* of a migration are a parked
tracker or injection area in a surviving original, the source's temporary
work directory, and a receiver's store of a migration that did not
complete; an unkilled migration (the next run) must then work and remove
them.  After a migration the copy is ended and a fresh target started.

``tests/e2e/test_stress_sample.py`` runs a small sample of this (~20 kills of
a 32 MiB target) in ``make test``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field, fields
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

if str(REPO / "tests") not in sys.path:
    sys.path.insert(0, str(REPO / "tests"))

from bench.workload import build_c  # noqa: E402
from ckpt.control.seize import alive  # noqa: E402
from ckpt.errors import TargetGone  # noqa: E402
from ckpt.procfs.status import read_status_values  # noqa: E402

CKPT = [sys.executable, "-m", "ckpt.cli"]
SOURCE = REPO / "tests" / "scenarios" / "mig_writer.c"
BINARY = REPO / "bench" / "bin" / "mig_writer"
OPS = ("dump-R", "dump", "pre-dump", "migrate", "receive", "restore", "migrate-real", "receive-real")
#: Ops that migrate to the second host for real.
REAL = ("migrate-real", "receive-real")
#: The ops on this host alone (the sample in make test: a real migration's kill costs ~15-30 s).
LOCAL = tuple(op for op in OPS if op not in REAL)
#: In a mix of both kinds, the share of rounds that are real migrations (~20 of ``make stress``'s 200 kills:
#: each costs a whole migration, ~15-30 s here).
REAL_SHARE = 0.1
#: ckpt.testpoint points of the source's switch-over (migrate-real adds them to HOOKS).
MIGRATE_HOOKS = ("migrate.final-sent", "migrate.restored", "migrate.held", "migrate.committed", "migrate.running")
#: Points of the receiver's restore and commit (receive-real), each passed once.
RECEIVE_HOOKS = ("receive.restoring", "restore-handing-over", "receive.committed", "receive.running")
SIGNALS = (signal.SIGKILL, signal.SIGTERM, signal.SIGINT)
#: ckpt.testpoint points a kill may be aimed at (with a random occurrence).
HOOKS = ("inject.loaded", "inject.entered", "inject.done", "release.mask", "uffd-parked", "collected")
#: Seconds to wait for anything that should happen at once (a hang guard, not a measure).
PATIENCE = 60.0
AREA = "/memfd:ckpt-injection-area"
#: SigBlk of a thread that blocks every signal (the kernel leaves SIGKILL and SIGSTOP out).
ALL = "fffffffffffbfeff"


class Harm(Exception):
    """The target was harmed: what was seen."""


@dataclass
class Report:
    kills: int = 0
    #: kills sent once ckpt had stopped itself at a named point (ckpt.testpoint), not at a random moment
    aimed: int = 0
    by_op: Counter = field(default_factory=Counter)
    by_signal: Counter = field(default_factory=Counter)
    finished_before_kill: int = 0
    harmed: int = 0
    harms: list[str] = field(default_factory=list)
    #: real migrations: how each kill ended (source ran on / migrated / held in doubt)
    outcomes: Counter = field(default_factory=Counter)
    leftovers_found: Counter = field(default_factory=Counter)
    leftovers_after_next_run: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict:
        # (not dataclasses.asdict: it rebuilds a Counter from (key, value) pairs, counting the pairs)
        return {f.name: dict(v) if isinstance(v, Counter) else v
                for f in fields(self) for v in (getattr(self, f.name),)}

    def text(self) -> str:
        lines = [f"kills tried: {self.kills} ({', '.join(f'{k} {v}' for k, v in sorted(self.by_op.items()))}; "
                 f"{', '.join(f'{k} {v}' for k, v in sorted(self.by_signal.items()))}; "
                 f"{self.aimed} at a named point of an injected call, a release or a tracker, the rest at random moments)",
                 f"commands that finished before their kill (not counted): {self.finished_before_kill}",
                 f"targets harmed: {self.harmed}",
                 *([f"real migrations killed: {', '.join(f'{k} {v}' for k, v in sorted(self.outcomes.items()))}"]
                   if self.outcomes else []),
                 f"leftovers found after a kill: {sum(self.leftovers_found.values())} "
                 f"({', '.join(f'{k} {v}' for k, v in sorted(self.leftovers_found.items())) or 'none'}); "
                 f"left after the next run: {self.leftovers_after_next_run}",
                 f"time: {self.seconds:.0f} s"]
        lines += [f"  harm: {h}" for h in self.harms]
        return "\n".join(lines)


class Target:
    """mig_writer, detached (its parent is init, which reaps it), its stdout in a file."""

    def __init__(self, work: Path, npages: int) -> None:
        self.npages = npages
        self.log = work / "target.log"
        self.log.write_bytes(b"")
        subprocess.run(["setsid", "-f", str(BINARY), str(npages), "4", "2000"], stdin=subprocess.DEVNULL,
                       stdout=open(self.log, "ab"), stderr=subprocess.DEVNULL, close_fds=True, check=True)
        line = self._wait_line("READY", 0)
        self.pid = int(dict(p.split("=", 1) for p in line.split()[1:])["pid"])
        # glibc starts a thread with every signal blocked until it runs: wait until the masks settle
        _wait(lambda: self.thread_masks() == self.thread_masks() and ALL not in self.thread_masks().values(),
              "the target's threads have their own masks")
        self.masks = self.thread_masks()
        self.by_tid = True  # a migrated copy has other host tids: its masks are compared as a set

    def adopt(self, pid: int) -> None:
        """Follow the migrated copy of the target, ``pid`` on this host (its tids differ from the original's)."""
        self.pid, self.by_tid = pid, False

    def _wait_line(self, prefix: str, offset: int) -> str:
        deadline = time.monotonic() + PATIENCE
        while time.monotonic() < deadline:
            for line in self.log.read_bytes()[offset:].decode(errors="replace").splitlines():
                if line.startswith(prefix):
                    return line
            time.sleep(0.01)
        raise Harm(f"no {prefix} line from the target within {PATIENCE:.0f} s")

    def alive(self) -> bool:
        """Not gone, not a zombie, not exiting: a process killed with the restore that made it is still
        listed for a while (its leader freeing the memory, its other threads gone), and is no harm."""
        return alive(self.pid)

    def thread_masks(self) -> dict[int, str]:
        out = {}
        for tid in os.listdir(f"/proc/{self.pid}/task"):
            try:
                out[int(tid)] = _status(self.pid, "SigBlk", int(tid))
            except FileNotFoundError:
                pass
        return out

    def check(self, what: str) -> None:
        """Raise Harm unless the target runs untraced, with its own masks, and passes its check."""
        if not self.alive():
            raise Harm(f"{what}: the target is gone")
        _wait(lambda: all(_status(self.pid, "TracerPid", int(t)) == "0"
                          for t in os.listdir(f"/proc/{self.pid}/task")), f"{what}: the target stays traced")
        _wait(lambda: (self.thread_masks() == self.masks if self.by_tid
                       else sorted(self.thread_masks().values()) == sorted(self.masks.values())),
              f"{what}: blocked masks {self.thread_masks()} instead of {self.masks}")
        state = _status(self.pid, "State")
        if state.startswith(("T", "t")):
            raise Harm(f"{what}: the target is stopped ({state})")
        offset = self.log.stat().st_size
        os.kill(self.pid, signal.SIGUSR1)
        line = self._wait_line("CHECK", offset)
        if not line.startswith("CHECK PASS"):
            raise Harm(f"{what}: {line}")

    def end(self) -> None:
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _status(pid: int, key: str, tid: int | None = None) -> str:
    """One field of /proc/PID/status (task/TID/status); FileNotFoundError once the thread is gone."""
    try:
        return read_status_values(pid, key, tid=tid)[0]
    except TargetGone as exc:
        raise FileNotFoundError(str(exc)) from None


def _stopped(pid: int) -> bool:
    try:
        return _status(pid, "State").startswith("T")
    except FileNotFoundError:
        return False


def _wait(cond, what: str) -> None:  # noqa: ANN001
    deadline = time.monotonic() + PATIENCE
    while True:
        try:
            if cond():
                return
        except FileNotFoundError:
            pass
        if time.monotonic() > deadline:
            raise Harm(what)
        time.sleep(0.005)


def _state(pid: int) -> str:
    """The State letter of ``pid`` ('' once it is gone, a zombie or exiting)."""
    try:
        return _status(pid, "State")[0] if alive(pid) else ""
    except FileNotFoundError:
        return ""


def _leftovers(pid: int, work: Path) -> Counter:
    found: Counter = Counter()
    try:
        with open(f"/proc/{pid}/maps") as f:
            found["injection area"] += sum(AREA in line for line in f)
        uffds = 0
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except FileNotFoundError:
                continue
            found["injection area fd"] += link.startswith(AREA)
            uffds += link == "anon_inode:[userfaultfd]"
        found["extra userfaultfd"] += max(0, uffds - 1)
    except FileNotFoundError:
        pass
    for p in work.rglob(".*.tmp"):  # (ckpt runs with TMPDIR=work: a killed migrate's rounds are here too)
        found["migrate work dir" if p.name.startswith(".ckpt-migrate-") else "temp image dir"] += 1
    return +found


class Stress:
    def __init__(self, work: Path, npages: int, seed: int, ops: tuple[str, ...], real_npages: int | None = None) -> None:
        self.work = work
        self.npages = npages
        self.real_npages = real_npages or npages  # the target of the real migrations (a smaller one: they are slow)
        self.rng = random.Random(seed)
        self.ops = ops
        self.report = Report()
        self.target = Target(work, npages)
        self.n = 0
        self.chain_dirs: list[Path] = []  # the pre-dumps of the current chain, oldest first (kept from pruning)
        self.token = work / "token"
        self.receiver: subprocess.Popen | None = None
        self.port = 0
        self.durations: dict[str, float] = {}
        self.host = None  # the second host (tests/hosts.py), for the real migrations
        self.rx_n = 0
        self.verbose = False
        if any(op in REAL for op in ops):
            import pytest
            from hosts import SecondHost
            try:
                self.host = SecondHost().start()
            except pytest.skip.Exception as exc:  # no namespaces or veth here: the rest of the mix runs
                print(f"stress: no real migrations ({exc.msg})", flush=True)
                self.ops = tuple(op for op in ops if op not in REAL)

    # --- one command, killed or not ---

    def _dir(self, kind: str) -> Path:
        self.n += 1
        return self.work / f"{kind}-{self.n}"

    def _argv(self, op: str) -> list[str]:
        pid = str(self.target.pid)
        if op == "dump-R":
            return ["dump", "-R", "-t", pid, "-D", str(self._dir("img"))]
        if op == "dump":
            return ["dump", "-t", pid, "-D", str(self._dir("img"))]
        if op == "pre-dump":  # a chain of up to 4, then a new one
            grow = self.chain_dirs and len(self.chain_dirs) < 4 and self.rng.random() < 0.7
            parent = ["--prev-images-dir", str(self.chain_dirs[-1])] if grow else []
            return ["pre-dump", "-t", pid, "-D", str(self._dir("pre")), *parent]
        if op in ("migrate", "receive"):
            return ["migrate", "-t", pid, "--to", f"127.0.0.1:{self.port}", "--token-file", str(self.token),
                    "--dry-run"]
        raise ValueError(op)

    def _run(self, argv: list[str], kill_after: float | None, sig: int,
             hook: str | None = None, check: bool = True) -> tuple[int, bool, float]:
        """Run ckpt; signal it after ``kill_after`` s, or once it stopped itself at ``hook`` (NAME:stop:N, ckpt.testpoint).

        (exit code, whether the signal was sent, seconds).
        """
        t0 = time.monotonic()
        # TMPDIR: what a killed `migrate` leaves (its rounds' work directory) stays in our work directory
        env = {**os.environ, "TMPDIR": str(self.work), **({"CKPT_TEST_HOOK": hook} if hook else {})}
        p = subprocess.Popen([*CKPT, *argv], cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True, env=env)
        sent = False
        if hook is not None:
            while p.poll() is None and not _stopped(p.pid):
                time.sleep(0.002)
            sent = p.poll() is None
        elif kill_after is not None:
            try:
                p.wait(timeout=kill_after)
            except subprocess.TimeoutExpired:
                sent = True
        if sent:
            p.send_signal(sig)
            if sig != signal.SIGKILL:
                p.send_signal(signal.SIGCONT)
        _, err = p.communicate(timeout=600)
        if check and not sent and p.returncode != 0:
            raise RuntimeError(f"ckpt {' '.join(argv)}: exit {p.returncode}: {err.strip()}")
        return p.returncode, sent, time.monotonic() - t0

    def _receiver(self) -> None:
        """A ``ckpt receive`` on a free loopback port (a new one after the last was killed)."""
        if self.receiver is not None and self.receiver.poll() is None:
            return
        if not self.token.exists():
            from ckpt.migrate.wire import save_token
            save_token(str(self.token))
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.receiver = subprocess.Popen(
            [*CKPT, "receive", "--listen", f"127.0.0.1:{self.port}", "-D", str(self.work / "received"),
             "--token-file", str(self.token)],
            cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait(self._listening, "the receiver listens")

    def _listening(self) -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", self.port)) == 0

    def _restore(self, image: Path, kill_after: float | None = None, sig: int = signal.SIGKILL,
                 hook: str | None = None) -> tuple[bool, float]:
        code, sent, took = self._run(["restore", "-D", str(image), "-d"], kill_after, sig, hook)
        return sent, took

    def _reborn(self, image: Path) -> None:
        """The target ended by a completed dump: bring it back from that image (and check it)."""
        _wait(lambda: not os.path.exists(f"/proc/{self.target.pid}"), "the dumped target's pid is free")
        self._restore(image)
        self.target.check("restored after a completed dump")

    # --- a round ---

    def calibrate(self) -> None:
        for op in self.ops:
            if op == "restore":
                continue
            if op in REAL:
                if "migrate-real" not in self.durations:
                    self._sized(self.real_npages)
                    self.durations["migrate-real"] = self.durations["receive-real"] = self._migrated_unkilled("unkilled")
                continue
            self._sized(self.npages)
            if op in ("migrate", "receive"):
                self._receiver()
            argv = self._argv(op)
            _, _, took = self._run(argv, None, 0)
            self.durations[op] = took
            if op == "dump":
                self._reborn(Path(argv[-1]))
            if op == "pre-dump":
                self._chained(argv)
            self.target.check(f"unkilled {op}")
        if "restore" not in self.ops:
            return
        self._sized(self.npages)
        image = Path(self._argv("dump")[-1])
        self._run(["dump", "-t", str(self.target.pid), "-D", str(image)], None, 0)
        _wait(lambda: not os.path.exists(f"/proc/{self.target.pid}"), "the dumped target's pid is free")
        _, self.durations["restore"] = self._restore(image)
        self.target.check("unkilled restore")

    def round(self) -> None:
        """One command, killed at a random moment (or finished first), then the target checked."""
        try:
            self._round()
        except Harm as h:
            self.report.harmed += 1
            self.report.harms.append(str(h))
            if self.verbose:
                print(f"  harm: {h}", flush=True)
            self.target.end()
            _wait(lambda: not os.path.exists(f"/proc/{self.target.pid}"), "the harmed target is gone")
            if self.host is not None:  # a copy it made there, or a helper left
                for pid in self.host.processes():
                    if pid != self.host.init_pid:
                        os.kill(pid, signal.SIGKILL)
            self.target = Target(self.work, self.target.npages)
            self.chain_dirs = []

    def _round(self) -> None:
        local, real = [o for o in self.ops if o not in REAL], [o for o in self.ops if o in REAL]
        op = self.rng.choice(real if real and (not local or self.rng.random() < REAL_SHARE) else local)
        self._sized(self.real_npages if op in REAL else self.npages)
        sig = self.rng.choice(SIGNALS)
        # Half the kills at a random moment of the command's run; half at a named point inside the
        # windows that matter (an injected call's phases, a thread half put back, a parked tracker),
        # which random moments reach rarely: most of a run is start-up and copying memory.
        hook = None
        if op not in ("receive", "restore") and self.rng.random() < 0.5:
            if op == "receive-real":
                hook = f"{self.rng.choice(RECEIVE_HOOKS)}:stop:1"
            elif op == "migrate-real" and self.rng.random() < 0.5:
                hook = f"{self.rng.choice(MIGRATE_HOOKS)}:stop:1"
            else:
                hook = f"{self.rng.choice(HOOKS)}:stop:{self.rng.randint(1, 30)}"
        delay = self.rng.uniform(0.0, 1.1) * self.durations[op]
        what = f"{op} {signal.Signals(sig).name} " + (f"at {hook}" if hook else f"after {delay * 1000:.0f} ms")
        if op in REAL:
            self._real_round(op, sig, hook, delay, what)
            return
        if op == "restore":
            image = self._dir("img")
            self._run(["dump", "-t", str(self.target.pid), "-D", str(image)], None, 0)
            _wait(lambda: not os.path.exists(f"/proc/{self.target.pid}"), "the dumped target's pid is free")
            sent, _ = self._restore(image, delay, sig)
            if sent and not self.target.alive():
                # what the killed restore made dies with it; its parent (the restore's intermediate, or
                # init) reaps it: only a process still there after that is harm
                try:
                    _wait(lambda: not os.path.exists(f"/proc/{self.target.pid}"), "")
                except Harm:
                    raise Harm(f"{what}: a process is left under the pid, not running") from None
                self._restore(image)  # the next restore of the same image works
        else:
            if op in ("migrate", "receive"):
                self._receiver()
            argv = self._argv(op)
            if op == "receive":
                victim = self.receiver
                p = subprocess.Popen([*CKPT, *argv], cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
                try:
                    p.wait(timeout=delay)
                    sent = False
                except subprocess.TimeoutExpired:
                    victim.send_signal(sig)
                    sent = True
                p.wait(timeout=600)
                if sent:  # the receiver goes; the next round starts another
                    victim.wait(timeout=600)
                    self.receiver = None
            else:
                code, sent, _ = self._run(argv, delay, sig, hook)
                if not sent and op == "dump":
                    self._reborn(Path(argv[-1]))
                if not sent and op == "pre-dump":
                    self._chained(argv)
                if sent and op == "dump" and not self.target.alive():
                    self._reborn(Path(argv[-1]))  # killed after the image was complete: it was ended as asked
            if not sent:
                self.report.finished_before_kill += 1
        if sent:
            self.report.kills += 1
            self.report.aimed += hook is not None
            self.report.by_op[op] += 1
            self.report.by_signal[signal.Signals(sig).name] += 1
        self.target.check(what)
        if sent:
            found = _leftovers(self.target.pid, self.work)
            self.report.leftovers_found.update(found)
            if found:  # the next run must remove them
                self._run(["dump", "-R", "-t", str(self.target.pid), "-D", str(self._dir("img"))], None, 0)
                self.report.leftovers_after_next_run += sum(_leftovers(self.target.pid, self.work).values())
        self._prune()

    # --- real migrations to the second host ---

    def _rx_start(self, hook: str | None) -> tuple[subprocess.Popen, int, str]:
        """A ``ckpt receive --once`` in the second host: (its nsenter, its own pid here, the address to give)."""
        from hosts import ckpt_argv

        if not self.token.exists():
            from ckpt.migrate.wire import save_token
            save_token(str(self.token))
        self.rx_n += 1
        port = 20000 + self.rx_n % 20000
        err = self.work / "receive.err"
        env = {**os.environ, "CKPT_TEST_HOOK": hook} if hook else None
        with open(err, "wb") as e:
            nsenter = self.host.run(ckpt_argv("receive", "--listen", f"{self.host.address}:{port}", "-D",
                                              self.work / "received", "--token-file", self.token, "--once"),
                                    cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=e)
        _wait(lambda: "listening on" in err.read_text() or nsenter.poll() is not None, "the receiver listens")
        if nsenter.poll() is not None:
            raise RuntimeError(f"ckpt receive: exit {nsenter.returncode}: {err.read_text().strip()}")
        rx = next(p for p in self.host.processes() if _status(p, "PPid") == str(nsenter.pid))
        return nsenter, rx, f"{self.host.address}:{port}"

    def _migrate_argv(self, to: str) -> list[str]:
        # (mig_writer rewrites its whole memory every second: the rounds never converge; 4 of them, then
        # the switch-over, keep a kill's round short)
        return ["migrate", "-t", str(self.target.pid), "--to", to, "--token-file", str(self.token),
                "--max-downtime", "300", "--max-iterations", "4"]

    def _migrated_unkilled(self, what: str) -> float:
        """One whole migration (the calibration, or the next run after a kill): it must work; its duration."""
        nsenter, _, to = self._rx_start(None)
        _, _, took = self._run(self._migrate_argv(to), None, 0)
        nsenter.wait(timeout=PATIENCE)
        self._judge(what, expect="migrated")
        return took

    def _real_round(self, op: str, sig: int, hook: str | None, delay: float, what: str) -> None:
        """Migrate to the second host, killing the source (migrate-real) or the receiver (receive-real)."""
        nsenter, rx, to = self._rx_start(hook if op == "receive-real" else None)
        if op == "migrate-real":
            _, sent, _ = self._run(self._migrate_argv(to), delay, sig, hook, check=False)
        else:
            src = subprocess.Popen([*CKPT, *self._migrate_argv(to)], cwd=REPO, stdin=subprocess.DEVNULL,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            sent = False
            if hook is not None:
                while nsenter.poll() is None and not _stopped(rx):
                    time.sleep(0.002)
                sent = nsenter.poll() is None
            else:
                try:
                    nsenter.wait(timeout=delay)
                except subprocess.TimeoutExpired:
                    sent = True
            if sent:
                os.kill(rx, sig)
                if sig != signal.SIGKILL:
                    os.kill(rx, signal.SIGCONT)
                os.kill(nsenter.pid, signal.SIGCONT)  # it stopped with its command: else it never reaps it
            try:
                src.wait(timeout=PATIENCE * 3)
            except subprocess.TimeoutExpired:
                src.kill()
                raise Harm(f"{what}: ckpt migrate hangs once the receiver was killed") from None
        try:
            nsenter.wait(timeout=PATIENCE if self._began() else 2.0)
        except subprocess.TimeoutExpired:
            if self._began():
                raise Harm(f"{what}: the receiver hangs once its source was killed: {self._describe(None)}") from None
            # the source died before it proved it knows the token: --once rightly waits for a real one
            os.kill(rx, signal.SIGINT)
            try:
                nsenter.wait(timeout=PATIENCE)
            except subprocess.TimeoutExpired:
                raise Harm(f"{what}: the idle receiver ignores Ctrl-C: {self._describe(None)}") from None
        if not sent:
            self.report.finished_before_kill += 1
            self._judge(what, expect="migrated")
            return
        self.report.kills += 1
        self.report.aimed += hook is not None
        self.report.by_op[op] += 1
        self.report.by_signal[signal.Signals(sig).name] += 1
        orig = self.target.pid
        outcome, found = self._judge(what)
        self.report.outcomes[outcome] += 1
        if self.verbose:
            print(f"  {what}: {outcome}{'; left ' + str(dict(found)) if found else ''}", flush=True)
        self.report.leftovers_found.update(found)
        if found:  # the next migration (of the survivor, or of a fresh target) must work and remove them
            self._migrated_unkilled(f"{what}, then the next migration")
            self.report.leftovers_after_next_run += sum(self._real_leftovers(orig, False).values())

    def _began(self) -> bool:
        """Whether this round's receiver started a migration (an authenticated source said hello)."""
        return "migration of pid" in (self.work / "receive.err").read_text(errors="replace")

    def _describe(self, copy: int | None) -> str:
        """The second host's processes but its init and ``copy``: pid there, state, tracer, command."""
        out = []
        for pid, inside in self.host.processes().items():
            if pid in (self.host.init_pid, copy):
                continue
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[-60:]
                out.append(f"{inside} ({_status(pid, 'State')}, tracer {_status(pid, 'TracerPid')}, ppid "
                           f"{_status(pid, 'PPid')}: {cmd.strip()})")
            except FileNotFoundError:
                continue
        return "; ".join(out)

    def _real_leftovers(self, orig: int, copy_ran: bool) -> Counter:
        """What a killed migration left besides the one copy (see the module docstring)."""
        found: Counter = Counter()
        if alive(orig):
            found.update(_leftovers(orig, self.work))
            found["parked tracker"] = found.pop("extra userfaultfd", 0) + sum(
                os.readlink(f"/proc/{orig}/fd/{fd}") == "anon_inode:[userfaultfd]"
                for fd in os.listdir(f"/proc/{orig}/fd") if os.path.lexists(f"/proc/{orig}/fd/{fd}"))
        found["migrate work dir"] = sum(1 for p in self.work.glob(f".ckpt-migrate-{orig}.*.tmp"))
        store = self.work / "received"
        stores = ([p for p in store.iterdir() if p.is_dir() and not p.name.startswith(".")]  # (not .journal)
                  if store.exists() else [])
        found["receiver store"] += sum(1 for p in stores if not (p / ".running").exists())
        return +found

    def _judge(self, what: str, expect: str | None = None) -> tuple[str, Counter]:
        """After a migration: exactly one copy must run (module docstring).  The outcome and the leftovers;
        the target is the survivor, or a fresh one when the copy survived (ended after its check)."""
        orig = self.target.pid
        inside = {v: k for k, v in self.host.processes().items()}
        copy = inside.get(orig) if orig != 1 else None
        if copy is not None and not alive(copy):
            copy = None
        held = _state(orig) == "T" and _status(orig, "TracerPid") == "0"
        if copy is not None and alive(orig) and not held:
            raise Harm(f"{what}: two copies run (the original {orig} and the copy {copy} in the second host)")
        if copy is None and not alive(orig):
            raise Harm(f"{what}: no copy is left (the original is gone and the second host has none: "
                       f"{self.host.processes()}; {(self.work / 'receive.err').read_text()[-600:]})")
        if expect is not None and (copy is None or held):
            raise Harm(f"{what}: an unkilled migration did not move the target")
        outcome = "ran on" if copy is None and not held else "migrated" if not held else "held"
        # nothing else in the second host: no helper, zombie or traced thread of the restore
        try:
            _wait(lambda: set(self.host.processes()) <= {self.host.init_pid, copy}, "")
        except Harm:
            raise Harm(f"{what}: processes left in the second host: {self._describe(copy)}") from None
        found = self._real_leftovers(orig, copy is not None)
        if held:  # in doubt: resolved by --recover, whose answer must be what runs in the second host
            self._recover(what, orig, copy is not None)
        if copy is None:
            self.target.check(what)
        else:
            _wait(lambda: not alive(orig), f"{what}: the original {orig} is not gone")
            self.target.adopt(copy)
            self.target.check(what)
            self.target.end()
            _wait(lambda: not alive(copy), f"{what}: the copy is gone")
            self.target = Target(self.work, self.target.npages)
            self.chain_dirs = []
            for p in (self.work / "received").glob(f"{orig}-*"):  # the migration's own (a whole image)
                if (p / ".running").exists():
                    shutil.rmtree(p, ignore_errors=True)
        return outcome, found

    def _recover(self, what: str, orig: int, copy_runs: bool) -> None:
        """Resolve an in-doubt switch-over as a user would: the receiver's journal read where it ran
        (`receive --outcome ID`: the round's receiver is gone), its answer given to `migrate --recover`."""
        from ckpt.track.base import state_dir
        from hosts import ckpt_argv

        record = Path(state_dir()) / "migrate" / f"{orig}.json"
        if not record.exists():
            raise Harm(f"{what}: the original is held stopped, but no record of its migration is left")
        migration = json.loads(record.read_text())["migration"]
        asked = self.host.run(ckpt_argv("receive", "-D", self.work / "received", "--outcome", migration),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        out, err = asked.communicate(timeout=PATIENCE)
        answer = out.strip()
        if answer != ("running" if copy_runs else "not running"):
            raise Harm(f"{what}: the receiver's journal says {answer!r} ({err.strip()}) but the copy "
                       f"{'runs' if copy_runs else 'does not run'}")
        res = subprocess.run([*CKPT, "migrate", "--recover", "-t", str(orig), "--outcome", answer.replace(" ", "-")],
                             stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=PATIENCE)
        if res.returncode != 0 or record.exists():
            raise Harm(f"{what}: migrate --recover failed: {res.stderr.strip()}")

    def _sized(self, npages: int) -> None:
        """The target, with ``npages`` pages (a new one if it has another size)."""
        if self.target.npages != npages:
            pid = self.target.pid
            self.target.end()
            _wait(lambda: not os.path.exists(f"/proc/{pid}"), "the resized target's pid is free")
            self.target = Target(self.work, npages)
            self.chain_dirs = []

    def _chained(self, argv: list[str]) -> None:
        """A pre-dump completed: it grew the chain (with a parent) or started a new one."""
        made = Path(argv[argv.index("-D") + 1])
        self.chain_dirs = [*self.chain_dirs, made] if "--prev-images-dir" in argv else [made]

    def _prune(self) -> None:
        """Keep the work directory small: old images go (the chain's last pre-dump stays)."""
        dirs = sorted((p for p in self.work.iterdir() if p.is_dir() and p.name[:4] in ("img-", "pre-")),
                      key=lambda p: int(p.name.split("-")[1]))
        for p in dirs[:-3]:
            if p not in self.chain_dirs:
                shutil.rmtree(p, ignore_errors=True)

    def close(self) -> None:
        self.target.end()
        if self.receiver is not None and self.receiver.poll() is None:
            self.receiver.kill()
            self.receiver.wait()
        if self.host is not None:
            self.host.close()


def run(kills: int, mib: int, seed: int, ops: tuple[str, ...] = OPS, work: Path | None = None,
        progress: bool = False, real_mib: int = 32) -> Report:
    """Kill ckpt ``kills`` times; the report."""
    build_c(SOURCE, BINARY, "-pthread")
    own = work is None
    work = Path(tempfile.mkdtemp(prefix="ckpt-stress-")) if work is None else work
    os.chmod(work, 0o700)
    t0 = time.monotonic()
    s = Stress(work, mib * 256, seed, ops, real_mib * 256)
    s.verbose = progress
    try:
        s.calibrate()
        rounds = 0
        while s.report.kills < kills and rounds < kills * 4:
            rounds += 1
            before = s.report.kills
            s.round()
            if s.report.kills != before and s.report.kills % 25 == 0 and progress:
                print(f"  {s.report.kills} kills, {s.report.harmed} harmed, {time.monotonic() - t0:.0f} s", flush=True)
    finally:
        s.close()
        if own:
            shutil.rmtree(work, ignore_errors=True)
    s.report.seconds = time.monotonic() - t0
    return s.report


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kills", type=int, default=200)
    ap.add_argument("--mib", type=int, default=256, help="the target's memory (MiB)")
    ap.add_argument("--real-mib", type=int, default=32,
                    help="the target's memory for the real migrations (MiB; each kill costs a whole migration)")
    ap.add_argument("--seed", type=int, default=int(time.time()))
    ap.add_argument("--ops", default=",".join(OPS), help=f"commands to kill (default {','.join(OPS)})")
    ap.add_argument("--json", metavar="FILE")
    args = ap.parse_args()
    print(f"stress: {args.kills} kills of ckpt against a {args.mib} MiB self-checking target (seed {args.seed})",
          flush=True)
    report = run(args.kills, args.mib, args.seed, tuple(args.ops.split(",")), progress=True, real_mib=args.real_mib)
    print(report.text())
    if args.json:
        Path(args.json).write_text(json.dumps({"seed": args.seed, "mib": args.mib, **report.as_dict()}, indent=2))
    return 0 if report.harmed == 0 and report.leftovers_after_next_run == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
