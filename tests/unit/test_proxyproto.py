"""The PROXY protocol parser: the spec's examples, its edges, and fuzz."""

from __future__ import annotations

import ipaddress
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from postvakt.proxyproto import (
    MAX_HEADER_LENGTH,
    NEED_MORE,
    V1_MAX_LENGTH,
    V2_SIGNATURE,
    ProxyError,
    ProxyHeader,
    parse,
)


def v2(command: int, fam: int, payload: bytes) -> bytes:
    return V2_SIGNATURE + bytes([0x20 | command, fam]) + struct.pack("!H", len(payload)) + payload


def v2_inet(src: str, dst: str, sport: int, dport: int, tlvs: bytes = b"") -> bytes:
    block = (
        ipaddress.ip_address(src).packed
        + ipaddress.ip_address(dst).packed
        + struct.pack("!HH", sport, dport)
    )
    fam = 0x11 if ipaddress.ip_address(src).version == 4 else 0x21
    return v2(1, fam, block + tlvs)


# ---------------------------------------------------------------- version 1


@pytest.mark.parametrize(
    ("line", "source", "destination"),
    [
        (
            b"PROXY TCP4 192.0.2.7 198.51.100.1 56324 25\r\n",
            ("192.0.2.7", 56324),
            ("198.51.100.1", 25),
        ),
        (b"PROXY TCP6 2001:db8::7 2001:db8::1 1 587\r\n", ("2001:db8::7", 1), ("2001:db8::1", 587)),
        (
            b"PROXY TCP4 0.0.0.0 255.255.255.255 0 65535\r\n",
            ("0.0.0.0", 0),
            ("255.255.255.255", 65535),
        ),
    ],
)
def test_v1_tcp(line: bytes, source: tuple[str, int], destination: tuple[str, int]) -> None:
    got = parse(line + b"EHLO x\r\n")
    assert got == ProxyHeader(version=1, length=len(line), source=source, destination=destination)


def test_v1_unknown_is_a_health_check() -> None:
    assert parse(b"PROXY UNKNOWN\r\n") == ProxyHeader(version=1, length=15, local=True)
    got = parse(b"PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\nrest")
    assert isinstance(got, ProxyHeader) and got.local and got.source is None


@pytest.mark.parametrize(
    "line",
    [
        b"PROXY TCP4 192.0.2.7 198.51.100.1 56324  25\r\n",  # two spaces
        b"PROXY TCP4 192.0.2.7 198.51.100.1 56324\r\n",  # a port missing
        b"PROXY TCP4 2001:db8::7 198.51.100.1 1 25\r\n",  # IPv6 under TCP4
        b"PROXY TCP6 192.0.2.7 2001:db8::1 1 25\r\n",  # IPv4 under TCP6
        b"PROXY TCP4 192.0.2.07 198.51.100.1 1 25\r\n",  # a leading zero in the address
        b"PROXY TCP4 192.0.2.7 198.51.100.1 01 25\r\n",  # a leading zero in the port
        b"PROXY TCP4 192.0.2.7 198.51.100.1 65536 25\r\n",  # port out of range
        b"PROXY TCP4 192.0.2.7 198.51.100.1 -1 25\r\n",
        b"PROXY UDP4 192.0.2.7 198.51.100.1 1 25\r\n",
        b"PROXY tcp4 192.0.2.7 198.51.100.1 1 25\r\n",
        b"PROXY TCP6 fe80::1%eth0 2001:db8::1 1 25\r\n",
        b"PROXY TCP4 192.0.2.7\t198.51.100.1 1 25\r\n",
        b"PROXY TCP4 192.0.2.7 198.51.100.1 \xd9\xa1 25\r\n",  # a non-ASCII digit
    ],
)
def test_v1_malformed(line: bytes) -> None:
    assert isinstance(parse(line), ProxyError)


def test_v1_too_long_without_crlf() -> None:
    assert parse(b"PROXY TCP4 " + b"1" * 50) is NEED_MORE
    got = parse(b"PROXY TCP4 " + b"1" * (V1_MAX_LENGTH - 11))
    assert isinstance(got, ProxyError) and "longer" in got.reason


