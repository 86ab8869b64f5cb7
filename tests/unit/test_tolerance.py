"""The tolerance table: names checked before anything is touched, and the README's table is this one."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ckpt.errors import Unsupported, UsageError
from ckpt.tolerance import TABLE, lose, parse

README = Path(__file__).resolve().parents[2] / "README.md"


def test_names_are_checked_and_may_be_listed_with_commas() -> None:
    assert parse(["inotify-events,udp-queue", "listen-queue"], "dump") == {"inotify-events", "udp-queue",
                                                                          "listen-queue"}
    assert parse([], "dump") == frozenset()
    with pytest.raises(UsageError, match="--tolerate bogus: no such tolerance"):
        parse(["udp-queue,bogus"], "dump")


def test_a_loss_is_refused_naming_its_tolerance_or_noted() -> None:
    with pytest.raises(Unsupported, match="process 7: fd 3: 2 bytes of events, which a restore cannot") as exc:
        lose("inotify-events", (), "process 7: fd 3", "2 bytes of events", [])
    assert (exc.value.hint or "").startswith("--tolerate inotify-events lets the dump go on without it (")
    notes: list[str] = []
    lose("inotify-events", {"inotify-events"}, "process 7: fd 3", "2 bytes of events", notes)
    assert notes == ["process 7: fd 3: 2 bytes of events: not kept (--tolerate inotify-events)"]


def test_the_readme_table_is_the_table() -> None:
    """Each tolerance has its row (name in backticks first), and the table has no other `--tolerate` row."""
    text = README.read_text()
    section = text[text.index("### Tolerances"):]
    section = section[:section.index("\n## ", 1) if "\n## " in section else len(section)]
    rows = re.findall(r"^\| `--tolerate ([a-z-]+)` \|", section, re.M)
    assert rows == list(TABLE), "README's tolerance table differs from ckpt.tolerance.TABLE"
