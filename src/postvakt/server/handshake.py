"""Server-side TLS handshakes on every listener, and one log line for each that fails.

Two ways in, one log line:
- implicit TLS (465, 995): the shared accept path (`postvakt.server.accept`)
  accepts the connections itself and hands each to `loop.connect_accepted_socket(ssl=...)`, which runs the
  handshake and raises when it fails, on asyncio and uvloop alike. (A protocol
  cannot pause a new connection before the first read on uvloop, which starts
  reading right after `connection_made`, so the handshake cannot start there.)
- STARTTLS and STLS (25, 587, 110): the session, reading paused, calls
  `start_server_tls()`, which runs `loop.start_tls()`.

A failed handshake logs one line an admin can grep:

    TLS handshake failed client=203.0.113.5 listener=submissions local=192.0.2.1:465
      reason="the client does not trust our certificate (TLS alert: unknown CA)"
      error=TLSV1_ALERT_UNKNOWN_CA sent="TLS ClientHello (up to TLS 1.3, SNI mail.example.org)"

(on one line), and counts it in `postvakt_tls_handshake_failures_total`
(listener, error) when metrics are on. `sent` is what the client had sent
when the handshake began: its first bytes are read with MSG_PEEK on a duplicate of the socket before
the TLS layer takes them, so they are seen without being consumed. That is
how a mail program set to STARTTLS on port 465 shows up as `sent="plaintext
'EHLO laptop'"`, and a program that asked for a name our certificate lacks
as `SNI ... (not covered by our certificate)`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, cast

from postvakt import metrics
from postvakt.server.tls import ServerContext, covers

log = logging.getLogger("postvakt.tls")

# How long a client may take from accept (or STARTTLS) to a finished handshake:
# Postfix's smtpd_starttls_timeout is a few seconds per I/O (300 s in all at
# worst), Dovecot's login processes give ~10 s before the banner exchange; a
# real client finishes in well under a second, a socket flood holds nothing long.
HANDSHAKE_TIMEOUT = 10.0
# A ClientHello with a few extensions fits; more is not needed for a log line.
PEEK_BYTES = 2048
# How much plaintext a log line quotes.
QUOTE_CHARS = 60

TLS_VERSIONS = {0x0300: "SSL 3.0", 0x0301: "TLS 1.0", 0x0302: "TLS 1.1", 0x0303: "TLS 1.2"}
TLS_VERSIONS[0x0304] = "TLS 1.3"

# OpenSSL's reason codes, in words an admin can act on.
REASONS = {
    "TLSV1_ALERT_UNKNOWN_CA": "the client does not trust our certificate (TLS alert: unknown CA)",
    "SSLV3_ALERT_BAD_CERTIFICATE": "the client refused our certificate (TLS alert: bad certificate)",
    "SSLV3_ALERT_CERTIFICATE_UNKNOWN": (
        "the client refused our certificate (TLS alert: certificate unknown;"
        " often a name it does not cover)"
    ),
    "SSLV3_ALERT_CERTIFICATE_EXPIRED": "the client says our certificate has expired",
    "TLSV1_ALERT_ACCESS_DENIED": "the client refused the connection (TLS alert: access denied)",
    "SSLV3_ALERT_HANDSHAKE_FAILURE": "the client gave up the handshake (TLS alert: handshake failure)",
    "TLSV1_ALERT_PROTOCOL_VERSION": "no TLS version in common (we accept TLS 1.2 and 1.3)",
    "UNSUPPORTED_PROTOCOL": "no TLS version in common (we accept TLS 1.2 and 1.3)",
    "VERSION_TOO_LOW": "the client offered only TLS older than 1.2",
    "NO_SHARED_CIPHER": "no cipher in common",
    "NO_SUITABLE_SIGNATURE_ALGORITHM": "no signature algorithm in common",
    "WRONG_VERSION_NUMBER": "not a TLS handshake",
    "HTTP_REQUEST": "not a TLS handshake (an HTTP request)",
    "HTTPS_PROXY_REQUEST": "not a TLS handshake (an HTTP proxy request)",
    "UNKNOWN_PROTOCOL": "not a TLS handshake",
    "UNEXPECTED_EOF_WHILE_READING": "the client closed the connection during the handshake",
    "UNEXPECTED_MESSAGE": "the client sent something out of order",
    "DECRYPTION_FAILED_OR_BAD_RECORD_MAC": "the TLS data was corrupted",
}


@dataclass(frozen=True)
class Listener:
    """Which listener a connection came in on, for the log line."""

    kind: str  # smtp | submission | submissions | pop3 | pop3s
    local: str  # host:port the client connected to


def listener_of(kind: str, transport: asyncio.BaseTransport) -> Listener:
    name = transport.get_extra_info("sockname")
    return Listener(kind, host_port(name) if name else "?")


async def start_server_tls(
    transport: asyncio.BaseTransport,
    protocol: asyncio.BaseProtocol,
    context: ssl.SSLContext,
    *,
    client: str,
    listener: Listener,
    timeout: float = HANDSHAKE_TIMEOUT,
) -> asyncio.Transport | None:
    """Run the server side of a handshake on a transport whose reading is paused.

    Returns the TLS transport, or None after the connection was closed and the
    failure logged. Cancellation (the server stopping) is not a failure.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    sent = await peek_first_bytes(transport, timeout)
    try:
        new = await loop.start_tls(
            cast(asyncio.WriteTransport, transport),
            protocol,
            context,
            server_side=True,
            ssl_handshake_timeout=max(1.0, deadline - loop.time()),
        )
    except (OSError, ssl.SSLError, ConnectionError, TimeoutError) as e:
        log_failure(e, sent, client=client, listener=listener, context=context, timeout=timeout)
        transport.abort()  # type: ignore[attr-defined]
        return None
    if new is None:
        log_failure(
            ConnectionResetError("closed"),
            sent,
            client=client,
            listener=listener,
            context=context,
            timeout=timeout,
        )
        transport.close()
        return None
    return new


