"""What decoding a record file would cost, known before it is decoded.

A protobuf record claims its counts with very few bytes: an empty element of
a repeated message field takes 2 bytes on the wire and ~0.1 KiB once decoded,
so an 8 MB inventory of empty ``ProcessRef``\\ s decoded to 340 MB, and a
pagemap claiming 2 M ranges (24 MB) to ~1 GB once turned into Python objects.
Before any record of a file is decoded, :func:`check_decode_cost` walks the
wire bytes (only as deep as the schema has repeated fields: a singular message
field sent a million times is merged into one, so it costs nothing more) and
adds up what the decoder would allocate:

* :data:`RECORD_COST` per top-level record (a decoded message has its own arena),
* :data:`MESSAGE_COST` per element of a repeated message field (and map entry),
* :data:`VALUE_COST` per element of a repeated scalar field.

Bytes and strings are not counted: they are bytes of the file, whose size is
already checked.  A file whose total passes :data:`MAX_DECODE_COST`, or one
repeated field holding more than :data:`MAX_VALUES` elements, is refused with
``CorruptImage`` naming the field; the writer applies the same rule
(:func:`decode_cost`), so ckpt never writes a file it would refuse to read.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from ckpt.errors import CorruptImage

__all__ = [
    "MAX_INVENTORY_SIZE",
    "MAX_CHUNK_SIZE",
    "RECORD_COST",
    "MESSAGE_COST",
    "VALUE_COST",
    "MAX_DECODE_COST",
    "MAX_IMAGE_DECODE_COST",
    "MAX_VALUES",
    "Cost",
    "decode_cost",
    "check_decode_cost",
    "split_field",
]

#: Largest inventory.img read (a real one is ~0.4 KiB per process).
MAX_INVENTORY_SIZE = 16 << 20
#: Largest chunk of page data read or written (raw bytes; the writer's default is 4 MiB).
MAX_CHUNK_SIZE = 16 << 20
#: Bytes a decoded top-level record costs (measured: ~0.58 KiB for an empty Vma, ~0.7 KiB for a real one).
RECORD_COST = 640
#: Bytes an element of a repeated message field costs (measured: ~85 for an empty ProcessRef).
MESSAGE_COST = 96
#: Bytes an element of a repeated scalar field costs (an 8-byte slot in the decoder's array).
VALUE_COST = 8
#: The most one file may cost to decode: ~100 k VMAs, ~1 M page ranges.
MAX_DECODE_COST = 64 << 20
#: The most the record files of one image may cost together (a restore holds them all).
MAX_IMAGE_DECODE_COST = 128 << 20
#: The most elements one repeated field may hold in one file (e.g. a pagemap's ranges).
MAX_VALUES = 1 << 20

_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5
_FIXED32 = {FieldDescriptor.TYPE_FIXED32, FieldDescriptor.TYPE_SFIXED32, FieldDescriptor.TYPE_FLOAT}
_FIXED64 = {FieldDescriptor.TYPE_FIXED64, FieldDescriptor.TYPE_SFIXED64, FieldDescriptor.TYPE_DOUBLE}
_SCALAR_WIRE = {**{t: _I32 for t in _FIXED32}, **{t: _I64 for t in _FIXED64}}
#: Bytes that end a varint (high bit clear): deleting the others leaves one byte per varint.
_CONTINUATION = bytes(range(0x80, 0x100))


class _Malformed(Exception):
    """The wire bytes are not a protobuf message."""


@dataclass
class Cost:
    """What decoding some records would allocate, and how many elements each repeated field holds."""

    bytes: int = 0
    counts: dict[str, int] = field(default_factory=dict)  # full field name (or "records") -> elements

    def add(self, name: str, n: int) -> None:
        self.counts[name] = self.counts.get(name, 0) + n

    def add_record(self, desc: Descriptor, payload: bytes | bytearray | memoryview) -> None:
        """Add one record of type ``desc``; ValueError if ``payload`` is not protobuf."""
        index = self.counts.get("records", 0)
        self.add("records", 1)
        self.bytes += RECORD_COST
        if _plan(desc):
            try:
                _walk(desc, memoryview(payload).cast("B"), self)
            except _Malformed:
                raise ValueError(f"record {index} is not a {desc.name} message") from None

    def add_message(self, message: Message) -> None:
        """Add one record the writer holds: what :meth:`add_record` gives for its serialized bytes, counted off
        the message itself (each planned field's ``len()``), which costs a fraction of walking the wire."""
        self.add("records", 1)
        self.bytes += RECORD_COST
        _count(message, self)

    @property
    def largest(self) -> tuple[str, int]:
        return max(self.counts.items(), key=lambda kv: kv[1], default=("", 0))

    def excess(self) -> str | None:
        """Why these records pass the limits for one file, or None."""
        name, n = self.largest
        if n > MAX_VALUES:
            what = "records" if name == "records" else f"values of {name.removeprefix('ckpt.v1.')}"
            return f"holds {n} {what}, more than the {MAX_VALUES} this ckpt reads from one file"
        if self.bytes > MAX_DECODE_COST:
            return (f"would take ~{self.bytes >> 20} MiB to decode ({n} values of its largest field), "
                    f"more than the {MAX_DECODE_COST >> 20} MiB this ckpt allows for one file")
        return None


#: Per message type, the fields worth walking: {field number: field}.
_PLANS: dict[str, dict[int, FieldDescriptor]] = {}


def _plan(desc: Descriptor) -> dict[int, FieldDescriptor]:
    """Repeated fields of ``desc``, and singular message fields that lead to one."""
    plan = _PLANS.get(desc.full_name)
    if plan is not None:
        return plan
    _PLANS[desc.full_name] = {}  # a recursive type counts as plain while it is being planned
    plan = {}
    for f in desc.fields:
        if f.is_repeated or (f.message_type is not None and _plan(f.message_type)):
            plan[f.number] = f
    _PLANS[desc.full_name] = plan
    return plan


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise _Malformed
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, pos
        shift += 7


def _fields(buf: memoryview) -> Iterator[tuple[int, int, int, int, int]]:
    """(number, wire type, start of the field, start of its value, end) of each field of a message on the wire."""
    pos, end = 0, len(buf)
    while pos < end:
        field_start = pos
        tag, pos = _varint(buf, pos)
        number, wire = tag >> 3, tag & 7
        if wire == _VARINT:
            _, pos = _varint(buf, pos)
            start = pos
        elif wire == _I64:
            start, pos = pos, pos + 8
        elif wire == _I32:
            start, pos = pos, pos + 4
        elif wire == _LEN:
            length, start = _varint(buf, pos)
            pos = start + length
        else:  # groups (never written by proto3) or garbage
            raise _Malformed
        if pos > end or number == 0:
            raise _Malformed
        yield number, wire, field_start, start, pos


def _walk(desc: Descriptor, buf: memoryview, cost: Cost) -> None:
    """Add what decoding one message of type ``desc`` from ``buf`` allocates (beyond RECORD_COST)."""
    plan = _plan(desc)
    for number, wire, _, start, pos in _fields(buf):
        f = plan.get(number)
        if f is None:
            continue
        if f.message_type is not None:
            if wire != _LEN:
                continue  # a mismatched wire type is kept as an unknown field: file bytes only
            if f.is_repeated:
                cost.bytes += MESSAGE_COST
                cost.add(f.full_name, 1)
            if _plan(f.message_type):
                _walk(f.message_type, buf[start:pos], cost)
            continue
        n = _count_scalars(f, wire, buf[start:pos] if wire == _LEN else None)
        cost.bytes += n * VALUE_COST
        cost.add(f.full_name, n)


def _count(message: Message, cost: Cost) -> None:
    """:func:`_walk` on a message object: the same fields planned, the same costs added."""
    for f in _plan(message.DESCRIPTOR).values():
        if f.message_type is not None and not f.is_repeated:
            if message.HasField(f.name):
                _count(getattr(message, f.name), cost)
            continue
        value = getattr(message, f.name)
        n = len(value)
        if not n:
            continue  # not on the wire at all
        if f.message_type is None:
            cost.bytes += n * VALUE_COST
        else:
            cost.bytes += n * MESSAGE_COST
            if f.message_type.GetOptions().map_entry:  # a map: planned only when its values are (keys never are)
                if _plan(f.message_type):
                    for v in value.values():
                        _count(v, cost)
            elif _plan(f.message_type):
                for element in value:
                    _count(element, cost)
        cost.add(f.full_name, n)


def split_field(payload: bytes | bytearray | memoryview, number: int) -> tuple[bytes, bytes, list[memoryview]]:
    """(the message without field ``number``, that field's occurrences as they are on the wire, the
    values of its length-delimited ones).

    Lets a reader decode a large sub-message piece by piece (a pagemap's range
    table column by column, each at most a quarter of the table in memory).
    Raises ValueError when ``payload`` is not protobuf.
    """
    buf = memoryview(payload).cast("B")
    rest: list[memoryview] = []
    raw: list[memoryview] = []
    values: list[memoryview] = []
    try:
        for n, wire, field_start, start, end in _fields(buf):
            if n != number:
                rest.append(buf[field_start:end])
                continue
            raw.append(buf[field_start:end])
            if wire == _LEN:
                values.append(buf[start:end])
    except _Malformed:
        raise ValueError("malformed protobuf") from None
    return b"".join(rest), b"".join(raw), values


def _count_scalars(f: FieldDescriptor, wire: int, packed: memoryview | None) -> int:
    """Elements one occurrence of repeated scalar field ``f`` adds."""
    if f.type in (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_BYTES):
        return 1 if wire == _LEN else 0
    if packed is None:
        return 1 if wire == _SCALAR_WIRE.get(f.type, _VARINT) else 0
    if f.type in _FIXED32:
        return len(packed) // 4
    if f.type in _FIXED64:
        return len(packed) // 8
    return len(bytes(packed).translate(None, _CONTINUATION))


def decode_cost(desc_of: Iterable[tuple[Descriptor, bytes | bytearray | memoryview]]) -> Cost:
    """The cost of decoding each (message type, payload) pair; ValueError if a payload is not protobuf."""
    cost = Cost()
    for desc, payload in desc_of:
        cost.add_record(desc, payload)
    return cost


def check_decode_cost(path: str | os.PathLike[str], desc_of: Iterable[tuple[Descriptor, bytes | bytearray | memoryview]]) -> Cost:
    """:func:`decode_cost`, refused with CorruptImage naming ``path`` when it passes the limits."""
    cost = Cost()
    try:
        for desc, payload in desc_of:
            cost.add_record(desc, payload)
            if cost.bytes > MAX_DECODE_COST:
                break  # no need to walk the rest
    except ValueError as exc:
        raise CorruptImage(path, f"{exc} (malformed protobuf)") from None
    excess = cost.excess()
    if excess:
        raise CorruptImage(path, excess)
    return cost
