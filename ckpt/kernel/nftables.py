"""nf_tables over nfnetlink: tables, chains and rules as messages and attributes (no policy).

The layouts are the kernel's: include/uapi/linux/netfilter/nfnetlink.h (the
``nfgenmsg`` header, batch begin/end) and include/uapi/linux/netfilter/nf_tables.h
(message types and attributes).  Every nf_tables integer attribute is big
endian (the kernel reads them with ``nla_get_be32``/``be64``).

Changes go in a batch — ``NFNL_MSG_BATCH_BEGIN``, the messages,
``NFNL_MSG_BATCH_END`` — which the kernel applies as one transaction, all or
nothing, while our ``sendmsg`` runs: by the time it returns every
acknowledgement is queued on the socket (:meth:`NftSocket.batch` reads them
without waiting).

A table created with ``NFT_TABLE_F_OWNER`` (Linux 5.12) belongs to the
netlink socket that created it: no other socket may change it, and the
kernel deletes it, with its chains and rules, when that socket is closed —
also when its process dies, however (NETLINK_URELEASE).  Older kernels
refuse the flag with EOPNOTSUPP.

A netlink socket belongs to the network namespace it was created in:
:meth:`NftSocket.open` with a namespace descriptor creates it in a thread
that ``setns`` there (network namespaces are per thread), so the rest of the
process stays where it is.

Rule comments are what nft(8) shows as ``comment "..."``: libnftnl's user
data, a type-length-value list where type 0 (NFTNL_UDATA_RULE_COMMENT) is a
NUL-terminated string.
"""

from __future__ import annotations

import ctypes
import errno
import itertools
import os
import socket
import struct
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from .libc import check, libc

__all__ = [
    "NETLINK_NETFILTER", "NFNL_SUBSYS_NFTABLES", "NFNL_MSG_BATCH_BEGIN", "NFNL_MSG_BATCH_END",
    "NFT_MSG_NEWTABLE", "NFT_MSG_GETTABLE", "NFT_MSG_DELTABLE", "NFT_MSG_NEWCHAIN", "NFT_MSG_NEWRULE",
    "NFT_MSG_GETRULE", "NFT_MSG_DELRULE", "NFT_MSG_GETGEN", "NFT_TABLE_F_OWNER", "NFPROTO_INET", "NFPROTO_IPV4",
    "NFPROTO_IPV6", "NF_INET_PRE_ROUTING", "NF_IP_PRI_RAW", "NF_DROP", "NF_ACCEPT", "NFT_META_NFPROTO",
    "NFT_META_L4PROTO", "NFT_PAYLOAD_NETWORK_HEADER", "NFT_PAYLOAD_TRANSPORT_HEADER", "NFT_REG_VERDICT",
    "NFT_REG_1", "NFT_CMP_EQ", "NFT_CMP_NEQ", "NFT_META_MARK", "NFTNL_UDATA_RULE_COMMENT",
    "attr", "parse_attrs", "meta", "payload", "cmp_eq", "verdict", "Message", "new_table", "del_table", "new_chain",
    "new_rule", "del_rule", "Table", "Rule", "NftSocket", "BatchError",
]

NETLINK_NETFILTER = 12
CLONE_NEWNET = 0x40000000

# include/uapi/linux/netlink.h
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_DUMP_INTR = 0x10
NLM_F_DUMP = 0x300
NLM_F_CREATE = 0x400
NLM_F_APPEND = 0x800
NLA_F_NESTED = 0x8000

# nfnetlink.h
NFNETLINK_V0 = 0
NFNL_SUBSYS_NFTABLES = 10
NFNL_MSG_BATCH_BEGIN = 0x10  # NLMSG_MIN_TYPE
NFNL_MSG_BATCH_END = 0x11

# nf_tables.h: enum nf_tables_msg_types
NFT_MSG_NEWTABLE = 0
NFT_MSG_GETTABLE = 1
NFT_MSG_DELTABLE = 2
NFT_MSG_NEWCHAIN = 3
NFT_MSG_NEWRULE = 6
NFT_MSG_GETRULE = 7
NFT_MSG_DELRULE = 8
NFT_MSG_GETGEN = 16

