"""Delivery over IPv6: an MX whose only address is an AAAA record, and an IPv6
address literal (`v@[IPv6:::1]`), both ending at a real SMTP peer on [::1].
DNS is NSD on loopback serving the test zones; no real DNS.
"""

from __future__ import annotations

import asyncio
import smtplib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from smtp_peer import Peer

from dnsserver import NsdServer, nsd_available
from postvakt import config as C
from postvakt.delivery.remote import RemoteDelivery
from postvakt.delivery.smtpclient import MailParams, RcptParams
from postvakt.delivery.source import MessageSource
from postvakt.dnsclient import DNSClient
from support import LOCAL_DOMAIN, Running, SmtpSink, base_config, to_toml

MSG_BYTES = b"Subject: over ipv6\r\n\r\nbody\r\n"
MSG = MessageSource.from_bytes(MSG_BYTES)
ZONES = {
    "example": [],
    # far.example's one MX has only an AAAA record: ::1.
    "far.example": ["@ IN MX 10 mx6.far.example.", "mx6 IN AAAA ::1"],
}


@pytest.fixture(scope="module")
def nsd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NsdServer]:
    if not nsd_available():
        pytest.skip("nsd (Debian package nsd) is not installed")
    server = NsdServer(tmp_path_factory.mktemp("dns"), ZONES)
    yield server
    server.cleanup()


def cfg(nsd: NsdServer) -> C.Config:
    return C.from_dict(
        {
            "hostname": "mx.pv.test",
            "data_dir": "/nonexistent",
            "domains": {"local": [LOCAL_DOMAIN]},
            "dns": {"servers": [nsd.server]},
        }
    )


def deliver(nsd: NsdServer, domain: str, rcpt: str) -> tuple[Peer, list[str], list[int]]:
    async def go() -> tuple[Peer, list[str], list[int]]:
        peer = await Peer().start("::1")
        config = cfg(nsd)
        rd = RemoteDelivery(config, DNSClient.from_config(config.dns), mx_port=peer.port)
        rd.start()
        try:
            res = await rd.deliver(
                domain, MailParams("a@pv.test", len(MSG_BYTES)), [RcptParams(rcpt)], MSG
            )
        finally:
            await rd.close()
            await peer.close()
        return peer, [x.relay for x in res], [x.reply.code for x in res]

    return asyncio.run(go())


def test_mx_with_only_an_aaaa_record(nsd: NsdServer) -> None:
    peer, relays, codes = deliver(nsd, "far.example", "b@far.example")
    assert codes == [250]
    assert relays == [f"mx6.far.example[::1]:{peer.port}"]
    assert [t.rcpts for t in peer.transactions] == [["RCPT TO:<b@far.example>"]]


def test_ipv6_address_literal(nsd: NsdServer) -> None:
    peer, relays, codes = deliver(nsd, "[IPv6:::1]", "b@[IPv6:::1]")
    assert codes == [250]
    assert relays == [f"::1[::1]:{peer.port}"]
    assert [t.rcpts for t in peer.transactions] == [["RCPT TO:<b@[IPv6:::1]>"]]


def test_serve_relays_to_an_aaaa_host(tmp_path: Path, nsd: NsdServer) -> None:
    """The real server: our network relays to far.example, routed by name to a
    host that has only an AAAA record; smtp-sink listens on [::1]."""
    sink = SmtpSink(tmp_path / "sink", host="::1")
    data_dir = tmp_path / "data"
    cfg_path = tmp_path / "postvakt.toml"
    cfg_path.write_text(
        to_toml(
            base_config(
                data_dir,
                dns={"servers": [nsd.server]},
                delivery={
                    "routes": {
                        "far.example": f"mx6.far.example:{sink.port}",
                        "lit.example": sink.address,
                    }
                },
            )
        )
    )
    srv = Running(cfg_path, data_dir).start()
    try:
        with smtplib.SMTP("127.0.0.1", srv.port("smtp"), timeout=30) as s:
            s.sendmail(f"p@{LOCAL_DOMAIN}", ["b@far.example"], "Subject: aaaa-route\r\n\r\nx\r\n")
            s.sendmail(
                f"p@{LOCAL_DOMAIN}", ["c@lit.example"], "Subject: literal-route\r\n\r\nx\r\n"
            )
        got = sink.wait_for(2)
        assert any("aaaa-route" in m for m in got) and any("literal-route" in m for m in got)
        deadline = time.monotonic() + 30
        while "relay=mx6.far.example[::1]" not in srv.log() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert f"to=<b@far.example> relay=mx6.far.example[::1]:{sink.port}" in srv.log()
        assert f"to=<c@lit.example> relay=::1[::1]:{sink.port}" in srv.log()
    finally:
        srv.stop()
        sink.stop()
