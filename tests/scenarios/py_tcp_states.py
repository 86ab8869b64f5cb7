"""Holds TCP connections in the states a test put them in, and checks them itself after a restore.

argv: PATH of a unix stream socket the test listens on.  The scenario connects, receives the sockets
(SCM_RIGHTS) with a JSON list of what each must be: ``{"name", "state", "data", "eof", "write"}`` —
its TCP state name, the bytes queued to read (latin-1), whether EOF follows them (the peer's FIN or a
SHUT_RD), whether a write is accepted (``"ok"``) or fails with EPIPE (``"EPIPE"``); a bound socket never
connected has ``"local": [host, port]`` instead, its address; one the dump gives up (``--tcp-close``) has
``"reset": true``: after the restore it must answer as a connection its peer reset.  The test closes its
own copies; prints ``READY``.

Each SIGUSR1 is a round.  Round 1 (before the dump) only looks: state and queued bytes (MSG_PEEK).
Later rounds also act: read everything queued (the bytes, then EOF or nothing more), then, every
socket read, write ``after`` on each (it goes to the peer, or fails with EPIPE).  Prints ``PASS states round=N`` or
``FAIL name: what``.
"""

import errno
import json
import os
import signal
import socket
import sys

STATES = {1: "ESTABLISHED", 2: "SYN_SENT", 3: "SYN_RECV", 4: "FIN_WAIT1", 5: "FIN_WAIT2", 6: "TIME_WAIT",
          7: "CLOSE", 8: "CLOSE_WAIT", 9: "LAST_ACK", 10: "LISTEN", 11: "CLOSING"}


def state(s: socket.socket) -> str:
    return STATES.get(s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0], "?")


def check(s: socket.socket, spec: dict, act: bool) -> list[str]:
    name, want = spec["name"], spec["data"].encode("latin-1")
    bad = []
    if act and spec.get("reset"):  # given up by --tcp-close: a connection its peer reset
        return [f"{name}: {call}: {got}, want {expect}" for call, got, expect in reset_calls(s) if got != expect]
    if state(s) != spec["state"]:
        bad.append(f"{name}: state {state(s)}, want {spec['state']}")
    if "local" in spec:  # bound, never connected: its address is all there is
        if list(s.getsockname()[:2]) != spec["local"]:
            bad.append(f"{name}: bound to {s.getsockname()[:2]}, want {spec['local']}")
        return bad
    if want:
        got = s.recv(len(want) + 1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        if got != want:
            bad.append(f"{name}: queued {got!r}, want {want!r}")
    if not act or bad:
        return bad
    got = b""
    while len(got) < len(want):
        chunk = s.recv(len(want) - len(got), socket.MSG_DONTWAIT)
        if not chunk:
            break
        got += chunk
    if got != want:
        bad.append(f"{name}: read {got!r}, want {want!r}")
    try:
        more = s.recv(1, socket.MSG_DONTWAIT)
        seen = "EOF" if more == b"" else f"more bytes {more!r}"
    except BlockingIOError:
        seen = "nothing"
    if seen != ("EOF" if spec["eof"] else "nothing"):
        bad.append(f"{name}: after the queued bytes: {seen}, want {'EOF' if spec['eof'] else 'nothing'}")
    return bad


def reset_calls(s: socket.socket) -> list[tuple[str, str, str]]:
    """(call, what it gave, what a reset connection gives): ECONNRESET once, then EOF and EPIPE."""
    out = []
    for call, fn, expect in (("read", lambda: s.recv(10), "ECONNRESET"), ("read again", lambda: s.recv(10), "EOF"),
                             ("write", lambda: s.send(b"x"), "EPIPE")):
        try:
            got = "EOF" if fn() == b"" else "data"
        except OSError as exc:
            got = errno.errorcode.get(exc.errno, str(exc.errno))
        out.append((call, got, expect))
    return out


def write(s: socket.socket, spec: dict) -> list[str]:
    """Write ``after``: accepted, or EPIPE where the socket sent its FIN."""
    bad = []
    if "local" in spec or spec.get("reset"):
        return bad
    try:
        s.send(b"after", socket.MSG_DONTWAIT)
        wrote = "ok"
    except BrokenPipeError:
        wrote = "EPIPE"
    except OSError as exc:
        wrote = f"errno {exc.errno}"
    if wrote != spec["write"]:
        bad.append(f"{spec['name']}: write: {wrote}, want {spec['write']}")
    return bad


def main() -> int:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as ctl:
        ctl.connect(sys.argv[1])
        msg, fds, _, _ = socket.recv_fds(ctl, 1 << 16, 64)
    specs = json.loads(msg)
    socks = [socket.socket(fileno=fd) for fd in fds]
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
    print(f"READY pid={os.getpid()} n={len(socks)}", flush=True)
    n = 0
    while True:
        signal.sigwait({signal.SIGUSR1})
        n += 1
        bad = [b for s, spec in zip(socks, specs) for b in check(s, spec, act=n > 1)]
        if n > 1 and not bad:  # every socket read first: a write reaches the peer, which may be one of ours
            bad = [b for s, spec in zip(socks, specs) for b in write(s, spec)]
        print(f"FAIL {'; '.join(bad)}" if bad else f"PASS states round={n}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
