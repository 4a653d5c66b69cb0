"""Values the policy speaks in: who the client is, and what was decided why."""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import Literal, Protocol

from postvakt.reply import Reply

# The ports a client can reach us on; the SMTP layer passes one of these.
Port = Literal["smtp", "submission", "submissions"]
PORTS: tuple[Port, ...] = ("smtp", "submission", "submissions")


def port_kind(value: str) -> Port:
    """A listener or option name as the type; ValueError for anything else."""
    for p in PORTS:
        if value == p:
            return p
    raise ValueError(f"{value!r} is not one of {', '.join(PORTS)}")


class Verdict(enum.Enum):
    """What the server does with the command the decision is about."""

    PERMIT = "permit"
    REJECT = "reject"
    DEFER = "defer"
    # Accepted, but the finding is logged (a check in "warn" mode).
    WARN = "warn"
    # Accepted (the client sees 2xx), but the message goes to the hold queue
    # for the admin instead of being delivered (an outbound limit).
    HOLD = "hold"

    @property
    def accepted(self) -> bool:
        return self in (Verdict.PERMIT, Verdict.WARN, Verdict.HOLD)


class Result(enum.StrEnum):
    """A step's outcome. A rule either decides ("permit", "reject", "defer",
    "warn", "hold") or says why it did not apply ("no match"), or was switched
    off ("off"). A str: the log, the trace text and JSON show the plain word."""

    PERMIT = "permit"
    REJECT = "reject"
    DEFER = "defer"
    WARN = "warn"
    HOLD = "hold"
    NO_MATCH = "no match"
    OFF = "off"


PERMIT = Result.PERMIT
REJECT = Result.REJECT
DEFER = Result.DEFER
WARN = Result.WARN
NO_MATCH = Result.NO_MATCH
OFF = Result.OFF


@dataclass(frozen=True)
class Step:
    """One rule tried: its name (as in config and log), outcome, and why in plain words."""

    rule: str
    result: Result
    detail: str

    def __str__(self) -> str:
        return f"{self.rule}: {self.result}: {self.detail}"


# The login that created a POP-before-SMTP grant: our own POP3 server, or an
# IMAP login that Dovecot reported ("IMAP-before-SMTP", as DRAC did for both).
GrantProtocol = Literal["pop3", "imap"]
GRANT_PROTOCOLS: tuple[GrantProtocol, ...] = ("pop3", "imap")


def grant_protocol(value: object) -> GrantProtocol:
    """A stored or reported protocol name as the type; ValueError for anything else."""
    for p in GRANT_PROTOCOLS:
        if value == p:
            return p
    raise ValueError(f"{value!r} is not a login protocol ({', '.join(GRANT_PROTOCOLS)})")


@dataclass(frozen=True)
class Grant:
    """A POP-before-SMTP grant: `login` logged in by `protocol` from `ip`; valid until `expires`."""

    ip: str
    login: str
    expires: float
    protocol: GrantProtocol = "pop3"
    # The node whose POP3 (or IMAP) server saw the login; "" when unknown.
    node: str = ""

    @property
    def login_kind(self) -> str:
        """How the trace and `explain` name the login: "POP3 login", "IMAP login"."""
        return f"{self.protocol.upper()} login"


@dataclass(frozen=True)
class Client:
    """Everything the policy may know about the connection, as the server saw it.

    `login` is the SMTP AUTH identity (never the `AUTH=` MAIL parameter);
    `grant` is whatever the grant store returned for `ip`; `now` is passed in
    so that the policy stays free of clocks and tests can pin time.
    """

    ip: str
    port: Port = "smtp"
    tls: bool = False
    login: str | None = None
    grant: Grant | None = None
    now: float = 0.0


class DirectoryView(Protocol):
    """The two questions the policy asks the directory; addresses are "local@domain"."""

    def recipient_exists(self, address: str) -> bool: ...

    def may_send_as(self, login: str, address: str) -> bool: ...


_NEEDS_QUOTES = re.compile(r'[ "\\=]')


def _quote_field(value: str) -> str:
    if value and _NEEDS_QUOTES.search(value) is None:
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


@dataclass(frozen=True)
class Decision:
    """A verdict, the reply to send, the rule that decided, and every rule tried."""

    verdict: Verdict
    reply: Reply
    rule: str
    trace: tuple[Step, ...]

    @property
    def accepted(self) -> bool:
        return self.verdict.accepted

    def rules(self) -> tuple[str, ...]:
        """The names of the rules tried, in order."""
        return tuple(step.rule for step in self.trace)

    def reasons(self) -> tuple[str, ...]:
        """The plain-words detail of every step that did not permit."""
        return tuple(s.detail for s in self.trace if s.result != PERMIT)

    def log_fields(self) -> dict[str, str]:
        """Fields for the one log line per decision (grep-able keys)."""
        return {
            "verdict": self.verdict.value,
            "rule": self.rule,
            "reply": " / ".join(self.reply.lines()),
            "trace": "; ".join(f"{s.rule}={s.result}: {s.detail}" for s in self.trace),
        }

    def log_line(self) -> str:
        """`verdict=reject rule=reject_unauth_destination reply="550 ..." trace="..."`:
        the fields of `log_fields`, in its order, written out directly (one per
        decision, several per message)."""
        trace = "; ".join([f"{s.rule}={s.result}: {s.detail}" for s in self.trace])
        return (
            f"verdict={_quote_field(self.verdict.value)} rule={_quote_field(self.rule)} "
            f"reply={_quote_field(' / '.join(self.reply.lines()))} trace={_quote_field(trace)}"
        )
