"""Listeners with chosen backlogs, for the listen-backlog dump/restore tests.

usage: py_backlogs.py UNIX_NAME TCP4_BACKLOG TCP6_BACKLOG UNIX_BACKLOG [HOST4]
Listens on TCP HOST4 (default 127.0.0.1) and [::1] (SO_REUSEADDR; IPV6_V6ONLY; skipped when
::1 is not there, e.g. in a new network namespace) and on a unix stream socket
at UNIX_NAME (a leading "@" makes it abstract), each with its backlog.  Prints
"READY tcp4=P tcp6=P" (P 0: none).  Every client sends one message and gets "pong N\n".
"""

import select
import socket
import sys


def main() -> int:
    name, b4, b6, bu = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    host4 = sys.argv[5] if len(sys.argv) > 5 else "127.0.0.1"
    listeners = []
    tcp4 = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    tcp4.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # our closes leave TIME_WAITs on the port
    tcp4.bind((host4, 0))
    tcp4.listen(b4)
    listeners.append(tcp4)
    port6 = 0
    try:
        tcp6 = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        tcp6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        tcp6.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        tcp6.bind(("::1", 0))
        tcp6.listen(b6)
        listeners.append(tcp6)
        port6 = tcp6.getsockname()[1]
    except OSError:
        pass
    unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    unix.bind("\0" + name[1:] if name.startswith("@") else name)
    unix.listen(bu)
    listeners.append(unix)
    print(f"READY tcp4={tcp4.getsockname()[1]} tcp6={port6}", flush=True)
    n = 0
    while True:
        ready, _, _ = select.select(listeners, [], [], 1.0)
        for s in ready:
            conn, _ = s.accept()
            conn.settimeout(2)
            try:
                conn.recv(100)  # the client's ping, read before closing so it never sees a reset
            except OSError:
                pass
            n += 1
            conn.sendall(f"pong {n}\n".encode())
            conn.close()


if __name__ == "__main__":
    sys.exit(main())
