"""The stateful controller: freezing a target's threads and injecting syscalls into them.

:mod:`.seize` holds the target stopped and puts it back exactly;
:mod:`.inject` runs single syscalls inside a stopped thread.  Both are context
managers, so every exit path (exception, Ctrl-C) releases the target.
"""
