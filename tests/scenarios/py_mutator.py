"""A fork-free Python target that keeps mutating its objects; its whole state follows from one counter.

Round g (g = 1, 2, ...) rewrites one slice of each structure with values derived
from (index, g), then appends g to a history list:

  table    dict of 50,000 entries int -> str, cut into 500 slices of 100 entries
  nums     list of 20,000 big ints, cut into 400 slices of 50
  blob     bytearray of 4 MiB, cut into 1024 pages of 4 KiB
  history  [1, 2, ..., g]

and holds 16 MiB of pseudo-random bytes it never writes (most of its memory:
what pre-dumps after the first never copy again).

Round g rewrites slice ``g % B`` of a structure of B slices, so element i of slice
b was last written by the newest round g' <= g with g' % B == b (round 0, the
initial fill, if there is none): its value is a function of the counter alone.

Prints ``READY pid=PID``, then ``GEN g=G`` every 25 rounds (a round every ~2 ms).
On SIGUSR1, between two rounds, it checks every element of every structure
against the counter, and that the counter is above the one of its previous
check, and prints ``CHECK PASS g=G checks=N`` or ``CHECK FAIL <what>``.
"""

import hashlib
import os
import random
import signal
import struct
import sys
import time

N_TABLE, S_TABLE = 50_000, 100
N_NUMS, S_NUMS = 20_000, 50
PAGE, N_PAGES = 4096, 1024
B_TABLE, B_NUMS = N_TABLE // S_TABLE, N_NUMS // S_NUMS
EVERY = 25
BALLAST = 16 << 20


def table_value(i: int, r: int) -> str:
    return f"{i}:{r}:{(i * 2654435761 + r * 40503) % 1000003}"


def nums_value(j: int, r: int) -> int:
    return (r << 70) + j * 1000003 + r * 7919


def page_value(p: int, r: int) -> bytes:
    return struct.pack("<QQ", p, r) * (PAGE // 16)


def last_round(g: int, b: int, nslices: int) -> int:
    """The newest round <= g that rewrote slice b of a structure of nslices slices (0: the initial fill)."""
    r = g - (g - b) % nslices
    return r if r > 0 else 0


def mutate(state: dict, g: int) -> None:
    table, nums, blob = state["table"], state["nums"], state["blob"]
    b = g % B_TABLE
    for i in range(b * S_TABLE, (b + 1) * S_TABLE):
        table[i] = table_value(i, g)
    b = g % B_NUMS
    for j in range(b * S_NUMS, (b + 1) * S_NUMS):
        nums[j] = nums_value(j, g)
    p = g % N_PAGES
    blob[p * PAGE:(p + 1) * PAGE] = page_value(p, g)
    state["history"].append(g)


def check(state: dict, g: int) -> str | None:
    """None when every element matches the counter g, else what is wrong."""
    table, nums, blob = state["table"], state["nums"], state["blob"]
    if len(table) != N_TABLE or len(nums) != N_NUMS or len(blob) != N_PAGES * PAGE:
        return f"sizes {len(table)} {len(nums)} {len(blob)}"
    for i in range(N_TABLE):
        want = table_value(i, last_round(g, i // S_TABLE, B_TABLE))
        if table.get(i) != want:
            return f"table[{i}] = {table.get(i)!r}, want {want!r} at g={g}"
    for j in range(N_NUMS):
        want = nums_value(j, last_round(g, j // S_NUMS, B_NUMS))
        if nums[j] != want:
            return f"nums[{j}] = {nums[j]}, want {want} at g={g}"
    for p in range(N_PAGES):
        r = last_round(g, p, N_PAGES)
        if blob[p * PAGE:(p + 1) * PAGE] != page_value(p, r):
            return f"blob page {p} = {bytes(blob[p * PAGE:p * PAGE + 16]).hex()}, want round {r} at g={g}"
    if state["history"] != list(range(1, g + 1)):
        return f"history of {len(state['history'])} rounds at g={g}"
    if hashlib.sha256(state["ballast"]).hexdigest() != state["ballast_sha"]:
        return "the ballast changed"
    return None


def main() -> int:
    state = {
        "table": {i: table_value(i, 0) for i in range(N_TABLE)},
        "nums": [nums_value(j, 0) for j in range(N_NUMS)],
        "blob": bytearray(b"".join(page_value(p, 0) for p in range(N_PAGES))),
        "history": [],
        "ballast": random.Random(4).randbytes(BALLAST),
    }
    state["ballast_sha"] = hashlib.sha256(state["ballast"]).hexdigest()
    asked = []
    signal.signal(signal.SIGUSR1, lambda *_: asked.append(1))
    print(f"READY pid={os.getpid()}", flush=True)
    g, checked_at, checks = 0, -1, 0
    while True:
        g += 1
        mutate(state, g)
        if g % EVERY == 0:
            print(f"GEN g={g}", flush=True)
        if asked:
            asked.clear()
            bad = check(state, g)
            if bad is None and g <= checked_at:
                bad = f"counter g={g} is not above the previous check's {checked_at}"
            checks += 1
            checked_at = g
            print(f"CHECK FAIL {bad}" if bad else f"CHECK PASS g={g} checks={checks}", flush=True)
        time.sleep(0.002)


if __name__ == "__main__":
    sys.exit(main())
