"""Client addresses: the one place that turns what a socket, a PROXY header, a log or a
person gives us into the address policy, grants, limits and logs compare.

House rules: pure (only `ipaddress`; `parse_ip` keeps a bounded cache), no sockets. An IPv4-mapped IPv6 address
(`::ffff:192.0.2.7`, what a dual-stack socket reports for an IPv4 client) is the IPv4
address it carries, everywhere: a grant made over one form must match the other.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable
from typing import Any

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# An IPv6 subscriber gets a /64 (RFC 6177): counting single addresses inside
# it would hand one client 2^64 fresh counters. 128 counts each address.
IPV6_PREFIX = 64


# Distinct texts remembered by `parse_ip`: the client addresses of the
# connections of the last moments. Each message parses its client's address
# about ten times (roads, relay, limits, grants, logs); a hit costs a dict
# lookup instead of `ipaddress`'s parse (~3 us). Bounded, so that many
# clients or made-up literals cost at most this many small entries.
PARSE_CACHE_SIZE = 4096


@functools.lru_cache(maxsize=PARSE_CACHE_SIZE)
def parse_ip(text: str) -> IPAddress | None:
    """An address as written by a socket or a person: "192.0.2.7", "2001:db8::7",
    "[2001:db8::7]", "IPv6:2001:db8::7" (RFC 5321 literal), "fe80::1%eth0" (zone dropped);
    None when it is no IP address. Remembered: address objects are immutable."""
    bare = text.strip().removeprefix("[").removesuffix("]")
    if bare[:5].lower() == "ipv6:":
        bare = bare[5:]
    try:
        ip = ipaddress.ip_address(bare.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def client_address(peer: Any, missing: str = "?") -> str:
    """The client as policy sees it, from a peer name tuple (`getpeername()`) or a text:
    the canonical address, or the text as given when it is no IP address (a UNIX socket),
    or `missing` when there is none."""
    if not peer:
        return missing
    text = str(peer[0]) if isinstance(peer, tuple | list) else str(peer)
    ip = parse_ip(text)
    return str(ip) if ip is not None else text


def in_networks(ip: str | IPAddress | None, networks: Iterable[IPNetwork]) -> bool:
    """Whether the client address lies in one of `networks` (False for no address)."""
    addr = parse_ip(ip) if isinstance(ip, str) else ip
    if addr is None:
        return False
    return any(addr in net for net in networks)


def client_key(ip: str, ipv6_prefix: int = IPV6_PREFIX) -> str:
    """The client as counted (limits, login failures, connections): IPv4 as is, IPv6 by
    its network of `ipv6_prefix` bits ("2001:db8:1:2::/64"), IPv4-mapped IPv6 as IPv4."""
    addr = parse_ip(ip)
    if addr is None:
        return ip
    if isinstance(addr, ipaddress.IPv6Address) and ipv6_prefix < 128:
        return str(ipaddress.IPv6Network(f"{addr}/{ipv6_prefix}", strict=False))
    return str(addr)
