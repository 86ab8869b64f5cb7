"""Unix sockets in the less common states, each checked by the process itself after a restore.

usage: py_unix_details.py DIR [--ext=PATH] [--replaced] [--passcred=TYPE]

One process holds
  srv   a datagram socket bound at DIR/srv.sock;
  cli   a datagram socket bound at DIR/cli.sock *and* connected to srv; it sent b"cli->srv", and srv sent
        b"srv->cli" to it by name: one datagram waits on each;
  sq    a seqpacket socket bound at DIR/sq.sock, never connected nor listening;
  sq0   a seqpacket socket neither bound nor connected;
  again a datagram socket bound at DIR/gone.sock, where a socket was bound before and closed (its file
        removed);
  old   with --replaced, a datagram socket bound at DIR/re.sock whose file was then removed, and
  new   a datagram socket bound at DIR/re.sock since (``old`` still open: the kernel keeps its name);
  ext   with --ext=PATH, a datagram socket bound at DIR/ext.sock and connected to PATH (a socket of
        another process): a dump refuses it, or restores it with its peer closed (--ext-unix-close);
  cred  with --passcred=stream|dgram|seqpacket, a socketpair of that type whose receiving end has
        SO_PASSCRED set and a message queued from the other: a dump refuses it (the message's
        credentials would be ckpt's after a restore).
Prints "READY pid=P".  On SIGUSR1 it checks every name (getsockname/getpeername), reads the queued datagrams
with their senders, sends over each pair again, makes sq listen and sq0 connect to it, and prints
"PASS details round=N ext=open|refused|none" or "FAIL why; ...".  ``ext=refused``: a send on ext fails with
ECONNREFUSED (its peer is closed).
"""

import errno
import os
import select
import signal
import socket
import struct
import sys

DIR = sys.argv[1]
EXT = next((a.split("=", 1)[1] for a in sys.argv[2:] if a.startswith("--ext=")), None)
REPLACED = "--replaced" in sys.argv[2:]
PASSCRED = next((a.split("=", 1)[1] for a in sys.argv[2:] if a.startswith("--passcred=")), None)
TYPES = {"stream": socket.SOCK_STREAM, "dgram": socket.SOCK_DGRAM, "seqpacket": socket.SOCK_SEQPACKET}
SO_PASSCRED = 16
P = {n: os.path.join(DIR, f"{n}.sock") for n in ("srv", "cli", "sq", "re", "gone", "ext", "probe")}


def dgram(path: str | None = None) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if path is not None:
        s.bind(path)
    return s


def main() -> int:
    for p in P.values():
        if os.path.exists(p):
            os.unlink(p)
    srv = dgram(P["srv"])
    cli = dgram(P["cli"])
    cli.connect(P["srv"])
    cli.send(b"cli->srv")
    srv.sendto(b"srv->cli", P["cli"])
    sq = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    sq.bind(P["sq"])
    sq0 = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    old = new = None
    if REPLACED:
        old = dgram(P["re"])
        os.unlink(P["re"])
        new = dgram(P["re"])
    gone = dgram(P["gone"])
    gone.close()
    os.unlink(P["gone"])
    again = dgram(P["gone"])
    ext = None
    if EXT:
        ext = dgram(P["ext"])
        ext.connect(EXT)
    cred = None
    if PASSCRED:
        cred, sender = socket.socketpair(socket.AF_UNIX, TYPES[PASSCRED])
        cred.setsockopt(socket.SOL_SOCKET, SO_PASSCRED, 1)
        sender.send(b"with credentials")
    rounds = []
    signal.signal(signal.SIGUSR1, lambda *_: rounds.append(1))
    # Woken through a pipe, not pause(): a signal that comes as a restored process is let go, before its
    # interrupted call starts again, would otherwise find it back in pause() with its Python handler not run.
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_w)
    print(f"READY pid={os.getpid()}", flush=True)
    n = 0
    while True:
        while not rounds:
            select.select([wake_r], [], [])
            try:
                os.read(wake_r, 64)
            except BlockingIOError:
                pass
        rounds.pop()
        n += 1
        bad = []

        def want(what: str, got: object, expected: object) -> None:
            if got != expected:
                bad.append(f"{what}: want {expected!r} got {got!r}")

        for s in (srv, cli, sq, sq0, again, *(s for s in (old, new, ext) if s is not None)):
            s.setblocking(False)
        want("srv name", srv.getsockname(), P["srv"])
        want("cli name", cli.getsockname(), P["cli"])
        want("cli peer", cli.getpeername(), P["srv"])
        want("sq name", sq.getsockname(), P["sq"])
        want("sq0 name", sq0.getsockname(), "")
        for name, s in (("srv", srv), *((("sq", sq), ("sq0", sq0)) if n == 1 else ())):
            try:
                s.getpeername()
                bad.append(f"{name} has a peer")
            except OSError as exc:
                want(f"{name} getpeername", exc.errno, errno.ENOTCONN)
        if REPLACED:
            want("old name", old.getsockname(), P["re"])
            want("new name", new.getsockname(), P["re"])
        want("again name", again.getsockname(), P["gone"])
        if n == 1:
            try:
                want("srv's datagram", srv.recvfrom(100), (b"cli->srv", P["cli"]))
                want("cli's datagram", cli.recvfrom(100), (b"srv->cli", P["srv"]))
            except BlockingIOError:
                bad.append("a queued datagram is gone")
        for name, s in (("srv", srv), ("cli", cli)):
            try:
                bad.append(f"{name} has another datagram: {s.recv(100)!r}")
            except BlockingIOError:
                pass
        cli.send(b"again")
        srv.sendto(b"back", P["cli"])
        want("srv again", srv.recvfrom(100), (b"again", P["cli"]))
        want("cli again", cli.recvfrom(100), (b"back", P["srv"]))
        with dgram(P["probe"]) as probe:  # DIR/gone.sock (DIR/re.sock) reaches the live socket
            probe.sendto(b"to-gone", P["gone"])
            want("again got", again.recv(100), b"to-gone")
            if REPLACED:
                probe.sendto(b"to-re", P["re"])
                want("new got", new.recv(100), b"to-re")
                try:
                    bad.append(f"old got {old.recv(100)!r}")
                except BlockingIOError:
                    pass
        os.unlink(P["probe"])
        if n == 1:
            sq.listen(1)
            sq0.setblocking(True)
            sq0.connect(P["sq"])
            acc, _ = sq.accept()
            sq0.send(b"seq")
            want("seqpacket", acc.recv(100), b"seq")
            acc.close()
        if cred is not None and n == 1:
            data, anc, _, _ = cred.recvmsg(100, socket.CMSG_SPACE(12))
            want("cred message", data, b"with credentials")
            got = [struct.unpack("iII", d) for lv, k, d in anc if k == socket.SCM_CREDENTIALS]
            want("cred sender", got, [(os.getpid(), os.getuid(), os.getgid())])
        state = "none"
        if ext is not None:
            want("ext name", ext.getsockname(), P["ext"])
            try:
                ext.send(b"ext")
                state = "open"
            except OSError as exc:
                state = "refused" if exc.errno == errno.ECONNREFUSED else f"errno {exc.errno}"
        print(f"FAIL {'; '.join(bad)}" if bad else f"PASS details round={n} ext={state}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
