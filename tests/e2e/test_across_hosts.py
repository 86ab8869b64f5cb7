"""Restores where the program's files are copies: same path, size, mtime and build-id, other device and inode.

On another machine the files of a program come from shared or replicated
storage: the same bytes at the same path, with other device and inode
numbers.  Here that machine is the second "host" (tests/hosts.py), in whose
mount namespace a tmpfs holds copies of the files (``cp -a``: mtime kept)
mounted over the originals — a tmpfs over the directory of a C program and
its own library, or each file of the Python interpreter bind-mounted from a
tmpfs.  The process is dumped on this host and restored in there.  A copy of
the library with another build-id is refused with one line naming it, even
with ``--allow-changed-files`` (the library's code pages come from the file);
a copy with the same bytes and only another mtime is refused by default and
taken with ``--allow-changed-files``, the build-id vouching for the bytes.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from hosts import SecondHost, ckpt_argv
from targets import SCENARIOS, Target, spawn, tracer_of, wait_until

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="dump/restore and namespaces need root")


def _fields(line: str) -> dict[str, str]:
    return dict(part.split("=", 1) for part in line.split()[1:] if "=" in part)


def _gcc(*args: str | os.PathLike[str]) -> None:
    subprocess.run(["gcc", "-O1", "-Wall", "-Wl,--build-id", *map(os.fspath, args)], check=True)


@pytest.fixture
def app(tmp_path: Path) -> Path:
    """scenarios/across.c built into ``tmp_path/app``: the program ``across`` and its ``libacross.so``."""
    if shutil.which("gcc") is None:
        pytest.skip("needs gcc")
    d = tmp_path / "app"
    d.mkdir()
    src = SCENARIOS / "across.c"
    _gcc("-shared", "-fPIC", "-DACROSS_LIB", "-o", d / "libacross.so", src)
    _gcc("-o", d / "across", src, f"-L{d}", "-lacross", "-Wl,-rpath,$ORIGIN")
    return d


class _Mounts:
    """Mounts made inside the second host's mount namespace, undone (last first) by :meth:`undo`."""

    def __init__(self, host: SecondHost) -> None:
        self.host, self.points = host, []

    def sh(self, script: str) -> None:
        self.host.check_output(["sh", "-ec", script])

    def tmpfs_with(self, where: Path, files: dict[str, Path]) -> None:
        """A tmpfs over the directory ``where`` holding ``files`` (name → file on this host, copied with cp -a)."""
        stage = where.parent / f".stage-{where.name}"  # the originals are hidden once the tmpfs is there
        shutil.rmtree(stage, ignore_errors=True)
        stage.mkdir()
        for name, src in files.items():
            subprocess.run(["cp", "-a", os.fspath(src), os.fspath(stage / name)], check=True)
        copies = " && ".join(f"cp -a {shlex.quote(os.fspath(stage / n))} {shlex.quote(os.fspath(where / n))}"
                             for n in files)
        self.sh(f"mount -t tmpfs ckpt-across {shlex.quote(os.fspath(where))} && {copies}")
        self.points.append(where)

    def bind_copies(self, store: Path, files: list[str]) -> None:
        """Each of ``files`` replaced, in there, by a copy (cp -a) on a tmpfs at ``store``, bind-mounted over it."""
        store.mkdir()
        self.sh(f"mount -t tmpfs ckpt-across {shlex.quote(os.fspath(store))}")
        self.points.append(store)
        lines = []
        for i, path in enumerate(files):
            copy = shlex.quote(os.fspath(store / str(i)))
            lines.append(f"cp -a {shlex.quote(path)} {copy} && mount --bind {copy} {shlex.quote(path)}")
            self.points.append(Path(path))
        self.sh("\n".join(lines))

    def undo(self) -> None:
        for point in reversed(self.points):
            self.host.run_wait(["umount", "-l", os.fspath(point)])
        self.points.clear()


@pytest.fixture
def mounts(second_host: SecondHost) -> Iterator[_Mounts]:
    m = _Mounts(second_host)
    try:
        yield m
    finally:
        m.undo()


