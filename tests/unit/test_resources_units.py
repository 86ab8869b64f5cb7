"""Corner cases of the resource modules that need no live process."""

from __future__ import annotations

import os
import stat

import pytest

from ckpt.errors import Unsupported
from ckpt.image.pb import common_pb2, files_pb2
from ckpt.kernel.resource import RLIM_NLIMITS, RLIMIT_NAMES
from ckpt.kernel.signals import SI_USER, make_siginfo, siginfo_code, siginfo_signo
from ckpt.procfs.fdinfo import parse_fdinfo
from ckpt.resources.creds import caps
from ckpt.resources.fdkind import DumpOptions, FdDump
from ckpt.resources.files import KINDS, OpenFd, StdioPolicy, classify, content_from_image, record

K = files_pb2.FileEntry


def fake(link: str, mode: int, rdev: tuple[int, int] = (0, 0), fd: int = 5) -> OpenFd:
    st = os.stat_result((mode, 1, 2, 1, 0, 0, 0, 0, 0, 0))
    st = os.stat_result(tuple(st)[:10], {"st_rdev": os.makedev(*rdev)})
    return OpenFd(fd, link, st, parse_fdinfo(b"pos:\t0\nflags:\t02\nmnt_id:\t1\n", fd))


@pytest.mark.parametrize("link, mode, rdev, kind", [
    ("/etc/passwd", stat.S_IFREG | 0o644, (0, 0), K.REG),
    ("/tmp/x (deleted)", stat.S_IFREG | 0o600, (0, 0), K.REG),
    ("/tmp", stat.S_IFDIR | 0o755, (0, 0), K.DIR),
    ("pipe:[123]", stat.S_IFIFO | 0o600, (0, 0), K.PIPE),
    ("/tmp/fifo", stat.S_IFIFO | 0o600, (0, 0), K.FIFO),
    ("/dev/null", stat.S_IFCHR | 0o666, (1, 3), K.CHR),
    # a pty's end (and /dev/tty): a terminal (CHR) once its master is found outside the tree (resources.tty)
    ("/dev/pts/3", stat.S_IFCHR | 0o620, (136, 3), K.PTY),
    ("/dev/ptmx", stat.S_IFCHR | 0o666, (5, 2), K.PTY),
    ("/dev/tty", stat.S_IFCHR | 0o666, (5, 0), K.PTY),
    ("socket:[99]", stat.S_IFSOCK | 0o777, (0, 0), K.INET),  # refined or refused by resources.sockets
    ("anon_inode:[eventfd]", 0o600, (0, 0), K.EVENTFD),
    ("anon_inode:[eventpoll]", 0o600, (0, 0), K.EPOLL),
    ("anon_inode:[timerfd]", 0o600, (0, 0), K.TIMERFD),
    ("anon_inode:[signalfd]", 0o600, (0, 0), K.SIGNALFD),
    ("anon_inode:inotify", 0o600, (0, 0), K.INOTIFY),
    ("anon_inode:[pidfd]", 0o600, (0, 0), K.PIDFD),
    ("/memfd:buf (deleted)", stat.S_IFREG | 0o777, (0, 0), K.MEMFD),
])
def test_classify_known_kinds(link: str, mode: int, rdev: tuple[int, int], kind: int) -> None:
    assert classify(42, fake(link, mode, rdev)).kind == kind


@pytest.mark.parametrize("link, mode, rdev, words", [
    ("anon_inode:[userfaultfd]", 0o600, (0, 0), "fd 5 is an anonymous inode ([userfaultfd])"),
    ("anon_inode:[fanotify]", 0o600, (0, 0), "fd 5 is an anonymous inode ([fanotify])"),
    ("/dev/sda", stat.S_IFBLK | 0o660, (8, 0), "/dev/sda"),
    ("/dev/kvm", stat.S_IFCHR | 0o666, (10, 232), "character device /dev/kvm"),
])
def test_unknown_kinds_are_refused_by_name(link: str, mode: int, rdev: tuple[int, int], words: str) -> None:
    with pytest.raises(Unsupported, match="process 42: ") as exc:  # by no kind, or by its kind's dump
        record(FdDump(42, fake(link, mode, rdev), DumpOptions()), 1)
    assert words in str(exc.value)


def test_each_kind_has_one_entry_in_the_table() -> None:
    """The table is the one place a kind is added: each kind is in it once, is a kind of the image format,
    and has both sides."""
    kinds = [k.kind for k in KINDS]
    assert sorted(kinds) == sorted(set(kinds))
    assert set(kinds) <= {v for v in K.Kind.values() if v}
    assert {K.REG, K.DIR, K.CHR, K.PIPE, K.FIFO, K.INET, K.UNIX, K.MEMFD, K.EPOLL} <= set(kinds)
    assert all(callable(k.dump) and callable(k.restore) for k in KINDS)


def test_shell_job_without_a_terminal_is_refused(monkeypatch) -> None:
    monkeypatch.setattr(os, "isatty", lambda fd: False)
    with pytest.raises(Unsupported, match="no terminal"):
        StdioPolicy(shell_job=True).terminal()
    assert StdioPolicy(shell_job=True, tty="/dev/pts/9").terminal() == "/dev/pts/9"


def test_content_from_image_fills_absent_pages_with_zeros() -> None:
    class FakeImage:
        def iter_pages(self, owner: str):
            assert owner == "file-3"
            yield 4096, memoryview(b"B" * 4096)

    load = content_from_image(FakeImage())
    data = load(common_pb2.ContentRef(owner="file-3", size=5000))
    assert data == bytes(4096) + b"B" * 904


def test_synthesised_siginfo_and_names() -> None:
    info = make_siginfo(17)
    assert (siginfo_signo(info), siginfo_code(info), len(info)) == (17, SI_USER, 128)
    assert len(RLIMIT_NAMES) == RLIM_NLIMITS and RLIMIT_NAMES[7] == "NOFILE"
    assert caps(0b1010) == [1, 3]