async def peek_first_bytes(transport: asyncio.BaseTransport, timeout: float) -> bytes | None:
    """The bytes waiting on a (paused) transport's connection, left in place for TLS."""
    sock = transport.get_extra_info("socket")
    if sock is None:
        return None
    return await peek(sock.fileno(), timeout)


async def peek(fd: int, timeout: float) -> bytes | None:
    """The first bytes waiting on a connected socket, left in place.

    Waits (up to `timeout`) for them on a duplicate of the descriptor, so that
    neither the loop's reader for the socket (paused, or not created yet) nor
    its registration is touched. b"" when the client closed without sending;
    None when nothing came or the socket cannot be read this way.
    """
    loop = asyncio.get_running_loop()
    try:
        dup = socket.socket(fileno=os.dup(fd))
    except OSError:
        return None
    try:
        dup.setblocking(False)
        ready: asyncio.Future[None] = loop.create_future()

        def readable() -> None:
            if not ready.done():
                ready.set_result(None)

        loop.add_reader(dup.fileno(), readable)
        try:
            await asyncio.wait_for(ready, timeout)
        except TimeoutError:
            return None
        finally:
            loop.remove_reader(dup.fileno())
        return dup.recv(PEEK_BYTES, socket.MSG_PEEK)
    except OSError:
        return None
    finally:
        dup.close()


def log_failure(
    error: BaseException,
    sent: bytes | None,
    *,
    client: str,
    listener: Listener,
    context: ssl.SSLContext,
    timeout: float,
) -> None:
    names = context.names if isinstance(context, ServerContext) else ()
    said = "".join(c if " " <= c < "\x7f" and c != '"' else "?" for c in describe_sent(sent, names))
    code = error_code(error)
    metrics.tls_handshake_failure(listener.kind, code)
    log.warning(
        'TLS handshake failed client=%s listener=%s local=%s reason="%s" error=%s sent="%s"',
        client,
        listener.kind,
        listener.local,
        describe_error(error, timeout),
        code,
        said,
    )


def error_code(error: BaseException) -> str:
    """OpenSSL's reason code when there is one, else the exception's class."""
    reason = getattr(error, "reason", None)
    if isinstance(error, ssl.SSLError) and reason:
        return str(reason)
    return type(error).__name__


