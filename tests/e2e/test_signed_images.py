"""Signed images (ckpt/image/signing.py): `keygen`, `dump`/`pre-dump --sign-key`, `restore`/`verify --verify-key`.

A restore with a key runs only an image whose every link is signed with it and whose every file is as
signed; anything else is refused with one line, exit 2, before any process is created.  The re-seal attack
that unkeyed checksums allow (change a record, write its new SHA-256 into the inventory) is among the cases.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from inventory_edit import rewrite_inventory
from test_cli import assert_one_line_error

REPO = Path(__file__).resolve().parents[2]
CKPT = [sys.executable, "-m", "ckpt.cli"]

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="dump and restore need root")


def _ckpt(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CKPT, *map(str, args)], cwd=REPO, capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _end(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 10
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.02)


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    res = _ckpt("keygen", tmp_path / "key")
    assert res.returncode == 0, res.stderr
    key, pub = tmp_path / "key", tmp_path / "key.pub"
    assert os.stat(key).st_mode & 0o777 == 0o600
    return key, pub


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    p = subprocess.Popen(["sleep", "1000"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, start_new_session=True)
    yield p
    _end(p.pid)
    p.wait(timeout=10)


def _dump(p: subprocess.Popen[bytes], img: Path, *extra: object) -> None:
    res = _ckpt("dump", "-t", p.pid, "-D", img, *extra)
    assert res.returncode == 0, res.stderr
    p.wait(timeout=10)


def _restores(img: Path, key: Path, pid: int) -> None:
    """``restore -d --verify-key`` brings the process back (ended again after)."""
    res = _ckpt("restore", "-d", "-D", img, "--verify-key", key)
    try:
        assert res.returncode == 0, res.stderr
        assert _alive(pid)
    finally:
        _end(pid)


def flip_a_page_byte(img: Path) -> Path:
    """Change one byte in the middle of the image's page data, as a forger would; the file changed."""
    pages = next(p for p in img.iterdir() if p.name.startswith("pages-"))
    data = bytearray(pages.read_bytes())
    data[len(data) // 2] ^= 0x01
    pages.write_bytes(data)
    return pages


def _refused(img: Path, pub: Path, pid: int, *words: str) -> None:
    res = _ckpt("restore", "-d", "-D", img, "--verify-key", pub)
    assert_one_line_error(res, 2, *words)
    assert not _alive(pid), "a refused restore created the process"
    res = _ckpt("verify", "-D", img, "--verify-key", pub)
    assert_one_line_error(res, 2, *words)


def test_a_signed_image_restores_and_verifies(tmp_path: Path, keys: tuple[Path, Path],
                                              sleeper: subprocess.Popen[bytes]) -> None:
    key, pub = keys
    img = tmp_path / "img"
    _dump(sleeper, img, "--sign-key", key)
    assert (img / "inventory.sig").stat().st_mode & 0o777 == 0o600
    res = _ckpt("verify", "-D", img, "--verify-key", pub)
    assert res.returncode == 0, res.stderr
    shown = _ckpt("show", "-D", img)
    assert shown.returncode == 0 and "  signed: by key " in shown.stdout, shown.stdout[:2000]
    res = _ckpt("merge", "-D", img, "-o", tmp_path / "merged", "--verify-key", pub, "--sign-key", key)
    assert res.returncode == 0, res.stderr
    assert _ckpt("verify", "-D", tmp_path / "merged", "--verify-key", pub).returncode == 0
    _restores(img, key, sleeper.pid)  # the private key serves too


def test_an_unsigned_image_is_refused(tmp_path: Path, keys: tuple[Path, Path],
                                      sleeper: subprocess.Popen[bytes]) -> None:
    _dump(sleeper, tmp_path / "img")
    _refused(tmp_path / "img", keys[1], sleeper.pid, "not signed")


def test_an_image_signed_with_another_key_is_refused(tmp_path: Path, keys: tuple[Path, Path],
                                                     sleeper: subprocess.Popen[bytes]) -> None:
    assert _ckpt("keygen", tmp_path / "other").returncode == 0
    _dump(sleeper, tmp_path / "img", "--sign-key", tmp_path / "other")
    _refused(tmp_path / "img", keys[1], sleeper.pid, "signed with another key")


def test_a_resealed_inventory_is_refused(tmp_path: Path, keys: tuple[Path, Path],
                                         sleeper: subprocess.Popen[bytes]) -> None:
    """The attack unkeyed checksums allow: the inventory rewritten with consistent checksums."""
    img = tmp_path / "img"
    _dump(sleeper, img, "--sign-key", keys[0])

    def claim_root(inv: object) -> None:
        inv.hostname = "elsewhere"  # type: ignore[attr-defined]

    rewrite_inventory(img, claim_root)
    _refused(img, keys[1], sleeper.pid, "does not match its signature")


def test_a_file_changed_after_signing_is_refused(tmp_path: Path, keys: tuple[Path, Path],
                                                 sleeper: subprocess.Popen[bytes]) -> None:
    img = tmp_path / "img"
    _dump(sleeper, img, "--sign-key", keys[0])
    _refused(img, keys[1], sleeper.pid, flip_a_page_byte(img).name)


def test_signed_page_data_is_hashed_whole(tmp_path: Path, keys: tuple[Path, Path],
                                          sleeper: subprocess.Popen[bytes]) -> None:
    """A chunk's CRC-32 is no proof against a forger who recomputes it: a signed image lists the SHA-256
    of its page data too."""
    from ckpt.image.reader import Image

    _dump(sleeper, tmp_path / "img", "--sign-key", keys[0])
    files = {f.name: f for f in Image.open(tmp_path / "img").inventory.files}
    pages = [name for name in files if name.startswith("pages-")]
    assert pages and all(len(files[name].sha256) == 32 for name in pages), files


def test_a_signed_chain_restores(tmp_path: Path, keys: tuple[Path, Path], sleeper: subprocess.Popen[bytes]) -> None:
    res = _ckpt("pre-dump", "-t", sleeper.pid, "-D", tmp_path / "pre", "--sign-key", keys[0])
    assert res.returncode == 0, res.stderr
    _dump(sleeper, tmp_path / "img", "--prev-images-dir", "../pre", "--sign-key", keys[0])
    _restores(tmp_path / "img", keys[1], sleeper.pid)


def test_a_chain_with_an_unsigned_link_is_refused(tmp_path: Path, keys: tuple[Path, Path],
                                                  sleeper: subprocess.Popen[bytes]) -> None:
    res = _ckpt("pre-dump", "-t", sleeper.pid, "-D", tmp_path / "pre")
    assert res.returncode == 0, res.stderr
    _dump(sleeper, tmp_path / "img", "--prev-images-dir", "../pre", "--sign-key", keys[0])
    _refused(tmp_path / "img", keys[1], sleeper.pid, "pre", "not signed")


def test_a_key_others_can_read_is_refused_before_the_dump_touches_the_process(
        tmp_path: Path, keys: tuple[Path, Path], sleeper: subprocess.Popen[bytes]) -> None:
    os.chmod(keys[0], 0o644)
    res = _ckpt("dump", "-t", sleeper.pid, "-D", tmp_path / "img", "--sign-key", keys[0])
    assert_one_line_error(res, 2, "private key is accessible by group or others")
    assert not (tmp_path / "img").exists()
    assert sleeper.poll() is None and _alive(sleeper.pid)
    with open(f"/proc/{sleeper.pid}/status") as f:
        assert "TracerPid:\t0" in f.read()
