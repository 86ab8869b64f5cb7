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
from collections.abc import Callable
from typing import Any

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from ckpt.errors import CorruptImage
from ckpt.image import bounds, framing, kinds
from ckpt.image.pb import options_pb2
from ckpt.image.reader import _pagemap_from, read_file, read_record_file
from ckpt.image.records import PageState, TrackingInfo
from ckpt.image.verify import validated_chain

__all__ = ["DECODERS", "decode_file", "show_dict", "show", "message_to_dict"]

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


# -- decoders, one per kind -----------------------------------------------------


def _decode_records(path: str, kind: kinds.Kind, data: bytes, text: bool) -> dict[str, Any]:
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


def _decode_pagemap(path: str, kind: kinds.Kind, data: bytes, text: bool) -> dict[str, Any]:
    version, messages = read_record_file(path, kind, data)
    pm = _pagemap_from(path, messages)
    head = message_to_dict(messages[0], text=text)
    head.pop("chunks", None)
    head.pop("ranges", None)  # format 2's table: listed below, one line per range
    chunks = [
        {
            "offset": hex(c.offset),
            "length": c.length,
            "data_offset": hex(c.data_offset),
            "raw_length": c.raw_length,
            "codec": c.codec.name,
            "crc32": f"{c.crc32:#010x}",
        }
        for c in pm.chunks
    ]
    if text:
        ranges: list[Any] = [_range_line(r.vaddr, r.nr_pages, pm.page_size, r.state, r.data_offset) for r in pm.ranges]
        chunk_list: list[Any] = [
            f"#{i:<4} @{c['offset']:<10} {c['length']:>9} bytes -> {c['raw_length']:>9} raw  {c['codec']:<4} "
            f"crc {c['crc32']}  data @{c['data_offset']}"
            for i, c in enumerate(chunks)
        ]
    else:
        ranges = [
            {"vaddr": hex(r.vaddr), "nr_pages": r.nr_pages, "state": r.state.name}
            | ({"data_offset": hex(r.data_offset)} if r.state is PageState.HERE else {})
            for r in pm.ranges
        ]
        chunk_list = chunks
    return {
        "format": version,
        "head": {"type": "PagemapHead", **head},
        "summary": _pagemap_summary(pm),
        "chunks": chunk_list,
        "ranges": ranges,
    }


def _pagemap_summary(pm: Any) -> dict[str, int]:
    return {
        "pages_here": pm.count(PageState.HERE),
        "pages_parent": pm.count(PageState.PARENT),
        "pages_zero": pm.count(PageState.ZERO),
        "ranges": len(pm.ranges),
        "chunks": len(pm.chunks),
        "raw_bytes": sum(c.raw_length for c in pm.chunks),
        "stored_bytes": sum(c.length for c in pm.chunks),
    }


def _decode_pages(path: str, kind: kinds.Kind, data: bytes, text: bool) -> dict[str, Any]:
    """``data`` is the header only (page data is never read); its size is in the caller's summary."""
    _, version = framing.parse_header(path, data, kind.magic, names=kinds.MAGIC_NAMES)
    owner = kind.match(os.path.basename(path))
    return {
        "format": version,
        "page_data_bytes": os.lstat(path).st_size - framing.HEADER_SIZE,
        "note": f"page data is not shown; its chunks are listed in {kinds.PAGEMAP.file_name(owner or 'OWNER')}",
    }


Decoder = Callable[[str, kinds.Kind, bytes, bool], dict[str, Any]]

#: The decoder table, keyed by kind magic.
DECODERS: dict[bytes, Decoder] = {
    **{k.magic: _decode_records for k in kinds.KINDS if k.is_records},
    kinds.PAGEMAP.magic: _decode_pagemap,
    kinds.PAGES.magic: _decode_pages,
}


