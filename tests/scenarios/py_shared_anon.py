"""Two processes sharing one page of anonymous memory (MAP_SHARED, inherited across fork).

Prints ``READY pid=PARENT child=CHILD``; both then sleep.  A dump of the tree
must refuse it (each process would get its own copy) and leave both running.
"""

import mmap
import os
import time

shared = mmap.mmap(-1, 4096)  # MAP_SHARED | MAP_ANONYMOUS
shared[:5] = b"hello"
child = os.fork()
if child == 0:
    while True:
        time.sleep(1)
print(f"READY pid={os.getpid()} child={child}", flush=True)
while True:
    time.sleep(1)
