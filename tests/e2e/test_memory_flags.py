"""Mapping flags and unusual memory: each kind of area comes back as it was, or the dump names why not.

The targets (scenarios/py_vmflags.py and friends) check their own memory after the restore — the bytes
of every area and its smaps VmFlags letters — and print PASS or FAIL; the restore's self-check
(ckpt/observed.py) compares the VmFlags of every mapping as well.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from ckpt import api
from test_dump_restore import _forget

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="dump/restore needs root (ptrace, clone3 set_tid)")


def _round_trip(t, tmp_path: Path, restored: list[int], prefix: str) -> list[str]:  # noqa: ANN001
    """Check, dump, restore, check again; the image's required features."""
    from ckpt.image.reader import Image
    os.kill(t.pid, signal.SIGUSR1)
    assert t.expect("PASS").startswith(f"{prefix} round=1")
    api.dump(t.pid, tmp_path / "img")
    _forget(t)
    required = list(Image.open(tmp_path / "img").inventory.required_features)
    restored.append(api.restore(tmp_path / "img", inherit_fds=t.stdio_fds).pid)
    os.kill(t.pid, signal.SIGUSR1)
    assert t.expect("PASS").startswith(f"{prefix} round=2")
    return required


@pytest.mark.parametrize("mode", ["plain", "future", "future-onfault", "merge-any"])
def test_mapping_flags_round_trip(py_target, tmp_path: Path, restored: list[int], mode: str) -> None:  # noqa: ANN001
    t = py_target("py_vmflags.py", mode, stderr=subprocess.DEVNULL)
    areas = t.ready()["areas"].split(",")
    if mode == "merge-any" and "merge-any" not in areas:
        pytest.skip(f"no prctl(PR_SET_MEMORY_MERGE) on Linux {os.uname().release} (6.4+)")
    assert {"locked", "onfault", "madv-wf", "madv-dc", "madv-dd", "madv-sr", "madv-rr"} <= set(areas)
    required = _round_trip(t, tmp_path, restored, "PASS vmflags")
    assert ("mm-default-flags" in required) == (mode != "plain")  # no /proc file shows them: an older ckpt refuses


def test_self_check_catches_a_flag_not_set_again(py_target, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,  # noqa: ANN001
                                                 restored: list[int]) -> None:
    from ckpt.errors import RestoreError
    from ckpt.resources import vmflags
    t = py_target("py_vmflags.py", stderr=subprocess.DEVNULL)
    t.ready()
    api.dump(t.pid, tmp_path / "img")
    _forget(t)
    monkeypatch.setattr(vmflags, "restore_vma", lambda *_: None)  # advice and locks forgotten
    with pytest.raises(RestoreError, match=r"came back different from the dump: .*maps: "):
        restored.append(api.restore(tmp_path / "img", inherit_fds=t.stdio_fds).pid)


def test_unreadable_memory_round_trips(py_target, tmp_path: Path, restored: list[int]) -> None:  # noqa: ANN001
    """Guard regions come back as guard markers (not a failed dump: /proc/PID/mem gives EIO there); PROT_NONE
    and exec-only pages with their bytes.  Guards only where the kernel has them (6.13, a file's 6.15)."""
    t = py_target("py_unreadable.py", stderr=subprocess.DEVNULL)
    areas = set(t.ready()["areas"].split(","))
    lacking = {line.split()[1] for line in t.lines if line.startswith("SKIP ")}  # the kernel refused them
    assert areas | lacking == {"guard", "none", "exec", "guard-file"} and {"none", "exec"} <= areas
    assert ("guard-regions" in _round_trip(t, tmp_path, restored, "PASS unreadable")) == ("guard" in areas)


def test_self_check_catches_a_guard_region_lost(py_target, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,  # noqa: ANN001
                                                restored: list[int]) -> None:
    from ckpt.errors import RestoreError
    from ckpt.resources import guards
    if not guards.scan_reports_guards():
        pytest.skip("this kernel's PAGEMAP_SCAN does not report guard regions (before 6.15)")
    t = py_target("py_unreadable.py", stderr=subprocess.DEVNULL)
    t.ready()
    api.dump(t.pid, tmp_path / "img")
    _forget(t)
    monkeypatch.setattr(guards, "install", lambda *_: 0)
    with pytest.raises(RestoreError, match=r"came back different from the dump: guards: "):
        restored.append(api.restore(tmp_path / "img", inherit_fds=t.stdio_fds).pid)


