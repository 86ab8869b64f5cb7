"""States a dump once took that its restore then refused (issue 16: "a dump never succeeds for what the restore
will refuse"): each set up, then checked by the process itself.

``py_dumpcases.py DIR KIND...`` sets up each KIND (DIR: a scratch directory of the test), prints
``READY pid=PID``, and on SIGUSR1 checks them all and prints ``PASS dumpcases KIND,...`` or
``FAIL dumpcases why; ...``.

* ``memfd-part``: a memfd of three pages, each holding data, of which only the middle page is mapped (its
  descriptor closed): the object keeps all three pages (read back through /proc/self/map_files);
* ``sysv-part``: a System V segment of three pages, each holding data, attached and then unmapped but for its
  middle page, and removed (IPC_RMID): shmat of its id still gives all three pages;
* ``posix-shm-part``: a POSIX shared memory object (/dev/shm) of three pages, each holding data, of which only
  the middle page is mapped (its descriptor closed);
* ``unix-unlinked``: a unix datagram socket bound to DIR/gone.sock, whose path was deleted since: it keeps its
  name, the path stays absent, and a datagram sent to the socket's peer still arrives;
* ``unix-replaced-file``: a unix socket bound to DIR/file.sock, whose path now names a regular file;
* ``unix-replaced-sock``: a unix socket bound to DIR/twice.sock, whose path now names another listening socket
  of the process;
* ``unix-dir-gone``: a unix socket bound to DIR/sub/x.sock, whose path and directory were deleted since;
* ``freebind``: a UDP socket bound to 192.0.2.1 (not an address of this host) with IP_FREEBIND;
* ``freebind6``: a UDP socket bound to 2001:db8::1 with IPV6_FREEBIND, and a TCP listener on 2001:db8::2 with
  IP_TRANSPARENT (needs CAP_NET_ADMIN);
* ``reuseport``: two TCP listeners on one port with SO_REUSEPORT, and two UDP sockets on another;
* ``reuseport-tree``: a TCP listener with SO_REUSEPORT, and a child with another on the same port;
* ``devnode``: a character device made with mknod (/dev/null's numbers) in DIR, opened and then deleted.
"""

import ctypes
import errno
import mmap
import os
import signal
import socket
import sys
import time

scratch, kinds = sys.argv[1], sys.argv[2:]
libc = ctypes.CDLL(None, use_errno=True)
libc.shmat.restype = ctypes.c_void_p
libc.shmat.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int]
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
PAGE = mmap.PAGESIZE
checks: list = []
keep: list = []


def pages() -> bytes:
    """Three pages, each filled with its own letter."""
    return b"".join(bytes([ord("A") + i]) * PAGE for i in range(3))


def map_middle(fd: int) -> int:
    """Map the middle page of the three-page object ``fd`` (shared), then close ``fd``."""
    addr = libc.mmap(None, PAGE, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_SHARED, fd, PAGE)
    if addr == ctypes.c_void_p(-1).value:
        raise OSError(ctypes.get_errno(), "mmap")
    os.close(fd)
    return addr


def object_via_map_files(addr: int) -> bytes:
    """The whole object behind the mapping at ``addr``, read through /proc/self/map_files (as root)."""
    with open(f"/proc/self/map_files/{addr:x}-{addr + PAGE:x}", "rb") as f:
        return f.read()


def check_middle(what: str, addr: int, whole) -> list[str]:  # noqa: ANN001
    bad = []
    if ctypes.string_at(addr, PAGE) != b"B" * PAGE:
        bad.append(f"{what}: the mapped page lost its data")
    got = whole()
    if got != pages():
        bad.append(f"{what}: the object holds {len(got)} bytes, {sorted(set(got))[:4]} (not its three pages)")
    return bad


def setup_memfd_part() -> None:
    fd = os.memfd_create("partly", 0)
    os.write(fd, pages())
    addr = map_middle(fd)
    checks.append(lambda: check_middle("memfd", addr, lambda: object_via_map_files(addr)))


def setup_sysv_part() -> None:
    shmid = libc.shmget(0, 3 * PAGE, 0o600 | 0o1000)  # IPC_PRIVATE, IPC_CREAT
    base = libc.shmat(shmid, None, 0)
    ctypes.memmove(base, pages(), 3 * PAGE)
    libc.munmap(base, PAGE)
    libc.munmap(base + 2 * PAGE, PAGE)
    libc.shmctl(shmid, 0, None)  # IPC_RMID: gone with its last attachment

    def whole() -> bytes:
        again = libc.shmat(shmid, None, 0o10000)  # SHM_RDONLY
        if again == ctypes.c_void_p(-1).value:
            return b"shmat: " + os.strerror(ctypes.get_errno()).encode()
        try:
            return ctypes.string_at(again, 3 * PAGE)
        finally:
            libc.shmdt(ctypes.c_void_p(again))
    checks.append(lambda: check_middle("sysv", base + PAGE, whole))


def setup_posix_shm_part() -> None:
    path = f"/dev/shm/ckpt-dumpcases-{os.getpid()}"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, pages())
    addr = map_middle(fd)

    def whole() -> bytes:
        with open(path, "rb") as f:
            return f.read()

    def check() -> list[str]:
        try:
            return check_middle("posix shm", addr, whole)
        finally:
            os.unlink(path)
    checks.append(check)


def bound_unix(path: str, kind: int = socket.SOCK_DGRAM) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, kind)
    s.bind(path)
    keep.append(s)
    return s


