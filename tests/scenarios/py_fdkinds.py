"""Descriptor kinds ckpt used to refuse, or refused only at restore: each set up, then checked by the process.

``py_fdkinds.py DIR KIND...`` sets up each KIND (DIR: a scratch directory of the test), prints
``READY pid=PID``, and on SIGUSR1 checks them all and prints ``PASS fdkinds KIND,...`` or
``FAIL fdkinds why; ...``.  A check may consume what it checks (a pipe's bytes): it is meant for once,
after the restore.

* ``halfpipe``: pipes whose other end is closed — a read end with bytes queued whose writer was closed
  (reads give the bytes, then end-of-file), a write end whose reader was closed (a write gives EPIPE), and
  a FIFO read end with bytes whose writer was closed;
* ``reopened``: both ends of a pipe opened a second time through /proc/self/fd/N — new open files on the
  same pipe with their own flags (the second read end non-blocking, the first not);
* ``pidfd``: pidfds of a running child (pidfd_open), of the process itself (PIDFD_NONBLOCK) — both also
  held by a second child —, of a child that exited and was reaped (fdinfo ``Pid: -1``), and of a zombie
  child (its status is read through it);
* ``opath``: O_PATH descriptors of a file, of a symlink itself (O_NOFOLLOW), of a directory (files are
  opened relative to it) and of a FIFO (not opened as one);
* ``opath-deleted``: an O_PATH descriptor of a file since deleted: a dump refuses it;
* ``procfiles``: its own /proc/self/stat (read part-way), /proc/self/maps, /proc/PID/status, a /proc/self
  directory fd, a /proc/CHILD directory fd of its child, and /proc/meminfo;
* ``proc-outside``: /proc/PPID/stat of its parent (outside the dumped tree): a dump refuses it;
* ``epoll``: an epoll watching a pipe's read end through a number since closed (the end dup'ed elsewhere) and
  another's through a number that now holds /dev/null: events still come with the old numbers, which stay
  as they were (closed; /dev/null);
* ``epoll-elsewhere``: an epoll watching a pipe end that only its child still holds: a dump refuses it;
* ``proc-ns``: its network namespace opened from /proc/self/ns/net: a dump refuses it;
* ``pidfd-outside``: a pidfd of the parent (outside the dumped tree): a dump refuses it;
* ``pidfd-grandchild``: a pidfd of a grandchild: a dump refuses it (not made yet when its holder's
  descriptors are restored).
"""

import ctypes
import fcntl
import os
import signal
import sys
import time

scratch, kinds = sys.argv[1], sys.argv[2:]
libc = ctypes.CDLL(None, use_errno=True)
checks: list = []


def setup_halfpipe() -> None:
    r, w = os.pipe()
    os.write(w, b"queued before the writer left")
    os.close(w)
    r2, w2 = os.pipe()
    os.close(r2)
    fifo = os.path.join(scratch, "fifo")
    os.mkfifo(fifo, 0o600)
    fr = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    fw = os.open(fifo, os.O_WRONLY)
    os.write(fw, b"fifo bytes")
    os.close(fw)

    def check() -> list[str]:
        bad = []
        if os.read(r, 100) != b"queued before the writer left" or os.read(r, 100) != b"":
            bad.append("pipe read end: not its bytes then EOF")
        try:
            os.write(w2, b"x")
            bad.append("pipe write end: a write went through")
        except BrokenPipeError:
            pass
        if os.read(fr, 100) != b"fifo bytes" or os.read(fr, 100) != b"":
            bad.append("FIFO read end: not its bytes then EOF")
        return bad
    checks.append(check)


def setup_reopened() -> None:
    r, w = os.pipe()
    r2 = os.open(f"/proc/self/fd/{r}", os.O_RDONLY | os.O_NONBLOCK)
    w2 = os.open(f"/proc/self/fd/{w}", os.O_WRONLY)
    os.write(w, b"first")

    def check() -> list[str]:
        bad = []
        if fcntl.fcntl(r, fcntl.F_GETFL) & os.O_NONBLOCK or not fcntl.fcntl(r2, fcntl.F_GETFL) & os.O_NONBLOCK:
            bad.append("reopened read end: O_NONBLOCK not its own")
        if len({os.fstat(fd).st_ino for fd in (r, w, r2, w2)}) != 1:
            bad.append("reopened ends: not one pipe")
        os.write(w2, b"+second")
        if os.read(r2, 100) != b"first+second":
            bad.append("reopened ends: bytes lost")
        try:
            os.read(r2, 1)
            bad.append("reopened read end: blocking")
        except BlockingIOError:
            pass
        return bad
    checks.append(check)


def pid_of(fd: int) -> int:
    with open(f"/proc/self/fdinfo/{fd}") as f:
        return int(next(ln for ln in f if ln.startswith("Pid:")).split()[1])


