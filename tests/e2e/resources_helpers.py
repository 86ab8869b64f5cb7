"""Shared by tests/e2e/test_resources_*: the helper process a resource is restored into, and /proc readers."""

from __future__ import annotations

import os

import pytest

from targets import Target

__all__ = ["need_root", "status_of", "start_helper", "fd_flags", "fdinfo_of"]

need_root = pytest.mark.skipif(os.geteuid() != 0, reason="restoring into a seized helper needs root")


def status_of(pid: int) -> dict[str, str]:
    """/proc/PID/status as key → stripped value."""
    with open(f"/proc/{pid}/status") as f:
        return {k: v.strip() for k, _, v in (line.partition(":") for line in f)}


def fdinfo_of(pid: int, fd: int) -> dict[str, str]:
    with open(f"/proc/{pid}/fdinfo/{fd}") as f:
        return {k: v.strip() for k, _, v in (line.partition(":") for line in f) if v}


def fd_flags(pid: int, fd: int) -> int:
    return int(fdinfo_of(pid, fd)["flags"], 8)


def start_helper(c_target, *args: str) -> Target:
    """The process a dump is restored into: scenarios/resources in ``helper`` mode, sitting in pause()."""
    h = c_target("resources", "helper", *args)
    h.ready()
    return h
