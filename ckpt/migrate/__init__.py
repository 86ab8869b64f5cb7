"""Live migration (issue 5): ``ckpt migrate`` on the source, ``ckpt receive`` on the destination.

:mod:`ckpt.migrate.wire` is the connection between them: authenticated
msgpack frames over one TCP connection, and the transfer of image directories.
"""
