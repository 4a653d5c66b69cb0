"""Sans-IO POP3 server: bytes in, events and reply bytes out.

Rules of the house:
- This module knows no sockets, TLS, clocks, files or passwords. It owns the
  only receive buffer and the state; everything else is asked for with an
  event, and the caller answers by calling one method (`login_ok`,
  `login_failed`, `tls_started`, `message`, `update_done`).
- While an event waits for its answer the connection is PAUSED: pipelined
  commands stay in the buffer and are answered in order afterwards
  (RFC 2449 §6.6 PIPELINING).
- Which command is valid in which state is the table `COMMANDS`; anything not
  in it gets a `-ERR` reply and counts as a bad command. No input raises.
- On STLS, bytes already buffered behind the command are plaintext the peer
  could have injected; they are thrown away, and so is anything that arrives
  before `tls_started()` (RFC 2595 §3.2, the POP3 form of CVE-2011-0411).
- Deletions are only marks until QUIT in TRANSACTION state (RFC 1939 §6);
  they are handed out as one `Update` event, never earlier.

Use:
    conn = POP3Connection(Settings(tls_active=False, tls_available=True, plaintext_allowed=False))
    transport.write(conn.data_to_send())            # the greeting
    conn.receive_data(chunk)                         # b"" = the peer closed
    while (ev := conn.next_event()) not in (NEED_DATA, PAUSED): handle(ev)
    transport.write(conn.data_to_send())
"""

from __future__ import annotations

import base64
import binascii
import enum
from collections.abc import Sequence
from dataclasses import dataclass

from postvakt.pop3 import replies as R
from postvakt.pop3.message import encode_message
from postvakt.pop3.replies import POP3Error, POP3Reply
from postvakt.tally import CommandTally

# ---------------------------------------------------------------- limits

# RFC 2449 §4: a command line is at most 255 octets including CRLF. RFC 5034
# §4 lets an AUTH initial response or SASL response run longer; PLAIN with a
# 255-octet name and password is under 700 octets of base64, so 1024 is room
# enough without letting a peer buffer more than that per line.
MAX_LINE = 1024
# Dovecot (pop3-client.c CLIENT_MAX_BAD_COMMANDS) disconnects after 20 bad
# commands in a row (a good one resets the count); a real client never gets near it.
MAX_BAD_COMMANDS = 20
# Input that may pile up while the caller answers an event (a password check
# takes tens of milliseconds). A client pipelining after PASS sends a few
# commands of about 10 octets; 64 KiB is thousands of them, and bounds what a
# flood can park in memory meanwhile.
MAX_PENDING_INPUT = 64 * 1024
# RFC 1939 message numbers; a 10-digit number exceeds any mailbox we serve and
# keeps int() away from megabyte-long digit strings.
MAX_NUMBER_DIGITS = 10
# RFC 2449 §4: a keyword is at most 40 characters; longer is no command at all.
MAX_KEYWORD = 40
# The order of the session summary line (as SMTP's).
SUMMARY_ORDER = (
    "capa", "stls", "user", "pass", "auth", "stat", "list", "uidl", "retr", "top", "dele",
    "rset", "noop", "apop", "quit", "unknown",
)  # fmt: skip

CAPA_IMPLEMENTATION = "postvakt"


class _Sentinel:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


NEED_DATA = _Sentinel("NEED_DATA")
PAUSED = _Sentinel("PAUSED")


class State(enum.Enum):
    AUTHORIZATION = "AUTHORIZATION"
    TRANSACTION = "TRANSACTION"
    CLOSED = "CLOSED"


# ---------------------------------------------------------------- values


@dataclass(frozen=True)
class Settings:
    """What the listener knows about this connection when it starts."""

    tls_active: bool = False
    # STLS may be offered (a certificate is configured and TLS is not yet on).
    tls_available: bool = False
    # USER/PASS and AUTH PLAIN allowed without TLS (config [pop3] plaintext).
    plaintext_allowed: bool = False
    # Failed logins on one connection before it is closed ([pop3] max_failures).
    max_failures: int = 3
    # Seconds a user must wait between logins (RFC 2449 §6.5 LOGIN-DELAY); 0 = none.
    login_delay: int = 0