# enum nft_table_flags, enum nft_table_attributes
NFT_TABLE_F_OWNER = 0x2
NFTA_TABLE_NAME = 1
NFTA_TABLE_FLAGS = 2
NFTA_TABLE_OWNER = 7
# enum nft_chain_attributes, enum nft_hook_attributes
NFTA_CHAIN_TABLE = 1
NFTA_CHAIN_NAME = 3
NFTA_CHAIN_HOOK = 4
NFTA_CHAIN_POLICY = 5
NFTA_CHAIN_TYPE = 7
NFTA_HOOK_HOOKNUM = 1
NFTA_HOOK_PRIORITY = 2
# enum nft_rule_attributes, nft_list_attributes, nft_expr_attributes
NFTA_RULE_TABLE = 1
NFTA_RULE_CHAIN = 2
NFTA_RULE_HANDLE = 3
NFTA_RULE_EXPRESSIONS = 4
NFTA_RULE_USERDATA = 7
NFTA_LIST_ELEM = 1
NFTA_EXPR_NAME = 1
NFTA_EXPR_DATA = 2
# expressions: meta, payload, cmp, immediate; data and verdicts
NFTA_META_DREG = 1
NFTA_META_KEY = 2
NFTA_PAYLOAD_DREG = 1
NFTA_PAYLOAD_BASE = 2
NFTA_PAYLOAD_OFFSET = 3
NFTA_PAYLOAD_LEN = 4
NFTA_CMP_SREG = 1
NFTA_CMP_OP = 2
NFTA_CMP_DATA = 3
NFTA_IMMEDIATE_DREG = 1
NFTA_IMMEDIATE_DATA = 2
NFTA_DATA_VALUE = 1
NFTA_DATA_VERDICT = 2
NFTA_VERDICT_CODE = 1

NFT_REG_VERDICT = 0
NFT_REG_1 = 1
NFT_CMP_EQ = 0
NFT_CMP_NEQ = 1
NFT_META_MARK = 3  # skb->mark, 4 bytes in host order
NFT_META_NFPROTO = 15
NFT_META_L4PROTO = 16
NFT_PAYLOAD_NETWORK_HEADER = 1
NFT_PAYLOAD_TRANSPORT_HEADER = 2

# include/uapi/linux/netfilter.h, netfilter_ipv4.h
NFPROTO_INET = 1
NFPROTO_IPV4 = 2
NFPROTO_IPV6 = 10
NF_INET_PRE_ROUTING = 0
NF_IP_PRI_RAW = -300
NF_DROP = 0
NF_ACCEPT = 1

#: libnftnl's udata.h: enum nftnl_udata_rule_types
NFTNL_UDATA_RULE_COMMENT = 0

_NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
_NLATTR = struct.Struct("=HH")       # len, type
_NFGENMSG = struct.Struct("=BBH")    # family, version, res_id (big endian, packed by hand)
#: Bigger than any netlink dump skb (the kernel caps them at 32 KiB).
_RECV_SIZE = 1 << 17
#: Replies to a batch are queued before sendmsg returns; a dump is immediate too: a bound against a kernel bug.
_TIMEOUT = 5.0
_seq = itertools.count(int.from_bytes(os.urandom(2), "little") << 8)

_setns = libc["setns"]
_setns.restype = ctypes.c_int
_setns.argtypes = [ctypes.c_int, ctypes.c_int]


def _align(n: int) -> int:
    return (n + 3) & ~3


# --- attributes ----------------------------------------------------------------

def attr(kind: int, payload: bytes) -> bytes:
    """One netlink attribute, padded to 4 bytes."""
    raw = _NLATTR.pack(_NLATTR.size + len(payload), kind) + payload
    return raw.ljust(_align(len(raw)), b"\0")


def _nested(kind: int, *attrs: bytes) -> bytes:
    return attr(kind | NLA_F_NESTED, b"".join(attrs))


def _u32(kind: int, value: int) -> bytes:
    return attr(kind, struct.pack(">i" if value < 0 else ">I", value))


def _str(kind: int, value: str) -> bytes:
    return attr(kind, value.encode() + b"\0")


def parse_attrs(body: bytes, start: int = 0) -> dict[int, bytes]:
    """Attribute type (flags masked off) → payload, from ``body[start:]``."""
    out: dict[int, bytes] = {}
    off = _align(start)
    while off + _NLATTR.size <= len(body):
        length, kind = _NLATTR.unpack_from(body, off)
        if length < _NLATTR.size or off + length > len(body):
            break
        out[kind & 0x3FFF] = body[off + _NLATTR.size:off + length]
        off += _align(length)
    return out


def _cstr(raw: bytes | None) -> str:
    return (raw or b"").split(b"\0", 1)[0].decode(errors="replace")


# --- expressions -----------------------------------------------------------------