def _restore(host: SecondHost, image: Path, tmp_path: Path, *extra: str) -> tuple[subprocess.CompletedProcess, int]:
    """``ckpt restore -d`` of ``image`` inside ``host``, stdout into a new pipe: (result, read end of the pipe)."""
    r, w = os.pipe()
    try:
        res = host.run_wait(ckpt_argv("restore", "-D", image, "-d", "--pidfile", tmp_path / "restored.pid",
                                      "--inherit-fd", f"fd[{w}]:1", *extra), pass_fds=(w,), timeout=120)
    finally:
        os.close(w)
    return res, r


def _refused(res: subprocess.CompletedProcess, r: int, *words: str) -> str:
    os.close(r)
    assert res.returncode == 1, (res.returncode, res.stderr)
    lines = [line for line in res.stderr.splitlines() if not line.startswith("hint:")]
    assert len(lines) == 1 and lines[0].startswith("ckpt: ") and "Traceback" not in res.stderr, res.stderr
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


class _PipeProc:
    """Just enough of a Popen for :class:`targets.Target` to read the restored process's stdout."""

    def __init__(self, fd: int) -> None:
        self.stdout, self.stdin, self.pid = os.fdopen(fd, "rb", buffering=0), None, -1

    def poll(self) -> int:
        return 0

    def kill(self) -> None:
        pass

    def wait(self, timeout: float | None = None) -> int:
        return 0


def _runs_on(host: SecondHost, r: int, pid: int, want: dict[str, str]) -> Target:
    """The restored process (``pid`` inside ``host``) answers SIGUSR1 with ``PASS`` and ``want``'s fields."""
    copy = Target(_PipeProc(r))  # type: ignore[arg-type]
    host.check_output(["kill", "-USR1", str(pid)])
    got = _fields(copy.expect("PASS"))
    assert got == want, (got, want)
    return copy


def _mapped_files(pid: int) -> dict[str, os.stat_result]:
    out = {}
    with open(f"/proc/{pid}/maps") as f:
        for line in f:
            parts = line.split(maxsplit=5)
            if len(parts) == 6 and parts[5].startswith("/") and not parts[5].rstrip().endswith("(deleted)"):
                start_end = parts[0]
                out[parts[5].rstrip("\n")] = os.stat(f"/proc/{pid}/map_files/{start_end}")
    return out


def test_c_program_restores_where_its_files_are_copies(app: Path, second_host: SecondHost, mounts: _Mounts,
                                                        tmp_path: Path) -> None:
    t = spawn([app / "across"], stderr=subprocess.DEVNULL)
    with t:
        t.ready()
        os.kill(t.pid, signal.SIGUSR1)
        assert _fields(t.expect("PASS")) == {"n": "1", "sum": "3"}
        image = tmp_path / "img"
        subprocess.run(ckpt_argv("dump", "-t", t.pid, "-D", image), check=True, timeout=120, stdin=subprocess.DEVNULL)
        pid = t.pid
    mounts.tmpfs_with(app, {"across": app / "across", "libacross.so": app / "libacross.so"})
    res, r = _restore(second_host, image, tmp_path)
    assert res.returncode == 0, res.stderr
    assert "changed" not in res.stderr, res.stderr
    with _runs_on(second_host, r, pid, {"n": "2", "sum": "9"}):  # the library's data and code carried on
        maps = _mapped_files(second_host.host_pid(pid))
        lib, exe = maps[str(app / "libacross.so")], maps[str(app / "across")]
        before = os.stat(app / "libacross.so")  # the original, on this host
        assert (lib.st_dev, lib.st_ino) != (before.st_dev, before.st_ino) and lib.st_dev == exe.st_dev
        assert (lib.st_size, lib.st_mtime_ns) == (before.st_size, before.st_mtime_ns)


