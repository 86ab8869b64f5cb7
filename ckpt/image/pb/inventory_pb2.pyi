# Regenerate with `python -m ckpt.image.protogen` (or `make proto`); do not edit.
from ckpt.image.pb import clocks_pb2 as _clocks_pb2
from ckpt.image.pb import cpu_pb2 as _cpu_pb2
from ckpt.image.pb import options_pb2 as _options_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Inventory(_message.Message):
    __slots__ = ("format_version", "ckpt_version", "kernel_release", "created_ns", "image_id", "kind", "tracking", "processes", "parent", "files", "arch", "page_size", "hostname", "boot_id", "extra", "cpu", "kernel_version", "kernel_areas", "clocks", "required_features", "encryption")
    class Kind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        KIND_UNSPECIFIED: _ClassVar[Inventory.Kind]
        FULL: _ClassVar[Inventory.Kind]
        PRE_DUMP: _ClassVar[Inventory.Kind]
        INCREMENTAL: _ClassVar[Inventory.Kind]
    KIND_UNSPECIFIED: Inventory.Kind
    FULL: Inventory.Kind
    PRE_DUMP: Inventory.Kind
    INCREMENTAL: Inventory.Kind
    class ExtraEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    FORMAT_VERSION_FIELD_NUMBER: _ClassVar[int]
    CKPT_VERSION_FIELD_NUMBER: _ClassVar[int]
    KERNEL_RELEASE_FIELD_NUMBER: _ClassVar[int]
    CREATED_NS_FIELD_NUMBER: _ClassVar[int]
    IMAGE_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    TRACKING_FIELD_NUMBER: _ClassVar[int]
    PROCESSES_FIELD_NUMBER: _ClassVar[int]
    PARENT_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    ARCH_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    BOOT_ID_FIELD_NUMBER: _ClassVar[int]
    EXTRA_FIELD_NUMBER: _ClassVar[int]
    CPU_FIELD_NUMBER: _ClassVar[int]
    KERNEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    KERNEL_AREAS_FIELD_NUMBER: _ClassVar[int]
    CLOCKS_FIELD_NUMBER: _ClassVar[int]
    REQUIRED_FEATURES_FIELD_NUMBER: _ClassVar[int]
    ENCRYPTION_FIELD_NUMBER: _ClassVar[int]
    format_version: int
    ckpt_version: str
    kernel_release: str
    created_ns: int
    image_id: str
    kind: Inventory.Kind
    tracking: str
    processes: _containers.RepeatedCompositeFieldContainer[ProcessRef]
    parent: ParentLink
    files: _containers.RepeatedCompositeFieldContainer[FileDigest]
    arch: str
    page_size: int
    hostname: str
    boot_id: str
    extra: _containers.ScalarMap[str, str]
    cpu: _cpu_pb2.CpuFeatures
    kernel_version: str
    kernel_areas: KernelAreas
    clocks: _clocks_pb2.Clocks
    required_features: _containers.RepeatedScalarFieldContainer[str]
    encryption: Encryption
    def __init__(self, format_version: _Optional[int] = ..., ckpt_version: _Optional[str] = ..., kernel_release: _Optional[str] = ..., created_ns: _Optional[int] = ..., image_id: _Optional[str] = ..., kind: _Optional[_Union[Inventory.Kind, str]] = ..., tracking: _Optional[str] = ..., processes: _Optional[_Iterable[_Union[ProcessRef, _Mapping]]] = ..., parent: _Optional[_Union[ParentLink, _Mapping]] = ..., files: _Optional[_Iterable[_Union[FileDigest, _Mapping]]] = ..., arch: _Optional[str] = ..., page_size: _Optional[int] = ..., hostname: _Optional[str] = ..., boot_id: _Optional[str] = ..., extra: _Optional[_Mapping[str, str]] = ..., cpu: _Optional[_Union[_cpu_pb2.CpuFeatures, _Mapping]] = ..., kernel_version: _Optional[str] = ..., kernel_areas: _Optional[_Union[KernelAreas, _Mapping]] = ..., clocks: _Optional[_Union[_clocks_pb2.Clocks, _Mapping]] = ..., required_features: _Optional[_Iterable[str]] = ..., encryption: _Optional[_Union[Encryption, _Mapping]] = ...) -> None: ...

class Encryption(_message.Message):
    __slots__ = ("cipher", "key_id", "salt", "segment_size")
    CIPHER_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    SALT_FIELD_NUMBER: _ClassVar[int]
    SEGMENT_SIZE_FIELD_NUMBER: _ClassVar[int]
    cipher: str
    key_id: bytes
    salt: bytes
    segment_size: int
    def __init__(self, cipher: _Optional[str] = ..., key_id: _Optional[bytes] = ..., salt: _Optional[bytes] = ..., segment_size: _Optional[int] = ...) -> None: ...

