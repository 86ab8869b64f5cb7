"""What `make test-kernels` tries on each kernel, run inside the guest (or on this host) as a user would.

    python tests/kernels/cases.py CASE [--track uffd-wp|soft-dirty|hash]

CASE is one of:

* ``check``: ``ckpt check --json``; its exit status and the tracking back-ends it found.
* ``c-threads``: ``ckpt dump`` then ``ckpt restore -d`` of scenarios/cr_target.c with 4 worker
  threads (memory, vector registers, tids, fds, rlimits, signals: it checks itself on SIGUSR1).
* ``python``: the same for scenarios/py_state.py (an interpreter's heap, checked by digest).
* ``chain``: scenarios/mig_writer.c (2 writer threads that stamp pages with versions derived
  from their counters) under two ``pre-dump --track T`` while it writes, a final delta
  ``dump --prev-images-dir``, ``restore``: every page and counter is checked by the target.
  The second pre-dump copies no more pages than were written since the first.
* ``merge``: one pre-dump and a final delta with the kernel's default back-end, ``ckpt merge``,
  and a restore of the merged image alone (the chain removed).
* ``dropped``: tests/e2e/test_dropped_pages.py (pages dropped with MADV_DONTNEED, small and a
  THP, then written or read, in a chain: every back-end × page listing this kernel has).
* ``fidelity``: tests/e2e/test_fd_kinds.py (pidfds, O_PATH, /proc files, epoll watches of closed
  numbers, pipes whose other end is closed or open through two open files), and one test of each
  kind of file, terminal and socket state whose kernel side differs between kernels (FIDELITY:
  locks, ptys, ghost files, AIO, status flags, socket options, TCP queues, unix sockets), each
  restore checked by ckpt's self-check; one pytest run.

Prints the ckpt commands run and their output, and last a line ``CASE-RESULT {json}`` (ok,
detail, seconds, extra figures); exits 0 when the case passed.  Images go to a temp dir.
The targets are built beforehand on the host (tests/targets.py; the guest sees the binaries).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
REPO = TESTS.parent
sys.path.insert(0, str(TESTS))

from forked import run_forked  # noqa: E402
from targets import build_c, python_argv  # noqa: E402

CKPT = [sys.executable, "-m", "ckpt.cli"]
#: Only a guard against a hang: a TCG guest runs 20-30x slower than the host, on a loaded machine.
GUARD = 900.0
PR_SET_CHILD_SUBREAPER = 36


class CaseFailed(Exception):
    """The case failed; the message says where, in one line."""


def ckpt(*args: object, pass_fds: tuple[int, ...] = ()) -> subprocess.CompletedProcess[str]:
    """Run a ckpt command (:func:`forked.run_forked`); its output goes to our output, a failure raises with its error line."""
    argv = ["--debug", *map(str, args)]  # an internal error comes with its traceback
    t0 = time.monotonic()
    try:
        rc, stdout, stderr = run_forked(argv, pass_fds, GUARD)
    except TimeoutError as e:
        raise CaseFailed(str(e)) from None
    p = subprocess.CompletedProcess([*CKPT, *argv], rc, stdout, stderr)
    print(f"$ ckpt {' '.join(map(str, args))}  # exit {p.returncode}, {time.monotonic() - t0:.1f}s", flush=True)
    for stream in (p.stdout, p.stderr):
        if stream.strip():
            print("  " + stream.strip().replace("\n", "\n  "), flush=True)
    if p.returncode != 0:
        last = [ln for ln in p.stderr.splitlines() if ln.strip()] or [f"exit {p.returncode}"]
        err = next((ln for ln in reversed(last) if ln.startswith("ckpt:")), last[-1]).strip()
        frames = [ln.strip() for ln in last if ln.strip().startswith('File "')]
        if frames:  # where an internal error came from
            err += f" [{frames[-1].replace(str(REPO) + '/', '')}]"
        raise CaseFailed(f"ckpt {args[0]} failed (exit {p.returncode}): {err}")
    return p


class Lines:
    """Lines a target writes into a pipe we hold the read end of."""

    def __init__(self, fd: int) -> None:
        self.fd, self.buf, self.seen = fd, b"", []

    def next(self, prefix: str) -> str:
        deadline = time.monotonic() + GUARD
        while True:
            while b"\n" in self.buf:
                line, self.buf = self.buf.split(b"\n", 1)
                text = line.decode(errors="replace")
                self.seen.append(text)
                if text.startswith(prefix):
                    return text
                if "FAIL" in text.split(" ", 2)[:2]:
                    raise CaseFailed(f"the target reports: {text}")
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.fd], [], [], left)[0]:
                raise CaseFailed(f"no {prefix!r} line from the target (last: {self.seen[-3:]})")
            chunk = os.read(self.fd, 65536)
            if not chunk:
                raise CaseFailed(f"the target's stdout closed before {prefix!r} (last: {self.seen[-3:]})")
            self.buf += chunk

    def drain(self) -> None:
        while select.select([self.fd], [], [], 0)[0]:
            if not os.read(self.fd, 65536):
                break
        self.buf = b""


def fields(line: str) -> dict[str, str]:
    return dict(w.split("=", 1) for w in line.split() if "=" in w)


class Target:
    """A target started with its stdout on a pipe; after a restore, on a new pipe we hand over."""

    def __init__(self, argv: list[str]) -> None:
        r, w = os.pipe()
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=w, stderr=subprocess.DEVNULL,
                                     start_new_session=True, cwd=tempfile.gettempdir())
        os.close(w)
        self.pid = self.proc.pid
        self.out = Lines(r)
        self.pipe = os.readlink(f"/proc/{self.pid}/fd/1")

    def dumped(self) -> None:
        """The dump ended the process: reap it, and never let Popen wait on the pid (it comes back)."""
        self.proc.wait(timeout=GUARD)
        os.close(self.out.fd)

    def restore(self, image: Path) -> None:
        """``ckpt restore -d`` the image, its stdout pipe replaced by a new one of ours."""
        r, w = os.pipe()
        try:
            ckpt("restore", "-D", image, "-d", "--inherit-fd", f"fd[{w}]:{self.pipe}", pass_fds=(w,))
        finally:
            os.close(w)
        self.out = Lines(r)  # self.pipe stays the name the images know (a merged image too)
        if not os.path.exists(f"/proc/{self.pid}"):
            raise CaseFailed(f"restore exited 0 but pid {self.pid} is not there")

    def check(self) -> dict[str, str]:
        """Ask the target to check itself (SIGUSR1): the fields of its CHECK PASS line."""
        self.out.drain()
        os.kill(self.pid, signal.SIGUSR1)
        line = self.out.next("CHECK")
        if not line.startswith("CHECK PASS"):
            raise CaseFailed(f"the target's self-check: {line}")
        return fields(line)

    def kill(self) -> None:
        """End it and reap it (restored ones are our children as subreaper, or gone already)."""
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        try:
            os.waitpid(self.pid, 0)
        except ChildProcessError:
            deadline = time.monotonic() + GUARD
            while os.path.exists(f"/proc/{self.pid}") and time.monotonic() < deadline:
                time.sleep(0.05)


def case_check(tmp: Path, track: str | None) -> dict:
    p = subprocess.run([*CKPT, "check", "--json"], cwd=REPO, capture_output=True, text=True, timeout=GUARD)
    print(p.stdout[-3000:], p.stderr[-3000:], sep="\n")
    try:
        rep = json.loads(p.stdout)
    except ValueError:
        raise CaseFailed(f"ckpt check --json exited {p.returncode} without JSON: {p.stderr.strip()[-300:]}") from None
    probes = {pr["name"]: pr for pr in rep["probes"]}
    backends = [b for b, probe in (("uffd-wp", "userfaultfd WP_ASYNC"), ("soft-dirty", "soft-dirty"))
                if probes.get(probe, {}).get("ok")] + ["hash"]
    extra = {"kernel": rep["kernel"], "backends": backends, "default": rep.get("tracking"),
             "pagemap_scan": bool(probes.get("PAGEMAP_SCAN", {}).get("ok")), "exit": p.returncode}
    if p.returncode != 0 or not rep.get("can_dump_restore"):
        raise CaseFailed(f"ckpt check exited {p.returncode}, can_dump_restore={rep.get('can_dump_restore')}", extra)
    return extra


def _queue_usr2(pid: int) -> None:
    """One SIGUSR2, blocked in every thread of cr_target, left pending: its check wants it (and the image carries it)."""
    os.kill(pid, signal.SIGUSR2)
    deadline = time.monotonic() + GUARD
    while not _pending(pid) & (1 << (signal.SIGUSR2 - 1)):
        if time.monotonic() > deadline:
            raise CaseFailed("SIGUSR2 never became pending")
        time.sleep(0.01)


def _pending(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return int(next(ln.split()[1] for ln in f if ln.startswith("ShdPnd:")), 16)


def _dump_restore(tmp: Path, t: Target, first: dict[str, str]) -> dict:
    ckpt("dump", "-t", t.pid, "-D", tmp / "img")
    t.dumped()
    if os.path.exists(f"/proc/{t.pid}"):
        raise CaseFailed(f"pid {t.pid} still exists after the dump ended it")
    t.restore(tmp / "img")
    try:
        after = t.check()
        tids = sorted(os.listdir(f"/proc/{t.pid}/task"), key=int)
    finally:
        t.kill()
    return {"before": first, "after": after, "tids": tids}


def case_c_threads(tmp: Path, track: str | None) -> dict:
    t = Target([str(build_c("cr_target")), str(tmp / "result"), "4"])
    try:
        t.out.next("READY")
        first = fields(t.out.next("PASS"))  # its self-check on SIGUSR1 runs once (SIGUSR2 is handled once)
        tids = sorted(os.listdir(f"/proc/{t.pid}/task"), key=int)
        _queue_usr2(t.pid)  # pending at the dump: the restored process must have it
        res = _dump_restore(tmp, t, first)
    finally:
        t.kill()
    if int(res["after"]["round"]) <= int(first["round"]):
        raise CaseFailed(f"the round counter did not carry on: {first} then {res['after']}")
    if int(res["after"]["threads"]) != len(tids) or res["tids"] != tids:
        raise CaseFailed(f"threads: {res['after']['threads']} ({res['tids']}) after the restore, {tids} before")
    return {"threads": len(tids)}


def case_python(tmp: Path, track: str | None) -> dict:
    t = Target(python_argv("py_state.py"))
    try:
        ready = fields(t.out.next("READY"))
        res = _dump_restore(tmp, t, t.check())
    finally:
        t.kill()
    if res["after"]["digest"] != ready["digest"]:
        raise CaseFailed(f"digest {res['after']['digest']} != {ready['digest']}")
    return {}


NPAGES, WRITERS, RATE = 1024, 2, 5  # 4 MiB; 2 threads x 5 page writes/s: few pages dirty between two images
STEP = 20  # page writes the target makes between two images


def _progress(t: Target, since: int, writes: int) -> int:
    """Check the target until it has made WRITES more page writes than SINCE; its total."""
    while True:
        total = int(t.check()["total"])
        if total >= since + writes:
            return total
        time.sleep(0.2)


def _stats(path: Path) -> dict:
    return json.loads(path.read_text())


def _chain(tmp: Path, t: Target, track: str | None, predumps: int) -> dict:
    """PREDUMPS pre-dumps (the target writing), a final delta dump: the images' page counts.

    The first pre-dump must copy every page of the writers' area; a later one at most the
    pages written since the one before (the writes the target counted in between) plus what
    else the process has (its stacks, tables: the first image's pages beyond the area).
    """
    opts = ["--track", track] if track else []
    totals = [_progress(t, 0, 1)]  # [0]: before pre-dump 1; [i]: after pre-dump i
    pages: list[int] = []
    parent: list[object] = []
    for i in range(1, predumps + 1):
        ckpt("pre-dump", "-t", t.pid, "-D", tmp / f"p{i}", *parent, *opts, "--json-stats", tmp / f"p{i}.json")
        pages.append(int(_stats(tmp / f"p{i}.json")["pages_stored"]))
        parent = ["--prev-images-dir", f"../p{i}"]
        totals.append(_progress(t, totals[-1], STEP))
        if i == 1 and pages[0] < NPAGES:
            raise CaseFailed(f"the first pre-dump copied {pages[0]} pages, fewer than the {NPAGES} the target wrote")
        # what pre-dump i copies was written after pre-dump i-1 began and before pre-dump i ended
        written = totals[i] - totals[i - 2] if i > 1 else 0
        if i > 1 and pages[-1] > written + (pages[0] - NPAGES):
            raise CaseFailed(f"pre-dump {i} copied {pages[-1]} pages; the target wrote at most {written} pages since "
                             f"pre-dump {i - 1} began and has {pages[0] - NPAGES} others: clean pages taken as written")
    total = totals[-1]
    ckpt("dump", "-t", t.pid, "-D", tmp / "final", *parent, *opts, "--json-stats", tmp / "final.json")
    t.dumped()
    return {"pages": [*pages, int(_stats(tmp / "final.json")["pages_stored"])], "writes_before_dump": total}


def _restored_ok(t: Target, image: Path, total: int) -> None:
    """Restore IMAGE; the target's self-check passes, no write seen before the dump is lost, it writes on."""
    t.restore(image)
    after = int(t.check()["total"])
    if after < total:
        raise CaseFailed(f"{after} writes after restoring {image.name}, {total} seen before the dump")
    _progress(t, after, 2)


def _writer_chain(tmp: Path, track: str | None, predumps: int) -> tuple[Target, dict]:
    """Start mig_writer and take a chain of it (:func:`_chain`); a failure leaves no tracking and no target."""
    t = Target([str(build_c("mig_writer")), str(NPAGES), str(WRITERS), str(RATE)])
    try:
        t.out.next("READY")
        return t, _chain(tmp, t, track, predumps)
    except BaseException:
        subprocess.run([*CKPT, "track", "-t", str(t.pid), "--stop"], cwd=REPO, capture_output=True)
        t.kill()
        raise


def case_chain(tmp: Path, track: str | None) -> dict:
    t, extra = _writer_chain(tmp, track, 2)
    try:
        _restored_ok(t, tmp / "final", extra["writes_before_dump"])
    finally:
        t.kill()
    return extra


def case_merge(tmp: Path, track: str | None) -> dict:
    """One pre-dump and the final delta (the default back-end), merged; the merged image alone restores."""
    t, extra = _writer_chain(tmp, track, 1)
    ckpt("merge", "-D", tmp / "final", "-o", tmp / "merged")
    shutil.rmtree(tmp / "final")
    shutil.rmtree(tmp / "p1")  # the merged image needs neither
    try:
        _restored_ok(t, tmp / "merged", extra["writes_before_dump"])
    finally:
        t.kill()
    return extra


def _pytest_file(tmp: Path, *tests: str) -> dict:
    """E2e tests (files or node ids) run on this kernel: pass and skip counts; CaseFailed if any failed (or none passed).

    We are not a subreaper meanwhile: a test's dumped tree leaves orphans (its children, killed by the
    dump), which must go to init to be reaped, or their pids stay taken for the restore."""
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)
    # The tests' tmp_path under /tmp, not under ``tmp``: a unix socket's path holds 107 bytes at most, and on
    # this host ``tmp`` is already deep in the kernel suite's own pytest temp tree.
    base = Path(tempfile.mkdtemp(prefix="ckpt-k-", dir="/tmp"))
    try:
        p = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs",
                            f"--basetemp={base}", *tests], cwd=REPO, capture_output=True, text=True,
                           stdin=subprocess.DEVNULL, timeout=GUARD, env={**os.environ, "TMPDIR": str(tmp)})
    finally:
        prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
        shutil.rmtree(base, ignore_errors=True)
    print(p.stdout[-4000:], p.stderr[-2000:], sep="\n", flush=True)
    summary = next((ln for ln in reversed(p.stdout.splitlines()) if " in " in ln and ("passed" in ln or
                                                                                      "failed" in ln)), "")
    counts = {w: int(n) for n, w in (pair.split()[:2] for pair in summary.split(" in ")[0].split(", ")
                                     if pair.split()[0].isdigit())}
    if p.returncode != 0 or not counts.get("passed"):
        raise CaseFailed(f"{' '.join(Path(t).name for t in tests)}: exit {p.returncode}: {summary or p.stderr.strip()[-300:]}")
    return {"passed": counts.get("passed", 0), "skipped": counts.get("skipped", 0)}


