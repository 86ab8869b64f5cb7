"""Between two kernels: dump on one, restore on the other, and live migration, between this host and a guest.

This host runs 6.18 ([vvar] + [vvar_vclock] + [vdso]); Debian 13's 6.12 in the guest has [vvar] + [vdso]
with its functions elsewhere, and its CPU (QEMU TCG ``-cpu max``) lacks features this host has and
enables others (XCR0 0x21f: MPX, PKRU).  Each case moves a process one way and has it check itself
after it called the vDSO on the other side (ckpt/resources/vdso.py routes the old vDSO to the new one):

* scenarios/vdso_clock.c, threads calling clock_gettime, gettimeofday, time, getcpu and clock_getres
  through glibc's cached vDSO pointers and checking each answer (on the host one spins in them, so the
  dump catches it inside the vDSO), a page pattern, and
* scenarios/py_clock.py, threads reading every clock, a heap checked by CRC-32.

How each side prepares its processes for the other machine: the guest's root has CAP_SYS_RESOURCE and
this host's does not, so a target started in the guest drops it (``setpriv --bounding-set``); a target
started here masks glibc's XSAVEC (the guest lacks it) and binds every symbol at start
(``LD_BIND_NOW``): glibc chose its code by this CPU's features, and its lazy-binding save area was
sized for this CPU's XSAVE layout.  The restore then relaxes the CPU check (``--cpu-cap none``); without
it, it is refused (a case checks that).  Files are the same paths on both sides (the guest sees this
host's / over 9p; a log the target writes lives in the guest's overlay there), so
``--allow-changed-files`` takes the log file whose size differs.  Targets report into a log file opened
with O_APPEND (a pipe could not go across).

``python tests/kernels/across.py STEP ...`` is one side's step (run here or in the guest); the host
side of each case (:class:`Across`) drives both.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
REPO = TESTS.parent
sys.path.insert(0, str(TESTS))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from forked import run_forked  # noqa: E402
from targets import build_c, python_argv  # noqa: E402

CKPT = [sys.executable, "-m", "ckpt.cli"]
#: Only a guard against a hang: the guest runs 20-30x slower than the host.
GUARD = 600.0
#: Where the host keeps what both sides must see at one path (this host's /tmp is not the guest's).
SHARED = Path("/var/tmp")
#: glibc settings of a target that is to run on the guest's CPU (module doc).
TO_GUEST_ENV = {"GLIBC_TUNABLES": "glibc.cpu.hwcaps=-XSAVEC", "LD_BIND_NOW": "1"}
CPU_CAP = ("--cpu-cap", "none")
#: The guest's port a receiver there listens on (forwarded from a free one of this host's).
GUEST_PORT = 7070


class StepFailed(Exception):
    """One side's step failed; the message says how."""


# ---------------------------------------------------------------------------------------------
# One side's steps (here or in the guest)
# ---------------------------------------------------------------------------------------------

def _target_argv(kind: str, spin: int) -> list[str]:
    if kind == "c":
        return [str(build_c("vdso_clock")), "2", str(spin)]
    return python_argv("py_clock.py")


def _start(kind: str, log: Path, spin: int) -> int:
    """Start the target (module doc: its capabilities and glibc settings), its stdout appended to LOG."""
    with open(log, "ab") as out:
        p = subprocess.Popen(["setpriv", "--bounding-set", "-sys_resource", *_target_argv(kind, spin)],
                             stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.DEVNULL,
                             start_new_session=True, env={**os.environ, **TO_GUEST_ENV}, close_fds=True)
    _wait_line(log, 0, "READY")
    return p.pid


