"""postvakt.smtp: the sans-IO SMTP server core.

Bytes in (`receive_data`), events out (`next_event`), replies out
(`data_to_send`). No sockets, no TLS, no clock: those belong to the
adapter in `postvakt.server`. An adapter's loop, in short:

    conn.receive_data(data)                  # b"" on EOF
    while (event := conn.next_event()) not in (NEED_DATA, PAUSED):
        ...                                  # MailFrom, RcptTo, DataStart, EndOfData
        ...                                  # and AuthCredentials need conn.respond(reply)
    transport.write(conn.data_to_send())

On StartTLS: write data_to_send(), start TLS, then call conn.tls_started().
On Quit or Close: write data_to_send() and close. While PAUSED, stop
reading when `conn.buffered` grows: the core keeps pipelined input.
"""

from postvakt.smtp._connection import SMTPServer
from postvakt.smtp._data import header_section_of
from postvakt.smtp._errors import (
    LocalProtocolError,
    ProtocolError,
    RemoteProtocolError,
    UsageError,
)
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
    "LocalProtocolError",
    "ProtocolError",
    "RemoteProtocolError",
    "Event",
    "Helo",
    "MailFrom",
    "Quit",
    "RcptTo",
    "SMTPServer",
    "header_section_of",
    "Settings",
    "Signal",
    "StartTLS",
    "State",
    "UsageError",
]
