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

class MmEntry(_message.Message):
    __slots__ = ("start_code", "end_code", "start_data", "end_data", "start_brk", "brk", "start_stack", "arg_start", "arg_end", "env_start", "env_end", "auxv", "exe_path", "exe", "vdso_sha256", "vdso", "exe_ghost", "def_flags")
    START_CODE_FIELD_NUMBER: _ClassVar[int]
    END_CODE_FIELD_NUMBER: _ClassVar[int]
    START_DATA_FIELD_NUMBER: _ClassVar[int]
    END_DATA_FIELD_NUMBER: _ClassVar[int]
    START_BRK_FIELD_NUMBER: _ClassVar[int]
    BRK_FIELD_NUMBER: _ClassVar[int]
    START_STACK_FIELD_NUMBER: _ClassVar[int]
    ARG_START_FIELD_NUMBER: _ClassVar[int]
    ARG_END_FIELD_NUMBER: _ClassVar[int]
    ENV_START_FIELD_NUMBER: _ClassVar[int]
    ENV_END_FIELD_NUMBER: _ClassVar[int]
    AUXV_FIELD_NUMBER: _ClassVar[int]
    EXE_PATH_FIELD_NUMBER: _ClassVar[int]
    EXE_FIELD_NUMBER: _ClassVar[int]
    VDSO_SHA256_FIELD_NUMBER: _ClassVar[int]
    VDSO_FIELD_NUMBER: _ClassVar[int]
    EXE_GHOST_FIELD_NUMBER: _ClassVar[int]
    DEF_FLAGS_FIELD_NUMBER: _ClassVar[int]
    start_code: int
    end_code: int
    start_data: int
    end_data: int
    start_brk: int
    brk: int
    start_stack: int
    arg_start: int
    arg_end: int
    env_start: int
    env_end: int
    auxv: bytes
    exe_path: str
    exe: _common_pb2.FileIdentity
    vdso_sha256: bytes
    vdso: bytes
    exe_ghost: _common_pb2.Ghost
    def_flags: str
    def __init__(self, start_code: _Optional[int] = ..., end_code: _Optional[int] = ..., start_data: _Optional[int] = ..., end_data: _Optional[int] = ..., start_brk: _Optional[int] = ..., brk: _Optional[int] = ..., start_stack: _Optional[int] = ..., arg_start: _Optional[int] = ..., arg_end: _Optional[int] = ..., env_start: _Optional[int] = ..., env_end: _Optional[int] = ..., auxv: _Optional[bytes] = ..., exe_path: _Optional[str] = ..., exe: _Optional[_Union[_common_pb2.FileIdentity, _Mapping]] = ..., vdso_sha256: _Optional[bytes] = ..., vdso: _Optional[bytes] = ..., exe_ghost: _Optional[_Union[_common_pb2.Ghost, _Mapping]] = ..., def_flags: _Optional[str] = ...) -> None: ...