def test_parts_of_a_bigger_shared_object(py_target, tmp_path: Path, restored: list[int]) -> None:  # noqa: ANN001
    """A 1 GiB shared anonymous object of which each process of a tree maps other parts (none all of it, the
    root two pieces): one object again, of its size, with only the mapped parts' pages stored."""
    from ckpt.image.reader import Image
    from targets import kill_all
    t = py_target("py_shmem_parts.py", stderr=subprocess.DEVNULL)
    info = t.ready()
    children = [int(info["a"]), int(info["b"])]
    try:
        _round_trip(t, tmp_path, restored, "PASS shmem-parts")
        img = Image.open(tmp_path / "img")
        owners = [o for o in img.owners() if str(o).startswith("shmem-")]
        assert len(owners) == 1
        stored = sum(len(data) for _, data in img.iter_pages(owners[0]))
        assert stored <= 64 * 4096  # the marks' pages, not the object
    finally:
        kill_all(children)


@pytest.mark.parametrize("tree", [False, True], ids=["alone", "tree"])
@pytest.mark.parametrize("how", ["move", "unmap"])
def test_moved_or_unmapped_vdso(c_target, tmp_path: Path, restored: list[int], how: str, tree: bool) -> None:  # noqa: ANN001
    """The kernel's areas stay where the process moved them (its moved vDSO still tells the time), or stay
    away when it unmapped them; a child that kept its own has them where it had them (its helper is cloned
    from the parent's, whose areas are not yet gone then)."""
    from targets import kill_all
    t = c_target("vdso_moved", how, *(["tree"] if tree else []), stderr=subprocess.DEVNULL)
    child = int(t.ready()["child"])
    try:
        _round_trip(t, tmp_path, restored, "PASS vdso-moved")
        if child:
            with open(f"/proc/{child}/maps") as f:
                assert "[vdso]" in f.read()
    finally:
        if child:
            kill_all([child])


@pytest.fixture
def huge_pages():  # noqa: ANN201
    """Reserve 16 huge pages of 2 MiB (the old count put back after); skip where the kernel cannot."""
    path = "/proc/sys/vm/nr_hugepages"
    with open(path) as f:
        old = int(f.read())
    try:
        with open(path, "w") as f:
            f.write(str(old + 16))
        with open(path) as f:
            if int(f.read()) < old + 16:
                pytest.skip("the kernel could not reserve 16 huge pages")
    except OSError as exc:
        pytest.skip(f"cannot reserve huge pages: {exc.strerror}")
    try:
        yield
    finally:
        with open(path, "w") as f:
            f.write(str(old))


def test_hugetlb_memory_round_trips(huge_pages, py_target, tmp_path: Path, restored: list[int]) -> None:  # noqa: ANN001
    """MAP_HUGETLB private and shared (with a child: one object of the tree), MFD_HUGETLB, a hugetlbfs file."""
    from targets import kill_all
    mnt = tmp_path / "huge"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "hugetlbfs", "none", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a hugetlbfs")
    try:
        t = py_target("py_hugetlb.py", str(mnt), stderr=subprocess.DEVNULL)
        info = t.ready()
        try:
            assert set(info["areas"].split(",")) == {"private", "shared", "memfd", "file-shared", "file-private"}
            _round_trip(t, tmp_path, restored, "PASS hugetlb")
        finally:
            kill_all([int(info["child"])])
            t.close()
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.fixture
def shm_name(tmp_path: Path):  # noqa: ANN201
    """A /dev/shm file name of this test's own (removed after)."""
    name = f"ckpt-test-{os.getpid()}-{tmp_path.name}"
    yield name
    Path("/dev/shm", name).unlink(missing_ok=True)


def test_posix_shared_memory_kept_on_a_plain_restore(py_target, tmp_path: Path, restored: list[int],  # noqa: ANN001
                                                     shm_name: str) -> None:
    from targets import kill_all
    t = py_target("py_posix_shm.py", shm_name, stderr=subprocess.DEVNULL)
    info = t.ready()
    try:
        _round_trip(t, tmp_path, restored, "PASS posix-shm")
    finally:
        kill_all([int(info["child"])])


