"""Where mail goes: routes, smarthost, MX order, fallbacks, null MX. A stub
resolver stands in for DNS; the SMTP peers are real, on loopback."""

from __future__ import annotations

import asyncio

import pytest
from smtp_peer import Peer

from postvakt import config as C
from postvakt.delivery import DeliveryError
from postvakt.delivery.remote import RemoteDelivery
from postvakt.delivery.resolver import DNSError, destination, mx_hops
from postvakt.delivery.smtpclient import MailParams, RcptParams
from postvakt.delivery.source import MessageSource

MSG = MessageSource.from_bytes(b"Subject: x\r\n\r\nbody\r\n")


class StubResolver:
    """DNS as a dict: name -> MX list / address list; listed names are NXDOMAIN
    or SERVFAIL."""

    def __init__(
        self,
        mx: dict[str, list[tuple[int, str]]] | None = None,
        a: dict[str, list[str]] | None = None,
        nxdomain: tuple[str, ...] = (),
        servfail: tuple[str, ...] = (),
    ) -> None:
        self._mx = mx or {}
        self._a = a or {}
        self.nxdomain = nxdomain
        self.servfail = servfail
        self.queries: list[tuple[str, str]] = []

    def _check(self, name: str) -> None:
        if name in self.nxdomain:
            raise DNSError(name, True)
        if name in self.servfail:
            raise DNSError(name, False, "SERVFAIL")

    async def mx(self, domain: str) -> list[tuple[int, str]]:
        self.queries.append(("MX", domain))
        self._check(domain)
        return self._mx.get(domain, [])

    async def addresses(self, host: str) -> list[str]:
        self.queries.append(("A", host))
        self._check(host)
        if host not in self._a and host not in self._mx:
            raise DNSError(host, True)
        return self._a.get(host, [])


def cfg(**delivery: object) -> C.Config:
    return C.from_dict(
        {
            "hostname": "mx.pv.test",
            "data_dir": "/nonexistent",
            "domains": {"local": ["pv.test"]},
            "delivery": delivery,
        }
    )


def hops(domain: str, resolver: StubResolver, **delivery: object) -> list[str]:
    d = asyncio.run(destination(domain, cfg(**delivery).delivery, resolver))
    return [f"{h.host}/{h.address}:{h.port}" for h in d.hops]


def test_mx_in_preference_order() -> None:
    r = StubResolver(
        mx={"x.example": [(20, "mx2.x.example"), (10, "mx1.x.example"), (30, "mx3.x.example")]},
        a={
            "mx1.x.example": ["192.0.2.1"],
            "mx2.x.example": ["192.0.2.2", "2001:db8::2"],
            "mx3.x.example": ["192.0.2.3"],
        },
    )
    assert hops("x.example", r) == [
        "mx1.x.example/192.0.2.1:25",
        "mx2.x.example/192.0.2.2:25",
        "mx2.x.example/2001:db8::2:25",
        "mx3.x.example/192.0.2.3:25",
    ]


def test_mx_host_that_does_not_resolve_is_skipped() -> None:
    r = StubResolver(
        mx={"x.example": [(10, "gone.x.example"), (20, "mx2.x.example")]},
        a={"mx2.x.example": ["192.0.2.2"]},
    )
    assert hops("x.example", r) == ["mx2.x.example/192.0.2.2:25"]


def test_no_mx_falls_back_to_a_and_aaaa() -> None:
    r = StubResolver(a={"x.example": ["192.0.2.9", "2001:db8::9"]})
    assert hops("x.example", r) == ["x.example/192.0.2.9:25", "x.example/2001:db8::9:25"]
    assert r.queries == [("MX", "x.example"), ("A", "x.example")]


@pytest.mark.parametrize("records", [[(0, "")], [(0, ".")]])
def test_null_mx_bounces_at_once(records: list[tuple[int, str]]) -> None:
    r = StubResolver(mx={"x.example": records})
    with pytest.raises(DeliveryError) as e:
        asyncio.run(mx_hops("x.example", r))
    assert not e.value.temporary
    assert (e.value.reply.code, e.value.reply.enhanced) == (556, "5.1.10")
    assert ("A", "x.example") not in r.queries


def test_nxdomain_is_permanent_servfail_is_temporary() -> None:
    with pytest.raises(DeliveryError) as e:
        asyncio.run(mx_hops("x.example", StubResolver(nxdomain=("x.example",))))
    assert not e.value.temporary and e.value.reply.enhanced == "5.1.2"
    with pytest.raises(DeliveryError) as e:
        asyncio.run(mx_hops("x.example", StubResolver(servfail=("x.example",))))
    assert e.value.temporary and e.value.reply.enhanced == "4.4.3"


def test_no_mx_and_no_address_is_permanent() -> None:
    with pytest.raises(DeliveryError) as e:
        asyncio.run(mx_hops("x.example", StubResolver(mx={"x.example": []})))
    assert not e.value.temporary


