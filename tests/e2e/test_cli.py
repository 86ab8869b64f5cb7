"""The ``ckpt`` command as a user runs it: exit codes, one-line errors, no tracebacks.

Each case runs the installed console script in a subprocess, so argument
parsing, the error-to-exit-code mapping and the output streams are all real.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
GOLDEN = REPO / "images"
CKPT = [sys.executable, "-m", "ckpt.cli"]


def golden(name: str, dst: Path) -> Path:
    """A private copy of the golden image ``name`` (0700/0600, ours): ckpt reads no image another user could
    change, and a checkout may be another user's or group-writable."""
    shutil.copytree(GOLDEN / name, dst)
    for d, _, names in os.walk(dst):
        os.chmod(d, 0o700)
        for n in names:
            os.chmod(os.path.join(d, n), 0o600)
    return dst


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CKPT, *args], capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL)


def assert_one_line_error(res: subprocess.CompletedProcess[str], code: int, *words: str) -> str:
    """A user-facing failure: the exit code, one ``ckpt:`` line (plus an optional hint), no traceback."""
    assert res.returncode == code, (res.returncode, res.stdout, res.stderr)
    assert "Traceback" not in res.stderr, res.stderr
    lines = [line for line in res.stderr.splitlines() if not line.startswith(("hint:", "usage:", "  "))]
    assert len(lines) == 1 and lines[0].startswith("ckpt: "), res.stderr
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


def test_version_and_help() -> None:
    res = run("--version")
    assert res.returncode == 0 and res.stdout.startswith("ckpt ")
    res = run("--help")
    assert res.returncode == 0 and "check" in res.stdout and "verify" in res.stdout


def test_no_command_and_unknown_option_are_usage_errors() -> None:
    assert_one_line_error(run(), 2, "required")
    assert_one_line_error(run("show"), 2, "DIR")
    assert_one_line_error(run("check", "--bogus"), 2, "--bogus")


def test_an_unknown_tolerance_is_a_usage_error_before_anything_is_touched(tmp_path: Path) -> None:
    """Checked before the target is looked at or the image directory made: pid 1 is never seized."""
    res = run("dump", "-t", "1", "-D", str(tmp_path / "img"), "--tolerate", "udp-queue,bogus")
    assert_one_line_error(res, 2, "--tolerate bogus: no such tolerance")
    assert "hint: one of: inotify-events, listen-queue" in res.stderr and not (tmp_path / "img").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="ckpt check seizes a child: needs root")
def test_check_reports_a_true_table() -> None:
    res = run("check")
    assert res.returncode == 0, res.stderr
    assert "ptrace + syscall injection  yes" in res.stdout
    assert "dump/restore: supported on this machine" in res.stdout
    data = json.loads(run("check", "--json").stdout)
    probes = {p["name"]: p for p in data["probes"]}
    assert data["can_dump_restore"] is True
    # The tracking choice follows from the probes, in DESIGN §2's order of preference.
    if probes["userfaultfd WP_ASYNC"]["ok"] and probes["PAGEMAP_SCAN"]["ok"]:
        assert data["tracking"] == "uffd-wp"
    elif probes["soft-dirty"]["ok"]:
        assert data["tracking"] == "soft-dirty"
    else:
        assert data["tracking"] == "hash"
    # Independent checks of what the table claims, read from the kernel another way.
    assert data["xstate_size"] >= 512 + 64  # legacy area + xsave header at least
    assert data["xcr0"] & 0b11 == 0b11  # x87 and SSE are always enabled on x86_64
    assert data["pid_max"] == int(Path("/proc/sys/kernel/pid_max").read_text())
    with open("/proc/self/maps") as f:
        assert probes["vDSO"]["ok"] == any("[vdso]" in line for line in f)
    # the back-ends and the listing follow from the probes, and a child was really dumped and restored
    assert data["backends"][0] == data["tracking"] and data["backends"][-1] == "hash"
    assert data["page_listing"] == ("pagemap-scan" if probes["PAGEMAP_SCAN"]["ok"] else "pagemap-read")
    assert data["selftest"]["ok"] and data["tracking"] in data["selftest"]["detail"]
    assert "dump + restore of a child: yes" in res.stdout


