"""The outbound SMTP client, on asyncio streams.

House rules:
- One `SMTPClient` is one connection to one host. It knows nothing about
  queues, MX records or retries; it says what the peer answered.
- Every failure that is not a peer's reply becomes a synthetic `Reply` with
  the RFC 3463 code Postfix uses for it (4.4.1 connect, 4.4.2 lost/timeout,
  4.7.0 TLS), so the log, the status file and a bounce all quote one text.
- Outbound data never carries a bare CR or LF: every line ending is CRLF and
  lines starting with "." are dot-stuffed (RFC 5321 §4.5.2).
- TLS is opportunistic: STARTTLS whenever the peer offers it; the certificate
  is not verified (RFC 7435: something beats nothing). If the peer offered
  STARTTLS and the handshake fails, the delivery is deferred rather than sent
  in clear, because an attacker who breaks the handshake must not win a
  downgrade. A peer that answers STARTTLS itself with an error is used in
  clear, as it never agreed to TLS in the first place.
"""

from __future__ import annotations

import asyncio
import os
import re
import ssl
from dataclasses import dataclass

from postvakt.reply import Reply

# RFC 5321 §4.5.3.2: minimum client timeouts.
TIMEOUT_GREETING = 300.0  # §4.5.3.2.1 initial 220: 5 minutes
TIMEOUT_COMMAND = 300.0  # §4.5.3.2.2/3 MAIL and RCPT: 5 minutes
TIMEOUT_DATA_INIT = 120.0  # §4.5.3.2.4 DATA initiation: 2 minutes
TIMEOUT_DATA_BLOCK = 180.0  # §4.5.3.2.5 data block: 3 minutes
TIMEOUT_DATA_END = 600.0  # §4.5.3.2.6 DATA termination: 10 minutes
# A reply longer than this many lines is hostile or broken (Postfix stops at 50 lines of EHLO).
MAX_REPLY_LINES = 100
# RFC 5321 §4.5.3.1.5: reply lines are at most 512 octets; leave room for broken peers.
MAX_LINE = 4096

_ENHANCED = re.compile(r"^([245]\.\d{1,3}\.\d{1,3})(?: |$)")
_LINE_END = re.compile(rb"\r\n|\r|\n")


