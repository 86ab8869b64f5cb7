"""The vDSO across kernels (ckpt/resources/vdso.py): the dynamic symbol table of a real and of a crafted
vDSO, the patch plan that routes one to the other, the proxy's bytes, the placement and the auxv."""

from __future__ import annotations

import ctypes
import hashlib
import struct

import pytest

from ckpt.errors import Unsupported
from ckpt.image.pb import inventory_pb2, mm_pb2
from ckpt.kernel.arch_x86_64 import NR, PAGE_SIZE
from ckpt.procfs.auxv import AT
from ckpt.procfs.maps import read_maps
from ckpt.resources import host, vdso

K = mm_pb2.Vma


def _own_vdso() -> tuple[int, bytes]:
    """This process's [vdso]: its address and its bytes, read through /proc/self/mem."""
    v = next(v for v in read_maps("self") if v.path == "[vdso]")
    with open("/proc/self/mem", "rb") as f:
        f.seek(v.start)
        return v.start, f.read(v.end - v.start)


def craft(funcs: dict[str, tuple[int, int]], size: int = 2 * PAGE_SIZE, gnu_hash: bool = False) -> bytes:
    """A minimal x86_64 ELF shared object exporting ``funcs`` (name -> (offset, size)), like a vDSO:
    ELF header, PT_LOAD + PT_DYNAMIC, a dynamic section, a hash table, .dynsym and .dynstr; code bytes int3."""
    names = list(funcs)
    strtab = b"\0" + b"".join(n.encode() + b"\0" for n in names)
    name_off = {n: 1 + sum(len(m) + 1 for m in names[:i]) for i, n in enumerate(names)}
    nsyms = len(names) + 1
    out = bytearray(b"\xcc" * size)
    dyn_at, hash_at, sym_at = 0x100, 0x200, 0x300
    str_at = sym_at + 24 * nsyms
    out[:64] = struct.pack("<16sHHIQQQIHHHHHH", b"\x7fELF\x02\x01\x01" + bytes(9), 3, 62, 1, 0, 64, 0, 0, 64, 56, 2,
                           64, 0, 0)
    out[64:120] = struct.pack("<IIQQQQQQ", 1, 5, 0, 0, 0, size, size, PAGE_SIZE)
    out[120:176] = struct.pack("<IIQQQQQQ", 2, 4, dyn_at, dyn_at, dyn_at, 6 * 16, 6 * 16, 8)
    hash_tag = 0x6FFFFEF5 if gnu_hash else 4
    dyn = [(hash_tag, hash_at), (5, str_at), (6, sym_at), (10, len(strtab)), (11, 24), (0, 0)]
    for i, (tag, val) in enumerate(dyn):
        out[dyn_at + 16 * i:dyn_at + 16 * i + 16] = struct.pack("<qQ", tag, val)
    if gnu_hash:  # one bucket holding symbols 1..n, the last one's chain word ends the chain (low bit)
        words = [1, 1, 1, 6, 0xFFFFFFFFFFFFFFFF]
        out[hash_at:hash_at + 24] = struct.pack("<IIIIQ", *words[:4], words[4])
        out[hash_at + 24:hash_at + 28] = struct.pack("<I", 1)
        for i in range(len(names)):
            out[hash_at + 28 + 4 * i:hash_at + 32 + 4 * i] = struct.pack("<I", 2 * i | (i == len(names) - 1))
    else:
        out[hash_at:hash_at + 8] = struct.pack("<II", 1, nsyms)
    for i, n in enumerate(names, 1):
        off, sz = funcs[n]
        out[sym_at + 24 * i:sym_at + 24 * i + 24] = struct.pack("<IBBHQQ", name_off[n], 0x12, 0, 12, off, sz)
    out[str_at:str_at + len(strtab)] = strtab
    return bytes(out)


#: A second layout: the functions of a 6.x vDSO at other offsets, with getrandom missing.
OTHER = {"__vdso_clock_gettime": (0x900, 600), "clock_gettime": (0x900, 600), "__vdso_gettimeofday": (0x800, 200),
         "gettimeofday": (0x800, 200), "__vdso_time": (0xB80, 40), "time": (0xB80, 40),
         "__vdso_getcpu": (0xBC0, 40), "getcpu": (0xBC0, 40), "__vdso_clock_getres": (0xC00, 90),
         "clock_getres": (0xC00, 90)}


