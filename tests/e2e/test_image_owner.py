"""A restore never grants more than the image's owner had (issue 18; ckpt/image/trust.py, resources/creds_check.py).

Real dumps of real targets, as root: the image directory is then given to another user (chown), as if that
user had written it.  Root refuses to restore it unless it is signed by a key root trusts (``--verify-key``);
signed, it is restored from a private copy and the target checks its own pages.  A link or a parent others
can write still refuses, signed or not.  An image handed over as a descriptor (``-D /proc/self/fd/N``, which
the directory checks take as given) is held to its owner's word: records re-sealed to claim capabilities or
another uid are refused before any process is made.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
from pathlib import Path

import pytest

from ckpt.image import Image, framing, kinds
from ckpt.image.pb import process_pb2
from inventory_edit import rewrite_inventory
from targets import HANG_GUARD
from test_cli import assert_one_line_error
from test_signed_images import flip_a_page_byte
from test_track_leftovers import CKPT, REPO, Writer

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="dump and restore as root, chown to another user")

NOBODY = 65534
STRANGER = 12345  # a uid no user of this machine has


def _ckpt(*args: object, pass_fds: tuple[int, ...] = ()) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CKPT, *map(str, args)], capture_output=True, text=True, timeout=120, cwd=REPO,
                          stdin=subprocess.DEVNULL, pass_fds=pass_fds)


def _chown_tree(img: Path, uid: int) -> None:
    """Give the image directory and every file in it to ``uid`` (its group too), as if that user wrote it."""
    os.chown(img, uid, uid)
    for f in img.iterdir():
        os.chown(f, uid, uid)


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    res = _ckpt("keygen", tmp_path / "key")
    assert res.returncode == 0, res.stderr
    return tmp_path / "key", tmp_path / "key.pub"


@pytest.fixture
def writer(tmp_path: Path):  # noqa: ANN201
    t = Writer(tmp_path, npages=256, threads=2, uid=NOBODY)
    yield t
    t.close()


def _dump(t: Writer, img: Path, *extra: object) -> None:
    res = _ckpt("dump", "-t", t.pid, "-D", img, *extra)
    assert res.returncode == 0, res.stderr
    t.proc.wait(timeout=HANG_GUARD)


def _refused_and_gone(res: subprocess.CompletedProcess[str], pid: int, *words: str) -> None:
    """The restore was refused with one line, exit 2, and made no process (one it made anyway is ended)."""
    made = os.path.exists(f"/proc/{pid}")
    if made:
        os.kill(pid, signal.SIGKILL)
    assert_one_line_error(res, 2, *words)
    assert not made, f"a refused restore left process {pid}"


def _restore_and_check(t: Writer, restored: list[int], tmp_path: Path, *args: object,
                       pass_fds: tuple[int, ...] = ()) -> None:
    pidfile = tmp_path / "pid"
    res = _ckpt("restore", "-d", "--pidfile", pidfile, *args, pass_fds=pass_fds)
    assert res.returncode == 0, res.stderr
    restored.append(int(pidfile.read_text()))
    assert restored == [t.pid]
    t.check()  # every page, under its old pid and uid


def test_root_refuses_another_users_unsigned_image_with_a_hint(tmp_path: Path, writer: Writer) -> None:
    img = tmp_path / "img"
    _dump(writer, img)
    _chown_tree(img, STRANGER)
    res = _ckpt("restore", "-d", "-D", img)
    _refused_and_gone(res, writer.pid, str(img), f"owned by uid {STRANGER}, another user")
    assert "--verify-key" in res.stderr, res.stderr


def test_a_parent_image_another_user_owns_is_refused(tmp_path: Path, writer: Writer) -> None:
    """The newest image is root's, but its memory comes from a parent another user could have changed."""
    res = _ckpt("pre-dump", "-t", writer.pid, "-D", tmp_path / "pre")
    assert res.returncode == 0, res.stderr
    _dump(writer, tmp_path / "img", "--prev-images-dir", "../pre")
    _chown_tree(tmp_path / "pre", STRANGER)
    _refused_and_gone(_ckpt("restore", "-d", "-D", tmp_path / "img"), writer.pid, str(tmp_path / "pre"),
                      f"owned by uid {STRANGER}, another user")


