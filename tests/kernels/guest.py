"""QEMU guests that run Debian's own kernels, to test ckpt on the kernels users run.

A guest boots one of Debian's generic kernels (12's 6.1, 13's 6.12) under QEMU TCG
(KVM here is nested PVM and unusable, DESIGN §8) with a small busybox initramfs that
loads the virtio, 9p and overlay modules, mounts this host's ``/`` read-only over 9p
with a tmpfs overlay on top, and hands over to an agent: this very file, run by the
host's own Python.  The guest thus sees the same Python, the same worktrees and their
``.venv``; what it writes stays in the guest's memory.

Commands travel through a second, writable 9p share (a host temp dir): the host
drops ``req/ID.json``, the agent runs it and writes ``res/ID.out``, ``res/ID.err``
and finally ``res/ID.json`` (exit status), each renamed into place when complete.

Kernels come from the Debian archive through the ordinary apt client with a PRIVATE
``APT_CONFIG`` (own sources list, lists and cache under the cache dir; bookworm's
keyring verifies trixie too): the host's apt sources and lists are never touched,
packages are unpacked with ``dpkg-deb -x``, never installed.

Use from the command line::

    guest.py run --kernel 6.12 --cwd /work/wt/X -- .venv/bin/python -m ckpt.cli check
    guest.py start --kernel 6.1 --name a [--fwd 8022:22] [--guestfwd 7000]
    guest.py exec --name a --cwd /work/wt/X -- make -v
    guest.py stop --name a

or from Python::

    with Guest("6.12") as g:
        r = g.run(["uname", "-r"])
        print(r.rc, r.stdout)

Only the standard library: the agent runs in the guest with ``python3 -I -S``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import hashlib
import io
import json
import lzma
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

__all__ = ["KERNELS", "Kernel", "Guest", "Result", "GuestError", "prepare", "cache_dir", "main"]

#: Kernel aliases: the Debian release whose ``linux-image-amd64`` (the generic flavour,
#: not ``-cloud``, which has no 9p) provides it.
KERNELS = {"6.1": "bookworm", "6.12": "trixie"}
_SUITES = {
    "bookworm": ("bookworm", "bookworm-updates", "bookworm-security"),
    "trixie": ("trixie", "trixie-updates", "trixie-security"),
}
_KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
_MIRROR = "http://deb.debian.org"
#: Modules the initramfs loads (with what they depend on), in this order.  A module that
#: is built into a kernel is simply not there and skipped.  After the devices and file
#: systems: nf_tables (ckpt's network lock of TCP connections; its libcrc32c needs a crc32c
#: algorithm, which the kernel would ask modprobe for) and the sock_diag families (unix,
#: inet, netlink, packet) that the dump and the restore's self-check ask.
MODULES = ("virtio_pci", "virtio_net", "9pnet_virtio", "9p", "overlay",
           "crc32c_generic", "nf_tables", "unix_diag", "inet_diag", "tcp_diag", "udp_diag", "raw_diag",
           "af_packet", "af_packet_diag", "netlink_diag")
#: The QEMU settings DESIGN §8 measured: TCG, two vCPUs, 2 GiB.
QEMU_BASE = (
    "qemu-system-x86_64", "-accel", "tcg,thread=multi,tb-size=512", "-cpu", "max", "-smp", "2",
    "-nodefaults", "-display", "none", "-no-reboot", "-monitor", "none",
)
GUEST_IP = "10.0.2.15"
#: The address at which a guest reaches a ``guestfwd`` port of the host.
HOST_FROM_GUEST = "10.0.2.100"
#: The guest's command share is mounted here.
XFER_MOUNT = "/run/ckpt-guest"
BOOT_TIMEOUT = 300.0
STATE_DIR = Path("/run/ckpt-guests")


class GuestError(Exception):
    """A guest could not be prepared, booted or reached."""


def cache_dir() -> Path:
    """Where kernels and initramfs images live: ``$CKPT_KERNEL_CACHE`` or ~/.cache/ckpt/kernels."""
    return Path(os.environ.get("CKPT_KERNEL_CACHE") or Path.home() / ".cache/ckpt/kernels")


# ---------------------------------------------------------------------------------------------
# Fetching a kernel and building its initramfs (host side)
# ---------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Kernel:
    """An unpacked kernel package and the initramfs built for it."""

    alias: str
    package: str  # e.g. linux-image-6.12.118+deb13-amd64
    release: str  # uname -r, e.g. 6.12.118+deb13-amd64
    vmlinuz: Path
    initrd: Path


def _log(msg: str) -> None:
    print(f"guest: {msg}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Serialise preparation between concurrent users of one cache (other worktrees)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def _apt_config(dist: str) -> dict[str, str]:
    """Environment for apt with a private config for DIST: own sources, lists, cache, empty status."""
    root = cache_dir() / f"apt-{dist}"
    for d in ("lists/partial", "archives/partial", "sources.list.d", "preferences.d"):
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "status").touch()
    lines = [f"deb [signed-by={_KEYRING}] {_MIRROR}/debian{'-security' if s.endswith('-security') else ''} {s} main"
             for s in _SUITES[dist]]
    (root / "sources.list").write_text("\n".join(lines) + "\n")
    (root / "apt.conf").write_text("".join(f'{k} "{v}";\n' for k, v in {
        "Dir::Etc::sourcelist": root / "sources.list",
        "Dir::Etc::sourceparts": root / "sources.list.d",
        "Dir::Etc::preferencesparts": root / "preferences.d",
        "Dir::State": root,
        "Dir::State::lists": root / "lists",
        "Dir::State::status": root / "status",
        "Dir::Cache": root,
        "Dir::Cache::archives": root / "archives",
        "APT::Sandbox::User": "root",
    }.items()))
    return {**os.environ, "APT_CONFIG": str(root / "apt.conf"), "DEBIAN_FRONTEND": "noninteractive"}


def _run(argv: Sequence[str], **kw) -> str:
    p = subprocess.run(argv, capture_output=True, text=True, **kw)
    if p.returncode != 0:
        raise GuestError(f"{' '.join(map(str, argv))} failed ({p.returncode}): {p.stderr.strip()[-2000:]}")
    return p.stdout


def _fetch(alias: str) -> Path:
    """Download and unpack the current generic kernel of ALIAS's Debian release; return its dir."""
    dist = KERNELS[alias]
    env = _apt_config(dist)
    _log(f"fetching the {dist} kernel package list (private APT_CONFIG)")
    _run(["apt-get", "update", "-q"], env=env)
    deps = _run(["apt-cache", "depends", "linux-image-amd64"], env=env)
    pkgs = [ln.split(":", 1)[1].strip() for ln in deps.splitlines()
            if ln.strip().startswith("Depends:") and "linux-image-" in ln]
    pkg = next((p for p in pkgs if p.endswith("-amd64") and "cloud" not in p), None)
    if pkg is None:
        raise GuestError(f"no generic linux-image package in {dist}: {deps!r}")
    debs = cache_dir() / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    _log(f"downloading {pkg}")
    _run(["apt-get", "download", "-q", pkg], env=env, cwd=debs)
    deb = max(debs.glob(f"{pkg}_*.deb"), key=lambda p: p.stat().st_mtime)
    out = cache_dir() / pkg
    tmp = cache_dir() / f".{pkg}.{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    _run(["dpkg-deb", "-x", str(deb), str(tmp / "root")])
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    (cache_dir() / f"{alias}.json").write_text(json.dumps({"package": pkg, "deb": deb.name}) + "\n")
    return out


