"""ckpt commands run in forks of a process that imported ckpt once (cases.py and across.py in the guests).

A TCG guest spends ~12 s importing what ``ckpt dump`` or ``ckpt restore`` needs at each Python start,
more than most commands take there: a chain case's four commands took 49 s, 20 s this way.  Each
command is still its own process, as ``python -m ckpt.cli ARGS`` would be, less the imports.
"""

from __future__ import annotations

import os
import signal
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

#: What ckpt commands import, imported once here: each Python start in a TCG
#: guest spends ~12 s importing them, more than most commands take.
PRELOAD = ("ckpt.cli", "ckpt.api", "ckpt.dump", "ckpt.restore", "ckpt.incremental", "ckpt.chain_ops")


def _preload() -> None:
    import importlib
    for name in PRELOAD:
        importlib.import_module(name)


def run_forked(argv: list[str], pass_fds: tuple[int, ...] = (), timeout: float = 900.0) -> tuple[int, str, str]:
    """``ckpt ARGV`` in a fork of this process (ckpt imported already): exit code, stdout, stderr.

    The child is what ``python -m ckpt.cli`` would be, less the imports: its own process, the
    repository as cwd, stdin from /dev/null, no descriptor of ours but ``pass_fds``.
    """
    _preload()
    sys.stdout.flush()
    sys.stderr.flush()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        pid = os.fork()
        if pid == 0:  # the command; never returns
            code = 70
            try:
                os.chdir(REPO)
                null = os.open(os.devnull, os.O_RDONLY)
                for fd, src in ((0, null), (1, out.fileno()), (2, err.fileno())):
                    os.dup2(src, fd)
                keep = {0, 1, 2, *pass_fds}
                for fd in [int(n) for n in os.listdir("/proc/self/fd")]:
                    if fd not in keep:
                        try:
                            os.close(fd)
                        except OSError:
                            pass
                from ckpt import cli
                code = cli.main(argv)
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            except BaseException:  # noqa: BLE001 - an internal error, as the interpreter would print it
                import traceback
                traceback.print_exc()
            finally:
                try:
                    sys.stdout.flush()
                    sys.stderr.flush()
                finally:
                    os._exit(code or 0)
        deadline = time.monotonic() + timeout
        while True:
            got, status = os.waitpid(pid, os.WNOHANG)
            if got:
                break
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                raise TimeoutError(f"ckpt {' '.join(argv[:2])} did not end within {timeout:.0f}s")
            time.sleep(0.02)
        rc = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return rc, out.read().decode(errors="replace"), err.read().decode(errors="replace")


