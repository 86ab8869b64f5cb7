"""Which source addresses ``ckpt receive --allow`` lets in.

A receiver restores whatever an authenticated source sends, so on a network it
should not even talk to hosts that have no business migrating to it: with
``--allow 10.0.0.0/8,192.0.2.7`` a connection from any other address is closed
as soon as it is accepted, before the receiver sends a byte (its hello) or
reads one, and the refusal is logged.  This is in front of the token (and of
TLS), not instead of them: addresses can be spoofed on a shared network, a
proof of the token cannot.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from ..errors import UsageError

__all__ = ["Allow", "parse_allow"]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class Allow:
    """The networks of ``--allow``, as given."""

    networks: tuple[Network, ...]

    def admits(self, host: str) -> bool:
        """Whether a peer at ``host`` (as accept(2) gave it) is in one of the networks."""
        try:
            addr = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped  # an IPv4 source on a receiver listening on [::]
        return any(addr in net for net in self.networks)

    def __str__(self) -> str:
        return ",".join(str(n) for n in self.networks)


def parse_allow(text: str) -> Allow:
    """``10.0.0.0/8,127.0.0.1`` → Allow; a UsageError naming the entry that is no address or network."""
    networks = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            raise UsageError(f"--allow {text!r}: an empty entry (give ADDR or ADDR/BITS, separated by commas)")
        try:
            networks.append(ipaddress.ip_network(item, strict=True))
        except ValueError as exc:
            hint = None
            if "host bits set" in str(exc):
                hint = f"the network is {ipaddress.ip_network(item, strict=False)}"
            raise UsageError(f"--allow {text!r}: {item!r} is not an address or network ({exc})", hint=hint) from None
    return Allow(tuple(networks))
