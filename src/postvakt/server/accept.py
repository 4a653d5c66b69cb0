"""The one accept path of every listener (25, 587, 465, 110, 995).

House rules:
- A connection counts from the moment `accept()` returns it, before any TLS
  handshake and before a protocol object exists, until it is closed. A client
  cannot hold more sockets than the limits allow by never finishing (or never
  starting) a handshake.
- At accept, in this order: the process's cap (`[server] max_connections`,
  kept below the descriptor limit), then the client address's count on the
  listener's family (SMTP: 25, 587 and 465 together; POP3: 110 and 995). A
  refused connection on a plaintext listener gets one line it can read
  (`421 4.7.0 ...` on SMTP, `-ERR [SYS/TEMP] ...` on POP3) and is closed; on an
  implicit-TLS listener it is closed at once (nothing can be read before a
  handshake, and a handshake is what a flood wants us to spend).
- A protocol is made by `factory(slot)` and calls `slot.release()` when its
  connection is gone; the accept path releases the slot itself when the
  connection ends before the protocol ever had it (a failed handshake).
  `release()` may be called any number of times.
- Out of descriptors (EMFILE, ENFILE; or of kernel memory): every listener of
  the process stops accepting (the kernel keeps waiting clients in the
  backlog), one warning line is logged, and accepting resumes as soon as one
  of our connections closes, or after ACCEPT_RETRY_DELAY. When accepts have
  worked for EPISODE_QUIET, one line says how many failed meanwhile. Never one line per failure:
  a listening socket stays readable, and a log per readiness is a flood.
- Implicit-TLS handshakes end within HANDSHAKE_TIMEOUT of accept, as
  Postfix's and Dovecot's do (about 10 s); a failed one is one log line
  (`postvakt.server.handshake`).
"""

from __future__ import annotations

import asyncio
import enum
import errno
import logging
import os
import resource
import socket
import ssl
import time
from collections.abc import Callable, Sequence
from typing import Any, Literal

from postvakt import metrics
from postvakt.config import IPNetwork
from postvakt.net import IPV6_PREFIX, client_address, client_key, in_networks
from postvakt.server.handshake import (
    HANDSHAKE_TIMEOUT,
    Listener,
    host_port,
    log_failure,
    peek,
)
from postvakt.server.proxy import HEADER_TIMEOUT, accept_header, with_peer

log = logging.getLogger("postvakt.accept")

# Which per-client count a listener adds to: SMTP's ports share one, POP3's another.
Family = Literal["smtp", "pop3"]
ClientKey = tuple[Family, str]

# Connections taken per readiness of a listening socket before others get a turn.
ACCEPT_BATCH = 64
# Out of descriptors and none of ours closed: try again after this long (asyncio's own delay).
ACCEPT_RETRY_DELAY = 1.0
# An out-of-descriptors episode is over after this long without a failed
# accept: at the limit, each close lets one accept through before the next
# fails, and a line each way per close would be the flood all over again.
EPISODE_QUIET = 5.0
# Descriptors kept free of connections for everything else a process opens:
# spool files, the user database, logs, the queue manager's pipe, TLS peeks.
# At least this many, or an eighth of the limit when that is more.
DESCRIPTOR_RESERVE = 64
# Handshakes whose first bytes are peeked at (for the failure log line) at once:
# a peek holds a second descriptor, so a flood of idle TLS sockets must not
# double what the connections hold. Past this, a failure's line lacks `sent`.
MAX_PEEKS = DESCRIPTOR_RESERVE // 2
# How long the listen queue may grow while the process is busy (as before: 1024).
BACKLOG = 1024
# accept() errors that concern only the one connection (Linux passes on the
# new socket's pending network errors, accept(2)): skip it, take the next.
TRANSIENT_ACCEPT_ERRORS = frozenset(
    {
        errno.ECONNABORTED,
        errno.EPROTO,
        errno.ENETDOWN,
        errno.ENOPROTOOPT,
        errno.EHOSTDOWN,
        errno.ENONET,
        errno.EHOSTUNREACH,
        errno.EOPNOTSUPP,
        errno.ENETUNREACH,
        errno.EPERM,
    }
)


class Refused(enum.Enum):
    """Why a connection was refused at accept."""

    PROCESS = "process"  # the process holds [server] max_connections
    CLIENT = "client"  # the address holds its per-client limit on this family


