"""The documented Python API of ckpt; the CLI and the tests call only this.

Every function raises :class:`ckpt.errors.CkptError` subclasses for anything a
user can cause (no such process, corrupt image, unsupported resource).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from .features import Features, probe_features

if TYPE_CHECKING:
    from .image.verify import Report

__all__ = ["check", "show", "verify"]


def check() -> Features:
    """Probe every kernel facility ckpt relies on (cached for this process)."""
    return probe_features()


def show(image_dir: str | os.PathLike[str], *, as_json: bool = False) -> str:
    """Decode every file of an image directory to text (or JSON), like ``crit show``."""
    from .image.show import show as _show

    return _show(image_dir, as_json=as_json)


def verify(image_dir: str | os.PathLike[str]) -> "Report":
    """Check every file of an image and its whole parent chain; the report lists every problem."""
    from .image.verify import verify as _verify

    return _verify(image_dir)