def fork_child() -> int:
    """os.fork, the child ending with its parent (PR_SET_PDEATHSIG, kept by a restore): no test leaves one."""
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:
            os._exit(0)
    return pid


def forked(exit_status: int | None) -> int:
    pid = fork_child()
    if pid == 0:
        if exit_status is not None:
            os._exit(exit_status)
        while True:
            time.sleep(1)
    return pid


def setup_pidfd() -> None:
    child = forked(None)
    cfd = os.pidfd_open(child)
    sfd = os.pidfd_open(os.getpid(), os.O_NONBLOCK)  # PIDFD_NONBLOCK
    forked(None)  # holds both pidfds too: each one open file of two processes
    gone = forked(0)
    gfd = os.pidfd_open(gone)
    os.waitpid(gone, 0)
    zombie = forked(7)
    zfd = os.pidfd_open(zombie)
    while open(f"/proc/{zombie}/stat").read().rsplit(")", 1)[1].split()[0] != "Z":
        time.sleep(0.01)

    def check() -> list[str]:
        bad = []
        if pid_of(sfd) != os.getpid() or not fcntl.fcntl(sfd, fcntl.F_GETFL) & os.O_NONBLOCK:
            bad.append(f"own pidfd: Pid {pid_of(sfd)}, flags {fcntl.fcntl(sfd, fcntl.F_GETFL):o}")
        if pid_of(gfd) != -1:
            bad.append(f"reaped child's pidfd: Pid {pid_of(gfd)}")
        try:
            signal.pidfd_send_signal(gfd, 0)
            bad.append("reaped child's pidfd: a signal went through")
        except ProcessLookupError:
            pass
        res = os.waitid(os.P_PIDFD, zfd, os.WEXITED)
        if res is None or (res.si_pid, res.si_status) != (zombie, 7):
            bad.append(f"zombie's pidfd: waitid gave {res}")
        if pid_of(cfd) != child:
            bad.append(f"child's pidfd: Pid {pid_of(cfd)}")
        signal.pidfd_send_signal(cfd, signal.SIGKILL)
        res = os.waitid(os.P_PIDFD, cfd, os.WEXITED)
        if res is None or (res.si_pid, res.si_status) != (child, signal.SIGKILL):
            bad.append(f"child's pidfd: waitid gave {res}")
        return bad
    checks.append(check)


def setup_pidfd_outside() -> None:
    fd = os.pidfd_open(os.getppid())
    checks.append(lambda: [] if pid_of(fd) == os.getppid() else ["parent's pidfd changed"])


def setup_pidfd_grandchild() -> None:
    r, w = os.pipe()
    child = fork_child()
    if child == 0:
        grandchild = forked(None)
        os.write(w, str(grandchild).encode())
        while True:
            time.sleep(1)
    grandchild = int(os.read(r, 20))
    fd = os.pidfd_open(grandchild)
    checks.append(lambda: [] if pid_of(fd) == grandchild else ["grandchild's pidfd changed"])


def setup_opath() -> None:
    target = os.path.join(scratch, "file")
    with open(target, "w") as f:
        f.write("through O_PATH")
    link = os.path.join(scratch, "link")
    os.symlink(target, link)
    fifo = os.path.join(scratch, "opath-fifo")
    os.mkfifo(fifo, 0o600)
    ffd = os.open(target, os.O_PATH)
    lfd = os.open(link, os.O_PATH | os.O_NOFOLLOW)
    dfd = os.open(scratch, os.O_PATH | os.O_DIRECTORY)
    pfd = os.open(fifo, os.O_PATH)
    want = {fd: fcntl.fcntl(fd, fcntl.F_GETFL) for fd in (ffd, lfd, dfd, pfd)}

    def check() -> list[str]:
        import stat
        bad = [f"fd {fd}: flags {fcntl.fcntl(fd, fcntl.F_GETFL):o}, were {flags:o}" for fd, flags in want.items()
               if fcntl.fcntl(fd, fcntl.F_GETFL) != flags]
        if not stat.S_ISLNK(os.stat(lfd).st_mode) or os.readlink("", dir_fd=lfd) != target:
            bad.append("O_PATH symlink: not the link")
        if os.stat(ffd).st_ino != os.stat(target).st_ino:
            bad.append("O_PATH file: another inode")
        fd = os.open("file", os.O_RDONLY, dir_fd=dfd)
        if os.read(fd, 100) != b"through O_PATH":
            bad.append("O_PATH directory: its file not found")
        os.close(fd)
        if not stat.S_ISFIFO(os.stat(pfd).st_mode):
            bad.append("O_PATH FIFO: not the FIFO")
        return bad
    checks.append(check)


def setup_opath_deleted() -> None:
    path = os.path.join(scratch, "gone")
    open(path, "w").close()
    fd = os.open(path, os.O_PATH)
    os.unlink(path)
    checks.append(lambda: [] if os.stat(fd).st_nlink == 0 else ["deleted file's O_PATH: linked again"])


