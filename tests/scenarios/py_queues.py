"""A TCP listener that accepts nothing and a UDP socket that reads nothing until asked, for the tolerance tests
(and a TCP socket only bound, neither listening nor connected).

usage: py_queues.py
Prints "READY tcp=P udp=P" (127.0.0.1).  On SIGUSR1 it accepts what waits and reads what is queued, without
blocking, and prints "QUEUES accepted=N datagrams=D1|D2..." (each datagram's bytes, decoded): whether a dump
consumed anything.
"""

import signal
import socket
import sys


def main() -> int:
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    tcp.bind(("127.0.0.1", 0))
    tcp.listen(8)
    tcp.setblocking(False)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    udp.setblocking(False)
    idle = socket.socket(socket.AF_INET, socket.SOCK_STREAM)  # bound, neither listening nor connected
    idle.bind(("127.0.0.1", 0))
    asked = []
    signal.signal(signal.SIGUSR1, lambda *_: asked.append(1))
    print(f"READY tcp={tcp.getsockname()[1]} udp={udp.getsockname()[1]}", flush=True)
    while True:
        signal.pause()
        while asked:
            asked.pop()
            accepted, datagrams = 0, []
            while True:
                try:
                    conn, _ = tcp.accept()
                except BlockingIOError:
                    break
                conn.close()
                accepted += 1
            while True:
                try:
                    datagrams.append(udp.recv(100).decode())
                except BlockingIOError:
                    break
            print(f"QUEUES accepted={accepted} datagrams={'|'.join(datagrams)}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
