"""``ckpt check``'s proof: dump and restore a small child for real, as a user would.

The probes in :mod:`ckpt.features` try each facility on its own; this runs the
whole path once — a pre-dump with the tracking back-end this kernel gets, a
final delta dump of it (the target is ended), a restore at the same pid — and
then checks that the restored process is the same program (its argv and
environment read back from its memory) and runs (it dies of the SIGTERM sent
to it, as ``sleep`` does).  A kernel where any step fails makes ``ckpt check``
exit 1, whatever the probes said.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time

from .features import Probe

__all__ = ["dump_restore_child", "NAME"]

NAME = "dump + restore of a child"


def _start_child() -> subprocess.Popen[bytes]:
    """``sleep`` with only /dev/null for stdio, parked in its sleep before we touch it."""
    proc = subprocess.Popen(["sleep", "600"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, close_fds=True, start_new_session=True)
    deadline = time.monotonic() + 10  # a guest under TCG starts a process ~30x slower than this host
    while time.monotonic() < deadline:
        with open(f"/proc/{proc.pid}/stat", "rb") as f:
            if f.read().rsplit(b")", 1)[1].split()[0] == b"S":
                break
        time.sleep(0.01)
    return proc


def _identity(pid: int) -> tuple[bytes, bytes]:
    """argv and environment, which the kernel reads out of the process's own memory."""
    with open(f"/proc/{pid}/cmdline", "rb") as a, open(f"/proc/{pid}/environ", "rb") as e:
        return a.read(), e.read()


def dump_restore_child() -> Probe:
    """Run the whole path on a child; a failed step becomes a failed (required) probe naming it."""
    from .dump import dump
    from .incremental import pre_dump
    from .restore import restore

    work = tempfile.mkdtemp(prefix="ckpt-check-")
    proc: subprocess.Popen[bytes] | None = None
    restored = 0
    step = "starting the child"
    t0 = time.monotonic()
    try:
        proc = _start_child()
        pid = proc.pid
        before = _identity(pid)
        step = "pre-dump"
        first = pre_dump(pid, os.path.join(work, "1"))
        step = "delta dump"
        dump(pid, os.path.join(work, "2"), parent=os.path.join(work, "1"))
        proc.returncode = -signal.SIGKILL  # the dump killed and reaped it
        step = "restore"
        restored = restore(os.path.join(work, "2")).pid
        step = "checking the restored process"
        if restored != pid:
            raise RuntimeError(f"restored as pid {restored}, not {pid}")
        if _identity(restored) != before:
            raise RuntimeError("its argv or environment differ from the original's")
        os.kill(restored, signal.SIGTERM)
        _, status = os.waitpid(restored, 0)
        restored = 0
        if not (os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGTERM):
            raise RuntimeError(f"it did not die of SIGTERM as sleep does (wait status {status:#x})")
        return Probe(NAME, True, f"pre-dump ({first.method}), delta dump, restore, checked: "
                                 f"{time.monotonic() - t0:.1f} s", required=True)
    except Exception as e:  # any failure is the answer, not a crash of `ckpt check`
        return Probe(NAME, False, f"{step} failed: {e}", required=True)
    finally:
        for p in (restored, proc.pid if proc is not None and proc.returncode is None else 0):
            if p:
                try:
                    os.kill(p, signal.SIGKILL)
                    os.waitpid(p, 0)
                except (ProcessLookupError, ChildProcessError):
                    pass
        shutil.rmtree(work, ignore_errors=True)
