"""A TCP and UDP counter server, for migrations that hand bound sockets over (ckpt/migrate/handover.py).

usage: py_counter_server.py TCP_PORT UDP_PORT
Listens on TCP 127.0.0.1:TCP_PORT (backlog 64) and is bound to UDP
127.0.0.1:UDP_PORT; prints "READY pid=PID".  Each TCP connection is answered
"N PID\\n" and closed, each datagram "N PID"; N counts every answer since the
start, so a client sees exactly 1, 2, 3 ... whichever copy answers: an answer
lost, doubled or from a restarted counter shows.  It accepts one connection
every 20 ms at most, so connections wait in the listener meanwhile (a
migration must keep them).
"""

import os
import selectors
import socket
import sys
import time


def main() -> int:
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    tcp.bind(("127.0.0.1", int(sys.argv[1])))
    tcp.listen(64)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", int(sys.argv[2])))
    sel = selectors.EpollSelector()
    sel.register(tcp, selectors.EVENT_READ)
    sel.register(udp, selectors.EVENT_READ)
    print(f"READY pid={os.getpid()}", flush=True)
    n = 0
    while True:
        for key, _ in sel.select():
            n += 1
            answer = f"{n} {os.getpid()}"
            if key.fileobj is tcp:
                conn, _ = tcp.accept()
                with conn:
                    conn.sendall(answer.encode() + b"\n")
                time.sleep(0.02)
            else:
                _, addr = udp.recvfrom(64)
                udp.sendto(answer.encode(), addr)


if __name__ == "__main__":
    sys.exit(main())
