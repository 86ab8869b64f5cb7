# Regenerate with `python -m ckpt.image.protogen` (or `make proto`); do not edit.
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class Clocks(_message.Message):
    __slots__ = ("monotonic_ns", "boottime_ns", "realtime_ns", "own_time_ns", "monotonic_offset_ns", "boottime_offset_ns", "time_ns_inode")
    MONOTONIC_NS_FIELD_NUMBER: _ClassVar[int]
    BOOTTIME_NS_FIELD_NUMBER: _ClassVar[int]
    REALTIME_NS_FIELD_NUMBER: _ClassVar[int]
    OWN_TIME_NS_FIELD_NUMBER: _ClassVar[int]
    MONOTONIC_OFFSET_NS_FIELD_NUMBER: _ClassVar[int]
    BOOTTIME_OFFSET_NS_FIELD_NUMBER: _ClassVar[int]
    TIME_NS_INODE_FIELD_NUMBER: _ClassVar[int]
    monotonic_ns: int
    boottime_ns: int
    realtime_ns: int
    own_time_ns: bool
    monotonic_offset_ns: int
    boottime_offset_ns: int
    time_ns_inode: int
    def __init__(self, monotonic_ns: _Optional[int] = ..., boottime_ns: _Optional[int] = ..., realtime_ns: _Optional[int] = ..., own_time_ns: _Optional[bool] = ..., monotonic_offset_ns: _Optional[int] = ..., boottime_offset_ns: _Optional[int] = ..., time_ns_inode: _Optional[int] = ...) -> None: ...
