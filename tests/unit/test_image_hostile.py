"""Hostile image files: every crafted bad image is refused by ``verify``, ``show`` and ``restore`` alike.

The corpus in ``images/bad/`` (written by ``tests/unit/make_bad_images.py``)
holds one defect per case.  Each command must exit with 2 and print one line,
``ckpt: FILE: problem``, naming the damaged file (a ``hint:`` line may follow:
ckpt.image.dirs refuses a symbolic link in an image directory with one); a restore must create no
process.  The corpus goes through the CLI's entry point (``ckpt.cli.main``)
in one subprocess per command (150 interpreters, one per command and case,
took 3 minutes on a loaded 2-core machine); the cases that hung or ate the
machine before (a FIFO, /dev/zero, millions of ranges) also run as the
``ckpt`` console script, one process each, with peak memory measured.  Every
subprocess has its address space capped, so a reader that allocates what an
image claims fails instead of taking the machine.  Last, a real process's
image with an overlapping pagemap must not be restored.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_bad_images as corpus  # noqa: E402

CKPT = Path(sys.executable).with_name("ckpt")
#: Address-space cap of each command: a reader allocating what a bad image claims dies of it (exit 1).
AS_LIMIT = 2 << 30
#: Peak RSS allowed for a command on an image that claims millions of anything (issue 14: ≤ 100 MB).
RSS_LIMIT = 100 << 20


def _limit_address_space() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (AS_LIMIT, AS_LIMIT))


#: Runs one command as its grandchild and prints its exit status and ru_maxrss (KiB).  Why a small process
#: in between: the kernel folds the hiwater RSS of the memory a process had before exec (a copy of its
#: parent's: a pytest of 150 MB late in a run) into its ru_maxrss, so a child of pytest never reports less.
#: A child of this small interpreter starts from its few MB instead.
_SPAWNER = """
import os, resource, sys
pid = os.fork()
if pid == 0:
    resource.setrlimit(resource.RLIMIT_AS, (int(sys.argv[1]), int(sys.argv[1])))
    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)  # stdout is this report's
    os.execv(sys.argv[2], sys.argv[2:])
_, status, usage = os.wait4(pid, 0)
print(os.waitstatus_to_exitcode(status), usage.ru_maxrss, flush=True)
"""


def run_ckpt(*args: str, timeout: float = 120) -> tuple[int, str, int]:
    """(exit code, stderr, peak RSS in bytes) of one ``ckpt`` command (its own, measured with wait4).

    Its address space is capped at :data:`AS_LIMIT`: a reader allocating what
    a bad image claims dies of it (exit 1).
    """
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen([sys.executable, "-S", "-c", _SPAWNER, str(AS_LIMIT), str(CKPT), *args],
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err, text=True,
                                start_new_session=True)
        try:
            out, _ = proc.communicate(timeout=timeout)  # a FIFO read before the fix blocks for ever
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise AssertionError(f"ckpt {' '.join(args)}: still running after {timeout} s") from None
        code, maxrss_kib = (int(x) for x in out.split())
        err.seek(0)
        return code, err.read().decode(errors="replace"), maxrss_kib * 1024


def _commands(image: Path) -> dict[str, list[str]]:
    return {"verify": ["verify", str(image)], "show": ["show", str(image)], "restore": ["restore", "-D", str(image)]}


def _copy(case: corpus.Case, root: Path) -> Path:
    src = corpus.CORPUS / case.name
    assert src.is_dir(), f"{src} missing: run tests/unit/make_bad_images.py and commit images/bad"
    d = root / case.name
    shutil.copytree(src, d, symlinks=True)
    if case.runtime is not None:
        corpus.complete(case, d)
    return d


#: Runs ``ckpt.cli.main`` once per argv read as JSON from stdin; prints [[exit code, stderr], ...].
_BATCH = """
import contextlib, io, json, sys
from ckpt.cli import main
out = []
for argv in json.load(sys.stdin):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(argv)
        except SystemExit as exc:
            code = exc.code
    out.append([code, err.getvalue()])
