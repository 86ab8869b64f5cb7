"""The clock record and the restore's time-namespace rule (ckpt/resources/timens.py, ckpt/procfs/timens.py).

The rule runs on synthetic inventories, so each case means the same on any host; the dump's refusals on
faked namespace readings.  Real processes in real namespaces: tests/e2e/test_timens.py.
"""

from __future__ import annotations

import pytest

from ckpt.errors import Unsupported
from ckpt.image.pb import clocks_pb2, inventory_pb2
from ckpt.procfs.timens import INIT_TIME_NS_INO, TimeNs, TimensOffsets, parse_timens_offsets
from ckpt.resources import timens

NS = 1_000_000_000
BOOT = "0f0e0d0c-0b0a-0908-0706-050403020100"


def test_parse_timens_offsets() -> None:
    assert parse_timens_offsets(b"monotonic           0         0\nboottime            0         0\n") == \
        TimensOffsets(0, 0)
    # negative seconds with a positive nanosecond part, as the kernel prints -1.5 s
    assert parse_timens_offsets(b"monotonic       -2 500000000\nboottime    86400         0\n") == \
        TimensOffsets(-1_500_000_000, 86400 * NS)
    assert parse_timens_offsets(b"1 5 0\n7 6 1\n") == TimensOffsets(5 * NS, 6 * NS + 1)


def _inventory(own: bool = False, boot_id: str = BOOT, clocks: bool = True) -> inventory_pb2.Inventory:
    inv = inventory_pb2.Inventory(boot_id=boot_id)
    if clocks:
        inv.clocks.CopyFrom(clocks_pb2.Clocks(monotonic_ns=100 * NS, boottime_ns=200 * NS, realtime_ns=1,
                                              own_time_ns=own, monotonic_offset_ns=50 * NS if own else 0,
                                              boottime_offset_ns=60 * NS if own else 0, time_ns_inode=7))
    return inv


@pytest.fixture(autouse=True)
def _on_host(monkeypatch: pytest.MonkeyPatch) -> None:
    """ckpt itself on the host's clocks, and no forced "other boot", whatever the test runner's environment."""
    monkeypatch.delenv(timens.OTHER_BOOT_ENV, raising=False)
    monkeypatch.setattr(timens, "read_time_ns", lambda pid: TimeNs(INIT_TIME_NS_INO, INIT_TIME_NS_INO, TimensOffsets()))


@pytest.mark.parametrize(("inv", "boot", "mode"), [
    (_inventory(clocks=False), BOOT, "none"),          # an older ckpt's image: as before
    (_inventory(), BOOT, "none"),                      # the host's clocks, same boot: nothing to do
    (_inventory(own=True), BOOT, "same"),              # its own namespace, same boot: the offsets it had
    (_inventory(), "another", "continue"),             # another boot: carry on from the dump
    (_inventory(own=True), "another", "continue"),
    (_inventory(boot_id=""), BOOT, "continue"),        # no boot recorded: cannot be the same one
], ids=["old-image", "host-same-boot", "own-same-boot", "host-other-boot", "own-other-boot", "no-boot-id"])
def test_rule(inv: inventory_pb2.Inventory, boot: str, mode: str) -> None:
    p = timens.plan(inv, boot_id=boot)
    assert p.mode == mode and p.new_ns == (mode != "none")
    if p.record is not None and mode == "same":
        assert p.record.offsets == TimensOffsets(50 * NS, 60 * NS)


