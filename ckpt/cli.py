"""The ``ckpt`` command line: argument parsing over :mod:`ckpt.api`, nothing else.

Every command is a small function that turns parsed arguments into one API
call and prints its result.  Errors are mapped to exit codes in one place
(:func:`main`): a :class:`~ckpt.errors.CkptError` prints one line (and a hint)
and exits with its code; a user never sees a traceback for their own mistake.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import signal
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import asdict, is_dataclass
from typing import TYPE_CHECKING, NoReturn

from . import __version__, interrupts
from .errors import EXIT_FAILURE, EXIT_USAGE, CkptError, UsageError, describe_oserror
from .outfile import OutputFile
from .progress import ProgressEvent, progress_for

if TYPE_CHECKING:
    from .migrate.tls import TlsConfig

__all__ = ["main", "build_parser"]

EXIT_INTERRUPTED = 130

log = logging.getLogger("ckpt")

#: CRIU's verbosity levels (-v0 … -v4) as logging levels; 2, warnings, is the default.
_LEVELS = {0: logging.CRITICAL + 10, 1: logging.ERROR, 2: logging.WARNING, 3: logging.INFO, 4: logging.DEBUG}
_DEFAULT_VERBOSITY = 2
_VERBOSITY = re.compile(r"-(v+)(\d*)|--verbosity(?:=(\d+))?")

#: Signals that end ckpt the way Ctrl-C does: the target is put back, the half-written image removed.
_ENDING_SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGPIPE)


class _Ended(KeyboardInterrupt):
    """SIGTERM, SIGHUP or SIGPIPE (``kill``, ``timeout``, a service stop, a lost terminal or pipe):
    a KeyboardInterrupt, so every clean-up that Ctrl-C runs runs for it too."""

    def __init__(self, signo: int) -> None:
        super().__init__(signo)
        self.signo = signo


def _end(signo: int, _frame: object) -> None:
    if signo == signal.SIGPIPE and isinstance(sys.exc_info()[1], BrokenPipeError):
        return  # the signal of the EPIPE being handled (our stdout's reader is gone): one way out is enough
    interrupts.interrupt(_Ended(signo) if signo != signal.SIGINT else KeyboardInterrupt())


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


def _image_arg(args: argparse.Namespace) -> str:
    """``show``/``verify``: the image as ``-D DIR`` (as restore and merge take it) or as the plain DIR."""
    if args.dir and args.images_dir and args.dir != args.images_dir:
        raise UsageError(f"two images given: -D {args.images_dir} and {args.dir}")
    where = args.images_dir or args.dir
    if not where:
        raise UsageError("the image directory (or store) is missing: give -D DIR")
    return where


def _cmd_show(args: argparse.Namespace) -> int:
    from . import api

    for piece in api.show_stream(_image_arg(args), as_json=args.json):  # written as made: a pagemap may list 1 M ranges
        sys.stdout.write(piece)
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    from . import api

    where = _image_arg(args)
    _check_signed(args, where)
    report = api.verify(where)
    if report.ok:
        print(report.summary())
        return 0
    for problem in report.problems:  # every problem, one line each
        print(f"ckpt: {problem}", file=sys.stderr)
    return EXIT_USAGE


def _warn_notes(notes: Sequence[str]) -> None:
    for note in notes:
        log.warning("%s", note)


def _peak_rss_bytes() -> int:
    """This process's own peak RSS (VmHWM: reset at exec, unlike getrusage's ru_maxrss,
    which keeps the high-water mark of whatever process forked us)."""
    with open("/proc/self/status", "rb") as f:
        for line in f:
            if line.startswith(b"VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def _finite(value: object) -> object:
    """JSON has no Infinity or NaN: an unknown (infinite) figure becomes null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def stats_json(stats: object, *, indent: int | None = 2) -> str:
    """A command's ``--json-stats``: strict JSON, one shape per field across commands.

    ``processes`` is a count everywhere (a restore's pids are ``pids``), an
    unknown figure (an infinite predicted downtime) is null, and every command
    adds its own ``peak_rss_bytes``.
    """
    data = asdict(stats) if is_dataclass(stats) and not isinstance(stats, type) else dict(stats)  # type: ignore[call-overload]
    if isinstance(data.get("processes"), (list, tuple)):
        data["pids"] = list(data["processes"])
        data["processes"] = len(data["pids"])
    data["peak_rss_bytes"] = _peak_rss_bytes()
    return json.dumps(_finite(data), indent=indent, allow_nan=False) + "\n"


def _json_stats_file(args: argparse.Namespace) -> OutputFile | None:
    """The ``--json-stats`` file, checked now: before the target is touched."""
    return OutputFile.checked(getattr(args, "json_stats", None), "--json-stats")


def _write_json_stats(out: OutputFile | None, stats: object) -> None:
    log.debug("result: %s", stats_json(stats, indent=None).strip())
    if out is not None:
        out.write(stats_json(stats))


