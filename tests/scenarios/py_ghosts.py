"""Deleted ("ghost") files, directories and FIFOs a process and its child still hold, each checked by themselves.

Usage: py_ghosts.py DIR (an empty directory of a filesystem with holes).

* ``DIR/sparse``: 10 GiB long with three 4 KiB pieces of data (holes between), mode 0640, owner 1234:1234,
  atime/mtime a fixed day of 2001; opened twice (two open() calls), once more by the child (a reopen through
  /proc: its own open file), and mapped shared by the parent; then deleted.  One inode after restore: a
  write through one descriptor is read through the others and seen in the mapping; the same st_ino; the
  holes where they were (SEEK_DATA/SEEK_HOLE); mode, owner, times, nlink 0.
* ``DIR/shared``: 64 KiB, mapped shared (the child inherits it) and privately with a written page, then
  deleted and its descriptor closed: only the mappings hold it.  A write in the parent's shared mapping is
  seen by the child's and in the private mapping's pages it never wrote; its written page stays its own.
* ``DIR/libfake.so``: mapped read+exec, then replaced by a new file renamed over it (a package upgrade):
  the mapping keeps the old bytes, the path has the new ones, maps says "DIR/libfake.so (deleted)".
* a private mapping of /dev/zero with a written page.
* POSIX shared memory on tmpfs (``/dev/shm``), 1 MiB with one page of data, mapped shared and unlinked (as
  ``multiprocessing.shared_memory`` does): its hole stays one, and a write through its fd is in the mapping.
* a file made with O_TMPFILE (never named: maps shows ``DIR/#INO (deleted)``), at an offset and mapped shared:
  its descriptor keeps the flag (F_GETFL), and writes through it are seen in the mapping.
* the working directory ``DIR/cwd``, deleted; an open directory ``DIR/dir``, deleted; a FIFO ``DIR/fifo``
  opened twice (read+write, and read through a reopen), 9 bytes in it, unlinked.

Prints ``READY pid=PID child=PID``.  On SIGUSR1 it checks each (asking the child for its part through a
pipe) and prints ``PASS ghosts round=N`` or ``FAIL ...``.
"""

import ctypes
import errno
import fcntl
import mmap
import os
import signal
import stat
import sys
import time

top = sys.argv[1]
PAGE = 4096
SIZE = 10 << 30
PIECES = {0: b"head", 1 << 20: b"middle", 64 << 20: b"tail"}
TIMES = (978_307_200_000_000_000, 978_393_600_123_456_789)  # 2001-01-01 and 2001-01-02 (ns)
OWNER = (1234, 1234)


