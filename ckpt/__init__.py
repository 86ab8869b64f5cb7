"""ckpt: incremental checkpoint/restore of Linux processes, in pure Python.

The typed, documented API lives in :mod:`ckpt.api`; the command line in
:mod:`ckpt.cli` is a thin layer over it.
"""

__version__ = "0.3.0"