def _logged(progress: Callable[[ProgressEvent], None] | None) -> Callable[[ProgressEvent], None] | None:
    """``progress`` (the terminal bar, or None) that also logs each phase (-v3) and byte count (-v4)."""
    if not log.isEnabledFor(logging.INFO):
        return progress
    last = [""]

    def step(ev: ProgressEvent) -> None:
        if ev.phase != last[0]:
            log.info("phase: %s", ev.phase)
            last[0] = ev.phase
        elif ev.done_bytes:
            log.debug("phase: %s, %d bytes", ev.phase, ev.done_bytes)
        if progress is not None:
            progress(ev)

    return step


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


def _signer(args: argparse.Namespace) -> AbstractContextManager[None]:
    """The images this command writes are signed with ``--sign-key`` (loaded, and checked, before anything)."""
    from .image import signing

    return signing.signing(signing.load_signing_key(args.sign_key) if args.sign_key else None)


def _check_signed(args: argparse.Namespace, where: str) -> None:
    """With ``--verify-key``: refuse the image (or store) unless its chain is signed with it, every file as signed."""
    if args.verify_key:
        from . import api
        from .image import signing

        signing.verified_chain(api.image_or_store(where), signing.load_verify_key(args.verify_key))


def _cmd_dump(args: argparse.Namespace) -> int:
    with _signer(args):
        return _dump(args)


def _dump(args: argparse.Namespace) -> int:
    from . import api

    level = None if args.no_compress else args.compress
    stats_out = _json_stats_file(args)
    if args.prev_images_dir or args.track_mem or args.incremental or args.track:
        if args.leave_stopped:
            raise UsageError("-s with --prev-images-dir/--track-mem/--incremental is not supported yet")
        stats = api.dump_delta(args.tree, args.images_dir, prev_images_dir=args.prev_images_dir,
                               track_mem=args.track_mem, track=args.track, incremental=args.incremental,
                               leave_running=args.leave_running, compress_level=level, shell_job=args.shell_job,
                               tcp_close=args.tcp_close, ext_unix_close=args.ext_unix_close,
                               tcp_established=args.tcp_established, deleted_max=args.deleted_max,
                               tolerate=args.tolerate)
        _warn_notes(stats.notes)
        _write_json_stats(stats_out, stats)
        return 0
    bar = progress_for(sys.stderr, "dump: read")  # None unless stderr is a terminal
    try:
        stats = api.dump(args.tree, args.images_dir, leave_running=args.leave_running,
                         leave_stopped=args.leave_stopped, compress_level=level, shell_job=args.shell_job,
                         tcp_close=args.tcp_close, progress=_logged(bar), deleted_max=args.deleted_max,
                         ext_unix_close=args.ext_unix_close, tcp_established=args.tcp_established,
                         tolerate=args.tolerate)
    finally:
        if bar is not None:
            bar.close()
    _warn_notes(stats.notes)
    _write_json_stats(stats_out, stats)
    return 0


def _cpu_cap(text: str) -> frozenset[str]:
    """argparse type for ``--cpu-cap``: the checks it names (ckpt.resources.cpu.parse_cpu_cap)."""
    from .resources.cpu import parse_cpu_cap

    try:
        return parse_cpu_cap(text)
    except UsageError as exc:
        raise argparse.ArgumentTypeError(f"{exc.message.removeprefix('--cpu-cap: ')} ({exc.hint})") from None


def _allow_changed_flag(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--allow-changed-files", action="store_true",
                    help="reopen an open file even if it changed since the dump (size, mtime, build-id), with a "
                         "warning; a file the process has mapped (or its executable) is taken only when its size "
                         "and build-id are the image's, another mtime aside")


def _lower_limits_flag(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--allow-lower-limits", action="store_true",
                    help="a hard resource limit of the image that this restorer cannot raise (it needs "
                         "CAP_SYS_RESOURCE) is set to the restorer's, with a warning, instead of failing the restore")


def _sign_key_flag(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--sign-key", metavar="FILE",
                    help="sign the image with this Ed25519 private key (`ckpt keygen`; mode 600): "
                         "`restore --verify-key` then refuses it if anything in it changed")


def _encrypt_key_flag(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--encrypt-key", metavar="FILE",
                    help="images are encrypted at rest with this key (`ckpt keygen --encryption FILE`; mode 600): "
                         "the images written are sealed with it, the images read must be")


def _encryption(args: argparse.Namespace) -> AbstractContextManager[None]:
    """The images this command writes are sealed, and those it reads opened, with ``--encrypt-key`` (loaded now)."""
    from .image import sealing

    path = getattr(args, "encrypt_key", None)
    return sealing.encrypting(sealing.load_key(path) if path else None)


def _fsync_policy(args: argparse.Namespace) -> AbstractContextManager[None]:
    """The images this command writes are synced as ``--fsync`` says (ckpt.image.store.fsync_wanted)."""
    from .image.store import fsync_policy

    return fsync_policy(getattr(args, "fsync", None))