@pytest.mark.skipif(os.geteuid() != 0, reason="ckpt check seizes a child: needs root")
def test_check_without_pagemap_scan_and_uffd_wp() -> None:
    """The kernels before 6.7 (forced with the test aid): pages listed by pagemap reads, no uffd-wp,
    and still a real dump and restore."""
    env = dict(os.environ, CKPT_DISABLE="pagemap_scan,uffd_wp")
    res = subprocess.run([sys.executable, "-m", "ckpt.cli", "check", "--json"], capture_output=True, text=True,
                         timeout=120, env=env)
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    probes = {p["name"]: p for p in data["probes"]}
    assert not probes["PAGEMAP_SCAN"]["ok"] and "CKPT_DISABLE" in probes["PAGEMAP_SCAN"]["detail"]
    assert data["page_listing"] == "pagemap-read" and "uffd-wp" not in data["backends"]
    assert data["selftest"]["ok"] and data["can_dump_restore"]
    bad = subprocess.run([sys.executable, "-m", "ckpt.cli", "check"], capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, CKPT_DISABLE="pagemap_scan,bogus"))
    assert_one_line_error(bad, 2, "CKPT_DISABLE")


def test_show_and_verify_golden_images(tmp_path: Path) -> None:
    res = run("show", str(golden("simple", tmp_path / "simple")))
    assert res.returncode == 0, res.stderr
    assert "inventory.img" in res.stdout and "pages of" in res.stdout
    chain = golden("chain", tmp_path / "chain")
    data = json.loads(run("show", "--json", str(chain / "1")).stdout)
    assert data  # decodes to JSON
    res = run("verify", str(chain / "1"))
    assert res.returncode == 0 and "OK (2 image(s) in the chain" in res.stdout


def _flip_last_byte_of_first_record(d: Path) -> Path:
    path = d / "proc-1000.img" if (d / "proc-1000.img").exists() else sorted(d.glob("proc-*.img"))[0]
    data = bytearray(path.read_bytes())
    data[16] ^= 0x01
    path.write_bytes(bytes(data))
    return path


def _truncate_pages(d: Path) -> Path:
    path = sorted(d.glob("pages-*.img"))[0]
    path.write_bytes(path.read_bytes()[:-7])
    return path


def _wrong_magic(d: Path) -> Path:
    path = sorted(d.glob("mm-*.img"))[0]
    data = bytearray(path.read_bytes())
    data[0:4] = b"XXXX"
    path.write_bytes(bytes(data))
    return path


def _future_version(d: Path) -> Path:
    path = sorted(d.glob("core-*.img"))[0]
    data = bytearray(path.read_bytes())
    data[8:12] = struct.pack("<I", 999)
    path.write_bytes(bytes(data))
    return path


CORRUPTIONS: dict[str, Callable[[Path], Path]] = {
    "flipped byte": _flip_last_byte_of_first_record,
    "truncated page file": _truncate_pages,
    "wrong magic": _wrong_magic,
    "future format version": _future_version,
}


@pytest.mark.parametrize("how", sorted(CORRUPTIONS))
@pytest.mark.parametrize("command", ["verify", "show"])
def test_corrupt_image_is_one_line_exit_2(tmp_path: Path, how: str, command: str) -> None:
    d = golden("simple", tmp_path / "img")
    damaged = CORRUPTIONS[how](d)
    res = run(command, str(d))
    if command == "verify":
        assert res.returncode == 2 and "Traceback" not in res.stderr
        assert any(damaged.name in line for line in res.stderr.splitlines()), res.stderr
    else:
        # show stops at the first damaged file it meets; which one that is depends on order.
        assert_one_line_error(res, 2)


def test_not_an_image_and_missing_dir(tmp_path: Path) -> None:
    assert_one_line_error(run("verify", str(tmp_path)), 2, str(tmp_path), "not a ckpt image")
    assert_one_line_error(run("show", str(tmp_path / "nope")), 2, "nope")


def test_broken_chains(tmp_path: Path) -> None:
    chain = golden("chain", tmp_path / "chain")
    # Missing parent.
    shutil.move(chain / "0", tmp_path / "away")
    assert_one_line_error(run("verify", str(chain / "1")), 2, "parent")
    # A different image where the parent should be (wrong id).
    golden("simple", chain / "0")
    assert_one_line_error(run("verify", str(chain / "1")), 2, "parent")


COUNTER = "import itertools, sys, time\nfor n in itertools.count():\n    print(n, flush=True)\n    time.sleep(0.01)\n"


