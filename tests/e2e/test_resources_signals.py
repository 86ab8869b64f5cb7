"""Signal dispositions and pending signals: dump a target, restore into a fresh helper, compare both ways."""

from __future__ import annotations

import os
import signal

import pytest

from ckpt.control.seize import freeze
from ckpt.dump import dump, restore
from ckpt.image.pb import core_pb2, process_pb2
from ckpt.image.reader import Image
from ckpt.kernel.signals import SA_RESTART, SA_RESTORER, SA_SIGINFO, SI_QUEUE, SI_TKILL, SI_USER, siginfo_code
from ckpt.procfs import snapshot
from ckpt.resources import signals
from resources_helpers import need_root, start_helper, status_of
from targets import tracer_of, wait_until
from test_dump_restore import _forget

pytestmark = need_root
SIGRTMIN = signal.SIGRTMIN  # glibc's (34 here), as the C target uses it


def report(t) -> list[str]:
    """Make the process report (SIGUSR1) and collect its USR1/PENDING lines."""
    os.kill(t.pid, signal.SIGUSR1)
    lines = [t.expect("USR1")]
    while (line := t.readline()) != "END":
        lines.append(line)
    return lines


def test_sigactions_and_pending_round_trip(c_target) -> None:
    t = c_target("resources", "signals")
    t.ready()
    os.kill(t.pid, signal.SIGHUP)  # blocked: stays pending, si_code SI_USER from us
    wait_until(lambda: int(status_of(t.pid)["ShdPnd"], 16) & (1 << (signal.SIGHUP - 1)), "SIGHUP pending")
    before = status_of(t.pid)
    h = start_helper(c_target)

    with freeze(t.pid) as proc, snapshot(t.pid) as snap:
        entry = signals.dump(proc, snap)
        core = core_pb2.ThreadCore(tid=t.pid)
        signals.dump_pending(proc, entry, [core])
        mine = list(core.pending)
    after = status_of(t.pid)
    # Not SigQ: its first number counts the queued signals of every process of the real uid, machine-wide;
    # the target's own queue is checked whole below, from its report.
    for key in ("SigCgt", "SigIgn", "ShdPnd", "SigPnd", "SigBlk"):
        assert after[key] == before[key], key
    assert tracer_of(t.pid) == 0

    acts = {a.signo: a for a in entry.sigactions}
    assert len(entry.sigactions) == 64 and [a.signo for a in entry.sigactions] == list(range(1, 65))
    usr1 = acts[signal.SIGUSR1]
    assert usr1.flags & (SA_SIGINFO | SA_RESTART | SA_RESTORER) == SA_SIGINFO | SA_RESTART | SA_RESTORER
    assert usr1.restorer and usr1.mask == 1 << (signal.SIGTERM - 1)
    assert acts[signal.SIGINT].handler == 1 and acts[signal.SIGPIPE].handler == 1
    shared = [(p.signo, siginfo_code(p.siginfo)) for p in entry.shared_pending]
    assert shared == [(signal.SIGUSR2, SI_QUEUE), (SIGRTMIN + 1, SI_QUEUE), (SIGRTMIN + 1, SI_QUEUE),
                      (signal.SIGHUP, SI_USER)]
    assert [(p.signo, siginfo_code(p.siginfo)) for p in mine] == [(SIGRTMIN + 2, SI_TKILL)]

    # Through the image record and back, then into the helper.
    entry = process_pb2.ProcessEntry.FromString(entry.SerializeToString())
    with freeze(h.pid) as hp:
        inj = hp.injector()
        signals.restore(inj, entry)
        signals.restore_pending(inj, mine, thread=True)
        again = signals.dump_sigactions(hp)
    assert list(again) == list(entry.sigactions)
    got = status_of(h.pid)
    for key in ("SigCgt", "SigIgn", "ShdPnd", "SigPnd"):
        assert got[key] == before[key], key

    # The helper now behaves like the target: the restored handler runs (and returns
    # through the restored restorer), and the same signals come out with the same siginfo.
    want = report(t)
    assert want[0] == "USR1 code=0"
    assert f"PENDING sig={signal.SIGUSR2} code=-1 val=42 pid={t.pid}" in want
    assert f"PENDING sig={signal.SIGHUP} code=0 val=0 pid={os.getpid()}" in want
    # The target's whole queue, entry by entry: the dump neither took nor added one.
    queued = [dict(kv.split("=") for kv in line.split()[1:]) for line in want[1:]]
    assert sorted((int(q["sig"]), int(q["val"])) for q in queued) == sorted(
        [(signal.SIGUSR2, 42), (SIGRTMIN + 1, 1), (SIGRTMIN + 1, 2), (signal.SIGHUP, 0), (SIGRTMIN + 2, 0)])
    assert report(h) == want
    assert report(h) == ["USR1 code=0"]  # drained, and the handler still works after returning
    assert t.alive() and h.alive()


