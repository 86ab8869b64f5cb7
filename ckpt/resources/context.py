"""What a resource module gets handed when it dumps or restores its part of a process.

Each resource module (memory, threads, signals, creds, files…) exposes a dump
function taking a :class:`DumpContext` and a restore function taking a
:class:`RestoreContext`; the orchestrators (:mod:`ckpt.dump`,
:mod:`ckpt.restore`) build one context per process and call the modules in
their fixed order.  The contexts are mutable on purpose: a dumper fills
``entry`` (the ProcessEntry record) and ``notes``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..control.inject import Injector, Scratch
    from ..control.seize import FrozenProcess
    from ..image.pb import process_pb2
    from ..image.reader import Image
    from ..image.store import ImageWriter
    from ..procfs.snapshot import Snapshot
    from .files import SharedFiles
    from .ghost import GhostObjects
    from .memfd import MemfdObjects
    from .tty import PtyPairs

__all__ = ["DumpContext", "RestoreContext"]


@dataclass
class DumpContext:
    """One frozen process being written into an image."""

    pid: int
    proc: "FrozenProcess"
    snap: "Snapshot"
    writer: "ImageWriter"
    #: The process record; resource dumpers fill their fields, the orchestrator writes it.
    entry: "process_pb2.ProcessEntry"
    #: A read-write area mapped in the target for injected syscalls that return structs.
    scratch: "Scratch"
    #: What was not saved and why, for the user (DumpStats.notes).
    notes: list[str] = field(default_factory=list)
    #: A descriptor on a terminal may be dumped (re-attached to the restorer's terminal later).
    shell_job: bool = False
    #: An established TCP connection may be dumped; it is restored closed (CRIU's --tcp-close).
    tcp_close: bool = False
    #: Largest deleted-but-open file whose content is saved (``--deleted-max``); None: the default.
    deleted_max: int | None = None
    #: Descriptors that belong to ckpt (the parked tracking userfaultfd): never dumped.
    skip_fds: frozenset[int] = frozenset()
    #: ``--tolerate`` names: losses the user accepts (ckpt.tolerance).
    tolerate: frozenset[str] = frozenset()


@dataclass
class RestoreContext:
    """The helper process being turned into the image's process (DESIGN §4).

    ``inj`` runs syscalls in the main thread from the trampoline; ``scratch``
    is a read-write area of the helper for syscall arguments.  Both disappear
    at the end of the restore, so a restorer must not leave pointers to them.
    """

    pid: int
    chain: "list[Image]"
    entry: "process_pb2.ProcessEntry"
    proc: "FrozenProcess"
    inj: "Injector"
    scratch: "Scratch"
    notes: list[str] = field(default_factory=list)
    #: Re-attach terminal descriptors to the restorer's own terminal (CRIU's --shell-job).
    shell_job: bool = False
    #: Image fd → restorer fd to install for a stdio pipe whose peer was outside the image (--inherit-fd).
    inherit_fds: Mapping[int, int] = field(default_factory=dict)
    #: File id → restorer fd of a socket handed over as it is (a migration within one network namespace).
    handed_sockets: Mapping[int, int] = field(default_factory=dict)
    #: Reopen files whose size/mtime/inode changed since the dump, with a note (--allow-changed-files).
    allow_changed_files: bool = False
    #: Lower a hard rlimit that cannot be raised here, with a note (--allow-lower-limits); None: fail instead.
    #: The resources lowered are appended (the self-check does not compare them).
    lowered_limits: "list[int] | None" = None
    #: One injector per thread by tid, filled when the threads exist (the leader's is ``inj``).
    injectors: "dict[int, Injector]" = field(default_factory=dict)
    #: The image's ThreadCore records, leader first.
    cores: list = field(default_factory=list)
    #: In a tree: the open files this process shares with others (:class:`ckpt.resources.files.SharedFiles`).
    shared_files: "SharedFiles | None" = None
    #: The restore's memfd objects, created by their first user (:mod:`ckpt.resources.memfd`).
    memfds: "MemfdObjects | None" = None
    #: The restore's deleted files, directories and FIFOs, made once each (:mod:`ckpt.resources.ghost`).
    ghosts: "GhostObjects | None" = None
    #: The descriptor table is the parent's (CLONE_FILES): the parent restores it.
    files_shared: bool = False
    #: The restore's pseudo-terminal pairs, each opened once (:class:`ckpt.resources.tty.PtyPairs`).
    ptys: "PtyPairs | None" = None

    @property
    def image(self) -> "Image":
        """The newest image of the chain (the one being restored)."""
        return self.chain[-1]
