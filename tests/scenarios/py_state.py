"""A Python target for dump/restore: objects in memory, a loop that keeps printing, a self-check on SIGUSR1.

Builds a dict of 20,000 entries, a list of floats, a bytearray and a class
instance, remembers a digest of them, then prints "TICK n=N" every 10 ms on
stdout (a pipe to the test).  On SIGUSR1 it recomputes the digest and prints
"CHECK PASS n=N digest=D" (or "CHECK FAIL ..."): after a restore that proves
the interpreter, its heap and its handler survived, and that the loop went on.
"""

import hashlib
import os
import signal
import sys
import time


class Box:
    def __init__(self, name: str, items: list[int]) -> None:
        self.name, self.items = name, items


def digest(state: dict) -> str:
    h = hashlib.sha256()
    for k in sorted(state["table"]):
        h.update(f"{k}={state['table'][k]};".encode())
    h.update(repr(state["floats"]).encode())
    h.update(bytes(state["blob"]))
    h.update(state["box"].name.encode() + repr(state["box"].items).encode())
    return h.hexdigest()


def main() -> int:
    state = {
        "table": {f"key-{i}": i * i for i in range(20000)},
        "floats": [i / 7 for i in range(5000)],
        "blob": bytearray(os.urandom(1 << 20)),
        "box": Box("box", list(range(1000))),
    }
    want = digest(state)
    asked = []
    signal.signal(signal.SIGUSR1, lambda *_: asked.append(1))
    print(f"READY pid={os.getpid()} digest={want}", flush=True)
    n = 0
    while True:
        n += 1
        if asked:
            asked.clear()
            got = digest(state)
            print(f"CHECK PASS n={n} digest={got}" if got == want else f"CHECK FAIL digest {got} != {want}", flush=True)
        print(f"TICK n={n}", flush=True)
        time.sleep(0.01)


if __name__ == "__main__":
    sys.exit(main())
