# Regenerate with `python -m ckpt.image.protogen` (or `make proto`); do not edit.
from ckpt.image.pb import options_pb2 as _options_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class FileIdentity(_message.Message):
    __slots__ = ("dev", "ino", "size", "mtime_ns", "ctime_ns", "mode", "build_id", "by_path", "rdev")
    DEV_FIELD_NUMBER: _ClassVar[int]
    INO_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    MTIME_NS_FIELD_NUMBER: _ClassVar[int]
    CTIME_NS_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    BUILD_ID_FIELD_NUMBER: _ClassVar[int]
    BY_PATH_FIELD_NUMBER: _ClassVar[int]
    RDEV_FIELD_NUMBER: _ClassVar[int]
    dev: int
    ino: int
    size: int
    mtime_ns: int
    ctime_ns: int
    mode: int
    build_id: bytes
    by_path: bool
    rdev: int
    def __init__(self, dev: _Optional[int] = ..., ino: _Optional[int] = ..., size: _Optional[int] = ..., mtime_ns: _Optional[int] = ..., ctime_ns: _Optional[int] = ..., mode: _Optional[int] = ..., build_id: _Optional[bytes] = ..., by_path: _Optional[bool] = ..., rdev: _Optional[int] = ...) -> None: ...

class ContentRef(_message.Message):
    __slots__ = ("owner", "size")
    OWNER_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    owner: str
    size: int
    def __init__(self, owner: _Optional[str] = ..., size: _Optional[int] = ...) -> None: ...

class Ghost(_message.Message):
    __slots__ = ("dev", "ino", "owner", "size", "mode", "uid", "gid", "atime_ns", "mtime_ns", "data_bytes", "tmpfile")
    DEV_FIELD_NUMBER: _ClassVar[int]
    INO_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    UID_FIELD_NUMBER: _ClassVar[int]
    GID_FIELD_NUMBER: _ClassVar[int]
    ATIME_NS_FIELD_NUMBER: _ClassVar[int]
    MTIME_NS_FIELD_NUMBER: _ClassVar[int]
    DATA_BYTES_FIELD_NUMBER: _ClassVar[int]
    TMPFILE_FIELD_NUMBER: _ClassVar[int]
    dev: int
    ino: int
    owner: str
    size: int
    mode: int
    uid: int
    gid: int
    atime_ns: int
    mtime_ns: int
    data_bytes: int
    tmpfile: bool
    def __init__(self, dev: _Optional[int] = ..., ino: _Optional[int] = ..., owner: _Optional[str] = ..., size: _Optional[int] = ..., mode: _Optional[int] = ..., uid: _Optional[int] = ..., gid: _Optional[int] = ..., atime_ns: _Optional[int] = ..., mtime_ns: _Optional[int] = ..., data_bytes: _Optional[int] = ..., tmpfile: _Optional[bool] = ...) -> None: ...

class PendingSignal(_message.Message):
    __slots__ = ("signo", "siginfo")
    SIGNO_FIELD_NUMBER: _ClassVar[int]
    SIGINFO_FIELD_NUMBER: _ClassVar[int]
    signo: int
    siginfo: bytes
    def __init__(self, signo: _Optional[int] = ..., siginfo: _Optional[bytes] = ...) -> None: ...
