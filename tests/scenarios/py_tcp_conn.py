"""A TCP server with one established connection, driven by lines on stdin (tests/e2e/test_tcp_established.py).

argv: HOST (127.0.0.1 or ::1).  Prints ``READY port=P``, accepts one client
(``ACCEPTED``; the listener stays open, SO_REUSEADDR, and the connection is
made non-blocking), then runs one command per stdin line:

  BLAST N   write up to N bytes of the pattern without blocking, from where the
            last BLAST stopped; prints ``BLASTED n=<bytes written>``
  DRAIN M   read exactly M bytes from the client; prints ``DRAINED sha=<sha256>
            nonblock=<0|1>`` and sends ``GOT <sha256> <M>\\n`` to the client
  SERVE     answer each line from the client with ``echo <line>`` until ``BYE``;
            prints ``SERVED n=<lines>``

The pattern byte at stream offset k is k % 251, so the client can check every
byte it gets, wherever a restore happened.
"""

import fcntl
import hashlib
import os
import select
import socket
import sys

host = sys.argv[1]
family = socket.AF_INET6 if ":" in host else socket.AF_INET
lst = socket.socket(family, socket.SOCK_STREAM)
lst.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
lst.bind((host, 0))
lst.listen(4)
print(f"READY port={lst.getsockname()[1]}", flush=True)
conn, _ = lst.accept()
conn.setblocking(False)
print("ACCEPTED", flush=True)
PATTERN = bytes(range(251)) * 1024
offset = 0


def recv_some(n: int) -> bytes:
    select.select([conn], [], [], 30)
    try:
        data = conn.recv(n)
    except BlockingIOError:
        return b""
    if not data:
        print("FAIL the client closed the connection", flush=True)
        sys.exit(1)
    return data


def read_line(buf: bytearray) -> bytes:
    while b"\n" not in buf:
        buf += recv_some(4096)
    line, _, rest = bytes(buf).partition(b"\n")
    buf[:] = rest
    return line


pending = bytearray()
for raw in sys.stdin:
    cmd, *args = raw.split()
    if cmd == "BLAST":
        want, sent = int(args[0]), 0
        try:
            while sent < want:
                start = (offset + sent) % 251
                sent += conn.send(PATTERN[start:start + min(want - sent, 200_000)])
        except BlockingIOError:
            pass
        offset += sent
        print(f"BLASTED n={sent}", flush=True)
    elif cmd == "DRAIN":
        want = int(args[0])
        got = bytearray()
        while len(got) < want:
            got += recv_some(want - len(got))
        pending = got[want:]
        digest = hashlib.sha256(bytes(got[:want])).hexdigest()
        nonblock = int(bool(fcntl.fcntl(conn.fileno(), fcntl.F_GETFL) & os.O_NONBLOCK))
        print(f"DRAINED sha={digest} nonblock={nonblock}", flush=True)
        conn.setblocking(True)
        conn.sendall(f"GOT {digest} {want}\n".encode())
        conn.setblocking(False)
    elif cmd == "SERVE":
        n = 0
        while True:
            line = read_line(pending)
            if line == b"BYE":
                break
            conn.setblocking(True)
            conn.sendall(b"echo " + line + b"\n")
            conn.setblocking(False)
            n += 1
        print(f"SERVED n={n}", flush=True)
    else:
        print(f"FAIL unknown command {raw!r}", flush=True)
