"""The committed protobuf modules in ckpt/image/pb match a fresh generation from proto/."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

pytest.importorskip("grpc_tools", reason="grpcio-tools is needed to regenerate the protobuf modules")

from ckpt.image import protogen  # noqa: E402


def test_generated_modules_are_fresh() -> None:
    stale = protogen.stale_files()
    assert not stale, (
        f"stale protobuf modules {stale} (generated with {protogen.generator_version()}): "
        "run `python -m ckpt.image.protogen` (or `make proto`) and commit the result"
    )


def test_generated_modules_import_from_the_package() -> None:
    from ckpt.image.pb import inventory_pb2, mm_pb2

    assert mm_pb2.Vma.__module__ == "ckpt.image.pb.mm_pb2"
    assert inventory_pb2.DESCRIPTOR.name == "ckpt/v1/inventory.proto"


def test_check_notices_a_stale_module(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    pb = tmp_path / "pb"
    shutil.copytree(protogen.PB_DIR, pb)
    monkeypatch.setattr(protogen, "PB_DIR", pb)
    assert protogen.main(["--check"]) == 0
    stale = pb / "mm_pb2.py"
    stale.write_text(stale.read_text().replace("ckpt.image.pb.mm_pb2", "old"))
    (pb / "gone_pb2.py").write_text("# a module whose .proto was removed\n")
    assert protogen.main(["--check"]) == 1
    assert "gone_pb2.py, mm_pb2.py" in capsys.readouterr().err
    assert protogen.main([]) == 0  # regenerates in place
    assert protogen.stale_files() == [] and not (pb / "gone_pb2.py").exists()