def test_v1_control_byte_refused_before_the_end() -> None:
    assert isinstance(parse(b"PROXY TCP4 1.2.3.4\n"), ProxyError)
    assert parse(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r") is NEED_MORE


def test_not_a_header() -> None:
    for data in (b"EHLO client.example\r\n", b"\x16\x03\x01\x02\x00", b"GET / HTTP/1.0\r\n"):
        got = parse(data)
        assert isinstance(got, ProxyError) and "no PROXY header" in got.reason


# ---------------------------------------------------------------- version 2


def test_v2_ipv4_with_tlvs() -> None:
    tlv = bytes([0x01, 0x00, 0x02]) + b"h2"  # PP2_TYPE_ALPN
    data = v2_inet("192.0.2.7", "198.51.100.1", 56324, 25, tlv)
    got = parse(data + b"\x16\x03\x01")
    assert got == ProxyHeader(
        version=2, length=len(data), source=("192.0.2.7", 56324), destination=("198.51.100.1", 25)
    )


def test_v2_ipv6() -> None:
    data = v2_inet("2001:db8::7", "2001:db8::1", 1, 465)
    assert parse(data) == ProxyHeader(
        version=2, length=52, source=("2001:db8::7", 1), destination=("2001:db8::1", 465)
    )


def test_v2_local_and_unspec_are_health_checks() -> None:
    assert parse(v2(0, 0x00, b"")) == ProxyHeader(version=2, length=16, local=True)
    assert parse(v2(0, 0x11, b"\0" * 12)) == ProxyHeader(version=2, length=28, local=True)
    assert parse(v2(1, 0x00, b"")) == ProxyHeader(version=2, length=16, local=True)


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (V2_SIGNATURE + bytes([0x11, 0x11]) + struct.pack("!H", 12) + b"\0" * 12, "version 1"),
        (v2(2, 0x11, b"\0" * 12), "command 2"),
        (v2(1, 0x11, b"\0" * 8), "address bytes"),
        (v2(1, 0x21, b"\0" * 12), "address bytes"),
        (v2(1, 0x12, b"\0" * 12), "transport 2"),
        (v2(1, 0x31, b"\0" * 216), "family 3"),
        (V2_SIGNATURE + bytes([0x21, 0x11]) + struct.pack("!H", 60000), "at most"),
        (b"\r\n\r\n\x00\r\nQUIT\r", "no PROXY header"),
    ],
)
def test_v2_malformed(data: bytes, words: str) -> None:
    got = parse(data)
    assert isinstance(got, ProxyError) and words in got.reason, got


def test_v2_waits_for_the_whole_block() -> None:
    data = v2_inet("192.0.2.7", "198.51.100.1", 1, 25)
    for i in range(len(data)):
        assert parse(data[:i]) is NEED_MORE, i
    assert isinstance(parse(data), ProxyHeader)


def test_v1_waits_byte_by_byte() -> None:
    line = b"PROXY TCP4 192.0.2.7 198.51.100.1 56324 25\r\n"
    for i in range(len(line)):
        assert parse(line[:i]) is NEED_MORE, i
    assert isinstance(parse(line), ProxyHeader)


# ---------------------------------------------------------------- fuzz


def _check(data: bytes) -> None:
    got = parse(data)
    assert got is NEED_MORE or isinstance(got, ProxyHeader | ProxyError)
    if isinstance(got, ProxyHeader):
        assert 0 < got.length <= min(len(data), MAX_HEADER_LENGTH)
        # The header is all that decided: the bytes after it change nothing.
        assert parse(data[: got.length]) == got
    if got is NEED_MORE:
        assert len(data) < MAX_HEADER_LENGTH


@given(st.binary(max_size=300))
def test_fuzz_any_bytes(data: bytes) -> None:
    _check(data)


@given(
    st.sampled_from([b"PROXY ", b"PROXY TCP4 ", b"PROXY TCP6 ", V2_SIGNATURE]),
    st.binary(max_size=200),
)
def test_fuzz_after_a_valid_start(start: bytes, rest: bytes) -> None:
    _check(start + rest)


@given(
    st.ip_addresses(v=4) | st.ip_addresses(v=6),
    st.integers(0, 65535),
    st.integers(0, 65535),
    st.binary(max_size=40),
    st.data(),
)
def test_fuzz_round_trip_and_splits(
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address,
    sport: int,
    dport: int,
    after: bytes,
    data: st.DataObject,
) -> None:
    dst = "198.51.100.1" if ip.version == 4 else "2001:db8::1"
    proto = "TCP4" if ip.version == 4 else "TCP6"
    for header in (
        f"PROXY {proto} {ip} {dst} {sport} {dport}\r\n".encode(),
        v2_inet(str(ip), dst, sport, dport),
    ):
        got = parse(header + after)
        assert isinstance(got, ProxyHeader)
        assert got.length == len(header)
        assert got.source == (str(ip), sport) and got.destination == (dst, dport)
        cut = data.draw(st.integers(0, len(header) - 1))
        assert parse(header[:cut]) is NEED_MORE
        # One byte changed anywhere: parsed, refused or waiting, never a traceback.
        at = data.draw(st.integers(0, len(header) - 1))
        flipped = (
            header[:at] + bytes([header[at] ^ data.draw(st.integers(1, 255))]) + header[at + 1 :]
        )
        _check(flipped + after)