def test_mx_hosts_without_addresses_is_temporary() -> None:
    r = StubResolver(mx={"x.example": [(10, "mx.x.example")]}, servfail=("mx.x.example",))
    with pytest.raises(DeliveryError) as e:
        asyncio.run(mx_hops("x.example", r))
    assert e.value.temporary


def test_route_then_smarthost_then_mx() -> None:
    r = StubResolver(
        mx={"x.example": [(10, "mx.x.example")]},
        a={
            "mx.x.example": ["192.0.2.1"],
            "relay.isp.example": ["192.0.2.50"],
            "y.example": ["192.0.2.60"],
        },
    )
    routes = {"x.example": "127.0.0.1:2600"}
    assert hops("x.example", r, routes=routes, smarthost="relay.isp.example:587") == [
        "127.0.0.1/127.0.0.1:2600"
    ]
    assert hops("x.example", r, smarthost="relay.isp.example:587") == [
        "relay.isp.example/192.0.2.50:587"
    ]
    assert hops("y.example", r, routes=routes) == ["y.example/192.0.2.60:25"]  # not routed
    assert hops("x.example", r) == ["mx.x.example/192.0.2.1:25"]


def test_address_literal_needs_no_dns() -> None:
    r = StubResolver()
    assert hops("[192.0.2.7]", r) == ["192.0.2.7/192.0.2.7:25"]
    assert hops("[IPv6:2001:db8::7]", r) == ["2001:db8::7/2001:db8::7:25"]
    assert r.queries == []


def test_delivery_falls_back_to_next_mx_when_first_is_down() -> None:
    """mx1 resolves to 127.0.0.3, where nothing listens; mx2 to the peer."""

    async def go() -> tuple[Peer, list[str], list[int]]:
        peer = await Peer().start("127.0.0.1")
        r = StubResolver(
            mx={"x.example": [(10, "mx1.x.example"), (20, "mx2.x.example")]},
            a={"mx1.x.example": ["127.0.0.3"], "mx2.x.example": ["127.0.0.1"]},
        )
        rd = RemoteDelivery(cfg(), r, mx_port=peer.port)
        rd.start()
        try:
            res = await rd.deliver(
                "x.example", MailParams("a@pv.test", 10), [RcptParams("b@x.example")], MSG
            )
        finally:
            await rd.close()
            await peer.close()
        return peer, [x.relay for x in res], [x.reply.code for x in res]

    peer, relays, codes = asyncio.run(go())
    assert codes == [250]
    assert relays == [f"mx2.x.example[127.0.0.1]:{peer.port}"]
    assert len(peer.transactions) == 1


def test_delivery_all_mx_down_is_temporary() -> None:
    async def go() -> list[int]:
        r = StubResolver(
            mx={"x.example": [(10, "mx1.x.example")]}, a={"mx1.x.example": ["127.0.0.3"]}
        )
        rd = RemoteDelivery(cfg(connect_timeout=2), r, mx_port=9)
        res = await rd.deliver(
            "x.example", MailParams("a@pv.test", 10), [RcptParams("b@x.example")], MSG
        )
        await rd.close()
        return [x.reply.code for x in res]

    assert asyncio.run(go()) == [451]


def test_equal_preferences_are_tried_in_random_order() -> None:
    r = StubResolver(
        mx={
            "x.example": [
                (10, "a.x.example"),
                (10, "b.x.example"),
                (10, "c.x.example"),
                (20, "z.x.example"),
            ]
        },
        a={h: ["192.0.2.1"] for h in ("a.x.example", "b.x.example", "c.x.example", "z.x.example")},
    )
    firsts = set()
    for _ in range(60):
        order = [h.split("/")[0] for h in hops("x.example", r)]
        assert sorted(order[:3]) == ["a.x.example", "b.x.example", "c.x.example"]
        assert order[3] == "z.x.example"  # a worse preference always comes later
        firsts.add(order[0])
    assert len(firsts) > 1


def test_backup_mx_uses_only_better_hosts_and_never_itself() -> None:
    r = StubResolver(
        mx={"x.example": [(10, "primary.x.example"), (20, "MX.pv.test"), (30, "worse.x.example")]},
        a={
            "primary.x.example": ["192.0.2.1"],
            "mx.pv.test": ["127.0.0.1"],
            "worse.x.example": ["192.0.2.3"],
        },
    )
    d = asyncio.run(mx_hops("x.example", r, myself="mx.pv.test"))
    assert [h.host for h in d] == ["primary.x.example"]
    alone = StubResolver(mx={"x.example": [(10, "mx.pv.test")]}, a={"mx.pv.test": ["127.0.0.1"]})
    with pytest.raises(DeliveryError) as e:
        asyncio.run(mx_hops("x.example", alone, myself="mx.pv.test"))
    assert e.value.reply.enhanced == "5.4.6" and "loops back to myself" in e.value.reply.text
