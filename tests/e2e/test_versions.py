"""This ckpt and the previous release on one machine: images both ways; a migration between them is refused.

The compatibility policy (README, "Versions"; docs/image-format.md,
"Compatibility") promises that a ckpt reads the previous release's images, and
that the previous release restores this one's images unless they need a feature
it lacks — then it refuses them.  Migration is the exception since protocol 3
(ckpt 0.3.0): its frames are sealed, and a release whose protocol sent memory
in clear is refused by name before anything is frozen.  The
previous release here is the package of :data:`BASE`, the last commit of ckpt
0.2.0: migration protocols 1-2 (frames tagged, not sealed), image format 3 with
its list of required features.  When a release follows, BASE moves to it.

BASE is taken from this checkout's git history (``git archive``: a clean
clone has it) and installed with its dependencies in a venv of its own under
``$CKPT_COMPAT_CACHE`` (``~/.cache/ckpt/compat``), built once per machine
(~10 s, pip's wheel cache) and reused.  Without the commit (a shallow clone, a
tarball) the tests are skipped, saying so.  The mix of protocol versions within
this ckpt is tested in tests/unit/test_migrate_wire.py.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import ckpt
from ckpt.image import Image, compat
from hosts import REPO, SecondHost, ckpt_argv
from inventory_edit import rewrite_inventory
from targets import wait_until
from test_cli import assert_one_line_error
from test_migrate import _free_port, _migrate, _Mutator, _Receiver, _token, mutator  # noqa: F401 - a fixture

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="dump, restore and migration need root")

#: The previous release: the last commit of ckpt 0.2.0 (protocols 1-2, format 3).
BASE = "e4a18c2a64c02d566d9f36894fd1deb4a4c9a58e"
CACHE = Path(os.environ.get("CKPT_COMPAT_CACHE") or Path.home() / ".cache" / "ckpt" / "compat")


class Release:
    """A ckpt package installed in a venv of its own."""

    def __init__(self, venv: Path) -> None:
        self.venv = venv

    def argv(self, *args: str | int | os.PathLike[str]) -> list[str]:
        """argv of its CLI (an absolute path: valid inside a second host too; no checkout on its sys.path)."""
        return [os.fspath(self.venv / "bin" / "ckpt"), *(str(a) if isinstance(a, int) else os.fspath(a) for a in args)]


def _build(commit: str) -> Release:
    """The package of ``commit`` in a venv under ``CACHE``, built on first use (one builder at a time)."""
    home = CACHE / f"{commit}-py{sys.version_info.major}.{sys.version_info.minor}"
    done = home / "installed"

    def ready() -> bool:  # built, and its interpreter is still there
        return done.exists() and (home / "venv" / "bin" / "python").exists()

    if ready():
        return Release(home / "venv")
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if ready():
            return Release(home / "venv")
        git = shutil.which("git")
        if git is None or subprocess.run([git, "-C", REPO, "cat-file", "-e", f"{commit}^{{commit}}"],
                                         capture_output=True).returncode != 0:
            pytest.skip(f"the previous release (commit {commit[:12]}) is not in this checkout's history")
        shutil.rmtree(home, ignore_errors=True)  # a build that died half-way
        src = home / "src"
        src.mkdir(parents=True)
        try:
            tree = subprocess.run([git, "-C", REPO, "archive", commit], capture_output=True, check=True).stdout
            subprocess.run(["tar", "-x", "-C", src], input=tree, check=True)
            # A venv at its final path (a venv cannot be moved), from the interpreter the tests run on.
            subprocess.run([sys.executable, "-m", "venv", home / "venv"], check=True)
            py = home / "venv" / "bin" / "python"
            pip = subprocess.run([py, "-m", "pip", "install", "-q", "--disable-pip-version-check", src],
                                 capture_output=True, text=True, stdin=subprocess.DEVNULL)
            assert pip.returncode == 0, f"installing the previous release failed: {pip.stderr[-2000:]}"
            subprocess.run([py, "-m", "compileall", "-q", home / "venv" / "lib"], check=True,
                           stdout=subprocess.DEVNULL)
        except BaseException:
            shutil.rmtree(home, ignore_errors=True)
            raise
        shutil.rmtree(src)
        done.write_text(f"{commit}\n")
    return Release(home / "venv")


@pytest.fixture(scope="session")
def previous() -> Release:
    release = _build(BASE)
    version = subprocess.run(release.argv("--version"), capture_output=True, text=True, check=True).stdout
    assert version.strip() == "ckpt 0.2.0", version
    return release


def _this(*args: str | int | os.PathLike[str]) -> list[str]:
    return ckpt_argv(*args)


def _carries_on_there(host: SecondHost, t: _Mutator) -> None:
    """The process runs in the second host under its old pid, its state intact."""
    n = len(t.lines())
    host.check_output(["kill", "-USR1", str(t.pid)])
    m = t.wait_for(r"CHECK (PASS|FAIL)(.*)", after=n)
    assert m.group(1) == "PASS", m.group(0)


@pytest.mark.parametrize("source", ["previous", "this"])
def test_migration_with_the_previous_release_is_refused_before_anything_is_frozen(
        second_host: SecondHost, tmp_path: Path, mutator: _Mutator, previous: Release, source: str) -> None:
    """This ckpt seals every frame (protocol 3); the previous release sent memory in clear (protocols 1-2).
    Either way round, the handshake refuses, naming both versions, and the process runs on where it was."""
    host, port, token, t = second_host, _free_port(), _token(tmp_path), mutator
    src, dst = (previous.argv, _this) if source == "previous" else (_this, previous.argv)
    t.wait_for(r"GEN g=\d+")
    rx = _Receiver(host, tmp_path, token, port, ckpt=dst)
    res, _ = _migrate(host, t.pid, port, token, tmp_path, "--max-downtime", "200", ckpt=src)
    assert res.returncode != 0, res.stdout
    refusal = f"speaks migration protocol versions 1-2 (ckpt 0.2.0), this ckpt {ckpt.__version__} speaks version 3"
    if source == "this":
        assert refusal in res.stderr, res.stderr
    else:  # a receiver goes on listening after a refused connection
        wait_until(lambda: refusal in rx.err.read_text(), "the receiver refuses the previous release", timeout=30)
    rx.interrupt()
    assert "Traceback" not in res.stderr + rx.err.read_text()
    n = len(t.lines())
    os.kill(t.pid, signal.SIGUSR1)  # never frozen, never moved: it answers here
    m = t.wait_for(r"CHECK (PASS|FAIL)(.*)", after=n)
    assert m.group(1) == "PASS", m.group(0)


@pytest.mark.parametrize("writer", ["previous", "this"])
def test_images_between_releases(second_host: SecondHost, tmp_path: Path, mutator: _Mutator,
                                 previous: Release, writer: str) -> None:
    """The previous release's dump restored by this ckpt, and this ckpt's dump by the previous release."""
    dump, restore = (previous.argv, _this) if writer == "previous" else (_this, previous.argv)
    t, img = mutator, tmp_path / "img"
    t.wait_for(r"GEN g=\d+")
    res = subprocess.run(dump("dump", "-t", t.pid, "-D", img), capture_output=True, text=True, timeout=120,
                         stdin=subprocess.DEVNULL)
    assert res.returncode == 0, res.stderr
    t.proc.wait(timeout=10)
    inventory = Image.open(img).inventory if writer == "this" else None
    if inventory is not None:  # a dump needs nothing the previous release lacks: its format, its features
        assert inventory.format_version == 2 and list(inventory.required_features) == ["time-namespace"]
    second_host.check_output(restore("restore", "-d", "-D", img), timeout=120)
    _carries_on_there(second_host, t)


def test_an_image_needing_a_newer_feature_is_refused_by_both(tmp_path: Path, previous: Release) -> None:
    """A feature neither release restores: each refuses the image, naming it."""
    sleeper = subprocess.Popen(["sleep", "1000"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, close_fds=True, start_new_session=True)
    img = tmp_path / "img"
    res = subprocess.run(_this("dump", "-t", sleeper.pid, "-D", img), capture_output=True, text=True, timeout=60,
                         stdin=subprocess.DEVNULL)
    sleeper.wait(timeout=10)
    assert res.returncode == 0, res.stderr
    needs = ["time-namespace", "warp-drive"]  # what an image of a later ckpt could list

    def later(inv: object) -> None:
        inv.required_features[:] = needs  # type: ignore[attr-defined]
        inv.format_version = compat.format_for(needs)  # type: ignore[attr-defined]

    rewrite_inventory(img, later)
    mine = ckpt.__version__
    for release, says in ((previous.argv, f"needs warp-drive, which this ckpt 0.2.0 does not restore (written by ckpt {mine})"),
                          (_this, f"needs warp-drive, which this ckpt {mine} does not restore (written by ckpt {mine})")):
        res = subprocess.run(release("restore", "-d", "-D", img), capture_output=True, text=True, timeout=60,
                             stdin=subprocess.DEVNULL)
        assert_one_line_error(res, 2, says)