def _expr(name: str, *data: bytes) -> bytes:
    return _nested(NFTA_LIST_ELEM, _str(NFTA_EXPR_NAME, name), _nested(NFTA_EXPR_DATA, *data))


def meta(key: int, dreg: int = NFT_REG_1) -> bytes:
    """``meta load KEY => reg DREG`` (NFT_META_NFPROTO, NFT_META_L4PROTO: one byte)."""
    return _expr("meta", _u32(NFTA_META_DREG, dreg), _u32(NFTA_META_KEY, key))


def payload(base: int, offset: int, length: int, dreg: int = NFT_REG_1) -> bytes:
    """``payload load LENGTHb @ BASE + OFFSET => reg DREG``."""
    return _expr("payload", _u32(NFTA_PAYLOAD_DREG, dreg), _u32(NFTA_PAYLOAD_BASE, base),
                 _u32(NFTA_PAYLOAD_OFFSET, offset), _u32(NFTA_PAYLOAD_LEN, length))


def cmp_eq(data: bytes, sreg: int = NFT_REG_1, op: int = NFT_CMP_EQ) -> bytes:
    """``cmp eq reg SREG DATA``: the rule goes on only if the register holds ``data`` (``op`` NFT_CMP_NEQ: only
    if it does not)."""
    return _expr("cmp", _u32(NFTA_CMP_SREG, sreg), _u32(NFTA_CMP_OP, op),
                 _nested(NFTA_CMP_DATA, attr(NFTA_DATA_VALUE, data)))


def verdict(code: int) -> bytes:
    """``immediate reg 0 CODE``: the rule's verdict (NF_DROP, NF_ACCEPT)."""
    return _expr("immediate", _u32(NFTA_IMMEDIATE_DREG, NFT_REG_VERDICT),
                 _nested(NFTA_IMMEDIATE_DATA, _nested(NFTA_DATA_VERDICT, _u32(NFTA_VERDICT_CODE, code))))


# --- messages --------------------------------------------------------------------

@dataclass(frozen=True)
class Message:
    """One nf_tables message of a batch (no netlink header yet)."""

    kind: int      # NFT_MSG_*
    family: int    # NFPROTO_*
    flags: int     # NLM_F_* besides REQUEST and ACK
    attrs: bytes


def new_table(family: int, name: str, flags: int = 0) -> Message:
    """Create table ``name`` (no error if it exists and is not someone else's owned table)."""
    return Message(NFT_MSG_NEWTABLE, family, NLM_F_CREATE, _str(NFTA_TABLE_NAME, name) + _u32(NFTA_TABLE_FLAGS, flags))


def del_table(family: int, name: str) -> Message:
    """Delete table ``name`` with everything in it."""
    return Message(NFT_MSG_DELTABLE, family, 0, _str(NFTA_TABLE_NAME, name))


def new_chain(family: int, table: str, name: str, hooknum: int, priority: int, *, kind: str = "filter",
              policy: int = NF_ACCEPT) -> Message:
    """Create base chain ``name`` of ``table`` on hook ``hooknum`` at ``priority`` (no error if it exists)."""
    hook = _nested(NFTA_CHAIN_HOOK, _u32(NFTA_HOOK_HOOKNUM, hooknum), _u32(NFTA_HOOK_PRIORITY, priority))
    return Message(NFT_MSG_NEWCHAIN, family, NLM_F_CREATE,
                   _str(NFTA_CHAIN_TABLE, table) + _str(NFTA_CHAIN_NAME, name) + hook
                   + _u32(NFTA_CHAIN_POLICY, policy) + _str(NFTA_CHAIN_TYPE, kind))


def new_rule(family: int, table: str, chain: str, exprs: Sequence[bytes], comment: str | None = None) -> Message:
    """Append a rule of expressions ``exprs`` (see :func:`meta` …) to ``chain``, with nft's ``comment``."""
    attrs = _str(NFTA_RULE_TABLE, table) + _str(NFTA_RULE_CHAIN, chain) + _nested(NFTA_RULE_EXPRESSIONS, *exprs)
    if comment is not None:
        text = comment.encode() + b"\0"
        if len(text) > 255:
            raise ValueError(f"a rule comment holds at most 254 bytes: {comment!r}")
        attrs += attr(NFTA_RULE_USERDATA, bytes((NFTNL_UDATA_RULE_COMMENT, len(text))) + text)
    return Message(NFT_MSG_NEWRULE, family, NLM_F_CREATE | NLM_F_APPEND, attrs)


