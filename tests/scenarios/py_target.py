"""A Python target: ``read N EXPECTED`` reads N bytes from stdin with os.read,
``stdin N EXPECTED`` with sys.stdin.buffer.read, ``spin`` loops forever.

Prints ``READY pid=PID`` first, then PASS when the bytes read equal EXPECTED
(and FAIL with the reason otherwise).
"""

import os
import sys


def main() -> int:
    mode = sys.argv[1]
    print(f"READY pid={os.getpid()}", flush=True)
    if mode == "spin":
        n = 0
        while True:
            n += 1
    want, expected = int(sys.argv[2]), sys.argv[3].encode()
    try:
        if mode == "read":
            data = b""
            while len(data) < want:
                chunk = os.read(0, want - len(data))
                if not chunk:
                    break
                data += chunk
        else:
            data = sys.stdin.buffer.read(want)
    except OSError as exc:
        print(f"FAIL {exc!r}", flush=True)
        return 1
    print("PASS" if data == expected else f"FAIL got {data!r}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
