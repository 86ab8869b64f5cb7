"""Fixtures shared by every test tier: target processes that are always cleaned up."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator

import pytest

from hosts import SecondHost, second_host_for_test
from targets import Target, build_c, python_argv, spawn, traced_threads

StartTarget = Callable[..., Target]

#: tests/kernels boots QEMU guests with other kernels: `make test-kernels` names it on the command line;
#: a plain `pytest tests` (`make test`) leaves it out.
collect_ignore = ["kernels"]


class _Pool:
    """The targets one test started; ``close`` kills and reaps them all."""

    def __init__(self) -> None:
        self.targets: list[Target] = []

    def add(self, target: Target) -> Target:
        self.targets.append(target)
        return target

    def close(self) -> None:
        # A target still traced by us when the test ends is a controller bug:
        # note it, but kill and reap every target before failing.
        traced = {t.pid: traced_threads(t.pid, os.getpid()) for t in self.targets if t.alive()}
        for t in self.targets:
            t.close()
        traced = {pid: tids for pid, tids in traced.items() if tids}
        assert not traced, f"threads left traced by the test process: {traced}"


@pytest.fixture
def c_target() -> Iterator[StartTarget]:
    """``c_target(name, *args, stdin_pipe=False, stderr=None)`` builds and starts scenarios/NAME.c."""
    pool = _Pool()
    yield lambda name, *args, stdin_pipe=False, **kw: pool.add(spawn([build_c(name), *args], stdin_pipe=stdin_pipe, **kw))
    pool.close()


@pytest.fixture
def py_target() -> Iterator[StartTarget]:
    """``py_target(script, *args, stdin_pipe=False)`` starts scenarios/SCRIPT under this Python."""
    pool = _Pool()
    yield lambda script, *args, stdin_pipe=False, **kw: pool.add(spawn(python_argv(script, *args), stdin_pipe=stdin_pipe,
                                                                      **kw))
    pool.close()


@pytest.fixture
def restored() -> Iterator[list[int]]:
    """Pids of restored processes (our children): killed and reaped after the test."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass


@pytest.fixture
def second_host() -> Iterator[SecondHost]:
    """A second host (network + PID namespace, tests/hosts.py): the one ``make test`` started, else a new one."""
    with second_host_for_test() as host:
        yield host


@pytest.fixture(autouse=True)
def _own_tmpdir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test's ckpt commands get a TMPDIR of their own: what a killed `ckpt migrate` leaves there
    (its rounds' work directory) is removed, with a warning, by the next migration in the same
    directory — which must not be another test's."""
    monkeypatch.setenv("TMPDIR", str(tmp_path_factory.mktemp("tmpdir")))


@pytest.fixture(autouse=True)
def _signals_as_found() -> Iterator[None]:
    """A test must leave this process's SIGINT as it found it (ignored or blocked, every later child
    would inherit that: a `bench/run.py` no Ctrl-C could stop)."""
    before = (signal.getsignal(signal.SIGINT), signal.pthread_sigmask(signal.SIG_BLOCK, set()))
    yield
    after = (signal.getsignal(signal.SIGINT), signal.pthread_sigmask(signal.SIG_BLOCK, set()))
    assert after == before, f"SIGINT handler/blocked mask changed by the test: {before} -> {after}"
