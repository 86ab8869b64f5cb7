"""Stateless ctypes bindings to the Linux kernel, named as the kernel names things.

No policy lives here: every function does one kernel call (or one /proc read)
and raises ``OSError(errno, strerror, "<call>")`` on failure.  Layers above
translate those into :mod:`ckpt.errors`.
"""
