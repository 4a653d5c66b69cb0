"""Reading the PROXY header off a real socket: exactly the header, nothing after it."""

from __future__ import annotations

import asyncio
import socket

import pytest

from postvakt.config import parse_network
from postvakt.server.proxy import HeaderRefused, read_header, trusted

V1 = b"PROXY TCP4 192.0.2.7 198.51.100.1 56324 25\r\n"
V2_LOCAL = b"\r\n\r\n\x00\r\nQUIT\n\x20\x00\x00\x00"


async def _read(chunks: list[bytes], timeout: float = 10.0) -> tuple[object, bytes]:
    """Send `chunks` (pausing between them) and read the header; then what is left."""
    server, client = socket.socketpair()
    server.setblocking(False)
    try:

        async def send() -> None:
            for c in chunks:
                client.sendall(c)
                await asyncio.sleep(0.05)

        sender = asyncio.ensure_future(send())
        try:
            header: object = await read_header(server, timeout)
        except HeaderRefused as e:
            header = e
        await sender
        client.shutdown(socket.SHUT_WR)
        rest = b""
        loop = asyncio.get_running_loop()
        while True:
            chunk = await loop.sock_recv(server, 4096)
            if not chunk:
                break
            rest += chunk
        return header, rest
    finally:
        server.close()
        client.close()


def test_bytes_behind_the_header_stay_for_the_session() -> None:
    header, rest = asyncio.run(_read([V1 + b"EHLO pipelined.example\r\n"]))
    assert getattr(header, "source", None) == ("192.0.2.7", 56324)
    assert rest == b"EHLO pipelined.example\r\n"


def test_a_header_in_pieces_is_waited_for() -> None:
    pieces = [V1[:3], V1[3:20], V1[20:-1], V1[-1:] + b"\x16\x03\x01"]
    header, rest = asyncio.run(_read(pieces))
    assert getattr(header, "version", None) == 1
    assert rest == b"\x16\x03\x01"


def test_v2_local_then_protocol() -> None:
    header, rest = asyncio.run(_read([V2_LOCAL[:5], V2_LOCAL[5:] + b"QUIT\r\n"]))
    assert getattr(header, "local", None) is True
    assert rest == b"QUIT\r\n"


@pytest.mark.parametrize(
    ("chunks", "reason"),
    [
        ([b"EHLO x\r\n"], "no PROXY header"),
        ([b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n"], "PROXY v1 header"),
        ([b"PROXY TCP4 1.2"], "closed before a complete PROXY header"),
    ],
)
def test_refusals_carry_a_reason(chunks: list[bytes], reason: str) -> None:
    async def run() -> object:
        server, client = socket.socketpair()
        server.setblocking(False)
        try:
            for c in chunks:
                client.sendall(c)
            client.shutdown(socket.SHUT_WR)
            try:
                return await read_header(server, 10)
            except HeaderRefused as e:
                return e
        finally:
            server.close()
            client.close()

    got = asyncio.run(run())
    assert isinstance(got, HeaderRefused) and reason in got.reason, got


def test_silence_times_out() -> None:
    header, _ = asyncio.run(_read([], timeout=0.2))
    assert isinstance(header, HeaderRefused) and "within 0.2 s" in header.reason


def test_trusted_networks() -> None:
    nets = [parse_network("10.0.0.0/8", "t", "k"), parse_network("2001:db8::/64", "t", "k")]
    assert trusted("10.1.2.3", nets)
    assert trusted("::ffff:10.1.2.3", nets)
    assert trusted("2001:db8::5", nets)
    assert not trusted("192.0.2.1", nets)
    assert not trusted("not-an-address", nets)
    assert not trusted("10.1.2.3", [])
