"""SPF, DKIM and DMARC checks against a real DNS server (NSD on loopback)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator

import pytest
from mailauth_support import require_nsd
from zones import OUTSIDE, OUTSIDE_IP, OutsideKeys, all_zones, message

from dnsserver import NsdServer
from postvakt.config import AuthChecksConfig, DNSConfig, HostPort
from postvakt.dnsclient import DNSClient
from postvakt.mailauth import dkimverify, dmarc, spf
from postvakt.mailauth.inbound import Inbound, check_inbound
from postvakt.mailauth.results import (
    DKIMResult,
    DMARCResult,
    SPFResult,
    authentication_results,
)


@pytest.fixture(scope="module")
def keys() -> OutsideKeys:
    return OutsideKeys.make(list(OUTSIDE))


@pytest.fixture(scope="module")
def nsd(tmp_path_factory: pytest.TempPathFactory, keys: OutsideKeys) -> Iterator[NsdServer]:
    require_nsd()
    server = NsdServer(tmp_path_factory.mktemp("dns"), all_zones(keys))
    yield server
    server.cleanup()


def client(nsd: NsdServer, timeout: float = 5.0) -> DNSClient:
    return DNSClient.from_config(
        DNSConfig(servers=(HostPort("127.0.0.1", nsd.port),), timeout=timeout)
    )


@pytest.mark.parametrize(
    ("domain", "expected"),
    [
        ("pass.example", SPFResult.PASS),
        ("fail.example", SPFResult.FAIL),
        ("softfail.example", SPFResult.SOFTFAIL),
        ("neutral.example", SPFResult.NEUTRAL),
        ("nospf.example", SPFResult.NONE),
        ("temp.example", SPFResult.TEMPERROR),
        ("perm.example", SPFResult.PERMERROR),
        ("viamx.example", SPFResult.PASS),
        ("nowhere.pass.example", SPFResult.NONE),
    ],
)
def test_spf_results(nsd: NsdServer, domain: str, expected: SPFResult) -> None:
    out = asyncio.run(spf.check_host(client(nsd), OUTSIDE_IP, domain, f"a@{domain}", "h"))
    assert out.result == expected, out.detail


def test_spf_helo_identity_passes_by_a_record(nsd: NsdServer) -> None:
    out = asyncio.run(
        spf.check_host(
            client(nsd), OUTSIDE_IP, "mail.fail.example", "postmaster@mail.fail.example", "x"
        )
    )
    assert out.result == SPFResult.PASS


def test_spf_another_address_fails_where_the_client_passes(nsd: NsdServer) -> None:
    out = asyncio.run(
        spf.check_host(client(nsd), "192.0.2.7", "pass.example", "a@pass.example", "h")
    )
    assert out.result == SPFResult.FAIL


def test_dns_timeout_is_temperror_not_fail() -> None:
    """A server that never answers: the SPF result is temporary."""
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 0))
    try:
        dns = DNSClient.from_config(
            DNSConfig(servers=(HostPort("127.0.0.1", silent.getsockname()[1]),), timeout=1.0)
        )
        out = asyncio.run(spf.check_host(dns, OUTSIDE_IP, "pass.example", "a@pass.example", "h"))
    finally:
        silent.close()
    assert out.result == SPFResult.TEMPERROR
    assert "timed out" in out.detail


def test_dkim_valid_broken_absent(nsd: NsdServer, keys: OutsideKeys) -> None:
    signed = keys.sign(message("a@reject.example", "bob@pv.test", "dk"), "reject.example")
    good = asyncio.run(dkimverify.verify(client(nsd), signed))
    broken = asyncio.run(dkimverify.verify(client(nsd), signed.replace(b"Hello.", b"Hullo.")))
    absent = asyncio.run(
        dkimverify.verify(client(nsd), message("a@reject.example", "bob@pv.test", "dk"))
    )
    assert [c.result for c in good] == [DKIMResult.PASS]
    assert good[0].domain == "reject.example" and good[0].selector == "s1"
    assert [c.result for c in broken] == [DKIMResult.FAIL]
    assert absent == ()


def test_dkim_key_not_published_is_permerror(nsd: NsdServer, keys: OutsideKeys) -> None:
    signed = keys.sign(message("a@reject.example", "bob@pv.test", "dk"), "reject.example")
    other = signed.replace(b"s=s1;", b"s=s9;")
    [check] = asyncio.run(dkimverify.verify(client(nsd), other))
    assert check.result == DKIMResult.PERMERROR and "s9._domainkey" in check.detail


def test_dkim_key_lookup_refused_is_temperror(nsd: NsdServer, keys: OutsideKeys) -> None:
    signed = keys.sign(message("a@reject.example", "bob@pv.test", "dk"), "reject.example")
    elsewhere = signed.replace(b"d=reject.example", b"d=unserved.test")
    [check] = asyncio.run(dkimverify.verify(client(nsd), elsewhere))
    assert check.result == DKIMResult.TEMPERROR


@pytest.mark.parametrize(
    ("from_domain", "signed_by", "expected", "policy"),
    [
        ("reject.example", "reject.example", DMARCResult.PASS, "reject"),
        ("reject.example", None, DMARCResult.FAIL, "reject"),
        ("quarantine.example", None, DMARCResult.FAIL, "quarantine"),
        ("monitor.example", None, DMARCResult.FAIL, "none"),
        # A subdomain without a record of its own falls under the parent's (tree walk)
        # and is aligned with its parent's signature (relaxed).
        ("news.reject.example", "reject.example", DMARCResult.PASS, "reject"),
        # SPF passes and is aligned.
        ("pass.example", None, DMARCResult.PASS, "reject"),
        ("nospf.example", None, DMARCResult.NONE, None),
        # A signature of another organization does not align.
        ("reject.example", "monitor.example", DMARCResult.FAIL, "reject"),
    ],
)
def test_dmarc(
    nsd: NsdServer,
    keys: OutsideKeys,
    from_domain: str,
    signed_by: str | None,
    expected: DMARCResult,
    policy: str | None,
) -> None:
    msg = message(f"a@{from_domain}", "bob@pv.test", "dm")
    if signed_by is not None:
        msg = keys.sign(msg, signed_by)
    modes = AuthChecksConfig(dmarc_reject="reject", spf_fail="warn")
    sender = f"a@{from_domain}"
    results = asyncio.run(
        check_inbound(
            client(nsd),
            modes,
            Inbound(OUTSIDE_IP, "mail.pass.example", sender, msg, (from_domain,)),
        )
    )
    assert results.dmarc is not None
    assert results.dmarc.result == expected, results.dmarc.detail
    assert results.dmarc.policy == policy


def test_dmarc_lookup_failure_is_temperror(nsd: NsdServer) -> None:
    out = asyncio.run(dmarc.check(client(nsd), ["x.unserved.test"], None, ()))
    assert out.result == DMARCResult.TEMPERROR


def test_authentication_results_header(nsd: NsdServer, keys: OutsideKeys) -> None:
    msg = keys.sign(message("a@reject.example", "bob@pv.test", "ar"), "reject.example")
    modes = AuthChecksConfig(dmarc_reject="warn", spf_fail="warn")
    results = asyncio.run(
        check_inbound(
            client(nsd),
            modes,
            Inbound(OUTSIDE_IP, "mail.pass.example", "a@reject.example", msg, ("reject.example",)),
        )
    )
    header = authentication_results("mx.pv.test", results)
    assert header.startswith("mx.pv.test; spf=fail ")
    assert "smtp.mailfrom=a@reject.example" in header
    assert "spf=pass" in header and "smtp.helo=mail.pass.example" in header
    assert "dkim=pass" in header and "header.d=reject.example header.s=s1 header.b=" in header
    assert "dmarc=pass (p=reject" in header and "header.from=reject.example" in header