def case_dropped(tmp: Path, track: str | None) -> dict:
    """tests/e2e/test_dropped_pages.py on this kernel: MADV_DONTNEED'd small pages and a zapped THP, then
    written or only read, in a chain of every back-end × page listing the kernel has (the rest skip)."""
    return _pytest_file(tmp, "tests/e2e/test_dropped_pages.py")


#: A representative of each kind of state issue 16 restores whose kernel side differs between kernels:
#: lock lists and OFD locks, pty ioctls (TIOCGPTPEER, packet mode, TIOCGPTLCK), ghost files' holes
#: (SEEK_DATA), the AIO ring's layout, memfd seals and status flags, every socket option getsockopt has,
#: TCP queues and listener backlogs (TCP_INFO, inet_diag), unix_diag of every unix socket kind.
FIDELITY = (
    "test_locks.py::test_every_kind_of_lock_round_trips_in_a_parent_and_its_child",
    "test_tty.py::test_pty_pairs_and_controlling_terminal_round_trip[kill]",
    "test_ghost.py::test_ghosts_round_trip",
    "test_aio_flags.py::test_an_aio_context_comes_back_at_its_address_with_its_slot_and_head",
    "test_aio_flags.py::test_every_descriptor_keeps_its_status_flags_fd_flags_seals_and_mode",
    "test_sockopts.py::test_options_a_program_set_come_back",
    "test_inet_check.py::test_what_the_dump_was_told_to_lose_is_allowed_exactly_that",
    "test_unix_sockets.py::test_bound_and_connected_datagrams_unconnected_seqpackets_and_reused_paths",
    "test_unix_sockets.py::test_listeners_with_accepted_and_waiting_connections_and_names",
)


