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
import signal
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import NoReturn

from . import __version__
from .errors import EXIT_FAILURE, EXIT_USAGE, CkptError, UsageError
from .progress import progress_for

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

    for piece in api.show_stream(args.dir, as_json=args.json):  # written as made: a pagemap may list 1 M ranges
        sys.stdout.write(piece)
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


def _warn_notes(notes: Sequence[str]) -> None:
    for note in notes:
        print(f"ckpt: warning: {note}", file=sys.stderr)


def _peak_rss_bytes() -> int:
    """This process's own peak RSS (VmHWM: reset at exec, unlike getrusage's ru_maxrss,
    which keeps the high-water mark of whatever process forked us)."""
    with open("/proc/self/status", "rb") as f:
        for line in f:
            if line.startswith(b"VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def _write_json_stats(path: str | None, stats: object) -> None:
    if path:
        from dataclasses import asdict

        with open(path, "w") as f:
            json.dump({**asdict(stats), "peak_rss_bytes": _peak_rss_bytes()}, f, indent=2)  # type: ignore[call-overload]
            f.write("\n")


def _size(text: str) -> int:
    """argparse type for sizes: bytes, or a number with K, M or G (powers of 1024)."""
    units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    num, unit = (t[:-1], t[-1]) if t and t[-1] in "KMG" else (t, "")
    try:
        value = int(float(num) * units[unit])
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 4096, 512K, 100M, 2G)") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"not a size: {text!r}")
    return value


def _cmd_dump(args: argparse.Namespace) -> int:
    from . import api

    level = None if args.no_compress else args.compress
    if args.prev_images_dir or args.track_mem or args.incremental or args.track:
        if args.leave_stopped:
            raise UsageError("-s with --prev-images-dir/--track-mem/--incremental is not supported yet")
        stats = api.dump_delta(args.tree, args.images_dir, prev_images_dir=args.prev_images_dir,
                               track_mem=args.track_mem, track=args.track, incremental=args.incremental,
                               leave_running=args.leave_running, compress_level=level, shell_job=args.shell_job,
                               tcp_close=args.tcp_close, ext_unix_close=args.ext_unix_close,
                               tcp_established=args.tcp_established)
        _warn_notes(stats.notes)
        _write_json_stats(args.json_stats, stats)
        return 0
    bar = progress_for(sys.stderr, "dump: read")  # None unless stderr is a terminal
    try:
        stats = api.dump(args.tree, args.images_dir, leave_running=args.leave_running,
                         leave_stopped=args.leave_stopped, compress_level=level, shell_job=args.shell_job,
                         tcp_close=args.tcp_close, progress=bar, deleted_max=args.deleted_max,
                         ext_unix_close=args.ext_unix_close, tcp_established=args.tcp_established)
    finally:
        if bar is not None:
            bar.close()
    _warn_notes(stats.notes)
    _write_json_stats(args.json_stats, stats)
    return 0


def _cmd_restore(args: argparse.Namespace) -> int:
    from . import api

    bar = progress_for(sys.stderr, "restore: write")
    try:
        stats = api.restore(args.images_dir, detached=args.restore_detached, pidfile=args.pidfile,
                            shell_job=args.shell_job, inherit_fds=args.inherit_fd, progress=bar,
                            allow_changed_files=args.allow_changed_files)
    finally:
        if bar is not None:
            bar.close()
    _warn_notes(stats.notes)
    _write_json_stats(args.json_stats, stats)
    if args.restore_detached:
        return 0
    # Like CRIU without -d: stay the parent and report how the process ended.
    return api.wait_restored(stats.pid)