def _modinfo(data: bytes, key: bytes) -> list[str]:
    """Values of KEY in a module's .modinfo strings (NUL-separated ``key=value``)."""
    vals = []
    needle = b"\0" + key + b"="
    start = 0
    while (i := data.find(needle, start)) >= 0:
        j = data.find(b"\0", i + 1)
        vals.append(data[i + len(needle):j].decode())
        start = j
    return vals


def _read_module(path: Path) -> bytes:
    if path.name.endswith(".xz"):
        return lzma.decompress(path.read_bytes())
    if path.name.endswith(".zst"):
        return subprocess.run(["zstd", "-dc", str(path)], capture_output=True, check=True).stdout
    return path.read_bytes()


def _module_closure(moddir: Path, wanted: Sequence[str]) -> list[tuple[str, bytes]]:
    """The modules in WANTED and what they depend on, in load order, uncompressed."""
    index: dict[str, Path] = {}
    for p in moddir.rglob("*.ko*"):
        index[p.name.split(".ko")[0].replace("-", "_")] = p
    order: list[tuple[str, bytes]] = []
    seen: set[str] = set()

    def visit(name: str) -> None:
        name = name.replace("-", "_")
        if name in seen or name not in index:  # not there: built in (modules.builtin)
            return
        seen.add(name)
        data = _read_module(index[name])
        for deps in _modinfo(data, b"depends"):
            for d in filter(None, deps.split(",")):
                visit(d)
        order.append((name, data))

    for w in wanted:
        visit(w)
    return order


