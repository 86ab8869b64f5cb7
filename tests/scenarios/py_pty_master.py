"""A Python target holding a pty master whose slave it opened and closed again (no process holds it).

Prints ``READY pid=PID pts=N`` and sleeps.
"""

import os
import time


def main() -> None:
    master, slave = os.openpty()
    name = os.ttyname(slave)
    os.close(slave)
    print(f"READY pid={os.getpid()} pts={name.rsplit('/', 1)[1]}", flush=True)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()
