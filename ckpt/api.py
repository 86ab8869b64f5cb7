"""The documented Python API of ckpt; the CLI and the tests call only this.

Every function raises :class:`ckpt.errors.CkptError` subclasses for anything a
user can cause (no such process, corrupt image, unsupported resource).
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING

from .errors import UsageError
from .features import Features, probe_features
from .image.dirs import check_dir_to_read, check_dir_to_write
from .image.store import check_compress_level, check_final
from .outfile import OutputFile
from .procfs.status import read_status
from .progress import ProgressEvent
from .track import watch as _watch
from .track.watch import WatchRange, WatchSample, tracking_state_path

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from .dump import DumpStats, RestoreStats
    from .image.verify import Report
    from .track.base import TrackingState

__all__ = ["ProgressEvent", "check", "show", "verify", "dump", "restore", "wait_restored", "resolve_inherit_fds", "DumpStats", "RestoreStats",
           "WatchRange", "WatchSample", "watch", "track_start", "track_stop", "tracking_state_path", "check_process",
           "image_or_store"]


def check(*, selftest: bool = True) -> Features:
    """Probe every kernel facility ckpt relies on (cached for this process); with ``selftest``, also
    dump and restore a small child for real (:mod:`ckpt.selftest`) when the probes allow it."""
    import dataclasses

    report = probe_features()
    if selftest and report.can_dump_restore:
        from .selftest import dump_restore_child
        report = dataclasses.replace(report, selftest=dump_restore_child())
    return report


def check_process(pid: int) -> None:
    """Refuse a ``-t`` that names a thread rather than a process (a thread-group leader).

    /proc answers for every tid, so a thread's would otherwise be taken for a
    process and come back from a restore with that tid as its pid.
    """
    tgid = read_status(pid).tgid
    if tgid != pid:
        raise UsageError(f"{pid} is a thread of process {tgid}, not a process",
                         hint=f"use -t {tgid}: ckpt takes a whole process (all its threads) and its descendants")


def image_or_store(path: str | os.PathLike[str]) -> str:
    """``path`` itself, or the newest checkpoint when it is a numbered store; both checked for reading.

    (ckpt.image.dirs: refused when another user could have changed them.)
    """
    from .image import kinds
    from .incremental import store_latest

    check_dir_to_read(path)
    path = os.fspath(path)
    if os.path.exists(os.path.join(path, kinds.INVENTORY.template)):
        return path
    latest = store_latest(path)
    if latest is None:
        return path  # the reader says what is wrong with it
    check_dir_to_read(latest)
    return latest


def show(image_dir: str | os.PathLike[str], *, as_json: bool = False) -> str:
    """Decode every file of an image directory (or a store's newest) to text (or JSON), like ``crit show``."""
    from .image.show import show as _show

    return _show(image_or_store(image_dir), as_json=as_json)


def show_stream(image_dir: str | os.PathLike[str], *, as_json: bool = False) -> Iterator[str]:
    """:func:`show`'s output piece by piece (then a newline), in bounded memory whatever the image holds."""
    from .image.show import iter_show

    return iter_show(image_or_store(image_dir), as_json=as_json)


def verify(image_dir: str | os.PathLike[str]) -> "Report":
    """Check every file of an image (or a store's newest) and its whole parent chain; the report lists every problem."""
    from .image.verify import verify as _verify

    return _verify(image_or_store(image_dir))


def _tolerate(names: Collection[str], side: str) -> frozenset[str]:
    """``--tolerate`` names, checked (UsageError before anything is touched); a str is one name or a list."""
    from .tolerance import parse

    return parse([names] if isinstance(names, str) else names, side)


def dump(pid: int, image_dir: str | os.PathLike[str], *, leave_running: bool = False, leave_stopped: bool = False,
         compress_level: int | None = 1, shell_job: bool = False, tcp_close: bool = False,
         progress: "Callable[[ProgressEvent], None] | None" = None, deleted_max: int | None = None,
         ext_unix_close: bool = False, tcp_established: bool = False, tolerate: Collection[str] = ()) -> "DumpStats":
    """Checkpoint process ``pid`` into the new directory ``image_dir``.

    The process is ended after a successful dump (as CRIU does) unless
    ``leave_running``, or left stopped (SIGSTOP, detached: ``kill -CONT``
    resumes it) with ``leave_stopped`` — the two exclude each other.
    ``progress`` receives :class:`ckpt.progress.ProgressEvent`s (phases and
    bytes copied); nothing is printed by the API.  ``deleted_max`` caps the
    data of a deleted file still open or mapped (bytes of its data ranges, holes not counted; default 64 MiB).  On any failure it keeps running exactly as before and
    no image is left behind.  ``shell_job``: terminal fds are allowed (they are
    re-attached to the restoring terminal); ``tcp_close``: established TCP
    connections are saved as closed sockets instead of being refused;
    ``ext_unix_close``: so are unix sockets connected to a process outside
    the dumped tree (they come back with their peer closed);
    ``tcp_established``: established TCP connections are kept alive (locked
    with nftables until the restore, which needs no option for them).
    ``tolerate``: names of :data:`ckpt.tolerance.TABLE` — state the kernel
    cannot put back (unread inotify events, connections waiting in a
    listener…) that the dump may lose, each with a note; without its name
    such state refuses the dump.
    """
    from .dump import dump as _dump

    tolerated = _tolerate(tolerate, "dump")
    check_process(pid)
    check_compress_level(compress_level)
    check_final(image_dir)
    return _dump(pid, image_dir, leave_running=leave_running, leave_stopped=leave_stopped,
                 compress_level=compress_level, shell_job=shell_job, tcp_close=tcp_close, progress=progress,
                 deleted_max=deleted_max, ext_unix_close=ext_unix_close, tcp_established=tcp_established,
                 tolerate=tolerated)


def restore(image_dir: str | os.PathLike[str], *, detached: bool = False,
            pidfile: str | os.PathLike[str] | None = None, shell_job: bool = False,
            inherit_fds: Mapping[int, int] | Sequence[str] = (),
            progress: "Callable[[ProgressEvent], None] | None" = None,
            allow_changed_files: bool = False, cpu_cap: str | Iterable[str] | None = None,
            before_hand_over: "Callable[[], None] | None" = None, check: bool = True,
            allow_lower_limits: bool = False, verify_key: "Ed25519PublicKey | None" = None,
            handed_sockets: "Mapping[int, int] | None" = None) -> "RestoreStats":
    """Recreate the process saved in ``image_dir`` with its pid and tids; it runs on return.

    Not ``detached``: the caller is its parent and should :func:`wait_restored`.
    ``inherit_fds`` hands the process descriptors of ours for fds that pointed
    outside the image (a stdio pipe to its parent): a mapping {image fd: our fd},
    or CRIU-style ``"fd[N]:RES"`` strings (see :func:`resolve_inherit_fds`).
    ``progress`` receives :class:`ckpt.progress.ProgressEvent`s while memory is filled.
    ``allow_changed_files``: reopen a file that changed since the dump, with a
    note, instead of refusing (mapped files are still checked).
    ``cpu_cap``: which CPU checks to make, as ``--cpu-cap`` spells them
    ("fpu,ins", the default; "none" skips them, unsafely) or a set of them.
    ``before_hand_over()``: called with every process built and frozen; raising kills them (a commit).
    ``allow_lower_limits``: lower a hard rlimit this restorer cannot raise, with a note, rather than fail.
    ``check``: the self-check (:mod:`ckpt.observed`): the restored processes must look to the kernel as
    the dumped ones did, or the restore fails and leaves nothing (``--check=off``: False).
    ``handed_sockets``: file id → our descriptor of each socket a migration's source handed over.
    ``pidfile`` is checked before anything is created and written whole (renamed into place).
    An image directory another user could have changed is refused (ckpt.image.dirs) unless ``verify_key``
    (a public key, :func:`ckpt.image.signing.load_verify_key`) signed every image of its chain: then it is
    restored from a checked private copy (ckpt.image.trust).  Unsigned, its records may claim no more
    credentials than its owner had (ckpt.resources.creds_check).
    """
    from .resources.cpu import parse_cpu_cap
    from .restore import restore as _restore

    out = OutputFile.checked(pidfile, "--pidfile")
    caps = parse_cpu_cap(cpu_cap)  # a bad value is refused before anything is read
    check_dir_to_read(image_dir, any_owner=verify_key is not None)
    resolved = resolve_image_dir(image_dir)  # a numbered store: its newest checkpoint
    with _trusted(image_dir, resolved, verify_key) as resolved:
        mapping = inherit_fds if isinstance(inherit_fds, Mapping) else resolve_inherit_fds(resolved, inherit_fds)
        stats = _restore(resolved, detached=detached, shell_job=shell_job, inherit_fds=mapping,
                         progress=progress, allow_changed_files=allow_changed_files, cpu_cap=caps,
                         before_hand_over=before_hand_over, check=check, allow_lower_limits=allow_lower_limits,
                         handed_sockets=handed_sockets)
    if out is not None:
        out.write(f"{stats.pid}\n")
    return stats


@contextlib.contextmanager
def _trusted(image_dir: str | os.PathLike[str], resolved: str, verify_key: "Ed25519PublicKey | None") -> Iterator[str]:
    """The image to restore: signed by ``verify_key`` (maybe a private copy), or unsigned and claiming no more
    credentials than its owner had; refused otherwise, before anything is created."""
    from .image import Image, trust, walk_chain
    from .resources import creds_check

    if verify_key is not None:
        with trust.signed_for_restore(image_dir, resolved, verify_key) as checked:
            yield checked
        return
    if resolved != os.fspath(image_dir):
        check_dir_to_read(resolved)
    for parent in walk_chain(resolved, check_sizes=False)[0][:-1]:  # its memory is theirs too
        check_dir_to_read(parent.path)
    owner = trust.owner_of(resolved)
    if owner != 0:  # root's image is root's word: nothing to open here (a migration's downtime)
        image = Image.open(resolved)
        creds_check.refuse_beyond_owner(resolved, [(p.pid, image.process(p.pid)) for p in image.processes
                                                   if not p.zombie], owner)
    yield resolved


_INHERIT_RE = re.compile(r"fd\[(\d+)\]:(.+)")


def resolve_inherit_fds(image_dir: str | os.PathLike[str], specs: Sequence[str]) -> dict[int, int]:
    """Turn ``fd[N]:RES`` strings into {image fd: our fd N}.

    RES is an fd number of the image, or the description of an outside object
    as recorded in the image (``pipe:[12345]``, as ``ckpt show`` prints it): every
    fd of the image that held that object gets our fd N.
    """
    from .image.chain import open_chain

    if not specs:
        return {}
    image = open_chain(image_dir)[-1]
    external = {f.id: f.external for f in image.file_entries() if f.external}
    fds = sorted({(e.fd, external.get(e.file_id, "")) for p in image.processes if not p.zombie
                  for e in image.fds(p.pid)})
    out: dict[int, int] = {}
    for spec in specs:
        m = _INHERIT_RE.fullmatch(spec)
        if not m:
            raise UsageError(f"--inherit-fd {spec!r}: expected fd[N]:RES, e.g. fd[0]:pipe:[12345] or fd[1]:1")
        ours, res = int(m.group(1)), m.group(2)
        hits = [fd for fd, ext in fds if (res.isdigit() and fd == int(res)) or (ext and ext == res)]
        if not hits:
            known = ", ".join(f"fd {fd}: {ext}" for fd, ext in fds if ext) or "none"
            raise UsageError(f"--inherit-fd {spec!r}: the image has no fd {res} (outside objects: {known})")
        out.update({fd: ours for fd in hits})
    return out


def wait_restored(pid: int) -> int:
    """Wait for a restored (not detached) process; its exit status as a shell reports it."""
    from .restore import wait_restored as _wait

    return _wait(pid)


# --- pre-dumps, delta chains, numbered stores (issue 4) ---------------------------------------------


def _parent_dir(image_dir: str | os.PathLike[str], prev: str | os.PathLike[str] | None) -> str | None:
    """CRIU's rule: a relative ``--prev-images-dir`` is relative to the images directory (``../1``)."""
    if prev is None:
        return None
    prev = os.fspath(prev)
    return prev if os.path.isabs(prev) else os.path.normpath(os.path.join(os.fspath(image_dir), prev))


def pre_dump(pid: int, image_dir: str | os.PathLike[str], *, prev_images_dir: str | os.PathLike[str] | None = None,
             track: str | None = None, incremental: bool = False, compress_level: int | None = 1,
             ranges: Sequence[tuple[int, int]] | None = None,
             exclude: Sequence[tuple[int, int]] | None = None) -> "PreDumpStats":
    """Copy the memory of ``pid`` while it runs into a PRE_DUMP image; tracking stays parked in it.

    A relative ``prev_images_dir`` is taken relative to ``image_dir``, as CRIU does.

    The first pre-dump (no ``prev_images_dir``) copies every page and starts
    tracking (``track``: uffd-wp, soft-dirty or hash; default the best here);
    later ones copy only the pages written since the parent.  ``incremental``:
    ``image_dir`` is a store of numbered checkpoints; the next number is
    created with the newest as parent.  A lost tracking state gives a full
    image and a note (``stats.notes``), never a wrong delta.

    ``ranges`` / ``exclude``: ``(start, end)`` page-aligned address pairs that
    narrow what is copied and tracked (default: the whole process) — the
    first pre-dump copies every page of the selection and tracks only it,
    later ones copy the pages written in it.  Memory outside the selection is
    not copied by pre-dumps; the final :func:`dump_delta` copies it in full,
    so its image is complete.  The selection is recorded in the image: leaving
    both out keeps the parent's; giving a different one makes this pre-dump a
    full copy of the new selection (a note says so) that starts a new chain.
    A range matching no mapping, or a selection leaving nothing to copy, is a
    :class:`UsageError` raised before the target is touched.
    """
    from .incremental import check_ranges, pre_dump as _pre_dump

    check_process(pid)
    check_compress_level(compress_level)
    if incremental:
        if prev_images_dir is not None:
            raise UsageError("--incremental picks the parent itself; leave out --prev-images-dir")
        if ranges is not None or exclude is not None:
            check_ranges(pid, ranges, exclude)  # bad input creates no store either
    image_dir, prev_images_dir = _where_to_write(image_dir, prev_images_dir, incremental)
    return _pre_dump(pid, image_dir, parent=_parent_dir(image_dir, prev_images_dir), method=track,
                     compress_level=compress_level, ranges=ranges, exclude=exclude)


def dump_delta(pid: int, image_dir: str | os.PathLike[str], *, prev_images_dir: str | os.PathLike[str] | None = None,
               track_mem: bool = False, track: str | None = None, incremental: bool = False,
               leave_running: bool = False, compress_level: int | None = 1, shell_job: bool = False,
               tcp_close: bool = False, ext_unix_close: bool = False, tcp_established: bool = False,
               deleted_max: int | None = None, tolerate: Collection[str] = ()) -> "DumpStats":
    """The final, frozen, complete checkpoint as a delta of ``prev_images_dir`` (an INCREMENTAL image).

    Tracking is taken over with the address ranges the parent recorded; every
    page outside them (never copied by pre-dumps, or not tracked since the
    parent) is copied in full, so the image is complete whatever the selection.

    Tracking ends with it unless ``track_mem`` (and the target is left
    running): then it stays parked and the image records it, for the next
    delta.  ``incremental``: ``image_dir`` is a numbered store (first call: a
    FULL image); it implies ``track_mem`` when the target is left running.
    The other options are :func:`dump`'s.
    """
    from .dump import dump as _dump

    tolerated = _tolerate(tolerate, "dump")
    check_process(pid)
    check_compress_level(compress_level)
    if incremental:
        if prev_images_dir is not None:
            raise UsageError("--incremental picks the parent itself; leave out --prev-images-dir")
        track_mem = track_mem or leave_running
    image_dir, prev_images_dir = _where_to_write(image_dir, prev_images_dir, incremental)
    return _dump(pid, image_dir, leave_running=leave_running, compress_level=compress_level, shell_job=shell_job,
                 tcp_close=tcp_close, parent=_parent_dir(image_dir, prev_images_dir), track_mem=track_mem,
                 track_method=track, ext_unix_close=ext_unix_close, tcp_established=tcp_established,
                 deleted_max=deleted_max, tolerate=tolerated)


def _where_to_write(image_dir: str | os.PathLike[str], prev_images_dir: str | os.PathLike[str] | None,
                    incremental: bool) -> tuple[str | os.PathLike[str], str | os.PathLike[str] | None]:
    """(the image directory to create, its parent): checked, before the target is touched, for a place
    commit can use and no other user can change; ``incremental``: the next of the store ``image_dir``."""
    from .incremental import store_next

    if incremental:
        check_dir_to_write(image_dir)  # before store_next makes the store
        image_dir, prev_images_dir = store_next(image_dir)
    check_final(image_dir)
    return image_dir, prev_images_dir


def merge(image_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str], *,
          compress_level: int | None = 1) -> "MergeStats":
    """Squash the chain ending at ``image_dir`` (or a store's newest) into one standalone image ``out_dir``."""
    from .chain_ops import merge as _merge

    check_compress_level(compress_level)
    src = image_or_store(image_dir)
    check_final(out_dir)
    return _merge(src, out_dir, compress_level=compress_level)


