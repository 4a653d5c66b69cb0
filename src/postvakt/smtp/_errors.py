"""Errors that carry their reply (h11's Local/Remote split).

`RemoteProtocolError` is the peer's mistake: the connection catches it at
the command boundary and sends its `reply`; it never leaves the core.
`LocalProtocolError` is the application's mistake (answering when nothing
waits for an answer): it is raised to the caller, since it is a bug there.
"""

from __future__ import annotations

from postvakt.reply import Reply


class ProtocolError(Exception):
    def __init__(self, reply: Reply) -> None:
        super().__init__(str(reply))
        self.reply = reply


class RemoteProtocolError(ProtocolError):
    """The client broke the protocol; `reply` is what it gets told."""


class LocalProtocolError(ProtocolError, RuntimeError):
    """The application called the connection out of turn."""

    def __init__(self, message: str) -> None:
        super().__init__(Reply(451, "4.3.0", "Error: local error in processing"))
        self.args = (message,)


# The name the adapter was first given for LocalProtocolError.
UsageError = LocalProtocolError
