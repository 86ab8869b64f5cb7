# Regenerate with `python -m ckpt.image.protogen` (or `make proto`); do not edit.
from ckpt.image.pb import common_pb2 as _common_pb2
from ckpt.image.pb import options_pb2 as _options_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ProcessEntry(_message.Message):
    __slots__ = ("pid", "ppid", "pgid", "sid", "comm", "creds", "rlimits", "umask", "cwd", "root", "personality", "sigactions", "shared_pending", "start_time", "exit_signal", "oom_score_adj", "cgroup", "flags", "timers", "observed", "ctty", "cwd_ghost", "root_ghost", "seccomp", "job_stop", "attrs", "thread_creds")
    PID_FIELD_NUMBER: _ClassVar[int]
    PPID_FIELD_NUMBER: _ClassVar[int]
    PGID_FIELD_NUMBER: _ClassVar[int]
    SID_FIELD_NUMBER: _ClassVar[int]
    COMM_FIELD_NUMBER: _ClassVar[int]
    CREDS_FIELD_NUMBER: _ClassVar[int]
    RLIMITS_FIELD_NUMBER: _ClassVar[int]
    UMASK_FIELD_NUMBER: _ClassVar[int]
    CWD_FIELD_NUMBER: _ClassVar[int]
    ROOT_FIELD_NUMBER: _ClassVar[int]
    PERSONALITY_FIELD_NUMBER: _ClassVar[int]
    SIGACTIONS_FIELD_NUMBER: _ClassVar[int]
    SHARED_PENDING_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    EXIT_SIGNAL_FIELD_NUMBER: _ClassVar[int]
    OOM_SCORE_ADJ_FIELD_NUMBER: _ClassVar[int]
    CGROUP_FIELD_NUMBER: _ClassVar[int]
    FLAGS_FIELD_NUMBER: _ClassVar[int]
    TIMERS_FIELD_NUMBER: _ClassVar[int]
    OBSERVED_FIELD_NUMBER: _ClassVar[int]
    CTTY_FIELD_NUMBER: _ClassVar[int]
    CWD_GHOST_FIELD_NUMBER: _ClassVar[int]
    ROOT_GHOST_FIELD_NUMBER: _ClassVar[int]
    SECCOMP_FIELD_NUMBER: _ClassVar[int]
    JOB_STOP_FIELD_NUMBER: _ClassVar[int]
    ATTRS_FIELD_NUMBER: _ClassVar[int]
    THREAD_CREDS_FIELD_NUMBER: _ClassVar[int]
    pid: int
    ppid: int
    pgid: int
    sid: int
    comm: str
    creds: Creds
    rlimits: _containers.RepeatedCompositeFieldContainer[Rlimit]
    umask: int
    cwd: str
    root: str
    personality: int
    sigactions: _containers.RepeatedCompositeFieldContainer[SigAction]
    shared_pending: _containers.RepeatedCompositeFieldContainer[_common_pb2.PendingSignal]
    start_time: int
    exit_signal: int
    oom_score_adj: int
    cgroup: str
    flags: ProcessFlags
    timers: Timers
    observed: Observed
    ctty: Ctty
    cwd_ghost: _common_pb2.Ghost
    root_ghost: _common_pb2.Ghost
    seccomp: Seccomp
    job_stop: JobStop
    attrs: ProcAttrs
    thread_creds: _containers.RepeatedCompositeFieldContainer[ThreadCreds]
    def __init__(self, pid: _Optional[int] = ..., ppid: _Optional[int] = ..., pgid: _Optional[int] = ..., sid: _Optional[int] = ..., comm: _Optional[str] = ..., creds: _Optional[_Union[Creds, _Mapping]] = ..., rlimits: _Optional[_Iterable[_Union[Rlimit, _Mapping]]] = ..., umask: _Optional[int] = ..., cwd: _Optional[str] = ..., root: _Optional[str] = ..., personality: _Optional[int] = ..., sigactions: _Optional[_Iterable[_Union[SigAction, _Mapping]]] = ..., shared_pending: _Optional[_Iterable[_Union[_common_pb2.PendingSignal, _Mapping]]] = ..., start_time: _Optional[int] = ..., exit_signal: _Optional[int] = ..., oom_score_adj: _Optional[int] = ..., cgroup: _Optional[str] = ..., flags: _Optional[_Union[ProcessFlags, _Mapping]] = ..., timers: _Optional[_Union[Timers, _Mapping]] = ..., observed: _Optional[_Union[Observed, _Mapping]] = ..., ctty: _Optional[_Union[Ctty, _Mapping]] = ..., cwd_ghost: _Optional[_Union[_common_pb2.Ghost, _Mapping]] = ..., root_ghost: _Optional[_Union[_common_pb2.Ghost, _Mapping]] = ..., seccomp: _Optional[_Union[Seccomp, _Mapping]] = ..., job_stop: _Optional[_Union[JobStop, _Mapping]] = ..., attrs: _Optional[_Union[ProcAttrs, _Mapping]] = ..., thread_creds: _Optional[_Iterable[_Union[ThreadCreds, _Mapping]]] = ...) -> None: ...

