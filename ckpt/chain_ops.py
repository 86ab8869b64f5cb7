"""Operations on whole image chains: squash base + deltas into one standalone image (``ckpt merge``)."""

from __future__ import annotations

import heapq
import os
from collections.abc import Iterator
from dataclasses import dataclass, replace

from .errors import UsageError
from .image import kinds
from .image.chain import iter_chain_pages, open_chain, resolve_pages
from .image.records import ImageKind
from .image.store import DEFAULT_COMPRESS_LEVEL, ImageWriter
from .resources import host

__all__ = ["MergeStats", "merge"]

#: Files rebuilt by the merge rather than copied from the newest image.
_REBUILT = {kinds.PAGEMAP, kinds.PAGES, kinds.DIGESTS, kinds.INVENTORY}


@dataclass(frozen=True)
class MergeStats:
    """What ``merge`` wrote: the images it read (base first) and the pages it now holds."""

    out_dir: str
    images: tuple[str, ...]
    pages_stored: int
    pages_zero: int


def _events(chain, owner: str) -> Iterator[tuple[int, int, object]]:  # noqa: ANN001
    """Address-ordered (vaddr, npages or 0, view or None) of ``owner``: zero runs and page data from every image.

    iter_chain_pages yields image by image; one generator per image, merged by
    address, gives the PageWriter the increasing order it needs while each
    page is still read once, from the newest image holding it.
    """
    sources = resolve_pages(chain, owner)
    streams: list[Iterator[tuple[int, int, object]]] = [
        iter((s.vaddr, s.nr_pages, None) for s in sources if s.image is None)]
    for index in sorted({s.image for s in sources if s.image is not None}):
        mine = [s for s in sources if s.image == index]
        streams.append((vaddr, 0, view) for vaddr, view in iter_chain_pages(chain, owner, mine))
    return heapq.merge(*streams, key=lambda e: e[0])


def merge(image_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str], *,
          compress_level: int | None = DEFAULT_COMPRESS_LEVEL) -> MergeStats:
    """Write the chain ending at ``image_dir`` as one image without a parent at ``out_dir``.

    The records (threads, mm, files...) are those of the newest image; every
    page is taken from the newest image that holds it.  The result is FULL
    (PRE_DUMP when the newest image is a pre-dump) and records no tracking: it
    stands alone, so no later delta can be taken against it by mistake.
    """
    chain = open_chain(image_dir)
    newest = chain[-1]
    if os.path.abspath(os.fspath(out_dir)) == os.path.abspath(newest.path):
        raise UsageError("merge: the output directory must differ from the image")
    kind = ImageKind.PRE_DUMP if newest.kind is ImageKind.PRE_DUMP else ImageKind.FULL
    stored = zero = 0
    cpu = newest.inventory.cpu if newest.inventory.HasField("cpu") else None  # where the process ran, not here
    kernel = host.recorded(newest.inventory)  # likewise
    # The boot its clocks count from, not this one's: a restore compares it (ckpt.resources.timens).
    boot_id = newest.inventory.boot_id or None
    with ImageWriter(out_dir, kind=kind, compress_level=compress_level, cpu=cpu, kernel=kernel,
                     kernel_release=kernel.release, boot_id=boot_id) as w:
        for feature in newest.inventory.required_features:  # its records still need them (e.g. cow-shared)
            w.require(feature)
        for name in sorted(newest.files):
            found = kinds.kind_of_file(name)
            if found is None or found[0] in _REBUILT:
                continue
            w.write_records(name, found[0], newest.records(name))
        for owner in newest.owners():
            pw = w.pages(owner)
            for vaddr, npages, view in _events(chain, owner):
                if view is None:
                    pw.add_zero(vaddr, npages)
                else:
                    pw.add(vaddr, view)  # type: ignore[arg-type]
            st = pw.close()
            stored += st.pages_here
            zero += st.pages_zero
        # The merged image stands alone: no tracking state goes with it (its parent chain is gone).
        w.commit(processes=[replace(p, tracking=None) for p in newest.processes],
                 extra=dict(newest.inventory.extra),
                 clocks=newest.inventory.clocks if newest.inventory.HasField("clocks") else None)
    return MergeStats(os.path.abspath(os.fspath(out_dir)), tuple(img.path for img in chain), stored, zero)
