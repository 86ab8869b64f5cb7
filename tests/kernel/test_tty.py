"""Pty pairs in this process: a pair's queues read and put back exactly (ckpt/resources/tty.py), in canonical
and raw mode, and what is refused.  Each case fills a pair, reads its state as a dump does, then checks that
the same pair — and a new pair given that state, as a restore does — reads back byte for byte."""

from __future__ import annotations

import os
import select
import termios

import pytest

from ckpt.errors import Unsupported
from ckpt.image.pb import files_pb2
from ckpt.kernel import tty as kt
from ckpt.resources import tty


def _pair() -> tuple[int, int]:
    return os.openpty()


def _reads(fd: int) -> list[bytes]:
    """Every read() the slave gives now (one per line in canonical mode)."""
    out = []
    p = select.poll()
    p.register(fd, select.POLLIN)
    while p.poll(0):
        out.append(os.read(fd, 4096))
    return out


def _typed(fd: int) -> bytes:
    """The line being typed (ICANON off for a moment, as the dump does)."""
    t = termios.tcgetattr(fd)
    raw = list(t)
    raw[3] &= ~termios.ICANON
    raw[6] = list(raw[6])
    raw[6][termios.VMIN], raw[6][termios.VTIME] = 1, 0
    termios.tcsetattr(fd, termios.TCSANOW, raw)
    try:
        return b"".join(_reads(fd))
    finally:
        termios.tcsetattr(fd, termios.TCSANOW, t)


def _master_bytes(fd: int) -> bytes:
    return b"".join(_reads(fd))


def _state(m: int, s: int) -> files_pb2.PtyPair:
    pair = files_pb2.PtyPair()
    tty._read_pair(m, s, pair, "the test pair")
    return pair


def _restored(pair: files_pb2.PtyPair) -> tty.PtyPairs:
    pp = tty.PtyPairs([files_pb2.FileEntry(id=1, kind=files_pb2.FileEntry.CHR,
                                           pty=files_pb2.Pty(index=0, master=True, pair=pair))])
    pp._pair(0)
    return pp


def _closing(*fds: int) -> None:
    for fd in fds:
        os.close(fd)


@pytest.mark.parametrize("veol", [0, ord("@")], ids=["no-VEOL", "VEOL"])
def test_canonical_lines_and_the_typed_line_come_back(veol: int) -> None:
    m, s = _pair()
    try:
        t = termios.tcgetattr(s)
        t[6][termios.VEOL] = veol
        termios.tcsetattr(s, termios.TCSANOW, t)
        # a \n line, a VEOL line (or plain bytes), an EOF-ended line, an empty EOF line, a literal \n (LNEXT), typing
        os.write(m, b"one\ntwo@x\x04\x04a\x16\nb\nhal")
        os.write(s, b"to master\n")
        lines = [(b"one\n", False), *([(b"two@", False), (b"x", True)] if veol else [(b"two@x", True)]),
                 (b"", True), (b"a\nb\n", False)]
        want_lines = [d for d, _ in lines]
        pair = _state(m, s)
        assert [(i.data, i.eof) for i in pair.input] == lines
        assert pair.partial == b"hal"
        out = pair.output
        assert b"to master\r\n" in out and b"one\r\n" in out  # the write and the echo (in the order they came)
        # put back into the same pair (a dump), and given to a new one (a restore): read alike
        assert _reads(s) == want_lines and _typed(s) == b"hal" and _master_bytes(m) == out
        pp = _restored(pair)
        try:
            made = pp.made[0]
            assert _reads(made.slave) == want_lines and _typed(made.slave) == b"hal"
            assert _master_bytes(made.master) == out
            assert termios.tcgetattr(made.slave) == termios.tcgetattr(s)
        finally:
            pp.close()
    finally:
        _closing(m, s)


def test_raw_bytes_every_value_and_settings_come_back() -> None:
    m, s = _pair()
    try:
        t = termios.tcgetattr(s)
        t[0] = t[1] = t[3] = 0  # raw: no translation, no processing, no echo, no signals
        t[6][termios.VMIN], t[6][termios.VTIME] = 4, 2
        termios.tcsetattr(s, termios.TCSANOW, t)
        kt.set_winsize(s, kt.winsize(40, 120, 3, 4))
        data = bytes(range(256))
        os.write(m, data)
        os.write(s, data[::-1])
        pair = _state(m, s)
        assert [i.data for i in pair.input] == [data] and pair.output == data[::-1] and not pair.partial
        assert (pair.winsize.row, pair.winsize.col, pair.winsize.xpixel, pair.winsize.ypixel) == (40, 120, 3, 4)
        pp = _restored(pair)
        try:
            made = pp.made[0]
            got = kt.tcgets2(made.slave)
            assert bytes(got.c_cc) == bytes(kt.tcgets2(s).c_cc) and got.c_lflag == kt.tcgets2(s).c_lflag
            w = kt.get_winsize(made.master)
            assert (w.ws_row, w.ws_col, w.ws_xpixel, w.ws_ypixel) == (40, 120, 3, 4)
            assert os.read(made.slave, 512) == data and _master_bytes(made.master) == data[::-1]
        finally:
            pp.close()
        assert os.read(s, 512) == data and _master_bytes(m) == data[::-1]  # and the original has them too
    finally:
        _closing(m, s)


def test_an_unread_packet_status_is_refused_and_the_queues_stay() -> None:
    m, s = _pair()
    try:
        kt.set_int(m, kt.TIOCPKT, 1, "TIOCPKT")
        t = termios.tcgetattr(s)
        t[0] &= ~termios.IXON  # flow control off: the master gets a TIOCPKT_NOSTOP status byte
        termios.tcsetattr(s, termios.TCSANOW, t)
        os.write(m, b"kept\n")
        with pytest.raises(Unsupported, match="packet-mode status byte"):
            _state(m, s)
        assert _reads(s) == [b"kept\n"]
        assert os.read(m, 16)[0] & 0x10  # TIOCPKT_NOSTOP, still there
    finally:
        _closing(m, s)


def test_stopped_output_is_refused() -> None:
    m, s = _pair()
    try:
        termios.tcflow(s, termios.TCOOFF)
        with pytest.raises(Unsupported, match="output is stopped"):
            _state(m, s)
        termios.tcflow(s, termios.TCOON)
    finally:
        _closing(m, s)


def test_a_free_index_is_taken_again() -> None:
    m, s = _pair()
    index = kt.get_int(m, kt.TIOCGPTN, "TIOCGPTN")
    pair = _state(m, s)
    _closing(m, s)
    pp = tty.PtyPairs([files_pb2.FileEntry(id=1, kind=files_pb2.FileEntry.CHR,
                                           pty=files_pb2.Pty(index=index + 3, master=True, pair=pair))])
    try:
        made = pp._pair(index + 3)  # free (unless another process took it meanwhile: then a note says so)
        assert made.index == index + 3 or any(f"is /dev/pts/{made.index} now" in n for n in pp.notes)
    finally:
        pp.close()
