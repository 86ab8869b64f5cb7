"""``ckpt show``: decode an image (or one file of it) to readable text or JSON.

Decoding is table driven: the kind magic in each file's header picks a
decoder from ``DECODERS``; record kinds share one generic decoder that walks
the protobuf descriptors, printing integers marked ``[(hex) = true]`` in the
.proto files as hex (``[(oct) = true]`` as octal) and enums by name.  Page data is summarised, never dumped;
pagemaps print one line per range and, in the image summary, how many pages
each owner has here / in the parent / as zero.

Every file is decoded after checking its header and end marker; a damaged
file raises ``CorruptImage`` (``ckpt verify`` lists all problems instead).
An image directory must pass the checks of ``ckpt verify`` (but the reading of
page data) before it is shown; one file named alone is decoded as it is.
Only the header of a pages file is read.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import signal
import textwrap
from collections.abc import Callable, Iterator
from typing import Any

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from ckpt.errors import CorruptImage
from ckpt.image import bounds, framing, kinds, sealing, signing
from ckpt.image.pb import options_pb2
from ckpt.image.reader import Image, decode_pagemap, read_file, read_record_file
from ckpt.image.records import PageChunk, Pagemap, PageState, TrackingInfo
from ckpt.image.verify import validated_chain
from ckpt.resources import cpu as cpu_features
from ckpt.resources import host, timens

__all__ = ["DECODERS", "decode_file", "show_dict", "show", "iter_show", "message_to_dict"]

#: Bytes fields longer than this are abbreviated in text output (JSON has them whole).
_TEXT_BYTES = 32


class _Verbatim(str):
    """Text output that must not be quoted (summaries, lists)."""


def _scalar(fd: FieldDescriptor, value: Any, text: bool) -> Any:
    if fd.message_type is not None:
        return message_to_dict(value, text=text)
    if fd.enum_type is not None:
        ev = fd.enum_type.values_by_number.get(value)
        return ev.name if ev is not None else value
    if fd.type == FieldDescriptor.TYPE_BYTES:
        raw = bytes(value)
        if text and len(raw) > _TEXT_BYTES:
            return _Verbatim(f"<{len(raw)} bytes: {raw[:16].hex()}…>")
        return raw.hex()
    if isinstance(value, int) and not isinstance(value, bool):
        opts = fd.GetOptions()
        if opts.Extensions[options_pb2.hex]:
            return hex(value)
        if opts.Extensions[options_pb2.oct]:
            return oct(value)
    return value


def message_to_dict(message: Message, *, text: bool = False) -> dict[str, Any]:
    """A protobuf message as plain data: every scalar field (defaults too), set sub-messages, non-empty lists.

    ``text`` abbreviates long bytes fields for human output.
    """
    out: dict[str, Any] = {}
    for fd in message.DESCRIPTOR.fields:
        value = getattr(message, fd.name)
        if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
            if value:
                vfd = fd.message_type.fields_by_name["value"]
                out[fd.name] = {k: _scalar(vfd, value[k], text) for k in sorted(value)}
        elif fd.is_repeated:
            if value:
                out[fd.name] = [_scalar(fd, v, text) for v in value]
        elif fd.has_presence:
            if message.HasField(fd.name):
                out[fd.name] = _scalar(fd, value, text)
        else:
            out[fd.name] = _scalar(fd, value, text)
    return out


class _Stream(list):  # type: ignore[type-arg]
    """A list to the JSON encoder and the text renderer that makes its items as it is walked, holding none.

    A pagemap lists up to a million ranges: as dicts and strings they were ~0.3
    KiB each, for output that is written out and forgotten.  Only :func:`iter_show`
    uses it; :func:`show_dict` returns plain lists.
    """

    def __init__(self, n: int, make: Callable[[], Iterator[Any]]) -> None:
        super().__init__()
        self._n, self._make = n, make

    def __len__(self) -> int:
        return self._n

    def __bool__(self) -> bool:
        return self._n > 0

    def __iter__(self) -> Iterator[Any]:
        return self._make()


# -- decoders, one per kind -----------------------------------------------------


def _decode_records(path: str, kind: kinds.Kind, data: bytes, text: bool, lazy: bool) -> dict[str, Any]:
    version, messages = read_record_file(path, kind, data)
    out: dict[str, Any] = {"format": version}
    if kind.head is not None:
        out["head"] = {"type": kind.head.__name__, **message_to_dict(messages[0], text=text)}
        messages = messages[1:]
    assert kind.record is not None
    out["record_type"] = kind.record.__name__
    out["records"] = [message_to_dict(m, text=text) for m in messages]
    return out


def _range_line(vaddr: int, nr_pages: int, page_size: int, state: PageState, data_offset: int) -> str:
    line = f"{vaddr:#014x}-{vaddr + nr_pages * page_size:#014x}  {state.name:<6} {nr_pages:>7} page{'s' if nr_pages != 1 else ''}"
    return line + (f"  data @{data_offset:#x}" if state is PageState.HERE else "")


def _chunk_dict(c: PageChunk) -> dict[str, Any]:
    return {"offset": hex(c.offset), "length": c.length, "data_offset": hex(c.data_offset),
            "raw_length": c.raw_length, "codec": c.codec.name, "crc32": f"{c.crc32:#010x}"}


def _chunk_line(i: int, c: dict[str, Any]) -> str:
    return (f"#{i:<4} @{c['offset']:<10} {c['length']:>9} bytes -> {c['raw_length']:>9} raw  {c['codec']:<4} "
            f"crc {c['crc32']}  data @{c['data_offset']}")


def _decode_pagemap(path: str, kind: kinds.Kind, data: bytes, text: bool, lazy: bool) -> dict[str, Any]:
    _, version = framing.parse_header(path, data, kind.magic, names=kinds.MAGIC_NAMES)
    pm, head_pb, _ = decode_pagemap(path, framing.split_records(path, sealing.plain(path, data)))
    head = message_to_dict(head_pb, text=text)
    head.pop("chunks", None)
    head.pop("ranges", None)  # format 2's table: listed below, one line per range
    states = {int(s): s for s in PageState}
    ps = pm.page_size

    def ranges() -> Iterator[Any]:
        for v, n, st, d in zip(pm.vaddrs, pm.nr_pages, pm.states, pm.data_offsets):
            state = states[st]
            if text:
                yield _range_line(v, n, ps, state, d)
            else:
                yield {"vaddr": hex(v), "nr_pages": n, "state": state.name} | (
                    {"data_offset": hex(d)} if state is PageState.HERE else {})

    def chunks() -> Iterator[Any]:
        for i, c in enumerate(pm.chunks):
            yield _chunk_line(i, _chunk_dict(c)) if text else _chunk_dict(c)

    return {
        "format": version,
        "head": {"type": "PagemapHead", **head},
        "summary": _pagemap_summary(pm),
        "chunks": _Stream(len(pm.chunks), chunks) if lazy else list(chunks()),
        "ranges": _Stream(len(pm.vaddrs), ranges) if lazy else list(ranges()),
    }


def _pagemap_of(image: Image, owner: str) -> Pagemap:
    """The pagemap of ``owner``, not kept by ``image`` (Image.pagemap keeps the last one it decoded)."""
    name = kinds.PAGEMAP.file_name(owner)
    path = image.file_path(name)
    return decode_pagemap(path, Image.payloads(path, kinds.PAGEMAP, image.files[name]))[0]


def _pagemap_summary(pm: Pagemap) -> dict[str, int]:
    return {
        "pages_here": pm.count(PageState.HERE),
        "pages_parent": pm.count(PageState.PARENT),
        "pages_zero": pm.count(PageState.ZERO),
        "ranges": len(pm.vaddrs),
        "chunks": len(pm.chunks),
        "raw_bytes": sum(c.raw_length for c in pm.chunks),
        "stored_bytes": sum(c.length for c in pm.chunks),
    }


def _decode_pages(path: str, kind: kinds.Kind, data: bytes, text: bool, lazy: bool) -> dict[str, Any]:
    """``data`` is the header only (page data is never read); its size is in the caller's summary."""
    _, version = framing.parse_header(path, data, kind.magic, names=kinds.MAGIC_NAMES)
    owner = kind.match(os.path.basename(path))
    return {
        "format": version,
        "page_data_bytes": os.lstat(path).st_size - framing.HEADER_SIZE,
        "note": f"page data is not shown; its chunks are listed in {kinds.PAGEMAP.file_name(owner or 'OWNER')}",
    }


