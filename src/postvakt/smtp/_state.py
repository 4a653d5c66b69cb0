"""The SMTP server's states and which command may come when.

Rules of the house:
- Everything that decides *whether* a command may run in a state lives here,
  as data: `ALLOWED` (runs) and `REFUSED` (the reply when it may not). A
  command that is in neither table for a command-reading state is a bug the
  state-table test catches, never an exception on the wire.
- This module knows nothing about bytes, parameters or the application; the
  connection (`_connection.py`) does the framing and the talking.
- States in which no commands are read (DATA, AUTH, STARTTLS, CLOSED) have no
  entry: input there belongs to the message, the SASL exchange, or nobody.
"""

from __future__ import annotations

import enum

from postvakt.reply import Reply
from postvakt.smtp import replies


class State(enum.Enum):
    GREETED = "GREETED"  # banner sent, no HELO/EHLO yet
    READY = "READY"  # HELO/EHLO done, no transaction
    MAIL = "MAIL"  # sender accepted, no recipient yet
    RCPT = "RCPT"  # at least one recipient accepted
    DATA = "DATA"  # reading the message, up to <CRLF>.<CRLF>
    AUTH = "AUTH"  # inside a SASL exchange (334 challenges)
    STARTTLS = "STARTTLS"  # 220 sent, waiting for the handshake; input is discarded
    CLOSED = "CLOSED"


COMMANDS = frozenset(
    {"HELO", "EHLO", "MAIL", "RCPT", "DATA", "RSET", "NOOP", "QUIT", "VRFY", "EXPN", "HELP"}
    | {"STARTTLS", "AUTH"}
)

# Commands RFC 5321 §4.1.4 allows at any point of a session.
_ANYTIME = frozenset({"HELO", "EHLO", "RSET", "NOOP", "QUIT", "VRFY", "EXPN", "HELP"})

ALLOWED: dict[State, frozenset[str]] = {
    State.GREETED: _ANYTIME | {"STARTTLS"},
    State.READY: _ANYTIME | {"MAIL", "STARTTLS", "AUTH"},
    State.MAIL: _ANYTIME | {"RCPT"},
    State.RCPT: _ANYTIME | {"RCPT", "DATA"},
}

REFUSED: dict[State, dict[str, Reply]] = {
    State.GREETED: {
        "MAIL": replies.NEED_HELO,
        "RCPT": replies.NEED_MAIL,
        "DATA": replies.NEED_RCPT,
        "AUTH": replies.NEED_HELO,
    },
    State.READY: {
        "RCPT": replies.NEED_MAIL,
        "DATA": replies.NEED_RCPT,
    },
    State.MAIL: {
        "MAIL": replies.NESTED_MAIL,
        "DATA": replies.NEED_RCPT,
        "STARTTLS": replies.IN_TRANSACTION,
        "AUTH": replies.IN_TRANSACTION,
    },
    State.RCPT: {
        "MAIL": replies.NESTED_MAIL,
        "STARTTLS": replies.IN_TRANSACTION,
        "AUTH": replies.IN_TRANSACTION,
    },
}

# Where a positive answer from the application moves the session.
ON_POSITIVE: dict[tuple[State, str], State] = {
    (State.READY, "MAIL"): State.MAIL,
    (State.MAIL, "RCPT"): State.RCPT,
    (State.RCPT, "RCPT"): State.RCPT,
    (State.RCPT, "DATA"): State.DATA,
}


def refusal(state: State, verb: str) -> Reply | None:
    """The reply for `verb` in `state`, or None when the command may run."""
    if verb in ALLOWED.get(state, frozenset()):
        return None
    table = REFUSED.get(state, {})
    return table.get(verb, replies.UNRECOGNIZED)
