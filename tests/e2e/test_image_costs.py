"""The writer counts each record's decode cost off the message (Cost.add_message); on a real image of many kinds of
state, that count is the reader's walk of the bytes (tests/unit/test_bounds_count.py does the golden images)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from ckpt import api
from ckpt.image import bounds, kinds
from ckpt.image.reader import Image

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="dump needs root (ptrace)")


def test_counted_costs_equal_walked_costs_on_a_real_image(py_target, tmp_path: Path) -> None:  # noqa: ANN001
    t = py_target("py_sockopts.py", stderr=subprocess.DEVNULL)  # sockets of every family, options, threads
    t.ready(20)
    api.dump(t.pid, tmp_path / "img", leave_running=True, tcp_established=True)
    img = Image.open(tmp_path / "img")
    checked = 0
    for name in img.files:
        if (k := kinds.kind_of_file(name)) is None or not k[0].is_records:
            continue
        for message in img.records(name):
            walked, counted = bounds.Cost(), bounds.Cost()
            walked.add_record(message.DESCRIPTOR, message.SerializeToString(deterministic=True))
            counted.add_message(message)
            assert (counted.bytes, counted.counts) == (walked.bytes, walked.counts), (name, type(message).__name__)
            checked += 1
    assert checked > 10