def decode_file(path: str | os.PathLike[str], *, text: bool = False, size: int | None = None) -> dict[str, Any]:
    """Decode one image file, picking the decoder by the magic in its header.

    ``size``: the size inventory.img records for it (checked before the file is read).
    A pages file is not read past its header.
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
    decoded = DECODERS[magic](path, kind, data, text)
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
    path = os.path.abspath(os.fspath(path))
    if os.path.lexists(path) and not os.path.isdir(path):
        return decode_file(path, text=text)
    image = validated_chain(path)[-1]
    inv = image.inventory
    order = {k.name: i for i, k in enumerate(kinds.KINDS)}

    def sort_key(name: str) -> tuple[int, str]:
        found = kinds.kind_of_file(name)
        return (order[found[0].name] if found else len(order), name)

    files = [decode_file(image.inventory_path, text=text)]
    files += [decode_file(image.file_path(n), text=text, size=image.files[n].size)
              for n in sorted(image.files, key=sort_key)]
    pages = {f["head"]["owner"]: f["summary"] for f in files if f["kind"] == kinds.PAGEMAP.name}
    parent = image.parent
    summary = {
        "path": image.path,
        "image_id": image.id,
        "kind": image.kind.name,
        "format": image.format_version,
        "created": _iso(inv.created_ns),
        "ckpt_version": inv.ckpt_version,
        "kernel_release": inv.kernel_release,
        "tracking": inv.tracking,
        "parent": None if parent is None else {"path": parent.path, "image_id": parent.image_id},
        "processes": [
            {"pid": p.pid, "ppid": p.ppid, "pgid": p.pgid, "sid": p.sid, "threads": list(p.threads),
             **({"zombie": {"wait_status": p.wait_status, "comm": p.comm}} if p.zombie else {}),
             **_tracked(p.tracking)} for p in image.processes
        ],
        "pages": pages,
    }
    return {"image": summary, "files": files}


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


def _pack(items: list[tuple[str, Any]], pad: str, lines: list[str]) -> None:
    """Scalar fields as ``key: value`` pairs, several to a line."""
    line = ""
    for k, v in items:
        part = f"{k}: {_text_scalar(v)}"
        if line and len(pad) + len(line) + 2 + len(part) > _WIDTH:
            lines.append(pad + line)
            line = part
        else:
            line = f"{line}  {part}" if line else part
    if line:
        lines.append(pad + line)


def _is_scalar(value: Any) -> bool:
    return not isinstance(value, (dict, list))


def _render_fields(d: dict[str, Any], indent: int, lines: list[str]) -> None:
    pad = "  " * indent
    run: list[tuple[str, Any]] = []
    for k, v in d.items():
        if _is_scalar(v) or (isinstance(v, list) and all(_is_scalar(x) for x in v) and len(str(v)) < 40):
            run.append((k, v if _is_scalar(v) else _Verbatim("[" + ", ".join(map(str, v)) + "]")))
            continue
        _pack(run, pad, lines)
        run = []
        _render(v, indent, lines, k)
    _pack(run, pad, lines)


def _render(value: Any, indent: int, lines: list[str], key: str) -> None:
    pad = "  " * indent
    if isinstance(value, dict):
        one_line = "{" + ", ".join(f"{k}: {_text_scalar(v)}" for k, v in value.items()) + "}"
        if all(_is_scalar(v) for v in value.values()) and len(pad) + len(key) + len(one_line) + 2 <= _WIDTH:
            lines.append(f"{pad}{key}: {one_line}")
            return
        lines.append(f"{pad}{key}:")
        _render_fields(value, indent + 1, lines)
    elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        for i, v in enumerate(value):
            _render(v, indent, lines, f"{key}[{i}]")
    elif isinstance(value, list) and value and all(isinstance(v, str) and len(v) > 24 for v in value):
        lines.append(f"{pad}{key}:")
        lines.extend(f"{pad}  {v}" for v in value)
    elif isinstance(value, list):
        lines.append(f"{pad}{key}: [{', '.join(str(v) for v in value)}]")
    else:
        lines.append(f"{pad}{key}: {_text_scalar(value)}")


def _render_text(d: dict[str, Any]) -> str:
    lines: list[str] = []
    files = d["files"] if "files" in d else [d]
    if "image" in d:
        s = d["image"]
        lines.append(f"image {s['path']}")
        lines.append(f"  id {s['image_id']}  kind {s['kind']}  format {s['format']}  created {s['created']}")
        lines.append(f"  ckpt {s['ckpt_version']}  kernel {s['kernel_release']}  tracking {s['tracking']}")
        p = s["parent"]
        lines.append("  parent: none (base image)" if p is None else f"  parent: {p['path']} (id {p['image_id']})")
        for proc in s["processes"]:
            ids = f"ppid {proc['ppid']}" + (f", pgid {proc['pgid']}, sid {proc['sid']}" if proc["sid"] else "")
            if "zombie" in proc:
                z = proc["zombie"]
                lines.append(f"  process {proc['pid']} ({ids}), zombie ({z['comm']}, {_wait_text(z['wait_status'])})")
                continue
            lines.append(f"  process {proc['pid']} ({ids}), threads {' '.join(map(str, proc['threads']))}"
                         + (f", tracked ranges {proc['tracked']}" if "tracked" in proc else ""))
        for owner, c in s["pages"].items():
            lines.append(
                f"  pages of {owner}: {c['pages_here']} here, {c['pages_parent']} in parent, {c['pages_zero']} zero"
                f" ({c['chunks']} chunks, {c['raw_bytes']} bytes raw, {c['stored_bytes']} stored)"
            )
        lines.append("")
    for f in files:
        lines.append(f"== {f['file']}  [{f['kind']}, magic {f['magic']}, format {f['format']}, {f['size']} bytes]")
        body = {k: v for k, v in f.items() if k not in ("file", "kind", "magic", "format", "size", "record_type")}
        records = body.pop("records", None)
        _render_fields(body, 1, lines)
        if records is not None:
            for i, r in enumerate(records):
                _render(r, 1, lines, f"{f['record_type']} #{i}")
        lines.append("")
    return "\n".join(lines)


def show(path: str | os.PathLike[str], as_json: bool = False) -> str:
    """Decode an image directory (or a single .img file) to text like ``crit show``, or to JSON."""
    if as_json:
        return json.dumps(show_dict(path), indent=2)
    return _render_text(show_dict(path, text=True))


def _wait_text(status: int) -> str:
    """A wait status as a person reads it: "exit 7", "killed by SIGTERM"."""
    if os.WIFSIGNALED(status):
        try:
            name = signal.Signals(os.WTERMSIG(status)).name
        except ValueError:
            name = f"signal {os.WTERMSIG(status)}"
        return f"killed by {name}"
    return f"exit {os.WEXITSTATUS(status)}"
