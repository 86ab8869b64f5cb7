"""sqlite3: one process in a write transaction, a second writer kept out until it commits.

usage: py_sqlite.py DB

The first process creates DB (a table ``t``), begins a write transaction
(``BEGIN IMMEDIATE``: sqlite's RESERVED lock, a POSIX write lock on one byte
of the file, beside the SHARED read lock) and inserts ``first``.  It then
starts a second writer, a fresh interpreter (a connection must not cross a
fork), which tells it (a byte on a pipe) that it is about to ``BEGIN IMMEDIATE``
with a one-hour busy timeout: sqlite's busy handler sleeps and tries again,
so it stays out while the first holds its lock.  The first prints
``READY pids=FIRST,SECOND``.  On SIGUSR1 it checks that the second is still
waiting (alive, its row absent), commits, waits for the second to finish, and
prints ``PASS`` if the table holds ``first`` then ``second``, else ``FAIL why``.
"""

import os
import signal
import sqlite3
import subprocess
import sys


def writer(db: str, told: int) -> None:
    conn = sqlite3.connect(db, timeout=3600, isolation_level=None)
    os.write(told, b"T")
    os.close(told)
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("INSERT INTO t VALUES ('second')")
    conn.execute("COMMIT")
    conn.close()


def main() -> None:
    db = sys.argv[1]
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("CREATE TABLE t (who TEXT)")
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("INSERT INTO t VALUES ('first')")
    r, w = os.pipe()
    second = subprocess.Popen([sys.executable, __file__, "--writer", db, str(w)], pass_fds=(w,),
                              stdin=subprocess.DEVNULL)
    os.close(w)
    started = os.read(r, 1) == b"T"
    os.close(r)
    if not started:
        print("FAIL setup: the second writer did not start", flush=True)
        sys.exit(1)
    print(f"READY pids={os.getpid()},{second.pid}", flush=True)
    signal.sigwait({signal.SIGUSR1})
    why = []
    if second.poll() is not None:
        why.append(f"the second writer ended before the first committed (status {second.returncode})")
    rows = [w for (w,) in conn.execute("SELECT who FROM t")]
    if rows != ["first"]:
        why.append(f"before the commit the table holds {rows}")
    conn.execute("COMMIT")
    if second.wait() != 0:
        why.append(f"the second writer failed (status {second.returncode})")
    rows = [w for (w,) in conn.execute("SELECT who FROM t")]
    if rows != ["first", "second"]:
        why.append(f"after both commits the table holds {rows}")
    print(f"FAIL {'; '.join(why)}" if why else "PASS", flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "--writer":
        writer(sys.argv[2], int(sys.argv[3]))
    else:
        main()