@pytest.mark.parametrize("chain", [False, True])
def test_a_trusted_signature_lifts_the_refusal(tmp_path: Path, writer: Writer, keys: tuple[Path, Path],
                                              restored: list[int], chain: bool) -> None:
    img = tmp_path / "img"
    if chain:
        res = _ckpt("pre-dump", "-t", writer.pid, "-D", tmp_path / "pre", "--sign-key", keys[0])
        assert res.returncode == 0, res.stderr
        _chown_tree(tmp_path / "pre", STRANGER)
    scratch = Path(os.environ["TMPDIR"])  # the ckpt command's (conftest: one per test)
    _dump(writer, img, "--sign-key", keys[0], *(("--prev-images-dir", "../pre") if chain else ()))
    _chown_tree(img, STRANGER)
    _restore_and_check(writer, restored, tmp_path, "-D", img, "--verify-key", keys[1])
    assert not list(scratch.glob("ckpt-signed-*")), "the private copy is removed"


def test_a_signed_image_another_user_changed_is_refused(tmp_path: Path, writer: Writer,
                                                        keys: tuple[Path, Path]) -> None:
    img = tmp_path / "img"
    _dump(writer, img, "--sign-key", keys[0])
    pages = flip_a_page_byte(img)
    _chown_tree(img, STRANGER)
    _refused_and_gone(_ckpt("restore", "-d", "-D", img, "--verify-key", keys[1]), writer.pid, pages.name)


def test_a_link_or_a_parent_others_can_write_refuses_even_signed(tmp_path: Path, writer: Writer,
                                                                 keys: tuple[Path, Path]) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    img = shared / "img"
    _dump(writer, img, "--sign-key", keys[0])
    _chown_tree(img, STRANGER)
    link = tmp_path / "link"
    link.symlink_to(img)
    _refused_and_gone(_ckpt("restore", "-d", "-D", link, "--verify-key", keys[1]), writer.pid, str(link),
                      "symbolic link")
    os.chmod(shared, 0o777)
    _refused_and_gone(_ckpt("restore", "-d", "-D", img, "--verify-key", keys[1]), writer.pid, str(shared),
                      "writable by its group and others")


def _reseal_process(img: Path, pid: int, edit) -> None:  # noqa: ANN001
    """Change the process record and write its new size and SHA-256 into the inventory: what anyone who can write
    the directory can do to an unsigned image."""
    name = kinds.PROCESS.file_name(pid)
    image = Image.open(img)
    entry = image.process(pid)
    edit(entry)
    data = framing.encode_file(kinds.PROCESS.magic, [entry.SerializeToString()], version=image.format_version)

    def reseal(inv) -> None:  # noqa: ANN001
        digest = next(d for d in inv.files if d.name == name)
        digest.size, digest.sha256 = len(data), hashlib.sha256(data).digest()

    rewrite_inventory(img, reseal)
    (img / name).write_bytes(data)
    assert _ckpt("verify", "-D", img).returncode == 0, "the re-sealed image looks sound to an unkeyed check"


def _handed_over(img: Path) -> int:
    return os.open(img, os.O_RDONLY | os.O_DIRECTORY)


def test_an_owners_image_may_claim_what_the_owner_had(tmp_path: Path, writer: Writer, restored: list[int]) -> None:
    """Handed over (taken as given by the directory checks), an honest image of nobody's process restores."""
    img = tmp_path / "img"
    _dump(writer, img)
    _chown_tree(img, NOBODY)
    fd = _handed_over(img)
    try:
        _restore_and_check(writer, restored, tmp_path, "-D", f"/proc/self/fd/{fd}", pass_fds=(fd,))
    finally:
        os.close(fd)


@pytest.mark.parametrize("claim", ["capabilities", "root"])
def test_records_claiming_more_than_the_owner_had_are_refused(tmp_path: Path, writer: Writer, claim: str) -> None:
    img = tmp_path / "img"
    _dump(writer, img)

    def more(entry: process_pb2.ProcessEntry) -> None:
        if claim == "root":
            entry.creds.uid = entry.creds.euid = entry.creds.suid = entry.creds.fsuid = 0
        else:
            entry.creds.cap_permitted = entry.creds.cap_effective = entry.creds.cap_bounding

    _reseal_process(img, writer.pid, more)
    _chown_tree(img, NOBODY)
    fd = _handed_over(img)
    try:
        res = _ckpt("restore", "-d", "-D", f"/proc/self/fd/{fd}", pass_fds=(fd,))
    finally:
        os.close(fd)
    _refused_and_gone(res, writer.pid, f"process {writer.pid} claims",
                      "uid 0" if claim == "root" else "CapPrm capabilities [0, 1,")
    assert "nobody (uid 65534)" in res.stderr and "--sign-key" in res.stderr, res.stderr