def _fsync_flag(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--fsync", choices=("never", "end", "always"), default=None,  # (store.FSYNC_POLICIES)
                    help="when the image is synced to disk: `end` (default) when the dump ends the process — its "
                         "only copy is then the image; `always`, also for -R, -s and pre-dumps; `never`")


def _verify_key_flag(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--verify-key", metavar="FILE",
                    help="refuse the image unless every image of its chain is signed with this key (the public "
                         "key `ckpt keygen` wrote, or the private one) and every file is as signed (read in full)")


def _tls_flags(sp: argparse.ArgumentParser, *, source: bool) -> None:
    """CRIU's TLS flags (ckpt/migrate/tls.py); without the file flags, CRIU's default paths."""
    sp.add_argument("--tls", action="store_true",
                    help="TLS 1.3 with a certificate on each side, both checked against --tls-cacert "
                         "(and the token still); the other side needs --tls too")
    sp.add_argument("--tls-cacert", metavar="FILE", help="the CA certificate the peer's must chain to "
                    "(default /etc/pki/CA/cacert.pem)")
    sp.add_argument("--tls-cert", metavar="FILE", help="this host's certificate (default /etc/pki/criu/cert.pem)")
    sp.add_argument("--tls-key", metavar="FILE",
                    help="its private key, mode 600 (default /etc/pki/criu/private/key.pem)")
    if source:
        sp.add_argument("--tls-no-cn-verify", action="store_true",
                        help="do not require the destination's certificate to name the address of --to")


def _tls_config(args: argparse.Namespace, *, server_side: bool) -> TlsConfig | None:
    """The TLS of --tls and its files (their checks: before anything else is done), or None."""
    files = [f"--{n.replace('_', '-')}" for n in ("tls_cacert", "tls_cert", "tls_key", "tls_no_cn_verify")
             if getattr(args, n, None)]
    if not args.tls:
        if files:
            raise UsageError(f"{', '.join(files)} without --tls: give --tls to run the migration in TLS")
        return None
    from .migrate import tls

    return tls.load(server_side=server_side, cacert=args.tls_cacert, cert=args.tls_cert, key=args.tls_key,
                    check_hostname=not getattr(args, "tls_no_cn_verify", False))


def _cpu_cap_flag(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--cpu-cap", type=_cpu_cap, nargs="?", const="", default=None, metavar="CAP[,CAP...]",
                    help="the checks that refuse a process from another CPU, as CRIU names them: fpu (vector state: "
                         "XCR0, xstate size), ins (instruction features), cpu (every feature bit equal), all (what "
                         "--cpu-cap alone means), none (no check: unsafe, see the README). Default fpu,ins; "
                         "^CAP removes one check from it")


def _cmd_restore(args: argparse.Namespace) -> int:
    from . import api

    stats_out = _json_stats_file(args)
    verify_key = None
    if args.verify_key:  # checked before anything is created; it lifts the refusal of another user's image
        from .image import signing

        verify_key = signing.load_verify_key(args.verify_key)
    bar = progress_for(sys.stderr, "restore: write")
    try:
        stats = api.restore(args.images_dir, detached=args.restore_detached, pidfile=args.pidfile,
                            shell_job=args.shell_job, inherit_fds=args.inherit_fd, progress=_logged(bar),
                            allow_changed_files=args.allow_changed_files, cpu_cap=args.cpu_cap,
                            check=args.check == "on", allow_lower_limits=args.allow_lower_limits,
                            verify_key=verify_key)
    finally:
        if bar is not None:
            bar.close()
    _warn_notes(stats.notes)
    _write_json_stats(stats_out, stats)
    if args.restore_detached:
        return 0
    # Like CRIU without -d: stay the parent and report how the process ended.
    return api.wait_restored(stats.pid)


def _host_port(option: str, text: str, *, any_port: bool = False) -> tuple[str, int]:
    """ADDR:PORT of ``option`` (an IPv6 address in brackets: [::1]:PORT); ``any_port`` allows port 0.

    Checked in the command rather than by argparse, so a mistake is one line (no usage text).
    """
    host, sep, port = text.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isascii() or not port.isdigit():
        raise UsageError(f"{option} {text!r}: not ADDR:PORT (e.g. 127.0.0.1:7070, [::1]:7070)")
    if not (0 if any_port else 1) <= int(port) <= 65535:
        raise UsageError(f"{option} {text!r}: the port must be {0 if any_port else 1}-65535")
    return host, int(port)