#: (path, kind, bytes, text output, lazy lists) -> the file as plain data.
Decoder = Callable[[str, kinds.Kind, bytes, bool, bool], dict[str, Any]]

#: The decoder table, keyed by kind magic.
DECODERS: dict[bytes, Decoder] = {
    **{k.magic: _decode_records for k in kinds.KINDS if k.is_records},
    kinds.PAGEMAP.magic: _decode_pagemap,
    kinds.PAGES.magic: _decode_pages,
}


def decode_file(path: str | os.PathLike[str], *, text: bool = False, size: int | None = None,
                lazy: bool = False) -> dict[str, Any]:
    """Decode one image file, picking the decoder by the magic in its header.

    ``size``: the size inventory.img records for it (checked before the file is read).
    A pages file is not read past its header.  ``lazy``: a pagemap's ranges and
    chunks come as lists that make their items when walked (for :func:`iter_show`).
    """
    path = os.path.abspath(os.fspath(path))
    fd = _open(path)
    try:
        head = os.pread(fd, framing.HEADER_SIZE, 0)
        actual = os.fstat(fd).st_size
    except OSError as exc:
        raise CorruptImage(path, f"cannot read: {exc.strerror}") from None
    finally:
        os.close(fd)
    magic, _ = framing.parse_header(path, head, names=kinds.MAGIC_NAMES)
    kind = kinds.BY_MAGIC.get(magic)
    if kind is None:
        raise CorruptImage(path, f"unknown file kind magic {magic!r}")
    if kind is kinds.PAGES:
        if size is not None and actual != size:
            raise CorruptImage(path, f"size is {actual} bytes, inventory.img says {size} (truncated or extended)")
        data = head
    else:
        limit = bounds.MAX_INVENTORY_SIZE if kind is kinds.INVENTORY else framing.MAX_RECORD_SIZE + (1 << 20)
        data = read_file(path, size, max_size=limit, kind=kind, missing="no such file")
    decoded = DECODERS[magic](path, kind, data, text, lazy)
    return {"file": os.path.basename(path), "kind": kind.name, "magic": magic.decode("ascii"), "size": actual, **decoded}


