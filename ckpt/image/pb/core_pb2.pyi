# Regenerate with `python -m ckpt.image.protogen` (or `make proto`); do not edit.
from ckpt.image.pb import common_pb2 as _common_pb2
from ckpt.image.pb import options_pb2 as _options_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ThreadCore(_message.Message):
    __slots__ = ("tid", "comm", "regs", "xstate", "sigmask", "rseq", "robust_list", "clear_child_tid", "sigaltstack", "syscall", "pending", "timer_slack_ns", "sched")
    TID_FIELD_NUMBER: _ClassVar[int]
    COMM_FIELD_NUMBER: _ClassVar[int]
    REGS_FIELD_NUMBER: _ClassVar[int]
    XSTATE_FIELD_NUMBER: _ClassVar[int]
    SIGMASK_FIELD_NUMBER: _ClassVar[int]
    RSEQ_FIELD_NUMBER: _ClassVar[int]
    ROBUST_LIST_FIELD_NUMBER: _ClassVar[int]
    CLEAR_CHILD_TID_FIELD_NUMBER: _ClassVar[int]
    SIGALTSTACK_FIELD_NUMBER: _ClassVar[int]
    SYSCALL_FIELD_NUMBER: _ClassVar[int]
    PENDING_FIELD_NUMBER: _ClassVar[int]
    TIMER_SLACK_NS_FIELD_NUMBER: _ClassVar[int]
    SCHED_FIELD_NUMBER: _ClassVar[int]
    tid: int
    comm: str
    regs: UserRegsX86_64
    xstate: bytes
    sigmask: int
    rseq: Rseq
    robust_list: RobustList
    clear_child_tid: int
    sigaltstack: SigAltStack
    syscall: SyscallState
    pending: _containers.RepeatedCompositeFieldContainer[_common_pb2.PendingSignal]
    timer_slack_ns: int
    sched: SchedState
    def __init__(self, tid: _Optional[int] = ..., comm: _Optional[str] = ..., regs: _Optional[_Union[UserRegsX86_64, _Mapping]] = ..., xstate: _Optional[bytes] = ..., sigmask: _Optional[int] = ..., rseq: _Optional[_Union[Rseq, _Mapping]] = ..., robust_list: _Optional[_Union[RobustList, _Mapping]] = ..., clear_child_tid: _Optional[int] = ..., sigaltstack: _Optional[_Union[SigAltStack, _Mapping]] = ..., syscall: _Optional[_Union[SyscallState, _Mapping]] = ..., pending: _Optional[_Iterable[_Union[_common_pb2.PendingSignal, _Mapping]]] = ..., timer_slack_ns: _Optional[int] = ..., sched: _Optional[_Union[SchedState, _Mapping]] = ...) -> None: ...

class UserRegsX86_64(_message.Message):
    __slots__ = ("r15", "r14", "r13", "r12", "rbp", "rbx", "r11", "r10", "r9", "r8", "rax", "rcx", "rdx", "rsi", "rdi", "orig_rax", "rip", "cs", "eflags", "rsp", "ss", "fs_base", "gs_base", "ds", "es", "fs", "gs")
    R15_FIELD_NUMBER: _ClassVar[int]
    R14_FIELD_NUMBER: _ClassVar[int]
    R13_FIELD_NUMBER: _ClassVar[int]
    R12_FIELD_NUMBER: _ClassVar[int]
    RBP_FIELD_NUMBER: _ClassVar[int]
    RBX_FIELD_NUMBER: _ClassVar[int]
    R11_FIELD_NUMBER: _ClassVar[int]
    R10_FIELD_NUMBER: _ClassVar[int]
    R9_FIELD_NUMBER: _ClassVar[int]
    R8_FIELD_NUMBER: _ClassVar[int]
    RAX_FIELD_NUMBER: _ClassVar[int]
    RCX_FIELD_NUMBER: _ClassVar[int]
    RDX_FIELD_NUMBER: _ClassVar[int]
    RSI_FIELD_NUMBER: _ClassVar[int]
    RDI_FIELD_NUMBER: _ClassVar[int]
    ORIG_RAX_FIELD_NUMBER: _ClassVar[int]
    RIP_FIELD_NUMBER: _ClassVar[int]
    CS_FIELD_NUMBER: _ClassVar[int]
    EFLAGS_FIELD_NUMBER: _ClassVar[int]
    RSP_FIELD_NUMBER: _ClassVar[int]
    SS_FIELD_NUMBER: _ClassVar[int]
    FS_BASE_FIELD_NUMBER: _ClassVar[int]
    GS_BASE_FIELD_NUMBER: _ClassVar[int]
    DS_FIELD_NUMBER: _ClassVar[int]
    ES_FIELD_NUMBER: _ClassVar[int]
    FS_FIELD_NUMBER: _ClassVar[int]
    GS_FIELD_NUMBER: _ClassVar[int]
    r15: int
    r14: int
    r13: int
    r12: int
    rbp: int
    rbx: int
    r11: int
    r10: int
    r9: int
    r8: int
    rax: int
    rcx: int
    rdx: int
    rsi: int
    rdi: int
    orig_rax: int
    rip: int
    cs: int
    eflags: int
    rsp: int
    ss: int
    fs_base: int
    gs_base: int
    ds: int
    es: int
    fs: int
    gs: int
    def __init__(self, r15: _Optional[int] = ..., r14: _Optional[int] = ..., r13: _Optional[int] = ..., r12: _Optional[int] = ..., rbp: _Optional[int] = ..., rbx: _Optional[int] = ..., r11: _Optional[int] = ..., r10: _Optional[int] = ..., r9: _Optional[int] = ..., r8: _Optional[int] = ..., rax: _Optional[int] = ..., rcx: _Optional[int] = ..., rdx: _Optional[int] = ..., rsi: _Optional[int] = ..., rdi: _Optional[int] = ..., orig_rax: _Optional[int] = ..., rip: _Optional[int] = ..., cs: _Optional[int] = ..., eflags: _Optional[int] = ..., rsp: _Optional[int] = ..., ss: _Optional[int] = ..., fs_base: _Optional[int] = ..., gs_base: _Optional[int] = ..., ds: _Optional[int] = ..., es: _Optional[int] = ..., fs: _Optional[int] = ..., gs: _Optional[int] = ...) -> None: ...

