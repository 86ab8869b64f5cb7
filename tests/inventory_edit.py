"""Rewrite an image's inventory.img the way ckpt writes it, for tests of what a reader makes of a changed record."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ckpt.image import Image, framing, kinds
from ckpt.image.pb import inventory_pb2

__all__ = ["rewrite_inventory"]


def rewrite_inventory(image_dir: Path, edit: Callable[[inventory_pb2.Inventory], None]) -> None:
    """Apply ``edit`` to the image's Inventory and write inventory.img again, sealed, in its format_version."""
    inv = Image.open(image_dir).inventory
    edit(inv)
    (image_dir / "inventory.img").write_bytes(
        framing.encode_file(kinds.INVENTORY.magic, [inv.SerializeToString()], version=inv.format_version))
