"""The outbound SMTP client, on asyncio streams.

House rules:
- One `SMTPClient` is one connection to one host. It knows nothing about
  queues, MX records or retries; it says what the peer answered.
- Every failure that is not a peer's reply becomes a synthetic `Reply` with
  the RFC 3463 code Postfix uses for it (4.4.1 connect, 4.4.2 lost/timeout,
  4.7.0 TLS), so the log, the status file and a bounce all quote one text.
- Outbound data never carries a bare CR or LF: every line ending is CRLF and
  lines starting with "." are dot-stuffed (RFC 5321 §4.5.2).
- PIPELINING (RFC 2920) when the peer offers it: [RSET,] MAIL, the RCPTs and
  DATA go in one write, their replies are read in order and each means what
  it means in lock step. No body goes after a refused MAIL or to a DATA with
  no recipient accepted, whatever the peer answered to the rest.
- TLS is opportunistic: STARTTLS whenever the peer offers it; the certificate
  is not verified (RFC 7435: something beats nothing). If the peer offered
  STARTTLS and the handshake fails, the delivery is deferred rather than sent
  in clear, because an attacker who breaks the handshake must not win a
  downgrade. A peer that answers STARTTLS itself with an error is used in
  clear, as it never agreed to TLS in the first place.
"""

from __future__ import annotations

import asyncio
import enum
import os
import re
import ssl
from collections.abc import Sequence
from dataclasses import dataclass

from postvakt.delivery.source import MessageSource
from postvakt.reply import Reply, parse_reply, reply_line_error

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
# RFC 5321 §4.5.3.1.6: a text line is at most 1000 octets with its CRLF. Longer
# lines (we accept them, up to [smtp] max_line_length) are broken before this
# many octets by inserting CRLF SPACE, as Postfix's smtp_line_length_limit = 998
# does: a peer that enforces the limit gets the mail instead of refusing it, and
# the SPACE keeps a broken header field one folded field (RFC 5322 §2.2.3).
LINE_LENGTH_LIMIT = 998
_LINE_END = re.compile(rb"\r\n|\r|\n")
# Replies already parsed, by their lines: a peer gives the same few to every
# MAIL, RCPT, DATA and RSET (a reply is a frozen value, so one serves all).
# Emptied when full, so unique ones (a queue id after the dot) cannot grow it.
_PARSED: dict[tuple[str, ...], Reply] = {}
PARSED_MAX = 256


class Outcome(enum.Enum):
    """What became of one recipient on one try; only SENT ends a delivery well."""

    SENT = "sent"
    DEFERRED = "deferred"
    BOUNCED = "bounced"


@dataclass(frozen=True)
class RcptResult:
    """One recipient's result and the reply that says why.

    SENT is made in one place only, `SMTPClient.transaction` after a 2xx to
    the final dot; every other result is a failure whose reply is a 4xx
    (DEFERRED) or 5xx (BOUNCED): a reply that fits neither is never taken as
    a delivery, and turns into a temporary failure quoting it.
    """

    reply: Reply
    outcome: Outcome

    @classmethod
    def failure(cls, reply: Reply) -> RcptResult:
        if 500 <= reply.code < 600:
            return cls(reply, Outcome.BOUNCED)
        if 400 <= reply.code < 500:
            return cls(reply, Outcome.DEFERRED)
        return cls(Reply(451, "4.5.0", f"unexpected reply: {_one_line(reply)}"), Outcome.DEFERRED)


def _one_line(reply: Reply) -> str:
    return str(reply).replace("\n", " / ")[:300]