def _wait_line(log: Path, offset: int, prefix: str, timeout: float = GUARD) -> str:
    """The first line of LOG after OFFSET that starts with PREFIX; StepFailed on a FAIL line or a timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open(log, "rb") as f:
            f.seek(offset)
            for raw in f.read().decode(errors="replace").splitlines():
                if raw.startswith(prefix):
                    return raw
                if raw.startswith(("FAIL", "CHECK FAIL")):
                    raise StepFailed(f"the target reports: {raw}")
        time.sleep(0.05)
    raise StepFailed(f"no {prefix!r} line in {log} within {timeout:.0f} s")


def _maps(pid: int) -> list[tuple[int, str, str]]:
    """(start, perms, name) of every mapping of ``pid``."""
    out = []
    with open(f"/proc/{pid}/maps") as f:
        for line in f:
            parts = line.split(None, 5)
            out.append((int(parts[0].split("-")[0], 16), parts[1], parts[5].strip() if len(parts) > 5 else ""))
    return out


def _vdso_at(pid: int) -> int:
    return next(start for start, _, name in _maps(pid) if name == "[vdso]")


def routed(pid: int, old_vdso: int) -> dict:
    """The restored process's vDSO is this kernel's, elsewhere, and a private copy of the old one (the proxy,
    ckpt/resources/vdso.py) sits at the old address: StepFailed if not."""
    maps = _maps(pid)
    new = next((start for start, _, name in maps if name == "[vdso]"), None)
    at_old = next(((perms, name) for start, perms, name in maps if start == old_vdso), None)
    if new is None or new == old_vdso or at_old != ("r-xp", ""):
        raise StepFailed(f"the vDSO was not routed: [vdso] at {new and hex(new)}, at the old {old_vdso:#x}: {at_old}")
    return {"old_vdso": hex(old_vdso), "new_vdso": hex(new)}


def check(pid: int, log: Path) -> str:
    """Have the target check itself (SIGUSR1): its CHECK PASS line."""
    if not os.path.exists(f"/proc/{pid}"):
        raise StepFailed(f"process {pid} is not there")
    offset = log.stat().st_size
    os.kill(pid, signal.SIGUSR1)
    return _wait_line(log, offset, "CHECK")


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        deadline = time.monotonic() + 30
        while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
            time.sleep(0.05)


def _ckpt(*args: object, timeout: float = GUARD) -> subprocess.CompletedProcess[str]:
    """A ckpt command, in a fork of this step (forked.py: a guest's restore step runs up to three)."""
    argv = ["--debug", *map(str, args)]
    try:
        rc, out, err = run_forked(argv, timeout=timeout)
    except TimeoutError as e:
        raise StepFailed(str(e)) from None
    return subprocess.CompletedProcess([*CKPT, *argv], rc, out, err)


def _error(p: subprocess.CompletedProcess[str]) -> str:
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    return next((ln for ln in reversed(lines) if ln.startswith("ckpt:")), lines[-1] if lines else f"exit {p.returncode}")


def step_dump(kind: str, log: Path, image: Path, spin: int) -> dict:
    """Start the target, let it check itself once, dump it (which ends it)."""
    pid = _start(kind, log, spin)
    first, vdso = check(pid, log), _vdso_at(pid)
    t0 = time.monotonic()
    p = _ckpt("dump", "-t", pid, "-D", image)
    if p.returncode != 0:
        _kill(pid)
        raise StepFailed(f"ckpt dump: {_error(p)}")
    return {"pid": pid, "first": first, "vdso": vdso, "dump_s": round(time.monotonic() - t0, 1)}


def step_migrate(kind: str, log: Path, to: str, token: Path, stats: Path, spin: int, track: str | None) -> dict:
    """Start the target, let it check itself once, migrate it to TO (a ``ckpt receive``), tracking with TRACK."""
    pid = _start(kind, log, spin)
    first, vdso = check(pid, log), _vdso_at(pid)
    p = _ckpt("migrate", "-t", pid, "--to", to, "--token-file", token, "--json-stats", stats, "-v",
              *(("--track", track) if track else ()))
    if p.returncode != 0:
        _kill(pid)
        raise StepFailed(f"ckpt migrate: {_error(p)}")
    return {"pid": pid, "first": first, "vdso": vdso, **_migration_figures(json.loads(stats.read_text()))}


def _migration_figures(s: dict) -> dict:
    return {k: s.get(k) for k in ("downtime_ms", "predicted_downtime_ms", "iterations", "bytes_sent", "total_ms",
                                  "restore_ms")}


def step_restore(image: Path, pid: int, log: Path, old_vdso: int, cpu_cap: bool, refused_first: bool) -> dict:
    """Verify the image (every page chunk's checksum), restore it here (``-d``): its vDSO is routed
    (:func:`routed`), the target checks itself three times, then it is ended.

    ``refused_first``: a restore without ``--cpu-cap`` must be refused first, with one ``ckpt:`` line."""
    p = _ckpt("verify", "-D", image)
    if p.returncode != 0:
        raise StepFailed(f"ckpt verify: {_error(p)}")
    out: dict = {}
    if refused_first:
        p = _ckpt("restore", "-D", image, "-d", "--allow-changed-files")
        err = _error(p)
        if p.returncode != 1 or "Traceback" in p.stderr or "lacks" not in err:
            raise StepFailed(f"a restore without --cpu-cap exited {p.returncode}: {err}")
        if os.path.exists(f"/proc/{pid}"):
            raise StepFailed(f"the refused restore left process {pid}")
        out["refused"] = err
    t0 = time.monotonic()
    p = _ckpt("restore", "-D", image, "-d", "--allow-changed-files", *(CPU_CAP if cpu_cap else ()))
    if p.returncode != 0:
        raise StepFailed(f"ckpt restore: {_error(p)}")
    out["restore_s"] = round(time.monotonic() - t0, 1)
    return {**out, **step_check(pid, log, old_vdso)}


def step_check(pid: int, log: Path, old_vdso: int) -> dict:
    """The target (restored or migrated here) has its vDSO routed and checks itself three times; then it is ended."""
    try:
        return {**routed(pid, old_vdso), "checks": [check(pid, log) for _ in range(3)]}
    finally:
        _kill(pid)


def step_main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="one side's step of a case between two kernels")
    sub = ap.add_subparsers(dest="step", required=True)
    d = sub.add_parser("dump")
    d.add_argument("kind", choices=("c", "python"))
    d.add_argument("log", type=Path)
    d.add_argument("image", type=Path)
    d.add_argument("--spin", type=int, default=0)
    m = sub.add_parser("migrate")
    m.add_argument("kind", choices=("c", "python"))
    m.add_argument("log", type=Path)
    m.add_argument("to")
    m.add_argument("token", type=Path)
    m.add_argument("stats", type=Path)
    m.add_argument("--spin", type=int, default=0)
    m.add_argument("--track")
    r = sub.add_parser("restore")
    r.add_argument("image", type=Path)
    r.add_argument("pid", type=int)
    r.add_argument("log", type=Path)
    r.add_argument("old_vdso", type=int)
    r.add_argument("--no-cpu-cap", action="store_true")
    r.add_argument("--refused-first", action="store_true")
    c = sub.add_parser("check")
    c.add_argument("pid", type=int)
    c.add_argument("log", type=Path)
    c.add_argument("old_vdso", type=int)
    a = ap.parse_args(argv)
    try:
        if a.step == "dump":
            res = step_dump(a.kind, a.log, a.image, a.spin)
        elif a.step == "migrate":
            res = step_migrate(a.kind, a.log, a.to, a.token, a.stats, a.spin, a.track)
        elif a.step == "restore":
            res = step_restore(a.image, a.pid, a.log, a.old_vdso, not a.no_cpu_cap, a.refused_first)
        else:
            res = step_check(a.pid, a.log, a.old_vdso)
        res["ok"] = True
    except StepFailed as e:
        res = {"ok": False, "detail": str(e)}
    print("STEP-RESULT " + json.dumps(res), flush=True)
    return 0 if res["ok"] else 1