@dataclass(frozen=True)
class MessageInfo:
    """One message of the login snapshot: its UIDL and its size in CRLF form."""

    uid: str
    size: int


# ---------------------------------------------------------------- events


@dataclass(frozen=True)
class Authenticate:
    """Check these credentials; answer with `login_ok(...)` or `login_failed(...)`."""

    login: str
    password: str
    mechanism: str  # "USER" or "PLAIN"
    # SASL authorization identity. When set, the caller must refuse the login
    # unless it names the same user as the verified login: nobody acts for
    # another user here, and the refusal must look like any other failure.
    authzid: str = ""


@dataclass(frozen=True)
class StartTLS:
    """`+OK` is queued; flush it, run the handshake, then call `tls_started()`."""


@dataclass(frozen=True)
class Fetch:
    """Read this message; answer with `message(data)` (None when it has vanished), or with
    `message(data, encoded)` when the caller has already run `encode_message(data, lines)`
    (off its event loop: a big message's CRLF and dot-stuffing take a while)."""

    number: int
    uid: str
    lines: int | None  # None for RETR, n for TOP


@dataclass(frozen=True)
class Update:
    """QUIT in TRANSACTION: remove these messages, then call `update_done(ok)`."""

    deleted: tuple[str, ...]


@dataclass(frozen=True)
class Close:
    """Flush what is queued and close the connection; the session is over."""

    reason: str


Event = Authenticate | StartTLS | Fetch | Update | Close


# ---------------------------------------------------------------- state table

# state -> commands valid in it. A command missing here is answered with
# "-ERR Command not valid in this state" (known elsewhere) or "-ERR Unknown
# command", and counts as a bad command.
COMMANDS: dict[State, frozenset[str]] = {
    State.AUTHORIZATION: frozenset({"CAPA", "USER", "PASS", "AUTH", "APOP", "STLS", "QUIT"}),
    State.TRANSACTION: frozenset(
        {"CAPA", "STAT", "LIST", "RETR", "DELE", "NOOP", "RSET", "QUIT", "TOP", "UIDL"}
    ),
    State.CLOSED: frozenset(),
}
_KNOWN = frozenset().union(*COMMANDS.values())


class _Wait(enum.Enum):
    NONE = enum.auto()
    AUTH = enum.auto()
    TLS = enum.auto()
    MESSAGE = enum.auto()
    UPDATE = enum.auto()
    SASL = enum.auto()  # waiting for the client's SASL response line, not for the caller


_CALLER_WAITS = frozenset({_Wait.AUTH, _Wait.MESSAGE, _Wait.UPDATE})