def describe_error(error: BaseException, timeout: float) -> str:
    reason = getattr(error, "reason", None)
    if isinstance(error, ssl.SSLError) and reason:
        if reason in REASONS:
            return REASONS[reason]
        return str(reason).replace("_", " ").lower()
    if isinstance(error, TimeoutError) or "taking longer" in str(error):
        return f"no finished handshake within {timeout:g} s"
    if isinstance(error, ConnectionError | ssl.SSLEOFError):
        return "the client closed the connection during the handshake"
    return str(error) or type(error).__name__


def describe_sent(data: bytes | None, names: tuple[str, ...] = ()) -> str:
    """What the client's first bytes were, in words (a pure function of them)."""
    if data is None:
        return "nothing"
    if not data:
        return "nothing before closing the connection"
    if data[0] == 0x16 and len(data) >= 3 and data[1] == 0x03:
        hello = parse_client_hello(data)
        if hello is None and len(data) > 5 and data[5] == 0x01:
            return f"a TLS ClientHello cut short after {len(data)} bytes"
        if hello is None:
            return "a TLS handshake record that is not a readable ClientHello"
        version, sni = hello
        parts = [f"up to {TLS_VERSIONS.get(version, hex(version))}"]
        if sni is None:
            parts.append("no SNI")
        elif names and not covers(names, sni):
            parts.append(f"SNI {sni} (not covered by our certificate)")
        else:
            parts.append(f"SNI {sni}")
        return f"TLS ClientHello ({', '.join(parts)})"
    if data[0] == 0x15 and len(data) >= 2 and data[1] == 0x03:
        return "a TLS alert"
    if data[0] & 0x80 and len(data) >= 3 and data[2] == 0x01:
        return "an SSLv2-style ClientHello"
    line = data.split(b"\n", 1)[0].rstrip(b"\r")
    if line and all(32 <= b < 127 for b in line):
        text = line[:QUOTE_CHARS].decode("ascii")
        quoted = text.replace("\\", "\\\\").replace('"', "'")
        return f"plaintext '{quoted}{'...' if len(line) > QUOTE_CHARS else ''}'"
    return f"{len(data)} bytes that are neither TLS nor text ({data[:8].hex(' ')})"


def parse_client_hello(data: bytes) -> tuple[int, str | None] | None:
    """(highest version offered, SNI host name) from a TLS record holding a
    ClientHello (RFC 8446 §4.1.2), or None when it cannot be read."""
    try:
        if data[0] != 0x16 or data[5] != 0x01:
            return None
        pos = 9  # record header (5) + handshake type (1) + length (3)
        version = int.from_bytes(data[pos : pos + 2], "big")
        pos += 2 + 32  # legacy_version, random
        pos += 1 + data[pos]  # session id
        pos += 2 + int.from_bytes(data[pos : pos + 2], "big")  # cipher suites
        pos += 1 + data[pos]  # compression methods
        if pos + 2 > len(data):
            return version, None
        end = min(len(data), pos + 2 + int.from_bytes(data[pos : pos + 2], "big"))
        pos += 2
        sni: str | None = None
        while pos + 4 <= end:
            ext = int.from_bytes(data[pos : pos + 2], "big")
            size = int.from_bytes(data[pos + 2 : pos + 4], "big")
            body = data[pos + 4 : pos + 4 + size]
            pos += 4 + size
            if ext == 0 and len(body) >= 5 and body[2] == 0:  # server_name, host_name
                n = int.from_bytes(body[3:5], "big")
                sni = body[5 : 5 + n].decode("ascii", "replace")
            elif ext == 43 and body:  # supported_versions
                offered = [int.from_bytes(body[i : i + 2], "big") for i in range(1, 1 + body[0], 2)]
                known = [v for v in offered if v in TLS_VERSIONS]  # skips GREASE values
                if known:
                    version = max(known)
        return version, sni
    except IndexError:
        return None


# ---------------------------------------------------------------- listeners


class Listening(Protocol):
    """What the server uses of a listener; `asyncio.Server` and `accept.Acceptor` both are one."""

    @property
    def sockets(self) -> Sequence[Any]: ...

    def close(self) -> None: ...

    async def wait_closed(self) -> None: ...


def host_port(name: Any) -> str:
    host = str(name[0])
    return f"[{host}]:{name[1]}" if ":" in host else f"{host}:{name[1]}"