def del_rule(family: int, table: str, chain: str, handle: int) -> Message:
    """Delete the rule with ``handle`` from ``chain``."""
    return Message(NFT_MSG_DELRULE, family, 0, _str(NFTA_RULE_TABLE, table) + _str(NFTA_RULE_CHAIN, chain)
                   + attr(NFTA_RULE_HANDLE, struct.pack(">Q", handle)))


# --- what the kernel reports -------------------------------------------------------

@dataclass(frozen=True)
class Table:
    """A table as NFT_MSG_GETTABLE reports it; ``owner`` is the owning socket's port id (0: none)."""

    family: int
    name: str
    flags: int
    owner: int


@dataclass(frozen=True)
class Rule:
    """A rule as NFT_MSG_GETRULE reports it (its expressions left out); ``comment`` is nft's."""

    family: int
    table: str
    chain: str
    handle: int
    comment: str | None


def _comment(udata: bytes | None) -> str | None:
    off = 0
    while udata and off + 2 <= len(udata):
        kind, length = udata[off], udata[off + 1]
        if kind == NFTNL_UDATA_RULE_COMMENT:
            return _cstr(udata[off + 2:off + 2 + length])
        off += 2 + length
    return None


def _be(raw: bytes | None) -> int:
    return int.from_bytes(raw or b"", "big")


class BatchError(OSError):
    """The kernel refused a batch; ``index`` is the message it refused (None: the commit itself)."""

    def __init__(self, err: int, what: str, index: int | None) -> None:
        super().__init__(err, f"{what}: {os.strerror(err)}")
        self.index = index


