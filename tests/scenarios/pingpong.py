"""The child of the shared-memory scenarios (py_shared_anon, py_memfd, py_sysv) and the round trip
through the memory it shares with its parent.

Memory is reached through two functions: ``read(offset, n)`` and ``write(offset, data)``.
"""

import os
import signal
import time
from collections.abc import Callable

Read = Callable[[int, int], bytes]
Write = Callable[[int, bytes], None]


def _word(text: str) -> bytes:
    return text.encode().ljust(16, b"\0")


def fork_child(read: Read, write: Write, ping_at: int, pong_at: int, setup: Callable[[], None]) -> int:
    """Fork the child: it runs ``setup`` (its own writes), then answers each SIGUSR1 by reading
    ``ping-N`` (16 bytes at ``ping_at``) and writing ``pong-N`` at ``pong_at``.  Returns its pid once
    ``setup`` is done."""
    ready_r, ready_w = os.pipe()
    child = os.fork()
    if child == 0:
        os.close(ready_r)

        def pong(*_: object) -> None:
            n = read(ping_at, 16).rstrip(b"\0").decode().split("-")[1]
            write(pong_at, _word(f"pong-{n}"))

        signal.signal(signal.SIGUSR1, pong)
        setup()
        os.write(ready_w, b"x")
        os.close(ready_w)
        while True:
            time.sleep(1)
    os.close(ready_w)
    os.read(ready_r, 1)
    os.close(ready_r)
    return child


def ping(child: int, rounds: int, write: Write, ping_at: int, read_pong: Read, pong_at: int) -> bytes | None:
    """Write ``ping-ROUNDS``, signal the child and wait for its ``pong-ROUNDS`` (read with ``read_pong``):
    None, or the 16 bytes found there instead after 60 s (a hang guard: a loaded machine may not run the
    child for seconds)."""
    write(ping_at, _word(f"ping-{rounds}"))
    os.kill(child, signal.SIGUSR1)
    want = _word(f"pong-{rounds}")
    deadline = time.monotonic() + 60
    while read_pong(pong_at, 16) != want and time.monotonic() < deadline:
        time.sleep(0.005)
    got = read_pong(pong_at, 16)
    return None if got == want else got
