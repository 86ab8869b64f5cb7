"""A network namespace of a test's own: nftables tables made there touch nothing of the host's."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from targets import spawn

__all__ = ["fresh_netns"]


@contextmanager
def fresh_netns() -> Iterator[tuple[int, int]]:
    """(pid of a process alone in a new network namespace, an open descriptor of that namespace).

    The namespace ends with the process (it has no name under /run/netns), when the block is left.
    """
    with spawn(["unshare", "--net", "sh", "-c", "echo READY; exec sleep 600"]) as t:
        t.ready()
        fd = os.open(f"/proc/{t.pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            assert os.fstat(fd).st_ino != os.stat("/proc/self/ns/net").st_ino
            yield t.pid, fd
        finally:
            os.close(fd)
