"""Image directories no other user can tamper with: ssh's StrictModes, applied to images.

An image is what ckpt puts back into a process: its code, its memory, its open
files.  Its checksums are unkeyed, so whoever can write the directory an image
lives in (or any directory above it) can swap in a crafted one and have root
restore it.  ckpt therefore refuses (exit 2, with a hint) to write an image
into, or read one from, a directory that

* is owned by a user other than root and the one running ckpt, or
* can be written by its group or by others,

checking the directory named on the command line and every directory on the
way to it.  A sticky directory owned by root or by us (``/tmp``) is fine on the
way: nobody else can rename or remove what we create in it, and a name someone
else took there is refused as their directory.  Symbolic links on the way are
followed only when root or we own them (another user's link in ``/tmp`` could
point anywhere), and the last component is never followed: ``-D /tmp/img``
where ``/tmp/img`` is a link to ``/etc`` would otherwise have written there.

A path that names a descriptor another program handed over (``/proc/self/fd/N``,
``/dev/fd/N``) is taken as given: that program opened the directory and vouches
for it.
"""

from __future__ import annotations

import logging
import os
import pwd
import re
import stat

from ckpt.errors import ImageError, NotAnImage, UnsafeDirectory

__all__ = ["check_dir_to_read", "check_dir_to_write", "handed_over"]

log = logging.getLogger(__name__)

#: The kernel's own bound on links followed in one lookup (MAXSYMLINKS).
_MAX_LINKS = 40
_HANDED_OVER = re.compile(r"/(?:proc/(?:self|thread-self|\d+)|dev)/fd/\d+(?:/.*)?")
_HINT = "use a directory only you (and root) can write, e.g. a new one made with `mkdir -m 700`"
_SIGNED_HINT = ("restore it with --verify-key FILE if it is signed by a key you trust (ckpt dump --sign-key), "
                "or run as the user who owns it")


def _who(uid: int) -> str:
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def _trusted(uid: int) -> bool:
    return uid in (0, os.geteuid())


def _problem(st: os.stat_result, *, sticky_ok: bool, any_owner: bool = False) -> str | None:
    """Why another user could change what ``st`` describes (None: nobody can but root and us, or its owner
    when ``any_owner``)."""
    if not any_owner and not _trusted(st.st_uid):
        return f"owned by {_who(st.st_uid)}, another user"
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o022 and not (sticky_ok and mode & stat.S_ISVTX):
        who = "its group and others" if mode & 0o022 == 0o022 else "its group" if mode & 0o020 else "others"
        return f"writable by {who} (mode {mode:04o})"
    return None


def _check_stat(path: str, st: os.stat_result, *, image: bool, any_owner: bool = False,
                owner_hint: str = _HINT) -> None:
    """Refuse a directory another user owns or can write (on the way: a trusted sticky one is fine)."""
    problem = _problem(st, sticky_ok=not image, any_owner=any_owner)
    if problem is not None:
        raise UnsafeDirectory(path, f"{problem}, who could swap in a crafted image",
                              hint=owner_hint if problem.startswith("owned") else f"chmod go-w {path}, or {_HINT}")


def _walk(path: str) -> tuple[str, list[str]]:
    """Resolve the absolute ``path`` like realpath, checking every directory passed and every link followed.

    Returns (the deepest existing directory, the components below it that do
    not exist).  The last component is resolved too: callers pass a parent.
    """
    pending = [c for c in reversed(path.split("/")) if c not in ("", ".")]
    cur = "/"
    _check_stat(cur, os.lstat(cur), image=False)
    links = 0
    while pending:
        name = pending.pop()
        if name == "..":
            cur = os.path.dirname(cur)
            continue
        nxt = os.path.join(cur, name)
        try:
            st = os.lstat(nxt)
        except FileNotFoundError:
            return cur, [name, *reversed(pending)]
        if stat.S_ISLNK(st.st_mode):
            if not _trusted(st.st_uid):
                raise UnsafeDirectory(nxt, f"a symbolic link owned by {_who(st.st_uid)}, another user; "
                                           "ckpt does not follow it", hint=_HINT)
            links += 1
            if links > _MAX_LINKS:
                raise ImageError(path, "too many levels of symbolic links")
            target = os.readlink(nxt)
            if target.startswith("/"):
                cur = "/"
            pending.extend(c for c in reversed(target.split("/")) if c not in ("", "."))
            continue
        if not stat.S_ISDIR(st.st_mode):
            raise ImageError(nxt, "not a directory", hint="give -D a directory")
        _check_stat(nxt, st, image=False)
        cur = nxt
    return cur, []