def _host_port(text: str) -> tuple[str, int]:
    """ADDR:PORT (an IPv6 address in brackets: [::1]:PORT)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise argparse.ArgumentTypeError(f"not ADDR:PORT: {text!r}")
    return host.strip("[]"), int(port)


def _cmd_migrate(args: argparse.Namespace) -> int:
    from .migrate.source import migrate
    from .migrate.wire import load_token

    token = load_token(args.token_file)
    host, port = args.to
    tty = sys.stderr.isatty()

    def on_round(r: object) -> None:
        line = (f"round {r.index}: {r.pages} pages, {r.bytes_sent / 1e6:.1f} MB sent in {r.seconds * 1e3:.0f} ms, "  # type: ignore[attr-defined]
                f"dirty {r.dirty_rate_mb_s:.1f} MB/s, predicted downtime {r.predicted_downtime_ms:.0f} ms")  # type: ignore[attr-defined]
        if tty or args.verbose:
            print(line, file=sys.stderr, flush=True)

    stats = migrate(args.tree, host, port, token, max_downtime=args.max_downtime / 1e3,
                    max_iterations=args.max_iterations,
                    bandwidth_limit=args.bandwidth_limit * 1e6 if args.bandwidth_limit else None,
                    dry_run=args.dry_run, track=args.track, stop_and_copy=args.stop_and_copy, timeout=args.timeout,
                    tcp_close=args.tcp_close, tcp_established=args.tcp_established,
                    action_script=args.action_script, on_round=on_round)
    if args.dry_run:
        print(f"dry run: {stats.iterations} rounds, {stats.bytes_sent / 1e6:.1f} MB sent; switch-over now: "
              f"predicted downtime {stats.predicted_downtime_ms:.0f} ms ({stats.reason}); the process runs on here")
    else:
        print(f"migrated pid {args.tree} to {stats.destination} (pid {stats.dest_pid} there): downtime "
              f"{stats.downtime_ms:.0f} ms (predicted {stats.predicted_downtime_ms:.0f}), {stats.iterations} rounds, "
              f"{stats.bytes_sent / 1e6:.1f} MB sent, total {stats.total_ms / 1e3:.2f} s")
    _warn_notes(stats.notes)
    _write_json_stats(args.json_stats, stats)
    return 0


def _cmd_receive(args: argparse.Namespace) -> int:
    from .migrate.dest import serve
    from .migrate.wire import load_token, save_token

    os.makedirs(args.images_dir, mode=0o700, exist_ok=True)
    if args.token_file:
        token = load_token(args.token_file)
    else:  # a fresh token for this run, in a file only we can read: copy it to the source
        path = os.path.join(args.images_dir, f"migrate-{os.getpid()}.token")
        token = save_token(path)
        print(f"token written to {path}: give it to `ckpt migrate --token-file`", file=sys.stderr)
    host, port = args.listen

    def say(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    results = serve(host, port, args.images_dir, token, once=args.once, on_event=say,
                    on_listening=lambda a: say(f"listening on {a[0]}:{a[1]}"))
    last = results[-1] if results else None
    if args.json_stats and last is not None:
        with open(args.json_stats, "w") as f:
            json.dump(last.as_dict(), f, indent=2)
    return 0 if last is None or last.outcome in ("running", "dry run") else EXIT_FAILURE


def _cmd_demo(args: argparse.Namespace) -> int:
    from . import demo

    return demo.main()


def _fmt_pages(n: int) -> str:
    return f"{n} pages ({n * 4096 / 1e6:.1f} MB)"


def _cmd_watch(args: argparse.Namespace) -> int:
    import contextlib

    from . import api
    from .track.base import parse_ranges

    ranges = parse_ranges(args.ranges) if args.ranges else None
    exclude = parse_ranges(args.exclude_ranges) if args.exclude_ranges else ()
    samples = api.watch(args.tree, interval=args.interval, count=args.count, ranges=ranges, exclude=exclude,
                        method=args.track)
    with contextlib.closing(samples):  # tracking leaves the target on every way out, Ctrl-C included
        try:
            for s in samples:
                if args.json:
                    print(json.dumps(s.as_dict()), flush=True)
                    continue
                print(f"interval {s.interval}: {s.seconds:.2f} s, written {_fmt_pages(s.written_pages)}, "
                      f"{s.mb_s:.2f} MB/s, holes {s.hole_pages}, ranges {len(s.ranges)} "
                      f"({s.new_ranges} new, {s.gone_ranges} gone), get+clear {s.scan_ms:.2f} ms [{s.method}]")
                for r in s.ranges:
                    if r.written_pages or r.hole_pages or args.all:
                        print(f"  {r.start:#014x}-{r.end:#014x} {r.path or '[anon]':<28.28} "
                              f"{r.written_pages:>8} pages {r.mb_s:>9.2f} MB/s"
                              f"{'  new' if r.new else ''}{f'  holes {r.hole_pages}' if r.hole_pages else ''}")
                sys.stdout.flush()
        except KeyboardInterrupt:
            samples.close()
            print("ckpt: watch interrupted; tracking removed", file=sys.stderr)
    return 0


def _cmd_track(args: argparse.Namespace) -> int:
    from . import api
    from .track.base import parse_ranges

    if args.stop:
        print(api.track_stop(args.tree, fd=args.fd))
        return 0
    ranges = parse_ranges(args.ranges) if args.ranges else None
    exclude = parse_ranges(args.exclude_ranges) if args.exclude_ranges else ()
    state = api.track_start(args.tree, method=args.track, ranges=ranges, exclude=exclude)
    where = f"userfaultfd parked at fd {state.parked_fd}" if state.method == "uffd-wp" else state.digests_path
    print(f"tracking process {args.tree} with {state.method} ({where}); state in {api.tracking_state_path(args.tree)}")
    return 0


def _delta_flags(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--prev-images-dir", metavar="PARENT", help="image to take a delta against (its tracking is taken over)")
    sp.add_argument("--incremental", action="store_true",
                    help="-D is a store of numbered checkpoints: create N+1 with parent N (first: all pages)")
    sp.add_argument("--track", choices=("uffd-wp", "soft-dirty", "hash"), help="tracking method (default: best here)")


def _cmd_pre_dump(args: argparse.Namespace) -> int:
    from . import api
    from .incremental import format_ranges
    from .track.base import RangeSpec, parse_ranges

    level = None if args.no_compress else args.compress
    # `is not None`: an empty --ranges "" is an error, not "no option"
    ranges = parse_ranges(args.ranges) if args.ranges is not None else None
    exclude = parse_ranges(args.exclude_ranges) if args.exclude_ranges is not None else None
    s = api.pre_dump(args.tree, args.images_dir, prev_images_dir=args.prev_images_dir, track=args.track,
                     incremental=args.incremental, compress_level=level, ranges=ranges, exclude=exclude)
    _warn_notes(s.notes)
    sel = RangeSpec(s.include, s.exclude)
    where = f" of ranges {format_ranges(sel)}" if sel != RangeSpec() else ""
    print(f"pre-dump {s.image_dir}: {'full' if s.full else 'delta'} [{s.method}]{where}, {s.pages_stored} pages copied, "
          f"{s.pages_parent} in parent, {s.pages_zero} zero; get+clear {s.collect_seconds * 1e3:.1f} ms, "
          f"copy {s.copy_seconds * 1e3:.1f} ms, target frozen {s.frozen_seconds * 1e3:.1f} ms")
    _write_json_stats(args.json_stats, s)
    return 0


def _cmd_merge(args: argparse.Namespace) -> int:
    from . import api

    m = api.merge(args.images_dir, args.output)
    print(f"merged {len(m.images)} image(s) into {m.out_dir}: {m.pages_stored} pages, {m.pages_zero} zero")
    return 0


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

    sp = add("migrate", _cmd_migrate, "move a running process to a `ckpt receive` elsewhere, with pre-copy rounds")
    sp.add_argument("-t", "--tree", type=int, required=True, metavar="PID", help="the process")
    sp.add_argument("--to", type=_host_port, required=True, metavar="ADDR:PORT", help="where `ckpt receive` listens")
    sp.add_argument("--token-file", required=True, metavar="F", help="the shared token (both peers prove they know it)")
    sp.add_argument("--max-downtime", type=float, default=100.0, metavar="MS",
                    help="switch over once the predicted downtime fits (default 100 ms)")
    sp.add_argument("--max-iterations", type=int, default=30, metavar="N", help="pre-copy rounds at most (default 30)")
    sp.add_argument("--bandwidth-limit", type=float, metavar="MB/s", help="cap the rate on the wire")
    sp.add_argument("--track", choices=("uffd-wp", "soft-dirty", "hash"), help="dirty-tracking back-end")
    sp.add_argument("--dry-run", action="store_true",
                    help="run the pre-copy rounds and print the predicted downtime; switch nothing")
    sp.add_argument("--timeout", type=float, default=60.0, metavar="S",
                    help="give up (the process running on here) when the destination is silent this long (default 60)")
    sp.add_argument("--stop-and-copy", action="store_true",
                    help="no pre-copy: freeze, send one full image, restore (the baseline for the downtime)")
    sp.add_argument("--tcp-close", action="store_true",
                    help="established TCP connections are closed by the migration (as dump --tcp-close), not refused")
    sp.add_argument("--tcp-established", action="store_true",
                    help="established TCP connections move alive (as dump --tcp-established); the destination "
                         "must have their local addresses")
    sp.add_argument("--action-script", metavar="SCRIPT",
                    help="run SCRIPT with CKPT_SCRIPT_ACTION=post-migrate once the destination runs the process, "
                         "before the source ends it (e.g. to move a service address there)")
    sp.add_argument("-v", "--verbose", action="store_true", help="a line per round even when not on a terminal")
    sp.add_argument("--json-stats", metavar="FILE", help="write downtime, rounds and bytes as JSON")

    sp = add("receive", _cmd_receive, "accept migrations (`ckpt migrate`) and restore them here")
    sp.add_argument("--listen", type=_host_port, default=("127.0.0.1", 7070), metavar="ADDR:PORT",
                    help="where to listen (default 127.0.0.1:7070, loopback only)")
    sp.add_argument("-D", "--images-dir", required=True, metavar="DIR", help="where received images are kept")
    sp.add_argument("--token-file", metavar="F", help="the shared token (default: a new one, written to DIR)")
    sp.add_argument("--once", action="store_true", help="exit after one migration")
    sp.add_argument("--json-stats", metavar="FILE", help="write the last migration's result as JSON")

    sp = add("check", _cmd_check, "probe every kernel facility ckpt relies on, by trying it")
    sp.add_argument("--json", action="store_true", help="print the report as JSON")

    sp = add("show", _cmd_show, "decode every file of an image directory (like crit show)")
    sp.add_argument("dir", metavar="DIR", help="image directory")
    sp.add_argument("--json", action="store_true", help="print JSON instead of text")

    sp = add("verify", _cmd_verify, "check every file of an image and its whole parent chain")
    sp.add_argument("dir", metavar="DIR", help="image directory")

    sp = add("dump", _cmd_dump, "checkpoint a running process into an image directory")
    sp.add_argument("-t", "--tree", type=int, required=True, metavar="PID", help="the process to dump")
    sp.add_argument("-D", "--images-dir", required=True, metavar="DIR", help="image directory to create")
    _delta_flags(sp)
    sp.add_argument("--track-mem", action="store_true",
                    help="keep dirty tracking after the dump (with -R), for a later delta against this image")
    after = sp.add_mutually_exclusive_group()
    after.add_argument("-R", "--leave-running", action="store_true",
                       help="keep the process running after the dump (default: end it, like CRIU)")
    after.add_argument("-s", "--leave-stopped", action="store_true",
                       help="leave the process stopped (SIGSTOP) after the dump; `kill -CONT PID` resumes it")
    level = sp.add_mutually_exclusive_group()
    level.add_argument("--compress", type=int, default=1, metavar="N", help="zstd level for page data (default 1)")
    level.add_argument("--no-compress", action="store_true", help="store page data uncompressed")
    sp.add_argument("--shell-job", action="store_true",
                    help="the process is attached to a terminal (it is re-attached to the restoring one)")
    sp.add_argument("--tcp-close", action="store_true",
                    help="save established TCP connections as closed sockets instead of refusing them")
    sp.add_argument("--tcp-established", action="store_true",
                    help="keep established TCP connections alive (TCP_REPAIR; their peers' packets are dropped "
                         "by an nftables rule until the restore)")
    sp.add_argument("--ext-unix-close", action="store_true",
                    help="save unix sockets connected to a process outside the dumped tree as sockets whose peer "
                         "closed instead of refusing them (waiting connections from outside are dropped)")
    sp.add_argument("--deleted-max", type=_size, default=None, metavar="SIZE",
                    help="largest deleted-but-open file whose content is saved, in bytes or with K/M/G "
                         "(default 64M); a bigger one makes the dump fail, naming it")
    sp.add_argument("--json-stats", metavar="FILE", help="write timings and counts as JSON")

    sp = add("restore", _cmd_restore, "recreate a process from an image directory, with its pid")
    sp.add_argument("-D", "--images-dir", required=True, metavar="DIR", help="image directory (newest of a chain)")
    sp.add_argument("-d", "--restore-detached", action="store_true",
                    help="detach once restored (default: wait and exit with the process's status)")
    sp.add_argument("--pidfile", metavar="FILE", help="write the restored process's pid here")
    sp.add_argument("--shell-job", action="store_true", help="re-attach terminal fds to this terminal")
    sp.add_argument("--allow-changed-files", action="store_true",
                    help="reopen an open file even if it changed since the dump (size, mtime, inode), with a "
                         "warning; files the process has mapped are still checked")
    sp.add_argument("--inherit-fd", action="append", default=[], metavar="fd[N]:RES",
                    help="give the restored process our fd N in place of RES, an fd that pointed outside "
                         "the image: its description as `ckpt show` prints it (e.g. pipe:[12345]) or its "
                         "fd number in the image; may be repeated")
    sp.add_argument("--json-stats", metavar="FILE", help="write timings and counts as JSON")

    sp = add("watch", _cmd_watch, "print the pages a process writes per interval and its dirty rate (MB/s)")
    sp.add_argument("-t", "--tree", type=int, required=True, metavar="PID", help="the process")
    sp.add_argument("--interval", type=float, default=1.0, metavar="S", help="seconds per interval (default 1)")
    sp.add_argument("--count", type=int, default=None, metavar="N", help="stop after N intervals (default: Ctrl-C)")
    sp.add_argument("--ranges", metavar="A-B,...", help="track only these hex address ranges")
    sp.add_argument("--exclude-ranges", metavar="A-B,...", help="do not track these hex address ranges")
    sp.add_argument("--track", choices=("uffd-wp", "soft-dirty", "hash"), help="tracking method (default: best here)")
    sp.add_argument("--all", action="store_true", help="list ranges with no writes too")
    sp.add_argument("--json", action="store_true", help="one JSON object per interval")

    sp = add("track", _cmd_track, "leave dirty tracking running in a process between ckpt runs, or remove it")
    sp.add_argument("-t", "--tree", type=int, required=True, metavar="PID", help="the process")
    mode = sp.add_mutually_exclusive_group(required=True)
    mode.add_argument("--start", action="store_true", help="start tracking and park it in the target")
    mode.add_argument("--stop", action="store_true", help="remove the tracking ckpt left in the target")
    sp.add_argument("--fd", type=int, help="with --stop and no saved state: the userfaultfd to close")
    sp.add_argument("--ranges", metavar="A-B,...")
    sp.add_argument("--exclude-ranges", metavar="A-B,...")
    sp.add_argument("--track", choices=("uffd-wp", "soft-dirty", "hash"))

    sp = add("pre-dump", _cmd_pre_dump, "copy a process's memory while it runs (first: all pages; then: written since the parent)")
    sp.add_argument("-t", "--tree", type=int, required=True, metavar="PID", help="the process")
    sp.add_argument("-D", "--images-dir", required=True, metavar="DIR", help="image directory to create (a store with --incremental)")
    _delta_flags(sp)
    sp.add_argument("--ranges", metavar="A-B,...",
                    help="copy and track only these hex address ranges (default: the whole process): the first "
                         "pre-dump copies all their pages, later ones the pages written in them; memory outside "
                         "is not copied by pre-dumps, the final dump copies it in full. Recorded in the image: "
                         "left out, the parent's ranges are kept; different ranges give a warning and a full "
                         "copy of the new ones (a new chain)")
    sp.add_argument("--exclude-ranges", metavar="A-B,...",
                    help="do not copy or track these hex address ranges (same rules as --ranges; giving either "
                         "option replaces the parent's whole selection)")
    level = sp.add_mutually_exclusive_group()
    level.add_argument("--compress", type=int, default=1, metavar="N", help="zstd level for page data (default 1)")
    level.add_argument("--no-compress", action="store_true", help="store page data uncompressed")
    sp.add_argument("--json-stats", metavar="FILE", help="write timings and counts as JSON")

    sp = add("merge", _cmd_merge, "squash an image chain (base + deltas) into one standalone image")
    sp.add_argument("-D", "--images-dir", required=True, metavar="DIR", help="newest image of the chain (or a store)")
    sp.add_argument("-o", "--output", required=True, metavar="OUT", help="image directory to create")

    add("demo", _cmd_demo, "a short real session with a sample process (what `make demo` runs)")

    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ckpt`` console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    # ckpt waits for the children it makes (a restore's root, helpers): an ignored SIGCHLD inherited
    # across exec would have the kernel reap them first.
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
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