def test_symbols_of_this_kernels_vdso() -> None:
    _, data = _own_vdso()
    syms = vdso.symbols(data)
    for name in ("__vdso_clock_gettime", "__vdso_gettimeofday", "__vdso_time", "__vdso_getcpu", "__vdso_clock_getres"):
        assert name in syms and syms[name].size > 0
        alias = name.removeprefix("__vdso_")
        assert syms[alias].offset == syms[name].offset  # the weak alias is the same function
    assert all(0 < s.offset and s.offset + s.size <= len(data) for s in syms.values())


def test_parsed_offsets_are_what_the_dynamic_linker_resolves() -> None:
    """dlsym on the vDSO (glibc loads it as a library) gives base + the offset parsed here."""
    base, data = _own_vdso()
    handle = ctypes.CDLL("linux-vdso.so.1", mode=getattr(__import__("os"), "RTLD_NOLOAD", 4))
    for name, sym in vdso.symbols(data).items():
        if name.startswith("__vdso_"):
            assert ctypes.cast(getattr(handle, name), ctypes.c_void_p).value == base + sym.offset, name


def test_crafted_vdso_parses_with_either_hash_table() -> None:
    for gnu in (False, True):
        syms = vdso.symbols(craft(OTHER, gnu_hash=gnu))
        assert {n: (s.offset, s.size) for n, s in syms.items()} == OTHER


@pytest.mark.parametrize("bad", [b"", b"\x7fELF" + bytes(60), b"\x7fELF\x01\x01" + bytes(200)])
def test_not_a_vdso(bad: bytes) -> None:
    with pytest.raises(vdso.VdsoFormatError):
        vdso.symbols(bad)


def test_tables_out_of_bounds_are_refused() -> None:
    data = bytearray(craft(OTHER))
    struct.pack_into("<qQ", data, 0x100 + 32, 6, 1 << 40)  # DT_SYMTAB far outside
    with pytest.raises(vdso.VdsoFormatError):
        vdso.symbols(bytes(data))


def _decode(route: vdso.Route, site: int) -> tuple[str, int]:
    """What a route's code does: ("jmp", target), ("syscall", nr) or ("ret", value)."""
    c = route.code
    if c[0] == 0xE9:
        return "jmp", site + 5 + struct.unpack("<i", c[1:5])[0]
    if c[:6] == b"\xff\x25\x00\x00\x00\x00":
        return "jmp", struct.unpack("<Q", c[6:14])[0]
    if c[0] == 0xB8 and c[5:] == b"\x0f\x05\xc3":
        return "syscall", struct.unpack("<I", c[1:5])[0]
    assert c[:3] == b"\x48\xc7\xc0" and c[7:] == b"\xc3"
    return "ret", struct.unpack("<i", c[3:7])[0]


@pytest.mark.parametrize("new_base", [0x7F0000200000, 0x10000000])  # near (rel32) and far (absolute)
def test_plan_routes_every_function_of_the_old_vdso(new_base: int) -> None:
    """This kernel's real vDSO as the image's, the crafted one as the new kernel's: every exported
    function jumps to the same name, getrandom (missing there) is done by its system call."""
    _, old = _own_vdso()
    new = craft(OTHER)
    old_base = 0x7F0000100000
    routes = vdso.plan(old, new, old_base, new_base)
    mine = vdso.symbols(old)
    assert sorted(n for r in routes for n in r.names) == sorted(mine)
    theirs = vdso.symbols(new)
    for r in routes:
        what, arg = _decode(r, old_base + r.offset)
        name = r.names[-1]
        if name in theirs:
            assert (what, arg) == ("jmp", new_base + theirs[name].offset)
            assert len(r.code) == (5 if abs(new_base - old_base) < 1 << 30 else 14)
        else:
            assert name.endswith("getrandom") and (what, arg) == ("syscall", NR.getrandom)
    proxy = vdso.proxy_bytes(old, routes)
    assert len(proxy) == len(old)
    for r in routes:  # the code is at the function, the rest of the old vDSO untouched (its ELF headers too)
        assert proxy[r.offset:r.offset + len(r.code)] == r.code
    patched = {i for r in routes for i in range(r.offset, r.offset + len(r.code))}
    assert all(proxy[i] == old[i] for i in range(len(old)) if i not in patched)
    assert vdso.symbols(proxy) == mine  # still the old vDSO for dl_iterate_phdr & co.


