"""Run one ``ckpt`` command in this process, then write how many syscalls it injected.

    python -m bench.ckpt_counted COUNTS.json dump -t PID -D DIR --json-stats STATS.json

The bench measures ``ckpt`` as a user runs it, a process of its own; the
injection counter (ckpt.control.inject.injected_syscalls) lives in that
process, so this is the CLI entry point with the count saved on the way out:
``{"total": N, "by_syscall": {"mmap": n, ...}}``.  Everything else — argument
parsing, exit codes, ``--json-stats`` — is ``ckpt.cli.main``'s.  Run from the
repository root (``-m bench.…``), as bench/tree.py does.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    from ckpt.cli import main as ckpt_main
    from ckpt.control.inject import injected_by_syscall, injected_syscalls

    rc = ckpt_main(argv[1:])
    Path(argv[0]).write_text(json.dumps({"total": injected_syscalls(), "by_syscall": injected_by_syscall()}) + "\n")
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
