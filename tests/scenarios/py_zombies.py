"""A parent with three unreaped children that ended three ways, and SIGCHLD caught but blocked.

``py_zombies.py``: forks ``zexit`` (exit status 3), ``zterm`` (killed by its
own SIGTERM, default action) and ``zkill`` (SIGKILL), each named through
/proc/self/comm, waits until all three are zombies and takes their SIGCHLDs
out of its queue.  Prints ``READY pid=PARENT zombies=A,B,C``.  On SIGUSR1 it
checks that no SIGCHLD is pending (none of its children ended since), that
each zombie is still its unreaped child with its name, then reaps each and
checks its wait status; prints ``PASS zombies`` or ``FAIL zombies why; ...``.
"""

import os
import signal
import time

ENDS = (("zexit", lambda: os._exit(3)),
        ("zterm", lambda: os.kill(os.getpid(), signal.SIGTERM)),
        ("zkill", lambda: os.kill(os.getpid(), signal.SIGKILL)))


def stat_of(pid: int) -> tuple[str, str, int]:
    """(comm, state, ppid) from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        data = f.read()
    comm = data[data.index(b"(") + 1:data.rindex(b")")].decode()
    fields = data[data.rindex(b")") + 2:].split()
    return comm, fields[0].decode(), int(fields[1])


signal.signal(signal.SIGCHLD, lambda *_: None)  # caught: a pending one is not dropped by a restore's SIG_DFL
signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGCHLD])
zombies = []
for name, end in ENDS:
    pid = os.fork()
    if pid == 0:
        with open("/proc/self/comm", "w") as f:
            f.write(name)
        end()
        time.sleep(10)
        os._exit(99)
    zombies.append(pid)
deadline = time.monotonic() + 10
while any(stat_of(z)[1] != "Z" for z in zombies) and time.monotonic() < deadline:
    time.sleep(0.01)
while signal.sigtimedwait([signal.SIGCHLD], 0) is not None:
    pass


def check(*_: object) -> None:
    why = []
    if signal.SIGCHLD in signal.sigpending():
        why.append("a SIGCHLD is pending, no child ended")
    for (name, _), pid in zip(ENDS, zombies):
        comm, state, ppid = stat_of(pid)
        if (comm, state, ppid) != (name, "Z", os.getpid()):
            why.append(f"{pid}: {comm} state {state} ppid {ppid}, want {name} Z {os.getpid()}")
    statuses = [os.waitpid(pid, os.WNOHANG)[1] for pid in zombies]
    want = [(True, 3), (False, signal.SIGTERM), (False, signal.SIGKILL)]
    got = [(os.WIFEXITED(s), os.WEXITSTATUS(s) if os.WIFEXITED(s) else os.WTERMSIG(s)) for s in statuses]
    if got != want or any(os.WCOREDUMP(s) for s in statuses):
        why.append(f"wait statuses {[hex(s) for s in statuses]}, want exit 3, SIGTERM, SIGKILL (no core)")
    print("PASS zombies" if not why else "FAIL zombies " + "; ".join(why), flush=True)


signal.signal(signal.SIGUSR1, check)
print(f"READY pid={os.getpid()} zombies={','.join(map(str, zombies))}", flush=True)
while True:
    time.sleep(1)