def test_c_program_refuses_another_build_of_its_library(app: Path, second_host: SecondHost, mounts: _Mounts,
                                                        tmp_path: Path) -> None:
    variant = tmp_path / "variant"
    variant.mkdir()
    _gcc("-shared", "-fPIC", "-DACROSS_LIB", "-DACROSS_SALT=7", "-o", variant / "libacross.so", SCENARIOS / "across.c")
    shutil.copystat(app / "libacross.so", variant / "libacross.so")  # the same mtime: only the build is another
    touched = tmp_path / "touched"
    touched.mkdir()
    shutil.copy(app / "libacross.so", touched / "libacross.so")  # the same bytes, a new mtime
    os.utime(touched / "libacross.so", ns=(1_000_000_000, 1_000_000_000))
    t = spawn([app / "across"], stderr=subprocess.DEVNULL)
    with t:
        t.ready()
        image = tmp_path / "img"
        subprocess.run(ckpt_argv("dump", "-t", t.pid, "-D", image), check=True, timeout=120, stdin=subprocess.DEVNULL)
        pid = t.pid
    lib = str(app / "libacross.so")

    mounts.tmpfs_with(app, {"across": app / "across", "libacross.so": variant / "libacross.so"})
    for extra in ((), ("--allow-changed-files",)):  # code pages come from the file: never another build
        line = _refused(*_restore(second_host, image, tmp_path, *extra), f"ckpt: {lib} changed since the dump", "build-id")
        assert "mtime" not in line
    mounts.undo()

    mounts.tmpfs_with(app, {"across": app / "across", "libacross.so": touched / "libacross.so"})
    _refused(*_restore(second_host, image, tmp_path), f"ckpt: {lib} changed since the dump (mtime 1970-01-01")
    res, r = _restore(second_host, image, tmp_path, "--allow-changed-files")  # the build-id vouches for the bytes
    assert res.returncode == 0, res.stderr
    assert f"{lib} changed since the dump (mtime" in res.stderr and "--allow-changed-files" in res.stderr
    with _runs_on(second_host, r, pid, {"n": "1", "sum": "3"}):
        pass


_PY = r"""
import json, math, os, select, signal, zlib
n = 0
def on_usr1(sig, frame):
    global n
    n += 1
    print(f"PASS n={n} root={math.isqrt(n * n)} crc={zlib.crc32(json.dumps([n]).encode())}", flush=True)
signal.signal(signal.SIGUSR1, on_usr1)
print(f"READY pid={os.getpid()}", flush=True)
while True:
    signal.pause()
"""


def test_python_restores_where_the_interpreter_is_a_copy(second_host: SecondHost, mounts: _Mounts,
                                                          tmp_path: Path) -> None:
    import zlib

    t = spawn([sys.executable, "-u", "-c", _PY], stderr=subprocess.DEVNULL)
    with t:
        t.ready()
        exe = os.path.realpath(f"/proc/{t.pid}/exe")
        mapped = [p for p in _mapped_files(t.pid) if p.endswith(".so") or ".so." in p or p == exe]
        assert exe in mapped and any("lib-dynload" in p or "python3" in p for p in mapped if p != exe), mapped
        image = tmp_path / "img"
        subprocess.run(ckpt_argv("dump", "-t", t.pid, "-D", image), check=True, timeout=120, stdin=subprocess.DEVNULL)
        pid = t.pid
    # Every ELF file it maps (the interpreter, its extension modules, libc...) is a copy in there; the
    # restoring ckpt itself runs from those copies too.
    mounts.bind_copies(tmp_path / "copies", mapped)
    res, r = _restore(second_host, image, tmp_path)
    assert res.returncode == 0, res.stderr
    crc = zlib.crc32(json.dumps([1]).encode())
    with _runs_on(second_host, r, pid, {"n": "1", "root": "1", "crc": str(crc)}):
        now = _mapped_files(second_host.host_pid(pid))
        assert os.stat(exe).st_ino != now[exe].st_ino and all(now[p].st_dev == now[exe].st_dev for p in mapped)