def _cmd_migrate(args: argparse.Namespace) -> int:
    from . import api
    from .migrate.source import migrate
    from .migrate.wire import load_token
    from .tolerance import parse as parse_tolerate

    if args.recover:
        return _recover(args)
    if args.outcome:
        raise UsageError("--outcome goes with --recover")
    for flag, value in (("--to", args.to), ("--token-file", args.token_file)):
        if not value:
            raise UsageError(f"ckpt migrate needs {flag}")
    tolerated = parse_tolerate(args.tolerate, "dump")
    tls = _tls_config(args, server_side=False)
    api.check_process(args.tree)
    stats_out = _json_stats_file(args)
    host, port = _host_port("--to", args.to)
    token = load_token(args.token_file)
    tty = sys.stderr.isatty()

    def on_round(r: object) -> None:
        line = (f"round {r.index}: {r.pages} pages, {r.bytes_sent / 1e6:.1f} MB sent in {r.seconds * 1e3:.0f} ms, "  # type: ignore[attr-defined]
                f"dirty {r.dirty_rate_mb_s:.1f} MB/s, predicted downtime {r.predicted_downtime_ms:.0f} ms")  # type: ignore[attr-defined]
        if tty or args.verbose or args.verbosity >= 3:
            print(line, file=sys.stderr, flush=True)
        log.debug("%s", line)

    with _signer(args):  # every image it sends is signed (receive --verify-key)
        stats = migrate(args.tree, host, port, token, max_downtime=args.max_downtime / 1e3,
                        max_iterations=args.max_iterations,
                        bandwidth_limit=args.bandwidth_limit * 1e6 if args.bandwidth_limit else None,
                        dry_run=args.dry_run, track=args.track, stop_and_copy=args.stop_and_copy,
                        timeout=args.timeout, tcp_close=args.tcp_close, tcp_established=args.tcp_established,
                        action_script=args.action_script, tolerate=tolerated, on_round=on_round, tls=tls)
    if args.dry_run:
        print(f"dry run: {stats.iterations} rounds, {stats.bytes_sent / 1e6:.1f} MB sent; switch-over now: "
              f"predicted downtime {stats.predicted_downtime_ms:.0f} ms ({stats.reason}); the process runs on here")
    else:
        print(f"migrated pid {args.tree} to {stats.destination} (pid {stats.dest_pid} there): downtime "
              f"{stats.downtime_ms:.0f} ms (predicted {stats.predicted_downtime_ms:.0f}), {stats.iterations} rounds, "
              f"{stats.bytes_sent / 1e6:.1f} MB sent, total {stats.total_ms / 1e3:.2f} s")
    _warn_notes(stats.notes)
    _write_json_stats(stats_out, stats)
    return 0


def _recover(args: argparse.Namespace) -> int:
    """``migrate --recover``: a switch-over left in doubt is finished one way or the other (migrate/journal.py)."""
    from .migrate.source import recover
    from .migrate.wire import load_token

    tls = _tls_config(args, server_side=False)
    token = load_token(args.token_file) if args.token_file else None
    to = _host_port("--to", args.to) if args.to else None
    known = {"running": "running", "not-running": "not running", None: None}[args.outcome]
    r = recover(args.tree, token, to=to, known=known, timeout=args.timeout, tls=tls)
    if r.outcome == "gone":
        print(f"pid {args.tree}: no process the migration held is left; its record is removed")
    elif r.outcome == "running":
        print(f"migration {r.migration}: the destination runs pid {args.tree}; ended the original "
              f"({', '.join(map(str, r.ended))})")
    else:
        print(f"migration {r.migration}: the destination does not run pid {args.tree}; resumed the original "
              f"({', '.join(map(str, r.resumed))})")
    return 0


def _receive_outcome(args: argparse.Namespace) -> int:
    """``receive --outcome ID``: what this directory's journal says of a migration (for ``migrate --recover``)."""
    from .migrate import journal

    if not journal.valid_id(args.outcome):
        raise UsageError(f"--outcome {args.outcome!r}: a migration id is 32 hex digits (the source's error names it)")
    state, _ = journal.outcome(args.images_dir, args.outcome)
    print(state)
    if state in ("running", "not running"):
        print(f"on the source: ckpt migrate --recover -t PID --outcome {state.replace(' ', '-')}", file=sys.stderr)
        return 0
    return 1


