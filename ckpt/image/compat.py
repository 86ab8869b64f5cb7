"""Which images this ckpt reads, and which it writes so that the previous release reads them.

The policy (docs/image-format.md, "Compatibility", says it for users):

* A reader reads every format from ``MIN_FORMAT_VERSION`` to ``FORMAT_VERSION``
  (:mod:`ckpt.image.framing`): at least this release's and the previous one's.
  A newer format is refused by its number, before anything is decoded.
* Fields added to the protobuf messages are optional: an older reader ignores
  them, which is right as long as ignoring them restores the process as it was.
  Where it is not — the restore would have to *do* something an older ckpt
  does not know how to do (continue the clocks in a time namespace, route an
  old vDSO's entry points to the new one…) — the image names that in its
  inventory's ``required_features``, and a reader refuses an image that lists
  a feature it does not know, naming it, rather than restore it wrong.
* Readers older than that list (format 2 and before, up to ckpt 0.1.0 of
  2026-12) never look at it.  An image that needs a feature they lack is
  therefore written as format 3, a number they refuse; every other image is
  written as format 2, which they read.  So a new image is refused by an old
  ckpt exactly when it needs something the old one lacks.

A new feature is one row of :data:`FEATURES` and a ``require`` by the writer
(:meth:`ckpt.image.store.ImageWriter.require`) on the images that need it.  A
feature is *required* only when an older reader would restore the image
wrong; one that an older reader refuses by itself (a new enum value, a new
file kind it does not know) or safely ignores needs no row.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import ckpt
from ckpt.errors import IncompatibleImage
from ckpt.image.pb import inventory_pb2

__all__ = ["Feature", "FEATURES", "LISTLESS_FEATURES", "LIST_FORMAT", "PREVIOUS_FORMAT",
           "required_features", "format_for", "check_required"]


@dataclass(frozen=True)
class Feature:
    """Something a restore must do for an image to come back right."""

    name: str
    what: str


#: Every feature this ckpt restores, by the name images list.
FEATURES: dict[str, Feature] = {f.name: f for f in (
    Feature("time-namespace", "the tree's CLOCK_MONOTONIC and CLOCK_BOOTTIME continue in a new time namespace "
                              "(Inventory.clocks)"),
    Feature("ghost-files", "a deleted file, directory or FIFO the tree holds, maps or is in is made again once, "
                           "with its holes, mode, owner and times (Ghost records); a reader without it would make "
                           "one copy per open file, or open what is at the old path now"),
    Feature("file-locks", "the POSIX, OFD and flock locks and leases the tree held are taken again (FdEntry.locks); "
                          "a reader that ignored them would restore the files unlocked"),
    Feature("pty-pairs", "pseudo-terminal pairs the tree holds are opened anew with their settings and queues "
                         "(FileEntry.pty), and controlling terminals given back (ProcessEntry.ctty); a reader "
                         "that ignored them would reopen /dev/ptmx and /dev/pts/N by path"),
    Feature("unix-unlinked-names", "a unix socket whose path was deleted since bind is bound, then its file "
                                   "deleted again (UnixSocket.name_unlinked); a reader that ignored it would leave "
                                   "a socket file at the path"),
    Feature("cow-shared", "a child's pages still shared with its parent since fork are stored once, by the parent "
                          "(Vma.shared_with_parent), and shared again by cloning the child from its filled parent; "
                          "a reader that ignored them would restore the child without those pages"),
    Feature("mm-default-flags", "what the mm gives every new mapping — mlockall(MCL_FUTURE), with MCL_ONFAULT, "
                                "and prctl(PR_SET_MEMORY_MERGE) — is set again (MmEntry.def_flags); a reader that "
                                "ignored it would restore a process whose later mappings are not locked or merged"),
    Feature("guard-regions", "guard regions (MADV_GUARD_INSTALL) are installed again (Vma.guards); a reader that "
                             "ignored them would restore those pages as ordinary memory"),
    Feature("handed-sockets", "bound inet sockets are not made again but handed over by a migration's source in "
                              "the same network namespace (InetSocket.handed_over); a reader without it would bind "
                              "them again, which fails while the source holds them"),
    Feature("encrypted", "every file but the inventory is sealed with AES-256-GCM under a key of the image "
                         "(Inventory.encryption, ckpt/image/sealing.py); a reader without it would take sealed "
                         "bytes for records and pages"),
    Feature("aio-rings", "the ring of an io_setup context is made again by io_setup and moved to its address "
                         "(Vma.aio); a reader without it would refuse the mapping"),
)}

#: The features the readers before ``required_features`` (format ≤ 2, ckpt 0.1.0) restore right.
LISTLESS_FEATURES = frozenset({"time-namespace"})
#: The format those readers read; every image that needs nothing more is written in it.
PREVIOUS_FORMAT = 2
#: The format of an image that needs more: its number alone makes those readers refuse it.
LIST_FORMAT = 3
#: Most names an inventory may list (a corrupt one must not make a message of megabytes).
_MAX_LISTED = 64


def required_features(inv: inventory_pb2.Inventory, extra: frozenset[str] | set[str] = frozenset()) -> list[str]:
    """The features a restore of the image described by ``inv`` needs, sorted: what it holds, plus ``extra``."""
    needed = set(extra)
    if inv.HasField("clocks"):
        needed.add("time-namespace")
    unknown = needed - FEATURES.keys()
    if unknown:
        raise ValueError(f"unknown image features {sorted(unknown)}: add them to ckpt.image.compat.FEATURES")
    return sorted(needed)


def format_for(required: list[str] | set[str] | frozenset[str]) -> int:
    """The oldest format whose readers restore an image needing ``required`` right (see the module docstring)."""
    return PREVIOUS_FORMAT if set(required) <= LISTLESS_FEATURES else LIST_FORMAT


def check_required(path: str | os.PathLike[str], inv: inventory_pb2.Inventory) -> None:
    """Refuse an image that needs a feature this ckpt does not know (``path``: its inventory, for the message)."""
    listed = list(inv.required_features)
    unknown = [name for name in listed[:_MAX_LISTED] if name not in FEATURES]
    if len(listed) > _MAX_LISTED:
        unknown.append(f"({len(listed) - _MAX_LISTED} more)")
    if not unknown:
        return
    shown = ", ".join(n if n.isprintable() and len(n) <= 64 else repr(n[:64]) for n in unknown)
    writer = inv.ckpt_version if inv.ckpt_version.isprintable() else repr(inv.ckpt_version)
    raise IncompatibleImage(
        path,
        f"needs {shown}, which this ckpt {ckpt.__version__} does not restore (written by ckpt {writer[:40]})",
        hint=f"restore it with ckpt {writer[:40]} or newer",
    )