class SMTPClientError(Exception):
    """The connection is unusable; `reply` says why (peer's words or ours)."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(str(reply))
        self.reply = reply


def to_wire(data: bytes) -> bytes:
    """Message bytes -> DATA payload: CRLF everywhere, dot-stuffed, ends with CRLF."""
    data = _LINE_END.sub(b"\r\n", data)
    if data and not data.endswith(b"\r\n"):
        data += b"\r\n"
    if data.startswith(b"."):
        data = b"." + data
    return data.replace(b"\r\n.", b"\r\n..")


_XTEXT_HEX = re.compile(rb"\+[0-9A-F]{2}")


def xtext(value: str) -> str:
    """RFC 3461 §4 xtext for ENVID/ORCPT. Values come from the front as the
    client sent them, already xtext: "+HH" escapes are kept, anything else
    that xtext does not allow ("=", "+", controls, non-ASCII) is escaped."""
    raw = value.encode("utf-8")
    out = []
    i = 0
    while i < len(raw):
        b = raw[i]
        if b == 0x2B and _XTEXT_HEX.match(raw, i):
            out.append(raw[i : i + 3].decode("ascii"))
            i += 3
            continue
        out.append(chr(b) if 33 <= b <= 126 and b not in (0x2B, 0x3D) else f"+{b:02X}")
        i += 1
    return "".join(out)


def parse_reply(lines: list[str]) -> Reply:
    code = int(lines[0][:3])
    texts = [ln[4:] for ln in lines]
    m = _ENHANCED.match(texts[0])
    enhanced = ""
    if m and m.group(1)[0] == str(code)[0]:
        enhanced = m.group(1)
        texts = [_ENHANCED.sub("", t, count=1) for t in texts]
    return Reply(code, enhanced, "\n".join(texts))


@dataclass(frozen=True)
class Hop:
    """One address to try: `host` is the name for logs, `address` the IP."""

    host: str
    address: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}[{self.address}]:{self.port}"  # as Postfix logs relay=


@dataclass(frozen=True)
class MailParams:
    sender: str
    size: int
    smtputf8: bool = False
    body: str | None = None
    ret: str | None = None
    envid: str | None = None


@dataclass(frozen=True)
class RcptParams:
    address: str
    notify: tuple[str, ...] | None = None
    orcpt: str | None = None


def _tls_context() -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


_TLS = _tls_context()


class SMTPClient:
    def __init__(
        self, hop: Hop, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.hop = hop
        self.reader = reader
        self.writer = writer
        self.extensions: dict[str, str] = {}
        self.tls = False
        self.closed = False
        self.transactions = 0

    # ------------------------------------------------------------ setup

    @classmethod
    async def connect(
        cls, hop: Hop, helo_name: str, *, timeout: float, starttls: bool = True
    ) -> SMTPClient:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(hop.address, hop.port, limit=MAX_LINE), timeout
            )
        except TimeoutError:
            raise SMTPClientError(
                Reply(451, "4.4.1", f"connect to {hop}: Connection timed out")
            ) from None
        except OSError as e:
            why = os.strerror(e.errno) if e.errno else str(e)
            raise SMTPClientError(Reply(451, "4.4.1", f"connect to {hop}: {why}")) from None
        client = cls(hop, reader, writer)
        try:
            greeting = await client.read_reply(TIMEOUT_GREETING)
            if greeting.code != 220:
                raise SMTPClientError(greeting)
            await client.hello(helo_name)
            if starttls and "STARTTLS" in client.extensions:
                await client.starttls(helo_name)
        except BaseException:
            client.close()
            raise
        return client

    async def hello(self, helo_name: str) -> None:
        r = await self.command(f"EHLO {helo_name}", TIMEOUT_COMMAND)
        if r.code == 250:
            self.extensions = {}
            for line in r.text.split("\n")[1:]:
                kw, _, arg = line.strip().partition(" ")
                self.extensions[kw.upper()] = arg
            return
        r = await self.command(f"HELO {helo_name}", TIMEOUT_COMMAND)
        if r.code != 250:
            raise SMTPClientError(r)
        self.extensions = {}

    async def starttls(self, helo_name: str) -> None:
        r = await self.command("STARTTLS", TIMEOUT_COMMAND)
        if r.code != 220:
            return  # refused before any handshake: continue in clear (see house rules)
        try:
            await asyncio.wait_for(
                self.writer.start_tls(_TLS, server_hostname=None), TIMEOUT_COMMAND
            )
        except (OSError, ssl.SSLError, TimeoutError, ConnectionError) as e:
            raise SMTPClientError(
                Reply(451, "4.7.0", f"TLS handshake with {self.hop} failed: {e}")
            ) from None
        self.tls = True
        await self.hello(helo_name)

    # ------------------------------------------------------------ I/O

    async def read_reply(self, timeout: float) -> Reply:
        lines: list[str] = []
        try:
            async with asyncio.timeout(timeout):
                while True:
                    raw = await self.reader.readline()
                    if not raw:
                        raise SMTPClientError(
                            Reply(451, "4.4.2", f"lost connection with {self.hop}")
                        )
                    line = raw.rstrip(b"\r\n").decode("utf-8", "replace")
                    if (
                        len(line) < 3
                        or not line[:3].isdigit()
                        or (len(line) > 3 and line[3] not in " -")
                    ):
                        raise SMTPClientError(
                            Reply(451, "4.5.0", f"malformed reply from {self.hop}: {line[:80]!r}")
                        )
                    lines.append(line)
                    if len(line) == 3 or line[3] == " ":
                        break
                    if len(lines) >= MAX_REPLY_LINES:
                        raise SMTPClientError(
                            Reply(451, "4.5.0", f"reply from {self.hop} too long")
                        )
        except TimeoutError:
            raise SMTPClientError(
                Reply(451, "4.4.2", f"timeout waiting for reply from {self.hop}")
            ) from None
        except (OSError, ValueError, asyncio.LimitOverrunError) as e:
            raise SMTPClientError(
                Reply(451, "4.4.2", f"lost connection with {self.hop}: {e}")
            ) from None
        return parse_reply(lines)

    async def send(self, data: bytes, timeout: float) -> None:
        try:
            self.writer.write(data)
            async with asyncio.timeout(timeout):
                await self.writer.drain()
        except TimeoutError:
            raise SMTPClientError(Reply(451, "4.4.2", f"timeout sending to {self.hop}")) from None
        except (OSError, ConnectionError) as e:
            raise SMTPClientError(
                Reply(451, "4.4.2", f"lost connection with {self.hop}: {e}")
            ) from None

    async def command(self, line: str, timeout: float) -> Reply:
        await self.send(line.encode("utf-8") + b"\r\n", timeout)
        return await self.read_reply(timeout)

    # ------------------------------------------------------------ mail

    async def transaction(
        self, mail: MailParams, rcpts: list[RcptParams], data: bytes
    ) -> list[Reply]:
        """One MAIL/RCPT.../DATA; a reply per recipient. Raises SMTPClientError
        when the connection breaks; a 4xx/5xx to MAIL is returned for all."""
        self.transactions += 1
        ext = self.extensions
        params = []
        if "SIZE" in ext:
            params.append(f"SIZE={mail.size}")
            limit = ext["SIZE"].strip()
            if limit.isdigit() and int(limit) and mail.size > int(limit):
                r = Reply(552, "5.3.4", f"message size {mail.size} exceeds the limit of {self.hop}")
                return [r] * len(rcpts)
        if mail.body == "8BITMIME" and "8BITMIME" in ext:
            params.append("BODY=8BITMIME")
        if mail.smtputf8:
            if "SMTPUTF8" not in ext:
                r = Reply(550, "5.6.7", f"SMTPUTF8 is required, but was not offered by {self.hop}")
                return [r] * len(rcpts)
            params.append("SMTPUTF8")
        dsn = "DSN" in ext
        if dsn and mail.ret:
            params.append(f"RET={mail.ret}")
        if dsn and mail.envid:
            params.append(f"ENVID={xtext(mail.envid)}")
        r = await self.command(" ".join([f"MAIL FROM:<{mail.sender}>", *params]), TIMEOUT_COMMAND)
        if r.code != 250:
            await self.rset()
            return [r] * len(rcpts)
        replies: list[Reply] = []
        for rc in rcpts:
            rparams = []
            if dsn and rc.notify:
                rparams.append("NOTIFY=" + ",".join(rc.notify))
            if dsn and rc.orcpt:
                kind, _, addr = rc.orcpt.partition(";")
                rparams.append(f"ORCPT={kind};{xtext(addr)}")
            replies.append(
                await self.command(" ".join([f"RCPT TO:<{rc.address}>", *rparams]), TIMEOUT_COMMAND)
            )
        if not any(x.code in (250, 251) for x in replies):
            await self.rset()
            return replies
        r = await self.command("DATA", TIMEOUT_DATA_INIT)
        if r.code != 354:
            await self.rset()
            return [r if x.code in (250, 251) else x for x in replies]
        await self.send(to_wire(data) + b".\r\n", TIMEOUT_DATA_BLOCK)
        final = await self.read_reply(TIMEOUT_DATA_END)
        return [final if x.code in (250, 251) else x for x in replies]

    async def rset(self) -> bool:
        """True if the connection is usable for another transaction."""
        try:
            r = await self.command("RSET", TIMEOUT_COMMAND)
        except SMTPClientError:
            self.close()
            return False
        if r.code != 250:
            self.close()
            return False
        return True

    async def quit(self) -> None:
        if self.closed:
            return
        try:
            await asyncio.wait_for(self.command("QUIT", 5.0), 5.0)
        except (SMTPClientError, TimeoutError):
            pass
        self.close()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.writer.close()