def _cmd_receive(args: argparse.Namespace) -> int:
    from .image.dirs import check_dir_to_write
    from .migrate.dest import open_listener, serve_on
    from .migrate.peers import parse_allow
    from .migrate.wire import load_token, save_token

    if args.outcome:
        return _receive_outcome(args)
    host, port = _host_port("--listen", args.listen, any_port=True)
    tls = _tls_config(args, server_side=True)
    allow = parse_allow(args.allow) if args.allow is not None else None
    token = load_token(args.token_file) if args.token_file else None
    verify_key = None
    if args.verify_key:
        from .image import signing

        verify_key = signing.load_verify_key(args.verify_key)
    stats_out = _json_stats_file(args)
    check_dir_to_write(args.images_dir)
    # Listening comes first: an address that cannot be used is refused before any file is written.
    with open_listener(host, port) as listener:
        os.makedirs(args.images_dir, mode=0o700, exist_ok=True)
        if token is None:  # a fresh token for this run, in a file only we can read: copy it to the source
            path = os.path.join(args.images_dir, f"migrate-{os.getpid()}.token")
            token = save_token(path)
            print(f"token written to {path}: give it to `ckpt migrate --token-file`", file=sys.stderr)

        def say(msg: str) -> None:
            print(msg, file=sys.stderr, flush=True)

        where = listener.getsockname()
        say(f"listening on {where[0]}:{where[1]}")
        results = serve_on(listener, args.images_dir, token, once=args.once, on_event=say, cpu_cap=args.cpu_cap,
                           allow_changed_files=args.allow_changed_files,
                           allow_lower_limits=args.allow_lower_limits, verify_key=verify_key, tls=tls, allow=allow)
    last = results[-1] if results else None
    if last is not None:
        _write_json_stats(stats_out, last)
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
    notes: list[str] = []
    samples = api.watch(args.tree, interval=args.interval, count=args.count, ranges=ranges, exclude=exclude,
                        method=args.track, notes=notes)
    with contextlib.closing(samples):  # tracking leaves the target on every way out, Ctrl-C included
        try:
            for s in samples:
                _warn_notes(notes)  # filled before the first sample
                notes.clear()
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
    notes: list[str] = []
    state = api.track_start(args.tree, method=args.track, ranges=ranges, exclude=exclude, notes=notes)
    _warn_notes(notes)
    where = {"uffd-wp": f"userfaultfd parked at fd {state.parked_fd}",
             "soft-dirty": "bits in its page tables"}.get(state.method, state.digests_path)
    print(f"tracking process {args.tree} with {state.method} ({where}); state in {api.tracking_state_path(args.tree)}")
    return 0


def _tolerate_flag(sp: argparse.ArgumentParser, side: str) -> None:
    from .tolerance import TABLE

    names = ", ".join(n for n, t in TABLE.items() if t.side == side)
    sp.add_argument("--tolerate", action="append", default=[], metavar="NAME[,NAME]",
                    help=f"let the {side} lose what the kernel cannot put back, with a note, instead of refusing: "
                         f"{names} (README: the tolerance table)")


