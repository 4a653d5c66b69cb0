"""Sans-IO POP3 server core (RFC 1939, 2449, 2595, 3206, 5034).

No I/O lives here: `postvakt.server.pop3` feeds bytes in and carries the
events out to the mailbox, the authenticator and TLS.
"""

from postvakt.pop3.connection import (
    COMMANDS,
    NEED_DATA,
    PAUSED,
    Authenticate,
    Close,
    Event,
    Fetch,
    MessageInfo,
    POP3Connection,
    Settings,
    StartTLS,
    State,
    Update,
)
from postvakt.pop3.message import encode_message, to_crlf, wire_size
from postvakt.pop3.replies import POP3Error, POP3Reply

__all__ = [
    "COMMANDS",
    "NEED_DATA",
    "PAUSED",
    "Authenticate",
    "Close",
    "Event",
    "Fetch",
    "MessageInfo",
    "POP3Connection",
    "POP3Error",
    "POP3Reply",
    "Settings",
    "StartTLS",
    "State",
    "Update",
    "encode_message",
    "to_crlf",
    "wire_size",
]