def setup_procfiles() -> None:
    me = os.getpid()
    sfd = os.open("/proc/self/stat", os.O_RDONLY)
    head = os.read(sfd, 10)
    mfd = os.open("/proc/self/maps", os.O_RDONLY)
    tfd = os.open(f"/proc/{me}/status", os.O_RDONLY)
    dfd = os.open("/proc/self", os.O_RDONLY | os.O_DIRECTORY)
    child = forked(None)
    cfd = os.open(f"/proc/{child}", os.O_RDONLY | os.O_DIRECTORY)
    ifd = os.open("/proc/meminfo", os.O_RDONLY)

    def read_at(name: str, dir_fd: int) -> bytes:
        fd = os.open(name, os.O_RDONLY, dir_fd=dir_fd)
        try:
            return os.read(fd, 4096)
        finally:
            os.close(fd)

    def check() -> list[str]:
        bad = []
        if os.lseek(sfd, 0, os.SEEK_CUR) != 10 or not os.pread(sfd, 100, 0).startswith(head):
            bad.append("/proc/self/stat: offset or text")
        if not os.pread(sfd, 100, 0).startswith(f"{me} (".encode()):
            bad.append("/proc/self/stat: another process")
        text, at = b"", 0
        while chunk := os.pread(mfd, 1 << 16, at):  # a seq_file read may return less than asked
            text, at = text + chunk, at + len(chunk)
        if b"[stack]" not in text:
            bad.append("/proc/self/maps: no [stack]")
        if f"Pid:\t{me}\n".encode() not in os.pread(tfd, 4096, 0):
            bad.append("/proc/PID/status: another process")
        if f"Pid:\t{me}\n".encode() not in read_at("status", dfd):
            bad.append("/proc/self directory: another process")
        if not read_at("stat", cfd).startswith(f"{child} (".encode()):
            bad.append("/proc/CHILD directory: another process")
        if b"MemTotal:" not in os.pread(ifd, 4096, 0):
            bad.append("/proc/meminfo: not it")
        return bad
    checks.append(check)


def setup_proc_outside() -> None:
    fd = os.open(f"/proc/{os.getppid()}/stat", os.O_RDONLY)
    checks.append(lambda: [] if os.pread(fd, 20, 0).startswith(f"{os.getppid()} (".encode()) else ["ppid stat"])


def setup_epoll() -> None:
    import select
    ep = select.epoll()
    r1, w1 = os.pipe()
    r2, w2 = os.pipe()
    ep.register(r1, select.EPOLLIN)
    ep.register(r2, select.EPOLLIN)
    r1b, r2b = os.dup(r1), os.dup(r2)
    os.close(r1)
    null = os.open("/dev/null", os.O_RDONLY)
    os.dup2(null, r2)  # r2 is /dev/null now; the watch stays on the pipe
    os.close(null)

    def check() -> list[str]:
        bad = []
        if ep.poll(0):
            bad.append(f"epoll: events before any write {ep.poll(0)}")
        os.write(w1, b"1")
        os.write(w2, b"2")
        got = dict(ep.poll(1))
        if got != {r1: select.EPOLLIN, r2: select.EPOLLIN}:
            bad.append(f"epoll: {got}, wanted {r1} and {r2} readable")
        try:
            os.fstat(r1)
            bad.append(f"epoll: fd {r1} open again")
        except OSError:
            pass
        if os.readlink(f"/proc/self/fd/{r2}") != "/dev/null" or os.read(r1b, 1) != b"1" or os.read(r2b, 1) != b"2":
            bad.append("epoll: the descriptors changed")
        return bad
    checks.append(check)


def setup_epoll_elsewhere() -> None:
    import select
    ep = select.epoll()
    r, w = os.pipe()
    ep.register(r, select.EPOLLIN)
    forked(None)  # holds r (and the epoll) on
    os.close(r)

    def check() -> list[str]:
        os.write(w, b"x")
        return [] if ep.poll(1) == [(r, select.EPOLLIN)] else [f"epoll-elsewhere: {ep.poll(0)}"]
    checks.append(check)


def setup_proc_ns() -> None:
    fd = os.open("/proc/self/ns/net", os.O_RDONLY)
    checks.append(lambda: [] if os.readlink(f"/proc/self/fd/{fd}").startswith("net:[") else ["ns fd"])


for kind in kinds:
    globals()[f"setup_{kind.replace('-', '_')}"]()


def on_usr1(*_: object) -> None:
    bad = [why for check in checks for why in check()]
    print(f"FAIL fdkinds {'; '.join(bad)}" if bad else f"PASS fdkinds {','.join(kinds)}", flush=True)


signal.signal(signal.SIGUSR1, on_usr1)
print(f"READY pid={os.getpid()}", flush=True)
while True:
    time.sleep(1)