def test_posix_shared_memory_made_again_where_it_is_missing(py_target, tmp_path: Path, restored: list[int],  # noqa: ANN001
                                                            shm_name: str) -> None:
    """What a migration meets (the destination never had the /dev/shm file), on one host: the file is removed
    after the dump; the restore makes it again from the image, with its owner, mode and bytes."""
    from targets import kill_all
    t = py_target("py_posix_shm.py", shm_name, stderr=subprocess.DEVNULL)
    info = t.ready()
    path = Path("/dev/shm", shm_name)
    try:
        os.kill(t.pid, signal.SIGUSR1)
        assert t.expect("PASS").startswith("PASS posix-shm round=1")
        api.dump(t.pid, tmp_path / "img")
        _forget(t)
        was = path.stat()
        path.unlink()
        r = api.restore(tmp_path / "img", inherit_fds=t.stdio_fds)
        restored.append(r.pid)
        assert any(str(path) in n for n in r.notes)
        now = path.stat()
        assert (now.st_mode, now.st_uid, now.st_size, now.st_mtime_ns) == (was.st_mode, was.st_uid, was.st_size,
                                                                          was.st_mtime_ns)
        os.kill(t.pid, signal.SIGUSR1)  # the pattern, the file by path is the mapping's, and the child
        assert t.expect("PASS").startswith("PASS posix-shm round=2")
    finally:
        kill_all([int(info["child"])])


@pytest.mark.parametrize("script", ["py_vmflags.py", "py_unreadable.py"])
def test_flags_and_guards_through_a_chain_and_a_staged_restore(py_target, tmp_path: Path, restored: list[int],  # noqa: ANN001
                                                              script: str) -> None:
    """A pre-dump tracked with uffd-wp, then the final delta: restored plainly from the chain, and in stages
    (a migration's way: the pre-dump's layout mapped and filled first, the final image applied to it)."""
    from ckpt.dump import dump
    from ckpt.incremental import pre_dump
    from ckpt.restore import StagedRestore
    from backends import need_method
    need_method("uffd-wp")
    t = py_target(script, *(["future"] if script == "py_vmflags.py" else []), stderr=subprocess.DEVNULL)
    t.ready()
    prefix = "PASS " + ("vmflags" if script == "py_vmflags.py" else "unreadable")
    os.kill(t.pid, signal.SIGUSR1)
    assert t.expect("PASS").startswith(f"{prefix} round=1")
    pre_dump(t.pid, tmp_path / "1", method="uffd-wp")
    dump(t.pid, tmp_path / "final", parent=tmp_path / "1", track_method="uffd-wp")
    _forget(t)
    staged = StagedRestore(inherit_fds=t.stdio_fds)
    staged.start(tmp_path / "1")
    restored.append(staged.finish(tmp_path / "final").pid)
    os.kill(t.pid, signal.SIGUSR1)
    assert t.expect("PASS").startswith(f"{prefix} round=2")
    os.kill(t.pid, signal.SIGKILL)
    os.waitpid(t.pid, 0)
    restored.remove(t.pid)
    restored.append(api.restore(tmp_path / "final", inherit_fds=t.stdio_fds).pid)
    os.kill(t.pid, signal.SIGUSR1)
    assert t.expect("PASS").startswith(f"{prefix} round=2")


def test_shared_memory_written_by_a_child_since_exited(py_target, tmp_path: Path,  # noqa: ANN001
                                                       restored: list[int]) -> None:
    """The page lives in the shared object only, not in the dumped process's page table (it was lost)."""
    t = py_target("py_shared_anon_exited.py", stderr=subprocess.DEVNULL)
    t.ready()
    api.dump(t.pid, tmp_path / "img")  # (no check before: it would fault the page into the process)
    _forget(t)
    restored.append(api.restore(tmp_path / "img", inherit_fds=t.stdio_fds).pid)
    os.kill(t.pid, signal.SIGUSR1)
    assert t.expect("PASS").startswith("PASS shared-exited round=1")


def test_hugetlb_restore_without_free_huge_pages_is_refused_by_name(huge_pages, py_target, tmp_path: Path,  # noqa: ANN001
                                                                   restored: list[int]) -> None:
    from ckpt.errors import RestoreError
    from targets import kill_all
    t = py_target("py_hugetlb.py", stderr=subprocess.DEVNULL)
    child = int(t.ready()["child"])
    try:
        api.dump(t.pid, tmp_path / "img")
        _forget(t)
    finally:
        kill_all([child])
    path = Path("/proc/sys/vm/nr_hugepages")
    reserved = path.read_text()
    path.write_text("0")  # none left for the restore (the fixture puts the count back)
    try:
        with pytest.raises(RestoreError, match="hugetlb memory of .* could not be had") as err:
            restored.append(api.restore(tmp_path / "img", inherit_fds=t.stdio_fds).pid)
        assert "nr_hugepages" in (err.value.hint or "")
    finally:
        path.write_text(reserved)
