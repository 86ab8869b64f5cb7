"""A target holding a secret in memory, for images encrypted at rest (tests/e2e/test_encrypted_images.py).

``py_secret.py DIR``: reads ``DIR/seed``, keeps ``b"ckpt-at-rest-secret:" + seed`` (repeated) and 12 MiB of
random bytes (three incompressible page chunks), writes ``DIR/ready`` and waits.  On SIGUSR1 it checks
both against what it recorded at the start and writes ``ok`` (or what differs) to ``DIR/result``.
"""

import hashlib
import os
import signal
import sys


def main() -> int:
    where = sys.argv[1]
    with open(os.path.join(where, "seed"), "rb") as f:
        seed = f.read().strip()
    secret = bytearray(b"ckpt-at-rest-secret:" + seed) * 64
    noise = bytearray(os.urandom(12 << 20))
    want = hashlib.sha256(secret).hexdigest(), hashlib.sha256(noise).hexdigest()
    asked = []
    signal.signal(signal.SIGUSR1, lambda *_: asked.append(1))
    with open(os.path.join(where, "ready"), "w") as f:
        f.write(str(os.getpid()))
    while True:
        signal.pause()
        if asked:
            got = hashlib.sha256(secret).hexdigest(), hashlib.sha256(noise).hexdigest()
            verdict = "ok" if got == want else f"differs: {got} != {want}"
            tmp = os.path.join(where, "result.tmp")
            with open(tmp, "w") as f:
                f.write(verdict)
            os.rename(tmp, os.path.join(where, "result"))
            asked.clear()


if __name__ == "__main__":
    sys.exit(main())
