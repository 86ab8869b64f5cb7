"""Parent chains of images, and which image holds each page.

The delta format, worked through
--------------------------------
Every image after the first names its parent (a relative path plus the
parent's image id), and its pagemap says, range by range, whether a page's
bytes are HERE (stored in this image), in the PARENT (unchanged since then),
or ZERO.  Take one process (4 KiB pages, addresses kept small)::

    snapshot 0  images/chain/0  PRE_DUMP, no parent
        address     0x1000  0x2000  0x3000  0x4000  0x5000
        content       A       B       C     zeros     D
        pagemap     HERE 0x1000 ×3 @0   ZERO 0x4000 ×1   HERE 0x5000 ×1 @0x3000
        page data   A B C D                              (stream offsets 0..0x4000)

    meanwhile the target writes B → B', fills the zero page with E, maps a
    new page F at 0x6000, and drops C with MADV_DONTNEED (it reads as zeros now)

    snapshot 1  images/chain/1  INCREMENTAL, parent "../0" + id of snapshot 0
        pagemap     PARENT 0x1000 ×1
                    HERE   0x2000 ×1 @0       B'
                    ZERO   0x3000 ×1          C is gone
                    HERE   0x4000 ×1 @0x1000  E
                    PARENT 0x5000 ×1
                    HERE   0x6000 ×1 @0x2000  F
        page data   B' E F

    resolve_pages([snapshot 0, snapshot 1], pid) →
        0x1000 ×1  image 0, stream @0x0000   A
        0x2000 ×1  image 1, stream @0x0000   B'
        0x3000 ×1  zero                      (C was dropped)
        0x4000 ×1  image 1, stream @0x1000   E
        0x5000 ×1  image 0, stream @0x3000   D
        0x6000 ×1  image 1, stream @0x2000   F

Rules: the *newest* pagemap decides which pages exist (a page it does not
cover is not restored, whatever older images say); HERE and ZERO end the
lookup; PARENT continues in the parent, which may itself say PARENT, down to
the base.  A PARENT page the parent does not have is a broken chain.  Restore
therefore reads every page exactly once, from the newest image holding it
(:func:`iter_chain_pages`).  The same two directories are committed as the
golden images ``images/chain/{0,1}``.
"""

from __future__ import annotations

import bisect
import os
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager

from ckpt.errors import ChainError, ImageError, NotAnImage
from ckpt.image import kinds
from ckpt.image.reader import ChunkReader, Image, chunk_pieces, iter_stream
from ckpt.image.records import Pagemap, PageSource, PageState

__all__ = ["MAX_CHAIN_LENGTH", "walk_chain", "open_chain", "resolve_pages", "iter_chain_pages", "chain_chunk_jobs"]

#: A chain longer than this is treated as broken (it would be a loop we failed to see).
MAX_CHAIN_LENGTH = 10_000


def walk_chain(path: str | os.PathLike[str], *, check_sizes: bool = True) -> tuple[list[Image], ImageError | None]:
    """Open ``path`` and its ancestors; return ([base, ..., newest], the error that stopped the walk).

    Opening ``path`` itself raises as :meth:`Image.open` does; problems further
    up the chain are returned, so ``verify`` can still check what it reached.
    ``check_sizes`` is passed to :meth:`Image.open`.
    """
    newest = Image.open(path, check_sizes=check_sizes)
    images = [newest]
    seen = {os.path.realpath(newest.path): newest}
    child = newest
    while (link := child.parent) is not None:
        where = child.inventory_path
        parent_path = os.path.normpath(os.path.join(child.path, link.path))
        real = os.path.realpath(parent_path)
        if real in seen:
            return images[::-1], ChainError(where, f"loop in the parent chain: parent {link.path} is {seen[real].path}, already in the chain")
        if len(images) >= MAX_CHAIN_LENGTH:
            return images[::-1], ChainError(where, f"parent chain longer than {MAX_CHAIN_LENGTH} images")
        try:
            parent = Image.open(parent_path, check_sizes=check_sizes)
        except NotAnImage as exc:
            return images[::-1], ChainError(where, f"parent {link.path} is missing: {exc.path}: {exc.problem}")
        except ImageError as exc:
            return images[::-1], exc
        if parent.id != link.image_id:
            return images[::-1], ChainError(
                where, f"parent {link.path} has image id {parent.id}, but this image was taken on {link.image_id}"
            )
        if parent.page_size != child.page_size:
            return images[::-1], ChainError(where, f"parent {link.path} has page size {parent.page_size}, this image {child.page_size}")
        images.append(parent)
        seen[real] = parent
        child = parent
    return images[::-1], None