def _cpio(entries: Sequence[tuple[str, int, bytes]]) -> bytes:
    """A newc cpio archive of (path, mode, data) entries (symlinks: data is the target)."""
    out = io.BytesIO()

    def put(name: str, mode: int, data: bytes, ino: int) -> None:
        nb = name.encode() + b"\0"
        hdr = "070701" + "".join(f"{v:08x}" for v in (
            ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(nb), 0))
        out.write(hdr.encode() + nb)
        out.write(b"\0" * (-out.tell() % 4))
        out.write(data)
        out.write(b"\0" * (-out.tell() % 4))

    for i, (name, mode, data) in enumerate(entries, 1):
        put(name, mode, data, i)
    put("TRAILER!!!", 0, b"", 0)
    return out.getvalue()


# The initramfs's /init: load modules, build the overlay root, hand over to the agent.
# Kernel command-line words key=value arrive as environment variables (ckpt_agent, ckpt_src, ckpt_cache).
_INIT = r"""#!/bin/busybox sh
bb=/bin/busybox
$bb mkdir -p /proc /sys /dev /lower /rw /newroot
$bb mount -t proc proc /proc
$bb mount -t sysfs sysfs /sys
$bb mount -t devtmpfs devtmpfs /dev
for m in $($bb cat /modules.order); do
  $bb insmod /lib/modules/$m.ko || echo "ckpt-guest: insmod $m failed"
done
$bb mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000,cache=${ckpt_cache:-none} root /lower || exec $bb sh
$bb mount -t tmpfs -o mode=0755 rw /rw
$bb mkdir -p /rw/upper /rw/work
$bb mount -t overlay overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work /newroot || exec $bb sh
for d in proc sys dev; do $bb mount --move /$d /newroot/$d; done
$bb mkdir -p /newroot/dev/pts /newroot/dev/shm
$bb mount -t devpts -o mode=0620,ptmxmode=0666 devpts /newroot/dev/pts
$bb mount -t tmpfs -o mode=1777 shm /newroot/dev/shm
$bb mount -t tmpfs -o mode=1777 tmp /newroot/tmp
$bb mount -t tmpfs -o mode=0755 run /newroot/run
case "$ckpt_src" in /tmp/*|/run/*)  # a checkout under /tmp (git clone . /tmp/x): the tmpfs above hid it
  $bb mkdir -p /rw/src-upper /rw/src-work /newroot$ckpt_src
  $bb mount -t overlay overlay -o lowerdir=/lower$ckpt_src,upperdir=/rw/src-upper,workdir=/rw/src-work \
    /newroot$ckpt_src || exec $bb sh;;
esac
$bb mount -t cgroup2 cgroup2 /newroot/sys/fs/cgroup 2>/dev/null
$bb mkdir -p /newroot@XFER@
$bb mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000,cache=none xfer /newroot@XFER@ || exec $bb sh
$bb hostname ckpt-guest
$bb ip link set lo up
if $bb ip link set eth0 up 2>/dev/null; then
  $bb ip addr add @IP@/24 dev eth0
  $bb ip route add default via 10.0.2.2
fi
exec $bb switch_root /newroot /usr/bin/python3 -I -S "$ckpt_agent" agent @XFER@
""".replace("@XFER@", XFER_MOUNT).replace("@IP@", GUEST_IP)


