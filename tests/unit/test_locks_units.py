"""File locks on canned kernel text: parsing lock lines, what a dump records where, what it refuses.

Real processes: tests/e2e/test_locks.py (scenarios/locks.c, py_sqlite.py).
"""

from __future__ import annotations

import pytest

from ckpt import observed
from ckpt.errors import Unsupported
from ckpt.image.pb import files_pb2, process_pb2
from ckpt.procfs.locks import OFFSET_MAX, parse_lock
from ckpt.resources import locks
from ckpt.resources.locks import Holder

FileLock = files_pb2.FileLock
ME = 999


def test_every_form_of_lock_line_parses() -> None:
    p = parse_lock("1: POSIX  ADVISORY  WRITE 4242 fe:00:2148067 0 9")
    assert (p.cls, p.state, p.type, p.pid, p.inode, p.start, p.end, p.length, p.blocked) == \
        ("POSIX", "ADVISORY", "WRITE", 4242, (0xfe, 0, 2148067), 0, 9, 10, False)
    p = parse_lock("2: OFDLCK ADVISORY  READ -1 fe:00:2148067 500 EOF")
    assert (p.cls, p.pid, p.start, p.end, p.length) == ("OFDLCK", -1, 500, OFFSET_MAX, 0)
    p = parse_lock("4: -> FLOCK  ADVISORY  WRITE 7 00:1a:5 0 EOF")
    assert p.blocked and p.cls == "FLOCK" and p.index == 4
    p = parse_lock("3: LEASE  BREAKING  UNLCK 12 00:1a:6 0 EOF")
    assert (p.cls, p.state, p.type) == ("LEASE", "BREAKING", "UNLCK")
    assert parse_lock("5: POSIX  *NOINODE* WRITE 3 <none>:0 0 EOF").inode is None
    with pytest.raises(ValueError):
        parse_lock("1: POSIX")


def _entries(*pairs: tuple[int, int]) -> dict[int, list[files_pb2.FdEntry]]:
    out: dict[int, list[files_pb2.FdEntry]] = {}
    for pid, fd in pairs:
        out.setdefault(pid, []).append(files_pb2.FdEntry(fd=fd, file_id=1))
    return out


def _recorded(fds: dict[int, list[files_pb2.FdEntry]]) -> dict[tuple[int, int], list[str]]:
    return {(pid, f.fd): [locks.describe(lk) for lk in f.locks] for pid, fs in fds.items() for f in fs if f.locks}


def test_a_posix_lock_is_recorded_once_per_process_on_its_lowest_fd_and_an_open_files_lock_once() -> None:
    posix = "1: POSIX  ADVISORY  WRITE 10 fe:00:7 0 9"
    flock = "2: FLOCK  ADVISORY  WRITE 11 fe:00:7 0 EOF"  # taken by the child, shared across fork
    group = [Holder(10, 3, "/f", (posix, flock)), Holder(10, 5, "/f", (posix, flock)),  # dup in the parent
             Holder(11, 3, "/f", (flock,))]  # the child: the flock is its too, the parent's POSIX lock is not
    fds = _entries((10, 3), (10, 5), (11, 3))
    locks.dump_tree([group], fds, me=ME)
    assert _recorded(fds) == {(10, 3): ["POSIX write lock on bytes 0-9"], (11, 3): ["flock exclusive lock"]}


def test_an_open_files_lock_whose_taker_is_gone_goes_to_its_first_holder() -> None:
    group = [Holder(10, 4, "/f", ("1: OFDLCK ADVISORY  READ -1 fe:00:7 100 EOF",
                                  "2: FLOCK  ADVISORY  READ 4 fe:00:7 0 EOF")),
             Holder(11, 4, "/f", ())]
    fds = _entries((10, 4), (11, 4))
    locks.dump_tree([group], fds, me=ME)
    assert _recorded(fds) == {(10, 4): ["OFD read lock on bytes 100-EOF", "flock shared lock"]}


