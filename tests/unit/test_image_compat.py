"""The compatibility policy of images (ckpt/image/compat.py): which format is written, which features are refused.

And its use by a migration source, which refuses to send what the destination would refuse.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import ckpt
from ckpt.errors import CorruptImage, IncompatibleImage, Unsupported
from ckpt.image import Image, ImageKind, ImageWriter, ProcessInfo, compat, framing
from ckpt.image.pb import clocks_pb2, inventory_pb2
from ckpt.image.show import show, show_dict
from ckpt.image.verify import verify
from ckpt.migrate import dest
from ckpt.migrate.source import DestReads
from ckpt.migrate.wire import WireError
from inventory_edit import rewrite_inventory


def _image(path: Path, *, clocks: bool = False, require: tuple[str, ...] = ()) -> Image:
    with ImageWriter(path, kind=ImageKind.PRE_DUMP) as w:
        for name in require:
            w.require(name)
        with w.pages(5) as pw:
            pw.add(0, bytes(4096))
        w.commit(processes=[ProcessInfo(5, 1, (5,))], clocks=clocks_pb2.Clocks(monotonic_ns=1) if clocks else None)
    return Image.open(path)


def _header_version(path: Path) -> int:
    return int.from_bytes(path.read_bytes()[8:12], "little")


def reseal(image_dir: Path, *, required: list[str], version: int) -> None:
    """Write the image's inventory again, listing ``required``, in format ``version``."""

    def edit(inv: inventory_pb2.Inventory) -> None:
        del inv.required_features[:]
        inv.required_features.extend(required)
        inv.format_version = version

    rewrite_inventory(image_dir, edit)


def test_an_image_needing_nothing_new_is_written_in_the_previous_format(tmp_path: Path) -> None:
    image = _image(tmp_path / "img")
    assert image.format_version == compat.PREVIOUS_FORMAT == 2 and list(image.inventory.required_features) == []
    assert {_header_version(p) for p in (tmp_path / "img").iterdir()} == {2}


def test_clocks_are_a_required_feature_the_previous_release_knows(tmp_path: Path) -> None:
    image = _image(tmp_path / "img", clocks=True)
    assert list(image.inventory.required_features) == ["time-namespace"] and image.format_version == 2
    assert show_dict(tmp_path / "img")["image"]["requires"] == ["time-namespace"]
    assert "\n  a restore needs: time-namespace\n" in show(tmp_path / "img")


def test_a_feature_new_since_the_list_makes_format_3(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Readers before the list refuse it by number; a reader that does not know the feature refuses it by name."""
    monkeypatch.setitem(compat.FEATURES, "warp-drive", compat.Feature("warp-drive", "a test's feature"))
    image = _image(tmp_path / "img", clocks=True, require=("warp-drive",))
    assert list(image.inventory.required_features) == ["time-namespace", "warp-drive"]
    assert image.format_version == compat.LIST_FORMAT == framing.FORMAT_VERSION == 3
    inventory = tmp_path / "img" / "inventory.img"
    assert _header_version(inventory) == 3
    assert {_header_version(p) for p in (tmp_path / "img").iterdir() if p != inventory} == {2}
    assert verify(tmp_path / "img").ok
    monkeypatch.delitem(compat.FEATURES, "warp-drive")
    with pytest.raises(IncompatibleImage) as err:
        Image.open(tmp_path / "img")
    assert str(err.value) == (f"{inventory}: needs warp-drive, which this ckpt {ckpt.__version__} does not restore "
                              f"(written by ckpt {ckpt.__version__})")
    assert err.value.hint == f"restore it with ckpt {ckpt.__version__} or newer"
    assert err.value.exit_code == 2 and isinstance(err.value, CorruptImage)


def test_an_unknown_feature_is_refused_whatever_the_format(tmp_path: Path) -> None:
    _image(tmp_path / "img")
    reseal(tmp_path / "img", required=["time-namespace", "future-thing", "x" * 100], version=2)
    with pytest.raises(IncompatibleImage, match=r"needs future-thing, 'x{64}', which this ckpt"):
        Image.open(tmp_path / "img")


def test_a_writer_cannot_require_a_feature_without_a_row(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="FEATURES"), ImageWriter(tmp_path / "img", kind=ImageKind.PRE_DUMP) as w:
        w.require("undeclared")


def test_the_features_before_the_list_are_all_known() -> None:
    assert compat.LISTLESS_FEATURES <= compat.FEATURES.keys()
    assert compat.format_for([]) == compat.format_for(compat.LISTLESS_FEATURES) == compat.PREVIOUS_FORMAT


class _Ch:
    """What DestReads reads of a channel."""

    def __init__(self, version: int) -> None:
        self.version, self.peer_software, self.who, self.errors = version, "0.9.0", "peer x", []

    def send_error(self, message: str) -> None:
        self.errors.append(message)


def test_a_source_refuses_to_send_what_the_destination_would_refuse(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(compat.FEATURES, "warp-drive", compat.Feature("warp-drive", "a test's feature"))
    plain, newer = _image(tmp_path / "plain", clocks=True), _image(tmp_path / "newer", require=("warp-drive",))
    ours = DestReads.of(_Ch(2), {"type": "ready", "images": dest.image_support()})  # type: ignore[arg-type]
    assert ours.formats == (1, 3) and "warp-drive" in ours.features
    ours.check(plain.path)
    ours.check(newer.path)
    old = DestReads.of(_Ch(3), {"type": "ready", "images": {"formats": [1, 3], "features": ["time-namespace"]}})  # type: ignore[arg-type]
    old.check(plain.path)
    with pytest.raises(Unsupported) as err:
        old.check(newer.path)
    assert str(err.value) == ("the destination cannot restore this process's image: it needs warp-drive, "
                              "which the destination's ckpt 0.9.0 does not restore")
    with pytest.raises(WireError, match="malformed 'ready'"):
        DestReads.of(_Ch(2), {"type": "ready"})  # type: ignore[arg-type]