def _last(path: str) -> tuple[str, os.stat_result | None]:
    """(the absolute path, the lstat of its last component or None if absent), its parents checked."""
    path = os.path.abspath(os.fspath(path))
    parent, missing = _walk(os.path.dirname(path))
    if missing:
        return path, None
    try:
        st = os.lstat(os.path.join(parent, os.path.basename(path)))
    except FileNotFoundError:
        return path, None
    if stat.S_ISLNK(st.st_mode):
        target = os.readlink(os.path.join(parent, os.path.basename(path)))
        raise UnsafeDirectory(path, f"a symbolic link (to {target}); ckpt never follows the last component "
                                    "of an image directory", hint=f"give the directory itself: {target}")
    return path, st


def handed_over(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` names a directory another program opened and handed over as a descriptor."""
    return _HANDED_OVER.fullmatch(os.path.abspath(os.fspath(path))) is not None


def _examine(path: str | os.PathLike[str], hint: str) -> tuple[str, os.stat_result | None] | None:
    """:func:`_last` of ``path`` (None: a handed-over descriptor, taken as given)."""
    if handed_over(path):
        return None
    try:
        return _last(os.fspath(path))
    except PermissionError as exc:
        raise ImageError(os.fspath(path), f"cannot look at {exc.filename}: permission denied", hint=hint) from exc


def check_dir_to_read(path: str | os.PathLike[str], *, any_owner: bool = False) -> None:
    """Refuse to read an image (or a store) from ``path`` when another user could have changed it.

    ``path`` must be a directory, not reached through a link of its own, owned
    by root or us and written by nobody else, like every directory above it;
    so must each file in it.  NotAnImage when it does not exist.
    ``any_owner``: the directory and its files may be another user's (still
    written by nobody else, the directories above it as before): a restore
    whose trusted signature covers every byte (:mod:`ckpt.image.trust`).
    """
    found = _examine(path, "run as root, or as the user who owns the image")
    if found is None:
        return
    path, st = found
    if st is None:
        raise NotAnImage(path, "no such directory")
    if not stat.S_ISDIR(st.st_mode):
        raise NotAnImage(path, "not a directory (an image is a directory holding inventory.img)",
                         hint="give -D the image directory, not a file in it")
    _check_stat(path, st, image=True, any_owner=any_owner, owner_hint=_SIGNED_HINT)
    with os.scandir(path) as entries:
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                continue  # a store's images: each is checked when it is the one read
            problem = ("a symbolic link, where an image holds files" if entry.is_symlink()
                       else _problem(entry.stat(follow_symlinks=False), sticky_ok=False, any_owner=any_owner))
            if problem is not None:
                raise UnsafeDirectory(entry.path, f"{problem}, who could have changed it",
                                      hint=f"chmod go-w {entry.path}, or keep images where only you (and root) write")
    log.debug("image directory %s: owner %s, mode %04o, and every directory above it checked", path,
              _who(st.st_uid), stat.S_IMODE(st.st_mode))


def check_dir_to_write(path: str | os.PathLike[str]) -> None:
    """Refuse to create an image (or a store) at ``path`` where another user could change it.

    Every existing directory on the way must be owned by root or us and
    written by nobody else (a trusted sticky one, ``/tmp``, is fine); ``path``
    itself may be missing, else it must be such a directory and no link.
    """
    found = _examine(path, "run as root, or pick a directory you can write")
    if found is None or found[1] is None:
        return
    path, st = found
    if not stat.S_ISDIR(st.st_mode):
        raise ImageError(path, "already exists and is not a directory; refusing to overwrite it")
    _check_stat(path, st, image=True)
