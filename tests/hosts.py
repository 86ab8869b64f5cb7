"""A second "host" on this machine, for tests that move a process between hosts (DESIGN §6).

:class:`SecondHost` is a network namespace joined to the host by a veth pair
(host side ``10.201.N.1/24``, inside ``10.201.N.2/24``, loopback up, default
route back through the host) plus a PID and mount namespace whose first
process — the *init* — is a long-lived sleeper.  Commands run inside all three
namespaces with ``nsenter -t INIT -p -m -n``: such a process is a child of
nsenter, not of the init, so it outlives the command that started it, and a
process restored there can take the pid it had on the host (the pid numbers of
the new PID namespace start at 1) while the original still runs on the host.

What the inside sees:

* ``/proc`` is a proc mounted for the new PID namespace (``unshare
  --mount-proc``; the mount namespace is private, nothing leaks out), so
  ``/proc/PID`` and ``getpid()`` agree inside, ``/proc/sys/kernel/ns_last_pid``
  and (Linux 6.14+) ``pid_max`` are the namespace's own;
* ``/sys`` is remounted for the network namespace (like ``ip netns exec``);
* every other file is shared with the host: image directories and pytest's
  ``tmp_path`` are visible at the same paths on both sides;
* the init ignores SIGCHLD, so orphans reparented to it (a ``restore -d``'s
  process once the restorer exits) are reaped when they exit.

A host can also outlive one test: ``python tests/hosts.py up`` starts one detached
and records it in :data:`STATE` (``make second-host``; ``make test`` does it for the
whole run), ``exec -- CMD`` runs a command inside it, ``down`` ends it.  The
``second_host`` fixture attaches to that one when ``CKPT_SECOND_HOST`` names its
state file (its close then kills only what runs inside, the init excepted) and
builds a host of its own otherwise.

Nothing is left behind: the teardown SIGKILLs the init — the kernel then kills
every process of the PID namespace — and deletes the veth; the network
namespace is not named (no ``/run/netns`` entry), so it ends with its last
process.  If the test process itself dies, ``unshare`` gets SIGKILL
(PR_SET_PDEATHSIG) and its ``--kill-child`` takes the init down with it.

The pids a caller sees: :meth:`SecondHost.run` returns the Popen of
``nsenter`` (a process of the host); :meth:`pid_inside` / :meth:`host_pid`
translate between a process's host pid and its pid inside through ``NSpid``.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

__all__ = ["SecondHost", "ckpt_argv", "REPO", "STATE"]

REPO = Path(__file__).resolve().parent.parent
_LOCK = "/run/lock/ckpt-second-host.lock"  # serialises subnet choice between parallel runs
_PREFIX = "10.201"
_PR_SET_PDEATHSIG = 1
#: Where ``up`` records a detached host (init pid, addresses, interfaces) for ``down``, ``exec`` and the tests.
STATE = "/run/ckpt/second-host.json"

#: The init of the namespace: ignore SIGCHLD (orphans reparented to it are reaped), sleep for ever.
_INIT_CODE = "import signal, time\nsignal.signal(signal.SIGCHLD, signal.SIG_IGN)\nwhile True:\n    time.sleep(3600)\n"


def ckpt_argv(*args: str | int | os.PathLike[str]) -> list[str]:
    """argv of the ckpt CLI under this interpreter (absolute path: valid inside a second host too)."""
    return [sys.executable, "-m", "ckpt.cli", *(str(a) if isinstance(a, int) else os.fspath(a) for a in args)]


def _pdeathsig() -> None:  # preexec_fn: SIGKILL this child when the test process dies
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _nspid(pid: int) -> list[int]:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("NSpid:"):
                return [int(x) for x in line.split()[1:]]
    raise RuntimeError(f"/proc/{pid}/status has no NSpid line")


class SecondHost:
    """A second host: own network (veth), PID and mount namespaces; a context manager.

    ``with SecondHost() as host: host.run([...])``.  Attributes once started:
    ``address`` (the inside IP, e.g. ``10.201.0.2``), ``host_address`` (the
    host end, ``10.201.0.1``), ``init_pid`` (the init's pid on the host),
    ``veth_host`` / ``veth_inside`` (interface names).  ``pytest.skip``s when
    the namespaces or the veth cannot be created here.
    """

    def __init__(self, subnet: int | None = None, *, same_network: bool = False) -> None:
        """``same_network``: a PID and mount namespace only, in this host's network namespace (a restart
        on the same host: no veth, :attr:`address` is 127.0.0.1)."""
        self.same_network = same_network
        self._want_subnet = subnet
        self.subnet: int | None = None
        self.address = ""
        self.host_address = ""
        token = secrets.token_hex(4)
        self.veth_host = f"ck{token}h"  # 11 characters: under IFNAMSIZ
        self.veth_inside = f"ck{token}n"
        self.init_pid = 0
        self.level = 0  # depth of our PID namespace: the index of the inside pid in NSpid
        self._unshare: subprocess.Popen[bytes] | None = None
        self._children: list[subprocess.Popen] = []
        self._closed = False
        self._attached = False  # a host that ``up`` started: close() clears it instead of ending it

    # --- set-up ----------------------------------------------------------------------------------

    def __enter__(self) -> "SecondHost":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self, *, detached: bool = False) -> "SecondHost":
        """Create the namespaces and the veth; a second call on a running host does nothing.

        ``detached``: the namespace outlives this process (no death signal, own
        session) — for ``up``, which records it with :meth:`save`.
        """
        if self._closed:
            raise RuntimeError("second host: closed; make a new SecondHost")
        if self.init_pid:
            return self
        missing = [tool for tool in ("unshare", "nsenter", "ip") if shutil.which(tool) is None]
        if missing:
            pytest.skip(f"second host: {', '.join(missing)} not installed (util-linux, iproute2)")
        if os.geteuid() != 0:
            pytest.skip("second host: creating namespaces and a veth pair needs root")
        try:
            self._start_init(detached)
            if self.same_network:
                self.address = self.host_address = "127.0.0.1"
            else:
                self._start_network()
                self._remount_sys()
        except _Unavailable as exc:
            self.close()
            pytest.skip(f"second host: {exc}")
        except BaseException:
            self.close()
            raise
        return self

    def _start_init(self, detached: bool) -> None:
        argv = ["unshare", "--pid", *([] if self.same_network else ["--net"]), "--mount-proc", "--fork",
                "--kill-child", sys.executable, "-c", _INIT_CODE]
        how: dict[str, object] = {"start_new_session": True} if detached else {"preexec_fn": _pdeathsig}
        with tempfile.TemporaryFile() as err:  # not a pipe: nothing long-lived may write into one we closed
            self._unshare = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                             stderr=err, close_fds=True, **how)  # type: ignore[call-overload]
            self._wait_init(err)

    def _wait_init(self, err) -> None:  # noqa: ANN001
        assert self._unshare is not None
        deadline = time.monotonic() + 10
        while True:
            if self._unshare.poll() is not None:
                err.seek(0)
                why = err.read().decode(errors="replace").strip() or f"exit {self._unshare.returncode}"
                raise _Unavailable(f"unshare --pid --net --mount-proc failed: {why}")
            init = self._find_init()
            if init:
                self.init_pid = init
                break
            if time.monotonic() > deadline:
                raise RuntimeError("second host: the init of the new PID namespace did not appear within 10 s")
            time.sleep(0.005)
        self.level = len(_nspid(self.init_pid)) - 1
        # The init has exec'ed Python only when /proc/INIT/exe is no longer unshare: only then is /proc mounted.
        deadline = time.monotonic() + 10
        while os.path.basename(os.readlink(f"/proc/{self.init_pid}/exe")).startswith("unshare"):
            if time.monotonic() > deadline:
                raise RuntimeError("second host: the init did not exec within 10 s")
            time.sleep(0.005)

    def _find_init(self) -> int:
        """The child of our unshare (no /proc/PID/task/TID/children on every kernel: scan PPid)."""
        assert self._unshare is not None
        want = f"PPid:\t{self._unshare.pid}\n"
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            try:
                with open(f"/proc/{name}/status") as f:
                    if want in f.read():
                        return int(name)
            except OSError:
                continue
        return 0

    def _start_network(self) -> None:
        os.makedirs(os.path.dirname(_LOCK), exist_ok=True)  # (a kernel guest's /run has no lock/)
        fd = os.open(_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            self.subnet = self._pick_subnet()
            self.host_address = f"{_PREFIX}.{self.subnet}.1"
            self.address = f"{_PREFIX}.{self.subnet}.2"
            for _ in range(5):  # a name clash (a leftover interface) is retried under new names
                res = subprocess.run(["ip", "link", "add", self.veth_host, "type", "veth", "peer", "name",
                                      self.veth_inside, "netns", str(self.init_pid)],
                                     stdin=subprocess.DEVNULL, capture_output=True, text=True, close_fds=True)
                if res.returncode == 0 or "File exists" not in res.stderr:
                    break
                token = secrets.token_hex(4)
                self.veth_host, self.veth_inside = f"ck{token}h", f"ck{token}n"
            if res.returncode != 0:
                raise _Unavailable(f"cannot create a veth pair: {res.stderr.strip()}")
            _ip("addr", "add", f"{self.host_address}/24", "dev", self.veth_host)
            _ip("link", "set", self.veth_host, "up")
        finally:
            os.close(fd)  # releases the lock: our address is on an interface now
        inside = ["nsenter", "-t", str(self.init_pid), "-n", "ip"]
        _ip("link", "set", "lo", "up", ip=inside)
        _ip("addr", "add", f"{self.address}/24", "dev", self.veth_inside, ip=inside)
        _ip("link", "set", self.veth_inside, "up", ip=inside)
        _ip("route", "add", "default", "via", self.host_address, ip=inside)

    def _pick_subnet(self) -> int:
        if self._want_subnet is not None:
            return self._want_subnet
        used = set(int(n) for n in re.findall(rf"inet {re.escape(_PREFIX)}\.(\d+)\.",
                                              _ip("-4", "-o", "addr", "show")))
        free = [n for n in range(256) if n not in used]
        if not free:
            raise _Unavailable(f"every {_PREFIX}.N.0/24 subnet is in use here")
        return free[0]

    def _remount_sys(self) -> None:
        """/sys for the network namespace (as ``ip netns exec`` does); best effort, nothing relies on it."""
        subprocess.run(["nsenter", "-t", str(self.init_pid), "-m", "-n", "mount", "-t", "sysfs", "sysfs", "/sys"],
                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, close_fds=True)

    # --- a host that outlives its maker -----------------------------------------------------------

    def save(self, path: str = STATE) -> None:
        """Record this (detached) host for :meth:`attach` and ``down``."""
        state = {"init_pid": self.init_pid, "pidns": os.readlink(f"/proc/{self.init_pid}/ns/pid"),
                 "level": self.level, "subnet": self.subnet, "address": self.address,
                 "host_address": self.host_address, "veth_host": self.veth_host, "veth_inside": self.veth_inside}
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        tmp = f"{path}.{os.getpid()}"
        with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
            json.dump(state, f)
        os.replace(tmp, path)

    @classmethod
    def attach(cls, path: str = STATE) -> "SecondHost":
        """The host ``up`` recorded in ``path``; ValueError if there is none or its init is gone."""
        try:
            with open(path) as f:
                state = json.load(f)
            alive = os.readlink(f"/proc/{state['init_pid']}/ns/pid") == state["pidns"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"no second host recorded in {path}: {exc}") from None
        if not alive:
            raise ValueError(f"the second host recorded in {path} is gone (pid {state['init_pid']} is another process)")
        host = cls()
        host.init_pid, host.level, host.subnet = state["init_pid"], state["level"], state["subnet"]
        host.address, host.host_address = state["address"], state["host_address"]
        host.veth_host, host.veth_inside = state["veth_host"], state["veth_inside"]
        host._attached = True
        return host

    # --- running things inside -------------------------------------------------------------------

    def nsenter_argv(self, argv: Sequence[str | os.PathLike[str]], cwd: str | os.PathLike[str] | None = None) -> list[str]:
        """``argv`` wrapped to run inside the PID, mount and network namespaces, in ``cwd`` (default: ours)."""
        if not self.init_pid or self._closed:
            raise RuntimeError("second host is not running")
        wd = os.fspath(cwd) if cwd is not None else os.getcwd()
        return ["nsenter", "-t", str(self.init_pid), "-p", "-m", *([] if self.same_network else ["-n"]), f"--wd={wd}",
                *(os.fspath(a) for a in argv)]

    def run(self, argv: Sequence[str | os.PathLike[str]], *, cwd: str | os.PathLike[str] | None = None,
            **popen_kwargs: object) -> subprocess.Popen:
        """Start ``argv`` inside; returns the Popen of nsenter, which waits for it and exits with its status.

        Defaults: ``close_fds=True`` (use ``pass_fds`` to hand descriptors over:
        nsenter keeps them at the same numbers) and stdin from /dev/null.  The
        command's own pid is a child of nsenter; ``kill`` on the Popen reaches
        nsenter only — the teardown kills everything inside anyway.
        """
        popen_kwargs.setdefault("close_fds", True)
        popen_kwargs.setdefault("stdin", subprocess.DEVNULL)
        proc = subprocess.Popen(self.nsenter_argv(argv, cwd), **popen_kwargs)  # type: ignore[call-overload]
        self._children.append(proc)
        return proc

    def run_wait(self, argv: Sequence[str | os.PathLike[str]], *, timeout: float = 60, cwd=None,  # noqa: ANN001
                 **kw: object) -> subprocess.CompletedProcess:
        """Run ``argv`` inside to completion, capturing stdout and stderr as text (no check)."""
        kw.setdefault("stdout", subprocess.PIPE)
        kw.setdefault("stderr", subprocess.PIPE)
        proc = self.run(argv, cwd=cwd, text=True, **kw)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)

    def check_output(self, argv: Sequence[str | os.PathLike[str]], *, timeout: float = 60, cwd=None,  # noqa: ANN001
                     **kw: object) -> str:
        """Run ``argv`` inside and return its stdout; CalledProcessError (with stderr) if it fails."""
        res = self.run_wait(argv, timeout=timeout, cwd=cwd, **kw)
        if res.returncode != 0:
            raise subprocess.CalledProcessError(res.returncode, res.args, res.stdout, res.stderr)
        return res.stdout

    # --- pids ------------------------------------------------------------------------------------

    def contains(self, host_pid: int) -> bool:
        """Whether the process ``host_pid`` (a host pid) lives in this host's PID namespace."""
        try:
            return os.readlink(f"/proc/{host_pid}/ns/pid") == os.readlink(f"/proc/{self.init_pid}/ns/pid")
        except OSError:
            return False

    def pid_inside(self, host_pid: int) -> int:
        """The pid inside this host of the process whose host pid is ``host_pid`` (from NSpid)."""
        if not self.contains(host_pid):
            raise ProcessLookupError(f"process {host_pid} is not in the second host's PID namespace")
        return _nspid(host_pid)[self.level]

    def host_pid(self, inside_pid: int) -> int:
        """The host pid of the process whose pid inside this host is ``inside_pid``."""
        ns = os.readlink(f"/proc/{self.init_pid}/ns/pid")
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            try:
                ids = _nspid(int(name))
                if len(ids) > self.level and ids[self.level] == inside_pid and os.readlink(f"/proc/{name}/ns/pid") == ns:
                    return int(name)
            except (OSError, RuntimeError):
                continue
        raise ProcessLookupError(f"no process {inside_pid} in the second host")

    def processes(self) -> dict[int, int]:
        """{host pid: pid inside} of every process in this host, the init included."""
        ns = os.readlink(f"/proc/{self.init_pid}/ns/pid")
        out = {}
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            try:
                if os.readlink(f"/proc/{name}/ns/pid") == ns:
                    out[int(name)] = _nspid(int(name))[self.level]
            except (OSError, RuntimeError):
                continue
        return out

    # --- teardown --------------------------------------------------------------------------------

    def close(self) -> None:
        """Kill everything inside, reap what we started, delete the veth. Safe after failures and twice.

        An attached host (:meth:`attach`) stays up: only what runs inside, its init excepted, is killed.
        """
        if self._closed:
            return
        self._closed = True
        if self._attached:
            self._clear()
            return
        if self.init_pid:
            try:
                os.kill(self.init_pid, signal.SIGKILL)  # the kernel kills every process of the PID namespace
            except ProcessLookupError:
                pass
        # A command stopped inside (SIGSTOP, a test of a hung peer) stops its nsenter too (nsenter
        # forwards the stop to itself); a stopped nsenter never reaps the command's zombie, and the
        # init's death waits for every task of the namespace to be reaped.  The nsenters are mere
        # wrappers by now: end them.
        for proc in self._children:
            if proc.poll() is None:
                proc.kill()
        if self._unshare is not None:
            if self._unshare.poll() is None and not self.init_pid:
                self._unshare.kill()
            try:
                self._unshare.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self._unshare.kill()
                self._unshare.wait(timeout=10)
        for proc in self._children:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
            for f in (proc.stdin, proc.stdout, proc.stderr):
                if f is not None:
                    f.close()
        if not self.same_network:
            subprocess.run(["ip", "link", "del", self.veth_host], stdin=subprocess.DEVNULL,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, close_fds=True)
        if self.init_pid:
            deadline = time.monotonic() + 10
            while os.path.exists(f"/proc/{self.init_pid}") and time.monotonic() < deadline:
                time.sleep(0.005)


    def _clear(self) -> None:
        """Kill every process inside but the init (which reaps them), and the nsenters we started."""
        for proc in self._children:  # first: a stopped nsenter would hold its command's zombie (see close)
            if proc.poll() is None:
                proc.kill()
        deadline = time.monotonic() + 10
        while True:
            rest = [pid for pid in self.processes() if pid != self.init_pid]
            if not rest or time.monotonic() > deadline:
                break
            for pid in rest:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.005)
        for proc in self._children:
            proc.wait(timeout=10)
            for f in (proc.stdin, proc.stdout, proc.stderr):
                if f is not None:
                    f.close()
        if rest:
            raise RuntimeError(f"second host: processes {rest} did not end within 10 s of SIGKILL")

    def end(self) -> None:
        """End an attached host for good (``down``): kill its init, delete the veth."""
        try:
            os.kill(self.init_pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        if not self.same_network:
            subprocess.run(["ip", "link", "del", self.veth_host], stdin=subprocess.DEVNULL,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, close_fds=True)
        deadline = time.monotonic() + 10
        while os.path.exists(f"/proc/{self.init_pid}") and time.monotonic() < deadline:
            time.sleep(0.005)
        self._closed = True


@contextlib.contextmanager
def second_host_for_test() -> Iterator[SecondHost]:
    """The host ``make test`` started (``CKPT_SECOND_HOST``), cleared after the test; else a new one."""
    path = os.environ.get("CKPT_SECOND_HOST")
    host = None
    if path:
        try:
            host = SecondHost.attach(path)
        except ValueError:
            host = None  # gone (a test killed it?): fall back to one of our own
    with host or SecondHost() as h:
        yield h


class _Unavailable(Exception):
    """The namespaces or the veth cannot be created here: a reason to skip."""


def _ip(*args: str, ip: Sequence[str] = ("ip",)) -> str:
    res = subprocess.run([*ip, *args], stdin=subprocess.DEVNULL, capture_output=True, text=True, close_fds=True)
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join([*ip, *args])}: {res.stderr.strip()}")
    return res.stdout