def open_chain(path: str | os.PathLike[str]) -> list[Image]:
    """[base, ..., newest] for the image at ``path``; ChainError if any link is broken."""
    images, error = walk_chain(path)
    if error is not None:
        raise error
    return images


def _pagemap_at(chain: Sequence[Image], level: int, owner: str) -> Pagemap | None:
    image = chain[level]
    return image.pagemap(owner) if image.has(kinds.PAGEMAP.file_name(owner)) else None


def resolve_pages(chain: Sequence[Image], owner: int | str,
                  within: Sequence[tuple[int, int]] | None = None) -> list[PageSource]:
    """For each page of ``owner`` in the newest image, the image that holds its bytes.

    Returns sorted, merged runs; ``image`` indexes ``chain`` (None: zero pages).
    ``within``: only the pages inside these sorted, disjoint address intervals
    (a staged restore resolves just the ranges it maps afresh).
    See the module docstring for a worked example.  The pagemaps are decoded
    one level at a time, so a long chain holds at most two.
    """
    if not chain:
        return []
    key = kinds.owner_name(owner)
    top = len(chain) - 1
    newest = _pagemap_at(chain, top, key)
    if newest is None:
        raise ChainError(chain[top].path, f"no pagemap for {key} in this image")
    ps = chain[top].page_size
    here, zero = int(PageState.HERE), int(PageState.ZERO)
    out: list[tuple[int, int, int | None, int]] = []  # vaddr, end, image, data_offset
    # PARENT pieces still to look up, as (vaddr, end), for the level being processed.
    pending: list[tuple[int, int]] = []
    rows = (zip(newest.vaddrs, newest.nr_pages, newest.states, newest.data_offsets) if within is None
            else _clipped(newest, within))
    for vaddr, n, state, data_offset in rows:
        end = vaddr + n * ps
        if state == here:
            out.append((vaddr, end, top, data_offset))
        elif state == zero:
            out.append((vaddr, end, None, 0))
        else:
            pending.append((vaddr, end))
    del newest
    level = top
    while pending:
        child_map = chain[level].file_path(kinds.PAGEMAP.file_name(key))
        npages = sum(e - v for v, e in pending) // ps
        if level == 0:
            raise ChainError(child_map, f"{npages} pages are marked PARENT but the image has no parent")
        level -= 1
        pm = _pagemap_at(chain, level, key)
        if pm is None:
            raise ChainError(
                child_map, f"{npages} pages are marked PARENT but the parent {chain[level].path} has no {kinds.PAGEMAP.file_name(key)}"
            )
        starts, counts, states, offsets = pm.vaddrs, pm.nr_pages, pm.states, pm.data_offsets
        nranges = len(starts)
        next_pending: list[tuple[int, int]] = []
        for vaddr, end in pending:
            pos = vaddr
            i = bisect.bisect_right(starts, pos) - 1
            if i < 0 or starts[i] + counts[i] * ps <= pos:
                i += 1
            while pos < end:
                if i >= nranges or starts[i] > pos:
                    gap_end = end if i >= nranges else min(end, starts[i])
                    raise ChainError(
                        child_map,
                        f"pages {pos:#x}-{gap_end:#x} are marked PARENT but the parent {chain[level].path} does not have them",
                    )
                stop = min(end, starts[i] + counts[i] * ps)
                if states[i] == here:
                    out.append((pos, stop, level, offsets[i] + (pos - starts[i])))
                elif states[i] == zero:
                    out.append((pos, stop, None, 0))
                else:
                    next_pending.append((pos, stop))
                pos = stop
                i += 1
        pending = next_pending
        del pm
    out.sort()
    merged: list[PageSource] = []
    for vaddr, end, image, data_offset in out:
        if merged:
            last = merged[-1]
            last_end = last.vaddr + last.nr_pages * ps
            if (
                last_end == vaddr
                and last.image == image
                and (image is None or last.data_offset + last.nr_pages * ps == data_offset)
            ):
                merged[-1] = PageSource(last.vaddr, last.nr_pages + (end - vaddr) // ps, image, last.data_offset)
                continue
        merged.append(PageSource(vaddr, (end - vaddr) // ps, image, data_offset))
    return merged


def _clipped(pm: Pagemap, within: Sequence[tuple[int, int]]) -> Iterator[tuple[int, int, int, int]]:
    """The parts of a pagemap's sorted ranges inside sorted, disjoint intervals, as (vaddr, nr_pages,
    state, data_offset) (HERE data offsets moved along)."""
    ps = pm.page_size
    starts, counts, states, offsets = pm.vaddrs, pm.nr_pages, pm.states, pm.data_offsets
    here = int(PageState.HERE)
    for lo, hi in within:
        i = max(0, bisect.bisect_right(starts, lo) - 1)
        while i < len(starts) and starts[i] < hi:
            s, e = max(starts[i], lo), min(starts[i] + counts[i] * ps, hi)
            if s < e:
                off = offsets[i] + (s - starts[i]) if states[i] == here else 0
                yield s, (e - s) // ps, states[i], off
            i += 1


def _wanted_by_image(chain: Sequence[Image], owner: int | str, sources: Sequence[PageSource] | None
                     ) -> dict[int, list[tuple[int, int, int]]]:
    """Per chain index, the (data_offset, vaddr, nbytes) pieces to read from that image."""
    if sources is None:
        sources = resolve_pages(chain, owner)
    by_image: dict[int, list[tuple[int, int, int]]] = {}
    for s in sources:
        if s.image is not None:
            by_image.setdefault(s.image, []).append((s.data_offset, s.vaddr, s.nr_pages * chain[s.image].page_size))
    return by_image


def iter_chain_pages(
    chain: Sequence[Image], owner: int | str, sources: Sequence[PageSource] | None = None
) -> Iterator[tuple[int, memoryview]]:
    """Yield (vaddr, bytes) for every non-zero page of ``owner`` in the newest image.

    Each page is read once, from the newest image that holds it (``sources``
    from :func:`resolve_pages`, computed when not given).  Pages come grouped by
    image (base first), in address order within an image; every chunk is
    checked before use, and each view is valid only until the next item.
    """
    key = kinds.owner_name(owner)
    by_image = _wanted_by_image(chain, owner, sources)
    for index in sorted(by_image):
        image = chain[index]
        pm = image.pagemap(key)
        wanted = sorted(by_image[index])
        with image.chunk_reader(pm) as reader:
            yield from iter_stream(reader, pm, wanted)


#: One chunk to load and the pieces of it to use: (reader, chunk index, [(vaddr, start, nbytes)]).
ChunkJob = tuple[ChunkReader, int, list[tuple[int, int, int]]]


@contextmanager
def chain_chunk_jobs(chain: Sequence[Image], owner: int | str,
                     sources: Sequence[PageSource] | None = None) -> Iterator[list[ChunkJob]]:
    """The chunks :func:`iter_chain_pages` would load, as jobs for callers with threads of their own.

    Same pages, same rule (each from the newest image holding it); the
    readers stay open for the ``with`` block.  Load each job with
    :meth:`ChunkReader.load_into` on any thread: pieces of different jobs
    never overlap in the address space, so their order does not matter.
    """
    key = kinds.owner_name(owner)
    by_image = _wanted_by_image(chain, owner, sources)
    with ExitStack() as stack:
        jobs: list[ChunkJob] = []
        for index in sorted(by_image):
            image = chain[index]
            pm = image.pagemap(key)
            reader = stack.enter_context(image.chunk_reader(pm))
            jobs.extend((reader, i, pieces) for i, pieces in chunk_pieces(reader.path, pm, sorted(by_image[index])))
        yield jobs
