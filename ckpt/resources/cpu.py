"""The CPU: which features an image's process may use, and whether this CPU has them.

A process chooses code paths by CPUID once, when it starts — glibc's ifuncs
(memcpy, strlen…), its lazy-binding trampoline (XSAVEC when the CPU has it,
with a save area sized from CPUID leaf 0DH), libcrypto's capability vector,
JIT compilers — and keeps them for the rest of its life.  Restored on a CPU
without one of those features it dies of SIGILL at some later call, or
overruns a stack buffer sized for another XSAVE layout.  So the dump records
the CPU (:func:`here`, in the inventory) and the restore compares, before any
process is created (:func:`check`).

What is compared (``--cpu-cap``, CRIU's names):

``fpu``
    the vector state: the image's XCR0 must equal this CPU's and its XSAVE
    area have the same size (PTRACE_SETREGSET needs exactly this CPU's
    layout, and glibc sized its lazy-binding save area for the image's);
    fpu, fxsr, xsave and osxsave present.
``ins``
    every *instruction* feature of :data:`FEATURES` (kind ``ins``) the image's
    CPU had must be here: an instruction user code can execute, which faults
    or behaves differently where it is missing.  A richer CPU here is fine.
``cpu``
    every recorded feature bit equal, both ways (performance hints such as
    erms/fsrm, privileged ones such as invpcid/xsaves, mitigation bits too).
``all``
    the three; ``none`` none (unsafe: see the README).

The default is ``fpu,ins``, as CRIU's.  Unlike CRIU, where a value is added
to the default, a list here names the checks to make (``--cpu-cap fpu``
checks the vector state only); ``^ins`` removes one check from the default.
CRIU's ``image`` (record the CPU at dump) is accepted and changes nothing:
ckpt always records it.

Recorded words (:data:`WORDS`) are whole registers less the bits that are
not features (the hypervisor bit, AMD's copy of leaf 1 EDX), so a later ckpt
that knows more feature names can check old images too.  Bits without a name
in :data:`FEATURES` show as ``cpuid.7.0.edx[26]``.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

from ..errors import Unsupported, UsageError
from ..image.pb import cpu_pb2, inventory_pb2
from ..kernel import cpuid as _cpuid

__all__ = [
    "WordKey", "Feature", "FEATURES", "WORDS", "XFEATURES", "CpuRecord", "here", "to_pb", "from_pb", "to_wire",
    "from_wire",
    "CHECKS", "DEFAULT_CAPS", "parse_cpu_cap", "problems", "recorded", "check_image", "check", "describe",
]

EAX, EBX, ECX, EDX = "eax", "ebx", "ecx", "edx"
_REG_PB = {EAX: cpu_pb2.CpuidWord.EAX, EBX: cpu_pb2.CpuidWord.EBX, ECX: cpu_pb2.CpuidWord.ECX,
           EDX: cpu_pb2.CpuidWord.EDX}
_PB_REG = {v: k for k, v in _REG_PB.items()}


class WordKey(NamedTuple):
    """Which register of which leaf/subleaf."""

    leaf: int
    subleaf: int
    reg: str

    def __str__(self) -> str:
        sub = f".{self.subleaf}" if self.leaf in _SUBLEAF_LEAVES else ""
        return f"cpuid.{self.leaf:#x}{sub}.{self.reg}" if self.leaf >= 0x8000_0000 else \
            f"cpuid.{self.leaf:x}{sub}.{self.reg}"


#: Leaves whose ECX input selects a subleaf.
_SUBLEAF_LEAVES = frozenset({0x7, 0xD})

#: The registers recorded, with the bits that are not features (masked out).
#: 1 ECX bit 31 says "running under a hypervisor": true of a guest, false of its host, about no instruction.
#: AMD mirrors 18 bits of 1 EDX (fpu … fxsr) in 80000001H EDX, where Intel leaves them 0: one feature twice.
WORDS: Mapping[WordKey, int] = {
    WordKey(0x1, 0, EDX): 0,
    WordKey(0x1, 0, ECX): 1 << 31,
    WordKey(0x7, 0, EBX): 0,
    WordKey(0x7, 0, ECX): 0,
    WordKey(0x7, 0, EDX): 0,
    WordKey(0x7, 1, EAX): 0,
    WordKey(0x7, 1, EDX): 0,
    WordKey(0xD, 1, EAX): 0,
    WordKey(0x8000_0001, 0, ECX): 0,
    WordKey(0x8000_0001, 0, EDX): 0x0183_F3FF,
    WordKey(0x8000_0008, 0, EBX): 0,
}


@dataclass(frozen=True)
class Feature:
    """One CPUID feature bit, named as /proc/cpuinfo names it (Linux's cpufeatures.h).

    ``kind``: ``ins`` — instructions user code can execute (missing: SIGILL or
    other results); ``hint`` — faster ways to do the same (erms, fsrm):
    missing costs speed only; ``sys`` — privileged or platform features no
    user instruction depends on (invpcid, xsaves, vmx, smap) — compared only
    by ``--cpu-cap cpu``.
    """

    name: str
    word: WordKey
    bit: int
    kind: str = "ins"


def _table(word: WordKey, bits: Iterable[tuple[int, str, str]]) -> list[Feature]:
    return [Feature(name, word, bit, kind) for bit, name, kind in bits]


I, H, S = "ins", "hint", "sys"
FEATURES: tuple[Feature, ...] = tuple(
    _table(WordKey(0x1, 0, EDX), [
        (0, "fpu", I), (1, "vme", S), (2, "de", S), (3, "pse", S), (4, "tsc", I), (5, "msr", S), (6, "pae", S),
        (7, "mce", S), (8, "cx8", I), (9, "apic", S), (11, "sep", S), (12, "mtrr", S), (13, "pge", S),
        (14, "mca", S), (15, "cmov", I), (16, "pat", S), (17, "pse36", S), (18, "pn", S), (19, "clflush", I),
        (21, "dts", S), (22, "acpi", S), (23, "mmx", I), (24, "fxsr", I), (25, "sse", I), (26, "sse2", I),
        (27, "ss", S), (28, "ht", S), (29, "tm", S), (30, "ia64", S), (31, "pbe", S)])
    + _table(WordKey(0x1, 0, ECX), [
        (0, "pni", I), (1, "pclmulqdq", I), (2, "dtes64", S), (3, "monitor", S), (4, "ds_cpl", S), (5, "vmx", S),
        (6, "smx", S), (7, "est", S), (8, "tm2", S), (9, "ssse3", I), (10, "cid", S), (11, "sdbg", S),
        (12, "fma", I), (13, "cx16", I), (14, "xtpr", S), (15, "pdcm", S), (17, "pcid", S), (18, "dca", S),
        (19, "sse4_1", I), (20, "sse4_2", I), (21, "x2apic", S), (22, "movbe", I), (23, "popcnt", I),
        (24, "tsc_deadline_timer", S), (25, "aes", I), (26, "xsave", I), (27, "osxsave", I), (28, "avx", I),
        (29, "f16c", I), (30, "rdrand", I)])
    + _table(WordKey(0x7, 0, EBX), [
        (0, "fsgsbase", I), (1, "tsc_adjust", S), (2, "sgx", S), (3, "bmi1", I), (4, "hle", I), (5, "avx2", I),
        (7, "smep", S), (8, "bmi2", I), (9, "erms", H), (10, "invpcid", S), (11, "rtm", I), (12, "cqm", S),
        (14, "mpx", I), (15, "rdt_a", S), (16, "avx512f", I), (17, "avx512dq", I), (18, "rdseed", I),
        (19, "adx", I), (20, "smap", S), (21, "avx512ifma", I), (23, "clflushopt", I), (24, "clwb", I),
        (25, "intel_pt", S), (26, "avx512pf", I), (27, "avx512er", I), (28, "avx512cd", I), (29, "sha_ni", I),
        (30, "avx512bw", I), (31, "avx512vl", I)])
    + _table(WordKey(0x7, 0, ECX), [
        (0, "prefetchwt1", I), (1, "avx512vbmi", I), (2, "umip", S), (3, "pku", I), (4, "ospke", I),
        (5, "waitpkg", I), (6, "avx512_vbmi2", I), (7, "shstk", S), (8, "gfni", I), (9, "vaes", I),
        (10, "vpclmulqdq", I), (11, "avx512_vnni", I), (12, "avx512_bitalg", I), (13, "tme", S),
        (14, "avx512_vpopcntdq", I), (16, "la57", S), (22, "rdpid", I), (24, "bus_lock_detect", S),
        (25, "cldemote", I), (27, "movdiri", I), (28, "movdir64b", I), (29, "enqcmd", I), (30, "sgx_lc", S)])
    + _table(WordKey(0x7, 0, EDX), [
        (2, "avx512_4vnniw", I), (3, "avx512_4fmaps", I), (4, "fsrm", H), (8, "avx512_vp2intersect", I),
        (10, "md_clear", S), (14, "serialize", I), (16, "tsxldtrk", I), (18, "pconfig", S), (19, "arch_lbr", S),
        (20, "ibt", S), (22, "amx_bf16", I), (23, "avx512_fp16", I), (24, "amx_tile", I), (25, "amx_int8", I),
        (28, "flush_l1d", S), (29, "arch_capabilities", S)])
    + _table(WordKey(0x7, 1, EAX), [
        (0, "sha512", I), (1, "sm3", I), (2, "sm4", I), (4, "avx_vnni", I), (5, "avx512_bf16", I),
        (7, "cmpccxadd", I), (10, "fzrm", H), (11, "fsrs", H), (12, "fsrc", H), (17, "fred", S), (18, "lkgs", S),
        (19, "wrmsrns", S), (21, "amx_fp16", I), (23, "avx_ifma", I), (26, "lam", S)])
    + _table(WordKey(0x7, 1, EDX), [
        (4, "avx_vnni_int8", I), (5, "avx_ne_convert", I), (8, "amx_complex", I), (10, "avx_vnni_int16", I),
        (14, "prefetchiti", I), (19, "avx10", I)])
    + _table(WordKey(0xD, 1, EAX), [
        (0, "xsaveopt", I), (1, "xsavec", I), (2, "xgetbv1", I), (3, "xsaves", S), (4, "xfd", S)])
    + _table(WordKey(0x8000_0001, 0, ECX), [
        (0, "lahf_lm", I), (1, "cmp_legacy", S), (2, "svm", S), (3, "extapic", S), (4, "cr8_legacy", S),
        (5, "abm", I), (6, "sse4a", I), (7, "misalignsse", I), (8, "3dnowprefetch", I), (9, "osvw", S),
        (10, "ibs", S), (11, "xop", I), (12, "skinit", S), (13, "wdt", S), (15, "lwp", I), (16, "fma4", I),
        (17, "tce", S), (19, "nodeid_msr", S), (21, "tbm", I), (22, "topoext", S), (23, "perfctr_core", S),
        (24, "perfctr_nb", S), (26, "bpext", S), (27, "ptsc", S), (28, "perfctr_llc", S), (29, "mwaitx", I)])
    + _table(WordKey(0x8000_0001, 0, EDX), [
        (11, "syscall", I), (19, "mp", S), (20, "nx", S), (22, "mmxext", I), (25, "fxsr_opt", S),
        (26, "pdpe1gb", S), (27, "rdtscp", I), (29, "lm", I), (30, "3dnowext", I), (31, "3dnow", I)])
    + _table(WordKey(0x8000_0008, 0, EBX), [
        (0, "clzero", I), (1, "irperf", S), (2, "xsaveerptr", S), (4, "rdpru", I), (9, "wbnoinvd", S)])
)
del I, H, S

#: The fpu check also wants these (CRIU's choice, plus xsave).
_FPU_FEATURES = ("fpu", "fxsr", "xsave", "osxsave")

#: XCR0 bit → state component, as Linux names them in messages (arch/x86/kernel/fpu/xstate.c).
XFEATURES: Mapping[int, str] = {
    0: "x87", 1: "sse", 2: "avx", 3: "mpx_bndregs", 4: "mpx_bndcsr", 5: "avx512_opmask", 6: "avx512_zmm_hi256",
    7: "avx512_hi16_zmm", 9: "pkru", 17: "amx_tilecfg", 18: "amx_tiledata", 19: "apx",
}

_BY_NAME = {f.name: f for f in FEATURES}


@dataclass(frozen=True)
class CpuRecord:
    """A CPU as an image records it (or as this machine is): identity for people, features for the checks."""

    vendor: str = ""
    family: int = 0
    model: int = 0
    stepping: int = 0
    model_name: str = ""
    xcr0: int = 0
    xstate_size: int = 0
    words: Mapping[WordKey, int] = field(default_factory=dict)

    def bits(self) -> set[tuple[WordKey, int]]:
        """Every (word, bit) set."""
        return {(k, b) for k, v in self.words.items() for b in range(32) if v >> b & 1}

    def has(self, name: str) -> bool:
        f = _BY_NAME[name]
        return bool(self.words.get(f.word, 0) >> f.bit & 1)

    def features(self, kinds: Iterable[str] = ("ins", "hint", "sys")) -> list[str]:
        """Names of the set features of these kinds, in table order."""
        want = set(kinds)
        return [f.name for f in FEATURES if f.kind in want and self.has(f.name)]

    @property
    def title(self) -> str:
        """What people read: ``AMD EPYC (AuthenticAMD family 25 model 1 stepping 1)``."""
        ident = f"{self.vendor} family {self.family} model {self.model} stepping {self.stepping}"
        return f"{self.model_name} ({ident})" if self.model_name else ident


def _brand() -> str:
    if _cpuid.max_extended_leaf() < 0x8000_0004:
        return ""
    raw = b"".join(r.to_bytes(4, "little") for leaf in range(0x8000_0002, 0x8000_0005) for r in _cpuid.cpuid(leaf))
    return raw.split(b"\0", 1)[0].decode("ascii", "replace").strip()


@functools.cache
def here() -> CpuRecord:
    """This machine's CPU (what every library of a process started here sees)."""
    top, ext_top = _cpuid.max_leaf(), _cpuid.max_extended_leaf()
    v = _cpuid.cpuid(0)
    vendor = b"".join(r.to_bytes(4, "little") for r in (v.ebx, v.edx, v.ecx)).decode("ascii", "replace")
    sig = _cpuid.cpuid(1).eax
    family = (sig >> 8) & 0xF
    if family == 0xF:
        family += (sig >> 20) & 0xFF
    model = (sig >> 4) & 0xF
    if family >= 6:
        model += ((sig >> 16) & 0xF) << 4
    words: dict[WordKey, int] = {}
    for key, junk in WORDS.items():
        if key.leaf > (ext_top if key.leaf >= 0x8000_0000 else top):
            continue
        if key.leaf == 0x7 and key.subleaf > _cpuid.cpuid(0x7, 0).eax:
            continue
        words[key] = getattr(_cpuid.cpuid(key.leaf, key.subleaf), key.reg) & ~junk
    osxsave = bool(words.get(WordKey(0x1, 0, ECX), 0) & _cpuid.CPUID_1_ECX_OSXSAVE)
    xcr0 = _cpuid.xgetbv(0) if osxsave else 0
    size = _cpuid.cpuid(0xD, 0).ebx if osxsave and top >= 0xD else 0
    return CpuRecord(vendor, family, model, sig & 0xF, _brand(), xcr0, size, words)


# --- the image record --------------------------------------------------------------------------

def to_pb(rec: CpuRecord) -> cpu_pb2.CpuFeatures:
    return cpu_pb2.CpuFeatures(
        vendor=rec.vendor, family=rec.family, model=rec.model, stepping=rec.stepping, model_name=rec.model_name,
        xcr0=rec.xcr0, xstate_size=rec.xstate_size,
        words=[cpu_pb2.CpuidWord(leaf=k.leaf, subleaf=k.subleaf, reg=_REG_PB[k.reg], value=v)
               for k, v in rec.words.items()])


def from_pb(pb: cpu_pb2.CpuFeatures) -> CpuRecord:
    """The record; words with an unknown register are skipped (a later writer's)."""
    words = {WordKey(w.leaf, w.subleaf, _PB_REG[w.reg]): w.value for w in pb.words if w.reg in _PB_REG}
    return CpuRecord(pb.vendor, pb.family, pb.model, pb.stepping, pb.model_name, pb.xcr0, pb.xstate_size, words)


def to_wire(rec: CpuRecord) -> dict[str, object]:
    """Plain data for the migration handshake (msgpack)."""
    return {"vendor": rec.vendor, "family": rec.family, "model": rec.model, "stepping": rec.stepping,
            "model_name": rec.model_name, "xcr0": rec.xcr0, "xstate_size": rec.xstate_size,
            "words": [[k.leaf, k.subleaf, k.reg, v] for k, v in rec.words.items()]}


def from_wire(d: object) -> CpuRecord:
    """The peer's record; UsageError when it is not one (a peer is not trusted to send sense)."""
    def uint(v: object, bits: int) -> int:
        if not isinstance(v, int) or not 0 <= v < 1 << bits:
            raise ValueError(v)
        return v

    try:
        if not isinstance(d, dict) or not isinstance(d["words"], list) or len(d["words"]) > 64:
            raise TypeError("not a CPU record")
        words = {WordKey(uint(leaf, 32), uint(sub, 32), reg): uint(value, 32)
                 for leaf, sub, reg, value in d["words"] if reg in _REG_PB}
        return CpuRecord(str(d["vendor"])[:64], uint(d["family"], 32), uint(d["model"], 32),
                         uint(d["stepping"], 32), str(d["model_name"])[:64], uint(d["xcr0"], 64),
                         uint(d["xstate_size"], 32), words)
    except (KeyError, TypeError, ValueError) as exc:
        raise UsageError(f"the source sent a malformed CPU record ({type(exc).__name__})") from None


# --- --cpu-cap and the checks ------------------------------------------------------------------

#: The checks ``--cpu-cap`` can name.
CHECKS = ("fpu", "ins", "cpu")
#: As CRIU's default.
DEFAULT_CAPS: frozenset[str] = frozenset({"fpu", "ins"})


def parse_cpu_cap(text: str | Iterable[str] | None) -> frozenset[str]:
    """``--cpu-cap`` → the checks to make.  None (option absent): the default; "" or "all": every check.

    A comma-separated list of fpu, ins, cpu, all, none (and CRIU's image, a
    no-op).  The list names the checks; a value prefixed with ``^`` removes
    one, from the default when the list has only such values.  A set of
    check names (an API caller's) is taken as it is, once checked.
    """
    if text is None:
        return DEFAULT_CAPS
    if not isinstance(text, str):
        caps = frozenset(text)
        if caps - set(CHECKS):
            raise UsageError(f"cpu_cap: unknown checks {sorted(caps - set(CHECKS))} (known: {', '.join(CHECKS)})")
        return caps
    tokens = [t.strip() for t in text.split(",")] if text.strip() else ["all"]
    tokens = [t for t in tokens if t.lstrip("^") != "image"]  # CRIU: "record the CPU at dump", which ckpt always does
    if not tokens:
        return DEFAULT_CAPS
    caps: set[str] = set(DEFAULT_CAPS) if all(t.startswith("^") for t in tokens) else set()
    for tok in tokens:
        neg, name = tok.startswith("^"), tok.lstrip("^")
        if name in CHECKS:
            named = {name}
        elif name == "all":
            named = set(CHECKS)
        elif name == "none":
            named, neg = set(CHECKS), not neg
        else:
            raise UsageError(f"--cpu-cap: unknown value {tok!r}",
                             hint="use a comma-separated list of fpu, ins, cpu, all, none (^VALUE removes one)")
        caps = caps - named if neg else caps | named
    return frozenset(caps)


def _word_name(key: WordKey, bit: int) -> str:
    f = next((f for f in FEATURES if f.word == key and f.bit == bit), None)
    return f.name if f is not None else f"{key}[{bit}]"


def _xnames(mask: int) -> str:
    return " ".join(XFEATURES.get(b, f"xfeature{b}") for b in range(64) if mask >> b & 1)


def _ordered(bits: Iterable[tuple[WordKey, int]]) -> list[str]:
    order = {f.name: i for i, f in enumerate(FEATURES)}
    names = {_word_name(k, b) for k, b in bits}
    return sorted(names, key=lambda n: (order.get(n, len(order)), n))


def problems(image: CpuRecord, local: CpuRecord, caps: Iterable[str]) -> list[str]:
    """What makes ``image``'s process unsafe on ``local`` under ``caps``, one phrase each; [] when it is fine."""
    caps = set(caps)
    out: list[str] = []
    if "fpu" in caps:
        gone = [n for n in _FPU_FEATURES if image.has(n) and not local.has(n)]
        if gone:
            out.append(f"this CPU lacks {' '.join(gone)}")
        if image.xcr0 & ~local.xcr0:
            out.append(f"this CPU does not enable the vector state {_xnames(image.xcr0 & ~local.xcr0)} "
                       f"(XCR0 {local.xcr0:#x}, the image's {image.xcr0:#x})")
        elif image.xcr0 != local.xcr0:
            out.append(f"this CPU enables more vector state ({_xnames(local.xcr0 & ~image.xcr0)}; XCR0 "
                       f"{local.xcr0:#x}, the image's {image.xcr0:#x}), which the process's save areas have no "
                       "room for")
        elif image.xstate_size != local.xstate_size:
            out.append(f"the XSAVE area is {local.xstate_size} bytes here, {image.xstate_size} in the image")
    if "ins" in caps:
        want = {(f.word, f.bit) for f in FEATURES if f.kind == "ins" and image.has(f.name)}
        missing = [(k, b) for k, b in want if not local.words.get(k, 0) >> b & 1]
        if missing:
            out.append(f"this CPU lacks instructions the process may use: {' '.join(_ordered(missing))}")
    if "cpu" in caps:
        mine, theirs = local.bits(), image.bits()
        parts = []
        if theirs - mine:
            parts.append(f"missing here: {' '.join(_ordered(theirs - mine))}")
        if mine - theirs:
            parts.append(f"only here: {' '.join(_ordered(mine - theirs))}")
        if parts:
            out.append(f"the CPU features differ ({'; '.join(parts)})")
    return out


def recorded(inventory: inventory_pb2.Inventory) -> CpuRecord | None:
    """The CPU an image records; None for an image written before ckpt recorded it."""
    return from_pb(inventory.cpu) if inventory.HasField("cpu") else None


def check_image(inventory: inventory_pb2.Inventory, caps: Iterable[str] | None = None) -> None:
    """Refuse (Unsupported, exit 1) to restore the process of the image with this inventory here.

    ``caps``: the checks to make (:func:`parse_cpu_cap`; None: the default).
    An image without a CPU record is not checked (its xstate size still is, by the threads).
    """
    image = recorded(inventory)
    if image is not None:
        check(image, DEFAULT_CAPS if caps is None else caps)


def check(image: CpuRecord, caps: Iterable[str], local: CpuRecord | None = None) -> None:
    """Refuse (Unsupported, exit 1) to restore the process of a CPU like ``image`` on ``local`` (default: here)."""
    local = here() if local is None else local
    found = problems(image, local, caps)
    if found:
        raise Unsupported(
            f"the process comes from {image.title}: " + "; ".join(found),
            hint="the process chose its code paths by CPUID when it started; restore it on a CPU with these "
                 "features, or relax the check with --cpu-cap (e.g. --cpu-cap fpu; `none` is unsafe, see the README)")


def describe(rec: CpuRecord) -> dict[str, object]:
    """For ``ckpt show``: identity, vector state and feature names (those with no name as cpuid.L.S.reg[bit])."""
    named = {(f.word, f.bit) for f in FEATURES}
    return {
        "cpu": rec.title,
        "xcr0": f"{rec.xcr0:#x} ({_xnames(rec.xcr0)})",
        "xstate_size": rec.xstate_size,
        "instructions": " ".join(rec.features(("ins",))),
        "other": " ".join(rec.features(("hint", "sys"))
                          + [f"{k}[{b}]" for k, b in sorted(rec.bits() - named)]),
    }
