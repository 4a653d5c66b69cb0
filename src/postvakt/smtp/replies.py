"""Every reply the SMTP core says on its own, in one place.

Texts follow Postfix where a client or an admin might grep for them, and
every reply except the banner, HELO/EHLO and SASL challenges carries an
RFC 3463 enhanced status code (ENHANCEDSTATUSCODES, RFC 2034).
"""

from __future__ import annotations

import functools

from postvakt.reply import Reply

# --- session

# The replies every connection gets (banner, HELO, EHLO) are made once per
# hostname and keyword list: the same Reply, whose wire form it keeps.


@functools.lru_cache(maxsize=64)
def banner(hostname: str) -> Reply:
    return Reply(220, "", f"{hostname} ESMTP postvakt")


@functools.lru_cache(maxsize=64)
def helo_ok(hostname: str) -> Reply:
    return Reply(250, "", hostname)


@functools.lru_cache(maxsize=64)
def ehlo_ok(hostname: str, keywords: tuple[str, ...]) -> Reply:
    return Reply(250, "", "\n".join([hostname, *keywords]))


def timeout(hostname: str) -> Reply:
    return Reply(421, "4.4.2", f"{hostname} Error: timeout exceeded")


def too_many_errors(hostname: str) -> Reply:
    return Reply(421, "4.7.0", f"{hostname} Error: too many errors")


def shutting_down(hostname: str) -> Reply:
    return Reply(421, "4.3.2", f"{hostname} Service shutting down, closing transmission channel")


def internal_error(hostname: str) -> Reply:
    return Reply(421, "4.3.0", f"{hostname} Error: internal protocol error")


OK = Reply(250, "2.0.0", "Ok")
BYE = Reply(221, "2.0.0", "Bye")
HELP = Reply(
    214, "2.0.0", "Commands: HELO EHLO MAIL RCPT DATA RSET NOOP QUIT VRFY HELP STARTTLS AUTH"
)
VRFY_CANNOT = Reply(252, "2.0.0", "Cannot VRFY user, but will accept message and attempt delivery")
NOT_IMPLEMENTED = Reply(502, "5.5.1", "Error: command not implemented")

# --- replies the application usually gives (offered so that all sides agree)

SENDER_OK = Reply(250, "2.1.0", "Ok")
RECIPIENT_OK = Reply(250, "2.1.5", "Ok")
START_DATA = Reply(354, "", "End data with <CR><LF>.<CR><LF>")
AUTH_OK = Reply(235, "2.7.0", "Authentication successful")


def queued(queue_id: str) -> Reply:
    return Reply(250, "2.0.0", f"Ok: queued as {queue_id}")


# --- command line framing

UNRECOGNIZED = Reply(500, "5.5.2", "Error: command not recognized")
LINE_TOO_LONG = Reply(500, "5.5.2", "Error: command line too long")
BARE_LF = Reply(500, "5.5.2", "Error: bare <LF> received")
BARE_CR = Reply(500, "5.5.2", "Error: bare <CR> received")
NUL_IN_COMMAND = Reply(500, "5.5.2", "Error: NUL character in command")
BAD_UTF8 = Reply(500, "5.5.2", "Error: command is not valid UTF-8")

# --- sequence

NEED_HELO = Reply(503, "5.5.1", "Error: send HELO/EHLO first")
NESTED_MAIL = Reply(503, "5.5.1", "Error: nested MAIL command")
NEED_MAIL = Reply(503, "5.5.1", "Error: need MAIL command")
NEED_RCPT = Reply(503, "5.5.1", "Error: need RCPT command")
IN_TRANSACTION = Reply(503, "5.5.1", "Error: MAIL transaction in progress")
SYNC_ERROR = Reply(554, "5.5.0", "Error: SMTP protocol synchronization")

# --- syntax


def syntax(usage: str) -> Reply:
    return Reply(501, "5.5.4", f"Syntax: {usage}")


SYNTAX_HELO = syntax("HELO hostname")
SYNTAX_EHLO = syntax("EHLO hostname")
SYNTAX_MAIL = syntax("MAIL FROM:<address>")
SYNTAX_RCPT = syntax("RCPT TO:<address>")
SYNTAX_DATA = syntax("DATA")
SYNTAX_RSET = syntax("RSET")
SYNTAX_QUIT = syntax("QUIT")
SYNTAX_VRFY = syntax("VRFY address")
SYNTAX_STARTTLS = syntax("STARTTLS")
SYNTAX_AUTH = syntax("AUTH mechanism [initial-response]")


def unsupported_param(name: str) -> Reply:
    return Reply(555, "5.5.4", f"Unsupported option: {name}")


def bad_param_value(name: str) -> Reply:
    return Reply(501, "5.5.4", f"Bad {name} parameter syntax")


# --- policy the core enforces itself

MUST_STARTTLS = Reply(530, "5.7.0", "Must issue a STARTTLS command first")
AUTH_REQUIRED = Reply(530, "5.7.0", "Authentication required")
MESSAGE_TOO_BIG = Reply(552, "5.3.4", "Message size exceeds fixed limit")
TOO_MANY_RECIPIENTS = Reply(452, "4.5.3", "Too many recipients")

# --- message content (EndOfData.problem)

BARE_CR_LF_IN_DATA = Reply(550, "5.5.2", "Message contains bare CR or LF, refused (RFC 5321 2.3.8)")
TOO_MANY_HOPS = Reply(554, "5.4.0", "Too many hops")
NUL_IN_DATA = Reply(550, "5.6.0", "Message contains NUL characters, refused")


def data_line_too_long(limit: int) -> Reply:
    """A message with a text line over `[smtp] max_line_length` (RFC 3463 X.6.0: content)."""
    return Reply(554, "5.6.0", f"Line too long: a line of the message exceeds {limit} octets")


# --- STARTTLS

TLS_READY = Reply(220, "2.0.0", "Ready to start TLS")
TLS_ACTIVE = Reply(554, "5.5.1", "Error: TLS already active")

# --- AUTH

AUTH_NOT_ENABLED = Reply(503, "5.5.1", "Error: authentication not enabled")
ENCRYPTION_REQUIRED = Reply(
    538, "5.7.11", "Encryption required for requested authentication mechanism"
)
ALREADY_AUTHENTICATED = Reply(503, "5.5.1", "Error: already authenticated")
UNKNOWN_MECHANISM = Reply(504, "5.5.4", "Unrecognized authentication type")
BAD_BASE64 = Reply(501, "5.5.2", "Can't decode base64")
AUTH_ABORTED = Reply(501, "5.7.0", "Authentication aborted")
AUTH_LINE_TOO_LONG = Reply(500, "5.5.6", "Authentication exchange line is too long")
AUTH_INVALID = Reply(535, "5.7.8", "Authentication credentials invalid")


def duplicate_param(name: str) -> Reply:
    return Reply(501, "5.5.4", f"Duplicate {name} parameter")