def _delta_flags(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--prev-images-dir", metavar="PARENT", help="image to take a delta against (its tracking is taken over)")
    sp.add_argument("--incremental", action="store_true",
                    help="-D is a store of numbered checkpoints: create N+1 with parent N (first: all pages)")
    sp.add_argument("--track", choices=("uffd-wp", "soft-dirty", "hash"), help="tracking method (default: best here)")


def _cmd_pre_dump(args: argparse.Namespace) -> int:
    with _signer(args):
        return _pre_dump(args)


def _cmd_keygen(args: argparse.Namespace) -> int:
    from .image import sealing, signing

    if args.encryption:
        path = sealing.generate_key_file(args.key)
        key = sealing.load_key(path)
        print(f"encryption key {path} (mode 600, key id {key.key_id.hex()}): give it to --encrypt-key of dump, "
              f"restore, show, verify, merge; whoever reads it can read the images")
        return 0
    private, public = signing.generate(args.key)
    print(f"private key {private} (mode 600: keep it where dumps are made), public key {public} "
          f"(give it to `restore --verify-key`)")
    return 0


def _pre_dump(args: argparse.Namespace) -> int:
    from . import api
    from .incremental import format_ranges
    from .track.base import RangeSpec, parse_ranges

    level = None if args.no_compress else args.compress
    stats_out = _json_stats_file(args)
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
    _write_json_stats(stats_out, s)
    return 0


def _cmd_merge(args: argparse.Namespace) -> int:
    from . import api

    _check_signed(args, args.images_dir)
    with _signer(args):
        m = api.merge(args.images_dir, args.output)
    print(f"merged {len(m.images)} image(s) into {m.out_dir}: {m.pages_stored} pages, {m.pages_zero} zero")
    return 0


def _common_options(p: argparse.ArgumentParser, *, sub: bool, log_short: bool = True) -> None:
    """Options every command takes, before or after its name (a subcommand's only override when given).

    ``-v``/``-vN``/``--verbosity[=N]`` (CRIU's levels) are taken out of the
    line before parsing (see :func:`_take_verbosity`); they are listed here for --help.
    """
    default = argparse.SUPPRESS if sub else None
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS if sub else False,
                   help="show a traceback on internal errors")
    p.add_argument(*(("-o", "--log-file") if log_short else ("--log-file",)), dest="log_file", metavar="FILE",
                   default=default, help="write a log of what ckpt does to FILE (mode 0600; everything unless -vN "
                                         "says less), e.g. for a bug report")
    p.add_argument("-v", dest="verbosity_help", action="store_true", default=argparse.SUPPRESS,
                   help="-v, -vv, -vN (0-4), --verbosity=N: more output on stderr (CRIU's levels: 0 none, "
                        "1 errors, 2 warnings (default), 3 info, 4 debug)")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="ckpt",
        description="Incremental checkpoint/restore of Linux processes.",
    )
    p.add_argument("--version", action="version", version=f"ckpt {__version__}")
    _common_options(p, sub=False)
    p.set_defaults(verbosity=_DEFAULT_VERBOSITY, verbosity_given=False)
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    def add(name: str, fn: Callable[[argparse.Namespace], int], help_: str, *,
            log_short: bool = True) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help_, description=help_)
        sp.set_defaults(func=fn)
        _common_options(sp, sub=True, log_short=log_short)
        return sp

    sp = add("migrate", _cmd_migrate, "move a running process to a `ckpt receive` elsewhere, with pre-copy rounds")
    sp.add_argument("-t", "--tree", type=int, required=True, metavar="PID", help="the process")
    sp.add_argument("--to", metavar="ADDR:PORT", help="where `ckpt receive` listens")
    sp.add_argument("--token-file", metavar="F", help="the shared token (both peers prove they know it)")
    sp.add_argument("--recover", action="store_true",
                    help="finish a switch-over left in doubt: ask the receiver whether it runs the process, then "
                         "end (it does) or resume (it does not) the original held stopped here")
    sp.add_argument("--outcome", choices=("running", "not-running"),
                    help="with --recover: the answer, when the receiver cannot be asked (`ckpt receive --outcome ID`)")
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
    _tolerate_flag(sp, "dump")
    sp.add_argument("--action-script", metavar="SCRIPT",
                    help="run SCRIPT with CKPT_SCRIPT_ACTION=post-migrate once the destination runs the process, "
                         "before the source ends it (e.g. to move a service address there)")
    sp.add_argument("--verbose", action="store_true", help="a line per round even when not on a terminal (as -v)")
    _sign_key_flag(sp)
    _encrypt_key_flag(sp)
    sp.add_argument("-l", "--file-locks", action="store_true",
                    help="accepted as CRIU spells it, and changes nothing: file locks are always migrated when they can be "
                         "restored exactly (a lock that cannot be is refused, naming it)")
    sp.add_argument("--json-stats", metavar="FILE", help="write downtime, rounds and bytes as JSON")
    _tls_flags(sp, source=True)

    sp = add("receive", _cmd_receive, "accept migrations (`ckpt migrate`) and restore them here")
    sp.add_argument("--listen", default="127.0.0.1:7070", metavar="ADDR:PORT",
                    help="where to listen (default 127.0.0.1:7070, loopback only; port 0: any free one)")
    sp.add_argument("-D", "--images-dir", required=True, metavar="DIR", help="where received images are kept")
    sp.add_argument("--token-file", metavar="F", help="the shared token (default: a new one, written to DIR)")
    sp.add_argument("--once", action="store_true",
                    help="exit after one migration (from a source that authenticated: strangers do not count)")
    sp.add_argument("--outcome", metavar="ID",
                    help="print what became of migration ID (from DIR's journal) and exit: running, not running, "
                         "in progress or unknown (for `ckpt migrate --recover --outcome`)")
    _verify_key_flag(sp)
    _encrypt_key_flag(sp)
    _allow_changed_flag(sp)
    _lower_limits_flag(sp)
    _cpu_cap_flag(sp)
    sp.add_argument("--json-stats", metavar="FILE", help="write the last migration's result as JSON")
    _tls_flags(sp, source=False)
    sp.add_argument("--allow", metavar="CIDR[,CIDR…]",
                    help="accept sources from these addresses only (e.g. 10.0.0.0/8,192.0.2.7); "
                         "others are closed at once, and logged")

    sp = add("check", _cmd_check, "probe every kernel facility ckpt relies on, by trying it")
    sp.add_argument("--json", action="store_true", help="print the report as JSON")

    sp = add("show", _cmd_show, "decode every file of an image directory (like crit show)")
    sp.add_argument("dir", metavar="DIR", nargs="?", help="image directory, or a store (its newest image)")
    sp.add_argument("-D", "--images-dir", metavar="DIR", help="the same, as restore and merge take it")
    sp.add_argument("--json", action="store_true", help="print JSON instead of text")
    _encrypt_key_flag(sp)

    sp = add("verify", _cmd_verify, "check every file of an image and its whole parent chain")
    sp.add_argument("dir", metavar="DIR", nargs="?", help="image directory, or a store (its newest image)")
    sp.add_argument("-D", "--images-dir", metavar="DIR", help="the same, as restore and merge take it")
    _verify_key_flag(sp)
    _encrypt_key_flag(sp)

    sp = add("keygen", _cmd_keygen, "make an Ed25519 key pair to sign images with (dump --sign-key) and check them, "
                                    "or (--encryption) a key to encrypt images with (--encrypt-key)")
    sp.add_argument("key", metavar="FILE",
                    help="the private key (mode 600); the public key goes to FILE.pub; neither may exist")
    sp.add_argument("--encryption", action="store_true",
                    help="make a key to encrypt images with (--encrypt-key) instead: 32 random bytes in FILE, mode 600")

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
    _fsync_flag(sp)
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
    _tolerate_flag(sp, "dump")
    _sign_key_flag(sp)
    _encrypt_key_flag(sp)
    sp.add_argument("--deleted-max", "--ghost-limit", type=_size, default=None, metavar="SIZE",
                    help="most data of a deleted file still open or mapped that is saved (its data ranges: holes "
                         "do not count), in bytes or with K/M/G (default 64M); a file with more makes the dump "
                         "fail, naming it (--ghost-limit: CRIU's name)")
    sp.add_argument("-l", "--file-locks", action="store_true",
                    help="accepted as CRIU spells it, and changes nothing: file locks and leases are always dumped when they "
                         "can be restored exactly (one that cannot be is refused, naming the process, fd and lock)")
    sp.add_argument("--json-stats", metavar="FILE", help="write timings and counts as JSON")

    sp = add("restore", _cmd_restore, "recreate a process from an image directory, with its pid")
    sp.add_argument("-D", "--images-dir", required=True, metavar="DIR", help="image directory (newest of a chain)")
    sp.add_argument("-d", "--restore-detached", action="store_true",
                    help="detach once restored (default: wait and exit with the process's status)")
    sp.add_argument("--pidfile", metavar="FILE", help="write the restored process's pid here")
    sp.add_argument("--shell-job", action="store_true", help="re-attach terminal fds to this terminal")
    _allow_changed_flag(sp)
    sp.add_argument("--inherit-fd", action="append", default=[], metavar="fd[N]:RES",
                    help="give the restored process our fd N in place of RES, an fd that pointed outside "
                         "the image: its description as `ckpt show` prints it (e.g. pipe:[12345]) or its "
                         "fd number in the image; may be repeated")
    sp.add_argument("-l", "--file-locks", action="store_true",
                    help="accepted as CRIU spells it, and changes nothing: the locks an image holds are always taken again")
    _cpu_cap_flag(sp)
    _lower_limits_flag(sp)
    _verify_key_flag(sp)
    _encrypt_key_flag(sp)
    sp.add_argument("--check", choices=("on", "off"), default="on",
                    help="compare the kernel's account of each restored process (procfs status, limits, fdinfo, "
                         "mappings ...) with the dump's before it runs, and fail on a difference (default on)")
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
    _fsync_flag(sp)
    _sign_key_flag(sp)
    _encrypt_key_flag(sp)
    sp.add_argument("--json-stats", metavar="FILE", help="write timings and counts as JSON")

    sp = add("merge", _cmd_merge, "squash an image chain (base + deltas) into one standalone image", log_short=False)
    sp.add_argument("-D", "--images-dir", required=True, metavar="DIR", help="newest image of the chain (or a store)")
    sp.add_argument("-o", "--output", required=True, metavar="OUT",
                    help="image directory to create (here -o is the output, as before; the log is --log-file)")
    _verify_key_flag(sp)
    _sign_key_flag(sp)
    _encrypt_key_flag(sp)

    add("demo", _cmd_demo, "a short real session with a sample process (what `make demo` runs)")

    return p