def test_show_prints_the_kernel_and_its_vdso(tmp_path: Path) -> None:
    t = spawn(["sleep", "1000"], stderr=subprocess.DEVNULL)
    with t:
        image = tmp_path / "img"
        subprocess.run(ckpt_argv("dump", "-t", t.pid, "-D", image, "-R"), check=True, timeout=120,
                       stdin=subprocess.DEVNULL)
        with open(f"/proc/{t.pid}/maps") as f:
            areas = {line.split()[-1]: int(line.split()[0].split("-")[1], 16) - int(line.split()[0].split("-")[0], 16)
                     for line in f if line.split()[-1] in ("[vvar]", "[vvar_vclock]", "[vdso]", "[vsyscall]")}
    out = subprocess.run(ckpt_argv("show", image), capture_output=True, text=True, check=True, timeout=60).stdout
    u = os.uname()
    assert f"\n  kernel: Linux {u.release} {u.version} {u.machine}\n" in out
    vdso = next(line for line in out.splitlines() if line.startswith("  vdso: "))
    assert vdso.endswith(", ".join(f"{k} {v}" for k, v in areas.items()) + " bytes"), (vdso, areas)
    data = json.loads(subprocess.run(ckpt_argv("show", "--json", image), capture_output=True, text=True, check=True,
                                     timeout=60).stdout)
    k = data["image"]["kernel"]
    assert (k["release"], k["version"], k["machine"]) == (u.release, u.version, u.machine)
    assert k["vdso"]["areas"] == areas and len(k["vdso"]["vdso_sha256"]) == 64
    assert f"build-id {k['vdso']['vdso_build_id']}," in vdso
    golden = tmp_path / "golden"  # an image of an older ckpt: no record, said so
    shutil.copytree(Path(__file__).resolve().parents[2] / "images" / "simple", golden)
    for p in [golden, *golden.iterdir()]:
        os.chmod(p, 0o700 if p.is_dir() else 0o600)
    out = subprocess.run(ckpt_argv("show", golden), capture_output=True, text=True, check=True, timeout=60).stdout
    assert "\n  kernel: Linux 6.18.0-golden x86_64\n  vdso: not recorded (an image of an older ckpt)\n" in out


def _migrate_to(host: SecondHost, pid: int, tmp_path: Path, name: str, *receive_args: str) -> tuple[int, str]:
    """``ckpt receive --once`` inside ``host``, ``ckpt migrate`` of ``pid`` to it: (migrate's exit, receive's stderr)."""
    import socket

    from ckpt.migrate.wire import save_token

    token = tmp_path / f"{name}.token"
    if not token.exists():
        save_token(token)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    err = tmp_path / f"{name}.err"
    with open(err, "wb") as f:
        rx = host.run(ckpt_argv("receive", "--listen", f"{host.address}:{port}", "-D", tmp_path / f"{name}-rx",
                                "--token-file", token, "--once", *receive_args), stdout=subprocess.DEVNULL, stderr=f)
    wait_until(lambda: "listening on" in err.read_text() or rx.poll() is not None, "the receiver listens")
    res = subprocess.run(ckpt_argv("migrate", "-t", pid, "--to", f"{host.address}:{port}", "--token-file", token),
                         stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)
    rx.wait(timeout=60)
    return res.returncode, err.read_text() + res.stderr


def test_receive_allow_changed_files(app: Path, second_host: SecondHost, mounts: _Mounts, tmp_path: Path) -> None:
    """A migration to a host whose copy of the library lost its mtime: refused, the source running on;
    accepted by ``receive --allow-changed-files`` (the build-id vouches for it)."""
    touched = tmp_path / "touched"
    touched.mkdir()
    shutil.copy(app / "libacross.so", touched / "libacross.so")
    os.utime(touched / "libacross.so", ns=(1_000_000_000, 1_000_000_000))
    mounts.tmpfs_with(app, {"across": app / "across", "libacross.so": touched / "libacross.so"})
    log = tmp_path / "out.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([app / "across"], stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.DEVNULL,
                                close_fds=True, start_new_session=True)
    try:
        wait_until(lambda: "READY" in log.read_text(), "the program starts")
        code, err = _migrate_to(second_host, proc.pid, tmp_path, "plain")
        assert code != 0 and f"{app / 'libacross.so'} changed since the dump (mtime" in err, err
        assert proc.poll() is None and tracer_of(proc.pid) == 0  # the source runs on
        os.kill(proc.pid, signal.SIGUSR1)
        wait_until(lambda: "PASS n=1 sum=3" in log.read_text(), "the source answers")
        code, err = _migrate_to(second_host, proc.pid, tmp_path, "allowed", "--allow-changed-files")
        assert code == 0, err
        proc.wait(timeout=60)  # the source ended once the copy ran
        second_host.check_output(["kill", "-USR1", str(proc.pid)])
        wait_until(lambda: "PASS n=2 sum=9" in log.read_text(), "the migrated copy answers")
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
