"""Unix sockets by name between two processes: listeners, accepted and waiting connections, datagrams to a path.

usage: py_unix.py DIR

The root R forks a child C.  R listens on a stream socket at the abstract
name @ckpt-ux-R-stream (backlog 4) and on a seqpacket socket at DIR/seq.sock
(backlog 3), and binds a datagram socket at DIR/dgram.sock.  C connects
  c1  bound to @ckpt-ux-R-c1, to the stream listener; R accepts it as a1;
  c2  unnamed, to the seqpacket listener; R accepts it as a2;
  p1  unnamed, and p2, bound to DIR/p2.sock, to the stream listener: not accepted;
  d1  a datagram socket connected to DIR/dgram.sock, which sends two messages;
  d2  an unconnected datagram socket, which sends one message there;
and R connects p3 to the seqpacket listener, not accepted either.  Data waits
both ways on a1/c1 (stream bytes) and a2/c2 (seqpacket messages, one empty).
R also holds x, one end of a stream socketpair whose other end sent 3 bytes
and closed.

READY pids=R,C.  On SIGUSR1, R signals C and both check: names
(getsockname/getpeername) as they were, every queue exactly (contents and
message boundaries), x's bytes then EOF; R accepts the waiting connections
(p1, p2 from the stream listener, in that order, and p3) and greets each,
C and R read the greetings; then R prints "PASS py_unix" or "FAIL why; ...".
"""

import os
import select
import signal
import socket
import sys
import time

DIR = sys.argv[1]
R = os.getpid()
STREAM_NAME = f"\0ckpt-ux-{R}-stream".encode()
C1_NAME = f"\0ckpt-ux-{R}-c1".encode()
SEQ_PATH = os.path.join(DIR, "seq.sock")
DGRAM_PATH = os.path.join(DIR, "dgram.sock")
P2_PATH = os.path.join(DIR, "p2.sock")
A1_TO_C1, C1_TO_A1 = b"a1->c1 " * 300, b"c1->a1 " * 500
A2_TO_C2 = [b"a2-one", b"", b"a2-three" * 100]
C2_TO_A2 = [b"c2-one" * 50, b"c2-two"]
D_MSGS = [b"from d1 #1", b"from d1 #2", b"from d2"]

for p in (SEQ_PATH, DGRAM_PATH, P2_PATH):
    if os.path.exists(p):
        os.unlink(p)
lst = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
lst.bind(STREAM_NAME)
lst.listen(4)
seq = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
seq.bind(SEQ_PATH)
seq.listen(3)
dg = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
dg.bind(DGRAM_PATH)
report_r, report_w = os.pipe()
go_r, go_w = os.pipe()

child = os.fork()
if child == 0:
    os.close(report_r)
    os.close(go_w)
    lst.close()
    seq.close()
    dg.close()
    c1 = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    c1.bind(C1_NAME)
    c1.connect(STREAM_NAME)
    c2 = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    c2.connect(SEQ_PATH)
    os.read(go_r, 1)  # R accepted both: the waiting ones come after them in the queues
    os.close(go_r)
    p1 = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    p1.connect(STREAM_NAME)
    p2 = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    p2.bind(P2_PATH)
    p2.connect(STREAM_NAME)
    d1 = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    d1.connect(DGRAM_PATH)
    d1.send(D_MSGS[0])
    d1.send(D_MSGS[1])
    d2 = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    d2.sendto(D_MSGS[2], DGRAM_PATH)
    c1.sendall(C1_TO_A1)
    for m in C2_TO_A2:
        c2.send(m)

    def child_check(*_: object) -> None:
        bad = []
        if c1.getsockname() != C1_NAME or c1.getpeername() != STREAM_NAME:
            bad.append(f"c1 names {c1.getsockname()!r} -> {c1.getpeername()!r}")
        if c2.getpeername() != SEQ_PATH:
            bad.append(f"c2 peer {c2.getpeername()!r}")
        if p2.getsockname() != P2_PATH:
            bad.append(f"p2 name {p2.getsockname()!r}")
        got = b""
        while len(got) < len(A1_TO_C1):
            chunk = c1.recv(1 << 16, socket.MSG_DONTWAIT) if len(got) else c1.recv(1 << 16)
            if not chunk:
                break
            got += chunk
        if got != A1_TO_C1:
            bad.append(f"c1 read {len(got)} bytes, not a1's {len(A1_TO_C1)}")
        for i, want in enumerate(A2_TO_C2):
            m = c2.recv(1 << 16, socket.MSG_DONTWAIT)
            if m != want:
                bad.append(f"c2 message {i}: {len(m)} bytes, want {len(want)}")
        for name, s in (("c1", c1), ("c2", c2)):
            try:
                more = s.recv(100, socket.MSG_DONTWAIT)
                bad.append(f"{name}: more queued ({more!r})")
            except BlockingIOError:
                pass
        for name, s in (("p1", p1), ("p2", p2)):
            s.settimeout(3)
            try:
                m = s.recv(100)
                if m != f"hello {name}".encode():
                    bad.append(f"{name} got {m!r}")
            except OSError as exc:
                bad.append(f"{name}: {exc}")
        os.write(report_w, (f"FAIL C: {'; '.join(bad)}\n" if bad else "OK\n").encode())

    signal.signal(signal.SIGUSR1, child_check)
    os.write(report_w, b"up\n")
    while True:
        time.sleep(1)

