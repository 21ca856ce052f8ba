"""The client's address behind trusted reverse proxies (``trusted_proxies``), without I/O.

A proxy appends the address it got a request from to ``X-Forwarded-For``; a
client can put anything before that. So the header is read from the right:
entries added by proxies we trust are skipped, and the first address that is
not one of them is the client. A request whose peer is not a trusted proxy
keeps its peer address, whatever it sends.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

#: Entries of ``X-Forwarded-For`` read at most (a bound on work for a long header).
MAX_FORWARDED_ENTRIES = 32


def parse_networks(entries: Iterable[str]) -> tuple[Network, ...]:
    """``["10.0.0.0/8", "127.0.0.1", "::1"]`` -> networks; raise ``ValueError`` naming a bad
    one."""
    networks = []
    for entry in entries:
        try:
            networks.append(ipaddress.ip_network(entry.strip(), strict=False))
        except ValueError:
            raise ValueError(f"{entry[:60]!r} is not an address or a network such as "
                             "10.0.0.0/8") from None
    return tuple(networks)


def is_trusted(address: str, trusted: Sequence[Network]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in network for network in trusted)


def client_address(peer: str, forwarded_for: str | None, trusted: Sequence[Network]) -> str:
    """The client of a request from ``peer`` carrying ``forwarded_for`` (or ``None``)."""
    if not trusted or forwarded_for is None or not is_trusted(peer, trusted):
        return peer
    entries = [e.strip() for e in forwarded_for.split(",")][-MAX_FORWARDED_ENTRIES:]
    client = peer
    for entry in reversed(entries):
        try:
            ipaddress.ip_address(entry)
        except ValueError:
            return client  # garbage (or a port, an obfuscated name): trust what came after
        client = entry
        if not is_trusted(entry, trusted):
            return entry
    return client