class ThreadCreds(_message.Message):
    __slots__ = ("tid", "creds", "no_new_privs")
    TID_FIELD_NUMBER: _ClassVar[int]
    CREDS_FIELD_NUMBER: _ClassVar[int]
    NO_NEW_PRIVS_FIELD_NUMBER: _ClassVar[int]
    tid: int
    creds: Creds
    no_new_privs: bool
    def __init__(self, tid: _Optional[int] = ..., creds: _Optional[_Union[Creds, _Mapping]] = ..., no_new_privs: _Optional[bool] = ...) -> None: ...

class JobStop(_message.Message):
    __slots__ = ("signal", "unreported")
    SIGNAL_FIELD_NUMBER: _ClassVar[int]
    UNREPORTED_FIELD_NUMBER: _ClassVar[int]
    signal: int
    unreported: bool
    def __init__(self, signal: _Optional[int] = ..., unreported: _Optional[bool] = ...) -> None: ...

class ProcAttrs(_message.Message):
    __slots__ = ("has_loginuid", "loginuid", "membarrier", "mdwe", "threads")
    HAS_LOGINUID_FIELD_NUMBER: _ClassVar[int]
    LOGINUID_FIELD_NUMBER: _ClassVar[int]
    MEMBARRIER_FIELD_NUMBER: _ClassVar[int]
    MDWE_FIELD_NUMBER: _ClassVar[int]
    THREADS_FIELD_NUMBER: _ClassVar[int]
    has_loginuid: bool
    loginuid: int
    membarrier: int
    mdwe: int
    threads: _containers.RepeatedCompositeFieldContainer[ThreadAttrs]
    def __init__(self, has_loginuid: _Optional[bool] = ..., loginuid: _Optional[int] = ..., membarrier: _Optional[int] = ..., mdwe: _Optional[int] = ..., threads: _Optional[_Iterable[_Union[ThreadAttrs, _Mapping]]] = ...) -> None: ...

class ThreadAttrs(_message.Message):
    __slots__ = ("tid", "tsc", "mce_kill", "spec_store_bypass", "spec_indirect_branch")
    TID_FIELD_NUMBER: _ClassVar[int]
    TSC_FIELD_NUMBER: _ClassVar[int]
    MCE_KILL_FIELD_NUMBER: _ClassVar[int]
    SPEC_STORE_BYPASS_FIELD_NUMBER: _ClassVar[int]
    SPEC_INDIRECT_BRANCH_FIELD_NUMBER: _ClassVar[int]
    tid: int
    tsc: int
    mce_kill: int
    spec_store_bypass: int
    spec_indirect_branch: int
    def __init__(self, tid: _Optional[int] = ..., tsc: _Optional[int] = ..., mce_kill: _Optional[int] = ..., spec_store_bypass: _Optional[int] = ..., spec_indirect_branch: _Optional[int] = ...) -> None: ...

class Seccomp(_message.Message):
    __slots__ = ("filters", "threads")
    FILTERS_FIELD_NUMBER: _ClassVar[int]
    THREADS_FIELD_NUMBER: _ClassVar[int]
    filters: _containers.RepeatedCompositeFieldContainer[SeccompFilter]
    threads: _containers.RepeatedCompositeFieldContainer[ThreadSeccomp]
    def __init__(self, filters: _Optional[_Iterable[_Union[SeccompFilter, _Mapping]]] = ..., threads: _Optional[_Iterable[_Union[ThreadSeccomp, _Mapping]]] = ...) -> None: ...

class SeccompFilter(_message.Message):
    __slots__ = ("program", "flags", "parent")
    PROGRAM_FIELD_NUMBER: _ClassVar[int]
    FLAGS_FIELD_NUMBER: _ClassVar[int]
    PARENT_FIELD_NUMBER: _ClassVar[int]
    program: bytes
    flags: int
    parent: int
    def __init__(self, program: _Optional[bytes] = ..., flags: _Optional[int] = ..., parent: _Optional[int] = ...) -> None: ...

