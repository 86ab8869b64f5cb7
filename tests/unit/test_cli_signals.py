"""``ckpt.cli.main`` called in-process gives its caller's signal dispositions back, whichever way it ends.

ckpt sets SIGINT/SIGTERM/SIGHUP/SIGPIPE to its own handler while it runs, and to "ignored" once it is
ending (a second Ctrl-C must not cut the clean-up short); SIGCHLD to the default.  A tool or a test
that imports ckpt and calls ``main`` must not be left with Ctrl-C ignored afterwards, nor pass that
on to every child it starts.
"""
from __future__ import annotations

import signal
from collections.abc import Callable

import pytest

from ckpt import cli

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGPIPE, signal.SIGCHLD)


def _raise(exc: BaseException) -> Callable[..., int]:
    def cmd(_args: object) -> int:
        raise exc
    return cmd


@pytest.mark.parametrize("ending", [
    KeyboardInterrupt(),                      # Ctrl-C
    cli._Ended(signal.SIGTERM),               # kill, timeout
    BrokenPipeError(),                        # `ckpt show | head`
    RuntimeError("a bug"),                    # an internal error
    None,                                     # a plain success
])
def test_main_puts_the_signal_dispositions_back(monkeypatch: pytest.MonkeyPatch, tmp_path,
                                                 ending: BaseException | None) -> None:
    mine = lambda signo, frame: None  # noqa: E731 - a caller's own handler, distinct from any default
    before = {s: signal.getsignal(s) for s in SIGNALS}
    try:
        signal.signal(signal.SIGTERM, mine)
        signal.signal(signal.SIGCHLD, signal.SIG_IGN)
        found = {s: signal.getsignal(s) for s in SIGNALS}
        monkeypatch.setattr(cli, "_cmd_show", _raise(ending) if ending else (lambda _a: 0))
        monkeypatch.setattr(cli, "_lost_pipe", lambda: (cli._quiet_signals(), 141)[1])  # our stdout kept
        code = cli.main(["show", str(tmp_path)])
        assert (code == 0) == (ending is None)
        assert {s: signal.getsignal(s) for s in SIGNALS} == found
    finally:
        for s, h in before.items():
            signal.signal(s, h)
