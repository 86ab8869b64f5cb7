"""ckpt.kernel.cpuid against the kernel's own view of the CPU: /proc/cpuinfo and a seized thread's xstate."""

from __future__ import annotations

import pytest

from ckpt.kernel import cpuid, ptrace
from ckpt.resources import cpu
from .test_ptrace import seized


def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo."""
    out: dict[str, str] = {}
    with open("/proc/cpuinfo") as f:
        for line in f:
            if not line.strip():
                break
            key, _, value = line.partition(":")
            out[key.strip()] = value.strip()
    return out


def test_cpuid_agrees_with_proc_cpuinfo() -> None:
    """Identity and every feature of ckpt's table that the kernel lists are what our own CPUID reads."""
    info, here = _cpuinfo(), cpu.here()
    flags = set(info.get("flags", "").split())
    if not flags:
        pytest.skip("no flags in /proc/cpuinfo")
    assert here.vendor == info["vendor_id"] and here.model_name == info["model name"]
    assert (here.family, here.model, here.stepping) == (int(info["cpu family"]), int(info["model"]),
                                                        int(info["stepping"]))
    listed = {f.name for f in cpu.FEATURES} & flags
    assert {"fpu", "sse2", "cx8", "lm", "syscall"} <= listed  # every x86-64 CPU has these
    assert [n for n in sorted(listed) if not here.has(n)] == []  # the names are Linux's, the bits right
    assert here.has("avx512f") == ("avx512f" in flags)  # the feature that moved this project between machines
    assert cpuid.max_leaf() >= 0xD and cpuid.max_extended_leaf() >= 0x8000_0001
    assert not here.words[cpu.WordKey(0x1, 0, "ecx")] >> 31  # the hypervisor bit is never recorded


def test_xgetbv_and_leaf_0xd_are_what_ptrace_gives(c_target) -> None:  # noqa: ANN001
    """XCR0 and the xstate size from CPUID/XGETBV equal the kernel's NT_X86_XSTATE of a real thread."""
    here = cpu.here()
    assert here.xcr0 == cpuid.xgetbv(0) and here.xcr0 & 0b11 == 0b11  # x87 and SSE on every x86-64 kernel
    t = c_target("spin")
    t.ready()
    with seized(t.pid):
        xstate = ptrace.get_xstate(t.pid)
    assert len(xstate) == here.xstate_size == cpuid.cpuid(0xD, 0).ebx
    assert int.from_bytes(xstate[464:472], "little") == here.xcr0  # the kernel's copy of XCR0
