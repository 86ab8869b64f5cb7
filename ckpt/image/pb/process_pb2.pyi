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
    __slots__ = ("pid", "ppid", "pgid", "sid", "comm", "creds", "rlimits", "umask", "cwd", "root", "personality", "sigactions", "shared_pending", "start_time", "exit_signal", "oom_score_adj", "cgroup", "flags")
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
    def __init__(self, pid: _Optional[int] = ..., ppid: _Optional[int] = ..., pgid: _Optional[int] = ..., sid: _Optional[int] = ..., comm: _Optional[str] = ..., creds: _Optional[_Union[Creds, _Mapping]] = ..., rlimits: _Optional[_Iterable[_Union[Rlimit, _Mapping]]] = ..., umask: _Optional[int] = ..., cwd: _Optional[str] = ..., root: _Optional[str] = ..., personality: _Optional[int] = ..., sigactions: _Optional[_Iterable[_Union[SigAction, _Mapping]]] = ..., shared_pending: _Optional[_Iterable[_Union[_common_pb2.PendingSignal, _Mapping]]] = ..., start_time: _Optional[int] = ..., exit_signal: _Optional[int] = ..., oom_score_adj: _Optional[int] = ..., cgroup: _Optional[str] = ..., flags: _Optional[_Union[ProcessFlags, _Mapping]] = ...) -> None: ...

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