def test_ignored_sigtrap_survives_restore(c_target) -> None:
    """Single steps force SIGTRAP and reset SIG_IGN; restore switches the injector to syscall stops first."""
    h = start_helper(c_target)
    entry = process_pb2.ProcessEntry()
    for signo in range(1, 65):
        entry.sigactions.add(signo=signo, handler=1 if signo in (signal.SIGTRAP, signal.SIGWINCH) else 0)
    with freeze(h.pid) as hp:
        inj = hp.injector()
        signals.restore_sigactions(inj, entry.sigactions)
        assert inj.getpid() == h.pid  # one more injected call after SIGTRAP became SIG_IGN
    ign = int(status_of(h.pid)["SigIgn"], 16)
    assert ign & (1 << (signal.SIGTRAP - 1)) and ign & (1 << (signal.SIGWINCH - 1))
    assert h.alive()


def test_pending_signal_without_queue_entry_is_synthesised() -> None:
    from ckpt.kernel.signals import make_siginfo, siginfo_signo

    info = make_siginfo(signal.SIGHUP)
    assert len(info) == 128 and siginfo_signo(info) == signal.SIGHUP and siginfo_code(info) == SI_USER


def test_malformed_pending_signal_is_refused(c_target) -> None:
    h = start_helper(c_target)
    from ckpt.image.pb import common_pb2

    with freeze(h.pid) as hp:
        with pytest.raises(ValueError, match="malformed"):
            signals.restore_pending(hp.injector(), [common_pb2.PendingSignal(signo=10, siginfo=b"short")])
    assert h.alive() and tracer_of(h.pid) == 0


def test_signal_arriving_while_frozen_is_in_the_image(c_target, tmp_path, restored) -> None:  # noqa: ANN001
    """A signal sent while the dump holds the target frozen is taken by the first injected syscall
    (held back by the injector): it must still be in the image, so a killed target loses nothing."""
    t = c_target("resources", "signals")
    t.ready()

    def on_progress(event) -> None:  # noqa: ANN001
        if event.phase == "frozen":
            os.kill(t.pid, signal.SIGUSR1)  # not blocked: the next injected syscall dequeues it

    dump(t.pid, tmp_path / "img", progress=on_progress)
    _forget(t)
    img = Image.open(tmp_path / "img")
    held = [(p.signo, siginfo_code(p.siginfo)) for p in img.threads(t.pid)[0].pending]
    assert (signal.SIGUSR1, SI_USER) in held, held
    r = restore(tmp_path / "img", inherit_fds=t.stdio_fds)
    restored.append(r.pid)
    # Delivered after the restore without being sent again: the handler reports it, then the queue.
    assert t.expect("USR1") == "USR1 code=0"
    lines = []
    while (line := t.readline()) != "END":
        lines.append(line)
    assert f"PENDING sig={signal.SIGUSR2} code=-1 val=42 pid={t.pid}" in lines