def _busybox() -> Path:
    for p in ("/bin/busybox", "/usr/bin/busybox"):
        if Path(p).exists() and b"ld-linux" not in Path(p).read_bytes()[:4096]:
            return Path(p)
    raise GuestError("busybox-static is not installed (make test-kernels installs it)")


def _initrd(kdir: Path, release: str) -> Path:
    """Build (once, cached by content) the busybox initramfs with this kernel's modules."""
    moddir = next(p for p in (kdir / "root/lib/modules" / release, kdir / "root/usr/lib/modules" / release)
                  if p.is_dir())
    mods = _module_closure(moddir, MODULES)
    bb = _busybox().read_bytes()
    key = hashlib.sha256(_INIT.encode() + bb + b"".join(n.encode() + d for n, d in mods)).hexdigest()[:16]
    out = kdir / f"initrd-{key}.cpio"
    if out.exists():
        return out
    entries: list[tuple[str, int, bytes]] = [
        ("bin", stat.S_IFDIR | 0o755, b""), ("lib", stat.S_IFDIR | 0o755, b""),
        ("lib/modules", stat.S_IFDIR | 0o755, b""),
        ("bin/busybox", stat.S_IFREG | 0o755, bb),
        ("bin/sh", stat.S_IFLNK | 0o777, b"busybox"),
        ("init", stat.S_IFREG | 0o755, _INIT.encode()),
        ("modules.order", stat.S_IFREG | 0o644, "".join(f"{n}\n" for n, _ in mods).encode()),
    ]
    entries += [(f"lib/modules/{n}.ko", stat.S_IFREG | 0o644, d) for n, d in mods]
    tmp = out.with_suffix(f".{os.getpid()}")
    tmp.write_bytes(_cpio(entries))
    os.replace(tmp, out)
    for old in kdir.glob("initrd-*.cpio"):
        if old != out:
            old.unlink(missing_ok=True)
    return out


def prepare(alias: str, refresh: bool = False) -> Kernel:
    """The kernel ALIAS (``6.1``, ``6.12``) ready to boot: fetched once into the cache, then offline."""
    if alias not in KERNELS:
        raise GuestError(f"unknown kernel {alias!r} (known: {', '.join(KERNELS)})")
    with _locked(cache_dir() / ".lock"):
        meta = cache_dir() / f"{alias}.json"
        kdir = None
        if meta.exists() and not refresh:
            kdir = cache_dir() / json.loads(meta.read_text())["package"]
        if kdir is None or not kdir.is_dir():
            kdir = _fetch(alias)
        vmlinuz = next((kdir / "root/boot").glob("vmlinuz-*"))
        release = vmlinuz.name[len("vmlinuz-"):]
        return Kernel(alias, kdir.name, release, vmlinuz, _initrd(kdir, release))


