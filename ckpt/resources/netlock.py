"""The network lock: nftables rules that drop a dumped connection's incoming packets until it is restored.

Between the moment a dump reads a connection's state and the moment a
restore puts it back, the peer must not get an answer from this host: an
ACK for data the image does not hold would lose it, and a packet that finds
no socket (the dumped process is gone) is answered with a RST, which ends the
connection.  So before reading a connection, ckpt adds one rule that drops
the peer's packets to it; the peer just retransmits (measured here: the next
retransmission after the unlock gets through, 0.1-0.7 s later), and the
restore deletes the rule once the socket is back.  CRIU does the same with
iptables or nft.

The rules live in a table of ckpt's own, ``table inet ckpt``, chain ``lock``
hooked at prerouting with priority raw (-300): before conntrack, so dropped
packets leave no trace there.  One rule per connection, matching
addresses and ports of both ends, with a comment (the *tag*) that names the
dump and the connection: the image records it, and unlocking deletes exactly
the rules with those tags.  When the last rule goes, the table goes.

nft is a userspace tool, run as ``nft -f -`` (one atomic transaction per
call), like CRIU execs iptables.  ckpt processes serialize their edits of the
table with a flock, so one never removes the table under another's new rule.
A connection of a process in another network namespace is locked there: each
call takes the namespace as an open descriptor (``nsenter --net`` runs nft
in it), which stays valid after the process is gone.
"""

from __future__ import annotations

import fcntl
import ipaddress
import os
import re
import shutil
import socket
import subprocess
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from ..errors import CkptError, Unsupported

__all__ = ["TABLE", "CHAIN", "Lock", "NetlockError", "nft_path", "require", "lock", "unlock", "locked"]

TABLE = "ckpt"
CHAIN = "lock"
_LOCKFILE = "/run/ckpt-netlock.lock"
_NFT_DIRS = ("/usr/sbin", "/sbin", "/usr/bin", "/bin")
_TIMEOUT = 20.0
_RULE_RE = re.compile(r'comment "([^"]*)" # handle (\d+)\s*$')


class NetlockError(CkptError):
    """nft refused to add or remove a lock rule."""


@dataclass(frozen=True)
class Lock:
    """One connection's rule: packets from ``peer``:``peer_port`` to ``local``:``local_port`` are dropped.

    ``family`` is the packets' (AF_INET for an IPv6 socket talking to an
    IPv4-mapped address: its packets are IPv4 on the wire).
    """

    family: int
    local: str
    local_port: int
    peer: str
    peer_port: int
    tag: str

    @classmethod
    def of(cls, family: int, local: tuple[str, int], peer: tuple[str, int], tag: str) -> "Lock":
        """The lock of a socket of ``family`` between (host, port) ``local`` and ``peer``, as getsockname gives them."""
        hosts = [ipaddress.ip_address(h.split("%", 1)[0]) for h in (local[0], peer[0])]
        if family == socket.AF_INET6 and all(getattr(h, "ipv4_mapped", None) for h in hosts):
            family, hosts = socket.AF_INET, [h.ipv4_mapped for h in hosts]  # type: ignore[union-attr]
        if '"' in tag or len(tag) > 120:
            raise ValueError(f"not a usable nft comment: {tag!r}")
        return cls(family, str(hosts[0]), local[1], str(hosts[1]), peer[1], tag)

    def rule(self) -> str:
        ip = "ip" if self.family == socket.AF_INET else "ip6"
        return (f"{ip} saddr {self.peer} tcp sport {self.peer_port} {ip} daddr {self.local} "
                f"tcp dport {self.local_port} drop comment \"{self.tag}\"")

    def __str__(self) -> str:
        def at(host: str, port: int) -> str:
            return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        return f"{at(self.local, self.local_port)} <- {at(self.peer, self.peer_port)}"


