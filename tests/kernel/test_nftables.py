"""nf_tables over netlink (ckpt.kernel.nftables), checked against nft(8) in a network namespace of the test's own."""

from __future__ import annotations

import errno
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest

from ckpt.kernel import nftables as nft
from netns import fresh_netns
from targets import spawn

pytestmark = [pytest.mark.skipif(shutil.which("unshare") is None, reason="unshare (util-linux) is not installed"),
              pytest.mark.skipif(shutil.which("nft") is None, reason="nft (nftables) is not installed")]

F = nft.NFPROTO_INET


@pytest.fixture
def netns() -> Iterator[tuple[int, int]]:
    with fresh_netns() as ns:
        yield ns


def _nft(pid: int | None, *args: str) -> str:
    """nft's answer in the network namespace of ``pid`` (None: ours)."""
    argv = ["nft", *args] if pid is None else ["nsenter", f"--net=/proc/{pid}/ns/net", "nft", *args]
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout


def _drop_rule(comment: str) -> nft.Message:
    """ip saddr 10.0.0.2 ip daddr 10.0.0.1 tcp sport 5555 tcp dport 80 drop, in table t chain c."""
    exprs = [nft.meta(nft.NFT_META_NFPROTO), nft.cmp_eq(bytes([nft.NFPROTO_IPV4])),
             nft.payload(nft.NFT_PAYLOAD_NETWORK_HEADER, 12, 4), nft.cmp_eq(socket.inet_aton("10.0.0.2")),
             nft.payload(nft.NFT_PAYLOAD_NETWORK_HEADER, 16, 4), nft.cmp_eq(socket.inet_aton("10.0.0.1")),
             nft.meta(nft.NFT_META_L4PROTO), nft.cmp_eq(bytes([socket.IPPROTO_TCP])),
             nft.payload(nft.NFT_PAYLOAD_TRANSPORT_HEADER, 0, 4), nft.cmp_eq(bytes.fromhex("15b30050")),
             nft.verdict(nft.NF_DROP)]
    return nft.new_rule(F, "t", "c", exprs, comment)


def _table(flags: int = 0) -> list[nft.Message]:
    return [nft.new_table(F, "t", flags), nft.new_chain(F, "t", "c", nft.NF_INET_PRE_ROUTING, nft.NF_IP_PRI_RAW)]


def test_owned_table_lives_as_long_as_its_socket(netns: tuple[int, int]) -> None:
    pid, fd = netns
    s = nft.NftSocket.open(fd)
    try:
        s.batch([*_table(nft.NFT_TABLE_F_OWNER), _drop_rule("ckpt test")])
        assert _nft(pid, "list", "tables").split() == ["table", "inet", "t"]
        shown = _nft(pid, "list", "table", "inet", "t")
        assert "flags owner" in shown and "type filter hook prerouting priority raw; policy accept;" in shown
        assert ('ip saddr 10.0.0.2 ip daddr 10.0.0.1 tcp sport 5555 tcp dport 80 drop comment "ckpt test"'
                in shown), shown
        assert "table inet t " not in _nft(None, "list", "tables") + " "  # made there, not here
        assert s.tables(F) == [nft.Table(F, "t", nft.NFT_TABLE_F_OWNER, s.portid)]
        rule, = s.rules(F, "t", "c")
        assert rule.comment == "ckpt test" and rule.handle > 0
        with nft.NftSocket.open(fd) as other:  # an owned table is its socket's alone
            with pytest.raises(nft.BatchError) as exc:
                other.batch([nft.del_table(F, "t")])
            assert exc.value.errno == errno.EPERM and exc.value.index == 0
            assert other.rules(F, "t") == [rule]  # but anyone may read it
    finally:
        s.close()
    assert _nft(pid, "list", "tables") == ""  # gone with the socket, before close() returned


def test_owned_table_goes_when_its_process_is_killed(netns: tuple[int, int]) -> None:
    pid, _ = netns
    code = ("import os, sys; from ckpt.kernel import nftables as nft; "
            f"s = nft.NftSocket.open(os.open('/proc/{pid}/ns/net', os.O_RDONLY)); "
            "s.batch([nft.new_table(nft.NFPROTO_INET, 't', nft.NFT_TABLE_F_OWNER)]); print('LOCKED', flush=True); "
            "sys.stdin.read()")
    with spawn([sys.executable, "-c", code], stdin_pipe=True) as holder:
        holder.expect("LOCKED")
        assert "table inet t" in _nft(pid, "list", "tables")
        holder.close()  # SIGKILL
    assert _nft(pid, "list", "tables") == ""


def test_batch_is_all_or_nothing(netns: tuple[int, int]) -> None:
    pid, fd = netns
    with nft.NftSocket.open(fd) as s:
        with pytest.raises(nft.BatchError) as exc:
            s.batch([*_table(), nft.new_rule(F, "nosuch", "c", [nft.verdict(nft.NF_DROP)])], "adding")
        assert exc.value.errno == errno.ENOENT and exc.value.index == 2 and "adding" in str(exc.value)
        assert s.tables(F) == [] and s.rules(F, "t") == []
        s.batch([*_table(), _drop_rule("a"), _drop_rule("b")])  # a plain table: stays after the socket
        a, b = s.rules(F, "t", "c")
        s.batch([nft.del_rule(F, "t", "c", a.handle)])
        assert [r.comment for r in s.rules(F, "t")] == ["b"]
    assert "table inet t" in _nft(pid, "list", "tables")
    with nft.NftSocket.open(fd) as s:
        s.batch([nft.del_table(F, "t")])
        assert s.generation() > 0
    assert _nft(pid, "list", "tables") == ""