def watch(pid: int, **kwargs: object) -> "Iterator[WatchSample]":
    """:func:`ckpt.track.watch.watch` of a process (``pid`` must not name a thread)."""
    check_process(pid)
    return _watch.watch(pid, **kwargs)  # type: ignore[arg-type]


def track_start(pid: int, **kwargs: object) -> "TrackingState":
    """:func:`ckpt.track.watch.track_start` of a process (``pid`` must not name a thread)."""
    check_process(pid)
    return _watch.track_start(pid, **kwargs)  # type: ignore[arg-type]


def track_stop(pid: int, *, fd: int | None = None) -> str:
    """:func:`ckpt.track.watch.track_stop` of a process (``pid`` must not name a thread; a gone one is tidied)."""
    if os.path.exists(f"/proc/{pid}"):
        check_process(pid)
    return _watch.track_stop(pid, fd=fd)


def resolve_image_dir(image_dir: str | os.PathLike[str]) -> str:
    """``image_dir`` itself, or the newest checkpoint when it is a numbered store (``restore -D STORE``)."""
    from .incremental import resolve_image_dir as _resolve

    return _resolve(image_dir)


if TYPE_CHECKING:
    from .chain_ops import MergeStats
    from .incremental import PreDumpStats

__all__ += ["pre_dump", "dump_delta", "merge", "resolve_image_dir", "show_stream"]


