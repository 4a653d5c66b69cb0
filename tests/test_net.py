"""The one client-address normalizer: every form a socket, a header or a person gives."""

from __future__ import annotations

import ipaddress

import pytest

from postvakt.net import client_address, in_networks, parse_ip

NETS = [ipaddress.ip_network("192.0.2.0/24"), ipaddress.ip_network("2001:db8::/32")]


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("192.0.2.7", "192.0.2.7"),
        (" 192.0.2.7 ", "192.0.2.7"),
        ("::ffff:192.0.2.7", "192.0.2.7"),
        ("[2001:db8::7]", "2001:db8::7"),
        ("IPv6:2001:DB8::7", "2001:db8::7"),
        ("2001:0db8:0000::0007", "2001:db8::7"),
        ("fe80::1%eth0", "fe80::1"),
        ("mail.example", None),
        ("", None),
        ("999.1.1.1", None),
    ],
)
def test_parse_ip(text: str, want: str | None) -> None:
    ip = parse_ip(text)
    assert (str(ip) if ip is not None else None) == want


@pytest.mark.parametrize(
    ("peer", "want"),
    [
        (("::ffff:127.0.0.2", 25, 0, 0), "127.0.0.2"),
        (("::1", 25, 0, 0), "::1"),
        (["10.0.0.1", 1], "10.0.0.1"),
        ("/run/postvakt.sock", "/run/postvakt.sock"),
        (None, "?"),
        ((), "?"),
    ],
)
def test_client_address(peer: object, want: str) -> None:
    assert client_address(peer) == want


def test_client_address_missing_marker() -> None:
    assert client_address(None, missing="") == ""


@pytest.mark.parametrize(
    ("ip", "want"),
    [
        ("192.0.2.200", True),
        ("::ffff:192.0.2.200", True),
        ("2001:db8:1::1", True),
        ("198.51.100.1", False),
        ("not an address", False),
        ("", False),
        (None, False),
    ],
)
def test_in_networks(ip: str | None, want: bool) -> None:
    assert in_networks(ip, NETS) is want