def _open(path: str) -> int:
    try:
        return framing.open_image_file(path)
    except FileNotFoundError:
        raise CorruptImage(path, "missing: no such file") from None


def _iso(ns: int) -> str:
    return _dt.datetime.fromtimestamp(ns / 1e9, _dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def show_dict(path: str | os.PathLike[str], *, text: bool = False) -> dict[str, Any]:
    """Everything in an image directory (or one file) as plain data.

    A directory is checked first as a restore checks it (every check of
    ``ckpt verify`` but page data, its parent chain too): a damaged image is
    refused with its first problem.  A single file is decoded as it is,
    whatever the rest of its image says.
    """
    d = _show(path, text=text, lazy=False)
    if "files" in d:
        d["files"] = list(d["files"])
    return d


def _show(path: str | os.PathLike[str], *, text: bool, lazy: bool) -> dict[str, Any]:
    """:func:`show_dict`, its files decoded one at a time as the ``files`` list is walked."""
    path = os.path.abspath(os.fspath(path))
    if os.path.lexists(path) and not os.path.isdir(path):
        return decode_file(path, text=text, lazy=lazy)
    image = validated_chain(path)[-1]
    inv = image.inventory
    order = {k.name: i for i, k in enumerate(kinds.KINDS)}

    def sort_key(name: str) -> tuple[int, str]:
        found = kinds.kind_of_file(name)
        return (order[found[0].name] if found else len(order), name)

    names = sorted(image.files, key=sort_key)

    def files() -> Iterator[dict[str, Any]]:
        yield decode_file(image.inventory_path, text=text, lazy=lazy)
        for n in names:
            yield decode_file(image.file_path(n), text=text, size=image.files[n].size, lazy=lazy)

    owners = [o for o in (kinds.PAGEMAP.match(n) for n in names) if o is not None]
    pages = {o: _pagemap_summary(_pagemap_of(image, o)) for o in owners}  # one pagemap at a time
    parent = image.parent
    summary = {
        "path": image.path,
        "image_id": image.id,
        "kind": image.kind.name,
        "format": image.format_version,
        "requires": list(inv.required_features),  # what a restore must know (ckpt/image/compat.py)
        "created": _iso(inv.created_ns),
        "ckpt_version": inv.ckpt_version,
        "kernel_release": inv.kernel_release,
        "kernel": _kernel(inv),
        "tracking": inv.tracking,
        "cpu": None if (rec := cpu_features.recorded(inv)) is None else cpu_features.describe(rec),
        "clocks": timens.describe(inv.clocks, inv.boot_id) if inv.HasField("clocks") else None,
        "parent": None if parent is None else {"path": parent.path, "image_id": parent.image_id},
        "encrypted_with": inv.encryption.key_id.hex() if inv.HasField("encryption") else None,  # a key id
        "signed_by": signing.key_of(image.path),  # the signing key's fingerprint (not checked here: verify --verify-key)
        "processes": [
            {"pid": p.pid, "ppid": p.ppid, "pgid": p.pgid, "sid": p.sid, "threads": list(p.threads),
             **({"zombie": {"wait_status": p.wait_status, "comm": p.comm}} if p.zombie else {}),
             **_tracked(p.tracking)} for p in image.processes
        ],
        "pages": pages,
    }
    return {"image": summary, "files": _Stream(len(names) + 1, files)}


def _kernel(inv: Any) -> dict[str, Any]:
    """The kernel the image was taken on: uname, and the vDSO and vvar areas (None in an older ckpt's image)."""
    k = host.recorded(inv)
    areas = None if not k.areas else {
        "areas": {name: size for name, size in k.areas},
        "vdso_build_id": k.vdso_build_id.hex(), "vdso_sha256": k.vdso_sha256.hex()}
    return {"release": k.release, "version": k.version, "machine": k.machine, "vdso": areas}


def _tracked(t: TrackingInfo | None) -> dict[str, str]:
    """The address ranges whose tracking this image carries on (``pre-dump --ranges``): "all" or hex spans."""
    if t is None or not t.method:
        return {}
    spans = lambda ivs: ",".join(f"{s:x}-{e:x}" for s, e in ivs)  # noqa: E731
    text = "all" if t.include is None else spans(t.include)
    return {"tracked": f"{text} minus {spans(t.exclude)}" if t.exclude else text}


_WIDTH = 100


def _text_scalar(value: Any) -> str:
    if isinstance(value, str) and not isinstance(value, _Verbatim) and (value == "" or " " in value):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def _pack(items: list[tuple[str, Any]], pad: str) -> Iterator[str]:
    """Scalar fields as ``key: value`` pairs, several to a line."""
    line = ""
    for k, v in items:
        part = f"{k}: {_text_scalar(v)}"
        if line and len(pad) + len(line) + 2 + len(part) > _WIDTH:
            yield pad + line
            line = part
        else:
            line = f"{line}  {part}" if line else part
    if line:
        yield pad + line


def _is_scalar(value: Any) -> bool:
    return not isinstance(value, (dict, list))


def _render_fields(d: dict[str, Any], indent: int) -> Iterator[str]:
    pad = "  " * indent
    run: list[tuple[str, Any]] = []
    for k, v in d.items():
        if _is_scalar(v) or (isinstance(v, list) and len(v) < 40 and all(_is_scalar(x) for x in v)
                             and len(str(list(v))) < 40):
            run.append((k, v if _is_scalar(v) else _Verbatim("[" + ", ".join(map(str, v)) + "]")))
            continue
        yield from _pack(run, pad)
        run = []
        yield from _render(v, indent, k)
    yield from _pack(run, pad)


def _render(value: Any, indent: int, key: str) -> Iterator[str]:
    pad = "  " * indent
    if isinstance(value, dict):
        one_line = "{" + ", ".join(f"{k}: {_text_scalar(v)}" for k, v in value.items()) + "}"
        if all(_is_scalar(v) for v in value.values()) and len(pad) + len(key) + len(one_line) + 2 <= _WIDTH:
            yield f"{pad}{key}: {one_line}"
            return
        yield f"{pad}{key}:"
        yield from _render_fields(value, indent + 1)
    elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        for i, v in enumerate(value):
            yield from _render(v, indent, f"{key}[{i}]")
    elif isinstance(value, list) and value and all(isinstance(v, str) and len(v) > 24 for v in value):
        yield f"{pad}{key}:"
        yield from (f"{pad}  {v}" for v in value)
    elif isinstance(value, list):
        yield f"{pad}{key}: [{', '.join(str(v) for v in value)}]"
    else:
        yield f"{pad}{key}: {_text_scalar(value)}"


def _text_lines(d: dict[str, Any]) -> Iterator[str]:
    files = d["files"] if "files" in d else [d]
    if "image" in d:
        s = d["image"]
        yield f"image {s['path']}"
        yield f"  id {s['image_id']}  kind {s['kind']}  format {s['format']}  created {s['created']}"
        yield f"  ckpt {s['ckpt_version']}  kernel {s['kernel_release']}  tracking {s['tracking']}"
        if s["requires"]:
            yield f"  a restore needs: {', '.join(s['requires'])}"
        k = s["kernel"]
        yield f"  kernel: {' '.join(p for p in ('Linux', k['release'], k['version'], k['machine']) if p)}"
        v = k["vdso"]
        if v is None:
            yield "  vdso: not recorded (an image of an older ckpt)"
        else:
            yield (f"  vdso: build-id {v['vdso_build_id'] or 'none'}, sha256 {v['vdso_sha256'][:16]}…; "
                   + ", ".join(f"{name} {size}" for name, size in v["areas"].items()) + " bytes")
        cpu = s["cpu"]
        if cpu is None:
            yield "  cpu: not recorded (an image of an older ckpt)"
        else:
            yield f"  cpu {cpu['cpu']}  xcr0 {cpu['xcr0']}  xstate {cpu['xstate_size']} bytes"
            for label in ("instructions", "other"):
                yield from textwrap.wrap(cpu[label], _WIDTH, initial_indent=f"  cpu {label}: ",
                                         subsequent_indent="    ", break_on_hyphens=False)
        c = s["clocks"]
        if c is not None:
            yield f"  clocks monotonic {c['monotonic']}  boottime {c['boottime']}  realtime {_iso(c['realtime_ns'])}"
            yield f"  boot {c['boot_id']}  time namespace: {c['time_ns']}"
        p = s["parent"]
        yield "  parent: none (base image)" if p is None else f"  parent: {p['path']} (id {p['image_id']})"
        sealed_with = s.get("encrypted_with")
        yield "  encrypted: no" if sealed_with is None else f"  encrypted: {sealing.CIPHER}, key id {sealed_with}"
        signer = s.get("signed_by")
        yield ("  signed: no" if signer is None else
               f"  signed: by key {signer}… (checked by verify/restore --verify-key, not here)")
        for proc in s["processes"]:
            ids = f"ppid {proc['ppid']}" + (f", pgid {proc['pgid']}, sid {proc['sid']}" if proc["sid"] else "")
            if "zombie" in proc:
                z = proc["zombie"]
                yield f"  process {proc['pid']} ({ids}), zombie ({z['comm']}, {_wait_text(z['wait_status'])})"
                continue
            yield (f"  process {proc['pid']} ({ids}), threads {' '.join(map(str, proc['threads']))}"
                   + (f", tracked ranges {proc['tracked']}" if "tracked" in proc else ""))
        for owner, c in s["pages"].items():
            yield (f"  pages of {owner}: {c['pages_here']} here, {c['pages_parent']} in parent, {c['pages_zero']} zero"
                   f" ({c['chunks']} chunks, {c['raw_bytes']} bytes raw, {c['stored_bytes']} stored)")
        yield ""
    for f in files:
        yield f"== {f['file']}  [{f['kind']}, magic {f['magic']}, format {f['format']}, {f['size']} bytes]"
        body = {k: v for k, v in f.items() if k not in ("file", "kind", "magic", "format", "size", "record_type")}
        records = body.pop("records", None)
        yield from _render_fields(body, 1)
        if records is not None:
            for i, r in enumerate(records):
                yield from _render(r, 1, f"{f['record_type']} #{i}")
        yield ""


def iter_show(path: str | os.PathLike[str], as_json: bool = False) -> Iterator[str]:
    """:func:`show`'s output, piece by piece, followed by a newline; memory stays bounded whatever the image holds.

    The image is checked (a directory) before the first piece; each file is
    decoded when its turn comes, and a pagemap's ranges are formatted as they
    are written out.
    """
    if as_json:
        yield from json.JSONEncoder(indent=2).iterencode(_show(path, text=False, lazy=True))
        yield "\n"
        return
    for line in _text_lines(_show(path, text=True, lazy=True)):
        yield line + "\n"


def show(path: str | os.PathLike[str], as_json: bool = False) -> str:
    """Decode an image directory (or a single .img file) to text like ``crit show``, or to JSON."""
    return "".join(iter_show(path, as_json=as_json))[:-1]


def _wait_text(status: int) -> str:
    """A wait status as a person reads it: "exit 7", "killed by SIGTERM"."""
    if os.WIFSIGNALED(status):
        try:
            name = signal.Signals(os.WTERMSIG(status)).name
        except ValueError:
            name = f"signal {os.WTERMSIG(status)}"
        return f"killed by {name}"
    return f"exit {os.WEXITSTATUS(status)}"