def setup_unix_unlinked() -> None:
    path = os.path.join(scratch, "gone.sock")
    s = bound_unix(path)
    os.unlink(path)
    peer = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    keep.append(peer)
    peer.bind("")  # autobind: an abstract name
    s.connect(peer.getsockname())

    def check() -> list[str]:
        bad = []
        if s.getsockname() != path:
            bad.append(f"unix-unlinked: named {s.getsockname()!r}")
        if os.path.lexists(path):
            bad.append("unix-unlinked: its path exists again")
        s.send(b"still")
        if peer.recv(10, socket.MSG_DONTWAIT) != b"still":
            bad.append("unix-unlinked: a datagram was lost")
        return bad
    checks.append(check)


def setup_unix_replaced_file() -> None:
    path = os.path.join(scratch, "file.sock")
    s = bound_unix(path)
    os.unlink(path)
    with open(path, "w") as f:
        f.write("a file now")
    checks.append(lambda: [] if s.getsockname() == path else [f"unix-replaced-file: named {s.getsockname()!r}"])


def setup_unix_replaced_sock() -> None:
    path = os.path.join(scratch, "twice.sock")
    s = bound_unix(path)
    os.unlink(path)
    second = bound_unix(path, socket.SOCK_STREAM)
    second.listen()

    def check() -> list[str]:
        bad = []
        if s.getsockname() != path or second.getsockname() != path:
            bad.append(f"unix-replaced-sock: named {s.getsockname()!r}, {second.getsockname()!r}")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as c:
            c.connect(path)
            second.accept()[0].close()
        return bad
    checks.append(check)


def setup_unix_dir_gone() -> None:
    sub = os.path.join(scratch, "sub")
    os.mkdir(sub)
    s = bound_unix(os.path.join(sub, "x.sock"))
    os.unlink(s.getsockname())
    os.rmdir(sub)
    checks.append(lambda: [] if s.getsockname().endswith("/sub/x.sock") else ["unix-dir-gone: renamed"])


def check_bound(what: str, s: socket.socket, addr: tuple) -> list[str]:  # noqa: ANN001
    return [] if s.getsockname()[:2] == addr[:2] else [f"{what}: bound to {s.getsockname()}, not {addr}"]


def setup_freebind() -> None:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_IP, 15, 1)  # IP_FREEBIND
    s.bind(("192.0.2.1", 0))
    keep.append(s)
    addr = s.getsockname()
    checks.append(lambda: check_bound("freebind", s, addr))


def setup_freebind6() -> None:
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    s.setsockopt(socket.IPPROTO_IPV6, 78, 1)  # IPV6_FREEBIND
    s.bind(("2001:db8::1", 0))
    t = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    t.setsockopt(socket.SOL_IP, 19, 1)  # IP_TRANSPARENT (also for IPv6 sockets)
    t.bind(("2001:db8::2", 0))
    t.listen()
    keep.extend((s, t))
    a, b = s.getsockname(), t.getsockname()
    checks.append(lambda: check_bound("freebind6", s, a) + check_bound("transparent", t, b))


def reuseport(kind: int, port: int = 0) -> socket.socket:
    s = socket.socket(socket.AF_INET, kind)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind(("127.0.0.1", port))
    if kind == socket.SOCK_STREAM:
        s.listen()
    keep.append(s)
    return s


def check_reuseport(what: str, group: list[socket.socket], port: int, kind: int) -> list[str]:
    bad = [f"{what}: a socket on port {s.getsockname()[1]}" for s in group if s.getsockname()[1] != port]
    try:  # a third with SO_REUSEPORT joins the group: it would not if the port were held without it
        reuseport(kind, port).close()
    except OSError as e:
        bad.append(f"{what}: a third SO_REUSEPORT bind: {e}")
    return bad


def setup_reuseport() -> None:
    t1 = reuseport(socket.SOCK_STREAM)
    t2 = reuseport(socket.SOCK_STREAM, t1.getsockname()[1])
    u1 = reuseport(socket.SOCK_DGRAM)
    u2 = reuseport(socket.SOCK_DGRAM, u1.getsockname()[1])
    tp, up = t1.getsockname()[1], u1.getsockname()[1]
    checks.append(lambda: check_reuseport("reuseport tcp", [t1, t2], tp, socket.SOCK_STREAM)
                  + check_reuseport("reuseport udp", [u1, u2], up, socket.SOCK_DGRAM))


def setup_reuseport_tree() -> None:
    t1 = reuseport(socket.SOCK_STREAM)
    port = t1.getsockname()[1]
    parent = os.getpid()
    r, w = os.pipe()
    if os.fork() == 0:
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG: no test leaves it behind
        if os.getppid() != parent:
            os._exit(0)
        t1.close()
        reuseport(socket.SOCK_STREAM, port)
        os.write(w, b"bound")
        while True:
            time.sleep(1)
    os.read(r, 10)
    checks.append(lambda: check_reuseport("reuseport tree", [t1], port, socket.SOCK_STREAM))


def setup_devnode() -> None:
    path = os.path.join(scratch, "null-like")
    os.mknod(path, 0o666 | 0o020000, os.makedev(1, 3))
    fd = os.open(path, os.O_RDWR)
    os.unlink(path)

    def check() -> list[str]:
        os.write(fd, b"into the void")
        return [] if os.read(fd, 10) == b"" else ["devnode: not /dev/null"]
    checks.append(check)


for kind in kinds:
    globals()[f"setup_{kind.replace('-', '_')}"]()


def on_usr1(*_: object) -> None:
    try:
        bad = [why for check in checks for why in check()]
    except OSError as e:
        bad = [f"{e} ({errno.errorcode.get(e.errno, e.errno)})"]
    print(f"FAIL dumpcases {'; '.join(bad)}" if bad else f"PASS dumpcases {','.join(kinds)}", flush=True)


signal.signal(signal.SIGUSR1, on_usr1)
print(f"READY pid={os.getpid()}", flush=True)
while True:
    time.sleep(1)