# ---------------------------------------------------------------------------------------------
# Running a guest (host side)
# ---------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Result:
    """What a command in a guest did."""

    argv: tuple[str, ...]
    rc: int  # exit status; -N for death by signal N; 124 for the guest-side timeout
    stdout: str
    stderr: str
    seconds: float  # wall time inside the guest

    @property
    def ok(self) -> bool:
        return self.rc == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Guest:
    """One booted guest; ``run`` commands in it, ``stop`` powers it off.  A context manager.

    FWD maps host loopback ports to guest ports (``{host: guest}``, host 0 = any free port,
    see ``ports``); GUESTFWD lists host loopback ports the guest reaches at
    ``HOST_FROM_GUEST:PORT`` (through socat).  No tap devices, no bridges.
    """

    def __init__(self, kernel: str | Kernel, *, fwd: dict[int, int] | None = None,
                 guestfwd: Sequence[int] = (), cache: str = "none", workdir: Path | None = None,
                 die_with_parent: bool = True, memory: str = "2G") -> None:
        self.kernel = kernel if isinstance(kernel, Kernel) else prepare(kernel)
        self.ports = {(h or _free_port()): g for h, g in (fwd or {}).items()}
        self.guestfwd = tuple(guestfwd)
        self.cache = cache
        self.memory = memory  # the guest's RAM (qemu -m)
        self.die_with_parent = die_with_parent  # qemu gets SIGKILL if we die without stopping it
        self._own_dir = workdir is None
        self.dir = Path(workdir or tempfile.mkdtemp(prefix=f"ckpt-guest-{self.kernel.alias}-"))
        self.xfer = self.dir / "xfer"
        self.console = self.dir / "console.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.pid: int | None = None
        self.boot_seconds: float | None = None
        self.uname: str | None = None
        self._seq = 0
        self._lock = threading.Lock()

    def argv(self) -> list[str]:
        """The qemu command line."""
        net = "user,id=n0,restrict=on"
        net += "".join(f",hostfwd=tcp:127.0.0.1:{h}-:{g}" for h, g in self.ports.items())
        net += "".join(f",guestfwd=tcp:{HOST_FROM_GUEST}:{p}-cmd:socat - TCP:127.0.0.1:{p}"
                       for p in self.guestfwd)
        append = (f"console=ttyS0 panic=-1 quiet loglevel=4 mitigations=off ckpt_agent={Path(__file__).resolve()}"
                  f" ckpt_src={Path(__file__).resolve().parents[2]}"
                  f" ckpt_cache={self.cache}")
        return [
            *QEMU_BASE, "-m", self.memory,
            "-kernel", str(self.kernel.vmlinuz), "-initrd", str(self.kernel.initrd), "-append", append,
            "-serial", f"file:{self.console}",
            "-virtfs", "local,path=/,mount_tag=root,security_model=none,readonly=on,multidevs=remap",
            "-virtfs", f"local,path={self.xfer},mount_tag=xfer,security_model=none,multidevs=remap",
            "-netdev", net, "-device", "virtio-net-pci,netdev=n0",
        ]

    def start(self, timeout: float = BOOT_TIMEOUT) -> Guest:
        """Boot and wait until the agent is up."""
        _sweep(self.dir.parent)
        for d in ("req", "res"):
            (self.xfer / d).mkdir(parents=True, exist_ok=True)
        if shutil.which("qemu-system-x86_64") is None:
            raise GuestError("qemu-system-x86_64 is missing (make test-kernels installs qemu-system-x86)")
        t0 = time.monotonic()
        self.proc = subprocess.Popen(self.argv(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=open(self.dir / "qemu.err", "wb"), start_new_session=True,
                                     preexec_fn=_die_with_parent if self.die_with_parent else None)
        self.pid = self.proc.pid
        (self.dir / "qemu.pid").write_text(f"{self.pid}\n")
        ready = self.xfer / "ready.json"
        while not ready.exists():
            if self.proc.poll() is not None:
                raise GuestError(f"qemu exited ({self.proc.returncode}) before the guest was up: {self._tail()}")
            if time.monotonic() - t0 > timeout:
                self.kill()
                raise GuestError(f"the guest did not come up in {timeout:.0f}s: {self._tail()}")
            time.sleep(0.1)
        self.boot_seconds = time.monotonic() - t0
        self.uname = json.loads(ready.read_text())["release"]
        return self

    def _tail(self) -> str:
        parts = []
        for f in (self.dir / "qemu.err", self.console):
            with contextlib.suppress(OSError):
                parts.append(f.read_text(errors="replace")[-1500:])
        return " | ".join(p.strip() for p in parts if p.strip())

    def alive(self) -> bool:
        if self.proc is not None:
            return self.proc.poll() is None
        return self.pid is not None and _pid_alive(self.pid)

    def submit(self, argv: Sequence[str], *, cwd: str | os.PathLike | None = None,
               env: dict[str, str] | None = None, timeout: float = 3600.0) -> str:
        """Start ARGV in the guest without waiting; returns the id that ``wait`` takes."""
        with self._lock:
            self._seq += 1
            rid = f"{os.getpid()}-{threading.get_ident() % 100000}-{self._seq}"
        req = {"argv": [str(a) for a in argv], "cwd": str(cwd or os.getcwd()), "env": env or {},
               "timeout": timeout}
        tmp = self.xfer / "req" / f".{rid}"
        tmp.write_text(json.dumps(req))
        os.replace(tmp, self.xfer / "req" / f"{rid}.json")
        return rid

    def wait(self, rid: str, argv: Sequence[str] = (), timeout: float | None = None) -> Result:
        """The result of request RID, once the guest has written it."""
        res = self.xfer / "res"
        done = res / f"{rid}.json"
        t0 = time.monotonic()
        while not done.exists():
            if not self.alive():
                raise GuestError(f"the guest died while running {list(argv)}: {self._tail()}")
            if timeout is not None and time.monotonic() - t0 > timeout:
                raise GuestError(f"no answer from the guest in {timeout:.0f}s for {list(argv)}")
            time.sleep(0.05)
        meta = json.loads(done.read_text())
        out = (res / f"{rid}.out").read_bytes().decode(errors="replace")
        err = (res / f"{rid}.err").read_bytes().decode(errors="replace")
        for suffix in (".json", ".out", ".err"):
            (res / f"{rid}{suffix}").unlink(missing_ok=True)
        return Result(tuple(meta["argv"]), meta["rc"], out, err, meta["seconds"])

    def run(self, argv: Sequence[str], *, cwd: str | os.PathLike | None = None,
            env: dict[str, str] | None = None, timeout: float = 3600.0) -> Result:
        """Run ARGV in the guest (cwd defaults to ours) and wait.  The guest kills it after TIMEOUT s."""
        rid = self.submit(argv, cwd=cwd, env=env, timeout=timeout)
        return self.wait(rid, argv, timeout + 120)

    def stop(self, timeout: float = 60.0) -> None:
        """Power the guest off (kill qemu if it does not go) and remove its temp dir."""
        if self.alive():
            with contextlib.suppress(OSError):
                tmp = self.xfer / "req" / ".poweroff"
                tmp.write_text(json.dumps({"op": "poweroff"}))
                os.replace(tmp, self.xfer / "req" / "poweroff.json")
            t0 = time.monotonic()
            while self.alive() and time.monotonic() - t0 < timeout:
                time.sleep(0.1)
        self.kill()
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def kill(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait()
        elif self.pid is not None and _pid_alive(self.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)

    def rss_kib(self) -> int | None:
        """qemu's resident memory now, in KiB."""
        with contextlib.suppress(OSError):
            for ln in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if ln.startswith("VmRSS:"):
                    return int(ln.split()[1])
        return None

    def __enter__(self) -> Guest:
        if not self.alive():
            try:
                self.start()
            except BaseException:
                self.stop()
                raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _sweep(tmp: Path) -> None:
    """Remove the temp dirs of guests whose qemu is gone (their runner was killed before it could)."""
    for d in tmp.glob("ckpt-guest-*"):
        with contextlib.suppress(OSError, ValueError):
            if not _pid_alive(int((d / "qemu.pid").read_text())):
                shutil.rmtree(d, ignore_errors=True)


def _die_with_parent() -> None:
    """In the qemu child before exec: SIGKILL when the process that started it dies (PR_SET_PDEATHSIG)."""
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)


def _pid_alive(pid: int) -> bool:
    try:
        st = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return st.rsplit(")", 1)[1].split()[0] != "Z"


# ---------------------------------------------------------------------------------------------
# The agent (guest side): PID 1 after switch_root
# ---------------------------------------------------------------------------------------------

_GUEST_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root",
              "LANG": "C.UTF-8", "TERM": "dumb", "USER": "root", "LOGNAME": "root"}


