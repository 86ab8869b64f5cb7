# Regenerate with `python -m ckpt.image.protogen` (or `make proto`); do not edit.
from ckpt.image.pb import options_pb2 as _options_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class DigestHead(_message.Message):
    __slots__ = ("owner", "algorithm", "digest_size", "page_size")
    OWNER_FIELD_NUMBER: _ClassVar[int]
    ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    DIGEST_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    owner: str
    algorithm: str
    digest_size: int
    page_size: int
    def __init__(self, owner: _Optional[str] = ..., algorithm: _Optional[str] = ..., digest_size: _Optional[int] = ..., page_size: _Optional[int] = ...) -> None: ...

class PageDigests(_message.Message):
    __slots__ = ("vaddr", "nr_pages", "digests")
    VADDR_FIELD_NUMBER: _ClassVar[int]
    NR_PAGES_FIELD_NUMBER: _ClassVar[int]
    DIGESTS_FIELD_NUMBER: _ClassVar[int]
    vaddr: int
    nr_pages: int
    digests: bytes
    def __init__(self, vaddr: _Optional[int] = ..., nr_pages: _Optional[int] = ..., digests: _Optional[bytes] = ...) -> None: ...