class NftSocket:
    """A NETLINK_NETFILTER socket of this process (in our network namespace, or the one given).

    The tables it creates with NFT_TABLE_F_OWNER live as long as it does:
    :meth:`close` (or our death) deletes them.
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.sock.bind((0, 0))  # a port id now (it would be given at the first send anyway)
        self.portid: int = self.sock.getsockname()[0]

    @classmethod
    def open(cls, netns: int | None = None) -> "NftSocket":
        """A new socket; with ``netns`` (an open /proc/PID/ns/net), one that lives in that network namespace."""
        if netns is None:
            return cls(socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_NETFILTER))
        made: list[socket.socket | BaseException] = []

        def there() -> None:  # setns(CLONE_NEWNET) moves this thread only, and it ends right after
            try:
                check(_setns(netns, CLONE_NEWNET), "setns(CLONE_NEWNET)")
                made.append(socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                                          NETLINK_NETFILTER))
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                made.append(exc)

        th = threading.Thread(target=there, name="nft-setns")
        th.start()
        th.join()
        if isinstance(made[0], BaseException):
            raise made[0]
        return cls(made[0])

    def close(self) -> None:
        """Close it: the kernel deletes every table it owns before this returns."""
        self.sock.close()

    def __enter__(self) -> "NftSocket":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def fileno(self) -> int:
        return self.sock.fileno()

    # --- sending --------------------------------------------------------------------

    @staticmethod
    def _pack(kind: int, flags: int, seq: int, family: int, attrs: bytes, res_id: int = 0) -> bytes:
        body = _NFGENMSG.pack(family, NFNETLINK_V0, socket.htons(res_id)) + attrs
        return _NLMSGHDR.pack(_NLMSGHDR.size + len(body), kind, NLM_F_REQUEST | flags, seq, 0) + body

    def batch(self, messages: Sequence[Message], what: str = "nf_tables batch") -> None:
        """Apply ``messages`` as one transaction; BatchError (naming ``what``) if the kernel refuses any."""
        if not messages:
            return
        first = next(_seq)
        seqs = {first + 1 + i: i for i in range(len(messages))}
        data = self._pack(NFNL_MSG_BATCH_BEGIN, 0, first, 0, b"", NFNL_SUBSYS_NFTABLES)
        for seq, m in zip(seqs, messages):
            data += self._pack(NFNL_SUBSYS_NFTABLES << 8 | m.kind, m.flags | NLM_F_ACK, seq, m.family, m.attrs)
        data += self._pack(NFNL_MSG_BATCH_END, 0, first + 1 + len(messages), 0, b"", NFNL_SUBSYS_NFTABLES)
        self.sock.sendto(data, (0, 0))
        failure: BatchError | None = None
        while got := list(self._receive(block=False)):  # all queued already: read until none is left
            for kind, _flags, seq, body in got:
                if kind == NLMSG_ERROR and (seq == first or seq in seqs):
                    err = -struct.unpack_from("=i", body.ljust(4, b"\0"))[0]
                    if err and failure is None:  # the first refusal is the cause; the others follow from it
                        failure = BatchError(err, what, seqs.get(seq))
        if failure is not None:
            raise failure

    def _receive(self, block: bool) -> Iterator[tuple[int, int, int, bytes]]:
        """(type, flags, seq, body) of each message of one datagram."""
        self.sock.settimeout(_TIMEOUT if block else 0.0)
        try:
            data, _, flags, _ = self.sock.recvmsg(_RECV_SIZE)
        except (BlockingIOError, TimeoutError):
            return
        finally:
            self.sock.settimeout(None)
        if flags & socket.MSG_TRUNC:
            raise OSError(errno.EMSGSIZE, "nf_tables: netlink reply truncated")
        off = 0
        while off + _NLMSGHDR.size <= len(data):
            length, kind, mflags, seq, _pid = _NLMSGHDR.unpack_from(data, off)
            if length < _NLMSGHDR.size or off + length > len(data):
                raise OSError(errno.EBADMSG, "nf_tables: malformed netlink message")
            yield kind, mflags, seq, data[off + _NLMSGHDR.size:off + length]
            off += _align(length)

    # --- dumps ----------------------------------------------------------------------

    def _dump(self, kind: int, family: int, attrs: bytes = b"") -> list[dict[int, bytes]]:
        """Every object a NLM_F_DUMP request of ``kind`` returns, as attribute dicts (again if it changed meanwhile)."""
        for _attempt in range(8):
            seq = next(_seq)
            self.sock.sendto(self._pack(NFNL_SUBSYS_NFTABLES << 8 | kind, NLM_F_DUMP, seq, family, attrs), (0, 0))
            out: list[dict[int, bytes]] = []
            interrupted = False
            while True:
                got = list(self._receive(block=True))
                if not got:
                    raise OSError(errno.ETIMEDOUT, f"nf_tables: no answer to dump {kind}")
                done = False
                for mkind, mflags, mseq, body in got:
                    if mseq != seq:
                        continue
                    interrupted |= bool(mflags & NLM_F_DUMP_INTR)
                    if mkind in (NLMSG_DONE, NLMSG_ERROR):
                        err = -struct.unpack_from("=i", body.ljust(4, b"\0"))[0]
                        if err:
                            raise OSError(err, f"nf_tables dump {kind}: {os.strerror(err)}")
                        done = True
                    else:
                        out.append(parse_attrs(body, _NFGENMSG.size))
                if done:
                    break
            if not interrupted:
                return out
        raise OSError(errno.EINTR, "nf_tables: the ruleset kept changing during a dump")

    def tables(self, family: int) -> list[Table]:
        """The tables of ``family`` (NFPROTO_INET …) in this socket's network namespace."""
        return [Table(family, _cstr(a.get(NFTA_TABLE_NAME)), _be(a.get(NFTA_TABLE_FLAGS)), _be(a.get(NFTA_TABLE_OWNER)))
                for a in self._dump(NFT_MSG_GETTABLE, family)]

    def rules(self, family: int, table: str, chain: str | None = None) -> list[Rule]:
        """The rules of ``table`` (of ``chain`` only, if given); [] when the table does not exist."""
        filt = _str(NFTA_RULE_TABLE, table) + (_str(NFTA_RULE_CHAIN, chain) if chain else b"")
        try:
            found = self._dump(NFT_MSG_GETRULE, family, filt)
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                return []
            raise
        rules = [Rule(family, _cstr(a.get(NFTA_RULE_TABLE)), _cstr(a.get(NFTA_RULE_CHAIN)),
                      _be(a.get(NFTA_RULE_HANDLE)), _comment(a.get(NFTA_RULE_USERDATA))) for a in found]
        return [r for r in rules if r.table == table and (chain is None or r.chain == chain)]

    def generation(self) -> int:
        """The ruleset's generation id: whether nf_tables answers at all (it bumps with every change)."""
        seq = next(_seq)
        self.sock.sendto(self._pack(NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_GETGEN, 0, seq, 0, b""), (0, 0))
        for kind, _flags, mseq, body in self._receive(block=True):
            if mseq != seq:
                continue
            if kind == NLMSG_ERROR:
                err = -struct.unpack_from("=i", body.ljust(4, b"\0"))[0]
                raise OSError(err or errno.EPROTO, f"nf_tables: getgen: {os.strerror(err or errno.EPROTO)}")
            return _be(parse_attrs(body, _NFGENMSG.size).get(1))  # NFTA_GEN_ID
        raise OSError(errno.ETIMEDOUT, "nf_tables: no answer to getgen")
