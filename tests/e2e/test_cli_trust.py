"""The command line refuses what it cannot do safely, before it touches anything (issue 14, items 7-9, 11).

Every case runs the real ``ckpt`` in a subprocess against real processes:
image directories another user could change (or reached through a link) are
refused, output paths and options are checked before the target is seized,
errors are one sentence with the README's exit code, ``-t`` of a thread is
refused, and CRIU's option names (``-o``, ``-v``, ``-l``, ``--ghost-limit``)
work where users type them.
"""

from __future__ import annotations

import fcntl
import json
import os
import pwd
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from targets import Target, wait_until

from test_cli import CKPT, REPO, golden
from test_cli import assert_one_line_error as one_line_error

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="dump/restore need root")


def run(*args: str | int | os.PathLike[str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    argv = [str(a) if isinstance(a, int) else os.fspath(a) for a in args]
    return subprocess.run([*CKPT, *argv], capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, cwd=REPO)  # -m ckpt.cli: this tree's ckpt


def _state(pid: int) -> tuple[str, int]:
    """(State letter, TracerPid) of ``pid``."""
    status = Path(f"/proc/{pid}/status").read_text()
    state = re.search(r"^State:\s+(\S)", status, re.M)
    tracer = re.search(r"^TracerPid:\s+(\d+)", status, re.M)
    assert state and tracer
    return state.group(1), int(tracer.group(1))


def fresh_tick(t: Target) -> int:
    """A tick the target printed after this call began: proof that it runs now."""
    fd = t.proc.stdout.fileno()
    while select.select([fd], [], [], 0)[0]:  # what it printed before
        if not os.read(fd, 65536):
            raise AssertionError(f"target {t.pid} closed its stdout")
    t._buf = b""
    t.readline(10)  # may be the tail of a line cut by the drain
    return int(t.expect("tick", 10).split()[1])


def assert_untouched(t: Target) -> None:
    """Running, not stopped, traced by nobody, and still ticking."""
    assert t.alive()
    state, tracer = _state(t.pid)
    assert state in "RS" and tracer == 0, (state, tracer)
    fresh_tick(t)


@pytest.fixture
def ticker(py_target) -> Iterator:  # noqa: ANN001 - conftest's factory
    def start(*args: str) -> tuple[Target, dict[str, str]]:
        t = py_target("py_ticker.py", *args, stderr=subprocess.DEVNULL)
        return t, t.ready()

    yield start


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    """A process with no pipe to us (stdio on /dev/null): dumped and restored with no --inherit-fd."""
    p = subprocess.Popen(["sleep", "1000"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, close_fds=True, start_new_session=True)
    yield p
    if p.poll() is None:
        p.kill()
    p.wait()


def _nobody() -> tuple[int, int]:
    try:
        pw = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no user nobody")
    return pw.pw_uid, pw.pw_gid


# --- item 7: image directories ----------------------------------------------------------------------------


def test_dump_never_follows_a_link_as_image_dir_nor_another_users_link_above_it(tmp_path: Path, ticker) -> None:  # noqa: ANN001
    t, _ = ticker()
    victim = tmp_path / "victim"
    victim.mkdir(mode=0o700)
    link = tmp_path / "link"
    link.symlink_to(victim)
    # -D LINK: the last component is never followed.
    one_line_error(run("dump", "-R", "-t", t.pid, "-D", link), 2, str(link), "symbolic link")
    # -D THEIRS/img through another user's link (as in /tmp): refused too.
    uid, _ = _nobody()
    theirs = tmp_path / "theirs"
    theirs.symlink_to(victim)
    os.lchown(theirs, uid, -1)
    one_line_error(run("dump", "-R", "-t", t.pid, "-D", theirs / "img"), 2, str(theirs), "symbolic link owned by nobody")
    assert list(victim.iterdir()) == []
    assert_untouched(t)
    # Reading through a link as the image directory is refused the same way.
    one_line_error(run("verify", link), 2, "symbolic link")


def test_directories_other_users_can_write_are_refused_and_sticky_tmp_is_fine(tmp_path: Path, ticker) -> None:  # noqa: ANN001
    t, _ = ticker()
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o775)
    res = run("dump", "-R", "-t", t.pid, "-D", shared / "img")
    assert "chmod go-w" in res.stderr
    one_line_error(res, 2, str(shared), "writable by its group")
    assert list(shared.iterdir()) == []
    uid, _ = _nobody()
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o700)
    os.chown(theirs, uid, -1)
    one_line_error(run("pre-dump", "-t", t.pid, "-D", theirs / "img"), 2, str(theirs), "owned by nobody")
    assert list(theirs.iterdir()) == []
    assert_untouched(t)

    # A root-owned sticky parent such as /tmp is fine.
    tmp = Path(tempfile.gettempdir())
    st = tmp.stat()
    if not (st.st_uid == 0 and st.st_mode & 0o1000):
        pytest.skip(f"{tmp} is not a root-owned sticky directory here")
    img = tmp / f"ckpt-test-{os.getpid()}-{t.pid}"
    try:
        res = run("dump", "-R", "-t", t.pid, "-D", img)
        assert res.returncode == 0, res.stderr
        assert run("verify", img).returncode == 0
        # An image another user could have changed is not read back.
        os.chown(img, uid, -1)
        for cmd in (["verify", img], ["show", img], ["restore", "-D", img, "-d"]):
            one_line_error(run(*cmd), 2, str(img), "owned by nobody")
        os.chown(img, 0, -1)
        (img / "inventory.img").chmod(0o666)
        one_line_error(run("restore", "-D", img, "-d"), 2, "inventory.img", "writable by")
    finally:
        shutil.rmtree(img, ignore_errors=True)
    assert_untouched(t)


def _starttime(pid: int) -> int:
    data = Path(f"/proc/{pid}/stat").read_bytes()
    return int(data[data.rindex(b")") + 2:].split()[19])


def test_temp_dir_of_a_killed_dump_is_removed_by_the_next_run(tmp_path: Path, ticker, sleeper) -> None:  # noqa: ANN001
    parent = tmp_path / "images"
    parent.mkdir(mode=0o700)
    big, _ = ticker("--random-mib", "64")
    # zstd -19 on random bytes: the dump is slow enough to be caught while it writes.
    dump = subprocess.Popen([*CKPT, "dump", "-R", "--compress", "19", "-t", str(big.pid), "-D", str(parent / "img")],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO)
    try:
        wait_until(lambda: any(p.name.endswith(".tmp") for p in parent.iterdir()) or dump.poll() is not None,
                   "the dump's temporary directory", timeout=60)
        dump.send_signal(signal.SIGKILL)
    finally:
        dump.wait()
    big.close()  # whatever the kill did to it
    left = [p for p in parent.iterdir() if p.name.endswith(".tmp")]
    assert len(left) == 1 and not (parent / "img").exists(), left
    assert f".{dump.pid}-" in left[0].name  # it names the run that made it
    # A temporary directory of a run still going (as this test holds its flock) is left alone.
    live = parent / f".other.{os.getpid()}-{_starttime(os.getpid())}.abcdefgh.tmp"
    live.mkdir(mode=0o700)
    held = os.open(live, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(held, fcntl.LOCK_EX)
        res = run("dump", "-t", sleeper.pid, "-D", parent / "img")
    finally:
        os.close(held)
    assert res.returncode == 0, res.stderr
    assert f"removed {left[0]}" in res.stderr and "killed" in res.stderr
    assert sorted(p.name for p in parent.iterdir()) == sorted(["img", live.name])


# --- item 8: output paths checked before the work -------------------------------------------------------


def test_json_stats_to_a_bad_path_is_refused_before_the_target_is_touched(tmp_path: Path, ticker) -> None:  # noqa: ANN001
    t, _ = ticker()
    for cmd in (["dump"], ["dump", "-R"], ["pre-dump"]):
        img = tmp_path / "img"
        one_line_error(run(*cmd, "-t", t.pid, "-D", img, "--json-stats", "/nonexistent/s.json"), 2,
                       "--json-stats", "/nonexistent")
        assert list(tmp_path.iterdir()) == []  # no image, no temporary directory
        assert_untouched(t)
    one_line_error(run("dump", "-t", t.pid, "-D", tmp_path / "img", "--json-stats", tmp_path), 2, "is a directory")
    assert_untouched(t)


def test_pidfile_to_a_bad_path_is_refused_before_anything_is_created(tmp_path: Path, sleeper) -> None:  # noqa: ANN001
    img = tmp_path / "img"
    res = run("dump", "-t", sleeper.pid, "-D", img)
    assert res.returncode == 0, res.stderr
    sleeper.wait(timeout=10)
    one_line_error(run("restore", "-D", img, "-d", "--pidfile", "/nonexistent/p"), 2, "--pidfile", "/nonexistent")
    assert not os.path.exists(f"/proc/{sleeper.pid}")  # nothing was restored
    # A good one is written whole (renamed into place), with the pid.
    pidfile = tmp_path / "p"
    res = run("restore", "-D", img, "-d", "--pidfile", pidfile)
    assert res.returncode == 0, res.stderr
    try:
        assert pidfile.read_text() == f"{sleeper.pid}\n"
        assert sorted(p.name for p in tmp_path.iterdir()) == ["img", "p"]
    finally:
        os.kill(sleeper.pid, signal.SIGKILL)


# --- item 9: exit codes and messages ----------------------------------------------------------------------


def test_bad_compression_level_is_exit_2_before_the_target_is_touched(tmp_path: Path, ticker) -> None:  # noqa: ANN001
    t, _ = ticker()
    for cmd in ("dump", "pre-dump"):
        one_line_error(run(cmd, "-t", t.pid, "-D", tmp_path / "img", "--compress", "99"), 2, "--compress 99", "22")
    assert list(tmp_path.iterdir()) == []
    assert_untouched(t)


def test_image_dir_that_is_a_file_is_exit_2(tmp_path: Path) -> None:
    f = tmp_path / "file"
    f.write_text("not an image\n")
    for cmd in (["restore", "-D", f], ["verify", f], ["show", f], ["merge", "-D", f, "-o", tmp_path / "out"]):
        one_line_error(run(*cmd), 2, str(f), "not a directory")


def test_not_allowed_is_a_sentence_with_a_hint(sleeper) -> None:  # noqa: ANN001
    uid, gid = _nobody()
    if shutil.which("setpriv") is None:
        pytest.skip("no setpriv")
    as_nobody = ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups"]
    probe = subprocess.run([*as_nobody, *CKPT, "--version"], capture_output=True, text=True, timeout=60, cwd=REPO)
    if probe.returncode != 0:
        pytest.skip(f"user nobody cannot run this ckpt: {probe.stderr.strip()}")
    res = subprocess.run([*as_nobody, *CKPT, "dump", "-t", str(sleeper.pid), "-D", "/tmp/never"], capture_output=True,
                         text=True, timeout=60, stdin=subprocess.DEVNULL, cwd=REPO)
    line = one_line_error(res, 2, str(sleeper.pid))
    assert "Errno" not in line and "hint: run ckpt as root" in res.stderr
    assert sleeper.poll() is None and not os.path.exists("/tmp/never")


def test_debug_is_accepted_anywhere_on_the_line(tmp_path: Path) -> None:
    simple = str(golden("simple", tmp_path / "simple"))
    for line in (["--debug", "verify", simple], ["verify", "--debug", simple], ["verify", simple, "--debug"]):
        res = run(*line)
        assert res.returncode == 0, (line, res.stderr)


# --- item 11: -t of a thread ----------------------------------------------------------------------------


def test_a_thread_id_is_refused_naming_its_process(tmp_path: Path, ticker) -> None:  # noqa: ANN001
    t, ready = ticker()
    tid = ready["thread"]
    for cmd in (["dump", "-R", "-D", tmp_path / "img"], ["pre-dump", "-D", tmp_path / "img"], ["watch", "--count", "1"],
                ["track", "--start"], ["track", "--stop"],
                ["migrate", "--to", "127.0.0.1:9", "--token-file", tmp_path / "token"]):
        res = run(*cmd, "-t", tid)
        one_line_error(res, 2, f"{tid} is a thread of process {t.pid}")
        assert f"use -t {t.pid}" in res.stderr
    assert list(tmp_path.iterdir()) == []
    assert_untouched(t)


# --- CRIU's names ----------------------------------------------------------------------------------------


def test_log_file_and_verbosity(tmp_path: Path, ticker) -> None:  # noqa: ANN001
    t, _ = ticker()
    log = tmp_path / "dump.log"
    res = run("dump", "-R", "-t", t.pid, "-D", tmp_path / "img", "-o", log)
    assert res.returncode == 0, res.stderr
    assert log.stat().st_mode & 0o777 == 0o600
    text = log.read_text()
    assert f"dump -R -t {t.pid}" in text and "phase: frozen" in text and "phase: committed" in text
    assert "exit 0" in text
    # -v3 on stderr: what it does, with seconds; -v0: not even a warning.
    res = run("-v3", "verify", tmp_path / "img")
    assert res.returncode == 0 and "exit 0 after" in res.stderr, res.stderr
    res = run("verify", "-vv", tmp_path / "img", "--log-file", tmp_path / "v.log")
    assert res.returncode == 0 and "image directory" in res.stderr  # -vv: debug
    assert "image directory" in (tmp_path / "v.log").read_text()
    assert run("verify", tmp_path / "img").stderr == ""  # the default, 2: warnings only
    # An error goes to the log too, with its exit code; stderr keeps its one line.
    res = run("show", "-o", tmp_path / "e.log", tmp_path / "nope")
    one_line_error(res, 2, "nope")
    assert "nope" in (tmp_path / "e.log").read_text() and "(exit 2)" in (tmp_path / "e.log").read_text()
    # merge keeps -o as its output; its log is --log-file.
    res = run("merge", "-D", tmp_path / "img", "-o", tmp_path / "merged", "--log-file", tmp_path / "m.log")
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "merged" / "inventory.img").exists() and "merge" in (tmp_path / "m.log").read_text()
    assert_untouched(t)


def test_file_locks_are_dumped_with_or_without_l(tmp_path: Path, ticker) -> None:  # noqa: ANN001
    """-l/--file-locks is CRIU's flag, accepted and not needed: a lock that can be restored exactly always is."""
    lock = tmp_path / "held.lock"
    t, _ = ticker("--lock", str(lock))
    for n, extra in enumerate(([], ["-l"], ["--file-locks"])):
        res = run("dump", *extra, "-R", "-t", t.pid, "-D", tmp_path / f"img{n}")
        assert res.returncode == 0, res.stderr
        assert "kind: FLOCK, type: 1" in run("show", tmp_path / f"img{n}").stdout
        assert_untouched(t)
    assert any(" FLOCK " in line and f" {t.pid} " in line for line in Path("/proc/locks").read_text().splitlines())


def test_ghost_limit_is_deleted_max(tmp_path: Path, py_target) -> None:  # noqa: ANN001
    script = tmp_path / "ghost.py"
    script.write_text("import os, sys, time\n"
                      f"fd = os.open({str(tmp_path / 'gone')!r}, os.O_RDWR | os.O_CREAT, 0o600)\n"
                      "os.write(fd, b'x' * 8192)\n"
                      f"os.unlink({str(tmp_path / 'gone')!r})\n"
                      "print('READY', flush=True)\n"
                      "time.sleep(1000)\n")
    t = py_target(str(script), stderr=subprocess.DEVNULL)
    t.expect("READY")
    res = run("dump", "-R", "--ghost-limit", "1K", "-t", t.pid, "-D", tmp_path / "img")
    one_line_error(res, 1, "deleted file", "8192 bytes")
    res = run("dump", "-R", "--ghost-limit", "16K", "-t", t.pid, "-D", tmp_path / "img")
    assert res.returncode == 0, res.stderr


def test_show_and_verify_take_d_and_a_numbered_store(tmp_path: Path) -> None:
    store = golden("chain", tmp_path / "store")  # numbered images 0 and 1
    res = run("verify", "-D", store)
    assert res.returncode == 0 and "OK (2 image(s) in the chain" in res.stdout and "/1:" in res.stdout, res.stdout
    res = run("show", "-D", store / "0", "--json")
    assert res.returncode == 0 and json.loads(res.stdout)
    one_line_error(run("show", "-D", store / "0", store / "1"), 2, "two images")


def _strict(text: str) -> dict:
    def refuse(name: str) -> None:
        raise AssertionError(f"{name} in --json-stats")

    return json.loads(text, parse_constant=refuse)


def test_json_stats_are_strict_json_with_one_shape_per_field(tmp_path: Path, ticker, sleeper) -> None:  # noqa: ANN001
    t, _ = ticker()
    out: dict[str, dict] = {}
    runs = {"pre-dump": ["pre-dump", "-t", t.pid, "-D", tmp_path / "pre"],
            "dump": ["dump", "-t", sleeper.pid, "-D", tmp_path / "img"],
            "restore": ["restore", "-D", tmp_path / "img", "-d"]}
    for name, cmd in runs.items():
        stats = tmp_path / f"{name}.json"
        res = run(*cmd, "--json-stats", stats)
        assert res.returncode == 0, res.stderr
        out[name] = _strict(stats.read_text())
        if name == "dump":
            sleeper.wait(timeout=10)  # ended by the dump: its pid free for the restore
    try:
        assert out["restore"]["pids"] == [sleeper.pid]
        kinds: dict[str, set[str]] = {}
        for stats in out.values():
            assert isinstance(stats["processes"], int) and isinstance(stats["peak_rss_bytes"], int)
            for k, v in stats.items():
                kinds.setdefault(k, set()).add(type(v).__name__)
        assert {k: v for k, v in kinds.items() if len(v) > 1} == {}
    finally:
        os.kill(sleeper.pid, signal.SIGKILL)


def test_stats_json_has_no_infinity() -> None:
    from ckpt.cli import stats_json
    from ckpt.migrate.source import MigrateStats, RoundReport

    stats = MigrateStats(pid=1, destination="x", predicted_downtime_ms=float("inf"),
                         rounds=[RoundReport(0, 1, 2, 0.1, 0.0, float("inf"), "go on")])
    data = _strict(stats_json(stats))
    assert data["predicted_downtime_ms"] is None and data["rounds"][0]["predicted_downtime_ms"] is None

