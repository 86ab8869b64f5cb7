"""The nonce and associated-data scheme of images encrypted at rest (ckpt/image/sealing.py).

A sealed chunk or segment opens only at the index, in the file and in the image it was sealed for, and a
record file cut at a segment boundary does not open; keys are files with 0600 checks.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ckpt.errors import CorruptImage, UsageError
from ckpt.image import framing, kinds, sealing
from ckpt.image.pb import process_pb2

KEY = sealing.EncryptionKey(bytes(range(32)), "test.key")
ID = "ab" * 16


def _image(salt: bytes = b"s" * 16, image_id: str = ID, segment: int = sealing.SEGMENT_SIZE) -> sealing.ImageCipher:
    return sealing.ImageCipher(KEY, image_id, salt, segment)


def test_nonces_differ_per_index_and_aad_binds_name_and_index() -> None:
    assert len({sealing.nonce(i) for i in range(1000)}) == 1000
    assert all(len(sealing.nonce(i)) == 12 for i in (0, 1, 1 << 63))
    assert sealing.chunk_aad("pages-1.img", 0) != sealing.chunk_aad("pages-1.img", 1)
    assert sealing.chunk_aad("pages-1.img", 0) != sealing.chunk_aad("pages-2.img", 0)
    assert sealing.segment_aad("core-1.img", 0, True) != sealing.segment_aad("core-1.img", 0, False)


def test_a_chunk_opens_only_where_it_was_sealed() -> None:
    image = _image()
    sealed = image.file("pages-1.img").seal_chunk(3, b"x" * 4096)
    assert len(sealed) == 4096 + sealing.TAG_SIZE and b"xxxx" not in sealed
    assert image.file("pages-1.img").open_chunk("p", 3, sealed) == b"x" * 4096
    moved = [
        lambda: image.file("pages-1.img").open_chunk("p", 4, sealed),           # another index (reordered)
        lambda: image.file("pages-2.img").open_chunk("p", 3, sealed),           # another file
        lambda: _image(salt=b"t" * 16).file("pages-1.img").open_chunk("p", 3, sealed),  # another image (salt)
        lambda: _image(image_id="cd" * 16).file("pages-1.img").open_chunk("p", 3, sealed),  # another image id
    ]
    for attempt in moved:
        with pytest.raises(CorruptImage, match="does not decrypt"):
            attempt()
    flipped = bytearray(sealed)
    flipped[10] ^= 1
    with pytest.raises(CorruptImage, match="chunk 3"):
        image.file("pages-1.img").open_chunk("p", 3, flipped)


def test_each_file_has_its_own_key() -> None:
    """The same index in two files never shares a (key, nonce) pair: equal plaintexts seal differently."""
    image = _image()
    assert image.file("pages-1.img").seal_chunk(0, b"a" * 64) != image.file("pages-2.img").seal_chunk(0, b"a" * 64)
    assert _image(salt=b"t" * 16).file("pages-1.img").seal_chunk(0, b"a" * 64) != image.file("pages-1.img").seal_chunk(0, b"a" * 64)


class _Sink:
    def __init__(self) -> None:
        self.name = "core-1.img"
        self.data = bytearray()
        self.digest = None

    def write(self, data: bytes | memoryview) -> None:
        self.data += data

    def finish(self) -> object:
        self.digest = object()
        return self.digest


def _sealed_file(segment: int, payload_size: int) -> tuple[bytes, bytes]:
    """(the plain record file, the sealed one) of one record of ``payload_size`` bytes."""
    image = _image(segment=segment)
    sink = _Sink()
    out = sealing.SealedRecords(sink, image.file(sink.name), segment)
    head = framing.pack_header(kinds.CORE.magic, framing.FILE_FORMAT_VERSION | framing.SEALED)
    body = framing.pack_record(b"r" * payload_size)
    out.write(head)
    out.write(body)
    plain = head + body
    trailer = framing.pack_trailer(out.sha256_so_far())
    out.write(trailer)
    out.finish()
    return plain + trailer, bytes(sink.data)


@pytest.mark.parametrize("size", [10, 64 - 4, 200])
def test_record_segments_round_trip_and_a_cut_file_does_not_open(size: int) -> None:
    segment = 64
    plain, sealed = _sealed_file(segment, size)
    assert sealed[: framing.HEADER_SIZE] == plain[: framing.HEADER_SIZE]  # the header stays in clear
    cipher = _image(segment=segment).file("core-1.img")
    assert cipher.open_records("f", sealed, segment) == plain
    step = segment + sealing.TAG_SIZE
    whole = (len(sealed) - framing.HEADER_SIZE) // step
    if whole >= 1 and (len(sealed) - framing.HEADER_SIZE) % step:
        with pytest.raises(CorruptImage, match="does not decrypt"):  # the last segment dropped
            cipher.open_records("f", sealed[: framing.HEADER_SIZE + whole * step], segment)
    with pytest.raises(CorruptImage):
        _image(segment=segment).file("core-2.img").open_records("f", sealed, segment)


@pytest.mark.parametrize("level", [1, None])
def test_a_sealed_image_round_trips_through_the_writer_and_reader(tmp_path: Path, level: int | None) -> None:
    """RecordWriter and PageWriter seal (zstd frames, or raw pages), the reader opens (the image found by its
    inventory)."""
    from ckpt.image import ImageKind, ImageWriter, ProcessInfo
    from ckpt.image.reader import Image

    key_file = tmp_path / "k"
    sealing.generate_key_file(key_file)
    with sealing.encrypting(sealing.load_key(key_file)):
        with ImageWriter(tmp_path / "img", kind=ImageKind.PRE_DUMP, cpu=None, kernel=None, compress_level=level,
                         chunk_size=2 * 4096) as w:
            w.write_process(7, process_pb2.ProcessEntry(pid=7, comm="secret-comm"))
            with w.pages(7) as pw:
                pw.add(0x10000, b"secret-page!" * 1024 + b"\0" * (3 * 4096 - 12 * 1024))
            w.commit(processes=[ProcessInfo(7, 1, (7,))])
        image = Image.open(tmp_path / "img")
        assert image.process(7).comm == "secret-comm"
        assert b"secret-page!" in b"".join(bytes(v) for _, v in image.iter_pages(7))
        assert "encrypted" in image.inventory.required_features
    for p in (tmp_path / "img").iterdir():
        assert b"secret" not in p.read_bytes(), p.name
    assert (tmp_path / "img" / sealing.MAC_FILE).stat().st_mode & 0o777 == 0o600


def test_key_files(tmp_path: Path) -> None:
    path = tmp_path / "k"
    sealing.generate_key_file(path)
    assert path.stat().st_mode & 0o777 == 0o600
    key = sealing.load_key(path)
    assert len(key.secret) == 32 and key.key_id not in key.secret and "secret" not in repr(key)
    with pytest.raises(UsageError, match="never overwritten"):
        sealing.generate_key_file(path)
    os.chmod(path, 0o640)
    with pytest.raises(UsageError, match="group or others"):
        sealing.load_key(path)
    other = tmp_path / "bad"
    other.write_text("-----BEGIN PRIVATE KEY-----\n")
    os.chmod(other, 0o600)
    with pytest.raises(UsageError, match="not an image encryption key"):
        sealing.load_key(other)
