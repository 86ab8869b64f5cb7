"""`migrate --sign-key` to `receive --verify-key`: the destination stages and restores only signed images.

Each image is checked as it arrives (its signature, then every file, page data read in full), before it is
staged.  A source that does not sign is refused at its first image; the process runs on at the source.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from hosts import SecondHost
from test_migrate import _free_port, _migrate, _Mutator, _Receiver, _token, mutator  # noqa: F401 - a fixture

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="migration needs root")


def _keys(tmp_path: Path) -> tuple[Path, Path]:
    res = subprocess.run([sys.executable, "-m", "ckpt.cli", "keygen", tmp_path / "key"], cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    return tmp_path / "key", tmp_path / "key.pub"


def _checks(t: _Mutator, host: SecondHost | None = None) -> None:
    """The process checks itself (SIGUSR1), here or in the second host."""
    n = len(t.lines())
    if host is None:
        os.kill(t.pid, signal.SIGUSR1)
    else:
        host.check_output(["kill", "-USR1", str(t.pid)])
    m = t.wait_for(r"CHECK (PASS|FAIL)(.*)", after=n)
    assert m.group(1) == "PASS", m.group(0)


def test_signed_images_are_restored(second_host: SecondHost, tmp_path: Path, mutator: _Mutator) -> None:
    key, pub = _keys(tmp_path)
    host, port, token, t = second_host, _free_port(), _token(tmp_path), mutator
    t.wait_for(r"GEN g=\d+")
    rx = _Receiver(host, tmp_path, token, port, "--verify-key", pub)
    res, _ = _migrate(host, t.pid, port, token, tmp_path, "--sign-key", key)
    assert res.returncode == 0, res.stderr
    assert rx.result()["outcome"] == "running"
    t.proc.wait(timeout=10)
    _checks(t, host=host)


def test_unsigned_images_are_refused_and_the_process_runs_on(second_host: SecondHost, tmp_path: Path,
                                                            mutator: _Mutator) -> None:
    _, pub = _keys(tmp_path)
    host, port, token, t = second_host, _free_port(), _token(tmp_path), mutator
    t.wait_for(r"GEN g=\d+")
    rx = _Receiver(host, tmp_path, token, port, "--verify-key", pub)
    res, _ = _migrate(host, t.pid, port, token, tmp_path)
    assert res.returncode != 0
    assert "restores only images signed with its key" in res.stderr and "not signed" in res.stderr, res.stderr
    assert "Traceback" not in res.stderr
    assert "failed" in rx.result().get("outcome", "failed"), rx.err.read_text()
    assert t.proc.poll() is None
    _checks(t)


def _encryption_key(tmp_path: Path) -> Path:
    res = subprocess.run([sys.executable, "-m", "ckpt.cli", "keygen", "--encryption", tmp_path / "enc"], cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    return tmp_path / "enc"


def test_encrypted_and_signed_images_are_restored(second_host: SecondHost, tmp_path: Path,
                                                  mutator: _Mutator) -> None:
    """`migrate --encrypt-key --sign-key` to `receive --encrypt-key --verify-key`: the images the receiver keeps
    are sealed, and the process checks out there."""
    key, pub = _keys(tmp_path)
    enc = _encryption_key(tmp_path)
    host, port, token, t = second_host, _free_port(), _token(tmp_path), mutator
    t.wait_for(r"GEN g=\d+")
    rx = _Receiver(host, tmp_path, token, port, "--verify-key", pub, "--encrypt-key", enc)
    res, _ = _migrate(host, t.pid, port, token, tmp_path, "--sign-key", key, "--encrypt-key", enc)
    assert res.returncode == 0, res.stderr
    assert rx.result()["outcome"] == "running", rx.err.read_text()
    t.proc.wait(timeout=10)
    _checks(t, host=host)
    kept = [p for p in rx.store.rglob("pages-*.img")]
    assert kept, list(rx.store.rglob("*"))
    assert b"mutator" not in b"".join(p.read_bytes() for p in kept)


def test_a_receiver_with_a_key_refuses_plain_images(second_host: SecondHost, tmp_path: Path,
                                                   mutator: _Mutator) -> None:
    enc = _encryption_key(tmp_path)
    host, port, token, t = second_host, _free_port(), _token(tmp_path), mutator
    t.wait_for(r"GEN g=\d+")
    rx = _Receiver(host, tmp_path, token, port, "--encrypt-key", enc)
    res, _ = _migrate(host, t.pid, port, token, tmp_path)
    assert res.returncode != 0 and "Traceback" not in res.stderr, res.stderr
    assert "failed" in rx.result().get("outcome", "failed"), rx.err.read_text()
    assert t.proc.poll() is None
    _checks(t)
