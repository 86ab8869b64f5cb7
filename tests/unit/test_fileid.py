"""The GNU build-id reader and the path/size/mtime/build-id comparison of ckpt/resources/fileid.py.

Files are compiled here with ``-Wl,--build-id=0x…`` (a known id), with the
default ``--build-id`` and with ``--build-id=none``; ``readelf -n`` says the same.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from ckpt.errors import Unsupported
from ckpt.image.pb import common_pb2, inventory_pb2, mm_pb2
from ckpt.resources import fileid, host

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")

_SRC = "int main(void) { return 0; }\n"
_KNOWN = "0123456789abcdef0123456789abcdef01234567"


def _build(tmp_path: Path, name: str, *flags: str) -> Path:
    src = tmp_path / "t.c"
    src.write_text(_SRC)
    out = tmp_path / name
    subprocess.run(["gcc", "-O1", *flags, "-o", str(out), str(src)], check=True)
    return out


def _read(path: Path) -> bytes:
    with open(path, "rb") as f:
        return fileid.build_id(lambda off, size: os.pread(f.fileno(), size, off))


def _readelf(path: Path) -> str:
    out = subprocess.run(["readelf", "-n", str(path)], capture_output=True, text=True, check=True).stdout
    return next((line.split()[-1] for line in out.splitlines() if "Build ID" in line), "")


def test_build_id_given_to_the_linker(tmp_path: Path) -> None:
    exe = _build(tmp_path, "known", f"-Wl,--build-id=0x{_KNOWN}")
    assert _read(exe).hex() == _KNOWN


def test_default_build_id_as_readelf_reads_it(tmp_path: Path) -> None:
    if shutil.which("readelf") is None:
        pytest.skip("needs readelf (binutils)")
    exe = _build(tmp_path, "default", "-Wl,--build-id")
    got = _read(exe)
    assert len(got) == 20 and got.hex() == _readelf(exe)
    lib = _build(tmp_path, "lib.so", "-shared", "-fPIC", "-Wl,--build-id=sha1")
    assert _read(lib).hex() == _readelf(lib) != got.hex()


def test_no_build_id(tmp_path: Path) -> None:
    exe = _build(tmp_path, "none", "-Wl,--build-id=none")
    assert _read(exe) == b""


def test_from_sections_when_there_are_no_program_headers(tmp_path: Path) -> None:
    """An ELF without program headers (e_phoff 0, as an object file has) is read through its SHT_NOTE sections."""
    exe = _build(tmp_path, "known", f"-Wl,--build-id=0x{_KNOWN}")
    data = bytearray(exe.read_bytes())
    data[32:40] = bytes(8)  # e_phoff of ELF64
    assert fileid.build_id_of_bytes(bytes(data)).hex() == _KNOWN


@pytest.mark.parametrize("data", [b"", b"\x7fELF", b"#!/bin/sh\necho hi\n" * 10, bytes(4096),
                                  b"\x7fELF\x02\x01\x01" + bytes(57) + b"\xff" * 200],
                         ids=["empty", "magic-only", "script", "zeros", "garbage-headers"])
def test_not_elf_or_broken_has_none(data: bytes) -> None:
    assert fileid.build_id_of_bytes(data) == b""


def test_truncated_notes_are_none(tmp_path: Path) -> None:
    exe = _build(tmp_path, "known", f"-Wl,--build-id=0x{_KNOWN}")
    data = exe.read_bytes()
    cut = data.index(bytes.fromhex(_KNOWN)) + 4  # the note's descriptor is cut short
    assert fileid.build_id_of_bytes(data[:cut]) == b""


def test_the_vdso_has_one() -> None:
    k = host.here()
    if "[vdso]" not in dict(k.areas):
        pytest.skip("no vDSO in this process")
    assert len(k.vdso_sha256) == 32 and k.vdso_build_id  # x86_64 kernels link their vDSO with --build-id


def test_cache_reads_each_file_once(tmp_path: Path) -> None:
    exe = _build(tmp_path, "known", f"-Wl,--build-id=0x{_KNOWN}")
    ids = fileid.BuildIds()
    for _ in range(3):
        assert ids.of_path(str(exe))[1].hex() == _KNOWN
    assert ids.reads == 1
    os.utime(exe, ns=(0, 1_000_000_000))  # another mtime: read again
    assert ids.of_path(str(exe))[1].hex() == _KNOWN and ids.reads == 2
    assert ids.of_path("/proc/self/status", "/proc/self/status")[1] == b""  # pseudo-files are not read


def _ident(path: Path) -> common_pb2.FileIdentity:
    return fileid.identity(*fileid.BuildIds().of_path(str(path)))


def test_compare_a_copy_elsewhere_is_the_same(tmp_path: Path) -> None:
    exe = _build(tmp_path, "known", f"-Wl,--build-id=0x{_KNOWN}")
    want = _ident(exe)
    copy = tmp_path / "copy"
    shutil.copy2(exe, copy)  # another inode, same size, mtime, build-id
    st = os.stat(copy)
    assert st.st_ino != want.ino and want.by_path
    assert not fileid.compare(st, want, lambda: _read(copy))


def test_compare_names_what_differs(tmp_path: Path) -> None:
    exe = _build(tmp_path, "known", f"-Wl,--build-id=0x{_KNOWN}")
    want = _ident(exe)
    other = _build(tmp_path, "other", "-Wl,--build-id=0x" + "ab" * 20)
    os.utime(other, ns=(want.mtime_ns, want.mtime_ns))
    found = fileid.compare(os.stat(other), want, lambda: _read(other))
    assert found.names == ["build-id"] and not found.same_contents
    assert found.text("/x") == f"/x changed since the dump (build-id {'ab' * 20} here, {_KNOWN} in the image)"
    touched = tmp_path / "touched"
    shutil.copy(exe, touched)  # the same bytes, a new mtime: the build-id vouches for them
    found = fileid.compare(os.stat(touched), want, lambda: _read(touched))
    assert found.names == ["mtime"] and found.same_contents
    data = tmp_path / "data"
    data.write_bytes(b"x" * 100)
    was = _ident(data)
    data.write_bytes(b"y" * 100)
    found = fileid.compare(os.stat(data), was, lambda: b"")
    assert found.names in (["mtime"], []) and not found.same_contents  # no build-id: nothing vouches


def test_compare_an_older_image_by_device_and_inode(tmp_path: Path) -> None:
    """An image written before by_path is checked as it was: dev, ino, size, mtime; the text says why."""
    f = tmp_path / "f"
    f.write_bytes(b"abc")
    st = os.stat(f)
    old = common_pb2.FileIdentity(dev=st.st_dev, ino=st.st_ino + 1, size=3, mtime_ns=st.st_mtime_ns, mode=st.st_mode)
    found = fileid.compare(st, old, lambda: b"")
    assert found.names == ["inode"] and found.legacy and not found.same_contents
    assert "restores only where its files have the same device and inode numbers" in found.text("f")
    old.ino = st.st_ino
    assert not fileid.compare(st, old, lambda: b"")


def test_compare_devices_by_number() -> None:
    st = os.stat("/dev/null")
    want = fileid.identity(st)
    assert want.rdev == st.st_rdev and not fileid.compare(st, want, lambda: b"")
    want.rdev = os.makedev(1, 5)
    assert fileid.compare(st, want, lambda: b"").names == ["device number"]


def _vmas(vdso: int = 8192) -> list[mm_pb2.Vma]:
    return [mm_pb2.Vma(start=0x7000, end=0x7000 + 16384, kind=mm_pb2.Vma.VVAR, name="[vvar]"),
            mm_pb2.Vma(start=0x20000, end=0x20000 + vdso, kind=mm_pb2.Vma.VDSO, name="[vdso]")]


def test_differing_kernel_areas_name_both_kernels() -> None:
    inv = inventory_pb2.Inventory(kernel_release="6.18.0-src", kernel_version="#1 SMP src", arch="x86_64")
    inv.kernel_areas.areas.add(name="[vvar]", size=16384)
    inv.kernel_areas.areas.add(name="[vdso]", size=8192)
    mine = host.Kernel("6.12.0-dst", "#1 SMP dst", "x86_64", (("[vvar]", 16384), ("[vdso]", 4096)))
    mm = mm_pb2.MmEntry()
    with pytest.raises(Unsupported) as exc:
        host.check_areas(inv, [(mm, _vmas())], mine)
    assert str(exc.value) == (
        "the image was taken on Linux 6.18.0-src #1 SMP src x86_64 ([vvar] 16384, [vdso] 8192 bytes), this is "
        "Linux 6.12.0-dst #1 SMP dst x86_64 ([vvar] 16384, [vdso] 4096 bytes): the image holds no copy of its "
        "vDSO (an image of an older ckpt) to route to this kernel's")
    host.check_areas(inv, [(mm, _vmas(4096))], mine)  # the same sizes: accepted
    mm.vdso_sha256 = b"\1" * 32
    with pytest.raises(Unsupported, match="no copy of its vDSO"):  # another vDSO and none to route (test_vdso.py)
        host.check_areas(inv, [(mm, _vmas(4096))], host.Kernel("6.12.0-dst", areas=mine.areas, vdso_sha256=b"\2" * 32))
    noclock = [*_vmas(4096), mm_pb2.Vma(start=0x5000, end=0x7000, kind=mm_pb2.Vma.VVAR_VCLOCK, name="[vvar_vclock]")]
    with pytest.raises(Unsupported, match=r"6\.18\.0-src.*6\.12\.0-dst.*no copy of its vDSO"):
        host.check_areas(inventory_pb2.Inventory(kernel_release="6.18.0-src"), [(mm_pb2.MmEntry(), noclock)], mine)
