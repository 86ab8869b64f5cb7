"""Images encrypted at rest (ckpt/image/sealing.py): `keygen --encryption`, `--encrypt-key` on every command.

A target keeps a secret and 12 MiB of random bytes in memory; an image dumped with a key holds neither in
any of its files (grepped raw), restores with the key (the target then checks both itself), and without
the key, with another key, or with a byte changed anywhere, is refused with one line and exit 2 naming
the image, the key id it needs, or the file.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from test_cli import assert_one_line_error
from test_signed_images import _alive

REPO = Path(__file__).resolve().parents[2]
CKPT = [sys.executable, "-m", "ckpt.cli"]
TARGET = REPO / "tests" / "scenarios" / "py_secret.py"

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="dump and restore need root")


def _ckpt(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CKPT, *map(str, args)], cwd=REPO, capture_output=True, text=True, timeout=300,
                          stdin=subprocess.DEVNULL)


def _ok(*args: object) -> subprocess.CompletedProcess[str]:
    res = _ckpt(*args)
    assert res.returncode == 0, (args, res.stderr)
    return res


def _wait(cond: object, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def _end(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    _wait(lambda: not _alive(pid), f"pid {pid} to end", 10)


class Secret:
    """The running target, its secret, and the directory it reports in."""

    def __init__(self, where: Path) -> None:
        self.where = where
        self.seed = secrets.token_hex(16).encode()
        (where / "seed").write_bytes(self.seed)
        self.proc = subprocess.Popen([sys.executable, str(TARGET), str(where)], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        self.pid = self.proc.pid
        _wait(lambda: (where / "ready").exists() or self.proc.poll() is not None, "the target to start")
        assert self.proc.poll() is None

    def checks_itself(self) -> None:
        result = self.where / "result"
        result.unlink(missing_ok=True)
        os.kill(self.pid, signal.SIGUSR1)
        _wait(result.exists, "the restored target's verdict")
        assert result.read_text() == "ok"


@pytest.fixture
def target(tmp_path: Path) -> Iterator[Secret]:
    (tmp_path / "t").mkdir()
    t = Secret(tmp_path / "t")
    yield t
    _end(t.pid)
    t.proc.poll()


@pytest.fixture
def key(tmp_path: Path) -> Path:
    path = tmp_path / "image.key"
    res = _ok("keygen", "--encryption", path)
    assert "key id " in res.stdout
    assert path.stat().st_mode & 0o777 == 0o600
    return path


def _key_id(key: Path) -> str:
    from ckpt.image import sealing

    return sealing.load_key(key).key_id.hex()


def _assert_hidden(img: Path, t: Secret) -> None:
    """No file of ``img`` holds the secret or its seed (the stored bytes, read raw)."""
    files = [p for p in img.iterdir() if p.is_file()]
    assert any(p.name.startswith("pages-") for p in files), files
    for p in files:
        assert p.stat().st_mode & 0o777 == 0o600, p
        data = p.read_bytes()
        assert t.seed not in data and b"ckpt-at-rest-secret" not in data, f"{p.name} holds the secret in clear"


def _dump(t: Secret, img: Path, *extra: object) -> None:
    _ok("dump", "-t", t.pid, "-D", img, *extra)
    t.proc.wait(timeout=30)


def _restore(t: Secret, img: Path, *extra: object) -> None:
    _ok("restore", "-d", "-D", img, *extra)
    assert _alive(t.pid)
    t.checks_itself()


def _refused(img: Path, pid: int, *words: str, args: tuple[object, ...] = (), show: bool = True) -> None:
    """restore, verify and (``show``: it reads no page data) show refuse ``img`` with one line naming ``words``;
    no process is made."""
    assert_one_line_error(_ckpt("restore", "-d", "-D", img, *args), 2, *words)
    assert not _alive(pid), "a refused restore created the process"
    res = _ckpt("verify", "-D", img, *args)  # one line per problem (two swapped chunks: two)
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    assert all(line.startswith("ckpt: ") and all(w in line for w in words)
               for line in res.stderr.splitlines() if not line.startswith("hint:")), res.stderr
    if show:
        assert_one_line_error(_ckpt("show", "-D", img, *args), 2, *words)


def test_an_encrypted_image_hides_the_secret_and_restores(tmp_path: Path, key: Path, target: Secret) -> None:
    img = tmp_path / "img"
    _dump(target, img, "--encrypt-key", key)
    _assert_hidden(img, target)
    kid = _key_id(key)
    # Without the key, or with another: refused, naming the image and the key it needs.
    _refused(img, target.pid, str(img), f"key id {kid}", "--encrypt-key")
    _ok("keygen", "--encryption", tmp_path / "other.key")
    _refused(img, target.pid, str(img), f"key id {kid}", "wrong key", args=("--encrypt-key", tmp_path / "other.key"))
    shown = _ok("show", "-D", img, "--encrypt-key", key)
    assert f"encrypted: aes-256-gcm, key id {kid}" in shown.stdout
    assert "OK" in _ok("verify", "-D", img, "--encrypt-key", key).stdout
    _restore(target, img, "--encrypt-key", key)


def test_an_encrypted_chain_merges_and_restores(tmp_path: Path, key: Path, target: Secret) -> None:
    _ok("pre-dump", "-t", target.pid, "-D", tmp_path / "pre", "--encrypt-key", key)
    _dump(target, tmp_path / "img", "--prev-images-dir", "../pre", "--encrypt-key", key)
    for img in (tmp_path / "pre", tmp_path / "img"):
        _assert_hidden(img, target)
    _ok("verify", "-D", tmp_path / "img", "--encrypt-key", key)
    _ok("merge", "-D", tmp_path / "img", "-o", tmp_path / "merged", "--encrypt-key", key)
    _assert_hidden(tmp_path / "merged", target)
    _ok("verify", "-D", tmp_path / "merged", "--encrypt-key", key)
    assert_one_line_error(_ckpt("verify", "-D", tmp_path / "merged"), 2, "encrypted", f"key id {_key_id(key)}")
    _restore(target, tmp_path / "merged", "--encrypt-key", key)


def test_an_incremental_store_is_encrypted_throughout(tmp_path: Path, key: Path, target: Secret) -> None:
    store = tmp_path / "store"
    _ok("pre-dump", "--incremental", "-t", target.pid, "-D", store, "--encrypt-key", key)
    _dump(target, store, "--incremental", "--encrypt-key", key)
    images = sorted(p for p in store.iterdir() if p.is_dir())
    assert len(images) == 2, images
    for img in images:
        _assert_hidden(img, target)
    _restore(target, store, "--encrypt-key", key)


def test_a_mixed_chain_is_refused(tmp_path: Path, key: Path, target: Secret) -> None:
    """A plain parent under an encrypted delta: the dump refuses before touching the process."""
    _ok("pre-dump", "-t", target.pid, "-D", tmp_path / "pre")
    res = _ckpt("dump", "-t", target.pid, "-D", tmp_path / "img", "--prev-images-dir", "../pre", "--encrypt-key", key)
    assert_one_line_error(res, 2, "pre", "not encrypted")
    assert target.proc.poll() is None and not (tmp_path / "img").exists()


def test_a_plain_delta_of_an_encrypted_parent_is_refused(tmp_path: Path, key: Path, target: Secret) -> None:
    """The reverse: without the key, an encrypted parent cannot be read, and the dump says which key it needs."""
    _ok("pre-dump", "-t", target.pid, "-D", tmp_path / "pre", "--encrypt-key", key)
    res = _ckpt("dump", "-t", target.pid, "-D", tmp_path / "img", "--prev-images-dir", "../pre")
    assert_one_line_error(res, 2, "pre", f"key id {_key_id(key)}")
    assert target.proc.poll() is None and not (tmp_path / "img").exists()


def test_a_resealed_inventory_is_refused(tmp_path: Path, key: Path, target: Secret) -> None:
    """The inventory is in clear with unkeyed checksums; inventory.mac binds it to the key."""
    from ckpt.image import sealing
    from inventory_edit import rewrite_inventory

    img = tmp_path / "img"
    _dump(target, img, "--encrypt-key", key)

    def elsewhere(inv: object) -> None:
        inv.hostname = "elsewhere"  # type: ignore[attr-defined]

    with sealing.encrypting(sealing.load_key(key)):
        rewrite_inventory(img, elsewhere)
    _refused(img, target.pid, "inventory.img", f"does not match {sealing.MAC_FILE}", args=("--encrypt-key", key))


def _flip(path: Path, at: int) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0x01
    path.write_bytes(data)


def _one(img: Path, prefix: str) -> Path:
    return next(p for p in img.iterdir() if p.name.startswith(prefix))


@pytest.mark.parametrize("damage", ["pages byte", "records byte", "swapped chunks"])
def test_a_changed_byte_is_refused_naming_the_file(tmp_path: Path, key: Path, target: Secret, damage: str) -> None:
    from ckpt.image import sealing
    from ckpt.image.reader import Image

    img = tmp_path / "img"
    _dump(target, img, "--encrypt-key", key)
    if damage == "pages byte":
        victim = _one(img, "pages-")
        _flip(victim, victim.stat().st_size // 2)
    elif damage == "records byte":
        victim = _one(img, "core-")
        _flip(victim, victim.stat().st_size - 20)  # inside the sealed segment (the inventory's SHA-256 catches it)
    else:
        with sealing.encrypting(sealing.load_key(key)):
            pm = Image.open(img).pagemap(target.pid)
        chunks = sorted(pm.chunks, key=lambda c: -c.length)
        a, b = chunks[0], chunks[1]
        assert a.length == b.length, "the noise chunks are stored at one size"
        victim = img / pm.pages_file
        data = bytearray(victim.read_bytes())
        data[a.offset:a.offset + a.length], data[b.offset:b.offset + b.length] = (
            data[b.offset:b.offset + b.length], data[a.offset:a.offset + a.length])
        victim.write_bytes(data)
    _refused(img, target.pid, victim.name, args=("--encrypt-key", key), show=damage == "records byte")


def test_signed_and_encrypted(tmp_path: Path, key: Path, target: Secret) -> None:
    """The signature covers the stored (sealed) bytes: checked with the public key alone, before decrypting."""
    _ok("keygen", tmp_path / "sign")
    img = tmp_path / "img"
    _dump(target, img, "--encrypt-key", key, "--sign-key", tmp_path / "sign")
    _assert_hidden(img, target)
    _ok("verify", "-D", img, "--encrypt-key", key, "--verify-key", tmp_path / "sign.pub")
    _restore(target, img, "--encrypt-key", key, "--verify-key", tmp_path / "sign.pub")