class SMTPClientError(Exception):
    """The connection is unusable; `reply` says why (peer's words or ours)."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(str(reply))
        self.reply = reply


class StaleConnection(SMTPClientError):
    """A connection taken from the idle ones did not answer its RSET: nothing
    of the transaction was done, so it is tried on another connection."""


def _odd(r: Reply) -> bool:
    """A reply to MAIL or RCPT that is neither 2xx nor 4xx/5xx: nothing is
    certain about the session after it."""
    return r.code // 100 != 2 and not 400 <= r.code < 600


class WireEncoder:
    """Message bytes -> DATA payload, one piece at a time: every line end
    (CRLF, bare LF, bare CR) becomes CRLF, a "." first on a line is doubled
    (RFC 5321 §4.5.2), the payload ends with CRLF, and a line longer than
    `limit` wire octets is broken by CRLF SPACE (0: never broken). Holds no
    more than a flag and a column, whatever the size of a piece or a line."""

    def __init__(self, limit: int = LINE_LENGTH_LIMIT) -> None:
        self.limit = limit
        self.broken = 0  # lines broken, for the log
        self._col = 0  # wire octets of the open line
        self._cr = False  # the last piece ended with CR: an LF next belongs to it

    def feed(self, data: bytes) -> bytes:
        if not data:
            return b""
        if self._cr and data.startswith(b"\n"):
            data = data[1:]
        self._cr = data.endswith(b"\r")
        if not data:
            return b""
        if self._as_is(data):
            return data
        out = bytearray()
        parts = _LINE_END.split(data)
        for part in parts[:-1]:
            self._add(part, out)
            out += b"\r\n"
            self._col = 0
        self._add(parts[-1], out)
        return bytes(out)

    def _as_is(self, data: bytes) -> bool:
        """Whether `data` goes out unchanged, as nearly all mail does (CRLF
        line ends, no line to dot-stuff or to break); then the column moves
        past it. A few scans in C, where the encoding takes a Python step per
        line: a third of the client's work on a 1 KiB message."""
        crlf = data.count(b"\r\n")
        if data.count(b"\r") != crlf or data.count(b"\n") != crlf:
            return False
        if b"\n." in data or (self._col == 0 and data.startswith(b".")):
            return False
        lines = data.split(b"\r\n")
        first = self._col + len(lines[0])
        if self.limit and (first > self.limit or max(map(len, lines)) > self.limit):
            return False
        self._col = first if len(lines) == 1 else len(lines[-1])
        return True

    def end(self) -> bytes:
        """What closes the payload: the last line's CRLF if it had none."""
        if self._col:
            self._col = 0
            return b"\r\n"
        return b""

    def _add(self, text: bytes, out: bytearray) -> None:
        if not text:
            return
        if self._col == 0 and text.startswith(b"."):
            out += b"."
            self._col = 1
        limit = self.limit
        if not limit or self._col + len(text) <= limit:
            out += text
            self._col += len(text)
            return
        view = memoryview(text)
        while view:
            room = limit - self._col
            if room <= 0:
                out += b"\r\n "
                self.broken += 1
                self._col = 1
                room = limit - 1
            out += view[:room]
            self._col += min(room, len(view))
            view = view[room:]


def to_wire(data: bytes, limit: int = LINE_LENGTH_LIMIT) -> bytes:
    """Message bytes -> DATA payload in one piece (see `WireEncoder`)."""
    enc = WireEncoder(limit)
    return enc.feed(data) + enc.end()


def break_long_lines(data: bytes) -> bytes | None:
    """The message with its long lines broken exactly as `WireEncoder` breaks
    them on the wire (CRLF line ends, no dot-stuffing), or None when no line
    is too long. Mail that is signed is broken first, so that the signature
    covers what the peer receives."""
    enc = WireEncoder(LINE_LENGTH_LIMIT)
    wire = enc.feed(data) + enc.end()
    if not enc.broken:
        return None
    if wire.startswith(b"."):
        wire = wire[1:]
    return wire.replace(b"\r\n..", b"\r\n.")


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
    """The MAIL FROM this client sends (what a client sent us: `smtp._params.MailFromParams`)."""

    sender: str
    size: int
    smtputf8: bool = False
    body: str | None = None
    ret: str | None = None
    envid: str | None = None


