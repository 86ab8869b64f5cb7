"""A Python target that reads the clocks all the time, for restores and migrations between kernels.

Two threads read time.time(), time.monotonic(), time.clock_gettime(CLOCK_BOOTTIME) and
time.time_ns() in a loop (CPython calls clock_gettime, which glibc answers from the vDSO) and
fail if a monotonic clock goes back or time() is not between two time_ns() reads; the main
thread keeps a heap state (a dict of 20,000 entries, floats, a 256 KiB bytearray) whose CRC-32 it
remembers.  Only modules that choose no code by CPUID at run time (no hashlib, ssl or random:
OpenSSL's SHA and AES use SHA-NI and VPCLMULQDQ where the CPU has them), so that the process may
move to a CPU that lacks them.  Prints "READY pid=P crc=C", then on each SIGUSR1 "CHECK PASS
n=N crc=C reads=R" (every thread read the clocks since the last check) or "CHECK FAIL why".
"""

import os
import signal
import sys
import threading
import time
import zlib

failures: list[str] = []
reads = [0, 0]


def reader(i: int) -> None:
    """time.time() is read between two time.time_ns() reads and must lie between them (1 µs of float
    rounding); a dump may freeze the thread between two reads, so only three such samples in a row fail."""
    last_mono = last_boot = 0.0
    odd = 0
    while True:
        mono, boot = time.monotonic(), time.clock_gettime(time.CLOCK_BOOTTIME)
        before, wall, after = time.time_ns(), time.time(), time.time_ns()
        if mono < last_mono or boot < last_boot:
            failures.append(f"thread {i}: a monotonic clock went back ({mono} < {last_mono} or {boot} < {last_boot})")
        odd = 0 if before - 1000 <= wall * 1e9 <= after + 1000 else odd + 1
        if odd == 3:
            failures.append(f"thread {i}: time() {wall} not between time_ns() reads {before} and {after}, 3 times")
        last_mono, last_boot = mono, boot
        reads[i] += 1
        if reads[i] % 64 == 0:
            time.sleep(0.002)


def crc(state: dict) -> int:
    c = zlib.crc32(repr(sorted(state["table"].items())).encode())
    c = zlib.crc32(repr(state["floats"]).encode(), c)
    return zlib.crc32(bytes(state["blob"]), c)


def main() -> int:
    state = {"table": {f"key-{i}": i * i for i in range(20000)}, "floats": [i / 7 for i in range(5000)],
             "blob": bytearray((i * 131 + 7) % 251 for i in range(256 << 10))}
    want = crc(state)
    asked: list[int] = []
    signal.signal(signal.SIGUSR1, lambda *_: asked.append(1))
    for i in range(2):
        threading.Thread(target=reader, args=(i,), daemon=True).start()
    print(f"READY pid={os.getpid()} crc={want}", flush=True)
    seen = [0, 0]
    n = 0
    while True:
        while not asked:
            time.sleep(0.02)
        asked.clear()
        n += 1
        deadline = time.monotonic() + 60
        while any(r <= s for r, s in zip(reads, seen)) and time.monotonic() < deadline:
            time.sleep(0.01)
        why = list(failures[:1])
        if any(r <= s for r, s in zip(reads, seen)):
            why.append("a reader made no read in 60 s")
        seen = list(reads)
        got = crc(state)
        if got != want:
            why.append(f"crc {got} != {want}")
        print(f"CHECK FAIL {'; '.join(why)}" if why else f"CHECK PASS n={n} crc={got} reads={sum(seen)}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
