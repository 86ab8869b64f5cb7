"""The receiver's staging thread (ckpt.migrate.dest._Stager) with a stand-in StagedRestore.

Staging must never fail a migration: when a stage fails or an image cannot
follow the staged ones, the stager drops it (aborting the helper) and
``finish`` returns None, so the receiver restores the final image plainly.
"""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import pytest

import ckpt.restore
from ckpt.errors import RestoreError
from ckpt.image import reader
from ckpt.migrate import dest
from ckpt.migrate.dest import _Stager
from ckpt.restore import StagingMismatch


class _Fake:
    """Records its calls (and the thread they come from); raises where told."""

    made: list["_Fake"] = []
    fail: dict[str, BaseException] = {}
    slow: dict[str, float] = {}

    def __init__(self, **_kw: object) -> None:
        self.calls: list[tuple[str, str]] = []
        self.threads: set[int] = set()
        self.state = "new"
        self.pid = 0
        self.pids: list[int] = []  # no helper to kill
        self.stages: list[SimpleNamespace] = []
        _Fake.made.append(self)

    def _call(self, what: str, path: str) -> None:
        self.calls.append((what, path))
        self.threads.add(threading.get_ident())
        time.sleep(_Fake.slow.get(what, 0.0))
        if what in _Fake.fail:
            raise _Fake.fail.pop(what)

    def _stage(self) -> SimpleNamespace:
        st = SimpleNamespace(pages_written=1, vmas_mapped=0, pages_reset=0, seconds=0.0)
        self.stages.append(st)
        return st

    def start(self, path: str) -> SimpleNamespace:
        self._call("start", path)
        self.state = "staged"
        return self._stage()

    def apply(self, path: str) -> SimpleNamespace:
        self._call("apply", path)
        return self._stage()

    def finish(self, path: str, before_hand_over=None, handed_sockets=None) -> SimpleNamespace:  # noqa: ANN001
        self._call("finish", path)
        self.state = "done"
        self._stage()
        return SimpleNamespace(image=path, memory_seconds=0.0, total_seconds=0.0)

    def abort(self) -> None:
        if self.state in ("new", "staged"):  # once done (or aborted) the real one does nothing
            self.calls.append(("abort", ""))
            self.state = "aborted"


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> type[_Fake]:
    _Fake.made, _Fake.fail, _Fake.slow = [], {}, {}
    monkeypatch.setattr(ckpt.restore, "StagedRestore", _Fake)
    # images "full" (no parent) are the ones whose name starts with "full"
    monkeypatch.setattr(reader.Image, "open", staticmethod(
        lambda path, **_kw: SimpleNamespace(parent=None if str(path).startswith("full") else "parent")))
    return _Fake


def test_stages_in_order_on_one_thread(fake: type[_Fake]) -> None:
    said: list[str] = []
    s = _Stager(said.append)
    for name in ("1", "2", "3"):
        s.add(name)
    assert s.finish("4").image == "4"
    s.close(kill=False)
    (staged,) = fake.made
    assert staged.calls == [("start", "1"), ("apply", "2"), ("apply", "3"), ("finish", "4")]
    assert len(staged.threads) == 1 and threading.get_ident() not in staged.threads  # its own thread
    assert len(said) == 4 and not any("plainly" in m for m in said) and s.note == ""


@pytest.mark.parametrize("where,error,note", [
    ("start", RestoreError("pid 7 is taken"), "staging image 1 failed (pid 7 is taken)"),
    ("apply", StagingMismatch("no layout"), "image 2 cannot be staged (no layout)"),
    ("finish", RestoreError("boom"), "finishing the staged restore failed (boom)"),
])
def test_a_failing_stage_falls_back_to_a_plain_restore(fake: type[_Fake], where: str, error: Exception,
                                                         note: str) -> None:
    fake.fail[where] = error
    said: list[str] = []
    s = _Stager(said.append)
    done = [s.add(name) for name in ("1", "2", "3")]
    assert [f.result(timeout=10) for f in done] == [None] * 3  # each is "applied" (or dropped): never raises
    assert s.finish("4") is None  # the receiver restores "4" plainly
    s.close(kill=False)
    assert s.note == note and [m for m in said if "plainly" in m] == [f"{note}; the switch-over restores plainly"]
    staged = fake.made[0]
    assert ("abort", "") in staged.calls
    assert not any(c[0] in ("apply", "finish") for c in staged.calls[staged.calls.index(("abort", "")):])


def test_a_full_image_restarts_staging(fake: type[_Fake]) -> None:
    s = _Stager(lambda _m: None)
    s.add("1")
    s.add("2")
    s.add("full-3")  # the source lost its tracking: a full pre-dump, the next ones are deltas of it
    s.add("4")
    assert s.finish("5").image == "5"
    s.close(kill=False)
    first, second = fake.made
    assert first.calls == [("start", "1"), ("apply", "2"), ("abort", "")]
    assert second.calls == [("start", "full-3"), ("apply", "4"), ("finish", "5")]


def test_close_aborts_what_is_staged(fake: type[_Fake]) -> None:
    s = _Stager(lambda _m: None)
    s.add("1")
    s.close(kill=True)
    assert fake.made[0].calls == [("start", "1"), ("abort", "")] and fake.made[0].state == "aborted"


def test_a_hanging_stage_is_given_up(fake: type[_Fake], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dest, "STAGE_TIMEOUT", 0.2)
    fake.slow["apply"] = 1.0
    said: list[str] = []
    s = _Stager(said.append)
    s.add("1")
    t0 = time.monotonic()
    s.wait_staged(s.add("2"))  # the receiver acknowledges image 3 without waiting any longer
    assert time.monotonic() - t0 < 0.9 and "more than 0 s" in s.note
    s.add("3")
    assert s.finish("4") is None  # restored plainly
    s.close(kill=False)
    assert ("apply", "3") not in fake.made[0].calls


def test_a_failure_after_the_source_was_told_is_final(fake: type[_Fake]) -> None:
    """Once "restored" was said (the commit asked), a failing finish raises: no second, plain restore."""
    fake.fail["finish"] = RestoreError("boom")
    s = _Stager(lambda _m: None)
    s.wait_staged(s.add("1"))
    with pytest.raises(RestoreError, match="boom"):
        s.finish("2", SimpleNamespace(asked=True))  # type: ignore[arg-type]
    s.close(kill=True)
    assert s.note == ""