def test_plan_refuses_what_cannot_be_routed() -> None:
    new = craft(OTHER)
    with pytest.raises(vdso.Unroutable, match="no __vdso_frobnicate"):
        vdso.plan(craft({**OTHER, "__vdso_frobnicate": (0xD00, 64)}), new, 0, PAGE_SIZE * 4)
    with pytest.raises(vdso.Unroutable, match="too short"):  # a function shorter than an absolute jump
        vdso.check_routable(craft({**OTHER, "__vdso_time": (0xB80, 8), "time": (0xB80, 8)}), new)
    sgx = craft({**OTHER, "__vdso_sgx_enter_enclave": (0xD00, 160)})
    (r,) = [r for r in vdso.plan(sgx, new, 0, 1 << 40) if "__vdso_sgx_enter_enclave" in r.names]
    assert _decode(r, r.offset) == ("ret", -22)  # no enclave can be restored: -EINVAL, as without one


def test_place_avoids_the_image_and_keeps_the_relative_layout() -> None:
    current = {K.VVAR: (0x1000_0000, 0x1000_4000), K.VVAR_VCLOCK: (0x1000_4000, 0x1000_6000),
               K.VDSO: (0x1000_6000, 0x1000_8000)}
    old_vdso = (0x7F00_0000_4000, 0x7F00_0000_6000)
    taken = [(0x7F00_0000_0000, 0x7F00_0000_4000), old_vdso, (0x7F00_0000_6000, 0x7F00_0000_9000),
             (0x7F00_0000_A000, 0x7F00_0001_0000)]
    got = vdso.place(current, taken, old_vdso[1])
    assert got[K.VDSO][0] - got[K.VVAR][0] == 0x6000 and got[K.VVAR_VCLOCK][0] - got[K.VVAR][0] == 0x4000
    lo, hi = got[K.VVAR][0], got[K.VDSO][1]
    assert not any(s < hi and lo < e for s, e in taken)
    assert lo == 0x7F00_0001_0000  # the first gap above the old vDSO that holds all 32 KiB


def test_auxv_names_the_new_vdso() -> None:
    raw = struct.pack("=10Q", AT.PAGESZ, 4096, AT.SYSINFO_EHDR, 0x7FFF1000, AT.HWCAP, 7, AT.NULL, 0, 0, 0)
    out = vdso.auxv_with_vdso(raw, 0x7F0012345000)
    assert struct.unpack("=10Q", out)[3] == 0x7F0012345000
    assert out[:24] == raw[:24] and out[32:] == raw[32:]


def _vmas(vdso_size: int = 8192, clock: bool = False) -> list[mm_pb2.Vma]:
    out = [mm_pb2.Vma(start=0x7000, end=0x7000 + 16384, kind=K.VVAR, name="[vvar]"),
           mm_pb2.Vma(start=0x20000, end=0x20000 + vdso_size, kind=K.VDSO, name="[vdso]", prot=5)]
    if clock:
        out.append(mm_pb2.Vma(start=0xB000, end=0xD000, kind=K.VVAR_VCLOCK, name="[vvar_vclock]"))
    return out


