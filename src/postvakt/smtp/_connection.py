"""The SMTP server connection: bytes in, events and replies out.

Theory of operation (h11's shape, RFC 5321 semantics):

- The adapter feeds bytes with `receive_data()` (b"" is EOF) and pulls
  events with `next_event()` until it gets `NEED_DATA` or `PAUSED`. Replies
  the core decides itself (syntax, sequence, limits) and replies the
  application gives through `respond()` go into one output buffer, in the
  order of the commands, which is what PIPELINING needs (RFC 2920).
- This object owns the only receive buffer. That makes the two classic
  byte-level attacks plain buffer rules: plaintext pipelined behind
  STARTTLS is dropped (CVE-2011-0411, CVE-2024-34083), and DATA ends only at
  <CRLF>.<CRLF> (SMTP smuggling, CVE-2024-27305; see `_data.py`).
- While an event waits for `respond()`, later input stays buffered and
  `next_event()` says `PAUSED`. `buffered` tells the adapter how much is
  waiting, so it can stop reading (the core never drops pipelined input).
- Any input whatsoever yields replies, never an exception.

Rules of the house:
- Which command may run in which state is decided in `_state.py` only.
- No I/O, no clock: time-based decisions (idle timeout, error delays) are
  the adapter's, which calls `idle_timeout()` and reads `error_count`.
"""

from __future__ import annotations

from collections.abc import Callable

from postvakt.address import AddressError, parse_path, split_path_and_params
from postvakt.reply import Reply
from postvakt.smtp import replies
from postvakt.smtp._data import DataReader
from postvakt.smtp._errors import LocalProtocolError, RemoteProtocolError
from postvakt.smtp._events import (
    NEED_DATA,
    NEEDS_RESPONSE,
    PAUSED,
    AuthCredentials,
    Close,
    DataChunk,
    DataStart,
    EndOfData,
    Event,
    Helo,
    MailFrom,
    Quit,
    RcptTo,
    Signal,
    StartTLS,
)
from postvakt.smtp._params import mail_params, rcpt_params
from postvakt.smtp._sasl import MAX_AUTH_LINE, MECHANISMS, SaslExchange, Step
from postvakt.smtp._settings import Settings
from postvakt.smtp._state import ALLOWED, COMMANDS, ON_POSITIVE, State, refusal
from postvakt.tally import CommandTally

# RFC 5321 §4.5.3.1.4: a command line is at most 512 octets including CRLF.
MAX_COMMAND_LINE = 512
# Postfix smtpd_junk_command_limit: beyond 100 NOOP/RSET/VRFY/HELP, each one
# also counts as an error, so an idle-looping client meets the hard limit.
JUNK_COMMAND_LIMIT = 100
JUNK_COMMANDS = frozenset({"NOOP", "RSET", "VRFY", "HELP"})
# Replies that answer a command only halfway: its outcome comes with the next reply.
INTERMEDIATE_CODES = frozenset({334, 354})
# The order of the session summary (Postfix's "disconnect from" line).
SUMMARY_ORDER = (
    "helo", "ehlo", "starttls", "auth", "mail", "rcpt", "data", "rset", "noop", "vrfy", "expn",
    "help", "quit", "unknown",
)  # fmt: skip

# Postfix smtpd_recipient_overshoot_limit: "too many recipients" replies
# count as errors only after this many (a big mailing is not an attack).
RECIPIENT_OVERSHOOT_LIMIT = 1000