class KernelAreas(_message.Message):
    __slots__ = ("areas", "vdso_build_id", "vdso_sha256")
    AREAS_FIELD_NUMBER: _ClassVar[int]
    VDSO_BUILD_ID_FIELD_NUMBER: _ClassVar[int]
    VDSO_SHA256_FIELD_NUMBER: _ClassVar[int]
    areas: _containers.RepeatedCompositeFieldContainer[KernelArea]
    vdso_build_id: bytes
    vdso_sha256: bytes
    def __init__(self, areas: _Optional[_Iterable[_Union[KernelArea, _Mapping]]] = ..., vdso_build_id: _Optional[bytes] = ..., vdso_sha256: _Optional[bytes] = ...) -> None: ...

class KernelArea(_message.Message):
    __slots__ = ("name", "size")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    name: str
    size: int
    def __init__(self, name: _Optional[str] = ..., size: _Optional[int] = ...) -> None: ...

class ProcessRef(_message.Message):
    __slots__ = ("pid", "ppid", "threads", "start_time", "tracking", "pgid", "sid", "zombie", "wait_status", "comm", "shares_files")
    PID_FIELD_NUMBER: _ClassVar[int]
    PPID_FIELD_NUMBER: _ClassVar[int]
    THREADS_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    TRACKING_FIELD_NUMBER: _ClassVar[int]
    PGID_FIELD_NUMBER: _ClassVar[int]
    SID_FIELD_NUMBER: _ClassVar[int]
    ZOMBIE_FIELD_NUMBER: _ClassVar[int]
    WAIT_STATUS_FIELD_NUMBER: _ClassVar[int]
    COMM_FIELD_NUMBER: _ClassVar[int]
    SHARES_FILES_FIELD_NUMBER: _ClassVar[int]
    pid: int
    ppid: int
    threads: _containers.RepeatedScalarFieldContainer[int]
    start_time: int
    tracking: TrackingState
    pgid: int
    sid: int
    zombie: bool
    wait_status: int
    comm: str
    shares_files: bool
    def __init__(self, pid: _Optional[int] = ..., ppid: _Optional[int] = ..., threads: _Optional[_Iterable[int]] = ..., start_time: _Optional[int] = ..., tracking: _Optional[_Union[TrackingState, _Mapping]] = ..., pgid: _Optional[int] = ..., sid: _Optional[int] = ..., zombie: _Optional[bool] = ..., wait_status: _Optional[int] = ..., comm: _Optional[str] = ..., shares_files: _Optional[bool] = ...) -> None: ...

class TrackingState(_message.Message):
    __slots__ = ("method", "parked_fd", "uffd_inode", "include", "exclude", "layout")
    METHOD_FIELD_NUMBER: _ClassVar[int]
    PARKED_FD_FIELD_NUMBER: _ClassVar[int]
    UFFD_INODE_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_FIELD_NUMBER: _ClassVar[int]
    LAYOUT_FIELD_NUMBER: _ClassVar[int]
    method: str
    parked_fd: int
    uffd_inode: int
    include: _containers.RepeatedCompositeFieldContainer[AddressRange]
    exclude: _containers.RepeatedCompositeFieldContainer[AddressRange]
    layout: _containers.RepeatedCompositeFieldContainer[VmaKey]
    def __init__(self, method: _Optional[str] = ..., parked_fd: _Optional[int] = ..., uffd_inode: _Optional[int] = ..., include: _Optional[_Iterable[_Union[AddressRange, _Mapping]]] = ..., exclude: _Optional[_Iterable[_Union[AddressRange, _Mapping]]] = ..., layout: _Optional[_Iterable[_Union[VmaKey, _Mapping]]] = ...) -> None: ...

class VmaKey(_message.Message):
    __slots__ = ("start", "end", "perms", "offset", "dev_major", "dev_minor", "inode")
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    PERMS_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DEV_MAJOR_FIELD_NUMBER: _ClassVar[int]
    DEV_MINOR_FIELD_NUMBER: _ClassVar[int]
    INODE_FIELD_NUMBER: _ClassVar[int]
    start: int
    end: int
    perms: str
    offset: int
    dev_major: int
    dev_minor: int
    inode: int
    def __init__(self, start: _Optional[int] = ..., end: _Optional[int] = ..., perms: _Optional[str] = ..., offset: _Optional[int] = ..., dev_major: _Optional[int] = ..., dev_minor: _Optional[int] = ..., inode: _Optional[int] = ...) -> None: ...

class AddressRange(_message.Message):
    __slots__ = ("start", "end")
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    start: int
    end: int
    def __init__(self, start: _Optional[int] = ..., end: _Optional[int] = ...) -> None: ...

class ParentLink(_message.Message):
    __slots__ = ("path", "image_id")
    PATH_FIELD_NUMBER: _ClassVar[int]
    IMAGE_ID_FIELD_NUMBER: _ClassVar[int]
    path: str
    image_id: str
    def __init__(self, path: _Optional[str] = ..., image_id: _Optional[str] = ...) -> None: ...

class FileDigest(_message.Message):
    __slots__ = ("name", "size", "sha256")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    name: str
    size: int
    sha256: bytes
    def __init__(self, name: _Optional[str] = ..., size: _Optional[int] = ..., sha256: _Optional[bytes] = ...) -> None: ...
