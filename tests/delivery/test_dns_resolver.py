"""DnsResolver (dnspython) against a tiny authoritative DNS server of our own
on loopback: real DNS packets, no real DNS."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import dns.flags
import dns.message
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import pytest

from postvakt.delivery import DeliveryError
from postvakt.delivery.resolver import DNSError, DnsResolver, mx_hops

ZONE: dict[tuple[str, str], list[str]] = {
    ("x.example.", "MX"): ["20 mx2.x.example.", "10 mx1.x.example."],
    ("mx1.x.example.", "A"): ["192.0.2.1"],
    ("mx2.x.example.", "A"): ["192.0.2.2"],
    ("mx2.x.example.", "AAAA"): ["2001:db8::2"],
    ("plain.example.", "A"): ["192.0.2.9"],
    ("nullmx.example.", "MX"): ["0 ."],
}
EXISTING = {name for name, _ in ZONE} | {"empty.example."}
SERVFAIL = {"broken.example."}


class DNSServer(asyncio.DatagramProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        q = dns.message.from_wire(data)
        r = dns.message.make_response(q)
        r.flags |= dns.flags.AA
        question = q.question[0]
        name = question.name.to_text()
        rtype = dns.rdatatype.to_text(question.rdtype)
        if name in SERVFAIL:
            r.set_rcode(dns.rcode.SERVFAIL)
        elif name not in EXISTING:
            r.set_rcode(dns.rcode.NXDOMAIN)
        elif (name, rtype) in ZONE:
            r.answer.append(
                dns.rrset.from_text(name, 300, dns.rdataclass.IN, rtype, *ZONE[(name, rtype)])
            )
        self.transport.sendto(r.to_wire(), addr)  # type: ignore[attr-defined]


def with_dns(body: Callable[[DnsResolver], Awaitable[object]]) -> object:
    async def go() -> object:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(DNSServer, local_addr=("127.0.0.1", 0))
        port = transport.get_extra_info("sockname")[1]
        try:
            return await body(DnsResolver(["127.0.0.1"], port=port, timeout=3))
        finally:
            transport.close()

    return asyncio.run(go())


def test_mx_and_addresses() -> None:
    async def body(r: DnsResolver) -> object:
        return (
            sorted(await r.mx("x.example")),
            await r.addresses("mx2.x.example"),
            await r.mx("plain.example"),
            await r.addresses("plain.example"),
        )

    mx, mx2, none, plain = with_dns(body)  # type: ignore[misc]
    assert mx == [(10, "mx1.x.example"), (20, "mx2.x.example")]
    assert mx2 == ["192.0.2.2", "2001:db8::2"]
    assert none == []  # the name exists, without MX
    assert plain == ["192.0.2.9"]


def test_errors() -> None:
    async def body(r: DnsResolver) -> list[DNSError]:
        out = []
        for name in ("nowhere.example", "broken.example"):
            try:
                await r.mx(name)
            except DNSError as e:
                out.append(e)
        return out

    nx, fail = with_dns(body)  # type: ignore[misc]
    assert nx.notfound and not fail.notfound


def test_mx_logic_over_real_dns_packets() -> None:
    async def body(r: DnsResolver) -> object:
        hops = await mx_hops("x.example", r)
        implicit = await mx_hops("plain.example", r)
        with pytest.raises(DeliveryError) as null:
            await mx_hops("nullmx.example", r)
        with pytest.raises(DeliveryError) as nx:
            await mx_hops("nowhere.example", r)
        return [str(h) for h in hops], [str(h) for h in implicit], null.value, nx.value

    hops, implicit, null, nx = with_dns(body)  # type: ignore[misc]
    assert hops == [
        "mx1.x.example[192.0.2.1]:25",
        "mx2.x.example[192.0.2.2]:25",
        "mx2.x.example[2001:db8::2]:25",
    ]
    assert implicit == ["plain.example[192.0.2.9]:25"]
    assert null.reply.enhanced == "5.1.10" and not null.temporary
    assert nx.reply.enhanced == "5.1.2" and not nx.temporary
