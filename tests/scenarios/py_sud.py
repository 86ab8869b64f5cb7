"""A thread with syscall user dispatch on (PR_SET_SYSCALL_USER_DISPATCH), its selector letting every call through.

Prints ``READY`` and sleeps; a dump must refuse it, naming the attribute (ckpt does not restore it).
"""

import ctypes
import time

PR_SET_SYSCALL_USER_DISPATCH, PR_SYS_DISPATCH_ON = 59, 1
libc = ctypes.CDLL(None, use_errno=True)
selector = ctypes.c_char(b"\0")  # SYSCALL_DISPATCH_FILTER_ALLOW
if libc.prctl(PR_SET_SYSCALL_USER_DISPATCH, PR_SYS_DISPATCH_ON, ctypes.c_ulong(0), ctypes.c_ulong(0),
              ctypes.byref(selector)):
    print(f"FAIL setup: prctl: errno {ctypes.get_errno()}", flush=True)
    raise SystemExit(1)
print("READY", flush=True)
while True:
    time.sleep(1)
