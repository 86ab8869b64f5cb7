"""Regenerate the protobuf modules in ``ckpt/image/pb/`` from ``proto/ckpt/v1/*.proto``.

The generated modules are committed, so that ckpt needs only the ``protobuf``
runtime, not a compiler.  ``python -m ckpt.image.protogen`` rewrites them with
the protoc bundled in ``grpcio-tools``; ``--check`` only compares and exits 1
when they are stale (``tests/unit/test_proto_fresh.py`` runs the same check).

protoc names Python modules after the .proto paths (``ckpt/v1/x.proto`` →
``ckpt.v1.x_pb2``); the files live in ``ckpt.image.pb`` instead, so the
imports between them are rewritten.  The .proto paths stay ``ckpt/v1/...``
because they are the names registered in protobuf's global descriptor pool,
where a short name like ``common.proto`` could clash with another library.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
from pathlib import Path

__all__ = ["PROTO_ROOT", "PROTO_DIR", "PB_DIR", "generate", "stale_files", "generator_version", "main"]

_REPO = Path(__file__).resolve().parents[2]
#: The include root handed to protoc; .proto files are named relative to it.
PROTO_ROOT = _REPO / "proto"
#: Where the schema lives (package ckpt.v1).
PROTO_DIR = PROTO_ROOT / "ckpt" / "v1"
#: Where the generated modules are committed.
PB_DIR = Path(__file__).resolve().parent / "pb"

_HEADER = "# Regenerate with `python -m ckpt.image.protogen` (or `make proto`); do not edit.\n"
_IMPORT_RE = re.compile(r"^from ckpt\.v1 import ", re.MULTILINE)
_MODNAME_RE = re.compile(r"'ckpt\.v1\.(\w+_pb2)'")


def _protoc():
    try:
        from grpc_tools import protoc  # type: ignore[import-not-found]
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise SystemExit(
            "ckpt.image.protogen needs grpcio-tools (pip install -e '.[test]')"
        ) from exc
    return protoc


def generator_version() -> str:
    """Version of grpcio-tools, whose bundled protoc generates the modules.

    It decides the "Protobuf Python Version" stamped into the generated code, and
    with it the oldest protobuf runtime that can load them.
    """
    import importlib.metadata

    try:
        return "grpcio-tools " + importlib.metadata.version("grpcio-tools")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover
        return "grpcio-tools (unknown version)"


def _postprocess(text: str) -> str:
    text = _IMPORT_RE.sub("from ckpt.image.pb import ", text)
    text = _MODNAME_RE.sub(r"'ckpt.image.pb.\1'", text)
    return _HEADER + text


def generate() -> dict[str, str]:
    """Run protoc over every .proto and return {file name: content} for ``pb/``."""
    protoc = _protoc()
    import grpc_tools  # type: ignore[import-not-found]

    include = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    sources = sorted(p.relative_to(PROTO_ROOT).as_posix() for p in PROTO_DIR.glob("*.proto"))
    if not sources:
        raise SystemExit(f"no .proto files in {PROTO_DIR}")
    with tempfile.TemporaryDirectory(prefix="ckpt-protogen-") as out:
        rc = protoc.main(
            ["protoc", f"-I{PROTO_ROOT}", f"-I{include}", f"--python_out={out}", f"--pyi_out={out}", *sources]
        )
        if rc != 0:
            raise SystemExit(f"protoc failed (exit {rc})")
        result: dict[str, str] = {}
        for path in sorted((Path(out) / "ckpt" / "v1").iterdir()):
            result[path.name] = _postprocess(path.read_text())
    return result


def _committed() -> dict[str, str]:
    return {
        p.name: p.read_text()
        for p in sorted(PB_DIR.iterdir())
        if p.name.endswith(("_pb2.py", "_pb2.pyi"))
    }


def stale_files(fresh: dict[str, str] | None = None) -> list[str]:
    """Names of files in ``pb/`` that differ from a fresh generation (missing or extra too)."""
    fresh = generate() if fresh is None else fresh
    old = _committed()
    return sorted(name for name in fresh.keys() | old.keys() if fresh.get(name) != old.get(name))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ckpt.image.protogen", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report stale modules; exit 1 if any")
    args = parser.parse_args(argv)
    fresh = generate()
    stale = stale_files(fresh)
    if args.check:
        if stale:
            print(
                f"stale generated protobuf modules in {PB_DIR} ({generator_version()}): {', '.join(stale)}\n"
                "run `python -m ckpt.image.protogen` and commit the result",
                file=sys.stderr,
            )
            return 1
        return 0
    for name in stale:
        target = PB_DIR / name
        if name in fresh:
            target.write_text(fresh[name])
            print(f"wrote {target}")
        else:
            target.unlink()
            print(f"removed {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
