"""The CPU record and the restore's CPU check (ckpt/resources/cpu.py).

The comparison runs on synthetic records built from feature names, so each
case means the same on any x86-64 machine; the image side on records written
and read through the image store.  The binding (ckpt/kernel/cpuid.py) is
checked against the kernel in tests/kernel/test_cpuid.py.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from ckpt.errors import Unsupported, UsageError
from ckpt.image import Image, ImageKind, ImageWriter, ProcessInfo
from ckpt.image.pb import inventory_pb2
from ckpt.image.show import show
from ckpt.resources import cpu

AVX512 = ("avx512f", "avx512dq", "avx512cd", "avx512bw", "avx512vl")
#: What QEMU's `-cpu max` lacks against this project's AMD EPYC host (issue 15).
QEMU_LACKS = ("sha_ni", "xsavec", "rdseed", "rdpid", "vpclmulqdq", "fsrm", "clzero", "invpcid", "xsaves")


def record(*names: str, xcr0: int = 0x7, xstate_size: int = 832, base: cpu.CpuRecord | None = None,
           without: tuple[str, ...] = ()) -> cpu.CpuRecord:
    """A record with these features set (on top of ``base``'s) and ``without`` cleared."""
    words = dict(base.words) if base is not None else {}
    for name in names:
        f = next(f for f in cpu.FEATURES if f.name == name)
        words[f.word] = words.get(f.word, 0) | 1 << f.bit
    for name in without:
        f = next(f for f in cpu.FEATURES if f.name == name)
        words[f.word] = words.get(f.word, 0) & ~(1 << f.bit)
    return cpu.CpuRecord("GenuineIntel" if "avx512f" in names else "AuthenticAMD", 6, 143, 8, "test CPU",
                         xcr0, xstate_size, words)


BASIC = ("fpu", "fxsr", "sse", "sse2", "xsave", "osxsave", "avx", "avx2")


# -- the record ---------------------------------------------------------------------------------

def test_record_round_trips_through_the_image_and_the_wire() -> None:
    here = cpu.here()
    assert cpu.from_pb(cpu.to_pb(here)) == here
    assert cpu.from_wire(cpu.to_wire(here)) == here


@pytest.mark.parametrize("junk", [None, [], {"words": "x"}, {**cpu.to_wire(record()), "xcr0": -1},
                                  {**cpu.to_wire(record()), "words": [[1, 0, "ecx", 1 << 40]]},
                                  {**cpu.to_wire(record()), "words": [[1, 0, "ecx"]] * 100}])
def test_a_malformed_wire_record_is_refused(junk: object) -> None:
    with pytest.raises(UsageError, match="malformed CPU record"):
        cpu.from_wire(junk)


def _image(path: Path, **kw: object) -> Path:
    with ImageWriter(path, kind=ImageKind.FULL, **kw) as w:  # type: ignore[arg-type]
        # A zombie: a live process would need its files (show checks the image as verify does).
        w.commit(processes=[ProcessInfo(4242, 1, (), 1, None, zombie=True)])
    return path


def test_an_image_records_this_cpu_and_show_prints_it(tmp_path: Path) -> None:
    img = Image.open(_image(tmp_path / "img"))
    assert cpu.recorded(img.inventory) == cpu.here()
    text = show(tmp_path / "img")
    assert f"cpu {cpu.here().title}" in text and f"xcr0 {cpu.here().xcr0:#x}" in text
    assert "cpu instructions: fpu " in text
    old = Image.open(_image(tmp_path / "old", cpu=None))
    assert cpu.recorded(old.inventory) is None
    assert "cpu: not recorded" in show(tmp_path / "old")
    cpu.check_image(old.inventory, cpu.parse_cpu_cap("all"))  # nothing to compare: not refused


def test_merge_keeps_the_cpu_of_the_dump(tmp_path: Path) -> None:
    from ckpt.chain_ops import merge

    other = record(*BASIC, *AVX512, xcr0=0xE7, xstate_size=2688)
    _image(tmp_path / "img", cpu=cpu.to_pb(other))
    merge(tmp_path / "img", tmp_path / "merged")
    assert cpu.recorded(Image.open(tmp_path / "merged").inventory) == other


# -- --cpu-cap ----------------------------------------------------------------------------------

@pytest.mark.parametrize("text, caps", [
    (None, {"fpu", "ins"}), ("", {"fpu", "ins", "cpu"}), ("all", {"fpu", "ins", "cpu"}), ("none", set()),
    ("fpu", {"fpu"}), ("ins", {"ins"}), ("cpu", {"cpu"}), ("fpu,ins", {"fpu", "ins"}), ("^ins", {"fpu"}),
    ("^fpu", {"ins"}), ("none,fpu", {"fpu"}), ("all,^cpu", {"fpu", "ins"}), ("^none", {"fpu", "ins", "cpu"}),
    ("image", {"fpu", "ins"}), ("fpu,image", {"fpu"}),
])
def test_cpu_cap_values(text: str | None, caps: set[str]) -> None:
    assert cpu.parse_cpu_cap(text) == caps


@pytest.mark.parametrize("text", ["bogus", "fpu,avx", "^"])
def test_cpu_cap_unknown_value(text: str) -> None:
    with pytest.raises(UsageError, match="--cpu-cap"):
        cpu.parse_cpu_cap(text)
    with pytest.raises(UsageError):
        cpu.parse_cpu_cap({"fpu", "bogus"})


# -- the comparison -----------------------------------------------------------------------------

def test_same_cpu_passes_every_check() -> None:
    cpu.check(cpu.here(), cpu.parse_cpu_cap("all"))


def test_missing_instructions_are_refused_by_name() -> None:
    """An image from an AVX-512 machine on a CPU without it: refused naming each feature, in table order."""
    here = record(*BASIC, "sha_ni")
    image = record(*BASIC, *AVX512, "sha_ni")
    with pytest.raises(Unsupported) as exc:
        cpu.check(image, cpu.DEFAULT_CAPS, here)
    assert str(exc.value).endswith("this CPU lacks instructions the process may use: "
                                   "avx512f avx512dq avx512cd avx512bw avx512vl")
    assert "--cpu-cap" in (exc.value.hint or "") and exc.value.exit_code == 1
    cpu.check(image, {"fpu"}, here)  # the vector state is the same (XCR0 0x7 both): fpu alone lets it through
    cpu.check(image, set(), here)    # none


def test_this_machine_lacks_what_another_cpu_had() -> None:
    """An image claiming features this very CPU lacks (avx512f on an AMD without it) is refused naming them."""
    here = cpu.here()
    lacking = [f.name for f in cpu.FEATURES if f.kind == "ins" and not here.has(f.name)]
    image = record(*lacking[:3], base=here)
    with pytest.raises(Unsupported, match=f"lacks instructions the process may use: {' '.join(lacking[:3])}$"):
        cpu.check(image, cpu.DEFAULT_CAPS)
    if not here.has("avx512f"):
        with pytest.raises(Unsupported, match="avx512f"):
            cpu.check(record("avx512f", base=here), {"ins"})


def test_a_richer_cpu_here_is_fine_for_instructions() -> None:
    cpu.check(record(*BASIC), {"ins"}, record(*BASIC, *AVX512))


def test_qemu_guest_lacking_host_features() -> None:
    """Host → a `-cpu max` guest: the default names the instructions; `cpu` names every differing bit."""
    host = record(*BASIC, *QEMU_LACKS, "erms")
    guest = record(base=host, without=QEMU_LACKS)
    with pytest.raises(Unsupported) as exc:
        cpu.check(host, cpu.DEFAULT_CAPS, guest)
    assert str(exc.value).endswith("lacks instructions the process may use: rdseed sha_ni vpclmulqdq rdpid xsavec "
                                   "clzero")
    with pytest.raises(Unsupported) as exc:
        cpu.check(host, {"cpu"}, guest)
    assert "missing here: invpcid rdseed sha_ni vpclmulqdq rdpid fsrm xsavec xsaves clzero" in str(exc.value)
    cpu.check(guest, cpu.parse_cpu_cap("fpu,ins"), host)  # the other way round: a richer CPU is fine …
    with pytest.raises(Unsupported, match="only here: invpcid"):
        cpu.check(guest, {"cpu"}, host)  # … except for the strict check


@pytest.mark.parametrize("image_xcr0, here_xcr0, words", [
    (0x2E7, 0x207, "does not enable the vector state avx512_opmask avx512_zmm_hi256 avx512_hi16_zmm"),
    (0x602E7, 0x2E7, "does not enable the vector state amx_tilecfg amx_tiledata"),
    (0x7, 0xE7, "enables more vector state (avx512_opmask avx512_zmm_hi256 avx512_hi16_zmm; XCR0 0xe7"),
])
def test_xcr0_must_match(image_xcr0: int, here_xcr0: int, words: str) -> None:
    """Not a subset: the xstate cannot be loaded; a superset: glibc's save areas are too small for it."""
    image, here = record(*BASIC, xcr0=image_xcr0), record(*BASIC, xcr0=here_xcr0)
    with pytest.raises(Unsupported) as exc:
        cpu.check(image, {"fpu"}, here)
    assert words in str(exc.value)
    cpu.check(image, {"ins"}, here)  # `ins` alone does not look at the vector state
    cpu.check(image, set(), here)


def test_xstate_size_must_match() -> None:
    """Same XCR0 (x87, SSE, AVX, PKRU), other layout: Intel puts PKRU at 2688, AMD at 832 + …"""
    with pytest.raises(Unsupported, match="the XSAVE area is 2440 bytes here, 2696 in the image"):
        cpu.check(record(*BASIC, xcr0=0x207, xstate_size=2696), {"fpu"}, record(*BASIC, xcr0=0x207, xstate_size=2440))


def test_fpu_instructions_missing() -> None:
    with pytest.raises(Unsupported, match="this CPU lacks xsave osxsave"):
        cpu.check(record(*BASIC), {"fpu"}, record(*BASIC, without=("xsave", "osxsave")))


def test_hints_and_system_features_only_count_for_the_strict_check() -> None:
    image = record(*BASIC, "erms", "fsrm", "invpcid", "xsaves", "smap")
    cpu.check(image, cpu.DEFAULT_CAPS, record(*BASIC))
    with pytest.raises(Unsupported, match=r"missing here: erms invpcid smap fsrm xsaves\)"):
        cpu.check(image, {"cpu"}, record(*BASIC))


def test_unnamed_bits_are_named_by_position() -> None:
    base = record(*BASIC)
    image = dataclasses.replace(base, words={**base.words, cpu.WordKey(0x8000_0008, 0, "ebx"): 1 << 28})
    with pytest.raises(Unsupported, match=r"missing here: cpuid\.0x80000008\.ebx\[28\]"):
        cpu.check(image, {"cpu"}, record(*BASIC))


def test_check_image_reads_the_inventory() -> None:
    inv = inventory_pb2.Inventory()
    inv.cpu.CopyFrom(cpu.to_pb(record(*BASIC, *AVX512, base=cpu.here())))
    if all(cpu.here().has(n) for n in AVX512):
        cpu.check_image(inv)  # an AVX-512 machine: fine
    else:
        with pytest.raises(Unsupported, match="avx512"):
            cpu.check_image(inv)
    cpu.check_image(inv, cpu.parse_cpu_cap("none"))
