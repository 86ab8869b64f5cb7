"""The hand-over of bound sockets within one network namespace (ckpt.migrate.handover), over its real port."""

from __future__ import annotations

import os
import socket
import threading

import pytest

from ckpt.errors import CkptError
from ckpt.migrate import handover
from ckpt.resources.tcp import netns_id


def test_the_sockets_go_over_and_a_stranger_is_ignored() -> None:
    port = handover.HandoverPort()
    listener = socket.create_server(("127.0.0.1", 0))
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as stranger:
            stranger.connect("\0" + port.name)
            stranger.send(b"\0" * 16 + b"\1\0\0\0")  # no nonce: dropped, the port waits on
            sender = threading.Thread(target=handover.send,
                                      args=(port.offer(), [(7, os.getpid(), listener.fileno())]))
            sender.start()
            got = port.receive([7], timeout=30)
            sender.join(30)
        assert list(got) == [7]
        with socket.socket(fileno=got[7]) as same:  # the very listening socket, not a new one
            assert same.getsockname() == listener.getsockname()
            assert os.fstat(same.fileno()).st_ino == os.fstat(listener.fileno()).st_ino
    finally:
        listener.close()
        port.close()


def test_other_sockets_than_announced_are_refused() -> None:
    port = handover.HandoverPort()
    listener = socket.create_server(("127.0.0.1", 0))
    try:
        threading.Thread(target=handover.send, args=(port.offer(), [(8, os.getpid(), listener.fileno())])).start()
        with pytest.raises(CkptError, match="not the ones the source announced"):
            port.receive([7], timeout=30)
    finally:
        listener.close()
        port.close()


def test_a_port_is_offered_only_within_this_network_namespace() -> None:
    here = {"netns": netns_id(os.getpid())}
    port = handover.offer(here)
    assert port is not None
    port.close()
    boot, ino = here["netns"].rsplit(":", 1)
    assert handover.offer({"netns": f"{boot}:{int(ino) + 1}"}) is None
    assert handover.offer({"netns": f"another boot:{ino}"}) is None
    assert handover.offer({**here, "dry_run": True}) is None