class Vma(_message.Message):
    __slots__ = ("start", "end", "prot", "flags", "kind", "name", "pgoff", "file", "vm_flags", "content_owner", "tracked", "sysv", "ghost", "aio", "shared_with_parent", "guards", "shm_file")
    class Kind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        KIND_UNSPECIFIED: _ClassVar[Vma.Kind]
        ANON_PRIVATE: _ClassVar[Vma.Kind]
        ANON_SHARED: _ClassVar[Vma.Kind]
        FILE_PRIVATE: _ClassVar[Vma.Kind]
        FILE_SHARED: _ClassVar[Vma.Kind]
        HEAP: _ClassVar[Vma.Kind]
        STACK: _ClassVar[Vma.Kind]
        VDSO: _ClassVar[Vma.Kind]
        VVAR: _ClassVar[Vma.Kind]
        VVAR_VCLOCK: _ClassVar[Vma.Kind]
        VSYSCALL: _ClassVar[Vma.Kind]
        SYSV_SHM: _ClassVar[Vma.Kind]
        MEMFD_SHARED: _ClassVar[Vma.Kind]
        AIO_RING: _ClassVar[Vma.Kind]
    KIND_UNSPECIFIED: Vma.Kind
    ANON_PRIVATE: Vma.Kind
    ANON_SHARED: Vma.Kind
    FILE_PRIVATE: Vma.Kind
    FILE_SHARED: Vma.Kind
    HEAP: Vma.Kind
    STACK: Vma.Kind
    VDSO: Vma.Kind
    VVAR: Vma.Kind
    VVAR_VCLOCK: Vma.Kind
    VSYSCALL: Vma.Kind
    SYSV_SHM: Vma.Kind
    MEMFD_SHARED: Vma.Kind
    AIO_RING: Vma.Kind
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    PROT_FIELD_NUMBER: _ClassVar[int]
    FLAGS_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    PGOFF_FIELD_NUMBER: _ClassVar[int]
    FILE_FIELD_NUMBER: _ClassVar[int]
    VM_FLAGS_FIELD_NUMBER: _ClassVar[int]
    CONTENT_OWNER_FIELD_NUMBER: _ClassVar[int]
    TRACKED_FIELD_NUMBER: _ClassVar[int]
    SYSV_FIELD_NUMBER: _ClassVar[int]
    GHOST_FIELD_NUMBER: _ClassVar[int]
    AIO_FIELD_NUMBER: _ClassVar[int]
    SHARED_WITH_PARENT_FIELD_NUMBER: _ClassVar[int]
    GUARDS_FIELD_NUMBER: _ClassVar[int]
    SHM_FILE_FIELD_NUMBER: _ClassVar[int]
    start: int
    end: int
    prot: int
    flags: int
    kind: Vma.Kind
    name: str
    pgoff: int
    file: _common_pb2.FileIdentity
    vm_flags: str
    content_owner: str
    tracked: bool
    sysv: SysvShm
    ghost: _common_pb2.Ghost
    aio: AioRing
    shared_with_parent: _containers.RepeatedCompositeFieldContainer[PageRun]
    guards: _containers.RepeatedScalarFieldContainer[int]
    shm_file: _common_pb2.Ghost
    def __init__(self, start: _Optional[int] = ..., end: _Optional[int] = ..., prot: _Optional[int] = ..., flags: _Optional[int] = ..., kind: _Optional[_Union[Vma.Kind, str]] = ..., name: _Optional[str] = ..., pgoff: _Optional[int] = ..., file: _Optional[_Union[_common_pb2.FileIdentity, _Mapping]] = ..., vm_flags: _Optional[str] = ..., content_owner: _Optional[str] = ..., tracked: _Optional[bool] = ..., sysv: _Optional[_Union[SysvShm, _Mapping]] = ..., ghost: _Optional[_Union[_common_pb2.Ghost, _Mapping]] = ..., aio: _Optional[_Union[AioRing, _Mapping]] = ..., shared_with_parent: _Optional[_Iterable[_Union[PageRun, _Mapping]]] = ..., guards: _Optional[_Iterable[int]] = ..., shm_file: _Optional[_Union[_common_pb2.Ghost, _Mapping]] = ...) -> None: ...

class PageRun(_message.Message):
    __slots__ = ("start", "end")
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    start: int
    end: int
    def __init__(self, start: _Optional[int] = ..., end: _Optional[int] = ...) -> None: ...

class AioRing(_message.Message):
    __slots__ = ("id", "nr", "head")
    ID_FIELD_NUMBER: _ClassVar[int]
    NR_FIELD_NUMBER: _ClassVar[int]
    HEAD_FIELD_NUMBER: _ClassVar[int]
    id: int
    nr: int
    head: int
    def __init__(self, id: _Optional[int] = ..., nr: _Optional[int] = ..., head: _Optional[int] = ...) -> None: ...

class SysvShm(_message.Message):
    __slots__ = ("shmid", "key", "size", "mode", "uid", "gid", "removed")
    SHMID_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    UID_FIELD_NUMBER: _ClassVar[int]
    GID_FIELD_NUMBER: _ClassVar[int]
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    shmid: int
    key: int
    size: int
    mode: int
    uid: int
    gid: int
    removed: bool
    def __init__(self, shmid: _Optional[int] = ..., key: _Optional[int] = ..., size: _Optional[int] = ..., mode: _Optional[int] = ..., uid: _Optional[int] = ..., gid: _Optional[int] = ..., removed: _Optional[bool] = ...) -> None: ...