# --- command line: the host for `make second-host` / `make test` ----------------------------------

def main(argv: Sequence[str] | None = None) -> int:
    """``up`` | ``down`` | ``status`` | ``exec -- CMD...`` on the host recorded in :data:`STATE`."""
    import argparse

    ap = argparse.ArgumentParser(prog="tests/hosts.py", description="A second host on this machine (see README).")
    ap.add_argument("action", choices=["up", "down", "status", "exec"])
    ap.add_argument("cmd", nargs=argparse.REMAINDER, help="for exec: the command to run inside (after --)")
    ap.add_argument("--state", default=STATE, help=f"state file (default {STATE})")
    ap.add_argument("-q", "--quiet", action="store_true")
    args = ap.parse_args(argv)
    try:
        host = SecondHost.attach(args.state)
    except ValueError as exc:
        host, why = None, str(exc)
    if args.action == "up":
        if host is None:
            try:
                host = SecondHost().start(detached=True)
            except pytest.skip.Exception as exc:
                print(f"tests/hosts.py: {exc.msg}", file=sys.stderr)
                return 1
            host.save(args.state)
        if not args.quiet:
            print(f"second host up: {host.address} (this host: {host.host_address}), init pid {host.init_pid}; "
                  f"run inside with: {os.path.relpath(sys.executable)} {os.path.relpath(__file__)} exec -- CMD")
        return 0
    if host is None:
        if args.action == "down":
            with contextlib.suppress(FileNotFoundError):
                os.unlink(args.state)
            return 0
        print(f"tests/hosts.py: {why}", file=sys.stderr)
        return 1
    if args.action == "down":
        host.end()
        os.unlink(args.state)
        return 0
    if args.action == "status":
        print(json.dumps({"address": host.address, "host_address": host.host_address, "init_pid": host.init_pid,
                          "processes": host.processes()}))
        return 0
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        ap.error("exec needs a command: exec -- CMD [ARG...]")
    os.execvp("nsenter", host.nsenter_argv(cmd))
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