def case_fidelity(tmp: Path, track: str | None) -> dict:
    """tests/e2e/test_fd_kinds.py and FIDELITY's e2e tests on this kernel, in one pytest run (its start-up is
    seconds in a guest): pipes whose other end is closed or reopened, pidfds (fdinfo ``Pid:``, pidfs or not),
    O_PATH descriptors, /proc files, epoll watches found with KCMP_EPOLL_TFD; then each restore's self-check
    compares the kernel's own account (fdinfo, /proc/locks, every sockopt, unix_diag, inet state and queues)
    with the dump's."""
    return _pytest_file(tmp, "tests/e2e/test_fd_kinds.py", *(f"tests/e2e/{t}" for t in FIDELITY))


CASES = {"check": case_check, "c-threads": case_c_threads, "python": case_python, "chain": case_chain,
         "merge": case_merge, "dropped": case_dropped,
         "fidelity": case_fidelity}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("case", choices=sorted(CASES))
    ap.add_argument("--track", choices=("uffd-wp", "soft-dirty", "hash"))
    a = ap.parse_args()
    # Restored processes (restore -d) become our children, so we reap them and their pids come free.
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    t0 = time.monotonic()
    out: dict = {"case": a.case, "track": a.track, "kernel": os.uname().release}
    with tempfile.TemporaryDirectory(prefix="ckpt-kernels-") as d:
        os.chmod(d, 0o700)
        try:
            out["extra"] = CASES[a.case](Path(d), a.track)
            out["ok"], out["detail"] = True, "ok"
        except CaseFailed as e:
            out["ok"], out["detail"] = False, str(e.args[0])
            if len(e.args) > 1:
                out["extra"] = e.args[1]
        except Exception as e:  # noqa: BLE001 - reported as the case's failure, with its type
            out["ok"], out["detail"] = False, f"{type(e).__name__}: {e}"
            import traceback
            traceback.print_exc()
    out["seconds"] = round(time.monotonic() - t0, 1)
    print("CASE-RESULT " + json.dumps(out), flush=True)
    return 0 if out["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
