"""Which processes hold a given open object (a pipe, a socket, a FIFO path): one walk of ``/proc/*/fd``.

Used to name the peer outside a dump ("whose other end is held by process P
(comm) fd N") — a refusal should say who is on the other side.
"""

from __future__ import annotations

import os
from collections.abc import Collection

__all__ = ["holders"]


def holders(links: Collection[str], skip: Collection[int] = (),
            skip_fds: Collection[tuple[int, int]] = ()) -> dict[str, list[str]]:
    """For each fd link text (``pipe:[N]``, ``socket:[N]``, a path), the processes not in ``skip``
    holding it, as "process P (comm) fd N".  One pass over every process's fds for all of them.
    ``skip_fds``: (pid, fd) that do not count (ckpt's own duplicates of descriptors in flight)."""
    out: dict[str, list[str]] = {link: [] for link in links}
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) in skip:
            continue
        try:
            fds = os.listdir(f"/proc/{name}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                link = os.readlink(f"/proc/{name}/fd/{fd}")
                if link in out and (int(name), int(fd)) not in skip_fds:
                    with open(f"/proc/{name}/comm") as f:
                        out[link].append(f"process {name} ({f.read().strip()}) fd {fd}")
            except OSError:
                continue
    return out