class SMTPServer:
    """One SMTP server session, without I/O."""

    # Thousands of idle sessions per process: no per-instance __dict__.
    __slots__ = (
        "settings",
        "helo",
        "esmtp",
        "tls",
        "login",
        "error_count",
        "sender",
        "recipient_count",
        "_state",
        "_buf",
        "_out",
        "_events",
        "_awaiting",
        "_pending",
        "_eof",
        "_discarding",
        "_shutdown",
        "_junk",
        "_tally",
        "_overshoot",
        "_sasl",
        "_data",
    )

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.helo: str | None = None
        self.esmtp = False
        self.tls = settings.tls_active
        self.login: str | None = None
        self.error_count = 0
        self.sender: MailFrom | None = None
        self.recipient_count = 0
        self._state = State.GREETED
        self._buf = bytearray()
        self._out = bytearray()
        self._events: list[Event] = []  # a few at most: a list is smaller than a deque
        self._awaiting: str | None = None  # the verb whose event waits for respond()
        self._pending: Event | None = None
        self._eof = False
        self._discarding = False  # inside an over-long command line, until its LF
        self._shutdown = False
        self._junk = 0
        self._overshoot = 0
        self._sasl: SaslExchange | None = None
        self._data: DataReader | None = None
        self._tally = CommandTally(SUMMARY_ORDER)
        self._emit(replies.banner(settings.hostname), error=False)

    # ------------------------------------------------------------ public API

    @property
    def state(self) -> State:
        return self._state

    @property
    def buffered(self) -> int:
        """Bytes received but not yet consumed (the adapter pauses reading on this)."""
        return len(self._buf)

    def command_summary(self) -> str:
        """`ehlo=1 mail=1 rcpt=0/1 data=1 quit=1 commands=4/5` (Postfix's form):
        a command that was refused at least once shows succeeded/issued."""
        return self._tally.summary()

    def data_to_send(self) -> bytes:
        out = bytes(self._out)
        self._out.clear()
        return out

    def receive_data(self, data: bytes) -> None:
        if self._state is State.CLOSED or self._eof:
            return
        if not data:
            self._eof = True
            return
        if self._state is State.STARTTLS:
            # RFC 3207 §4.2 / CVE-2011-0411: nothing sent before the handshake counts.
            return
        self._buf += data

    def next_event(self) -> Event | Signal:
        try:
            return self._next_event()
        except Exception:  # the last guard: peer input must never raise out of the core
            if self._state is State.CLOSED:
                return self._events.pop(0) if self._events else NEED_DATA
            self._emit(replies.internal_error(self.settings.hostname), error=False)
            self._close("internal error")
            return self._events.pop(0)

    def respond(self, reply: Reply, *, login: str | None = None) -> None:
        """The application's answer to the event that is waiting.

        For AuthCredentials, a 2xx sets `conn.login` to `login` when given
        (the canonical name the directory knows), else to the username typed.
        """
        if self._state is State.CLOSED:
            return
        verb = self._awaiting
        if verb is None:
            raise LocalProtocolError("respond() called while no event waits for an answer")
        pending = self._pending
        self._awaiting = None
        self._pending = None
        if verb == "DATA":
            self._respond_data(reply)
        elif verb == "END":
            self._respond_end(reply)
        elif verb == "AUTH":
            if 200 <= reply.code < 300 and isinstance(pending, AuthCredentials):
                self.login = login if login is not None else pending.username
            self._emit(reply)
        else:
            if 200 <= reply.code < 300:
                self._state = ON_POSITIVE[(self._state, verb)]
                if isinstance(pending, MailFrom):
                    self.sender = pending
                else:
                    self.recipient_count += 1
            self._emit(reply)

    def tls_started(self) -> None:
        """The handshake finished: forget everything learnt in plaintext (RFC 3207 §4.2)."""
        if self._state is State.CLOSED:
            return
        if self._state is not State.STARTTLS:
            raise LocalProtocolError("tls_started() without a STARTTLS in progress")
        self.tls = True
        self.helo = None
        self.esmtp = False
        self.login = None
        self._reset_transaction()
        self._buf.clear()
        self._discarding = False
        self._state = State.GREETED

    def idle_timeout(self) -> None:
        if self._state is State.CLOSED:
            return
        self._emit(replies.timeout(self.settings.hostname), error=False)
        self._close("idle timeout")

    def shutdown(self) -> None:
        """Say 421 at the next command boundary (now, if the session is between commands)."""
        self._shutdown = True
        if self._state in ALLOWED and self._awaiting is None:
            self._say_shutdown()

    # ------------------------------------------------------------ event loop

    def _next_event(self) -> Event | Signal:
        while True:
            if self._events:
                return self._events.pop(0)
            if self._state is State.CLOSED:
                return NEED_DATA
            if self._awaiting is not None:
                return PAUSED
            if self._state is State.DATA:
                return self._read_data()
            if self._shutdown and self._state in ALLOWED:
                self._say_shutdown()
                continue
            if self._state is State.STARTTLS:
                if self._eof:
                    self._close("peer closed")
                    continue
                return NEED_DATA
            framed = self._read_line()
            if framed is None:
                if self._eof:
                    self._close("peer closed")
                    continue
                return NEED_DATA
            if self._state is State.AUTH:
                self._auth_line(framed)
            elif isinstance(framed, Reply):
                self._emit(framed)
            else:
                self._command(framed)

    def _read_line(self) -> bytes | Reply | None:
        """One CRLF-terminated line (without CRLF), a refusal for a bad one, or None."""
        buf = self._buf
        if self._discarding:
            nl = buf.find(b"\n")
            if nl < 0:
                buf.clear()
                return None
            del buf[: nl + 1]
            self._discarding = False
        in_auth = self._state is State.AUTH or buf[:5].upper() == b"AUTH "
        limit = MAX_AUTH_LINE if in_auth else MAX_COMMAND_LINE
        nl = buf.find(b"\n", 0, limit)
        if nl < 0:
            if len(buf) < limit:
                return None
            # Drop the over-long line up to its LF; if that has not come yet,
            # drop what is here and go on dropping until it does.
            end = buf.find(b"\n", limit)
            if end < 0:
                buf.clear()
                self._discarding = True
            else:
                del buf[: end + 1]
            return replies.AUTH_LINE_TOO_LONG if in_auth else replies.LINE_TOO_LONG
        raw = bytes(buf[:nl])
        del buf[: nl + 1]
        if not raw.endswith(b"\r"):
            return replies.BARE_LF
        line = raw[:-1]
        if b"\r" in line:
            return replies.BARE_CR
        if b"\x00" in line:
            return replies.NUL_IN_COMMAND
        return line

    def _read_data(self) -> Event | Signal:
        reader = self._data
        assert reader is not None
        out, done = reader.consume(self._buf)
        if done:
            self._data = None
            end = EndOfData(reader.size, reader.problem, reader.headers, reader.headers_complete)
            self._await("END", end)
            if out:
                self._events.insert(0, DataChunk(out))
            return self._events.pop(0)
        if out:
            return DataChunk(out)
        if self._eof:
            self._close("peer closed")
            return self._events.pop(0)
        return NEED_DATA

    # ------------------------------------------------------------ commands

    def _command(self, line: bytes) -> None:
        junk = False
        try:
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError:
                self._tally.issued("unknown")
                raise RemoteProtocolError(replies.BAD_UTF8) from None
            word, _, arg = text.partition(" ")
            verb = word.upper()
            if verb not in COMMANDS:
                self._tally.issued("unknown")
                raise RemoteProtocolError(replies.UNRECOGNIZED)
            self._tally.issued(verb.lower())
            refused = refusal(self._state, verb)
            if refused is not None:
                raise RemoteProtocolError(refused)
            if verb in JUNK_COMMANDS:
                self._junk += 1
                junk = self._junk > JUNK_COMMAND_LIMIT
            _HANDLERS[verb](self, arg)
        except (RemoteProtocolError, AddressError) as e:
            self._emit(e.reply)
        if junk and self._state is not State.CLOSED:
            self._count_error()

    def _helo(self, arg: str) -> None:
        self._greet(arg, extended=False)

    def _ehlo(self, arg: str) -> None:
        self._greet(arg, extended=True)

    def _greet(self, arg: str, extended: bool) -> None:
        name = arg.strip()
        if not name:
            raise RemoteProtocolError(replies.SYNTAX_EHLO if extended else replies.SYNTAX_HELO)
        # RFC 5321 §4.1.4: HELO/EHLO in a transaction resets it, like RSET.
        self._reset_transaction()
        self.helo = name
        self.esmtp = extended
        self._state = State.READY
        if extended:
            self._emit(replies.ehlo_ok(self.settings.hostname, self._keywords()))
        else:
            self._emit(replies.helo_ok(self.settings.hostname))
        self._events.append(Helo(name, extended))

    def _keywords(self) -> tuple[str, ...]:
        s = self.settings
        words = [
            "PIPELINING",
            f"SIZE {s.max_message_size}",
            "8BITMIME",
            "SMTPUTF8",
            "ENHANCEDSTATUSCODES",
            "DSN",
        ]
        if s.tls_available and not self.tls:
            words.append("STARTTLS")
        mechanisms = self._mechanisms()
        if self.tls and mechanisms:
            words.append("AUTH " + " ".join(mechanisms))
        words.append("HELP")
        return tuple(words)

    def _mechanisms(self) -> tuple[str, ...]:
        return tuple(m.upper() for m in self.settings.auth_mechanisms if m.upper() in MECHANISMS)

    def _mail(self, arg: str) -> None:
        s = self.settings
        if s.require_tls and not self.tls:
            raise RemoteProtocolError(replies.MUST_STARTTLS)
        if s.require_auth and self.login is None:
            raise RemoteProtocolError(replies.AUTH_REQUIRED)
        path, params = split_path_and_params(self._keyword_arg(arg, "FROM", replies.SYNTAX_MAIL))
        if not path:
            raise RemoteProtocolError(replies.SYNTAX_MAIL)
        parsed = mail_params(params, s.max_message_size)
        sender = parse_path(path, smtputf8=parsed.smtputf8, allow_null=True)
        event = MailFrom(
            sender, parsed.size, parsed.body, parsed.smtputf8, parsed.ret, parsed.envid
        )
        self._await("MAIL", event)

    def _rcpt(self, arg: str) -> None:
        if self.recipient_count >= self.settings.max_recipients:
            # RFC 5321 §4.5.3.1.10: "too many recipients" is 452, and not fatal.
            self._overshoot += 1
            self._emit(
                replies.TOO_MANY_RECIPIENTS, error=self._overshoot > RECIPIENT_OVERSHOOT_LIMIT
            )
            return
        path, params = split_path_and_params(self._keyword_arg(arg, "TO", replies.SYNTAX_RCPT))
        if not path:
            raise RemoteProtocolError(replies.SYNTAX_RCPT)
        parsed = rcpt_params(params)
        smtputf8 = self.sender is not None and self.sender.smtputf8
        recipient = parse_path(path, smtputf8=smtputf8)
        self._await("RCPT", RcptTo(recipient, parsed.notify, parsed.orcpt))

    @staticmethod
    def _keyword_arg(arg: str, keyword: str, usage: Reply) -> str:
        """`FROM:<a@b> X=Y` -> `<a@b> X=Y`; the usage reply when the keyword is missing."""
        head, colon, rest = arg.partition(":")
        if not colon or head.strip().upper() != keyword:
            raise RemoteProtocolError(usage)
        return rest

    def _data_cmd(self, arg: str) -> None:
        if arg.strip():
            raise RemoteProtocolError(replies.SYNTAX_DATA)
        if self._buf:
            self._sync_error()
            return
        self._await("DATA", DataStart())

    def _rset(self, arg: str) -> None:
        if arg.strip():
            raise RemoteProtocolError(replies.SYNTAX_RSET)
        self._reset_transaction()
        self._state = State.READY if self.helo is not None else State.GREETED
        self._emit(replies.OK)

    def _noop(self, arg: str) -> None:
        self._emit(replies.OK)

    def _quit(self, arg: str) -> None:
        if arg.strip():
            raise RemoteProtocolError(replies.SYNTAX_QUIT)
        self._emit(replies.BYE, error=False)
        self._state = State.CLOSED
        self._awaiting = None
        self._events.append(Quit())

    def _vrfy(self, arg: str) -> None:
        if not arg.strip():
            raise RemoteProtocolError(replies.SYNTAX_VRFY)
        self._emit(replies.VRFY_CANNOT)

    def _expn(self, arg: str) -> None:
        raise RemoteProtocolError(replies.NOT_IMPLEMENTED)

    def _help(self, arg: str) -> None:
        self._emit(replies.HELP)

    def _starttls(self, arg: str) -> None:
        if arg.strip():
            raise RemoteProtocolError(replies.SYNTAX_STARTTLS)
        if self.tls:
            raise RemoteProtocolError(replies.TLS_ACTIVE)
        if not self.settings.tls_available:
            raise RemoteProtocolError(replies.NOT_IMPLEMENTED)
        self._emit(replies.TLS_READY)
        # Postfix's vstream_fpurge after the 220; aiosmtpd's CVE-2024-34083 fix.
        self._buf.clear()
        self._discarding = False
        self._state = State.STARTTLS
        self._events.append(StartTLS())

    # ------------------------------------------------------------ AUTH

    def _auth(self, arg: str) -> None:
        mechanisms = self._mechanisms()
        if not mechanisms:
            raise RemoteProtocolError(replies.AUTH_NOT_ENABLED)
        if self.login is not None:
            raise RemoteProtocolError(replies.ALREADY_AUTHENTICATED)
        if not self.tls:
            # RFC 4954 §4: same answer whatever the credentials (no oracle).
            raise RemoteProtocolError(replies.ENCRYPTION_REQUIRED)
        words = arg.split()
        if not words or len(words) > 2:
            raise RemoteProtocolError(replies.SYNTAX_AUTH)
        mechanism = words[0].upper()
        if mechanism not in mechanisms:
            raise RemoteProtocolError(replies.UNKNOWN_MECHANISM)
        exchange = SaslExchange(mechanism)
        self._sasl_step(exchange, exchange.start(words[1] if len(words) == 2 else None))

    def _auth_line(self, framed: bytes | Reply) -> None:
        exchange = self._sasl
        assert exchange is not None
        if isinstance(framed, Reply):
            self._sasl_step(exchange, framed)
            return
        try:
            text = framed.decode("ascii")
        except UnicodeDecodeError:
            self._sasl_step(exchange, replies.BAD_BASE64)
            return
        self._sasl_step(exchange, exchange.step(text))

    def _sasl_step(self, exchange: SaslExchange, result: Step) -> None:
        if isinstance(result, AuthCredentials):
            self._sasl = None
            self._state = State.READY
            self._await("AUTH", result)
        elif result.code == 334:
            self._sasl = exchange
            self._state = State.AUTH
            self._emit(result, error=False)
        else:
            self._sasl = None
            self._state = State.READY
            self._emit(result)

    # ------------------------------------------------------------ answers

    def _respond_data(self, reply: Reply) -> None:
        if not 300 <= reply.code < 400:
            self._emit(reply)
            return
        if self._buf:
            # Content arrived before the 354 went out (robustness M13).
            self._sync_error()
            return
        self._emit(reply)
        self._state = ON_POSITIVE[(self._state, "DATA")]
        self._data = DataReader(
            self.settings.max_message_size, self.settings.max_hops, self.settings.max_line_length
        )

    def _respond_end(self, reply: Reply) -> None:
        self._emit(reply)
        if self._state is State.CLOSED:
            return
        if 200 <= reply.code < 300:
            # Postfix resets the junk command count after mail is delivered.
            self._junk = 0
        self._reset_transaction()
        self._state = State.READY

    # ------------------------------------------------------------ helpers

    def _await(self, verb: str, event: Event) -> None:
        self._awaiting = verb
        self._pending = event
        self._events.append(event)

    def _reset_transaction(self) -> None:
        self.sender = None
        self.recipient_count = 0
        self._overshoot = 0
        self._data = None
        self._sasl = None

    def _emit(self, reply: Reply, error: bool | None = None) -> None:
        self._out += reply.encode()
        if reply.code not in INTERMEDIATE_CODES:
            self._tally.answered(reply.code < 400)
        if reply.code >= 400 if error is None else error:
            self._count_error()

    def _count_error(self) -> None:
        self.error_count += 1
        if self.error_count >= self.settings.hard_error_limit and self._state is not State.CLOSED:
            self._emit(replies.too_many_errors(self.settings.hostname), error=False)
            self._close("too many errors")

    def _sync_error(self) -> None:
        self._emit(replies.SYNC_ERROR, error=False)
        self._close("protocol synchronization error")

    def _say_shutdown(self) -> None:
        self._emit(replies.shutting_down(self.settings.hostname), error=False)
        self._close("server shutting down")

    def _close(self, reason: str) -> None:
        self._state = State.CLOSED
        self._awaiting = None
        self._pending = None
        self._buf.clear()
        self._events = [e for e in self._events if not isinstance(e, NEEDS_RESPONSE)]
        self._events.append(Close(reason))


# Which method runs an allowed command (whether it may run is `_state.py`'s call).
_HANDLERS: dict[str, Callable[[SMTPServer, str], None]] = {
    "HELO": SMTPServer._helo,
    "EHLO": SMTPServer._ehlo,
    "MAIL": SMTPServer._mail,
    "RCPT": SMTPServer._rcpt,
    "DATA": SMTPServer._data_cmd,
    "RSET": SMTPServer._rset,
    "NOOP": SMTPServer._noop,
    "QUIT": SMTPServer._quit,
    "VRFY": SMTPServer._vrfy,
    "EXPN": SMTPServer._expn,
    "HELP": SMTPServer._help,
    "STARTTLS": SMTPServer._starttls,
    "AUTH": SMTPServer._auth,
}
