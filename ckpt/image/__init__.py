"""The image directory: on-disk format, writer, reader, parent chains, show and verify.

Layout and rules are documented in ``docs/image-format.md`` and, field by
field, in ``proto/ckpt/v1/*.proto``.  Typical use::

    from ckpt.image import ImageWriter, Image, open_chain, resolve_pages
    from ckpt.image.show import show
    from ckpt.image.verify import verify

(``show`` and ``verify`` are not re-exported here: the names would hide the
submodules of the same name.)
"""

from ckpt.image.chain import iter_chain_pages, open_chain, resolve_pages, walk_chain
from ckpt.image.framing import FORMAT_VERSION
from ckpt.image.reader import Image
from ckpt.image.records import (
    Codec,
    FileDigest,
    ImageKind,
    PageChunk,
    Pagemap,
    PageRange,
    PageSource,
    PageState,
    ParentLink,
    ProcessInfo,
    TrackingInfo,
)
from ckpt.image.store import DEFAULT_CHUNK_SIZE, DEFAULT_COMPRESS_LEVEL, ImageWriter, PageWriter, PagemapStats
from ckpt.image.verify import Problem, Report

__all__ = [
    "FORMAT_VERSION",
    "DEFAULT_CHUNK_SIZE",
    "DEFAULT_COMPRESS_LEVEL",
    "ImageWriter",
    "PageWriter",
    "PagemapStats",
    "Image",
    "open_chain",
    "walk_chain",
    "resolve_pages",
    "iter_chain_pages",
    "Report",
    "Problem",
    "Codec",
    "FileDigest",
    "ImageKind",
    "PageChunk",
    "Pagemap",
    "PageRange",
    "PageSource",
    "PageState",
    "ParentLink",
    "ProcessInfo",
    "TrackingInfo",
]
