"""``--fsync``: which images are synced to disk before ckpt says they are done (ckpt.image.store.fsync_wanted).

By default (``end``) only a dump that ends its target syncs its image, whose only copy of the process
it then is; ``-R``, ``-s`` and pre-dumps leave theirs to the page cache, as CRIU does.  ``always`` and
``never`` say it for all.  The syncs are counted on a real dump of a real process (the writer's fsync
paths are wrapped), and an image that was not synced restores like any other.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ckpt import api
from ckpt.image import store

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="dumps need root here (ptrace of any process)")


@pytest.fixture
def syncs(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The image files and directories fsynced so far, by name."""
    seen: list[str] = []
    real_all, real_dir = store._sync_all, store.fsync_dir
    monkeypatch.setattr(store, "_sync_all", lambda paths: (seen.extend(paths), real_all(paths))[1])
    monkeypatch.setattr(store, "fsync_dir", lambda path: (seen.append(path), real_dir(path))[1])
    yield seen


@pytest.mark.parametrize("policy, leave_running, synced", [
    (None, False, True), (None, True, False), ("always", True, True), ("never", False, False),
])
def test_which_dumps_sync(py_target: Callable, tmp_path: Path, syncs: list[str], restored: list[int],
                          policy: str | None, leave_running: bool, synced: bool) -> None:
    t = py_target("py_mutator.py")
    t.expect("GEN")
    with store.fsync_policy(policy):
        api.dump(t.pid, tmp_path / "img", leave_running=leave_running)
    assert bool(syncs) == synced, syncs
    if synced:
        assert any(p.endswith("inventory.img") for p in syncs) and str(tmp_path) in syncs
    if leave_running:
        os.kill(t.pid, signal.SIGKILL)
    t.proc.wait(timeout=30)
    r = api.restore(tmp_path / "img", inherit_fds=t.stdio_fds)  # synced or only in the page cache: the same
    restored.append(r.pid)
    os.kill(r.pid, signal.SIGUSR1)
    assert t.expect("CHECK").startswith("CHECK PASS")


@pytest.mark.parametrize("policy, synced", [(None, False), ("always", True)])
def test_pre_dumps_sync_only_when_asked(py_target: Callable, tmp_path: Path, syncs: list[str], policy: str | None,
                                        synced: bool) -> None:
    t = py_target("py_mutator.py")
    t.expect("GEN")
    try:
        with store.fsync_policy(policy):
            api.pre_dump(t.pid, tmp_path / "pre")
        assert bool(syncs) == synced, syncs
    finally:
        api.track_stop(t.pid)