class ThreadSeccomp(_message.Message):
    __slots__ = ("tid", "mode", "filter")
    TID_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    tid: int
    mode: int
    filter: int
    def __init__(self, tid: _Optional[int] = ..., mode: _Optional[int] = ..., filter: _Optional[int] = ...) -> None: ...

class Ctty(_message.Message):
    __slots__ = ("index", "foreground")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    FOREGROUND_FIELD_NUMBER: _ClassVar[int]
    index: int
    foreground: int
    def __init__(self, index: _Optional[int] = ..., foreground: _Optional[int] = ...) -> None: ...

class Observed(_message.Message):
    __slots__ = ("sections",)
    SECTIONS_FIELD_NUMBER: _ClassVar[int]
    sections: _containers.RepeatedCompositeFieldContainer[ObservedSection]
    def __init__(self, sections: _Optional[_Iterable[_Union[ObservedSection, _Mapping]]] = ...) -> None: ...

class ObservedSection(_message.Message):
    __slots__ = ("name", "lines")
    NAME_FIELD_NUMBER: _ClassVar[int]
    LINES_FIELD_NUMBER: _ClassVar[int]
    name: str
    lines: _containers.RepeatedCompositeFieldContainer[ObservedLine]
    def __init__(self, name: _Optional[str] = ..., lines: _Optional[_Iterable[_Union[ObservedLine, _Mapping]]] = ...) -> None: ...

class ObservedLine(_message.Message):
    __slots__ = ("key", "value")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    key: str
    value: str
    def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...

class Creds(_message.Message):
    __slots__ = ("uid", "euid", "suid", "fsuid", "gid", "egid", "sgid", "fsgid", "groups", "cap_inheritable", "cap_permitted", "cap_effective", "cap_bounding", "cap_ambient", "securebits")
    UID_FIELD_NUMBER: _ClassVar[int]
    EUID_FIELD_NUMBER: _ClassVar[int]
    SUID_FIELD_NUMBER: _ClassVar[int]
    FSUID_FIELD_NUMBER: _ClassVar[int]
    GID_FIELD_NUMBER: _ClassVar[int]
    EGID_FIELD_NUMBER: _ClassVar[int]
    SGID_FIELD_NUMBER: _ClassVar[int]
    FSGID_FIELD_NUMBER: _ClassVar[int]
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    CAP_INHERITABLE_FIELD_NUMBER: _ClassVar[int]
    CAP_PERMITTED_FIELD_NUMBER: _ClassVar[int]
    CAP_EFFECTIVE_FIELD_NUMBER: _ClassVar[int]
    CAP_BOUNDING_FIELD_NUMBER: _ClassVar[int]
    CAP_AMBIENT_FIELD_NUMBER: _ClassVar[int]
    SECUREBITS_FIELD_NUMBER: _ClassVar[int]
    uid: int
    euid: int
    suid: int
    fsuid: int
    gid: int
    egid: int
    sgid: int
    fsgid: int
    groups: _containers.RepeatedScalarFieldContainer[int]
    cap_inheritable: int
    cap_permitted: int
    cap_effective: int
    cap_bounding: int
    cap_ambient: int
    securebits: int
    def __init__(self, uid: _Optional[int] = ..., euid: _Optional[int] = ..., suid: _Optional[int] = ..., fsuid: _Optional[int] = ..., gid: _Optional[int] = ..., egid: _Optional[int] = ..., sgid: _Optional[int] = ..., fsgid: _Optional[int] = ..., groups: _Optional[_Iterable[int]] = ..., cap_inheritable: _Optional[int] = ..., cap_permitted: _Optional[int] = ..., cap_effective: _Optional[int] = ..., cap_bounding: _Optional[int] = ..., cap_ambient: _Optional[int] = ..., securebits: _Optional[int] = ...) -> None: ...

class Rlimit(_message.Message):
    __slots__ = ("resource", "name", "cur", "max")
    RESOURCE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    CUR_FIELD_NUMBER: _ClassVar[int]
    MAX_FIELD_NUMBER: _ClassVar[int]
    resource: int
    name: str
    cur: int
    max: int
    def __init__(self, resource: _Optional[int] = ..., name: _Optional[str] = ..., cur: _Optional[int] = ..., max: _Optional[int] = ...) -> None: ...

