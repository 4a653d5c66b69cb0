"""postvakt.smtp: the sans-IO SMTP server core.

Bytes in (`receive_data`), events out (`next_event`), replies out
(`data_to_send`). No sockets, no TLS, no clock: those belong to the
adapter in `postvakt.server`.
"""

from postvakt.smtp._connection import SMTPServer, UsageError
from postvakt.smtp._events import (
    NEED_DATA,
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
from postvakt.smtp._settings import Settings
from postvakt.smtp._state import State

__all__ = [
    "NEED_DATA",
    "PAUSED",
    "AuthCredentials",
    "Close",
    "DataChunk",
    "DataStart",
    "EndOfData",
    "Event",
    "Helo",
    "MailFrom",
    "Quit",
    "RcptTo",
    "SMTPServer",
    "Settings",
    "Signal",
    "StartTLS",
    "State",
    "UsageError",
]
