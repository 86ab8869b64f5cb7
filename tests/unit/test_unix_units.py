"""ckpt.resources.unix without processes: which sockets are created together, how names are shown."""

from __future__ import annotations

from ckpt.image.pb import files_pb2
from ckpt.resources.unix import groups, show_name

K = files_pb2.FileEntry.Kind


def _sock(fid: int, ino: int, **unix: object) -> files_pb2.FileEntry:
    return files_pb2.FileEntry(id=fid, kind=K.UNIX, unix=files_pb2.UnixSocket(ino=ino, **unix))


def test_groups_join_peers_listeners_and_their_connections() -> None:
    files = [
        _sock(1, 100, peer_ino=101), _sock(2, 101, peer_ino=100),            # a socketpair
        _sock(3, 200, state=10, pending=[203, 999]),                         # a listener, one client not dumped
        _sock(4, 201, peer_ino=202, listener_ino=200), _sock(5, 202, peer_ino=201),  # accepted from it
        _sock(6, 203, state=1),                                              # waiting in its queue
        _sock(7, 300, peer_ino=301), _sock(8, 301),                          # datagram connected one way
        _sock(9, 400, state=1),                                              # peer gone: alone
        _sock(10, 0, state=10),                                              # an image without inodes
        files_pb2.FileEntry(id=11, kind=K.PIPE),
    ]
    assert sorted(groups(files)) == [[1, 2], [3, 4, 5, 6], [7, 8]]


def test_show_name() -> None:
    assert show_name(b"\0ckpt-x") == "@ckpt-x"
    assert show_name(b"/run/a.sock") == "/run/a.sock"
    assert show_name(b"") == "(unnamed)"
