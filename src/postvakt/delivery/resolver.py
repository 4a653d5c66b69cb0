"""Where mail for a domain goes: routes, smarthost, MX (RFC 5321 §5.1, RFC 7505).

The DNS sits behind the small `Resolver` interface; the real one is the
project's one DNS client (`postvakt.dnsclient`, configured by `[dns]`).
"""

from __future__ import annotations

import functools
import ipaddress
import random
from dataclasses import dataclass
from typing import Protocol

from postvakt.config import DeliveryConfig, DNSConfig, HostPort
from postvakt.delivery import DeliveryError
from postvakt.delivery.smtpclient import Hop
from postvakt.dnsclient import DNSClient, DNSError, make_resolver
from postvakt.reply import Reply

SMTP_PORT = 25
# Postfix smtp_mx_address_limit: at most 5 addresses are tried per delivery.
MAX_ADDRESSES = 5
# DNS answers we wait for when no `[dns] timeout` is given.
DNS_TIMEOUT = DNSConfig.timeout

__all__ = ["DNSError", "DnsResolver", "Resolver", "destination", "mx_hops", "order_mx"]


class Resolver(Protocol):
    async def mx(self, domain: str) -> list[tuple[int, str]]:
        """MX records as (preference, exchange without trailing dot; "" for the
        null MX "."). [] when the name exists without MX. Raises DNSError."""
        ...

    async def addresses(self, host: str) -> list[str]:
        """A and AAAA addresses, IPv4 first. [] when there are none. Raises DNSError."""
        ...


class DnsResolver(DNSClient):
    """The real thing: the one DNS client (`postvakt.dnsclient`), as `[dns]` says."""

    def __init__(
        self, nameservers: list[str] | None = None, port: int = 53, timeout: float = DNS_TIMEOUT
    ) -> None:
        """The system's resolvers (/etc/resolv.conf), unless `nameservers` are given."""
        servers = tuple(HostPort(ns, port) for ns in nameservers or ())
        super().__init__(make_resolver(DNSConfig(servers=servers, timeout=timeout)))


@dataclass(frozen=True)
class Destination:
    """The next hop for a domain: a key for concurrency limits and the hops."""

    key: str
    hops: tuple[Hop, ...]


def _literal(domain: str) -> str | None:
    """ "[192.0.2.1]" or "[IPv6:2001:db8::1]" -> the address; None otherwise."""
    if not (domain.startswith("[") and domain.endswith("]")):
        return None
    inner = domain[1:-1]
    if inner.lower().startswith("ipv6:"):
        inner = inner[5:]
    try:
        return str(ipaddress.ip_address(inner))
    except ValueError:
        return None


def _ip(host: str) -> str | None:
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return None


@functools.lru_cache(maxsize=256)
def _fixed_address(fixed: HostPort) -> Destination | None:
    """A route or smarthost given as an IP address: its destination, the same
    for every message (made once, not parsed and built again per message);
    None for a host name, which is looked up each time."""
    ip = _ip(fixed.host)
    return None if ip is None else Destination(str(fixed), (Hop(fixed.host, ip, fixed.port),))


async def _hops_for(resolver: Resolver, host: str, port: int) -> list[Hop]:
    ip = _ip(host)
    if ip is not None:
        return [Hop(host, ip, port)]
    return [Hop(host, a, port) for a in await resolver.addresses(host)]


async def destination(
    domain: str,
    delivery: DeliveryConfig,
    resolver: Resolver,
    port: int = SMTP_PORT,
    myself: str = "",
) -> Destination:
    """Routes first, then the smarthost, else MX. Raises DeliveryError.
    `port` is where MX hosts and address literals listen (25; tests change it);
    `myself` is our hostname, so that a backup MX never sends mail to itself."""
    literal = _literal(domain)
    if literal is not None:
        return Destination(domain, (Hop(literal, literal, port),))
    fixed = delivery.route_for(domain) or delivery.smarthost
    if fixed is not None:
        known = _fixed_address(fixed)
        if known is not None:
            return known
        try:
            hops = await _hops_for(resolver, fixed.host, fixed.port)
        except DNSError as e:
            raise DeliveryError(Reply(451, "4.4.3", f"route to {fixed}: {e}")) from None
        if not hops:
            raise DeliveryError(Reply(451, "4.4.3", f"route to {fixed}: host has no address"))
        return Destination(str(fixed), tuple(hops[:MAX_ADDRESSES]))
    return Destination(domain, tuple(await mx_hops(domain, resolver, port, myself)))


def order_mx(
    domain: str, records: list[tuple[int, str]], myself: str = ""
) -> list[tuple[int, str]]:
    """RFC 5321 §5.1: lowest preference first, equal ones in random order. When
    we are one of the MX hosts (a backup MX), only better ones are used."""
    groups: dict[int, list[str]] = {}
    for pref, exchange in records:
        groups.setdefault(pref, []).append(exchange)
    ordered: list[tuple[int, str]] = []
    for pref in sorted(groups):
        hosts = groups[pref]
        random.shuffle(hosts)
        ordered += [(pref, h) for h in hosts]
    mine = [p for p, h in ordered if myself and h.lower() == myself.lower()]
    if mine:
        ordered = [(p, h) for p, h in ordered if p < min(mine)]
        if not ordered:
            # Postfix: "mail for <domain> loops back to myself".
            raise DeliveryError(
                Reply(554, "5.4.6", f"mail for {domain} loops back to myself"), temporary=False
            )
    return ordered


async def mx_hops(
    domain: str, resolver: Resolver, port: int = SMTP_PORT, myself: str = ""
) -> list[Hop]:
    """MX hosts in preference order, their addresses; A/AAAA when there is no MX."""
    try:
        records = await resolver.mx(domain)
    except DNSError as e:
        if e.notfound:
            raise DeliveryError(
                Reply(550, "5.1.2", f"Host or domain name not found: {domain}"), temporary=False
            ) from None
        raise DeliveryError(Reply(451, "4.4.3", f"MX lookup for {domain} failed: {e}")) from None
    if any(exchange in ("", ".") for _, exchange in records):
        # RFC 7505 §3: a null MX says "this domain accepts no mail"; bounce now.
        raise DeliveryError(
            Reply(556, "5.1.10", f"Domain {domain} does not accept mail (null MX)"),
            temporary=False,
        )
    implicit = not records
    ordered = [] if implicit else order_mx(domain, records, myself)
    hosts = [(domain, port)] if implicit else [(exchange, port) for _, exchange in ordered]
    hops: list[Hop] = []
    errors: list[DNSError] = []
    for host, port in hosts:
        try:
            hops += await _hops_for(resolver, host, port)
        except DNSError as e:
            errors.append(e)
        if len(hops) >= MAX_ADDRESSES:
            break
    if hops:
        return hops[:MAX_ADDRESSES]
    if implicit and (not errors or errors[0].notfound):
        raise DeliveryError(
            Reply(550, "5.1.2", f"Host or domain name not found: {domain} has no MX, A or AAAA"),
            temporary=False,
        )
    why = str(errors[0]) if errors else "no MX host has an address"
    raise DeliveryError(Reply(451, "4.4.3", f"Cannot find a host for {domain}: {why}"))
