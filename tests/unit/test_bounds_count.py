"""The writer's cost count off a message object (Cost.add_message) equals the reader's walk of its bytes."""

from __future__ import annotations

from pathlib import Path

import pytest

from ckpt.errors import CorruptImage
from ckpt.image import bounds, kinds, sealing
from ckpt.image.pb import inventory_pb2, process_pb2
from ckpt.image.reader import Image

IMAGES = Path(__file__).resolve().parents[2] / "images"
#: The golden images ckpt reads (images/bad holds broken ones, refused before any record is decoded).
GOLDEN = sorted(p.parent for p in IMAGES.glob("**/inventory.img") if "bad" not in p.relative_to(IMAGES).parts)


def _same(message) -> None:  # noqa: ANN001
    walked, counted = bounds.Cost(), bounds.Cost()
    walked.add_record(message.DESCRIPTOR, message.SerializeToString(deterministic=True))
    counted.add_message(message)
    assert (counted.bytes, counted.counts) == (walked.bytes, walked.counts), type(message).__name__


def _golden_key(image: Path) -> sealing.EncryptionKey | None:
    """The public test key of images/encrypted (read as is: git keeps no 0600 mode), None for the others."""
    if image.name != "encrypted":
        return None
    text = (image.parent / "encrypted.key").read_bytes().strip()
    return sealing.EncryptionKey(bytes.fromhex(text[len(sealing.KEY_FILE_PREFIX):].decode()), "encrypted.key")


@pytest.mark.parametrize("image", GOLDEN, ids=lambda p: str(p.relative_to(IMAGES)))
def test_every_record_of_the_golden_images(image: Path) -> None:
    with sealing.encrypting(_golden_key(image)):
        img = Image.open(image)
        names = [n for n in img.files if (k := kinds.kind_of_file(n)) is not None and k[0].is_records]
        assert names
        for name in names:
            for message in img.records(name):
                _same(message)


def test_maps_nested_repeats_and_empty_singular_messages() -> None:
    inv = inventory_pb2.Inventory()
    inv.extra["a"] = "1"
    inv.extra["b"] = "2"
    _same(inv)
    obs = process_pb2.Observed()
    obs.sections.add(name="empty")
    s = obs.sections.add(name="status")
    for i in range(5):
        s.lines.add(key=f"k{i}", value="v")
    _same(obs)
    _same(process_pb2.Observed())


def test_a_file_read_again_is_not_walked_again_but_still_held_to_the_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    """Image.decode_file keeps the cost of bytes it walked (by kind and SHA-256): a restore reads most files
    twice.  The second read takes the kept cost, and the limits of that moment still apply to it."""
    img = Image.open(IMAGES / "simple")
    name = next(n for n in img.files if n.startswith("mm-"))
    first = img.records(name)
    walks = []
    real = bounds.check_decode_cost
    monkeypatch.setattr(bounds, "check_decode_cost", lambda *a: walks.append(1) or real(*a))
    assert img.records(name) == first and walks == []
    monkeypatch.setattr(bounds, "MAX_DECODE_COST", bounds.RECORD_COST)
    with pytest.raises(CorruptImage, match="to decode"):
        img.records(name)