@pytest.mark.skipif(os.geteuid() != 0, reason="dump/restore need root")
def test_dump_restore_with_inherit_fd(tmp_path: Path) -> None:
    """A process whose stdout is a pipe to us: CRIU's --inherit-fd gives the restored one a new pipe."""
    proc = subprocess.Popen([sys.executable, "-c", COUNTER], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, close_fds=True)
    r2 = w2 = -1
    try:
        assert proc.stdout is not None
        first = int(proc.stdout.readline())
        pipe = os.readlink(f"/proc/{proc.pid}/fd/1")
        assert pipe.startswith("pipe:[")
        images = tmp_path / "img"
        res = run("dump", "-t", str(proc.pid), "-D", str(images))
        assert res.returncode == 0, res.stderr
        proc.wait()
        last = max(int(x) for x in proc.stdout.read().split()) if proc.stdout else first

        # A bad spec and an unknown resource are one-line usage errors.
        assert_one_line_error(run("restore", "-D", str(images), "-d", "--inherit-fd", "1:2"), 2, "fd[N]:RES")
        assert_one_line_error(run("restore", "-D", str(images), "-d", "--inherit-fd", "fd[1]:pipe:[1]"), 2,
                              "no fd", pipe)

        r2, w2 = os.pipe()
        res = subprocess.run([*CKPT, "restore", "-D", str(images), "-d", "--inherit-fd", f"fd[{w2}]:{pipe}"],
                             capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL, pass_fds=(w2,))
        assert res.returncode == 0, res.stderr
        os.close(w2)
        w2 = -1
        with os.fdopen(r2, "rb", buffering=0) as out:
            r2 = -1
            line = b""
            while not line.endswith(b"\n"):
                line += out.read(1)
            # It carries on counting where it stopped, into the pipe we handed over.
            assert int(line) == last + 1
    finally:
        for fd in (r2, w2):
            if fd >= 0:
                os.close(fd)
        try:
            os.kill(proc.pid, 9)
        except ProcessLookupError:
            pass
        proc.wait()


@pytest.mark.skipif(os.geteuid() != 0, reason="dump/restore need root")
def test_foreground_restore_waits_for_its_process_even_when_started_with_sigchld_ignored(tmp_path: Path) -> None:
    """An ignored SIGCHLD is inherited across exec; ckpt takes the default back, or the kernel would reap
    the restored process before ckpt could wait for its exit status."""
    sleeper = subprocess.Popen(["sleep", "4"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, close_fds=True)
    res = run("dump", "-t", str(sleeper.pid), "-D", str(tmp_path / "img"))
    assert res.returncode == 0, res.stderr
    sleeper.wait(timeout=10)  # ended by the dump
    res = subprocess.run([*CKPT, "restore", "-D", str(tmp_path / "img")], capture_output=True, text=True,
                         timeout=60, stdin=subprocess.DEVNULL,
                         preexec_fn=lambda: signal.signal(signal.SIGCHLD, signal.SIG_IGN))
    assert res.returncode == 0, res.stderr  # the restored sleep's own status


def test_restore_finding_a_corrupt_page_chunk_exits_2_and_leaves_no_process(tmp_path: Path) -> None:
    from ckpt.control.seize import alive

    """A page chunk whose checksum fails is found only while memory is filled (the validator does not read
    page data): still bad input, exit 2 naming the file, as `verify` says it, and nothing is left running."""
    sleeper = subprocess.Popen(["sleep", "60"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, close_fds=True, start_new_session=True)
    img = tmp_path / "img"
    res = run("dump", "-t", str(sleeper.pid), "-D", str(img))
    assert res.returncode == 0, res.stderr
    sleeper.wait(timeout=60)
    pages = next(img.glob("pages-*.img"))
    data = bytearray(pages.read_bytes())
    data[-100] ^= 0xFF
    pages.write_bytes(bytes(data))
    assert run("verify", str(img)).returncode == 2
    res = run("restore", "-D", str(img), "-d")
    assert_one_line_error(res, 2, pages.name)
    assert not alive(sleeper.pid)


def test_show_into_a_pipe_closed_early_ends_quietly() -> None:
    """`ckpt show DIR | head -1`: no traceback; the exit status a program killed by that SIGPIPE would have."""
    for _ in range(3):
        r, w = os.pipe()
        p = subprocess.Popen([*CKPT, "show", str(GOLDEN / "chain" / "1")], cwd=REPO, stdout=w,
                             stderr=subprocess.PIPE, text=True)
        os.close(w)
        os.close(r)  # the reader is gone before the first line
        _, err = p.communicate(timeout=60)
        assert err == "" and p.returncode == 128 + signal.SIGPIPE, (p.returncode, err)
