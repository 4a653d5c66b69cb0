"""The MX resolver over real DNS packets: NSD (Debian's authoritative server)
on loopback serving the test zones, asked through `[dns]`. No real DNS."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from dnsserver import NsdServer, nsd_available
from postvakt.config import DNSConfig, HostPort
from postvakt.delivery import DeliveryError
from postvakt.delivery.resolver import DNSError, DnsResolver, mx_hops
from postvakt.dnsclient import DNSClient

ZONES = {
    # The parent answers NXDOMAIN for names that do not exist, as a TLD would.
    "example": [],
    "x.example": [
        "@ IN MX 20 mx2.x.example.",
        "@ IN MX 10 mx1.x.example.",
        "mx1 IN A 192.0.2.1",
        "mx2 IN A 192.0.2.2",
        "mx2 IN AAAA 2001:db8::2",
    ],
    "plain.example": ["@ IN A 192.0.2.9"],
    "nullmx.example": ["@ IN MX 0 ."],
    "empty.example": [],
}
# No server answers for this zone (NSD refuses it): a temporary failure.
BROKEN = "broken.test"

_server: NsdServer | None = None


@pytest.fixture(scope="module", autouse=True)
def nsd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NsdServer]:
    global _server
    if not nsd_available():
        pytest.skip("nsd (Debian package nsd) is not installed")
    _server = NsdServer(tmp_path_factory.mktemp("dns"), ZONES)
    yield _server
    _server.cleanup()
    _server = None


def with_dns(body: Callable[[DNSClient], Awaitable[object]]) -> object:
    assert _server is not None
    client = DNSClient.from_config(
        DNSConfig(servers=(HostPort("127.0.0.1", _server.port),), timeout=3)
    )
    return asyncio.run(body(client))


def test_dns_resolver_keeps_its_constructor(tmp_path: Path) -> None:
    """The delivery code's resolver is the same client, pointed at given servers."""
    assert _server is not None
    r = DnsResolver(["127.0.0.1"], port=_server.port, timeout=3)
    assert asyncio.run(r.addresses("plain.example")) == ["192.0.2.9"]


def test_mx_and_addresses() -> None:
    async def body(r: DNSClient) -> object:
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
    async def body(r: DNSClient) -> list[DNSError]:
        out = []
        for name in ("nowhere.example", BROKEN):
            try:
                await r.mx(name)
            except DNSError as e:
                out.append(e)
        return out

    nx, fail = with_dns(body)  # type: ignore[misc]
    assert nx.notfound and not fail.notfound


def test_mx_logic_over_real_dns_packets() -> None:
    async def body(r: DNSClient) -> object:
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