def raise_descriptor_limit() -> int:
    """Raise RLIMIT_NOFILE's soft limit to the hard one; return the soft limit now in force.

    A server holds one descriptor per client: the distribution's default soft
    limit (often 1024) is too small, and the hard limit is what the admin allows.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as e:
            log.warning("could not raise the descriptor limit from %d to %d: %s", soft, target, e)
        else:
            soft = target
    return soft


def client_limit(ip: str, configured: int, networks: Sequence[IPNetwork]) -> int:
    """A client address's connection cap on one family (0: none); `[relay] networks` are exempt."""
    return 0 if in_networks(ip, networks) else configured


def connection_limit(configured: int, descriptors: int) -> int:
    """The process's connection cap: `[server] max_connections`, or (0) below the descriptors.

    A configured value is kept as given (the admin may know better), with a
    warning when the descriptor limit cannot hold it.
    """
    safe = max(1, descriptors - max(DESCRIPTOR_RESERVE, descriptors // 8))
    if configured <= 0:
        return safe
    if configured > safe:
        log.warning(
            "[server] max_connections = %d is more than the descriptor limit (%d) leaves room"
            " for (%d): past that, accepting pauses until descriptors free up",
            configured,
            descriptors,
            safe,
        )
    return configured


class Slot:
    """One accepted connection's place in the counts, held until `release()`."""

    __slots__ = ("_connections", "family", "ip", "key", "_held")

    def __init__(self, connections: Connections, family: Family, ip: str, key: ClientKey) -> None:
        self._connections = connections
        self.family = family
        self.ip = ip
        # What the client counts under: its address, or its IPv6 network ([limits] ipv6_prefix).
        self.key = key
        self._held = True

    def release(self) -> None:
        if self._held:
            self._held = False
            self._connections._release(self)


class Connections:
    """Every connection of this process, counted from accept until closed,
    and the accept pause when descriptors run out (shared by every listener)."""

    def __init__(
        self,
        limit: int,
        clock: Callable[[], float] = time.monotonic,
        ipv6_prefix: int = IPV6_PREFIX,
    ) -> None:
        self.limit = limit
        self._clock = clock
        # IPv6 clients count by their network, as limits and login failures do: one
        # subscriber's /64 holds 2^64 addresses, each one a fresh per-client count otherwise.
        self.ipv6_prefix = ipv6_prefix
        self.total = 0
        self._per_client: dict[ClientKey, int] = {}
        self._acceptors: set[Acceptor] = set()
        # Listeners stopped for lack of descriptors, and the retry that restarts them.
        self._paused = False
        self._retry: asyncio.TimerHandle | None = None
        # An out-of-descriptors episode: when it began, accepts that failed, the last failure.
        self._episode_since: float | None = None
        self._failed_accepts = 0
        self._last_failure = 0.0
        # A process-cap episode: refusals since the cap was reached.
        self._capped = 0
        # Implicit-TLS handshakes peeking at their first bytes now (MAX_PEEKS).
        self.peeking = 0

    def _key(self, family: Family, ip: str) -> ClientKey:
        return (family, client_key(ip, self.ipv6_prefix))

    def count(self, family: Family, ip: str) -> int:
        return self._per_client.get(self._key(family, ip), 0)

    @property
    def paused(self) -> bool:
        return self._paused

    @property
    def in_episode(self) -> bool:
        return self._episode_since is not None

    def admit(self, family: Family, ip: str, client_limit: int) -> Slot | Refused:
        """A slot for a connection just accepted, or why not (`client_limit` 0: none)."""
        if self.total >= self.limit:
            if not self._capped:
                log.warning(
                    "connection cap reached: %d connections ([server] max_connections);"
                    " refusing new ones",
                    self.total,
                )
            self._capped += 1
            return Refused.PROCESS
        key = self._key(family, ip)
        if client_limit > 0 and self._per_client.get(key, 0) >= client_limit:
            return Refused.CLIENT
        self.total += 1
        self._per_client[key] = self._per_client.get(key, 0) + 1
        return Slot(self, family, ip, key)

    def rekey(self, slot: Slot, ip: str, client_limit: int) -> Refused | None:
        """Move a held slot to the client a PROXY header named; None, or why not."""
        key = self._key(slot.family, ip)
        if client_limit > 0 and self._per_client.get(key, 0) >= client_limit:
            return Refused.CLIENT
        self._uncount(slot.key)
        self._per_client[key] = self._per_client.get(key, 0) + 1
        slot.ip, slot.key = ip, key
        return None

    def _uncount(self, key: ClientKey) -> None:
        n = self._per_client.get(key, 0) - 1
        if n > 0:
            self._per_client[key] = n
        else:
            self._per_client.pop(key, None)

    def _release(self, slot: Slot) -> None:
        self.total -= 1
        self._uncount(slot.key)
        # The cap episode ends with some room (a tenth), not at the first close:
        # under a steady flood one line each way per close would be a flood too.
        if self._capped and self.total <= self.limit - max(1, self.limit // 10):
            log.warning("below the connection cap again: %d connections were refused", self._capped)
            self._capped = 0
        if self._paused:
            self._resume()

    # ---------------------------------------------------------------- descriptor exhaustion

    def out_of_descriptors(self, err: OSError) -> None:
        """An accept failed for lack of descriptors or memory: pause every listener."""
        self._failed_accepts += 1
        self._last_failure = self._clock()
        if self._episode_since is None:
            self._episode_since = self._last_failure
            log.warning(
                "accept failed: %s (%s) with %d connections open; not accepting until"
                " a descriptor frees",
                os.strerror(err.errno) if err.errno else err,
                errno.errorcode.get(err.errno or 0, "?"),
                self.total,
            )
        self._paused = True
        for a in self._acceptors:
            a.pause()
        if self._retry is None:
            loop = asyncio.get_running_loop()
            self._retry = loop.call_later(ACCEPT_RETRY_DELAY, self._resume)

    def _resume(self) -> None:
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        self._paused = False
        for a in list(self._acceptors):
            a.resume()

    def accepted(self) -> None:
        """An accept worked: an exhaustion episode ends once they have for EPISODE_QUIET."""
        if self._episode_since is None:
            return
        now = self._clock()
        if now - self._last_failure < EPISODE_QUIET:
            return
        log.warning(
            "accepting again: %d accepts failed for lack of descriptors over %.1f s",
            self._failed_accepts,
            self._last_failure - self._episode_since,
        )
        self._episode_since = None
        self._failed_accepts = 0


class Acceptor:
    """A listener on one address: binds, accepts, counts, refuses or hands over.

    The sockets are bound by `loop.create_server(start_serving=False)`, so
    addresses, options and bind errors are those asyncio gives; accepting is
    done here, the same way for every port. With `ssl`, the handshake runs
    here (implicit TLS), bounded by `handshake_timeout`. It offers what the
    rest of the server uses of an `asyncio.Server`: `sockets`, `close()`,
    `wait_closed()`.
    """

    def __init__(
        self,
        server: asyncio.base_events.Server,
        factory: Callable[[Slot], asyncio.BaseProtocol],
        *,
        kind: str,
        family: Family,
        connections: Connections,
        client_limit: Callable[[str], int],
        refusal: Callable[[Refused, str], bytes],
        ssl_context: ssl.SSLContext | None,
        handshake_timeout: float,
        backlog: int,
        proxy_trusted: Callable[[], Sequence[IPNetwork]] | None = None,
    ) -> None:
        self._server = server
        # A PROXY listener ([listen] proxy_protocol): who may send the header.
        self._proxy_trusted = proxy_trusted
        self._factory = factory
        self.kind = kind
        self.family = family
        self._connections = connections
        self._client_limit = client_limit
        self._refusal = refusal
        self._ssl = ssl_context
        self._timeout = handshake_timeout
        self._loop = asyncio.get_running_loop()
        self._listening: list[socket.socket] = []
        self._starting: set[asyncio.Task[None]] = set()
        self._closed = False
        self._reading = False
        for s in server.sockets:
            dup = socket.socket(fileno=os.dup(s.fileno()))
            dup.setblocking(False)
            dup.listen(backlog)  # start_serving=False left them bound, not listening
            self._listening.append(dup)
        connections._acceptors.add(self)
        if not connections.paused:
            self.resume()

    @classmethod
    async def create(
        cls,
        factory: Callable[[Slot], asyncio.BaseProtocol],
        host: str,
        port: int,
        *,
        kind: str,
        family: Family,
        connections: Connections,
        client_limit: Callable[[str], int],
        refusal: Callable[[Refused, str], bytes],
        ssl_context: ssl.SSLContext | None = None,
        reuse_port: bool = False,
        backlog: int = BACKLOG,
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
        sock: socket.socket | None = None,
        proxy_trusted: Callable[[], Sequence[IPNetwork]] | None = None,
    ) -> Acceptor:
        loop = asyncio.get_running_loop()
        if sock is not None:  # bound by the parent of several workers
            server = await loop.create_server(
                asyncio.Protocol, sock=sock, backlog=backlog, start_serving=False
            )
        else:
            server = await loop.create_server(
                asyncio.Protocol,
                host,
                port,
                reuse_address=True,
                reuse_port=reuse_port or None,
                backlog=backlog,
                start_serving=False,
            )
        return cls(
            server,
            factory,
            kind=kind,
            family=family,
            connections=connections,
            client_limit=client_limit,
            refusal=refusal,
            ssl_context=ssl_context,
            handshake_timeout=handshake_timeout,
            backlog=backlog,
            proxy_trusted=proxy_trusted,
        )

    @property
    def sockets(self) -> tuple[Any, ...]:
        return tuple(self._server.sockets)

    def is_serving(self) -> bool:
        return not self._closed

    def close(self) -> None:
        if self._closed:
            return
        self.pause()
        self._closed = True
        self._connections._acceptors.discard(self)
        for s in self._listening:
            s.close()
        self._server.close()
        for t in list(self._starting):
            t.cancel()

    async def wait_closed(self) -> None:
        if self._starting:
            await asyncio.gather(*self._starting, return_exceptions=True)
        await self._server.wait_closed()

    def pause(self) -> None:
        if self._reading:
            self._reading = False
            for s in self._listening:
                self._loop.remove_reader(s.fileno())

    def resume(self) -> None:
        if not self._reading and not self._closed:
            self._reading = True
            for s in self._listening:
                self._loop.add_reader(s.fileno(), self._accept, s)

    def _accept(self, listening: socket.socket) -> None:
        connections = self._connections
        for _ in range(ACCEPT_BATCH):
            try:
                conn, addr = listening.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                if e.errno in TRANSIENT_ACCEPT_ERRORS:
                    continue
                # EMFILE, ENFILE, ENOBUFS, ENOMEM, or worse: the socket stays
                # readable, so stop asking until something frees up.
                connections.out_of_descriptors(e)
                return
            connections.accepted()
            conn.setblocking(False)
            ip = client_address(addr)
            # Behind a balancer the peer is the balancer: the client's own count
            # starts when the PROXY header has named it (`_start`).
            limit = 0 if self._proxy_trusted is not None else self._client_limit(ip)
            verdict = connections.admit(self.family, ip, limit)
            if isinstance(verdict, Refused):
                self._refuse(conn, ip, verdict)
                continue
            task = self._loop.create_task(self._start(conn, verdict))
            self._starting.add(task)
            task.add_done_callback(self._starting.discard)

    def _refuse(self, conn: socket.socket, ip: str, why: Refused) -> None:
        if why is Refused.CLIENT:
            log.info("refused client=%s port=%s: too many connections", ip, self.kind)
        if self.family == "smtp":
            metrics.smtpd_reject("connect", 421)
        if self._ssl is None:
            try:
                conn.send(self._refusal(why, ip))
            except OSError:
                pass
        conn.close()

    async def _start(self, conn: socket.socket, slot: Slot) -> None:
        """Hand the connection to a protocol (after the PROXY header and, on
        implicit TLS, the handshake)."""
        sent: bytes | None = None
        local = "?"
        deadline = self._loop.time() + self._timeout
        factory: Callable[[], asyncio.BaseProtocol] = lambda: self._factory(slot)  # noqa: E731
        try:
            if self._proxy_trusted is not None:
                proxied = await accept_header(
                    conn, slot.ip, self.kind, self._proxy_trusted(), HEADER_TIMEOUT
                )
                if proxied is None:  # refused and logged
                    slot.release()
                    conn.close()
                    return
                if not proxied.local:
                    why = self._connections.rekey(
                        slot, proxied.client, self._client_limit(proxied.client)
                    )
                    if why is not None:
                        slot.release()
                        self._refuse(conn, proxied.client, why)
                        return
                factory = with_peer(factory, proxied)
                deadline = self._loop.time() + self._timeout
            if self._ssl is None:
                await self._loop.connect_accepted_socket(factory, conn)
                return
            local = host_port(conn.getsockname())
            if self._connections.peeking < MAX_PEEKS:
                self._connections.peeking += 1
                try:
                    sent = await peek(conn.fileno(), self._timeout)
                finally:
                    self._connections.peeking -= 1
            await self._loop.connect_accepted_socket(
                factory,
                conn,
                ssl=self._ssl,
                ssl_handshake_timeout=max(1.0, deadline - self._loop.time()),
            )
        except asyncio.CancelledError:
            slot.release()
            conn.close()
            raise
        except (OSError, ssl.SSLError, ConnectionError, TimeoutError) as e:
            slot.release()
            if self._ssl is not None:
                log_failure(
                    e,
                    sent,
                    client=slot.ip,
                    listener=Listener(self.kind, local),
                    context=self._ssl,
                    timeout=self._timeout,
                )
            conn.close()