class Rseq(_message.Message):
    __slots__ = ("abi_pointer", "size", "signature", "flags")
    ABI_POINTER_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    FLAGS_FIELD_NUMBER: _ClassVar[int]
    abi_pointer: int
    size: int
    signature: int
    flags: int
    def __init__(self, abi_pointer: _Optional[int] = ..., size: _Optional[int] = ..., signature: _Optional[int] = ..., flags: _Optional[int] = ...) -> None: ...

class RobustList(_message.Message):
    __slots__ = ("head", "len")
    HEAD_FIELD_NUMBER: _ClassVar[int]
    LEN_FIELD_NUMBER: _ClassVar[int]
    head: int
    len: int
    def __init__(self, head: _Optional[int] = ..., len: _Optional[int] = ...) -> None: ...

class SigAltStack(_message.Message):
    __slots__ = ("sp", "flags", "size")
    SP_FIELD_NUMBER: _ClassVar[int]
    FLAGS_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    sp: int
    flags: int
    size: int
    def __init__(self, sp: _Optional[int] = ..., flags: _Optional[int] = ..., size: _Optional[int] = ...) -> None: ...

class SyscallState(_message.Message):
    __slots__ = ("nr", "result", "resume", "reissue")
    class Resume(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        RESUME_UNSPECIFIED: _ClassVar[SyscallState.Resume]
        AS_IS: _ClassVar[SyscallState.Resume]
        RESTART: _ClassVar[SyscallState.Resume]
        EINTR: _ClassVar[SyscallState.Resume]
        REISSUE: _ClassVar[SyscallState.Resume]
    RESUME_UNSPECIFIED: SyscallState.Resume
    AS_IS: SyscallState.Resume
    RESTART: SyscallState.Resume
    EINTR: SyscallState.Resume
    REISSUE: SyscallState.Resume
    NR_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    RESUME_FIELD_NUMBER: _ClassVar[int]
    REISSUE_FIELD_NUMBER: _ClassVar[int]
    nr: int
    result: int
    resume: SyscallState.Resume
    reissue: int
    def __init__(self, nr: _Optional[int] = ..., result: _Optional[int] = ..., resume: _Optional[_Union[SyscallState.Resume, str]] = ..., reissue: _Optional[int] = ...) -> None: ...

class SchedState(_message.Message):
    __slots__ = ("policy", "nice", "rt_priority", "cpu_affinity", "reset_on_fork")
    POLICY_FIELD_NUMBER: _ClassVar[int]
    NICE_FIELD_NUMBER: _ClassVar[int]
    RT_PRIORITY_FIELD_NUMBER: _ClassVar[int]
    CPU_AFFINITY_FIELD_NUMBER: _ClassVar[int]
    RESET_ON_FORK_FIELD_NUMBER: _ClassVar[int]
    policy: int
    nice: int
    rt_priority: int
    cpu_affinity: bytes
    reset_on_fork: bool
    def __init__(self, policy: _Optional[int] = ..., nice: _Optional[int] = ..., rt_priority: _Optional[int] = ..., cpu_affinity: _Optional[bytes] = ..., reset_on_fork: _Optional[bool] = ...) -> None: ...