json.dump(out, sys.stdout)
"""


@pytest.fixture(scope="module")
def corpus_results(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], tuple[int, str, Path]]:
    """(case, command) -> (exit code, stderr, case directory) for every case of the corpus."""
    root = tmp_path_factory.mktemp("bad")
    dirs = {case.name: _copy(case, root) for case in corpus.CASES}
    pid_existed = os.path.exists(f"/proc/{corpus.PID}")

    def batch(command: str) -> list[list]:
        argvs = [_commands(dirs[c.name] / c.image)[command] for c in corpus.CASES]
        res = subprocess.run([sys.executable, "-c", _BATCH], input=json.dumps(argvs), capture_output=True, text=True,
                             timeout=300, preexec_fn=_limit_address_space)
        assert res.returncode == 0, res.stderr[-2000:]
        return json.loads(res.stdout)

    commands = ("verify", "show", "restore")
    with ThreadPoolExecutor(len(commands)) as pool:
        results = dict(zip(commands, pool.map(batch, commands)))
    if not pid_existed:
        assert not os.path.exists(f"/proc/{corpus.PID}"), "a refused restore created a process"
    return {(case.name, command): (*results[command][i], dirs[case.name])
            for command in commands for i, case in enumerate(corpus.CASES)}


def test_corpus_is_committed() -> None:
    """Every case of the generator is in images/bad, and nothing else is."""
    assert sorted(p.name for p in corpus.CORPUS.iterdir()) == sorted(c.name for c in corpus.CASES)


@pytest.mark.parametrize("case", corpus.CASES, ids=lambda c: c.name)
def test_bad_image_is_refused(case: corpus.Case, corpus_results: dict) -> None:
    for command in ("verify", "show", "restore"):
        code, stderr, d = corpus_results[case.name, command]
        _one_line(command, code, stderr, d / case.bad, case.words)


def _one_line(command: str, code: int, stderr: str, bad: Path, words: tuple[str, ...]) -> None:
    """Exit 2 and one ``ckpt: FILE: problem`` line (a ``hint:`` line may follow it, as for every user error)."""
    lines = stderr.splitlines()
    if len(lines) == 2 and lines[1].startswith("hint: "):
        lines.pop()
    assert code == 2 and len(lines) == 1, (command, code, stderr)
    assert lines[0].startswith(f"ckpt: {bad}: "), (command, lines[0])
    for word in words:
        assert word in lines[0], (command, word, lines[0])


@pytest.mark.parametrize("name", ["pagemap-2m-ranges", "inventory-1m-processes", "inventory-devzero", "core-fifo"])
def test_console_script_refuses_in_bounded_memory(name: str, tmp_path: Path) -> None:
    """The ``ckpt`` script itself, one process per command: exit 2, one line, and a peak RSS < 100 MB.

    Before the fix: 976 MB for ``verify`` of the 2 M ranges, 1.9 GB for ``show``
    of the 1.1 M processes, MemoryError after reading /dev/zero for 5 GB, a FIFO
    read for ever.
    """
    case = next(c for c in corpus.CASES if c.name == name)
    d = _copy(case, tmp_path)
    for command, argv in _commands(d / case.image).items():
        code, stderr, peak = run_ckpt(*argv)
        _one_line(command, code, stderr, d / case.bad, case.words)
        assert peak < RSS_LIMIT, f"ckpt {command}: peak RSS {peak >> 20} MiB"


# -- a real process -------------------------------------------------------------------------------


@pytest.mark.skipif(os.geteuid() != 0, reason="dump and restore need root")
def test_restore_refuses_an_overlapping_pagemap_of_a_real_image(tmp_path: Path) -> None:
    """Before the fix ``verify`` refused this image but ``restore`` exited 0, the process crashed."""
    target = subprocess.Popen(["sleep", "1000"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        img = tmp_path / "img"
        code, stderr, _ = run_ckpt("dump", "-t", str(target.pid), "-D", str(img))
        assert code == 0, stderr
        target.wait(timeout=30)  # ended by the dump; reaped, so the pid is free
        pagemap = f"pagemap-{target.pid}.img"

        def overlap(head, rows) -> None:  # the second range starts inside the first
            assert len(rows) >= 2 and rows[0][1] >= 1
            rows[1][0] = rows[0][0]

        corpus.edit_pagemap(overlap, pid=target.pid)(img)
        code, stderr, _ = run_ckpt("restore", "-D", str(img), "-d")
        lines = stderr.splitlines()
        assert code == 2 and len(lines) == 1, (code, stderr)
        assert lines[0].startswith(f"ckpt: {img / pagemap}: range 1 ") and "overlaps" in lines[0], lines[0]
        assert not os.path.exists(f"/proc/{target.pid}"), "the refused restore created the process"
    finally:
        if target.poll() is None:
            target.kill()
            target.wait()
        elif _is_sleep(target.pid):  # a restore that went ahead (the bug): end what it made
            os.kill(target.pid, signal.SIGKILL)


def _is_sleep(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip() == "sleep"
    except OSError:
        return False


def test_a_valid_image_of_a_million_ranges_stays_within_100_mb(tmp_path: Path) -> None:
    """At the bound (~1 M ranges in one pagemap) the commands still fit in 100 MB (show streams its output)."""
    from ckpt.image.pb import mm_pb2

    d = tmp_path / "img"
    corpus.write_base(d)
    n, base = 1_000_000, 0x100000000
    corpus.edit_records(d, f"mm-{corpus.PID}.img", lambda m: m.insert(4, mm_pb2.Vma(  # after the guard VMA
        start=base, end=base + 2 * n * 4096, prot=3, flags=0x22, kind=mm_pb2.Vma.ANON_PRIVATE)))

    def zero_pages(messages: list) -> None:  # a ZERO page every other page of the new VMA
        t = messages[0].ranges
        stop = t.vaddr.pop()  # keep the stack's range last: sorted
        rest = [t.nr_pages.pop(), t.state.pop(), t.data_offset.pop()]
        t.vaddr.extend(range(base, base + 2 * n * 4096, 2 * 4096))
        t.nr_pages.extend([1] * n)
        t.state.extend([3] * n)
        t.data_offset.extend([0] * n)
        t.vaddr.append(stop)
        t.nr_pages.append(rest[0]), t.state.append(rest[1]), t.data_offset.append(rest[2])
        messages[0].pages_zero += n

    corpus.edit_records(d, f"pagemap-{corpus.PID}.img", zero_pages)
    for command, argv in _commands(d).items():
        code, stderr, peak = run_ckpt(*argv)
        assert code == (1 if command == "restore" else 0), (command, stderr)  # restore: the exe is not there
        assert peak < RSS_LIMIT, f"ckpt {command}: peak RSS {peak >> 20} MiB"
