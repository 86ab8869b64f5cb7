"""A process under a seccomp filter (allow everything: only its presence matters).  Prints ``READY pid=PID``."""

import ctypes
import os
import struct
import time

PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 38, 22, 2
SECCOMP_RET_ALLOW = 0x7FFF0000
insn = struct.pack("<HBBI", 0x06, 0, 0, SECCOMP_RET_ALLOW)  # BPF_RET | BPF_K
buf = ctypes.create_string_buffer(insn)
prog = struct.pack("<HxxxxxxQ", 1, ctypes.addressof(buf))  # struct sock_fprog {len; filter *}
pbuf = ctypes.create_string_buffer(prog)
libc = ctypes.CDLL(None, use_errno=True)
libc.prctl.argtypes = [ctypes.c_int] + [ctypes.c_ulong] * 4  # the program's address is 64-bit
if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) or libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER,
                                                              ctypes.addressof(pbuf), 0, 0):
    raise OSError(ctypes.get_errno(), "prctl")
print(f"READY pid={os.getpid()}", flush=True)
while True:
    time.sleep(1)
