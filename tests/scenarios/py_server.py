"""A Python server for socket dump/restore tests: listeners of every kind ckpt re-creates, served by epoll.

usage: py_server.py UNIX_PATH
Listens on TCP 127.0.0.1 and [::1] (IPV6_V6ONLY, SO_REUSEADDR, TCP_NODELAY),
a bound UDP socket on 127.0.0.1 and a unix stream socket at UNIX_PATH, all
non-blocking in one ``selectors.EpollSelector``; an eventfd is registered
too.  Prints "READY tcp4=P tcp6=P udp=P" (the ports).  Each TCP/unix client
gets "pong N\n" (N counts every answer since start) and its connection is
closed; a UDP datagram is answered with "pong N".  Connections it accepted are
kept open while the test asks ("hold" sent by the client): the test uses that
to leave an established connection in the process.
"""

import os
import selectors
import socket
import sys


def main() -> int:
    unix_path = sys.argv[1]
    sel = selectors.EpollSelector()
    tcp4 = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    tcp4.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    tcp4.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    tcp4.bind(("127.0.0.1", 0))
    tcp4.listen(17)
    tcp6 = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    tcp6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    tcp6.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    tcp6.bind(("::1", 0))
    tcp6.listen(5)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    unix.bind(unix_path)
    unix.listen(3)
    efd = os.eventfd(3, os.EFD_NONBLOCK)
    for s in (tcp4, tcp6, udp, unix):
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
    held = []
    n = 0
    print(f"READY tcp4={tcp4.getsockname()[1]} tcp6={tcp6.getsockname()[1]} udp={udp.getsockname()[1]} "
          f"efd={efd}", flush=True)
    while True:
        for key, _ in sel.select(timeout=1.0):
            s = key.fileobj
            n += 1
            if s is udp:
                data, peer = udp.recvfrom(100)
                udp.sendto(f"pong {n} efd={os.eventfd_read(efd) if data == b'efd' else '-'}".encode(), peer)
                continue
            conn, _ = s.accept()
            conn.setblocking(True)
            conn.settimeout(2)
            try:
                if conn.recv(10) == b"hold":
                    held.append(conn)
                    conn.sendall(b"held\n")
                    continue
            except OSError:
                pass
            conn.sendall(f"pong {n}\n".encode())
            conn.close()


if __name__ == "__main__":
    sys.exit(main())
