"""clean_leftovers on real processes: the journal of a creation that never finished, and what it must not touch.

A run killed between the injected ``userfaultfd()`` and the mark leaves an
unmarked userfaultfd (the target frozen under ptrace cannot be left there by a
kill yet, so the state it leaves is made here by hand: the journal a dead run
wrote, and the userfaultfd it had injected).
"""

from __future__ import annotations

import fcntl
import json
import os

from ckpt.control.seize import freeze
from ckpt.kernel import uffd
from ckpt.kernel.pidfd import pidfd_getfd, pidfd_open
from ckpt.procfs.task import read_starttime
from ckpt.track.uffd_wp import UFFD_FEATURES, _Journal, clean_leftovers, find_userfaultfds


def _writer(c_target):  # noqa: ANN001, ANN202
    t = c_target("writer", "64", "1", "100", "0", stdin_pipe=True)
    t.ready()
    return t


def _injected_by_a_dead_run(pid: int, *, api: bool) -> int:
    """What a run killed right after its injected userfaultfd() leaves: the fd, and its journal (whose
    writer is no process now: same pid as ours, another start time).  ``api``: a UFFDIO_API was done on it
    (without the mark, as a program does with its own)."""
    with freeze(pid) as proc:
        taken = {int(n) for n in os.listdir(f"/proc/{pid}/fd")}
        lowest = min(set(range(len(taken) + 1)) - taken)
        _Journal(pid, read_starttime(pid), lowest, os.getpid(), 0)._write()
        fd = proc.injector().userfaultfd(os.O_CLOEXEC | os.O_NONBLOCK)
    assert fd == lowest
    if api:
        pidfd = pidfd_open(pid)
        ours = pidfd_getfd(pidfd, fd)
        uffd.uffd_api(ours, UFFD_FEATURES)
        os.close(ours)
        os.close(pidfd)
    return fd


def test_the_unmarked_userfaultfd_a_journal_names_is_closed(c_target, tmp_path, monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setenv("CKPT_STATE_DIR", str(tmp_path))
    t = _writer(c_target)
    fd = _injected_by_a_dead_run(t.pid, api=False)
    assert list(find_userfaultfds(t.pid)) == [fd]
    notes = clean_leftovers(t.pid)
    assert notes == [f"closed fd {fd} of process {t.pid}, a dirty-tracking userfaultfd that an interrupted ckpt "
                     "run had left there"]
    assert find_userfaultfds(t.pid) == {} and not os.path.exists(_Journal.path(t.pid))
    t.write(b"t\n")
    t.expect("OK")


def test_a_journal_never_closes_a_userfaultfd_in_use(c_target, tmp_path, monkeypatch) -> None:  # noqa: ANN001
    """Through UFFDIO_API without ckpt's mark: the program's own, whatever a journal says."""
    monkeypatch.setenv("CKPT_STATE_DIR", str(tmp_path))
    t = _writer(c_target)
    fd = _injected_by_a_dead_run(t.pid, api=True)
    assert clean_leftovers(t.pid) == []
    assert list(find_userfaultfds(t.pid)) == [fd]
    assert not os.path.exists(_Journal.path(t.pid))  # spent: the next run does not ask again


def test_the_journal_of_a_live_run_is_left_alone(c_target, tmp_path, monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setenv("CKPT_STATE_DIR", str(tmp_path))
    t = _writer(c_target)
    fd = _injected_by_a_dead_run(t.pid, api=False)
    path = _Journal.path(t.pid)
    with open(path) as f:
        j = json.load(f)
    j["holder_start"] = read_starttime(os.getpid())  # the writer runs: it is creating right now
    with open(path, "w") as f:
        json.dump(j, f)
    assert clean_leftovers(t.pid) == [] and list(find_userfaultfds(t.pid)) == [fd]
    assert os.path.exists(path)
    with freeze(t.pid) as proc:
        proc.injector().close(fd)


def test_a_marked_copy_another_process_uses_is_no_leftover(c_target, tmp_path, monkeypatch) -> None:  # noqa: ANN001
    """A ckpt run working with a tracker holds its own copy (another number): not closed under it."""
    monkeypatch.setenv("CKPT_STATE_DIR", str(tmp_path))
    t = _writer(c_target)
    fd = _injected_by_a_dead_run(t.pid, api=False)
    os.unlink(_Journal.path(t.pid))
    pidfd = pidfd_open(t.pid)
    ours = pidfd_getfd(pidfd, fd)
    os.close(pidfd)
    try:
        fcntl.fcntl(ours, fcntl.F_SETFL, fcntl.fcntl(ours, fcntl.F_GETFL) | os.O_APPEND)
        uffd.uffd_api(ours, UFFD_FEATURES)
        with freeze(t.pid) as proc:
            parked = proc.injector().fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 900)
            proc.injector().close(fd)
        assert clean_leftovers(t.pid) == []  # we hold it: in use
        assert list(find_userfaultfds(t.pid)) == [parked]
    finally:
        os.close(ours)
    assert len(clean_leftovers(t.pid)) == 1  # now nobody does: a leftover
    assert find_userfaultfds(t.pid) == {}
