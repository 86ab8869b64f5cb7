"""Zombies in process groups other than their parent's: each keeps its group (and session) after a restore.

``py_zombie_groups.py``: the parent forks ``lead`` (a live child leading its own group), then three children
that end at once and stay unreaped: ``zjoin`` joined lead's group, ``zown`` led a group of its own, ``zsess``
led a session of its own.  Prints ``READY pid=PARENT lead=L zombies=A,B,C``.  On SIGUSR1 it checks each
zombie's group and session (/proc/PID/stat) against those it had, then reaps them; prints ``PASS`` or
``FAIL why; ...``.
"""

import os
import signal
import time


def ids(pid: int) -> tuple[str, int, int]:
    """(state, pgid, sid) from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        data = f.read()
    fields = data[data.rindex(b")") + 2:].split()
    return fields[0].decode(), int(fields[2]), int(fields[3])


def child(setup) -> int:  # noqa: ANN001
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        setup()
        os.close(w)  # set up: the parent may look now
        os._exit(0)
    os.close(w)
    os.read(r, 1)
    os.close(r)
    return pid


usr1 = []
signal.signal(signal.SIGUSR1, lambda *_: usr1.append(1))
signal.signal(signal.SIGCHLD, lambda *_: None)
lead = os.fork()
if lead == 0:
    os.setpgid(0, 0)
    while True:
        signal.pause()
while ids(lead)[1] != lead:
    time.sleep(0.001)
zombies = [child(lambda: os.setpgid(0, lead)), child(lambda: os.setpgid(0, 0)), child(os.setsid)]
for z in zombies:
    while ids(z)[0] != "Z":
        time.sleep(0.001)
want = {z: ids(z)[1:] for z in zombies}
me = os.getpid()
assert want[zombies[0]] == (lead, ids(me)[2]) and want[zombies[1]][0] == zombies[1] and want[zombies[2]] == (zombies[2],) * 2, want
print(f"READY pid={me} lead={lead} zombies={','.join(map(str, zombies))}", flush=True)
while not usr1:
    signal.pause()
why = []
for z in zombies:
    got = ids(z)
    if got[0] != "Z" or got[1:] != want[z]:
        why.append(f"zombie {z}: state {got[0]}, group/session {got[1:]}, not {want[z]}")
    os.waitpid(z, 0)
os.kill(lead, signal.SIGKILL)
os.waitpid(lead, 0)
print("FAIL " + "; ".join(why) if why else "PASS", flush=True)