def report_line(timeout: float) -> str:
    """C's next report line, or "" if none comes in time."""
    out = b""
    deadline = time.monotonic() + timeout
    while not out.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([reports], [], [], left)[0]:
            return ""
        chunk = reports.read(1)
        if not chunk:
            return ""
        out += chunk
    return out.decode().strip()


os.close(report_w)
os.close(go_r)
a1, _ = lst.accept()
a2, _ = seq.accept()
os.write(go_w, b"x")
os.close(go_w)
reports = os.fdopen(report_r, "rb", buffering=0)
assert report_line(10) == "up"
p3 = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
p3.connect(SEQ_PATH)
a1.sendall(A1_TO_C1)
for m in A2_TO_C2:
    a2.send(m)
x, y = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
y.send(b"bye")
y.close()
time.sleep(0.05)  # every send above has landed


def check(*_: object) -> None:
    bad = []
    os.kill(child, signal.SIGUSR1)
    if lst.getsockname() != STREAM_NAME or seq.getsockname() != SEQ_PATH or dg.getsockname() != DGRAM_PATH:
        bad.append(f"listener names {lst.getsockname()!r} {seq.getsockname()!r} {dg.getsockname()!r}")
    if a1.getsockname() != STREAM_NAME or a1.getpeername() != C1_NAME:
        bad.append(f"a1 names {a1.getsockname()!r} -> {a1.getpeername()!r}")
    if a2.getsockname() != SEQ_PATH:
        bad.append(f"a2 name {a2.getsockname()!r}")
    got = b""
    while len(got) < len(C1_TO_A1):
        chunk = a1.recv(1 << 16, socket.MSG_DONTWAIT)
        if not chunk:
            break
        got += chunk
    if got != C1_TO_A1:
        bad.append(f"a1 read {len(got)} bytes, not c1's {len(C1_TO_A1)}")
    for i, want in enumerate(C2_TO_A2):
        m = a2.recv(1 << 16, socket.MSG_DONTWAIT)
        if m != want:
            bad.append(f"a2 message {i}: {len(m)} bytes, want {len(want)}")
    for i, want in enumerate(D_MSGS):
        m = dg.recv(1 << 16, socket.MSG_DONTWAIT)
        if m != want:
            bad.append(f"datagram {i}: {m!r}, want {want!r}")
    for name, s in (("a1", a1), ("a2", a2), ("dgram", dg)):
        try:
            more = s.recv(100, socket.MSG_DONTWAIT)
            bad.append(f"{name}: more queued ({more!r})")
        except BlockingIOError:
            pass
    if x.recv(100) != b"bye" or x.recv(100) != b"":
        bad.append("x: not 'bye' then EOF")
    lst.settimeout(3)
    seq.settimeout(3)
    try:
        q1, _ = lst.accept()
        q2, peer2 = lst.accept()
        q3, _ = seq.accept()
        if peer2 != P2_PATH:
            bad.append(f"second waiting connection comes from {peer2!r}, not p2")
        q1.send(b"hello p1")
        q2.send(b"hello p2")
        q3.send(b"hello p3")
        p3.settimeout(3)
        if p3.recv(100) != b"hello p3":
            bad.append("p3 did not get its greeting")
    except OSError as exc:
        bad.append(f"accepting the waiting connections: {exc}")
    line = report_line(5)
    if line != "OK":
        bad.append(line or "no report from C")
    print(f"FAIL {'; '.join(bad)}" if bad else "PASS py_unix", flush=True)


signal.signal(signal.SIGUSR1, check)
print(f"READY pids={R},{child}", flush=True)
while True:
    time.sleep(1)
