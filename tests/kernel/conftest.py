"""Kernel-layer tests drive real processes with ptrace, pidfd_getfd and set_tid: root only."""

import os

import pytest


@pytest.fixture(autouse=True)
def _need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("kernel-layer tests need root (ptrace of any process, clone3 set_tid, pidfd_getfd)")