# ---------------------------------------------------------------------------------------------
# The host side of each case
# ---------------------------------------------------------------------------------------------

class CaseFailed(Exception):
    """The case failed; the message says where."""


def _result(out: str, err: str, rc: int, where: str) -> dict:
    line = next((ln for ln in reversed(out.splitlines()) if ln.startswith("STEP-RESULT ")), None)
    if line is None:
        raise CaseFailed(f"{where}: no result (exit {rc}): {(err or out).strip()[-400:]}")
    res = json.loads(line[len("STEP-RESULT "):])
    if not res["ok"]:
        raise CaseFailed(f"{where}: {res['detail']}")
    return res


class Across:
    """The cases between this host and a booted guest ``g`` (guest.Guest, with ``fwd`` and ``guestfwd``)."""

    STEP = [sys.executable, str(Path(__file__).resolve())]

    def __init__(self, g, host_port: int) -> None:  # noqa: ANN001 - guest.Guest
        self.g, self.host_port = g, host_port
        self.guest_port_here = next(h for h, gp in g.ports.items() if gp == GUEST_PORT)
        self.dir = Path(tempfile.mkdtemp(prefix="ckpt-across-", dir=SHARED))  # seen by the guest at this path
        os.chmod(self.dir, 0o700)
        self.n = 0

    def close(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    def _fresh(self, name: str) -> Path:
        self.n += 1
        d = self.dir / f"{self.n}-{name}"
        d.mkdir(mode=0o700)
        return d

    def here(self, *args: object) -> dict:
        p = subprocess.run([*self.STEP, *map(str, args)], cwd=REPO, capture_output=True, text=True,
                           stdin=subprocess.DEVNULL, timeout=GUARD)
        print(p.stdout[-3000:], p.stderr[-3000:], sep="\n", flush=True)
        return _result(p.stdout, p.stderr, p.returncode, f"here: {args[0]}")

    def there(self, *args: object) -> dict:
        r = self.g.run([*self.STEP, *map(str, args)], cwd=REPO, timeout=GUARD)
        print(r.stdout[-3000:], r.stderr[-3000:], sep="\n", flush=True)
        return _result(r.stdout, r.stderr, r.rc, f"guest: {args[0]}")

    def to_guest(self, kind: str) -> dict:
        """Dump here, restore in the guest (refused first without --cpu-cap, for the C target)."""
        d = self._fresh(f"{kind}-to-guest")
        log = d / "log"
        dumped = self.here("dump", kind, log, d / "img", "--spin", 1 if kind == "c" else 0)
        restored = self.there("restore", d / "img", dumped["pid"], log, dumped["vdso"],
                              *(["--refused-first"] if kind == "c" else []))
        return {"dump_s": dumped["dump_s"], "restore_s": restored["restore_s"], "refused": restored.get("refused"),
                "new_vdso": restored["new_vdso"]}

    def from_guest(self, kind: str) -> dict:
        """Dump in the guest (into the share both see), restore here."""
        d = self._fresh(f"{kind}-from-guest")
        log = d / "log"
        log.touch()  # the guest appends to its overlay copy; here the restore reopens this one
        name = f"img-{self.n}"
        dumped = self.there("dump", kind, log, f"{_xfer_mount()}/{name}")
        try:
            restored = self.here("restore", self.g.xfer / name, dumped["pid"], log, dumped["vdso"])
        finally:
            shutil.rmtree(self.g.xfer / name, ignore_errors=True)
        return {"dump_s": dumped["dump_s"], "restore_s": restored["restore_s"], "new_vdso": restored["new_vdso"]}

    def migrate_to_guest(self, kind: str) -> dict:
        """``ckpt migrate`` here to a ``ckpt receive --once`` in the guest (hostfwd)."""
        d = self._fresh(f"migrate-{kind}-to-guest")
        token = _token(d)
        rid = self.g.submit([*CKPT, "receive", "--listen", f"0.0.0.0:{GUEST_PORT}", "-D", "/tmp/ckpt-rx",
                             "--token-file", token, "--once", "--allow-changed-files", *CPU_CAP],
                            cwd=REPO, timeout=GUARD)
        self._wait_listening(rid)
        try:
            moved = self.here("migrate", kind, d / "log", f"127.0.0.1:{self.guest_port_here}", token,
                              d / "stats.json", "--spin", 1 if kind == "c" else 0)
        finally:
            rx = self.g.wait(rid, timeout=GUARD)
            print("receive:", rx.rc, rx.stderr[-2000:], flush=True)
        if rx.rc != 0:
            raise CaseFailed(f"ckpt receive in the guest exited {rx.rc}: {rx.stderr.strip()[-300:]}")
        self.there("check", moved["pid"], d / "log", moved["vdso"])
        return {k: moved[k] for k in moved if k not in ("ok", "first", "pid", "vdso")}

    def migrate_from_guest(self, kind: str, track: str | None = None) -> dict:
        """``ckpt migrate`` in the guest (tracking with ``track``) to a ``ckpt receive --once`` here (guestfwd)."""
        d = self._fresh(f"migrate-{kind}-from-guest")
        token = _token(d)
        log = d / "log"
        log.touch()
        err = d / "receive.err"
        with open(err, "wb") as e:
            rx = subprocess.Popen([*CKPT, "receive", "--listen", f"127.0.0.1:{self.host_port}", "-D", d / "rx",
                                   "--token-file", token, "--once", "--allow-changed-files", *CPU_CAP],
                                  cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=e)
        try:
            deadline = time.monotonic() + 60
            while "listening on" not in err.read_text() and rx.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            name = f"stats-{self.n}.json"
            moved = self.there("migrate", kind, log, f"{_host_from_guest()}:{self.host_port}", token,
                               f"{_xfer_mount()}/{name}", *(("--track", track) if track else ()))
            rc = rx.wait(timeout=GUARD)
        finally:
            if rx.poll() is None:
                rx.kill()
                rx.wait()
        print("receive:", rc, err.read_text()[-2000:], flush=True)
        if rc != 0:
            raise CaseFailed(f"ckpt receive here exited {rc}: {err.read_text().strip()[-300:]}")
        self.here("check", moved["pid"], log, moved["vdso"])
        return {k: moved[k] for k in moved if k not in ("ok", "first", "pid", "vdso")}

    def _wait_listening(self, rid: str) -> None:
        err = self.g.xfer / "res" / f"{rid}.err"
        deadline = time.monotonic() + GUARD
        while time.monotonic() < deadline:
            if err.exists() and "listening on" in err.read_text(errors="replace"):
                return
            if (self.g.xfer / "res" / f"{rid}.json").exists():
                break
            time.sleep(0.1)
        r = self.g.wait(rid, timeout=10)
        raise CaseFailed(f"ckpt receive in the guest did not listen (exit {r.rc}): {r.stderr.strip()[-300:]}")


def _token(d: Path) -> Path:
    sys.path.insert(0, str(REPO))
    from ckpt.migrate.wire import save_token

    path = d / "token"
    save_token(path)
    return path


def _xfer_mount() -> str:
    from guest import XFER_MOUNT

    return XFER_MOUNT


def _host_from_guest() -> str:
    from guest import HOST_FROM_GUEST

    return HOST_FROM_GUEST


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


#: The cases, by name: (method, its arguments).
CASES = {
    "c-to-guest": ("to_guest", ("c",)), "c-from-guest": ("from_guest", ("c",)),
    "python-to-guest": ("to_guest", ("python",)), "python-from-guest": ("from_guest", ("python",)),
    "migrate-c-to-guest": ("migrate_to_guest", ("c",)), "migrate-c-from-guest": ("migrate_from_guest", ("c",)),
    "migrate-python-to-guest": ("migrate_to_guest", ("python",)),
    "migrate-python-from-guest": ("migrate_from_guest", ("python",)),
    "migrate-c-from-guest-soft-dirty": ("migrate_from_guest", ("c", "soft-dirty")),
}
#: Which cases run with which guest: every one with Debian 13's 6.12; Debian 12's 6.1 (no PAGEMAP_SCAN,
#: no uffd-wp) as the source of a migration tracked with soft-dirty.
KERNEL_CASES = {"6.12": [c for c in CASES if not c.endswith("soft-dirty")], "6.1": ["migrate-c-from-guest-soft-dirty"]}


if __name__ == "__main__":
    sys.exit(step_main())