def data_ranges(fd: int) -> list[tuple[int, int]]:
    out, off, size = [], 0, os.fstat(fd).st_size
    while off < size:
        try:
            start = os.lseek(fd, off, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:
                break
            raise
        end = os.lseek(fd, start, os.SEEK_HOLE)
        out.append((start, end))
        off = end
    return out


# --- the sparse file, opened three ways and mapped shared ---------------------------------------------
sparse = os.path.join(top, "sparse")
a = os.open(sparse, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
for off, data in PIECES.items():
    os.pwrite(a, data.ljust(PAGE, b"."), off)
os.ftruncate(a, SIZE)
b = os.open(sparse, os.O_RDONLY)
os.fchown(a, *OWNER)
os.fchmod(a, 0o640)
window = mmap.mmap(a, PAGE, mmap.MAP_SHARED)
RANGES = data_ranges(a)

# --- a file only mappings hold -------------------------------------------------------------------------
shared_path = os.path.join(top, "shared")
fd = os.open(shared_path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
os.write(fd, b"".join(bytes([65 + i]) * PAGE for i in range(16)))
m_shared = mmap.mmap(fd, 16 * PAGE, mmap.MAP_SHARED)
m_private = mmap.mmap(fd, 16 * PAGE, mmap.MAP_PRIVATE)
m_private[PAGE:PAGE + 7] = b"private"  # page 1 is the process's own now
os.close(fd)
os.unlink(shared_path)

# --- an upgraded "library" -----------------------------------------------------------------------------
lib = os.path.join(top, "libfake.so")
with open(lib, "wb") as f:
    f.write(b"OLDLIB" * 3000)
fd = os.open(lib, os.O_RDONLY)
m_lib = mmap.mmap(fd, 3 * PAGE, mmap.MAP_PRIVATE, mmap.PROT_READ | mmap.PROT_EXEC)
os.close(fd)
with open(lib + ".new", "wb") as f:
    f.write(b"NEWLIB" * 3000)
os.rename(lib + ".new", lib)

# --- /dev/zero, privately -------------------------------------------------------------------------------
fd = os.open("/dev/zero", os.O_RDWR)
m_zero = mmap.mmap(fd, 2 * PAGE, mmap.MAP_PRIVATE)
os.close(fd)
m_zero[:4] = b"zero"

# --- POSIX shared memory, unlinked ------------------------------------------------------------------------
shm_path = f"/dev/shm/ckpt-ghosts-{os.getpid()}"
shm = os.open(shm_path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
os.ftruncate(shm, 1 << 20)
os.pwrite(shm, b"shm-data", 512 << 10)
m_shm = mmap.mmap(shm, 1 << 20, mmap.MAP_SHARED)
os.unlink(shm_path)
SHM_RANGES = data_ranges(shm)

# --- a file that never had a name -----------------------------------------------------------------------
tmpf = os.open(top, os.O_TMPFILE | os.O_RDWR, 0o600)
os.write(tmpf, b"T" * 2 * PAGE)
os.lseek(tmpf, 5, os.SEEK_SET)
TMPF_FLAGS = fcntl.fcntl(tmpf, fcntl.F_GETFL)
m_tmp = mmap.mmap(tmpf, 2 * PAGE, mmap.MAP_SHARED)

# --- directories and a FIFO ------------------------------------------------------------------------------
dir_path, fifo_path, cwd_path = (os.path.join(top, n) for n in ("dir", "fifo", "cwd"))
os.mkdir(dir_path)
d = os.open(dir_path, os.O_RDONLY | os.O_DIRECTORY)
os.rmdir(dir_path)
os.mkfifo(fifo_path, 0o600)
fifo_rw = os.open(fifo_path, os.O_RDWR | os.O_NONBLOCK)
fifo_r = os.open(f"/proc/self/fd/{fifo_rw}", os.O_RDONLY | os.O_NONBLOCK)
os.unlink(fifo_path)
os.write(fifo_rw, b"fifo-data")
os.mkdir(cwd_path)
os.chdir(cwd_path)
os.rmdir(cwd_path)

# --- the child -------------------------------------------------------------------------------------------
ask_r, ask_w = os.pipe()
say_r, say_w = os.pipe()
child = os.fork()
if child == 0:
    ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: it goes with the parent (kept by a restore)
    c = os.open(f"/proc/self/fd/{a}", os.O_RDWR)  # its own open file on the same inode
    os.unlink(sparse)
    os.write(say_w, b"k")
    while True:
        n = int(os.read(ask_r, 16) or b"0")
        bad = []
        if os.fstat(c).st_ino != os.fstat(a).st_ino or os.fstat(c).st_nlink != 0:
            bad.append("child: its descriptor is on another inode")
        if os.pread(c, 6, 100) != f"p{n:05d}".encode():
            bad.append(f"child: reads {os.pread(c, 6, 100)!r} where the parent wrote")
        os.pwrite(c, f"c{n:05d}".encode(), 200)
        if m_shared[:6] != f"s{n:05d}".encode():
            bad.append(f"child: its shared mapping reads {m_shared[:6]!r}")
        os.write(say_w, ("; ".join(bad) or "ok").encode())
os.read(say_r, 1)  # the child has its descriptor and removed the name
os.utime(a, ns=TIMES)


def check(n: int) -> list[str]:
    bad = []
    st = os.fstat(a)
    if (st.st_atime_ns, st.st_mtime_ns) != TIMES:
        bad.append(f"times {st.st_atime_ns} {st.st_mtime_ns}")
    if (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_nlink, st.st_size) != (0o640, *OWNER, 0, SIZE):
        bad.append(f"sparse: mode {st.st_mode:o} owner {st.st_uid}:{st.st_gid} nlink {st.st_nlink} size {st.st_size}")
    if os.fstat(b).st_ino != st.st_ino:
        bad.append("the two open() of one file are two files")
    if data_ranges(a) != RANGES:
        bad.append(f"data ranges {data_ranges(a)}, were {RANGES}")
    for off, data in PIECES.items():
        if os.pread(b, len(data), off) != data:
            bad.append(f"sparse at {off}: {os.pread(b, len(data), off)!r}")
    os.pwrite(a, f"p{n:05d}".encode(), 100)
    if os.pread(b, 6, 100) != f"p{n:05d}".encode() or window[100:106] != f"p{n:05d}".encode():
        bad.append("a write through one descriptor is not seen through the other or the mapping")
    m_shared[:6] = f"s{n:05d}".encode()
    os.write(ask_w, str(n).encode())
    said = os.read(say_r, 4096).decode()
    if said != "ok":
        bad.append(said)
    if os.pread(a, 6, 200) != f"c{n:05d}".encode():
        bad.append("the child's write is not seen")
    if m_private[:6] != f"s{n:05d}".encode():
        bad.append(f"private mapping's unwritten page: {m_private[:6]!r}")
    if m_private[PAGE:PAGE + 7] != b"private" or m_private[2 * PAGE:2 * PAGE + 1] != b"C":
        bad.append(f"private mapping's pages: {m_private[PAGE:PAGE + 7]!r} {m_private[2 * PAGE:2 * PAGE + 1]!r}")
    if m_lib[:6] != b"OLDLIB" or open(lib, "rb").read(6) != b"NEWLIB":
        bad.append(f"library: mapped {m_lib[:6]!r}, on disk {open(lib, 'rb').read(6)!r}")
    if m_zero[:4] != b"zero" or m_zero[PAGE:PAGE + 4] != bytes(4):
        bad.append(f"/dev/zero mapping {m_zero[:4]!r} {m_zero[PAGE:PAGE + 4]!r}")
    if fcntl.fcntl(tmpf, fcntl.F_GETFL) != TMPF_FLAGS or os.lseek(tmpf, 0, os.SEEK_CUR) != 5:
        bad.append(f"O_TMPFILE file: flags {fcntl.fcntl(tmpf, fcntl.F_GETFL):o} (were {TMPF_FLAGS:o}), "
                   f"offset {os.lseek(tmpf, 0, os.SEEK_CUR)}")
    os.pwrite(tmpf, f"t{n:05d}".encode(), PAGE)
    if m_tmp[PAGE:PAGE + 6] != f"t{n:05d}".encode() or m_tmp[:1] != b"T":
        bad.append(f"O_TMPFILE mapping reads {m_tmp[PAGE:PAGE + 6]!r}")
    if data_ranges(shm) != SHM_RANGES or m_shm[512 << 10:(512 << 10) + 8] != b"shm-data":
        bad.append(f"/dev/shm file: data ranges {data_ranges(shm)} (were {SHM_RANGES})")
    os.pwrite(shm, f"m{n:05d}".encode(), 512 << 10)
    if m_shm[512 << 10:(512 << 10) + 6] != f"m{n:05d}".encode():
        bad.append("/dev/shm file: a write through its fd is not in its mapping")
    os.pwrite(shm, b"shm-da", 512 << 10)
    maps = open("/proc/self/maps").read()
    for want in (f"{lib} (deleted)", f"{shared_path} (deleted)", f"{sparse} (deleted)", "/dev/zero\n"):
        if want not in maps:
            bad.append(f"maps lacks {want!r}")
    for what, path, fd_ in (("cwd", ".", None), ("directory", None, d)):
        st = os.stat(path) if fd_ is None else os.fstat(fd_)
        if not stat.S_ISDIR(st.st_mode) or st.st_nlink != 0:
            bad.append(f"{what}: mode {st.st_mode:o} nlink {st.st_nlink}")
    if os.readlink("/proc/self/cwd") != f"{cwd_path} (deleted)":
        bad.append(f"cwd {os.readlink('/proc/self/cwd')}")
    if os.fstat(fifo_r).st_ino != os.fstat(fifo_rw).st_ino or not stat.S_ISFIFO(os.fstat(fifo_r).st_mode):
        bad.append("the FIFO's two descriptors are two FIFOs")
    got = os.read(fifo_r, 100)
    os.write(fifo_rw, got)
    if got != b"fifo-data":
        bad.append(f"FIFO holds {got!r}")
    os.utime(a, ns=TIMES)  # our reads and writes touched them
    return bad


rounds = 0


def on_signal(*_: object) -> None:
    global rounds
    rounds += 1
    bad = check(rounds)
    print(f"FAIL {'; '.join(bad)}" if bad else f"PASS ghosts round={rounds}", flush=True)


signal.signal(signal.SIGUSR1, on_signal)
print(f"READY pid={os.getpid()} child={child}", flush=True)
while True:
    time.sleep(1)