def _agent_run(xfer: Path, rid: str, req: dict) -> None:
    res = xfer / "res"
    t0 = time.monotonic()
    rc = 127
    with open(res / f"{rid}.out", "wb") as out, open(res / f"{rid}.err", "wb") as err:
        try:
            p = subprocess.Popen(req["argv"], cwd=req["cwd"], env={**_GUEST_ENV, **req["env"]},
                                 stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 start_new_session=True)
        except OSError as e:
            err.write(f"guest: cannot run {req['argv']}: {e}\n".encode())
        else:
            pumps = [threading.Thread(target=_pump, args=(src, dst), daemon=True)
                     for src, dst in ((p.stdout, out), (p.stderr, err))]
            for t in pumps:
                t.start()
            try:
                rc = p.wait(req["timeout"])
            except subprocess.TimeoutExpired:
                err.write(f"\nguest: killed after {req['timeout']}s\n".encode())
                rc = 124
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)  # what it left behind in its session
            for t in pumps:
                t.join(10)
            p.wait()
    meta = {"argv": req["argv"], "rc": rc, "seconds": time.monotonic() - t0}
    (res / f".{rid}").write_text(json.dumps(meta))
    os.replace(res / f".{rid}", res / f"{rid}.json")


def _pump(src, dst) -> None:
    while chunk := src.read1(65536):
        dst.write(chunk)
        dst.flush()


