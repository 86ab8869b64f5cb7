"""File locks as the kernel prints them: ``/proc/locks`` and the ``lock:`` lines of ``fdinfo``.

Both come from ``lock_get_status()`` (fs/locks.c).  A line, as 6.1–6.18 print it::

    1: POSIX  ADVISORY  WRITE 4242 00:1a:5678 0 99
    2: OFDLCK ADVISORY  READ  -1 00:1a:5678 100 EOF
    3: FLOCK  ADVISORY  WRITE 4242 00:1a:5679 0 EOF
    4: LEASE  ACTIVE    READ  4242 00:1a:5680 0 EOF
    4: -> POSIX  ADVISORY  WRITE 4243 00:1a:5678 0 99

The first number is the lock's place in the list being printed (a counter of
that read, not an id), ``->`` marks a request blocked on the lock above it
(``/proc/locks`` only), then the class (POSIX, OFDLCK, FLOCK, LEASE, DELEG,
ACCESS), for a lease its state (ACTIVE, BREAKING; BREAKER is a blocked
opener's placeholder), else ADVISORY or MANDATORY (gone since 5.15) or
``*NOINODE*``, the type (READ, WRITE, UNLCK — a lease being broken shows the
type it is being broken to), the pid (the tgid of the taker; -1 for OFD locks,
whose owner is the open file; 0 once the taker's pid is gone), ``MAJ:MIN:INO``
(hex device numbers, decimal inode) and the byte range: first and last byte,
``EOF`` for a lock that runs to the end of the file and beyond.  flock locks
and leases print ``0 EOF``.

``fdinfo/N`` shows (``show_fd_locks``) the locks taken through that open file
and owned by the process (its POSIX locks) or by the open file itself (OFD,
flock, leases): every lock of a process, each on the descriptors of the open
file it was taken through.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..kernel.locks import OFF_MAX

__all__ = ["LockLine", "parse_lock", "read_proc_locks", "OFFSET_MAX"]

#: The kernel's OFFSET_MAX (the largest off_t): the last byte of a lock printed as EOF.
OFFSET_MAX = OFF_MAX


@dataclass(frozen=True, slots=True)
class LockLine:
    """One lock (or blocked request) as ``lock_get_status()`` printed it."""

    index: int
    #: A request blocked on the lock printed above it (``->``), not a lock held.
    blocked: bool
    #: POSIX, OFDLCK, FLOCK, LEASE, DELEG, ACCESS (as printed).
    cls: str
    #: ADVISORY, MANDATORY, *NOINODE* — or a lease's ACTIVE, BREAKING, BREAKER.
    state: str
    #: READ, WRITE or UNLCK.
    type: str
    pid: int
    #: (major, minor, inode) of the file; None for ``<none>:0``.
    inode: tuple[int, int, int] | None
    start: int
    #: The last byte, inclusive; :data:`OFFSET_MAX` for EOF.
    end: int
    text: str

    @property
    def length(self) -> int:
        """``struct flock.l_len``: 0 for a lock to the end of the file (and beyond)."""
        return 0 if self.end == OFFSET_MAX else self.end - self.start + 1


def parse_lock(text: str) -> LockLine:
    """One line (the text after ``lock:`` of fdinfo, or a line of /proc/locks); ValueError if it is not one."""
    words = text.split()
    try:
        index = int(words[0].rstrip(":"))
        blocked = words[1] == "->"
        rest = words[2:] if blocked else words[1:]
        cls, state, type_, pid, where, start, end = rest[:7]
        if where.startswith("<none>"):
            inode = None
        else:
            major, minor, ino = where.split(":")
            inode = (int(major, 16), int(minor, 16), int(ino))
        first = int(start)
        last = OFFSET_MAX if end == "EOF" else int(end)
        return LockLine(index=index, blocked=blocked, cls=cls, state=state, type=type_, pid=int(pid),
                        inode=inode, start=first, end=last, text=" ".join(words))
    except (IndexError, ValueError):
        raise ValueError(f"not a file lock as the kernel prints one: {text!r}") from None


def read_proc_locks(path: str = "/proc/locks") -> list[LockLine]:
    """Every lock and blocked request of the system (of this pid namespace's view), in the kernel's order."""
    with open(path, "rb") as f:
        data = f.read().decode(errors="replace")
    return [parse_lock(line) for line in data.splitlines() if line.strip()]
