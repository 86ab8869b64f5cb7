"""The byte framing shared by all image files (ckpt/image/framing.py)."""

from __future__ import annotations

import hashlib
import struct

import pytest

from ckpt.errors import CorruptImage
from ckpt.image import framing

MAGIC = b"TEST"


def _file(payloads: list[bytes]) -> bytes:
    return framing.encode_file(MAGIC, payloads)


def test_layout_is_header_records_marker() -> None:
    data = _file([b"abc", b""])
    assert data[:12] == b"CKPT" + MAGIC + struct.pack("<I", framing.FILE_FORMAT_VERSION)
    assert data[12:19] == struct.pack("<I", 3) + b"abc"
    assert data[19:23] == struct.pack("<I", 0)
    assert data[23:27] == b"\xff\xff\xff\xff"
    assert data[27:] == hashlib.sha256(data[:23]).digest()
    assert len(data) == framing.HEADER_SIZE + 7 + 4 + framing.TRAILER_SIZE


@pytest.mark.parametrize("payloads", [[], [b""], [b"x" * 1000, b"y", b""]])
def test_round_trip(payloads: list[bytes]) -> None:
    data = _file(payloads)
    assert framing.parse_header("f.img", data, MAGIC) == (MAGIC, framing.FILE_FORMAT_VERSION)
    assert [bytes(p) for p in framing.split_records("f.img", data)] == payloads


def _problem(data: bytes, expect: bytes | None = MAGIC) -> str:
    with pytest.raises(CorruptImage) as info:
        framing.parse_header("/img/f.img", data, expect)
        framing.split_records("/img/f.img", data)
    err = info.value
    assert err.path == "/img/f.img" and "\n" not in str(err) and str(err).startswith("/img/f.img: ")
    assert err.exit_code == 2
    return err.problem


def test_short_header() -> None:
    assert "shorter than the 12-byte header" in _problem(b"CKPT")


def test_wrong_common_magic() -> None:
    assert "wrong magic" in _problem(b"ELF\x7f" + _file([b"a"])[4:])


def test_wrong_kind_magic() -> None:
    problem = _problem(framing.encode_file(b"OTHR", [b"a"]))
    assert "wrong file kind" in problem and "OTHR" in problem and "TEST" in problem


def test_future_version() -> None:
    problem = _problem(framing.encode_file(MAGIC, [b"a"], version=framing.FORMAT_VERSION + 1))
    assert problem == (
        f"written by a newer ckpt (format {framing.FORMAT_VERSION + 1}), this ckpt reads ≤ {framing.FORMAT_VERSION}"
    )


def test_version_zero() -> None:
    assert "invalid format version 0" in _problem(framing.encode_file(MAGIC, [b"a"], version=0))


def test_truncated_everywhere() -> None:
    data = _file([b"hello", b"world"])
    for cut in range(framing.HEADER_SIZE, len(data)):
        assert "truncated" in _problem(data[:cut]), cut


def test_cut_at_record_boundary_is_noticed() -> None:
    data = _file([b"hello", b"world"])
    cut = framing.HEADER_SIZE + 4 + 5
    assert _problem(data[:cut]) == "truncated after 1 complete records: no end marker"


def test_flipped_byte_anywhere_after_header() -> None:
    data = _file([b"hello", b"world" * 20])
    for pos in range(framing.HEADER_SIZE, len(data)):
        bad = bytearray(data)
        bad[pos] ^= 0x01
        problem = _problem(bytes(bad))
        assert "checksum mismatch" in problem or "truncated" in problem or "unexpected bytes" in problem, (pos, problem)


def test_flipped_payload_byte_says_altered() -> None:
    data = bytearray(_file([b"hello"]))
    data[framing.HEADER_SIZE + 4] ^= 0x20
    assert "file altered" in _problem(bytes(data))


def test_trailing_garbage() -> None:
    assert "2 unexpected bytes after the end marker" == _problem(_file([b"a"]) + b"zz")


def test_pack_header_rejects_bad_magic() -> None:
    with pytest.raises(ValueError):
        framing.pack_header(b"TOOLONG")
