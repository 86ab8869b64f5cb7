# Regenerate with `python -m ckpt.image.protogen` (or `make proto`); do not edit.
from ckpt.image.pb import options_pb2 as _options_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Codec(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CODEC_UNSPECIFIED: _ClassVar[Codec]
    CODEC_NONE: _ClassVar[Codec]
    CODEC_ZSTD: _ClassVar[Codec]
CODEC_UNSPECIFIED: Codec
CODEC_NONE: Codec
CODEC_ZSTD: Codec

class PagemapHead(_message.Message):
    __slots__ = ("owner", "pages_file", "page_size", "chunk_size", "chunks", "pages_here", "pages_parent", "pages_zero", "ranges")
    OWNER_FIELD_NUMBER: _ClassVar[int]
    PAGES_FILE_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    CHUNK_SIZE_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_FIELD_NUMBER: _ClassVar[int]
    PAGES_HERE_FIELD_NUMBER: _ClassVar[int]
    PAGES_PARENT_FIELD_NUMBER: _ClassVar[int]
    PAGES_ZERO_FIELD_NUMBER: _ClassVar[int]
    RANGES_FIELD_NUMBER: _ClassVar[int]
    owner: str
    pages_file: str
    page_size: int
    chunk_size: int
    chunks: _containers.RepeatedCompositeFieldContainer[PageChunk]
    pages_here: int
    pages_parent: int
    pages_zero: int
    ranges: PageRangeTable
    def __init__(self, owner: _Optional[str] = ..., pages_file: _Optional[str] = ..., page_size: _Optional[int] = ..., chunk_size: _Optional[int] = ..., chunks: _Optional[_Iterable[_Union[PageChunk, _Mapping]]] = ..., pages_here: _Optional[int] = ..., pages_parent: _Optional[int] = ..., pages_zero: _Optional[int] = ..., ranges: _Optional[_Union[PageRangeTable, _Mapping]] = ...) -> None: ...

class PageRangeTable(_message.Message):
    __slots__ = ("vaddr", "nr_pages", "state", "data_offset")
    VADDR_FIELD_NUMBER: _ClassVar[int]
    NR_PAGES_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    DATA_OFFSET_FIELD_NUMBER: _ClassVar[int]
    vaddr: _containers.RepeatedScalarFieldContainer[int]
    nr_pages: _containers.RepeatedScalarFieldContainer[int]
    state: _containers.RepeatedScalarFieldContainer[PageRange.State]
    data_offset: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, vaddr: _Optional[_Iterable[int]] = ..., nr_pages: _Optional[_Iterable[int]] = ..., state: _Optional[_Iterable[_Union[PageRange.State, str]]] = ..., data_offset: _Optional[_Iterable[int]] = ...) -> None: ...

class PageChunk(_message.Message):
    __slots__ = ("offset", "length", "data_offset", "raw_length", "codec", "crc32")
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    DATA_OFFSET_FIELD_NUMBER: _ClassVar[int]
    RAW_LENGTH_FIELD_NUMBER: _ClassVar[int]
    CODEC_FIELD_NUMBER: _ClassVar[int]
    CRC32_FIELD_NUMBER: _ClassVar[int]
    offset: int
    length: int
    data_offset: int
    raw_length: int
    codec: Codec
    crc32: int
    def __init__(self, offset: _Optional[int] = ..., length: _Optional[int] = ..., data_offset: _Optional[int] = ..., raw_length: _Optional[int] = ..., codec: _Optional[_Union[Codec, str]] = ..., crc32: _Optional[int] = ...) -> None: ...

class PageRange(_message.Message):
    __slots__ = ("vaddr", "nr_pages", "state", "data_offset")
    class State(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        STATE_UNSPECIFIED: _ClassVar[PageRange.State]
        HERE: _ClassVar[PageRange.State]
        PARENT: _ClassVar[PageRange.State]
        ZERO: _ClassVar[PageRange.State]
    STATE_UNSPECIFIED: PageRange.State
    HERE: PageRange.State
    PARENT: PageRange.State
    ZERO: PageRange.State
    VADDR_FIELD_NUMBER: _ClassVar[int]
    NR_PAGES_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    DATA_OFFSET_FIELD_NUMBER: _ClassVar[int]
    vaddr: int
    nr_pages: int
    state: PageRange.State
    data_offset: int
    def __init__(self, vaddr: _Optional[int] = ..., nr_pages: _Optional[int] = ..., state: _Optional[_Union[PageRange.State, str]] = ..., data_offset: _Optional[int] = ...) -> None: ...
