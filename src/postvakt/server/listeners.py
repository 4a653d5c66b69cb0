"""How a listener is opened: plain, implicit TLS, behind a PROXY header; bound here or handed down.

One place decides, for every [listen] address, which server object serves it:

- plain (25, 587, 110): asyncio's own server;
- every listener is an `Acceptor` (`server.accept`: counted from accept,
  refused cleanly over the limits, paused when descriptors run out);
- implicit TLS (465, 995): the acceptor runs and logs each handshake;
- a listener named in `[listen] proxy_protocol`: the acceptor reads the PROXY
  header first (`server.proxy`), then TLS for 465 and 995.

With `[server] workers` above 1 the parent binds every address (before any
privilege drop) and each worker gets its own socket per address, bound with
SO_REUSEPORT to the same port (`bind_all`), so the kernel spreads new
connections over the workers, and a restarted worker takes over the socket
(and the connections waiting in its backlog) of the one that died.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from postvakt.config import LISTENER_KINDS, Config, HostPort
from postvakt.server.accept import (
    BACKLOG,
    Acceptor,
    Connections,
    Family,
    Refused,
    Slot,
)

IMPLICIT_TLS = ("submissions", "pop3s")


@dataclass
class Opener:
    """Opens listeners for one process; `config` is read at each connection (SIGHUP)."""

    config: Callable[[], Config]
    # (kind, address as configured) -> the socket this process must serve it on.
    inherited: Mapping[tuple[str, str], socket.socket] = field(default_factory=dict)
    # Bind with SO_REUSEPORT (processes that each bind the same ports themselves).
    reuse_port: bool = False

    async def open(
        self,
        kind: str,
        hp: HostPort,
        factory: Callable[[Slot], asyncio.BaseProtocol],
        context: ssl.SSLContext | None,
        *,
        family: Family,
        connections: Connections,
        client_limit: Callable[[str], int],
        refusal: Callable[[Refused, str], bytes],
    ) -> Acceptor:
        """Every listener goes through the one accept path (`server.accept`)."""
        tls = context if kind in IMPLICIT_TLS else None
        if kind in IMPLICIT_TLS and tls is None:
            raise ValueError(f"[listen] {kind} needs a TLS context")
        proxied = kind in self.config().listen.proxy_protocol
        return await Acceptor.create(
            factory,
            hp.host,
            hp.port,
            kind=kind,
            family=family,
            connections=connections,
            client_limit=client_limit,
            refusal=refusal,
            # 465, 995: implicit TLS, the handshake runs (and fails, logged) in the acceptor.
            ssl_context=tls,
            reuse_port=self.reuse_port,
            backlog=BACKLOG,
            sock=self.inherited.get((kind, str(hp))),
            proxy_trusted=(lambda: self.config().listen.proxy_trusted) if proxied else None,
        )


def addresses(config: Config) -> list[tuple[str, HostPort]]:
    """Every (kind, address) to listen on, in a fixed order (the order fds are handed down)."""
    return [(kind, hp) for kind in LISTENER_KINDS for hp in getattr(config.listen, kind)]


def _bind_one(hp: HostPort, port: int) -> socket.socket:
    info = socket.getaddrinfo(
        hp.host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    s = socket.socket(info[0], socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if info[0] == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        s.bind(info[4][:2] if info[0] == socket.AF_INET else info[4])
        s.listen(BACKLOG)
        s.setblocking(False)
    except BaseException:
        s.close()
        raise
    return s


class BindError(Exception):
    def __init__(self, kind: str, address: HostPort, error: OSError) -> None:
        super().__init__(f"[listen] {kind} {address}: {error}")
        self.kind, self.address, self.error = kind, address, error


def bind_all(config: Config, workers: int) -> list[dict[tuple[str, str], socket.socket]]:
    """For each worker, one socket per listener address, all on the same port.

    Port 0 is resolved by the first bind; the others bind the port it got. On
    an error every socket bound so far is closed and a BindError names the
    listener for the caller to word.
    """
    out: list[dict[tuple[str, str], socket.socket]] = [{} for _ in range(workers)]
    try:
        for kind, hp in addresses(config):
            port = hp.port
            for i in range(workers):
                try:
                    s = _bind_one(hp, port)
                except OSError as e:
                    raise BindError(kind, hp, e) from None
                port = s.getsockname()[1]
                out[i][(kind, str(hp))] = s
    except BaseException:
        for per in out:
            for s in per.values():
                s.close()
        raise
    return out
