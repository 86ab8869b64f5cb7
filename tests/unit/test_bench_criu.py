"""bench/criu.py without CRIU: its stats image decoded, its rows when CRIU is unavailable, --quick skips it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from bench import criu  # noqa: E402
from bench.framework import Context, markdown_table  # noqa: E402


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _message(fields: dict[int, int | bytes]) -> bytes:
    out = b""
    for number, value in fields.items():
        if isinstance(value, bytes):
            out += _varint(number << 3 | 2) + _varint(len(value)) + value
        else:
            out += _varint(number << 3) + _varint(value)
    return out


def test_dump_stats_decoded(tmp_path: Path) -> None:
    dump = _message({1: 440, 2: 95_745, 3: 61_263, 4: 38_086, 5: 16_437, 6: 0, 7: 16_417, 8: 0, 9: 0, 10: 8})
    entry = _message({1: dump})
    path = tmp_path / "stats-dump"
    # Two 32-bit magics (a service image, the stats magic), the entry's length, the entry.
    path.write_bytes((0x55105940).to_bytes(4, "little") + (0x57093306).to_bytes(4, "little")
                     + len(entry).to_bytes(4, "little") + entry)
    assert criu.criu_dump_stats(path) == {"freezing_time": 440, "frozen_time": 95_745, "memdump_time": 61_263,
                                          "memwrite_time": 38_086, "pages_scanned": 16_437, "pages_written": 16_417}


def test_no_dump_entry_refused(tmp_path: Path) -> None:
    entry = _message({2: _message({1: 0, 2: 0, 3: 1, 4: 2})})  # a restore's stats
    path = tmp_path / "stats-restore"
    path.write_bytes(b"\0" * 8 + len(entry).to_bytes(4, "little") + entry)
    with pytest.raises(ValueError, match="no dump entry"):
        criu.criu_dump_stats(path)


def test_rows_when_criu_is_unavailable() -> None:
    op = criu.Op(2.0, 0.5, 100 << 20)
    cycles = {"ckpt": [criu.Cycle(op, op, criu.Op(1.0), "checked")]}
    rows = list(criu._rows("writer", "1 GiB", 1 << 30, cycles, {"CRIU": "CRIU unavailable: no tarball"}))
    by_key = {r.key: r for r in rows}
    assert by_key["criu.writer.dump.criu"].error == "CRIU unavailable: no tarball"
    assert by_key["criu.writer.dump.ckpt"].error is None and by_key["criu.writer.dump.ckpt"].times == (2.0,)
    assert "CRIU unavailable: no tarball" in markdown_table(rows)


def test_ratio_is_ckpt_time_over_criu_time() -> None:
    ck = criu.Cycle(criu.Op(3.0, 2.0, 200), criu.Op(4.0, 3.0, 100), criu.Op(2.0), "ok")
    cr = criu.Cycle(criu.Op(1.0, 0.5, 100), criu.Op(2.0, 1.0, 100), criu.Op(1.0), "ok")
    rows = {r.key: r for r in criu._rows("t", "t", 1, {"ckpt": [ck], "CRIU": [cr]}, {})}
    assert rows["criu.t.dump.ckpt"].notes.startswith("2.00× CRIU's time")
    assert rows["criu.t.dump_R.ckpt"].notes.startswith("3.00× CRIU's time") and "(2.00× CRIU's)" in \
        rows["criu.t.dump_R.ckpt"].notes
    assert rows["criu.t.frozen_R.ckpt"].notes.startswith("4.00× CRIU's time")
    assert rows["criu.t.restore.ckpt"].baseline == "criu.t.restore.criu"


def test_quick_run_of_everything_skips_it(tmp_path: Path) -> None:
    ctx = Context(size=1 << 20, runs=1, quick=True, frame_size=1 << 20, workload=None, buffer=None,  # type: ignore[arg-type]
                  tmpdir=tmp_path)
    assert list(criu.writer(ctx)) == [] and list(criu.redis(ctx)) == [] and list(criu.tree(ctx)) == []