def test_a_table_shared_with_clone_files_records_each_posix_lock_in_its_owner() -> None:
    line = "1: POSIX  ADVISORY  WRITE 11 fe:00:7 0 9"  # both processes' fdinfo shows it: one descriptor table
    fds = _entries((10, 3), (11, 3))
    locks.dump_tree([[Holder(10, 3, "/f", (line,)), Holder(11, 3, "/f", (line,))]], fds, me=ME)
    assert _recorded(fds) == {(11, 3): ["POSIX write lock on bytes 0-9"]}


@pytest.mark.parametrize("line, message", [
    ("1: LEASE  BREAKING  READ 10 fe:00:7 0 EOF", r"process 10: fd 3 \(/f\) holds a lease being broken"),
    ("1: POSIX  MANDATORY WRITE 10 fe:00:7 0 9", r"holds a mandatory lock .*only advisory locks are restored"),
    ("1: DELEG  ACTIVE    READ 10 fe:00:7 0 EOF", r"holds a file lock of class DELEG"),
    ("1: POSIX  ADVISORY  WRITE 77 fe:00:7 0 9", r"holds a POSIX lock of process 77 .*outside the dumped tree"),
    ("1: POSIX  ADVISORY", r"holds a file lock the kernel prints as"),
])
def test_what_cannot_be_restored_exactly_is_refused_naming_process_fd_and_lock(line: str, message: str) -> None:
    with pytest.raises(Unsupported, match=message):
        locks.dump_tree([[Holder(10, 3, "/f", (line,))]], _entries((10, 3)), me=ME)


def test_a_lock_of_a_file_only_in_flight_is_refused() -> None:
    group = [Holder(ME, 40, "/f", ("1: FLOCK  ADVISORY  WRITE 10 fe:00:7 0 EOF",))]
    with pytest.raises(Unsupported, match=r"a descriptor in flight .* holds a flock exclusive lock"):
        locks.dump_tree([group], {10: []}, me=ME, in_flight={(ME, 40): "a descriptor in flight (SCM_RIGHTS) to x"})


def test_leased_tells_an_open_file_with_a_lease() -> None:
    assert locks.leased(["1: LEASE  ACTIVE    WRITE 10 fe:00:7 0 EOF"])
    assert not locks.leased(["1: FLOCK  ADVISORY  WRITE 10 fe:00:7 0 EOF"])


def _fdinfo(*lock_lines: str) -> process_pb2.Observed:
    return process_pb2.Observed(sections=[process_pb2.ObservedSection(
        name="fdinfo/3", lines=[process_pb2.ObservedLine(key="lock", value=v) for v in lock_lines])])


def test_the_self_check_compares_lock_lines_masking_only_an_open_files_taker() -> None:
    dumped = _fdinfo("1: FLOCK ADVISORY WRITE 10 fe:00:7 0 EOF", "2: POSIX ADVISORY WRITE 10 fe:00:7 0 9")
    # Another index, device and inode, and the flock taken by another process sharing the open file: equal.
    same = _fdinfo("1: POSIX ADVISORY WRITE 10 00:1a:9 0 9", "2: FLOCK ADVISORY WRITE 11 00:1a:9 0 EOF")
    assert observed.differences(dumped, same, root=True) == []
    # A POSIX lock of another owner, or a range or type changed, or a lock lost: a difference.
    for after in (_fdinfo("1: FLOCK ADVISORY WRITE 10 fe:00:7 0 EOF", "2: POSIX ADVISORY WRITE 11 fe:00:7 0 9"),
                  _fdinfo("1: FLOCK ADVISORY WRITE 10 fe:00:7 0 EOF", "2: POSIX ADVISORY READ 10 fe:00:7 0 9"),
                  _fdinfo("1: FLOCK ADVISORY WRITE 10 fe:00:7 0 EOF", "2: POSIX ADVISORY WRITE 10 fe:00:7 0 8"),
                  _fdinfo("1: POSIX ADVISORY WRITE 10 fe:00:7 0 9")):
        assert observed.differences(dumped, after, root=True), after
