"""The records both sides of a switch-over keep on disk (ckpt.migrate.journal), and what they answer."""

from __future__ import annotations

import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from ckpt.errors import UsageError
from ckpt.image.store import hold_dir
from ckpt.migrate import journal
from ckpt.migrate.journal import Journal, SourceRecord


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen]:
    p = subprocess.Popen(["sleep", "600"])
    yield p
    p.kill()
    p.wait()


def _entry(root: Path, state: str, **kw: int) -> Journal:
    store = root / "store"
    store.mkdir(exist_ok=True)
    j = Journal(journal.new_migration_id(), 4242, str(store))
    j.set(str(root), state, **kw)
    return j


@pytest.mark.parametrize("state, answer", [("aborted", "not running"), ("running", "running")])
def test_final_states_answer_for_themselves(tmp_path: Path, state: str, answer: str) -> None:
    assert journal.outcome(str(tmp_path), _entry(tmp_path, state).migration)[0] == answer


def test_an_unknown_or_malformed_id_is_unknown(tmp_path: Path) -> None:
    _entry(tmp_path, "running")
    assert journal.outcome(str(tmp_path), journal.new_migration_id())[0] == "unknown"
    assert journal.outcome(str(tmp_path), "../x")[0] == "unknown"


def test_receiving_is_in_progress_while_its_receiver_lives_then_not_running(tmp_path: Path) -> None:
    j = _entry(tmp_path, "receiving")
    held = hold_dir(j.store)
    assert held is not None
    assert journal.outcome(str(tmp_path), j.migration)[0] == "in progress"
    os.close(held)  # the receiver is gone; a copy it had not let go died with it
    assert journal.outcome(str(tmp_path), j.migration)[0] == "not running"


def test_committed_with_its_receiver_gone_is_decided_by_the_copy(tmp_path: Path,
                                                                  sleeper: subprocess.Popen) -> None:
    j = _entry(tmp_path, "committed", pid=sleeper.pid)
    assert j.starttime == journal.starttime(sleeper.pid)
    held = hold_dir(j.store)
    assert journal.outcome(str(tmp_path), j.migration)[0] == "in progress"
    assert held is not None
    os.close(held)
    assert journal.outcome(str(tmp_path), j.migration)[0] == "running"  # let go before its receiver died
    sleeper.kill()
    sleeper.wait()
    assert journal.outcome(str(tmp_path), j.migration)[0] == "not running"


def test_journal_entries_are_private(tmp_path: Path) -> None:
    j = _entry(tmp_path, "receiving")
    assert stat.S_IMODE(os.stat(journal.journal_dir(str(tmp_path))).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(j.path(str(tmp_path))).st_mode) == 0o600


def test_a_source_record_is_locked_while_its_migrate_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          sleeper: subprocess.Popen) -> None:
    monkeypatch.setenv("CKPT_STATE_DIR", str(tmp_path))
    rec = SourceRecord(journal.new_migration_id(), sleeper.pid, "127.0.0.1:1",
                       [(sleeper.pid, journal.starttime(sleeper.pid) or 0), (sleeper.pid + 1, 1)])
    fd = rec.save()
    assert stat.S_IMODE(os.stat(SourceRecord.path_of(sleeper.pid)).st_mode) == 0o600
    with pytest.raises(UsageError, match="still running"):
        SourceRecord.lock(sleeper.pid)
    os.close(fd)  # that ckpt migrate is gone
    lock = SourceRecord.lock(sleeper.pid)
    try:
        back = SourceRecord.load(sleeper.pid)
        assert back is not None and back.migration == rec.migration
        assert back.live() == [sleeper.pid]  # the other "held" pid is not the process held
    finally:
        os.close(lock)
    SourceRecord.remove(sleeper.pid)
    with pytest.raises(UsageError, match="no migration of pid"):
        SourceRecord.lock(sleeper.pid)


def test_records_of_gone_processes_are_swept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            sleeper: subprocess.Popen) -> None:
    monkeypatch.setenv("CKPT_STATE_DIR", str(tmp_path))
    alive = SourceRecord(journal.new_migration_id(), sleeper.pid, "127.0.0.1:1",
                         [(sleeper.pid, journal.starttime(sleeper.pid) or 0)])
    os.close(alive.save())
    gone = SourceRecord(journal.new_migration_id(), 4194304, "127.0.0.1:1", [(4194304, 1)])  # (above pid_max)
    os.close(gone.save())
    held = SourceRecord(journal.new_migration_id(), 4194303, "127.0.0.1:1", [(4194303, 1)])
    lock = held.save()  # its ckpt migrate still runs
    try:
        assert SourceRecord.sweep() == [4194304]
        assert SourceRecord.load(sleeper.pid) is not None and SourceRecord.load(4194303) is not None
        assert not os.path.exists(SourceRecord.path_of(4194304))
    finally:
        os.close(lock)