@dataclass(frozen=True)
class RcptParams:
    """One RCPT TO this client sends (what a client sent us: `smtp._params.RcptToParams`)."""

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
        self.lines_broken = 0  # in the last body sent
        self._loop = asyncio.get_running_loop()
        # The reply being waited for: when it is overdue (`_expect`).
        self._waiting = False
        self._deadline = 0.0
        self._overdue = False
        self._watchdog: asyncio.TimerHandle | None = None

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
                # Postfix (smtp_skip_5xx_greeting): a host that will not talk is
                # skipped for the next one, and the mail deferred, never bounced.
                raise SMTPClientError(
                    Reply(451, "4.4.0", f"host {hop} refused to talk to me: {_one_line(greeting)}")
                )
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
        """The next reply, within `timeout` (see `_expect`). A reply outside
        RFC 5321's grammar (no code, a code outside 2xx-5xx, codes that change
        within one reply, too many lines) leaves nothing certain about the
        peer's state: SMTPClientError, a temporary failure, and the connection
        is not used again."""
        lines: list[str] = []
        self._expect(timeout)
        try:
            while True:
                raw = await self.reader.readline()
                if self._overdue:
                    raise SMTPClientError(self._timeout_reply())
                if not raw:
                    raise SMTPClientError(Reply(451, "4.4.2", f"lost connection with {self.hop}"))
                line = raw.rstrip(b"\r\n").decode("utf-8", "replace")
                why = reply_line_error(line, lines[0] if lines else None)
                if why is not None:
                    raise SMTPClientError(
                        Reply(
                            451, "4.5.0", f"malformed reply from {self.hop} ({why}): {line[:80]!r}"
                        )
                    )
                lines.append(line)
                if len(line) == 3 or line[3] == " ":
                    break
                if len(lines) >= MAX_REPLY_LINES:
                    raise SMTPClientError(Reply(451, "4.5.0", f"reply from {self.hop} too long"))
        except (OSError, ValueError, asyncio.LimitOverrunError) as e:
            if self._overdue:
                raise SMTPClientError(self._timeout_reply()) from None
            raise SMTPClientError(
                Reply(451, "4.4.2", f"lost connection with {self.hop}: {e}")
            ) from None
        finally:
            self._waiting = False
        key = tuple(lines)
        reply = _PARSED.get(key)
        if reply is None:
            if len(_PARSED) >= PARSED_MAX:
                _PARSED.clear()
            reply = _PARSED[key] = parse_reply(lines)
        return reply

    def _expect(self, timeout: float) -> None:
        """Give the reply about to be read `timeout` seconds. One timer per
        connection (`_watch`) keeps the deadline, moved only when a deadline
        comes earlier than the one it is set for: a timer made and cancelled
        for every reply cost more than reading the reply."""
        self._deadline = self._loop.time() + timeout
        self._waiting = True
        watchdog = self._watchdog
        if watchdog is None or self._deadline < watchdog.when():
            if watchdog is not None:
                watchdog.cancel()
            self._watchdog = self._loop.call_at(self._deadline, self._watch)

    def _watch(self) -> None:
        """The timer. Past the deadline of a reply still waited for, the
        connection is ended and its read raises the timeout; before it (the
        deadline moved on since the timer was set), the timer is set again."""
        self._watchdog = None
        if not self._waiting or self.closed:
            return
        if self._loop.time() < self._deadline:
            self._watchdog = self._loop.call_at(self._deadline, self._watch)
            return
        self._overdue = True
        self.writer.transport.abort()

    def _timeout_reply(self) -> Reply:
        return Reply(451, "4.4.2", f"timeout waiting for reply from {self.hop}")

    async def send(self, data: bytes, timeout: float) -> None:
        """Write `data`; wait (at most `timeout`) only when the kernel did not
        take it all at once, and let a lost connection raise here. Each wait
        is a timer set and cancelled on the loop, for nothing when all went."""
        try:
            self.writer.write(data)
            transport = self.writer.transport
            if transport.is_closing() or transport.get_write_buffer_size():
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
        self,
        mail: MailParams,
        rcpts: list[RcptParams],
        message: MessageSource,
        *,
        probe: bool = False,
    ) -> list[RcptResult]:
        """One MAIL/RCPT.../DATA; a result per recipient, in order.

        Each stage is held to what RFC 5321 §4.3.2 lets it answer: 2xx to
        MAIL and RCPT, exactly 354 to DATA, 2xx to the final dot. A 4xx or
        5xx fails the recipients it concerns by its class; any other reply
        (a 354 to MAIL or RCPT, a 250 or 252 to DATA, a 3xx after the dot)
        fails them temporarily and the connection is dropped, as its state is
        unknown. A 252 to MAIL or RCPT is a 2xx: the transaction goes on, and
        still nothing is sent until the body is accepted.

        `probe` (a connection that sat idle): RSET first, and StaleConnection
        when it does not get its 250, before anything of the transaction
        counts. Raises SMTPClientError when the connection breaks."""
        self.transactions += 1
        n = len(rcpts)
        ext = self.extensions
        params = []
        if "SIZE" in ext:
            params.append(f"SIZE={mail.size}")
            limit = ext["SIZE"].strip()
            if limit.isdigit() and int(limit) and mail.size > int(limit):
                r = Reply(552, "5.3.4", f"message size {mail.size} exceeds the limit of {self.hop}")
                return [RcptResult.failure(r)] * n
        if mail.body == "8BITMIME" and "8BITMIME" in ext:
            params.append("BODY=8BITMIME")
        if mail.smtputf8:
            if "SMTPUTF8" not in ext:
                r = Reply(550, "5.6.7", f"SMTPUTF8 is required, but was not offered by {self.hop}")
                return [RcptResult.failure(r)] * n
            params.append("SMTPUTF8")
        dsn = "DSN" in ext
        if dsn and mail.ret:
            params.append(f"RET={mail.ret}")
        if dsn and mail.envid:
            params.append(f"ENVID={xtext(mail.envid)}")
        mail_line = " ".join([f"MAIL FROM:<{mail.sender}>", *params])
        rcpt_lines = []
        for rc in rcpts:
            rparams = []
            if dsn and rc.notify:
                rparams.append("NOTIFY=" + ",".join(rc.notify))
            if dsn and rc.orcpt:
                kind, _, addr = rc.orcpt.partition(";")
                rparams.append(f"ORCPT={kind};{xtext(addr)}")
            rcpt_lines.append(" ".join([f"RCPT TO:<{rc.address}>", *rparams]))
        if "PIPELINING" in ext:
            results, go = await self._pipelined(mail_line, rcpt_lines, probe)
        else:
            if probe and not await self.rset():
                raise StaleConnection(Reply(451, "4.4.2", f"idle connection to {self.hop} lost"))
            results, go = await self._lockstep(mail_line, rcpt_lines)
        if not go:
            return [x for x in results if x is not None]
        return await self._data(results, message)

    async def _lockstep(
        self, mail_line: str, rcpt_lines: list[str]
    ) -> tuple[Sequence[RcptResult | None], bool]:
        """MAIL, each RCPT and DATA, each sent after the reply to the one
        before. The results so far (None: accepted, its result is the reply
        to the body) and whether the body is to be sent (DATA got its 354);
        when not, every recipient has its result."""
        n = len(rcpt_lines)
        r = await self.command(mail_line, TIMEOUT_COMMAND)
        if r.code // 100 != 2:
            failed = self._failed("MAIL FROM", r)
            await self._after_failure(r)
            return [failed] * n, False
        results: list[RcptResult | None] = []
        for line in rcpt_lines:
            r = await self.command(line, TIMEOUT_COMMAND)
            if _odd(r):
                # Nothing certain about this session any more: no body is sent in it.
                failed = self._failed("RCPT TO", r)
                self.close()
                return [x or failed for x in results] + [failed] * (n - len(results)), False
            results.append(None if r.code // 100 == 2 else RcptResult.failure(r))
        if all(x is not None for x in results):
            await self.rset()
            return results, False
        r = await self.command("DATA", TIMEOUT_DATA_INIT)
        if r.code != 354:
            failed = self._failed("DATA", r)
            await self._after_failure(r)
            return [x or failed for x in results], False
        return results, True

    async def _pipelined(
        self, mail_line: str, rcpt_lines: list[str], probe: bool
    ) -> tuple[Sequence[RcptResult | None], bool]:
        """`_lockstep` in one write (RFC 2920 §3.1: [RSET,] MAIL, every RCPT,
        then DATA, which must end a group), the replies read in order. A
        stage's reply means what it means in `_lockstep`; a refused MAIL
        fails every recipient whatever the RCPTs got, and a 354 to a DATA
        that has no recipient to go to (or follows a refused MAIL) drops the
        connection, as no body is ever sent for it. A reply outside its
        stage's classes drops the connection at once."""
        n = len(rcpt_lines)
        group = (["RSET"] if probe else []) + [mail_line, *rcpt_lines, "DATA"]
        wire = "".join(line + "\r\n" for line in group).encode("utf-8")
        if probe:
            await self._probe(wire)
        else:
            await self.send(wire, TIMEOUT_COMMAND)
        mail_r = await self.read_reply(TIMEOUT_COMMAND)
        refused = mail_r.code // 100 != 2
        if _odd(mail_r):
            self.close()
            return [self._failed("MAIL FROM", mail_r)] * n, False
        results: list[RcptResult | None] = []
        for _ in rcpt_lines:
            r = await self.read_reply(TIMEOUT_COMMAND)
            if _odd(r):
                self.close()
                if refused:
                    return [self._failed("MAIL FROM", mail_r)] * n, False
                failed = self._failed("RCPT TO", r)
                return [x or failed for x in results] + [failed] * (n - len(results)), False
            results.append(None if r.code // 100 == 2 else RcptResult.failure(r))
        data_r = await self.read_reply(TIMEOUT_DATA_INIT)
        if refused or all(x is not None for x in results):
            await self._after_failure(data_r)  # a 354 here sends no body: dropped
            if refused:
                return [self._failed("MAIL FROM", mail_r)] * n, False
            return results, False
        if data_r.code != 354:
            failed = self._failed("DATA", data_r)
            await self._after_failure(data_r)
            return [x or failed for x in results], False
        return results, True

    async def _probe(self, wire: bytes) -> None:
        """Send a group that starts with RSET and read the RSET's reply: a
        connection that sat idle is known to be alive, or StaleConnection."""
        try:
            await self.send(wire, TIMEOUT_COMMAND)
            r = await self.read_reply(TIMEOUT_COMMAND)
        except SMTPClientError as e:
            self.close()
            raise StaleConnection(e.reply) from None
        if r.code != 250:
            self.close()
            raise StaleConnection(r)

    async def _data(
        self, results: Sequence[RcptResult | None], message: MessageSource
    ) -> list[RcptResult]:
        """The body after a 354, and the results: the accepted recipients'
        (None in `results`) is the reply to the final dot."""
        enc = WireEncoder(LINE_LENGTH_LIMIT)
        if message.in_memory:
            # A small message goes in one write with its final dot: each write
            # is a send to the peer, made while the event loop waits.
            wire = [enc.feed(piece) for piece in message.chunks()]
            await self.send(b"".join([*wire, enc.end(), b".\r\n"]), TIMEOUT_DATA_BLOCK)
        else:
            async for piece in message.achunks():
                out = enc.feed(piece)
                if out:
                    await self.send(out, TIMEOUT_DATA_BLOCK)
            await self.send(enc.end() + b".\r\n", TIMEOUT_DATA_BLOCK)
        self.lines_broken = enc.broken
        final = await self.read_reply(TIMEOUT_DATA_END)
        if final.code // 100 == 2:
            # The one place a recipient becomes SENT: the peer took the body.
            done = RcptResult(final, Outcome.SENT)
            return [x or done for x in results]
        failed = self._failed("end of data", final)
        if not 400 <= final.code < 600:
            self.close()
        return [x or failed for x in results]

    def _failed(self, stage: str, r: Reply) -> RcptResult:
        if 400 <= r.code < 600:
            return RcptResult.failure(r)
        return RcptResult(
            Reply(451, "4.5.0", f"unexpected reply to {stage} from {self.hop}: {_one_line(r)}"),
            Outcome.DEFERRED,
        )

    async def _after_failure(self, r: Reply) -> None:
        """After a refusal the session is reset for the next transaction; after
        a reply that makes no sense at that stage, it is given up."""
        if 400 <= r.code < 600:
            await self.rset()
        else:
            self.close()

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
            if self._watchdog is not None:
                self._watchdog.cancel()
                self._watchdog = None
            self.writer.close()
