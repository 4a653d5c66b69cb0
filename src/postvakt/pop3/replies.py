"""POP3 replies as values.

A POP3 reply is `+OK` or `-ERR`, an optional response code in brackets
(RFC 2449 §8: `[IN-USE]`, `[LOGIN-DELAY]`; RFC 3206: `[AUTH]`, `[SYS/TEMP]`,
`[SYS/PERM]`) and text. Errors carry their reply (`POP3Error(reply)`), so the
adapter never re-words what the core decided.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class POP3Reply:
    ok: bool
    text: str = ""
    code: str = ""

    def line(self) -> str:
        status = "+OK" if self.ok else "-ERR"
        parts = [status]
        if self.code:
            parts.append(f"[{self.code}]")
        if self.text:
            parts.append(self.text)
        return " ".join(parts)

    def encode(self) -> bytes:
        return (self.line() + "\r\n").encode("utf-8", "replace")

    def __str__(self) -> str:
        return self.line()


class POP3Error(Exception):
    """A command that fails with a `-ERR` reply; the reply travels with it."""

    def __init__(self, reply: POP3Reply) -> None:
        super().__init__(reply.line())
        self.reply = reply


def ok(text: str = "") -> POP3Reply:
    return POP3Reply(True, text)


def err(text: str, code: str = "") -> POP3Reply:
    return POP3Reply(False, text, code)


# ---------------------------------------------------------------- fixed replies
# Wording follows DESIGN.md's table and, where it says nothing, Dovecot's texts,
# so that admins and client authors recognise them.

GREETING = ok("POP3 server ready")
AUTH_FAILED = err("Authentication failed", "AUTH")
LOGIN_DELAY = err("Logged in too recently, wait before logging in again", "LOGIN-DELAY")
IN_USE = err("Mailbox is locked by another session", "IN-USE")
PLAINTEXT_DISALLOWED = err(
    "Plaintext authentication disallowed on non-secure (SSL/TLS) connections.", "AUTH"
)
SYS_TEMP = err("Temporary server failure, try again later", "SYS/TEMP")
SYS_PERM = err("Mailbox cannot be opened, please contact the administrator", "SYS/PERM")
NO_USER = err("No user name given")
UNKNOWN_COMMAND = err("Unknown command")
WRONG_STATE = err("Command not valid in this state")
LINE_TOO_LONG = err("Line too long")
BAD_ENCODING = err("Invalid characters in command")
TOO_MANY_BAD = err("Too many bad commands, closing connection")
TOO_MUCH_INPUT = err("Too much pipelined input, closing connection")
NO_SUCH_MESSAGE = err("No such message")
ALREADY_DELETED = err("Message is deleted")
MESSAGE_VANISHED = err("Message was removed by another process", "SYS/TEMP")
BAD_ARGUMENTS = err("Invalid arguments")
TLS_ACTIVE = err("TLS is already active")
TLS_UNAVAILABLE = err("TLS is not available")
BEGIN_TLS = ok("Begin TLS negotiation")
APOP_DISABLED = err("APOP is not enabled")
UNSUPPORTED_MECHANISM = err("Unsupported authentication mechanism")
AUTH_ABORTED = err("Authentication aborted")
BAD_BASE64 = err("Invalid base64 data")
SHUTTING_DOWN = err("Server shutting down, try again later", "SYS/TEMP")
IDLE_TIMEOUT = err("Disconnected for inactivity")
UPDATE_FAILED = err("Some deleted messages were not removed", "SYS/TEMP")
SIGNING_OFF = ok("Logging out")
