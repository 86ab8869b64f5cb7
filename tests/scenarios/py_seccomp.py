"""A Python program under a seccomp filter it installed through ctypes: getppid fails with EPERM.

usage: py_seccomp.py [notify | setuid]
Prints ``READY pid=PID``; on each SIGUSR1 ``PASS getppid=EPERM`` when getppid is still refused (and getpid
works), else ``FAIL why``.  ``notify``: the filter answers getppid with SECCOMP_RET_USER_NOTIF instead,
installed with SECCOMP_FILTER_FLAG_NEW_LISTENER (its listener closed again: only the filter matters).
``setuid``: installed as root without no_new_privs (CAP_SYS_ADMIN allows it), then the process becomes
uid/gid 65534 (nobody), with neither: it could not install that filter any more.
"""

import ctypes
import errno
import os
import signal
import struct
import sys

PR_SET_NO_NEW_PRIVS, NR_SECCOMP, NR_GETPPID = 38, 317, 110
SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_NEW_LISTENER = 1, 1 << 3
SECCOMP_RET_ALLOW, SECCOMP_RET_ERRNO, SECCOMP_RET_USER_NOTIF = 0x7FFF0000, 0x00050000, 0x7FC00000
BPF_LD_W_ABS, BPF_JEQ_K, BPF_RET_K = 0x20, 0x15, 0x06

notify = sys.argv[1:] == ["notify"]
setuid = sys.argv[1:] == ["setuid"]
deny = SECCOMP_RET_USER_NOTIF if notify else SECCOMP_RET_ERRNO | errno.EPERM
insns = [(BPF_LD_W_ABS, 0, 0, 0),             # A = seccomp_data.nr
         (BPF_JEQ_K, 0, 1, NR_GETPPID),       # getppid?
         (BPF_RET_K, 0, 0, deny),
         (BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW)]
code = ctypes.create_string_buffer(b"".join(struct.pack("<HBBI", *i) for i in insns))
prog = ctypes.create_string_buffer(struct.pack("<HxxxxxxQ", len(insns), ctypes.addressof(code)))  # sock_fprog
libc = ctypes.CDLL(None, use_errno=True)
libc.prctl.argtypes = [ctypes.c_int] + [ctypes.c_ulong] * 4
libc.syscall.argtypes = [ctypes.c_long, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
libc.syscall.restype = ctypes.c_long
if not setuid and libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0):
    raise OSError(ctypes.get_errno(), "prctl")
listener = libc.syscall(NR_SECCOMP, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_NEW_LISTENER if notify else 0,
                        ctypes.addressof(prog))
if listener < 0:
    raise OSError(ctypes.get_errno(), "seccomp")
if notify:
    os.close(listener)
if setuid:
    os.setgroups([])
    os.setresgid(65534, 65534, 65534)
    os.setresuid(65534, 65534, 65534)


def check(_sig: int, _frame: object) -> None:
    ctypes.set_errno(0)
    got = libc.syscall(NR_GETPPID, 0, 0, 0)
    err = ctypes.get_errno()
    if got == -1 and err == errno.EPERM and os.getpid() > 0:
        print("PASS getppid=EPERM", flush=True)
    else:
        print(f"FAIL getppid gave {got} ({os.strerror(err)})", flush=True)


signal.signal(signal.SIGUSR1, check)
print(f"READY pid={os.getpid()}", flush=True)
while True:
    signal.pause()
