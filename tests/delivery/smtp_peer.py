"""A scripted asyncio SMTP peer on loopback, for replies smtp-sink cannot give."""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass, field

# A scripted "reply" that closes the connection instead.
DROP = "DROP"


@dataclass
class Transaction:
    mail: str
    rcpts: list[str]
    data: bytes


@dataclass
class Peer:
    """A tiny SMTP server whose replies a test scripts.

    `replies` maps an upper-cased command word (or "RCPT:<addr>") to a reply
    line; the default is a plain 250. `ehlo` lists the extensions offered.
    For a command without a branch of its own (RSET, NOOP ...) the reply
    `DROP` closes the connection instead of answering.
    """

    port: int = 0
    ehlo: list[str] = field(default_factory=lambda: ["PIPELINING", "8BITMIME", "SIZE 10240000"])
    replies: dict[str, str] = field(default_factory=dict)
    greeting: str = "220 peer.test ESMTP"
    max_rcpts: int = 0  # more RCPTs per transaction get 452 (0: no limit)
    tls: ssl.SSLContext | None = None
    transactions: list[Transaction] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)
    connections: int = 0
    server: asyncio.AbstractServer | None = None

    async def start(self, host: str = "127.0.0.1") -> Peer:
        # A body is read whole with readuntil: allow big ones (test messages only).
        self.server = await asyncio.start_server(
            self._handle, host, self.port, limit=64 * 1024 * 1024
        )
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        writer.write(self.greeting.encode() + b"\r\n")
        mail, rcpts = "", []
        try:
            while True:
                line = await reader.readline()
                if not line:
                    return
                cmd = line.rstrip(b"\r\n").decode("utf-8", "replace")
                self.commands.append(cmd)
                verb = cmd.split(" ", 1)[0].split(":", 1)[0].upper()
                if verb == "EHLO":
                    if "EHLO" in self.replies:
                        writer.write(self.replies["EHLO"].encode() + b"\r\n")
                        continue
                    exts = list(self.ehlo)
                    if self.tls is not None and not writer.get_extra_info("ssl_object"):
                        exts.append("STARTTLS")
                    lines = ["peer.test", *exts]
                    out = "".join(
                        f"250{'-' if i < len(lines) - 1 else ' '}{x}\r\n"
                        for i, x in enumerate(lines)
                    )
                    writer.write(out.encode())
                elif verb == "STARTTLS" and self.tls is not None:
                    writer.write(
                        self.replies.get("STARTTLS", "220 2.0.0 go ahead").encode() + b"\r\n"
                    )
                    await writer.drain()
                    if self.replies.get("STARTTLS", "220").startswith("220"):
                        await writer.start_tls(self.tls)
                elif verb == "MAIL":
                    mail, rcpts = cmd, []
                    writer.write(self.replies.get("MAIL", "250 2.1.0 Ok").encode() + b"\r\n")
                elif verb == "RCPT":
                    addr = cmd.split("<", 1)[1].split(">", 1)[0]
                    reply = self.replies.get(
                        f"RCPT:{addr}", self.replies.get("RCPT", "250 2.1.5 Ok")
                    )
                    if self.max_rcpts and len(rcpts) >= self.max_rcpts:
                        reply = "452 4.5.3 Too many recipients"
                    if reply.startswith("2"):
                        rcpts.append(cmd)
                    writer.write(reply.encode() + b"\r\n")
                elif verb == "DATA":
                    reply = self.replies.get("DATA", "354 End data with <CR><LF>.<CR><LF>")
                    writer.write(reply.encode() + b"\r\n")
                    if not reply.startswith("354"):
                        continue
                    await writer.drain()
                    data = await reader.readuntil(b"\r\n.\r\n")
                    self.transactions.append(Transaction(mail, rcpts, data[:-3]))
                    writer.write(self.replies.get(".", "250 2.0.0 Ok: queued").encode() + b"\r\n")
                elif verb == "QUIT":
                    writer.write(b"221 2.0.0 Bye\r\n")
                    await writer.drain()
                    return
                elif self.replies.get(verb) == DROP:
                    return
                else:
                    writer.write(self.replies.get(verb, "250 2.0.0 Ok").encode() + b"\r\n")
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            return
        finally:
            writer.close()