class SigAction(_message.Message):
    __slots__ = ("signo", "handler", "flags", "restorer", "mask")
    SIGNO_FIELD_NUMBER: _ClassVar[int]
    HANDLER_FIELD_NUMBER: _ClassVar[int]
    FLAGS_FIELD_NUMBER: _ClassVar[int]
    RESTORER_FIELD_NUMBER: _ClassVar[int]
    MASK_FIELD_NUMBER: _ClassVar[int]
    signo: int
    handler: int
    flags: int
    restorer: int
    mask: int
    def __init__(self, signo: _Optional[int] = ..., handler: _Optional[int] = ..., flags: _Optional[int] = ..., restorer: _Optional[int] = ..., mask: _Optional[int] = ...) -> None: ...

class ProcessFlags(_message.Message):
    __slots__ = ("no_new_privs", "dumpable", "child_subreaper", "pdeath_signal", "thp_disabled")
    NO_NEW_PRIVS_FIELD_NUMBER: _ClassVar[int]
    DUMPABLE_FIELD_NUMBER: _ClassVar[int]
    CHILD_SUBREAPER_FIELD_NUMBER: _ClassVar[int]
    PDEATH_SIGNAL_FIELD_NUMBER: _ClassVar[int]
    THP_DISABLED_FIELD_NUMBER: _ClassVar[int]
    no_new_privs: bool
    dumpable: int
    child_subreaper: bool
    pdeath_signal: int
    thp_disabled: bool
    def __init__(self, no_new_privs: _Optional[bool] = ..., dumpable: _Optional[int] = ..., child_subreaper: _Optional[bool] = ..., pdeath_signal: _Optional[int] = ..., thp_disabled: _Optional[bool] = ...) -> None: ...

class Timers(_message.Message):
    __slots__ = ("real", "virtual", "prof", "posix")
    REAL_FIELD_NUMBER: _ClassVar[int]
    VIRTUAL_FIELD_NUMBER: _ClassVar[int]
    PROF_FIELD_NUMBER: _ClassVar[int]
    POSIX_FIELD_NUMBER: _ClassVar[int]
    real: ItimerVal
    virtual: ItimerVal
    prof: ItimerVal
    posix: _containers.RepeatedCompositeFieldContainer[PosixTimer]
    def __init__(self, real: _Optional[_Union[ItimerVal, _Mapping]] = ..., virtual: _Optional[_Union[ItimerVal, _Mapping]] = ..., prof: _Optional[_Union[ItimerVal, _Mapping]] = ..., posix: _Optional[_Iterable[_Union[PosixTimer, _Mapping]]] = ...) -> None: ...

class ItimerVal(_message.Message):
    __slots__ = ("value_us", "interval_us")
    VALUE_US_FIELD_NUMBER: _ClassVar[int]
    INTERVAL_US_FIELD_NUMBER: _ClassVar[int]
    value_us: int
    interval_us: int
    def __init__(self, value_us: _Optional[int] = ..., interval_us: _Optional[int] = ...) -> None: ...

class PosixTimer(_message.Message):
    __slots__ = ("id", "clock_id", "sigev_notify", "signo", "sigev_value", "notify_tid", "value_ns", "interval_ns", "overrun", "queued_at_read")
    ID_FIELD_NUMBER: _ClassVar[int]
    CLOCK_ID_FIELD_NUMBER: _ClassVar[int]
    SIGEV_NOTIFY_FIELD_NUMBER: _ClassVar[int]
    SIGNO_FIELD_NUMBER: _ClassVar[int]
    SIGEV_VALUE_FIELD_NUMBER: _ClassVar[int]
    NOTIFY_TID_FIELD_NUMBER: _ClassVar[int]
    VALUE_NS_FIELD_NUMBER: _ClassVar[int]
    INTERVAL_NS_FIELD_NUMBER: _ClassVar[int]
    OVERRUN_FIELD_NUMBER: _ClassVar[int]
    QUEUED_AT_READ_FIELD_NUMBER: _ClassVar[int]
    id: int
    clock_id: int
    sigev_notify: int
    signo: int
    sigev_value: int
    notify_tid: int
    value_ns: int
    interval_ns: int
    overrun: int
    queued_at_read: int
    def __init__(self, id: _Optional[int] = ..., clock_id: _Optional[int] = ..., sigev_notify: _Optional[int] = ..., signo: _Optional[int] = ..., sigev_value: _Optional[int] = ..., notify_tid: _Optional[int] = ..., value_ns: _Optional[int] = ..., interval_ns: _Optional[int] = ..., overrun: _Optional[int] = ..., queued_at_read: _Optional[int] = ...) -> None: ...
