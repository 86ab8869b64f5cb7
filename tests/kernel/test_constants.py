"""ckpt.kernel constants and struct layouts against the system's own C headers.

Constants newer than Debian 12's headers (PAGEMAP_SCAN, UFFD_FEATURE_WP_ASYNC…)
are checked against the running kernel in their own test modules.
"""

from __future__ import annotations

import ctypes
import subprocess

import pytest

from ckpt.kernel import arch_x86_64, clone, mman, ptrace, seccomp, uffd
from targets import build_c


@pytest.fixture(scope="module")
def header_values() -> dict[str, int]:
    out = subprocess.run([build_c("constants")], capture_output=True, text=True, check=True).stdout
    return {name: int(value) for name, value in (line.rsplit(" ", 1) for line in out.splitlines())}


MODULES = (ptrace, mman, uffd, clone, seccomp)


def test_every_header_constant_matches(header_values: dict[str, int]) -> None:
    checked = 0
    for name, value in header_values.items():
        if name.startswith(("sizeof", "offsetof")):
            continue
        owners = [m for m in MODULES if hasattr(m, name)]
        assert owners, f"{name} is in the headers but in no ckpt.kernel module"
        for m in owners:
            assert getattr(m, name) == value, f"{m.__name__}.{name} = {getattr(m, name)}, header says {value}"
        checked += 1
    assert checked > 60


def test_struct_layouts(header_values: dict[str, int]) -> None:
    assert ctypes.sizeof(arch_x86_64.user_regs_struct) == header_values["sizeof(user_regs_struct)"]
    assert ctypes.sizeof(uffd.uffdio_api) == header_values["sizeof(uffdio_api)"]
    assert ctypes.sizeof(uffd.uffdio_register) == header_values["sizeof(uffdio_register)"]
    assert ctypes.sizeof(uffd.uffdio_writeprotect) == header_values["sizeof(uffdio_writeprotect)"]
    assert ctypes.sizeof(clone.clone_args) == header_values["sizeof(clone_args)"]
    assert ctypes.sizeof(seccomp.sock_fprog) == header_values["sizeof(sock_fprog)"]
    assert seccomp.SOCK_FILTER_SIZE == header_values["sizeof(sock_filter)"]
    for field in ("set_tid", "set_tid_size", "cgroup"):
        assert getattr(clone.clone_args, field).offset == header_values[f"offsetof(clone_args.{field})"]
