"""The ``ckpt`` command line: argument parsing over :mod:`ckpt.api`, nothing else.

Every command is a small function that turns parsed arguments into one API
call and prints its result.  Errors are mapped to exit codes in one place
(:func:`main`): a :class:`~ckpt.errors.CkptError` prints one line (and a hint)
and exits with its code; a user never sees a traceback for their own mistake.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import NoReturn

from . import __version__
from .errors import EXIT_FAILURE, EXIT_USAGE, CkptError

__all__ = ["main", "build_parser"]

EXIT_INTERRUPTED = 130


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors in ckpt's one-line style (exit 2)."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        print(f"ckpt: {message}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def _cmd_check(args: argparse.Namespace) -> int:
    from . import api

    report = api.check()
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        print(report.format_table())
    return 0 if report.can_dump_restore else EXIT_FAILURE


def _cmd_show(args: argparse.Namespace) -> int:
    from . import api

    print(api.show(args.dir, as_json=args.json))
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    from . import api

    report = api.verify(args.dir)
    if report.ok:
        print(report.summary())
        return 0
    for problem in report.problems:  # every problem, one line each
        print(f"ckpt: {problem}", file=sys.stderr)
    return EXIT_USAGE


def _cmd_demo(args: argparse.Namespace) -> int:
    from . import demo

    return demo.main()


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="ckpt",
        description="Incremental checkpoint/restore of Linux processes.",
    )
    p.add_argument("--version", action="version", version=f"ckpt {__version__}")
    p.add_argument("--debug", action="store_true", help="show a traceback on internal errors")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    def add(name: str, fn: Callable[[argparse.Namespace], int], help_: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help_, description=help_)
        sp.set_defaults(func=fn)
        return sp

    sp = add("check", _cmd_check, "probe every kernel facility ckpt relies on, by trying it")
    sp.add_argument("--json", action="store_true", help="print the report as JSON")

    sp = add("show", _cmd_show, "decode every file of an image directory (like crit show)")
    sp.add_argument("dir", metavar="DIR", help="image directory")
    sp.add_argument("--json", action="store_true", help="print JSON instead of text")

    sp = add("verify", _cmd_verify, "check every file of an image and its whole parent chain")
    sp.add_argument("dir", metavar="DIR", help="image directory")

    add("demo", _cmd_demo, "a short real session with a sample process (what `make demo` runs)")

    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ckpt`` console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CkptError as e:
        print(f"ckpt: {e}", file=sys.stderr)
        if e.hint:
            print(f"hint: {e.hint}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("ckpt: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # stdout closed early (`ckpt show DIR | head`): not an error worth a message.
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return 0
    except OSError as e:
        # An environment problem (permissions, full disk) outside the translated paths.
        print(f"ckpt: {e}", file=sys.stderr)
        if args.debug:
            traceback.print_exc()
        return EXIT_FAILURE
    except Exception as e:  # a bug in ckpt: one line, traceback on request
        print(f"ckpt: internal error: {type(e).__name__}: {e}", file=sys.stderr)
        if args.debug:
            traceback.print_exc()
        else:
            print("hint: re-run with --debug for the traceback, and report it", file=sys.stderr)
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
