"""Listeners behind a load balancer: the PROXY protocol header before the protocol.

On a listener named in `[listen] proxy_protocol` every connection must begin
with a PROXY v1 or v2 header (`postvakt.proxyproto`), and only from an address
in `[listen] proxy_trusted`. The header is read here, on the accepted socket,
before any protocol object exists: the session is created afterwards, told the
client the header names (`Proxied`), and from then on every rule — networks,
clients, grants, limits, login failures, logs, Received: — sees that client.

What is refused, each with one log line and the connection closed before the
banner (a client must never talk to a listener that believes the wrong address):

    proxy refused listener=smtp local=192.0.2.1:25 proxy=198.51.100.9: not in [listen] proxy_trusted
    proxy refused listener=smtp local=192.0.2.1:25 proxy=10.0.0.5: no PROXY header within 5 s
    proxy refused listener=smtp local=192.0.2.1:25 proxy=10.0.0.5: PROXY v1 header ...

A v2 LOCAL or v1 UNKNOWN header (the balancer's own health check) is accepted;
the session then sees the balancer's address, as the spec asks.

The header is read without consuming a byte beyond it: bytes are looked at
with MSG_PEEK and taken only as far as the parser says the header reaches (its
NEED_MORE promises that every byte seen so far is header), so a TLS
ClientHello or a pipelined command right behind the header reaches the
session intact.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from postvakt import proxyproto
from postvakt.config import IPNetwork
from postvakt.net import client_address, in_networks
from postvakt.server.handshake import host_port

log = logging.getLogger("postvakt.proxy")

# How long the balancer has to send the header after connecting. HAProxy sends
# it with the connection's first bytes; a few seconds covers a loaded balancer,
# and a connection that sends nothing must not hold a slot for long.
HEADER_TIMEOUT = 5.0


@dataclass(frozen=True)
class Proxied:
    """Who a proxied connection stands for: the session uses `client`, logs `proxy`."""

    client: str  # the client's address from the header (the proxy's own for a health check)
    port: int
    proxy: str  # the balancer's address, as the socket sees it
    local: bool = False  # a health check (v2 LOCAL, v1 UNKNOWN)


class HeaderRefused(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def trusted(peer: str, networks: Sequence[IPNetwork]) -> bool:
    return in_networks(peer, networks)


async def _readable(loop: asyncio.AbstractEventLoop, fd: int) -> None:
    ready: asyncio.Future[None] = loop.create_future()

    def on_ready() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(fd, on_ready)
    try:
        await ready
    finally:
        loop.remove_reader(fd)


async def read_header(conn: socket.socket, timeout: float) -> proxyproto.ProxyHeader:
    """Take exactly the PROXY header off a non-blocking accepted socket."""
    loop = asyncio.get_running_loop()
    taken = b""

    async def read() -> proxyproto.ProxyHeader:
        nonlocal taken
        while True:
            await _readable(loop, conn.fileno())
            try:
                seen = conn.recv(proxyproto.MAX_HEADER_LENGTH - len(taken), socket.MSG_PEEK)
            except (BlockingIOError, InterruptedError):
                continue
            if not seen:
                raise HeaderRefused("closed before a complete PROXY header")
            result = proxyproto.parse(taken + seen)
            if isinstance(result, proxyproto.ProxyError):
                raise HeaderRefused(result.reason)
            if isinstance(result, proxyproto.ProxyHeader):
                rest = result.length - len(taken)
                if rest > 0:
                    conn.recv(rest)  # seen above, so it is there to take
                return result
            taken += conn.recv(len(seen))

    try:
        return await asyncio.wait_for(read(), timeout)
    except TimeoutError:
        raise HeaderRefused(f"no PROXY header within {timeout:g} s") from None
    except OSError as e:
        raise HeaderRefused(f"reading the PROXY header failed: {e.strerror or e}") from None


def with_peer(factory: Callable[[], asyncio.BaseProtocol], proxied: Proxied) -> Callable[[], Any]:
    """The session factory, with the session told whom the connection stands for."""

    def make() -> asyncio.BaseProtocol:
        protocol = factory()
        protocol.proxied = proxied  # type: ignore[attr-defined]
        return protocol

    return make


async def accept_header(
    conn: socket.socket, peer: str, kind: str, networks: Sequence[IPNetwork], timeout: float
) -> Proxied | None:
    """Check the balancer and take its header off an accepted socket: whom the
    connection stands for, or None when it is refused (logged; the caller closes)."""
    try:
        local = host_port(conn.getsockname())
    except OSError:
        return None
    where = f"listener={kind} local={local} proxy={peer}"
    if not trusted(peer, networks):
        log.warning("proxy refused %s: not in [listen] proxy_trusted", where)
        return None
    try:
        header = await read_header(conn, timeout)
    except HeaderRefused as e:
        log.warning("proxy refused %s: %s", where, e.reason)
        return None
    if header.source is None:
        log.debug("proxy health check %s version=%d", where, header.version)
        return Proxied(client=peer, port=0, proxy=peer, local=True)
    client = client_address(header.source)
    log.debug("proxy client=%s %s version=%d", client, where, header.version)
    return Proxied(client=client, port=header.source[1], proxy=peer)
