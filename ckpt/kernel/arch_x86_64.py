"""x86_64 specifics: syscall numbers and the ptrace register layout.

Numbers are from arch/x86/entry/syscalls/syscall_64.tbl; only those ckpt uses.
"""

from __future__ import annotations

import ctypes
import enum

__all__ = ["NR", "user_regs_struct", "SYSCALL_INSN", "INT3", "PAGE_SIZE", "HPAGE_PMD_SIZE", "TASK_SIZE_MAX"]

PAGE_SIZE = 4096
#: What one page-middle-directory entry maps: the size of a transparent huge page.
HPAGE_PMD_SIZE = 2 << 20
#: Highest user address + 1 that munmap/PAGEMAP_SCAN accept (1 << 47 minus a page).
TASK_SIZE_MAX = 0x7FFFFFFFF000
#: Machine code of the ``syscall`` instruction.
SYSCALL_INSN = b"\x0f\x05"
INT3 = b"\xcc"


class NR(enum.IntEnum):
    """Syscall numbers (x86_64)."""

    read = 0
    write = 1
    open = 2
    close = 3
    stat = 4
    fstat = 5
    poll = 7
    lseek = 8
    mmap = 9
    mprotect = 10
    munmap = 11
    brk = 12
    rt_sigaction = 13
    rt_sigprocmask = 14
    rt_sigreturn = 15
    ioctl = 16
    pread64 = 17
    pwrite64 = 18
    select = 23
    mremap = 25
    madvise = 28
    shmget = 29
    shmat = 30
    shmctl = 31
    dup = 32
    dup2 = 33
    pause = 34
    nanosleep = 35
    getitimer = 36
    setitimer = 38
    getpid = 39
    socket = 41
    connect = 42
    accept = 43
    recvfrom = 45
    recvmsg = 47
    shutdown = 48
    bind = 49
    listen = 50
    socketpair = 53
    setsockopt = 54
    clone = 56
    fork = 57
    execve = 59
    exit = 60
    wait4 = 61
    kill = 62
    uname = 63
    shmdt = 67
    fcntl = 72
    flock = 73
    ftruncate = 77
    getcwd = 79
    chdir = 80
    fchdir = 81
    rename = 82
    unlink = 87
    umask = 95
    gettimeofday = 96
    getrlimit = 97
    getuid = 102
    getgid = 104
    setuid = 105
    setgid = 106
    geteuid = 107
    getegid = 108
    setpgid = 109
    getppid = 110
    setsid = 112
    setreuid = 113
    setregid = 114
    getgroups = 115
    setgroups = 116
    setresuid = 117
    getresuid = 118
    setresgid = 119
    getresgid = 120
    getpgid = 121
    setfsuid = 122
    setfsgid = 123
    getsid = 124
    capget = 125
    capset = 126
    rt_sigpending = 127
    rt_sigtimedwait = 128
    rt_sigqueueinfo = 129
    rt_sigsuspend = 130
    sigaltstack = 131
    personality = 135
    getpriority = 140
    setpriority = 141
    sched_setparam = 142
    sched_getparam = 143
    sched_setscheduler = 144
    sched_getscheduler = 145
    mlockall = 151
    prctl = 157
    arch_prctl = 158
    setrlimit = 160
    chroot = 161
    gettid = 186
    tkill = 200
    time = 201
    futex = 202
    sched_setaffinity = 203
    sched_getaffinity = 204
    io_setup = 206
    io_destroy = 207
    io_getevents = 208
    io_submit = 209
    getdents64 = 217
    set_tid_address = 218
    restart_syscall = 219
    timer_create = 222
    timer_settime = 223
    timer_gettime = 224
    timer_getoverrun = 225
    timer_delete = 226
    clock_gettime = 228
    clock_getres = 229
    clock_nanosleep = 230
    exit_group = 231
    epoll_wait = 232
    epoll_ctl = 233
    tgkill = 234
    waitid = 247
    inotify_add_watch = 254
    inotify_rm_watch = 255
    openat = 257
    fchownat = 260
    unlinkat = 263
    fchmodat = 268
    pselect6 = 270
    ppoll = 271
    unshare = 272
    set_robust_list = 273
    get_robust_list = 274
    epoll_pwait = 281
    timerfd_create = 283
    timerfd_settime = 286
    timerfd_gettime = 287
    accept4 = 288
    signalfd4 = 289
    eventfd2 = 290
    epoll_create1 = 291
    dup3 = 292
    pipe2 = 293
    inotify_init1 = 294
    rt_tgsigqueueinfo = 297
    prlimit64 = 302
    open_by_handle_at = 304
    setns = 308
    getcpu = 309
    process_vm_readv = 310
    process_vm_writev = 311
    kcmp = 312
    renameat2 = 316
    seccomp = 317
    getrandom = 318
    memfd_create = 319
    userfaultfd = 323
    membarrier = 324
    mlock2 = 325
    rseq = 334
    pidfd_send_signal = 424
    pidfd_open = 434
    clone3 = 435
    close_range = 436
    pidfd_getfd = 438
    process_madvise = 440
    epoll_pwait2 = 441
    mseal = 462


class user_regs_struct(ctypes.Structure):
    """``struct user_regs_struct`` from <sys/user.h> (PTRACE_GETREGS layout)."""

    _fields_ = [
        (name, ctypes.c_ulonglong)
        for name in (
            "r15", "r14", "r13", "r12", "rbp", "rbx", "r11", "r10", "r9", "r8",
            "rax", "rcx", "rdx", "rsi", "rdi", "orig_rax", "rip", "cs", "eflags",
            "rsp", "ss", "fs_base", "gs_base", "ds", "es", "fs", "gs",
        )
    ]

    def copy(self) -> "user_regs_struct":
        new = user_regs_struct()
        ctypes.memmove(ctypes.byref(new), ctypes.byref(self), ctypes.sizeof(self))
        return new

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name, _ in self._fields_}

    @classmethod
    def from_dict(cls, d: dict[str, int]) -> "user_regs_struct":
        r = cls()
        for name, _ in cls._fields_:
            setattr(r, name, d.get(name, 0))
        return r

    def to_bytes(self) -> bytes:
        return bytes(self)


#: Argument registers of the syscall ABI, in order.
SYSCALL_ARG_REGS = ("rdi", "rsi", "rdx", "r10", "r8", "r9")