def migrate(pid: int, to: tuple[str, int], token: str | bytes, *, max_downtime_ms: float = 100.0,
            max_iterations: int = 30, bandwidth_limit_mb_s: float | None = None, dry_run: bool = False,
            track: str | None = None, stop_and_copy: bool = False, timeout: float = 60.0, tcp_close: bool = False,
            tcp_established: bool = False, action_script: str | None = None, tolerate: Collection[str] = (),
            on_round: "Callable[[RoundReport], None] | None" = None) -> "MigrateStats":
    """Move running process ``pid`` to the ``ckpt receive`` at ``to`` = (host, port).

    Pre-copy rounds (pre-dumps sent while it runs) until the predicted downtime
    fits ``max_downtime_ms``, the rounds stop converging, or ``max_iterations``;
    then a frozen final delta, restored at the destination; the source is ended
    only once the destination reports the process running.  Any failure before
    that raises (a :class:`ckpt.migrate.wire.WireError` for the link) with the
    source running on, untracked.  ``dry_run``: rounds and prediction only.
    ``tcp_close``: established TCP connections are taken closed (as ``dump``'s);
    ``tcp_established``: they move alive (the destination must have their local addresses).
    ``action_script``: run with ``CKPT_SCRIPT_ACTION=post-migrate`` once the destination
    runs the process, before the source's copy ends (to move an address there).
    ``tolerate``: as :func:`dump`'s, for the dumps of the migration.
    """
    from .migrate.source import migrate as _migrate

    tolerated = _tolerate(tolerate, "dump")
    check_process(pid)
    return _migrate(pid, to[0], to[1], token, max_downtime=max_downtime_ms / 1e3, max_iterations=max_iterations,
                    bandwidth_limit=bandwidth_limit_mb_s * 1e6 if bandwidth_limit_mb_s else None,
                    dry_run=dry_run, track=track, stop_and_copy=stop_and_copy, timeout=timeout, tcp_close=tcp_close,
                    tcp_established=tcp_established, action_script=action_script,
                    tolerate=tolerated, on_round=on_round)


