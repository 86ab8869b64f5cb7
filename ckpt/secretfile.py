"""Files that hold a secret, or what checks one: read only once no other user could have read or changed them.

The migration token and an image signing key are worth as much as root on every
host that trusts them (a receiver restores whatever a token holder sends; a
restore runs whatever a key signed), so their files get the care of an SSH
private key: a regular file, of root or of the user running ckpt, that no other
user may write — nor read, for a secret — and of bounded size.
"""

from __future__ import annotations

import os
import stat

from .errors import UsageError

__all__ = ["read_secret_file"]


def read_secret_file(path: str | os.PathLike[str], what: str, *, max_size: int, secret: bool = True,
                     missing_hint: str | None = None) -> bytes:
    """The bytes of ``path`` (``what`` names it in messages: "token file"); UsageError saying what is wrong.

    ``secret``: group and others may not read it either (else: not write it).
    """
    where = os.fspath(path)
    try:
        fd = os.open(where, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY)
    except FileNotFoundError:
        raise UsageError(f"{where}: {what} does not exist", hint=missing_hint) from None
    except OSError as exc:
        raise UsageError(f"{where}: cannot open the {what}: {exc.strerror or exc}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UsageError(f"{where}: {what} is not a regular file")
        mode = stat.S_IMODE(st.st_mode)
        if secret and mode & 0o077:
            raise UsageError(f"{where}: {what} is accessible by group or others (mode {mode:04o})",
                             hint=f"chmod 600 {where}")
        if mode & 0o022:
            raise UsageError(f"{where}: {what} is writable by group or others (mode {mode:04o})",
                             hint=f"chmod go-w {where}")
        if st.st_uid not in (os.geteuid(), 0):
            raise UsageError(f"{where}: {what} belongs to uid {st.st_uid}, not to this user or root")
        data = os.read(fd, max_size + 1)
    except OSError as exc:
        raise UsageError(f"{where}: cannot read the {what}: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    if len(data) > max_size:
        raise UsageError(f"{where}: too large to be a {what} (over {max_size} bytes)")
    return data
