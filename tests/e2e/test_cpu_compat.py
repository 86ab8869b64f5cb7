"""A process never comes back on a CPU that lacks what it may use: restore and migration refuse, `--cpu-cap` relaxes.

The machine cannot be swapped in a test, so each case makes the other CPU:
a real dump whose inventory's CPU record is changed and sealed again through
the image format (header and end-marker checksum: `verify` passes, so the
refusal is the CPU check's, not a corruption's), or a real receiver told a
lesser CPU than this one.  Every refusal must come before any process is
created under the image's pid.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ckpt.image import Image
from ckpt.image.verify import verify
from ckpt.migrate.wire import save_token
from ckpt.resources import cpu
from hosts import ckpt_argv
from inventory_edit import rewrite_inventory
from targets import tracer_of, wait_until
from test_cli import assert_one_line_error

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="dump/restore/migrate need root")


def _lacking(n: int) -> list[str]:
    """``n`` instruction features this CPU does not have (avx512* on this project's AMD machine)."""
    here = cpu.here()
    names = [f.name for f in cpu.FEATURES if f.kind == "ins" and not here.has(f.name)]
    if len(names) < n:
        pytest.skip("this CPU has every instruction feature ckpt knows")
    return names[:n]


def _with(rec: cpu.CpuRecord, names: list[str]) -> cpu.CpuRecord:
    words = dict(rec.words)
    for f in cpu.FEATURES:
        if f.name in names:
            words[f.word] = words.get(f.word, 0) | 1 << f.bit
    return dataclasses.replace(rec, model_name="a richer CPU", words=words)


def _reseal_cpu(image_dir: Path, edit: Callable[[cpu.CpuRecord], cpu.CpuRecord]) -> None:
    """Replace the image's CPU record and write inventory.img again the way ckpt writes it."""
    rewrite_inventory(image_dir, lambda inv: inv.cpu.CopyFrom(cpu.to_pb(edit(cpu.from_pb(inv.cpu)))))
    assert verify(image_dir).ok


@pytest.fixture
def dumped(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """(pid, image) of a `sleep` dumped (and so ended) by the CLI; whatever runs under the pid is killed after."""
    sleeper = subprocess.Popen(["sleep", "1000"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, close_fds=True, start_new_session=True)
    res = subprocess.run(ckpt_argv("dump", "-t", sleeper.pid, "-D", tmp_path / "img"), capture_output=True,
                         text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert res.returncode == 0, res.stderr
    sleeper.wait(timeout=10)  # ended by the dump; reaped: its pid is free
    yield sleeper.pid, tmp_path / "img"
    try:
        os.kill(sleeper.pid, signal.SIGKILL)  # a restored copy (detached: init reaps it)
    except ProcessLookupError:
        pass


def _restore(image: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(ckpt_argv("restore", "-D", image, "-d", *extra), capture_output=True, text=True,
                          timeout=60, stdin=subprocess.DEVNULL)


def _comm(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except FileNotFoundError:
        return None


@pytest.mark.parametrize("case", ["instructions", "xcr0"])
def test_restore_refuses_a_process_of_a_richer_cpu(dumped: tuple[int, Path], tmp_path: Path, case: str) -> None:
    pid, image = dumped
    if case == "instructions":
        missing = _lacking(2)
        _reseal_cpu(image, lambda rec: _with(rec, missing))
        words, relax = ["lacks instructions the process may use: " + " ".join(missing)], "^ins"
    else:  # AMX tile state this CPU's kernel does not enable (the image's xstate itself is unchanged)
        if cpu.here().xcr0 & 0x60000:
            pytest.skip("this CPU enables AMX state")
        _reseal_cpu(image, lambda rec: dataclasses.replace(rec, xcr0=rec.xcr0 | 0x60000, model_name="a richer CPU"))
        words, relax = ["does not enable the vector state amx_tilecfg amx_tiledata"], "ins"
    pidfile = tmp_path / "pid"
    res = _restore(image, "--pidfile", str(pidfile))
    assert_one_line_error(res, 1, "the process comes from a richer CPU", *words)
    assert "--cpu-cap" in res.stderr  # the hint
    assert _comm(pid) is None and not pidfile.exists()  # refused before any process was made
    res = _restore(image, "--cpu-cap", relax, "--pidfile", str(pidfile))
    assert res.returncode == 0, res.stderr
    assert _comm(pid) == "sleep" and pidfile.read_text().strip() == str(pid)


def test_restore_with_the_right_cpu_is_not_refused(dumped: tuple[int, Path]) -> None:
    pid, image = dumped
    assert cpu.recorded(Image.open(image).inventory) == cpu.here()
    res = _restore(image, "--cpu-cap")  # all: every check, the strict one too
    assert res.returncode == 0, res.stderr
    assert _comm(pid) == "sleep"


# A receiver that believes its CPU lacks some instruction features this one has.
_LESSER_RECEIVER = textwrap.dedent("""
    import sys
    from ckpt.resources import cpu
    real, gone = cpu.here(), sys.argv[1].split(",")
    words = dict(real.words)
    for f in cpu.FEATURES:
        if f.name in gone:
            words[f.word] &= ~(1 << f.bit)
    lesser = cpu.CpuRecord(real.vendor, real.family, real.model, real.stepping, "a lesser CPU", real.xcr0,
                           real.xstate_size, words)
    cpu.here = lambda: lesser
    from ckpt.cli import main
    sys.exit(main(sys.argv[2:]))
""")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_migration_to_a_lesser_cpu_is_refused_at_the_handshake(tmp_path: Path) -> None:
    """The receiver compares the source's CPU before any image is sent; the process runs on, untouched."""
    here = cpu.here()
    gone = [n for n in ("sse4_2", "popcnt", "avx2") if here.has(n)][:2]
    if not gone:
        pytest.skip("this CPU has none of sse4_2, popcnt, avx2")
    token, port, err = tmp_path / "token", _free_port(), tmp_path / "receive.err"
    save_token(token)
    with open(err, "wb") as f:
        receiver = subprocess.Popen(
            [sys.executable, "-c", _LESSER_RECEIVER, ",".join(gone), "receive", "--listen", f"127.0.0.1:{port}",
             "-D", str(tmp_path / "received"), "--token-file", str(token), "--once"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=f, close_fds=True)
    sleeper = subprocess.Popen(["sleep", "1000"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, close_fds=True, start_new_session=True)
    try:
        wait_until(lambda: "listening on" in err.read_text() or receiver.poll() is not None, "the receiver listens",
                   timeout=20)
        res = subprocess.run(ckpt_argv("migrate", "-t", sleeper.pid, "--to", f"127.0.0.1:{port}",
                                       "--token-file", token), capture_output=True, text=True, timeout=60,
                             stdin=subprocess.DEVNULL)
        assert res.returncode == 1, res.stderr
        assert f"lacks instructions the process may use: {' '.join(gone)}" in res.stderr
        assert "--cpu-cap" in res.stderr and "Traceback" not in res.stderr
        assert receiver.wait(timeout=30) == 1
        assert os.listdir(tmp_path / "received") == []  # no image was sent, nothing kept
        assert sleeper.poll() is None and tracer_of(sleeper.pid) == 0
        assert not [fd for fd in os.listdir(f"/proc/{sleeper.pid}/fd")
                    if "userfaultfd" in os.readlink(f"/proc/{sleeper.pid}/fd/{fd}")]
    finally:
        for p in (receiver, sleeper):
            if p.poll() is None:
                p.kill()
            p.wait(timeout=10)