def _agent(xfer: Path) -> None:
    """Serve requests until a poweroff request comes."""
    req_dir = xfer / "req"
    (xfer / ".ready").write_text(json.dumps({"release": os.uname().release}))
    os.replace(xfer / ".ready", xfer / "ready.json")
    while True:
        for name in sorted(os.listdir(req_dir)):
            if not name.endswith(".json"):
                continue
            path = req_dir / name
            req = json.loads(path.read_text())
            path.unlink()
            if req.get("op") == "poweroff":
                return
            threading.Thread(target=_agent_run, args=(xfer, name[:-5], req), daemon=True).start()
        time.sleep(0.05)


def _agent_main(xfer: Path) -> None:
    """PID 1: reap every orphan; the agent proper runs in a child; power off when it ends."""
    import ctypes

    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            _agent(xfer)
        except BaseException as e:  # noqa: BLE001 - reported on the console, then power off
            print(f"ckpt-guest agent: {e!r}", file=sys.stderr, flush=True)
            code = 1
        os._exit(code)
    while True:
        try:
            got, _ = os.wait()
        except ChildProcessError:
            break
        if got == pid:
            break
    os.sync()
    libc = ctypes.CDLL(None, use_errno=True)
    libc.reboot(0x4321FEDC)  # LINUX_REBOOT_CMD_POWER_OFF
    libc.reboot(0x01234567)  # LINUX_REBOOT_CMD_RESTART; qemu -no-reboot exits


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------

def _parse_fwd(specs: Sequence[str]) -> dict[int, int]:
    out = {}
    for s in specs:
        h, _, g = s.partition(":")
        out[int(h)] = int(g or h)
    return out


def _state(name: str) -> Path:
    return STATE_DIR / f"{name}.json"


def _attach(name: str) -> Guest:
    try:
        st = json.loads(_state(name).read_text())
    except OSError:
        raise GuestError(f"no guest named {name!r} (start it with: guest.py start --name {name})") from None
    g = Guest.__new__(Guest)
    Guest.__init__(g, Kernel(**{**st["kernel"], "vmlinuz": Path(st["kernel"]["vmlinuz"]),
                                 "initrd": Path(st["kernel"]["initrd"])}),
                   workdir=Path(st["dir"]))
    g.pid, g.ports, g.uname = st["pid"], {int(k): v for k, v in st["ports"].items()}, st["uname"]
    g._own_dir = True
    return g