def receive(listen: tuple[str, int], image_dir: str | os.PathLike[str], token: str | bytes, *, once: bool = True,
            on_event: Callable[[str], None] | None = None,
            on_listening: "Callable[[tuple[str, int]], None] | None" = None,
            cpu_cap: str | Iterable[str] | None = None, allow_changed_files: bool = False) -> "list[ReceiveResult]":
    """Accept migrations on ``listen`` = (host, port), keep their images under ``image_dir`` and restore them.

    ``once``: return after one migration (else serve until interrupted).
    ``on_listening((host, port))`` is called once the socket listens (port 0 picks one).
    ``cpu_cap``: the CPU checks of the restores, as for :func:`restore`; a source
    whose CPU fails them is refused at the handshake.  ``allow_changed_files``: as for :func:`restore`.
    """
    from .migrate.dest import serve
    from .resources.cpu import parse_cpu_cap

    check_dir_to_write(image_dir)
    return serve(listen[0], listen[1], os.fspath(image_dir), token, once=once, on_event=on_event,
                 on_listening=on_listening, cpu_cap=parse_cpu_cap(cpu_cap), allow_changed_files=allow_changed_files)


if TYPE_CHECKING:
    from .migrate.dest import ReceiveResult
    from .migrate.source import MigrateStats, RoundReport

__all__ += ["migrate", "receive"]
