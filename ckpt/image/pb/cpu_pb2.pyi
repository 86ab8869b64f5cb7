# Regenerate with `python -m ckpt.image.protogen` (or `make proto`); do not edit.
from ckpt.image.pb import options_pb2 as _options_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CpuFeatures(_message.Message):
    __slots__ = ("vendor", "family", "model", "stepping", "model_name", "xcr0", "xstate_size", "words")
    VENDOR_FIELD_NUMBER: _ClassVar[int]
    FAMILY_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    STEPPING_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    XCR0_FIELD_NUMBER: _ClassVar[int]
    XSTATE_SIZE_FIELD_NUMBER: _ClassVar[int]
    WORDS_FIELD_NUMBER: _ClassVar[int]
    vendor: str
    family: int
    model: int
    stepping: int
    model_name: str
    xcr0: int
    xstate_size: int
    words: _containers.RepeatedCompositeFieldContainer[CpuidWord]
    def __init__(self, vendor: _Optional[str] = ..., family: _Optional[int] = ..., model: _Optional[int] = ..., stepping: _Optional[int] = ..., model_name: _Optional[str] = ..., xcr0: _Optional[int] = ..., xstate_size: _Optional[int] = ..., words: _Optional[_Iterable[_Union[CpuidWord, _Mapping]]] = ...) -> None: ...

class CpuidWord(_message.Message):
    __slots__ = ("leaf", "subleaf", "reg", "value")
    class Reg(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        REG_UNSPECIFIED: _ClassVar[CpuidWord.Reg]
        EAX: _ClassVar[CpuidWord.Reg]
        EBX: _ClassVar[CpuidWord.Reg]
        ECX: _ClassVar[CpuidWord.Reg]
        EDX: _ClassVar[CpuidWord.Reg]
    REG_UNSPECIFIED: CpuidWord.Reg
    EAX: CpuidWord.Reg
    EBX: CpuidWord.Reg
    ECX: CpuidWord.Reg
    EDX: CpuidWord.Reg
    LEAF_FIELD_NUMBER: _ClassVar[int]
    SUBLEAF_FIELD_NUMBER: _ClassVar[int]
    REG_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    leaf: int
    subleaf: int
    reg: CpuidWord.Reg
    value: int
    def __init__(self, leaf: _Optional[int] = ..., subleaf: _Optional[int] = ..., reg: _Optional[_Union[CpuidWord.Reg, str]] = ..., value: _Optional[int] = ...) -> None: ...
