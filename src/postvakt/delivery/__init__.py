"""Delivery: local Maildir and remote SMTP.

Errors carry the `Reply` that goes into the log, the status file and any
bounce. They are temporary unless a peer (or a rule of ours) said otherwise:
a wrong guess towards "permanent" loses mail, towards "temporary" only delays.
"""

from __future__ import annotations

from postvakt.reply import Reply


class DeliveryError(Exception):
    """A delivery that did not happen, with the reply that says why."""

    def __init__(self, reply: Reply, temporary: bool | None = None, relay: str = "") -> None:
        super().__init__(str(reply))
        self.reply = reply
        self.temporary = reply.code < 500 if temporary is None else temporary
        self.relay = relay


__all__ = ["DeliveryError"]