def test_check_areas_routes_or_refuses_naming_both_kernels() -> None:
    """A 6.18-like image (with [vvar_vclock]) on a 6.12-like kernel: accepted when the image holds its vDSO
    and every function routes; refused, naming both kernels, when it holds none (an older ckpt's image)
    or a function has nowhere to go."""
    inv = inventory_pb2.Inventory(kernel_release="6.18.0-src", kernel_version="#1 SMP src", arch="x86_64")
    for name, size in (("[vvar]", 16384), ("[vvar_vclock]", 8192), ("[vdso]", 8192)):
        inv.kernel_areas.areas.add(name=name, size=size)
    new = craft(OTHER)
    mine = host.Kernel("6.12.0-dst", "#1 SMP dst", "x86_64", (("[vvar]", 16384), ("[vdso]", 8192)),
                       vdso_sha256=hashlib.sha256(new).digest())
    _, old = _own_vdso()
    mm = mm_pb2.MmEntry(vdso=old, vdso_sha256=hashlib.sha256(old).digest())
    host.check_areas(inv, [(mm, _vmas(clock=True))], mine, new)
    with pytest.raises(Unsupported) as exc:
        host.check_areas(inv, [(mm_pb2.MmEntry(vdso_sha256=mm.vdso_sha256), _vmas(clock=True))], mine, new)
    assert str(exc.value) == (
        "the image was taken on Linux 6.18.0-src #1 SMP src x86_64 ([vvar] 16384, [vvar_vclock] 8192, [vdso] 8192 "
        "bytes), this is Linux 6.12.0-dst #1 SMP dst x86_64 ([vvar] 16384, [vdso] 8192 bytes): the image holds no "
        "copy of its vDSO (an image of an older ckpt) to route to this kernel's")
    odd = craft({**OTHER, "__vdso_frobnicate": (0xD00, 64)})
    with pytest.raises(Unsupported, match=r"6\.18\.0-src.*6\.12\.0-dst.*no __vdso_frobnicate"):
        host.check_areas(inv, [(mm_pb2.MmEntry(vdso=odd), _vmas(clock=True))], mine, new)
    bad = mm_pb2.MmEntry(vdso=old, vdso_sha256=b"\1" * 32)
    with pytest.raises(Unsupported, match="does not match the digest"):
        host.check_areas(inv, [(bad, _vmas(clock=True))], mine, new)


def test_same_kernel_is_not_routed() -> None:
    """This kernel's own areas and vDSO: arrange() puts them at the image's addresses, no proxy."""
    _, code = _own_vdso()
    current = {K.VVAR: (0x1000_0000, 0x1000_4000), K.VDSO: (0x1000_4000, 0x1000_4000 + len(code))}
    recorded = {K.VVAR: mm_pb2.Vma(start=0x5000_0000, end=0x5000_4000, kind=K.VVAR),
                K.VDSO: mm_pb2.Vma(start=0x5000_4000, end=0x5000_4000 + len(code), kind=K.VDSO, prot=5)}
    mm = mm_pb2.MmEntry(vdso=code, vdso_sha256=hashlib.sha256(code).digest())
    got = vdso.arrange(recorded, current, mm, code, [])
    assert not got.routed and got.vdso_base is None
    assert got.areas == {K.VVAR: (0x5000_0000, 0x5000_4000), K.VDSO: (0x5000_4000, 0x5000_4000 + len(code))}
    other = craft(OTHER, size=len(code))
    routed = vdso.arrange(recorded, current, mm, other, [(v.start, v.end) for v in recorded.values()])
    assert routed.routed and routed.proxy[0] == 0x5000_4000 and routed.vdso_base == routed.areas[K.VDSO][0]
    assert routed.areas[K.VVAR][0] >= 0x5000_4000 + len(code)


def test_areas_the_process_unmapped_go_out_of_the_way_and_are_marked_gone() -> None:
    """An image without [vvar] (or without any kernel area): the kept ones at their addresses, the rest put
    where neither the image nor the kept ones are, and named ``gone`` for the release to unmap."""
    _, code = _own_vdso()
    current = {K.VVAR: (0x1000_0000, 0x1000_4000), K.VDSO: (0x1000_4000, 0x1000_4000 + len(code))}
    mm = mm_pb2.MmEntry(vdso=code, vdso_sha256=hashlib.sha256(code).digest())
    only_vdso = {K.VDSO: mm_pb2.Vma(start=0x5000_4000, end=0x5000_4000 + len(code), kind=K.VDSO, prot=5)}
    taken = [(0x1000_0000, 0x2000_0000)]
    got = vdso.arrange(only_vdso, current, mm, code, taken)
    assert not got.routed and got.gone == {K.VVAR}
    assert got.areas[K.VDSO] == (0x5000_4000, 0x5000_4000 + len(code))
    s, e = got.areas[K.VVAR]
    assert e - s == 0x4000 and not any(a < e and s < b for a, b in [*taken, got.areas[K.VDSO]])
    none = vdso.arrange({}, current, mm_pb2.MmEntry(), code, taken)
    assert none.gone == {K.VVAR, K.VDSO} and not none.routed
    assert not any(a < none.areas[K.VDSO][1] and none.areas[K.VVAR][0] < b for a, b in taken)