def _take_verbosity(argv: Sequence[str]) -> tuple[int | None, list[str]]:
    """(the verbosity CRIU's way — ``-v`` and ``-vv`` add to the default 2, ``-vN`` and ``--verbosity=N``
    set it, anywhere on the line — or None when not given, the rest of the line)."""
    level: int | None = None
    rest: list[str] = []
    for i, arg in enumerate(argv):
        if arg == "--":
            rest.extend(argv[i:])
            break
        m = _VERBOSITY.fullmatch(arg)
        if m is None:
            rest.append(arg)
            continue
        vs, num, long_num = m.groups()
        if num or long_num is not None:
            level = int(num or long_num)
        else:
            level = (_DEFAULT_VERBOSITY if level is None else level) + (len(vs) if vs else 1)
    return (None if level is None else min(level, max(_LEVELS))), rest


class _ConsoleFormat(logging.Formatter):
    """stderr: a warning as ckpt always printed notes; -v3/-v4 lines with seconds since the start (as CRIU)."""

    def format(self, record: logging.LogRecord) -> str:
        if record.levelno >= logging.WARNING:
            return f"ckpt: warning: {record.getMessage()}"
        return f"ckpt: ({record.relativeCreated / 1e3:8.3f}) {record.getMessage()}"


def _start_logging(verbosity: int, explicit: bool, log_file: str | None) -> list[logging.Handler]:
    """Handlers of the "ckpt" logger for this run: stderr at the -v level, and ``-o FILE`` (0600).

    The file gets everything (debug) unless -vN was given.  Errors are printed by
    :func:`main` itself (the one-line contract) and go to the file only.
    """
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(_LEVELS[verbosity])
    console.setFormatter(_ConsoleFormat())
    console.addFilter(lambda record: record.levelno < logging.ERROR)
    handlers: list[logging.Handler] = [console]
    if log_file:
        try:
            fd = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise UsageError(f"--log-file {log_file}: cannot write the log: {describe_oserror(exc)}") from exc
        if os.fstat(fd).st_uid == os.geteuid():
            os.fchmod(fd, 0o600)  # an existing file too: a log names addresses, files, peers
        to_file = logging.StreamHandler(os.fdopen(fd, "w", buffering=1))
        to_file.setLevel(_LEVELS[verbosity] if explicit else logging.DEBUG)
        to_file.setFormatter(logging.Formatter("%(asctime)s (%(relativeCreated)10.3f ms) %(levelname)-7s "
                                               "%(name)s: %(message)s"))
        handlers.append(to_file)
    for h in handlers:
        log.addHandler(h)
    log.setLevel(min(h.level for h in handlers))
    log.propagate = False
    return handlers


