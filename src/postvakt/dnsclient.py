"""The one DNS client: `[dns]` -> an asyncio resolver, and the typed lookups
that MX routing, SPF, DKIM and DMARC make.

Every lookup in postvakt goes through `DNSClient.from_config`, so pointing
`[dns] servers` at a server of one's own (as the tests do) moves all of them.
Lookups are coroutines with a lifetime (`[dns] timeout`): they never block the
event loop. Failures are `DNSError`s that say whether the answer is final
(the name does not exist) or temporary (timeout, SERVFAIL, no server answered):
a caller turns the first into a permanent result and the second into a
temporary one, never the other way round.
"""

from __future__ import annotations

import functools

import dns.asyncresolver
import dns.exception
import dns.nameserver
import dns.resolver
import dns.reversename

from postvakt.config import DNSConfig


class DNSError(Exception):
    """A lookup failed. `notfound`: the name does not exist (NXDOMAIN), a final answer;
    otherwise the failure is temporary (timeout, SERVFAIL, refused)."""

    def __init__(self, name: str, notfound: bool, detail: str = "") -> None:
        super().__init__(f"{name}: {detail or ('not found' if notfound else 'lookup failed')}")
        self.name = name
        self.notfound = notfound

    @property
    def temporary(self) -> bool:
        return not self.notfound


def make_resolver(config: DNSConfig) -> dns.asyncresolver.Resolver:
    """A dnspython asyncio resolver for `[dns]`: its servers (else the system's), its timeout."""
    resolver = dns.asyncresolver.Resolver(configure=not config.servers)
    if config.servers:
        resolver.nameservers = [
            dns.nameserver.Do53Nameserver(hp.host, hp.port) for hp in config.servers
        ]
    resolver.lifetime = config.timeout
    # Each server gets a fair share of the lifetime before the next is asked.
    resolver.timeout = max(0.5, config.timeout / max(1, len(resolver.nameservers)))
    return resolver


class DNSClient:
    """Typed lookups over one resolver. [] means "the name exists, no such record"."""

    def __init__(self, resolver: dns.asyncresolver.Resolver) -> None:
        self._r = resolver

    @classmethod
    def from_config(cls, config: DNSConfig) -> DNSClient:
        return cls(make_resolver(config))

    async def query(self, name: str, rdtype: str) -> list[object]:
        try:
            answer = await self._r.resolve(name, rdtype, search=False)
        except dns.resolver.NXDOMAIN:
            raise DNSError(name, True) from None
        except dns.resolver.NoAnswer:
            return []
        except dns.resolver.LifetimeTimeout:
            raise DNSError(name, False, "timed out") from None
        except dns.resolver.NoNameservers:
            raise DNSError(name, False, "no server answered (SERVFAIL or refused)") from None
        except (dns.exception.DNSException, OSError) as e:
            raise DNSError(name, False, str(e) or type(e).__name__) from None
        return list(answer)

    async def txt(self, name: str) -> list[str]:
        """TXT records, each with its strings joined (RFC 7208 §3.3, RFC 6376 §3.6.2.2)."""
        out = []
        for rr in await self.query(name, "TXT"):
            strings: tuple[bytes, ...] = rr.strings  # type: ignore[attr-defined]
            out.append(b"".join(strings).decode("utf-8", "replace"))
        return out

    async def mx(self, domain: str) -> list[tuple[int, str]]:
        """(preference, exchange without the trailing dot; "" for the null MX ".")."""
        out = []
        for rr in await self.query(domain, "MX"):
            exchange = str(rr.exchange).rstrip(".")  # type: ignore[attr-defined]
            out.append((int(rr.preference), exchange))  # type: ignore[attr-defined]
        return out

    async def a(self, name: str) -> list[str]:
        return [str(rr) for rr in await self.query(name, "A")]

    async def aaaa(self, name: str) -> list[str]:
        return [str(rr) for rr in await self.query(name, "AAAA")]

    async def ptr(self, ip: str) -> list[str]:
        name = dns.reversename.from_address(ip).to_text()
        return [str(rr).rstrip(".") for rr in await self.query(name, "PTR")]

    async def addresses(self, host: str) -> list[str]:
        """A and AAAA addresses, IPv4 first. [] when there are none."""
        out: list[str] = []
        failure = None
        for lookup in (self.a, self.aaaa):
            try:
                out += await lookup(host)
            except DNSError as e:
                failure = e
        if not out and failure is not None:
            raise failure
        return out


@functools.lru_cache(maxsize=4)
def client_for(config: DNSConfig) -> DNSClient:
    """One client per `[dns]` setting, shared by every session of a process
    (the system's resolv.conf is read once, not per message); a reload with
    a new `[dns]` gets a new one."""
    return DNSClient.from_config(config)


__all__ = ["DNSClient", "DNSError", "client_for", "make_resolver"]