def nft_path() -> str | None:
    """Where the nft tool is (PATH first, then the sbin directories a root shell would have), or None."""
    found = shutil.which("nft")
    if found:
        return found
    for d in _NFT_DIRS:
        path = os.path.join(d, "nft")
        if os.access(path, os.X_OK):
            return path
    return None


def require() -> str:
    """The nft tool, or Unsupported saying why connections cannot be locked."""
    path = nft_path()
    if path is None:
        raise Unsupported("--tcp-established needs nft (nftables) to lock connections while they are dumped, "
                          "and it is not installed", hint="install nftables (apt-get install nftables), "
                          "or use --tcp-close to restore the connections closed")
    return path


def _nft(args: Sequence[str], script: str | None = None, netns: int | None = None) -> str:
    """Run nft (in the network namespace open at descriptor ``netns``, else in ours); its stdout."""
    argv = [require(), *args]
    if netns is not None:
        argv = [shutil.which("nsenter") or "nsenter", f"--net=/proc/self/fd/{netns}", *argv]
    try:
        done = subprocess.run(argv, input=script, capture_output=True, text=True, timeout=_TIMEOUT,
                              pass_fds=() if netns is None else (netns,))
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NetlockError(f"nft {' '.join(args)} failed: {exc}") from exc
    if done.returncode != 0:
        first = next((ln.strip() for ln in done.stderr.splitlines() if ln.strip()), f"exit status {done.returncode}")
        raise NetlockError(f"nft {' '.join(args)} failed: {first}")
    return done.stdout


class _Serialized:
    """An exclusive flock shared by every ckpt process that edits the table."""

    def __enter__(self) -> "_Serialized":
        self.fd = os.open(_LOCKFILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)  # drops the flock


def _rules(netns: int | None = None) -> list[tuple[str, int]]:
    """(tag, handle) of every rule of ckpt's chain; [] when the table does not exist."""
    try:
        out = _nft(["-a", "list", "chain", "inet", TABLE, CHAIN], netns=netns)
    except NetlockError as exc:
        if "No such file or directory" in str(exc):
            return []
        raise
    return [(m.group(1), int(m.group(2))) for m in map(_RULE_RE.search, out.splitlines()) if m]


def lock(locks: Sequence[Lock], netns: int | None = None) -> None:
    """Add the rules of ``locks`` (and ckpt's table and chain if needed) in one transaction.

    ``netns``: a descriptor of the network namespace to lock them in (default: ours).
    """
    if not locks:
        return
    script = [f"add table inet {TABLE}",
              f"add chain inet {TABLE} {CHAIN} {{ type filter hook prerouting priority raw; policy accept; }}"]
    script += [f"add rule inet {TABLE} {CHAIN} {lk.rule()}" for lk in locks]
    with _Serialized():
        _nft(["-f", "-"], "\n".join(script) + "\n", netns)


def unlock(tags: Collection[str], netns: int | None = None) -> int:
    """Delete the rules carrying ``tags`` (any that is not there is skipped); the table too once it is empty.

    ``netns`` as for :func:`lock`.  Returns how many rules were deleted.
    """
    if not tags:
        return 0
    with _Serialized():
        rules = _rules(netns)
        mine = [h for t, h in rules if t in tags]
        if len(mine) == len(rules):
            if rules or _table_exists(netns):
                _nft(["delete", "table", "inet", TABLE], netns=netns)
        elif mine:
            _nft(["-f", "-"], "".join(f"delete rule inet {TABLE} {CHAIN} handle {h}\n" for h in mine), netns)
    return len(mine)


def _table_exists(netns: int | None = None) -> bool:
    try:
        _nft(["list", "table", "inet", TABLE], netns=netns)
    except NetlockError:
        return False
    return True


def locked(netns: int | None = None) -> dict[str, int]:
    """The rules of ckpt's table now: tag → nft handle (what tests and ``nft list table inet ckpt`` show)."""
    return dict(_rules(netns))