def test_forced_other_boot(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(timens.OTHER_BOOT_ENV, "1")
    p = timens.plan(_inventory(), boot_id=BOOT)
    assert p.mode == "continue" and "CKPT_TEST_OTHER_BOOT" in p.reason


def test_restorer_inside_a_time_namespace(monkeypatch: pytest.MonkeyPatch) -> None:
    """Same boot, the tree on the host's clocks, ckpt in a namespace of its own: a namespace with 0 offsets."""
    monkeypatch.setattr(timens, "read_time_ns", lambda pid: TimeNs(5, 5, TimensOffsets(NS, NS)))
    assert timens.plan(_inventory(), boot_id=BOOT).mode == "same"


def test_dump_refuses_two_namespaces(monkeypatch: pytest.MonkeyPatch) -> None:
    spaces = {1: TimeNs(INIT_TIME_NS_INO, INIT_TIME_NS_INO, TimensOffsets()), 2: TimeNs(9, 9, TimensOffsets(NS, 0))}
    monkeypatch.setattr(timens, "read_time_ns", lambda pid: spaces.get(pid, spaces[1]))
    with pytest.raises(Unsupported, match=r"in 2 time namespaces \(the host: 1; time:\[9\]: 2\)"):
        timens.dump([1, 2])


def test_dump_refuses_an_unshared_parent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(timens, "read_time_ns", lambda pid: TimeNs(INIT_TIME_NS_INO, 9, TimensOffsets(NS, 0)))
    with pytest.raises(Unsupported, match="process 1 unshared its time namespace"):
        timens.dump([1])


def test_dump_of_an_own_namespace(monkeypatch: pytest.MonkeyPatch) -> None:
    """The clocks as the tree sees them: the host's plus its offsets."""
    ns = TimeNs(9, 9, TimensOffsets(3600 * NS, 7200 * NS))
    monkeypatch.setattr(timens, "read_time_ns", lambda pid: ns if pid != timens.os.getpid() else
                        TimeNs(INIT_TIME_NS_INO, INIT_TIME_NS_INO, TimensOffsets()))
    before = timens._host_now()
    c = timens.dump([1, 2])
    after = timens._host_now()
    assert c.own_time_ns and c.time_ns_inode == 9 and c.monotonic_offset_ns == 3600 * NS
    assert before[0] + 3600 * NS <= c.monotonic_ns <= after[0] + 3600 * NS
    assert before[1] + 7200 * NS <= c.boottime_ns <= after[1] + 7200 * NS


def test_no_time_namespaces_on_the_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(timens, "read_time_ns", lambda pid: None)
    c = timens.dump([1])
    assert not c.own_time_ns and c.time_ns_inode == 0


def test_a_receiver_without_time_namespaces_refuses_another_boot(monkeypatch: pytest.MonkeyPatch) -> None:
    """The migration handshake's check: only a process from another boot needs the namespace."""
    from ckpt.errors import RestoreError
    from ckpt.procfs.timens import read_boot_id

    real_exists = timens.os.path.exists
    monkeypatch.setattr(timens.os.path, "exists", lambda p: False if p == "/proc/self/ns/time" else real_exists(p))
    timens.check_from_boot(read_boot_id())  # this boot: the host's clocks, nothing to carry on
    with pytest.raises(RestoreError, match="needs a time namespace .*another boot.*CONFIG_TIME_NS"):
        timens.check_from_boot(BOOT)
    monkeypatch.setenv(timens.OTHER_BOOT_ENV, "1")
    with pytest.raises(RestoreError):
        timens.check_from_boot(read_boot_id())
    monkeypatch.setattr(timens.os.path, "exists", real_exists)
    timens.check_from_boot(BOOT)  # a kernel with them: carried on in a new namespace


def _image(path, clocks: clocks_pb2.Clocks):  # noqa: ANN001, ANN202
    from ckpt.image import ImageKind, ImageWriter, ProcessInfo

    with ImageWriter(path, kind=ImageKind.FULL) as w:
        w.commit(processes=[ProcessInfo(4242, 1, (), 1, None, zombie=True)], clocks=clocks)
    return path


@pytest.mark.parametrize(("field", "value", "ok"), [
    ("monotonic_ns", 5 * NS, True), ("monotonic_ns", -1, False), ("boottime_ns", 1 << 62, False),
    ("monotonic_offset_ns", -(1 << 61), True), ("boottime_offset_ns", -(1 << 62), False),
])
def test_verify_bounds_the_clocks(tmp_path, field: str, value: int, ok: bool) -> None:  # noqa: ANN001
    from ckpt.image.verify import verify

    c = clocks_pb2.Clocks(monotonic_ns=NS, boottime_ns=NS)
    setattr(c, field, value)
    report = verify(_image(tmp_path / "img", c))
    assert report.ok == ok, report
    if not ok:
        assert "clocks out of range" in str(report.problems[0])