def _print_result(r: Result) -> int:
    sys.stdout.write(r.stdout)
    sys.stdout.flush()
    sys.stderr.write(r.stderr)
    return r.rc if r.rc >= 0 else 128 - r.rc


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="guest.py", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("run", "start"):
        p = sub.add_parser(name)
        p.add_argument("--kernel", required=True, choices=sorted(KERNELS))
        p.add_argument("--fwd", action="append", default=[], metavar="HOST:GUEST",
                       help="forward 127.0.0.1:HOST on the host to GUEST in the guest")
        p.add_argument("--guestfwd", action="append", default=[], type=int, metavar="PORT",
                       help=f"the guest reaches 127.0.0.1:PORT of the host at {HOST_FROM_GUEST}:PORT")
        p.add_argument("--cache", default="loose" if name == "run" else "none", choices=("none", "loose", "mmap"),
                       help="9p cache mode of the host's / in the guest: loose (run's default) is ~2x faster "
                            "but a file the guest has read does not change when the host changes it; none "
                            "(start's default) always sees the host's current files")
    sub.choices["start"].add_argument("--name", required=True)
    for name in ("run", "exec"):
        p = sub.choices.get(name) or sub.add_parser(name)
        if name == "exec":
            p.add_argument("--name", required=True)
        p.add_argument("--cwd", default=os.getcwd())
        p.add_argument("--env", action="append", default=[], metavar="K=V")
        p.add_argument("--timeout", type=float, default=3600.0)
        p.add_argument("command", nargs=argparse.REMAINDER)
    sub.add_parser("stop").add_argument("--name", required=True)
    p = sub.add_parser("fetch", help="fetch the kernels into the cache (if not there) and build their initramfs")
    p.add_argument("--kernel", action="append", choices=sorted(KERNELS))
    p.add_argument("--refresh", action="store_true", help="look for a newer kernel package even if one is cached")
    p = sub.add_parser("agent")
    p.add_argument("xfer")
    a = ap.parse_args(argv)

    if a.cmd == "agent":
        _agent_main(Path(a.xfer))
        return 0
    try:
        if a.cmd == "fetch":
            for k in a.kernel or sorted(KERNELS):
                kern = prepare(k, refresh=a.refresh)
                print(f"{k}: {kern.release} {kern.vmlinuz} {kern.initrd}")
            return 0
        if a.cmd == "stop":
            g = _attach(a.name)
            g.stop()
            _state(a.name).unlink(missing_ok=True)
            return 0
        if a.cmd in ("run", "exec"):
            cmd = a.command[1:] if a.command[:1] == ["--"] else a.command
            if not cmd:
                ap.error("no command given (put it after --)")
            env = dict(e.split("=", 1) for e in a.env)
        if a.cmd == "exec":
            return _print_result(_attach(a.name).run(cmd, cwd=a.cwd, env=env, timeout=a.timeout))
        g = Guest(a.kernel, fwd=_parse_fwd(a.fwd), guestfwd=a.guestfwd, cache=a.cache,
                  die_with_parent=a.cmd == "run")  # a started guest outlives this command
        if a.cmd == "run":
            with g:
                _log(f"{g.uname} up in {g.boot_seconds:.1f}s")
                return _print_result(g.run(cmd, cwd=a.cwd, env=env, timeout=a.timeout))
        STATE_DIR.mkdir(parents=True, exist_ok=True)
        if _state(a.name).exists() and _attach(a.name).alive():
            raise GuestError(f"a guest named {a.name!r} is already running")
        g._own_dir = False
        try:
            g.start()
        except BaseException:
            g.stop()
            raise
        _state(a.name).write_text(json.dumps({
            "pid": g.pid, "dir": str(g.dir), "ports": g.ports, "uname": g.uname,
            "kernel": {k: str(v) for k, v in dataclasses.asdict(g.kernel).items()}}))
        fw = " ".join(f"127.0.0.1:{h}->{p}" for h, p in g.ports.items())
        print(f"guest {a.name}: {g.uname} up in {g.boot_seconds:.1f}s, qemu pid {g.pid} {fw}".rstrip())
        return 0
    except GuestError as e:
        print(f"guest: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
