"""Unix socket states ckpt refused once, refuses, or (a peer outside) closes with --ext-unix-close.

usage: py_unix_refusals.py MODE [NAME]

  rights           a datagram socketpair whose queue holds a message carrying a pipe's
                   read end (SCM_RIGHTS), now kept; SIGUSR1: receive it, check it is that pipe
  rights-fifo DIR  the same with the read end of a FIFO DIR/f.fifo holding "fifo-bytes" (the
                   write end kept); SIGUSR1: write "+more", receive the read end, read both
  rights-tcp       the same with the client end of an established loopback TCP connection in
                   flight (sender's copy closed; refused); SIGUSR1: receive it, send through it
  oob              a stream socketpair with "ab", urgent "!", "cd" queued; SIGUSR1: read them
  waiting-data     a listener whose waiting (not accepted) connection has sent "early";
                   SIGUSR1: accept it and read "early"
  waiting-outside  a listener at the abstract name @NAME, for a client outside (the test);
                   SIGUSR1: accept what waits ("PASS accepted", or "PASS none")

Prints READY, then on each SIGUSR1 "PASS MODE ..." or "FAIL why".
"""

import array
import os
import signal
import socket
import sys
import time

MODE = sys.argv[1]
keep: list[object] = []

if MODE == "rights":
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    r, w = os.pipe()
    a.sendmsg([b"fd"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [r]))])
    os.close(r)
    keep += [a, b, w]

    def check() -> str:
        _, anc, _, _ = b.recvmsg(10, socket.CMSG_SPACE(4), socket.MSG_DONTWAIT)
        fd = array.array("i", anc[0][2][:4])[0]
        os.write(w, b"through")
        return "through the pipe" if os.read(fd, 10) == b"through" else "FAIL not the pipe"
elif MODE == "rights-fifo":
    path = os.path.join(sys.argv[2], "f.fifo")
    os.mkfifo(path)
    r = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    w = os.open(path, os.O_WRONLY)
    os.write(w, b"fifo-bytes")
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    a.sendmsg([b"fd"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [r]))])
    os.close(r)
    keep += [a, b, w]

    def check() -> str:
        _, anc, _, _ = b.recvmsg(10, socket.CMSG_SPACE(4), socket.MSG_DONTWAIT)
        os.write(w, b"+more")
        got = os.read(array.array("i", anc[0][2][:4])[0], 100)
        return "fifo-bytes+more" if got == b"fifo-bytes+more" else f"FAIL got {got!r}"
elif MODE == "rights-tcp":
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    lst = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(lst.getsockname())
    server, _ = lst.accept()
    a.sendmsg([b"fd"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [client.fileno()]))])
    client.close()
    keep += [a, b, lst, server]

    def check() -> str:
        _, anc, _, _ = b.recvmsg(10, socket.CMSG_SPACE(4), socket.MSG_DONTWAIT)
        with socket.socket(fileno=array.array("i", anc[0][2][:4])[0]) as c:
            c.send(b"tcp")
        server.settimeout(2)
        got = server.recv(10)
        return "through tcp" if got == b"tcp" else f"FAIL got {got!r}"
elif MODE == "oob":
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    a.send(b"ab")
    a.send(b"!", socket.MSG_OOB)
    a.send(b"cd")
    keep += [a, b]

    def check() -> str:
        got = [b.recv(10, socket.MSG_DONTWAIT), b.recv(10, socket.MSG_OOB | socket.MSG_DONTWAIT),
               b.recv(10, socket.MSG_DONTWAIT)]
        return "ab ! cd" if got == [b"ab", b"!", b"cd"] else f"FAIL {got}"
else:
    name = (f"\0ckpt-ux-refusals-{os.getpid()}" if MODE == "waiting-data" else "\0" + sys.argv[2]).encode()
    lst = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    lst.bind(name)
    lst.listen(2)
    keep.append(lst)
    if MODE == "waiting-data":
        c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        c.connect(name)
        c.send(b"early")
        keep.append(c)

    def check() -> str:
        lst.setblocking(False)
        try:
            s, _ = lst.accept()
        except BlockingIOError:
            return "none"
        s.settimeout(2)
        return "accepted " + s.recv(10).decode()


def on_usr1(*_: object) -> None:
    try:
        result = check()
    except OSError as exc:
        result = f"FAIL {exc}"
    print(result if result.startswith("FAIL") else f"PASS {MODE} {result}", flush=True)


signal.signal(signal.SIGUSR1, on_usr1)
print(f"READY pid={os.getpid()}", flush=True)
while True:
    time.sleep(1)