class POP3Connection:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.state = State.AUTHORIZATION
        self.tls_active = settings.tls_active
        self.login: str | None = None  # set by login_ok
        self._buf = bytearray()
        self._out = bytearray()
        self._wait = _Wait.NONE
        self._discarding = False  # inside an over-long line: drop up to the next LF
        self._eof = False
        self._overflow = False
        self._close_reason: str | None = None
        self._close_reported = False
        self._user: str | None = None
        self._bad = 0
        self._failures = 0
        self._messages: list[MessageInfo] = []
        self._deleted: set[int] = set()  # 0-based indexes into _messages
        self._pending_fetch: Fetch | None = None
        self._tally = CommandTally(SUMMARY_ORDER)
        self._emit(R.GREETING)

    # ------------------------------------------------------------ I/O surface

    def receive_data(self, data: bytes) -> None:
        if not data:
            self._eof = True
            return
        if self.state is State.CLOSED or self._wait is _Wait.TLS:
            return  # after close, or plaintext behind STLS: never read
        if self._wait in _CALLER_WAITS and len(self._buf) + len(data) > MAX_PENDING_INPUT:
            self._overflow = True
            return
        self._buf += data

    def data_to_send(self) -> bytes:
        out = bytes(self._out)
        self._out.clear()
        return out

    @property
    def closed(self) -> bool:
        return self.state is State.CLOSED

    def command_summary(self) -> str:
        """`user=1 pass=1 stat=1 retr=2 dele=2 quit=1 commands=8` (as SMTP's summary)."""
        return self._tally.summary()

    @property
    def marked_deleted(self) -> tuple[str, ...]:
        return tuple(self._messages[i].uid for i in sorted(self._deleted))

    def next_event(self) -> Event | _Sentinel:
        while True:
            if self.state is State.CLOSED:
                if not self._close_reported:
                    self._close_reported = True
                    return Close(self._close_reason or "closed")
                return PAUSED
            if self._wait in _CALLER_WAITS:
                return PAUSED
            if self._overflow:
                self._emit(R.TOO_MUCH_INPUT)
                self._close("too much pipelined input")
                continue
            line = self._take_line()
            if line is None:
                if self._eof:
                    self._close("peer closed the connection")
                    continue
                return NEED_DATA
            if isinstance(line, POP3Reply):
                if self._wait is _Wait.SASL:
                    self._wait = _Wait.NONE  # a broken response ends the exchange
                self._bad_command(line)
                continue
            event = self._handle_line(line)
            if event is not None:
                return event

    # ------------------------------------------------------------ answers from the caller

    def login_ok(self, login: str, messages: Sequence[MessageInfo]) -> None:
        if not self._expect(_Wait.AUTH):
            return
        self._wait = _Wait.NONE
        self.login = login
        self._messages = list(messages)
        self._deleted.clear()
        self.state = State.TRANSACTION
        n, size = self._totals()
        self._emit(R.ok(f"Logged in, {n} messages ({size} octets)"))

    def login_failed(self, reply: POP3Reply = R.AUTH_FAILED, *, counts: bool = True) -> None:
        """A refused login. `counts=False` for [IN-USE] and [SYS/...]: not the client's guess."""
        if not self._expect(_Wait.AUTH):
            return
        self._wait = _Wait.NONE
        self._user = None
        if counts:
            self._failures += 1
            if self._failures >= self.settings.max_failures:
                self._emit(reply)
                self._close("too many authentication failures")
                return
        self._emit(reply)

    def tls_started(self) -> None:
        if not self._expect(_Wait.TLS):
            return
        self._wait = _Wait.NONE
        self.tls_active = True
        self._buf.clear()
        self._user = None

    def message(self, data: bytes | None, encoded: bytes | None = None) -> None:
        if not self._expect(_Wait.MESSAGE):
            return
        self._wait = _Wait.NONE
        fetch = self._pending_fetch
        self._pending_fetch = None
        assert fetch is not None
        if data is None:
            self._emit(R.MESSAGE_VANISHED)
            return
        body = encoded if encoded is not None else encode_message(data, fetch.lines)
        if fetch.lines is None:
            self._emit(R.ok(f"{self._messages[fetch.number - 1].size} octets"))
        else:
            self._emit(R.ok("Top of message follows"))
        self._out += body

    def update_done(self, ok: bool) -> None:
        if not self._expect(_Wait.UPDATE):
            return
        self._wait = _Wait.NONE
        if ok:
            left = len(self._messages) - len(self._deleted)
            self._emit(R.ok(f"Logging out, {left} messages left"))
        else:
            self._emit(R.UPDATE_FAILED)
        self._close("quit")

    def idle_timeout(self) -> None:
        if self.state is not State.CLOSED:
            self._emit(R.IDLE_TIMEOUT)
            self._close("idle timeout")

    def abort(self, reply: POP3Reply, reason: str) -> None:
        """The caller gives up on the session (e.g. server shutdown)."""
        if self.state is not State.CLOSED:
            self._emit(reply)
            self._close(reason)

    # ------------------------------------------------------------ internals

    def _expect(self, wait: _Wait) -> bool:
        """False when the session closed meanwhile (idle timeout, abort): the answer is moot."""
        if self.state is State.CLOSED:
            return False
        if self._wait is not wait:
            raise RuntimeError(f"not waiting for {wait.name} (waiting for {self._wait.name})")
        return True

    def _emit(self, reply: POP3Reply) -> None:
        self._out += reply.encode()
        self._tally.answered(reply.ok)

    def _emit_lines(self, head: POP3Reply, lines: Sequence[str]) -> None:
        self._emit(head)
        for text in lines:
            self._out += text.encode("ascii") + b"\r\n"
        self._out += b".\r\n"

    def _close(self, reason: str) -> None:
        self.state = State.CLOSED
        self._wait = _Wait.NONE
        self._close_reason = reason
        self._buf.clear()

    def _take_line(self) -> str | POP3Reply | None:
        """The next command line without its line ending, a reply for a bad one, or None."""
        while True:
            nl = self._buf.find(b"\n")
            if self._discarding:
                if nl < 0:
                    self._buf.clear()
                    return None
                del self._buf[: nl + 1]
                self._discarding = False
                continue
            if nl < 0:
                if len(self._buf) > MAX_LINE:
                    self._buf.clear()
                    self._discarding = True
                    return R.LINE_TOO_LONG
                return None
            raw = bytes(self._buf[:nl])
            del self._buf[: nl + 1]
            if len(raw) + 1 > MAX_LINE:
                return R.LINE_TOO_LONG
            if raw.endswith(b"\r"):
                raw = raw[:-1]
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                return R.BAD_ENCODING
            if any(ord(c) < 0x20 or ord(c) == 0x7F for c in text):
                return R.BAD_ENCODING
            return text

    def _bad_command(self, reply: POP3Reply) -> None:
        self._bad += 1
        if self._bad >= MAX_BAD_COMMANDS:
            self._emit(R.TOO_MANY_BAD)
            self._close("too many bad commands")
            return
        self._emit(reply)

    def _handle_line(self, line: str) -> Event | None:
        if self._wait is _Wait.SASL:
            self._wait = _Wait.NONE
            return self._sasl_response(line)
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        self._tally.issued(keyword.lower() if keyword in _KNOWN else "unknown")
        if len(keyword) > MAX_KEYWORD or keyword not in _KNOWN:
            self._bad_command(R.UNKNOWN_COMMAND)
            return None
        if keyword not in COMMANDS[self.state]:
            self._bad_command(R.WRONG_STATE)
            return None
        # PASS takes the rest of the line: passwords may hold spaces (RFC 1939 §7).
        args = [rest] if keyword == "PASS" else rest.split()
        try:
            event = _HANDLERS[keyword](self, args)
        except POP3Error as e:
            self._bad_command(e.reply)
            return None
        # As Dovecot does: a command that worked forgives the bad ones before
        # it, so a long session with a few `-ERR`s now and then goes on.
        self._bad = 0
        return event

    # ------------------------------------------------------------ AUTHORIZATION

    def _may_send_plaintext(self) -> bool:
        return self.tls_active or self.settings.plaintext_allowed

    def _capa_lines(self) -> list[str]:
        lines = ["TOP", "UIDL", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING", "EXPIRE NEVER"]
        if self.settings.login_delay > 0:
            lines.append(f"LOGIN-DELAY {self.settings.login_delay}")
        if self.state is State.AUTHORIZATION:
            if self._may_send_plaintext():
                lines += ["USER", "SASL PLAIN"]
            if self.settings.tls_available and not self.tls_active:
                lines.append("STLS")
        lines.append(f"IMPLEMENTATION {CAPA_IMPLEMENTATION}")
        return lines

    def _cmd_capa(self, args: list[str]) -> Event | None:
        self._emit_lines(R.ok("Capability list follows"), self._capa_lines())
        return None

    def _cmd_user(self, args: list[str]) -> Event | None:
        if not self._may_send_plaintext():
            raise POP3Error(R.PLAINTEXT_DISALLOWED)
        if len(args) != 1:
            raise POP3Error(R.BAD_ARGUMENTS)
        # The same reply for every name: USER is no oracle for which users exist.
        self._user = args[0]
        self._emit(R.ok())
        return None

    def _cmd_pass(self, args: list[str]) -> Event | None:
        if not self._may_send_plaintext():
            raise POP3Error(R.PLAINTEXT_DISALLOWED)
        if self._user is None:
            raise POP3Error(R.NO_USER)
        user, self._user = self._user, None
        self._wait = _Wait.AUTH
        return Authenticate(user, args[0] if args else "", "USER")

    def _cmd_apop(self, args: list[str]) -> Event | None:
        # Off: APOP needs plaintext-equivalent secrets and its MD5 challenge is
        # broken (CVE-2007-1558). The greeting carries no timestamp either.
        raise POP3Error(R.APOP_DISABLED)

    def _cmd_auth(self, args: list[str]) -> Event | None:
        if not args:
            # Not in RFC 5034, but common (Dovecot, Outlook probe it): list mechanisms.
            mechs = ["PLAIN"] if self._may_send_plaintext() else []
            self._emit_lines(R.ok(), mechs)
            return None
        if len(args) > 2:
            raise POP3Error(R.BAD_ARGUMENTS)
        if args[0].upper() != "PLAIN":
            raise POP3Error(R.UNSUPPORTED_MECHANISM)
        if not self._may_send_plaintext():
            raise POP3Error(R.PLAINTEXT_DISALLOWED)
        if len(args) == 2:
            return self._sasl_response(args[1])
        self._wait = _Wait.SASL
        self._out += b"+ \r\n"
        return None

    def _sasl_response(self, line: str) -> Event | None:
        if line.strip() == "*":
            self._bad_command(R.AUTH_ABORTED)
            return None
        if line == "=":  # RFC 5034 §4: an empty initial response
            raw = b""
        else:
            try:
                raw = base64.b64decode(line.strip(), validate=True)
            except (binascii.Error, ValueError):
                self._bad_command(R.BAD_BASE64)
                return None
        parts = raw.split(b"\x00")
        if len(parts) != 3:
            self._bad_command(R.BAD_ARGUMENTS)
            return None
        try:
            authzid, authcid, password = (p.decode("utf-8") for p in parts)
        except UnicodeDecodeError:
            self._bad_command(R.BAD_ARGUMENTS)
            return None
        self._wait = _Wait.AUTH
        return Authenticate(authcid, password, "PLAIN", authzid)

    def _cmd_stls(self, args: list[str]) -> Event | None:
        if args:
            raise POP3Error(R.BAD_ARGUMENTS)
        if self.tls_active:
            raise POP3Error(R.TLS_ACTIVE)
        if not self.settings.tls_available:
            raise POP3Error(R.TLS_UNAVAILABLE)
        self._emit(R.BEGIN_TLS)
        self._buf.clear()  # plaintext pipelined behind STLS is never read
        self._wait = _Wait.TLS
        return StartTLS()

    def _cmd_quit(self, args: list[str]) -> Event | None:
        if self.state is State.TRANSACTION:
            self._wait = _Wait.UPDATE
            return Update(self.marked_deleted)
        self._emit(R.SIGNING_OFF)
        self._close("quit")
        return None

    # ------------------------------------------------------------ TRANSACTION

    def _totals(self) -> tuple[int, int]:
        live = [m for i, m in enumerate(self._messages) if i not in self._deleted]
        return len(live), sum(m.size for m in live)

    def _number(self, text: str) -> int:
        """A message number that exists and is not deleted, 1-based."""
        if not text.isdigit() or not text.isascii() or len(text) > MAX_NUMBER_DIGITS:
            raise POP3Error(R.NO_SUCH_MESSAGE)
        n = int(text)
        if not 1 <= n <= len(self._messages):
            raise POP3Error(R.NO_SUCH_MESSAGE)
        if n - 1 in self._deleted:
            raise POP3Error(R.ALREADY_DELETED)
        return n

    def _cmd_stat(self, args: list[str]) -> Event | None:
        if args:
            raise POP3Error(R.BAD_ARGUMENTS)
        n, size = self._totals()
        self._emit(R.ok(f"{n} {size}"))
        return None

    def _listing(self, args: list[str], value: str) -> None:
        def field(i: int) -> str:
            m = self._messages[i]
            return str(m.size) if value == "size" else m.uid

        if len(args) > 1:
            raise POP3Error(R.BAD_ARGUMENTS)
        if args:
            n = self._number(args[0])
            self._emit(R.ok(f"{n} {field(n - 1)}"))
            return
        lines = [
            f"{i + 1} {field(i)}" for i in range(len(self._messages)) if i not in self._deleted
        ]
        n, size = self._totals()
        head = R.ok(f"{n} messages ({size} octets)") if value == "size" else R.ok()
        self._emit_lines(head, lines)

    def _cmd_list(self, args: list[str]) -> Event | None:
        self._listing(args, "size")
        return None

    def _cmd_uidl(self, args: list[str]) -> Event | None:
        self._listing(args, "uid")
        return None

    def _cmd_retr(self, args: list[str]) -> Event | None:
        if len(args) != 1:
            raise POP3Error(R.BAD_ARGUMENTS)
        n = self._number(args[0])
        return self._fetch(Fetch(n, self._messages[n - 1].uid, None))

    def _cmd_top(self, args: list[str]) -> Event | None:
        if len(args) != 2:
            raise POP3Error(R.BAD_ARGUMENTS)
        n = self._number(args[0])
        lines = args[1]
        if not lines.isdigit() or not lines.isascii() or len(lines) > MAX_NUMBER_DIGITS:
            raise POP3Error(R.BAD_ARGUMENTS)
        return self._fetch(Fetch(n, self._messages[n - 1].uid, int(lines)))

    def _fetch(self, fetch: Fetch) -> Event:
        self._pending_fetch = fetch
        self._wait = _Wait.MESSAGE
        return fetch

    def _cmd_dele(self, args: list[str]) -> Event | None:
        if len(args) != 1:
            raise POP3Error(R.BAD_ARGUMENTS)
        n = self._number(args[0])
        self._deleted.add(n - 1)
        self._emit(R.ok(f"Message {n} deleted"))
        return None

    def _cmd_noop(self, args: list[str]) -> Event | None:
        self._emit(R.ok())
        return None

    def _cmd_rset(self, args: list[str]) -> Event | None:
        self._deleted.clear()
        n, size = self._totals()
        self._emit(R.ok(f"{n} messages ({size} octets)"))
        return None


_HANDLERS = {
    "CAPA": POP3Connection._cmd_capa,
    "USER": POP3Connection._cmd_user,
    "PASS": POP3Connection._cmd_pass,
    "APOP": POP3Connection._cmd_apop,
    "AUTH": POP3Connection._cmd_auth,
    "STLS": POP3Connection._cmd_stls,
    "QUIT": POP3Connection._cmd_quit,
    "STAT": POP3Connection._cmd_stat,
    "LIST": POP3Connection._cmd_list,
    "UIDL": POP3Connection._cmd_uidl,
    "RETR": POP3Connection._cmd_retr,
    "TOP": POP3Connection._cmd_top,
    "DELE": POP3Connection._cmd_dele,
    "NOOP": POP3Connection._cmd_noop,
    "RSET": POP3Connection._cmd_rset,
}