def _stop_logging(handlers: Sequence[logging.Handler]) -> None:
    for h in handlers:
        log.removeHandler(h)
        h.close()
    log.setLevel(logging.NOTSET)
    log.propagate = True


def _report(e: CkptError, exc: BaseException | None = None) -> int:
    """Print ``ckpt: message`` (and the hint), log it with its traceback, and return its exit code."""
    print(f"ckpt: {e}", file=sys.stderr)
    if e.hint:
        print(f"hint: {e.hint}", file=sys.stderr)
    log.error("%s%s (exit %d)", e, f" [hint: {e.hint}]" if e.hint else "", e.exit_code, exc_info=exc or e)
    return e.exit_code


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ckpt`` console script; returns the exit code."""
    parser = build_parser()
    line = list(sys.argv[1:] if argv is None else argv)
    verbosity, rest = _take_verbosity(line)
    args = parser.parse_args(rest)
    args.verbosity = _DEFAULT_VERBOSITY if verbosity is None else verbosity
    found = _signals_found()
    try:
        return _run(args, line, verbosity)
    finally:
        _put_back(found)  # an in-process caller (a test, a tool importing ckpt) gets its signals back as they were


def _run(args: argparse.Namespace, line: list[str], verbosity: int | None) -> int:
    # ckpt waits for the children it makes (a restore's root, helpers): an ignored SIGCHLD inherited
    # across exec would have the kernel reap them first.
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    try:
        handlers = _start_logging(args.verbosity, verbosity is not None, args.log_file)
    except CkptError as e:
        return _report(e)
    log.info("ckpt %s, Linux %s (%s), pid %d, euid %d: ckpt %s", __version__, os.uname().release,
             os.uname().machine, os.getpid(), os.geteuid(), " ".join(line))
    t0 = time.monotonic()
    for signo in (*_ENDING_SIGNALS, signal.SIGINT):  # until here their default action ends ckpt: nothing to undo
        signal.signal(signo, _end)
    try:
        with _encryption(args), _fsync_policy(args):
            code = int(args.func(args) or 0)
        log.info("exit %d after %.3f s", code, time.monotonic() - t0)
        return code
    except CkptError as e:
        return _report(e)
    except _Ended as e:
        _quiet_signals()
        log.error("ended by signal %d", e.signo, exc_info=True)
        if e.signo != signal.SIGPIPE:  # with no reader left, saying so would only fail again
            print(f"ckpt: ended by {signal.Signals(e.signo).name}", file=sys.stderr)
        return 128 + e.signo
    except KeyboardInterrupt:
        _quiet_signals()
        print("ckpt: interrupted", file=sys.stderr)
        log.error("interrupted", exc_info=True)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # No reader left on stdout (`ckpt show DIR | head`, a dead `tee`): ended as by its SIGPIPE, silently.
        return _lost_pipe()
    except OSError as e:
        # An environment problem (permissions, full disk) outside the translated paths: a sentence.
        code = _report(describe_oserror(e), e)
        if args.debug:
            traceback.print_exc()
        return code
    except Exception as e:  # a bug in ckpt: one line, traceback on request
        print(f"ckpt: internal error: {type(e).__name__}: {e}", file=sys.stderr)
        log.error("internal error", exc_info=True)
        if args.debug:
            traceback.print_exc()
        else:
            print("hint: re-run with --debug for the traceback, and report it", file=sys.stderr)
        return EXIT_FAILURE
    finally:
        _stop_logging(handlers)


_OWN_SIGNALS = (*_ENDING_SIGNALS, signal.SIGINT, signal.SIGCHLD)


def _signals_found() -> dict[int, object]:
    """The dispositions ckpt changes, as the caller had them."""
    return {signo: signal.getsignal(signo) for signo in _OWN_SIGNALS}


def _put_back(found: dict[int, object]) -> None:
    for signo, handler in found.items():
        if handler is not None:  # None: set outside Python, cannot be put back from here
            signal.signal(signo, handler)


def _lost_pipe() -> int:
    """Exit status after EPIPE on our output (the SIGPIPE that came with it is dropped by :func:`_end`)."""
    _quiet_signals()
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # the interpreter's last flush must not fail again
        os.close(devnull)
    except (OSError, ValueError):
        pass
    return 128 + signal.SIGPIPE


def _quiet_signals() -> None:
    """Once ending, a second signal must not cut the way out short (its message, the exit)."""
    for signo in (*_ENDING_SIGNALS, signal.SIGINT):
        signal.signal(signo, signal.SIG_IGN)


if __name__ == "__main__":
    sys.exit(main())
