"""A thin protocol in front of aiohttp's request handler: slow and greedy clients.

aiohttp reads a request's headers with no deadline of its own (its keep-alive
timer closes an idle connection without a word). This wrapper adds what a
public listener needs, with an answer a person can read:

- request headers must be complete within `header_timeout` of the first byte
  (or of the connection): else `408 Request Timeout` and close (slowloris);
- at most MAX_CONNECTIONS_PER_CLIENT open connections per address: the next
  one gets `429 Too Many Requests` and is closed before aiohttp sees it.

Request bodies have their deadline in the handlers (app.py), which answer 408
as well. The wrapper finds request boundaries by Content-Length; after a
chunked body it stops watching that connection (the handler's deadline and
aiohttp's keep-alive timer still apply).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from typing import cast

# A school or office behind one NAT address opens many browser connections at
# once; the benchmark runs 100. Past this the client is flooding, not browsing.
MAX_CONNECTIONS_PER_CLIENT = 256
# aiohttp answers a longer header block with 431/400 itself; the guard stops
# collecting there (it needs only the Content-Length).
MAX_HEADER_BYTES = 64 * 1024

_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*(\d{1,18})[ \t]*\r\n", re.IGNORECASE)
_CHUNKED = re.compile(rb"\r\ntransfer-encoding:[^\r\n]*chunked", re.IGNORECASE)


def _response(status: str, text: str) -> bytes:
    body = text.encode()
    return (
        f"HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body


TIMEOUT_RESPONSE = _response(
    "408 Request Timeout", "408: the request did not arrive in time; the connection is closed.\n"
)
FLOOD_RESPONSE = _response(
    "429 Too Many Requests", "429: too many connections from your address; try again later.\n"
)


class ConnectionCounter:
    """Open connections per client address, shared by every guarded connection of one listener."""

    def __init__(self, limit: int = MAX_CONNECTIONS_PER_CLIENT) -> None:
        self.limit = limit
        self.open: dict[str, int] = {}

    def enter(self, ip: str) -> bool:
        n = self.open.get(ip, 0)
        if n >= self.limit:
            return False
        self.open[ip] = n + 1
        return True

    def leave(self, ip: str) -> None:
        n = self.open.get(ip, 0) - 1
        if n > 0:
            self.open[ip] = n
        else:
            self.open.pop(ip, None)


class GuardedProtocol(asyncio.Protocol):
    def __init__(
        self,
        inner_factory: Callable[[], asyncio.Protocol],
        counter: ConnectionCounter,
        header_timeout: float,
    ) -> None:
        self._inner_factory = inner_factory
        self._inner: asyncio.Protocol | None = None
        self._counter = counter
        self._header_timeout = header_timeout
        self._transport: asyncio.Transport | None = None
        self._ip = ""
        self._timer: asyncio.TimerHandle | None = None
        # Where we are in the byte stream: reading a header block, skipping a body, or blind.
        self._in_header = True
        self._head = b""
        self._body_left = 0
        self._blind = False

    # ---------------------------------------------------------------- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but behave as one.
        transport = cast(asyncio.Transport, transport)
        self._transport = transport
        peer = transport.get_extra_info("peername")
        self._ip = str(peer[0]) if peer else ""
        if not self._counter.enter(self._ip):
            self._ip = ""  # not counted: nothing to give back
            transport.write(FLOOD_RESPONSE)
            transport.close()
            return
        self._inner = self._inner_factory()
        self._inner.connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self._inner is None:
            return
        if not self._blind:
            self._track(data)
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self._inner is not None else None

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self._ip:
            self._counter.leave(self._ip)
            self._ip = ""
        if self._inner is not None:
            self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()

    # ---------------------------------------------------------------- request boundaries

    def _track(self, data: bytes) -> None:
        while data and not self._blind:
            if self._in_header:
                if self._timer is None:
                    self._arm()  # the first byte of the next request starts its clock
                start = max(0, len(self._head) - 3)
                self._head += data
                end = self._head.find(b"\r\n\r\n", start)
                if end < 0:
                    if len(self._head) > MAX_HEADER_BYTES:
                        self._stop_watching()  # aiohttp refuses it on its own
                    return
                head, data = self._head[: end + 4], self._head[end + 4 :]
                self._head = b""
                self._disarm()
                if _CHUNKED.search(head):
                    self._stop_watching()
                    return
                m = _CONTENT_LENGTH.search(head)
                self._body_left = int(m.group(1)) if m else 0
                self._in_header = self._body_left == 0
            else:
                used = min(len(data), self._body_left)
                self._body_left -= used
                data = data[used:]
                if self._body_left == 0:
                    self._in_header = True

    def _stop_watching(self) -> None:
        self._blind = True
        self._head = b""
        self._disarm()

    def _arm(self) -> None:
        self._disarm()
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self._header_timeout, self._expired)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expired(self) -> None:
        self._timer = None
        t = self._transport
        if t is None or t.is_closing() or not self._in_header:
            return
        t.write(TIMEOUT_RESPONSE)
        t.close()
