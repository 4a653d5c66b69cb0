"""What the peer did, as values.

Events are nouns for the client's actions (h11's `Request`/`Data` naming).
Some of them need an answer from the application (`conn.respond(reply)`);
until it comes, the connection reports `PAUSED` and keeps later input
buffered, so pipelined commands are answered in order (RFC 2920).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from postvakt.address import Address
from postvakt.reply import Reply


class Signal(enum.Enum):
    """Answers of `next_event()` that are not events."""

    NEED_DATA = "NEED_DATA"
    PAUSED = "PAUSED"

    def __repr__(self) -> str:
        return self.value


NEED_DATA = Signal.NEED_DATA
PAUSED = Signal.PAUSED


@dataclass(frozen=True)
class Helo:
    """HELO or EHLO; informational, the core has already replied."""

    name: str
    extended: bool


@dataclass(frozen=True)
class MailFrom:
    """MAIL FROM with its parameters; needs respond()."""

    sender: Address
    size: int | None = None
    body: str | None = None
    smtputf8: bool = False
    ret: str | None = None
    envid: str | None = None


@dataclass(frozen=True)
class RcptTo:
    """RCPT TO; needs respond(). A 2xx answer counts as an accepted recipient."""

    recipient: Address
    notify: tuple[str, ...] | None = None
    orcpt: str | None = None


@dataclass(frozen=True)
class DataStart:
    """DATA with at least one accepted recipient; needs respond() (354 to go on)."""


@dataclass(frozen=True)
class DataChunk:
    """Dot-unstuffed message bytes, in pieces as they arrived."""

    data: bytes


@dataclass(frozen=True)
class EndOfData:
    """The message ended with <CRLF>.<CRLF>; needs respond().

    `problem` is set when the core refused the content while reading it; the
    application then discards what it stored and responds with `problem`.
    `headers` is the parsed header section (bounded), for From:/Sender: checks;
    `headers_complete` is False when the section was longer than that bound.
    """

    size: int
    problem: Reply | None = None
    headers: tuple[tuple[str, str], ...] = ()
    headers_complete: bool = True


@dataclass(frozen=True)
class AuthCredentials:
    """A finished SASL PLAIN or LOGIN exchange; needs respond() (235 or 535)."""

    mechanism: str
    authzid: str
    username: str
    password: str

    def __repr__(self) -> str:
        # Passwords never reach a log line by accident.
        return (
            f"AuthCredentials(mechanism={self.mechanism!r}, authzid={self.authzid!r}, "
            f"username={self.username!r}, password=<hidden>)"
        )


@dataclass(frozen=True)
class StartTLS:
    """The 220 is queued; flush it, pause reading, start TLS, call tls_started()."""


@dataclass(frozen=True)
class Quit:
    """QUIT; `221` is queued. Flush and close."""


@dataclass(frozen=True)
class Close:
    """The connection is over (a final reply such as 421 may be queued)."""

    reason: str


Event = (
    Helo
    | MailFrom
    | RcptTo
    | DataStart
    | DataChunk
    | EndOfData
    | AuthCredentials
    | StartTLS
    | Quit
    | Close
)

# Events the application must answer with respond() before input goes on.
NEEDS_RESPONSE: tuple[type, ...] = (MailFrom, RcptTo, DataStart, EndOfData, AuthCredentials)
