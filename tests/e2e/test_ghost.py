"""Deleted ("ghost") files, mappings, directories and FIFOs through a real dump and restore.

The scenario (tests/scenarios/py_ghosts.py, a process and its child) checks itself before the dump and
after the restore: one inode per deleted file however it is held, holes, mode, owner and times kept, the
shared and private mappings of a deleted file, a library replaced while mapped, /dev/zero mapped privately,
a deleted cwd, an open deleted directory and an unlinked FIFO with bytes in it.  Every restore also ran
the self-check (fdinfo and maps VmFlags against the dump's account).
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="dump/restore needs root")


def _started(py_target, where: Path):  # noqa: ANN001, ANN202
    where.mkdir()
    t = py_target("py_ghosts.py", str(where), stderr=subprocess.DEVNULL)
    info = t.ready()
    os.kill(t.pid, signal.SIGUSR1)
    assert t.expect("PASS") == "PASS ghosts round=1"
    return t, int(info["child"])


def test_ghosts_round_trip(py_target, tmp_path: Path, restored: list[int]) -> None:  # noqa: ANN001
    from ckpt import api
    from ckpt.image.reader import Image

    t, child = _started(py_target, tmp_path / "files")
    api.dump(t.pid, tmp_path / "img")
    t.proc.returncode = -signal.SIGKILL  # killed and reaped by the dump
    image = Image.open(tmp_path / "img")
    # the previous release would make a copy per open file: it refuses the image by its format number
    assert "ghost-files" in image.inventory.required_features and image.format_version == 3
    ghosts = {e.ghost.owner: e.ghost for e in image.file_entries() if e.ghost.owner}
    sparse = next(g for g in ghosts.values() if g.size == 10 << 30)
    assert sparse.data_bytes == 3 * 4096 and sparse.mode & 0o7777 == 0o640 and (sparse.uid, sparse.gid) == (1234, 1234)
    pm = image.pagemap(sparse.owner)
    assert sum(r.nr_pages for r in pm.ranges) == 3  # the data ranges only: 10 GiB of holes are not stored
    r = api.restore(tmp_path / "img", inherit_fds=t.stdio_fds)
    restored.append(r.pid)
    assert not list((tmp_path / "files").glob(".ckpt-ghost-*"))  # every ghost unnamed again
    assert (tmp_path / "files" / "libfake.so").read_bytes()[:6] == b"NEWLIB"  # the upgraded file untouched
    os.kill(t.pid, signal.SIGUSR1)
    assert t.expect("PASS") == "PASS ghosts round=2"
    assert os.path.exists(f"/proc/{child}")


def test_deleted_max_counts_data_not_size(py_target, tmp_path: Path) -> None:  # noqa: ANN001
    """A 10 GiB sparse file with 12 KiB of data passes a 16K cap; an 8K cap refuses it, naming the data."""
    from ckpt import api
    from ckpt.errors import Unsupported

    t, _ = _started(py_target, tmp_path / "files")
    with pytest.raises(Unsupported, match=r"the deleted file .*/sparse of 10737418240 bytes \(12288 bytes of data"):
        api.dump(t.pid, tmp_path / "img", leave_running=True, deleted_max=8 << 10)
    assert not (tmp_path / "img").exists()
    api.dump(t.pid, tmp_path / "img2", leave_running=True, deleted_max=1 << 20)
    os.kill(t.pid, signal.SIGUSR1)
    assert t.expect("PASS") == "PASS ghosts round=2"


def test_a_deleted_executable(tmp_path: Path, restored: list[int]) -> None:
    """A program whose executable was replaced (an upgraded server): its exe link and mappings name the old
    file, deleted, which the restore makes again; the new file at the path is left alone."""
    import shutil

    from ckpt import api

    exe = tmp_path / "sleeper"
    shutil.copy("/bin/sleep", exe)
    p = subprocess.Popen([str(exe), "1000"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        while os.readlink(f"/proc/{p.pid}/exe") != str(exe):
            pass  # until the exec is done
        exe.unlink()
        exe.write_bytes(b"#!/bin/sh\n")  # the upgrade
        api.dump(p.pid, tmp_path / "img")
        p.wait()
        r = api.restore(tmp_path / "img")
        restored.append(r.pid)
        assert os.readlink(f"/proc/{r.pid}/exe") == f"{exe} (deleted)"
        assert os.stat(f"/proc/{r.pid}/exe").st_size == os.stat("/bin/sleep").st_size
        assert exe.read_bytes() == b"#!/bin/sh\n"
        with open(f"/proc/{r.pid}/cmdline", "rb") as f:
            assert f.read().split(b"\0")[1] == b"1000"
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_a_deleted_device_node_is_refused_at_dump(py_target, tmp_path: Path) -> None:  # noqa: ANN001
    """A device node cannot be made again like a file: the dump says so, naming the fd, and the target runs
    on (it used to be dumped, then refused by the restore, which could not reopen it by its path)."""
    from ckpt import api
    from ckpt.errors import Unsupported

    node = tmp_path / "null"
    script = tmp_path / "node.py"
    script.write_text("import os, stat, time\n"
                      f"os.mknod({str(node)!r}, stat.S_IFCHR | 0o600, os.makedev(1, 3))\n"
                      f"fd = os.open({str(node)!r}, os.O_RDWR)\n"
                      f"os.unlink({str(node)!r})\n"
                      "print('READY fd=%d' % fd, flush=True)\n"
                      "time.sleep(1000)\n")
    t = py_target(str(script), stderr=subprocess.DEVNULL)
    fd = t.ready()["fd"]
    with pytest.raises(Unsupported, match=rf"process {t.pid}: fd {fd} is '{node}', a deleted inode of mode 20600"):
        api.dump(t.pid, tmp_path / "img")
    assert t.alive() and not (tmp_path / "img").exists()


def test_a_deleted_root_directory(py_target, tmp_path: Path, restored: list[int]) -> None:  # noqa: ANN001
    """A process chrooted into a directory that was then removed: restored in an empty directory made again
    there (a removed directory is empty), its root and cwd "PATH (deleted)" as they were."""
    from ckpt import api

    root = tmp_path / "jail"
    root.mkdir()
    script = tmp_path / "jailed.py"
    script.write_text("import os, time\n"
                      f"os.chroot({str(root)!r})\n"
                      "os.chdir('/')\n"
                      "print('READY', flush=True)\n"
                      "while True:\n"
                      "    time.sleep(1)\n")
    t = py_target(str(script), stderr=subprocess.DEVNULL)
    t.ready()
    root.rmdir()
    assert os.readlink(f"/proc/{t.pid}/root") == f"{root} (deleted)"
    api.dump(t.pid, tmp_path / "img")
    t.proc.returncode = -signal.SIGKILL  # killed and reaped by the dump
    r = api.restore(tmp_path / "img", inherit_fds=t.stdio_fds)
    restored.append(r.pid)
    assert os.readlink(f"/proc/{r.pid}/root") == f"{root} (deleted)"
    assert os.readlink(f"/proc/{r.pid}/cwd") == f"{root} (deleted)"
    assert os.stat(f"/proc/{r.pid}/root").st_nlink == 0 and not root.exists()
