"""The envelope of a queued message and the per-recipient delivery status.

Both are plain values serialised as JSON. The envelope is written once, inside
the queue file, at the commit point and never changes; the status is the only
thing the queue manager rewrites (see the package docstring).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from postvakt.mailauth.headers import strip_auth_results
from postvakt.reply import Reply

# Unit states in the status file. A unit is final once DONE or FAILED.
PENDING = "pending"
DONE = "done"
FAILED = "failed"


@dataclass(frozen=True)
class Recipient:
    """One RCPT TO as accepted by the front.

    `orcpt` is the RFC 3461 ORCPT parameter exactly as the client sent it
    (address type, ";", xtext): "rfc822;bob+2B1@example.test". `notify` holds
    the upper-cased NOTIFY keywords, or None when the client gave none.
    `Envelope.envid` is likewise the ENVID as sent (xtext).
    """

    address: str
    orcpt: str | None = None
    notify: tuple[str, ...] | None = None

    def wants(self, event: str) -> bool:
        """Whether a DSN for `event` (SUCCESS, FAILURE, DELAY) should be sent.

        Without NOTIFY, RFC 3461 §4.1 leaves it to us: failures and delays are
        reported, successes are not (as Postfix and sendmail do).
        """
        if self.notify is None:
            return event in ("FAILURE", "DELAY")
        return event in self.notify


@dataclass(frozen=True)
class Envelope:
    sender: str
    recipients: tuple[Recipient, ...]
    received_at: float
    client_ip: str
    helo: str
    login: str | None
    smtputf8: bool = False
    body: str | None = None
    ret: str | None = None
    envid: str | None = None
    hold: str | None = None
    # Header fields the front adds once the whole message is read (e.g. a
    # sender check in warn mode): delivery puts them on top of the message.
    # Each is one unfolded "Name: value" line without CRLF.
    headers: tuple[str, ...] = ()
    # The road the client came by (a rule name of `policy.ROADS`) when its
    # sender passed every check without a warning; "generated" for mail we
    # write ourselves; None for mail from outside. DKIM signing needs it.
    road: str | None = None
    # Our authserv-id (the hostname): an Authentication-Results: field in the
    # message that claims it is a forgery and is dropped at delivery (RFC 8601 §5).
    authserv_id: str = ""

    def with_headers(self, message: bytes) -> bytes:
        """The message as delivered: the front's late header fields, then the
        bytes received (without forged Authentication-Results:)."""
        if self.authserv_id:
            message, _ = strip_auth_results(message, self.authserv_id)
        if not self.headers:
            return message
        top = "".join(h.replace("\r", " ").replace("\n", " ") + "\r\n" for h in self.headers)
        return top.encode("utf-8", "surrogateescape") + message

    def to_json(self) -> bytes:
        # Field by field, not dataclasses.asdict: its deep copy cost the front
        # 3% of its CPU per message; the values are plain already.
        d = {name: getattr(self, name) for name in _ENVELOPE_FIELDS}
        d["recipients"] = [{n: getattr(r, n) for n in _RECIPIENT_FIELDS} for r in self.recipients]
        return _ENCODE(d).encode("utf-8")

    @classmethod
    def from_json(cls, data: bytes) -> Envelope:
        d = json.loads(data.decode("utf-8"))
        if not isinstance(d, dict):
            raise ValueError("envelope is not an object")
        rcpts = tuple(
            Recipient(
                address=str(r["address"]),
                orcpt=r.get("orcpt"),
                notify=tuple(r["notify"]) if r.get("notify") is not None else None,
            )
            for r in d.pop("recipients")
        )
        if not rcpts:
            raise ValueError("envelope has no recipients")
        headers = tuple(str(h) for h in d.pop("headers", ()))
        return cls(recipients=rcpts, headers=headers, **d)


_ENVELOPE_FIELDS = tuple(f.name for f in fields(Envelope))
_RECIPIENT_FIELDS = tuple(f.name for f in fields(Recipient))
_ENCODE = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


@dataclass(frozen=True)
class Unit:
    """One delivery: an envelope recipient (by index) and a final address.

    Alias expansion turns one recipient into one or more units; a unit is what
    succeeds, fails or waits, so a partly delivered message retries only the rest.
    `local` is True for a mailbox of ours, False for a remote address.
    """

    rcpt: int
    address: str
    local: bool
    state: str = PENDING
    reply: tuple[int, str, str] | None = None
    relay: str = ""
    attempts: int = 0
    # The peer accepted it with DSN on: success reports are its job now (RFC 3461 §5.2.3).
    passed_on: bool = False

    @property
    def last_reply(self) -> Reply | None:
        return Reply(*self.reply) if self.reply else None

    def settle(self, state: str, reply: Reply, relay: str) -> Unit:
        # A new Unit, not dataclasses.replace: that looks at every field each time.
        return Unit(
            rcpt=self.rcpt,
            address=self.address,
            local=self.local,
            state=state,
            reply=(reply.code, reply.enhanced, reply.text),
            relay=relay,
            attempts=self.attempts + 1,
            passed_on=self.passed_on,
        )


@dataclass(frozen=True)
class Status:
    """What the manager knows beyond the envelope: units, tries, warnings."""

    units: tuple[Unit, ...] | None = None  # None until recipients are expanded
    attempts: int = 0
    next_try: float = 0.0
    last_try: float = 0.0
    warned: bool = False
    notified: tuple[int, ...] = field(default=())  # unit indexes already reported by DSN

    def with_units(self, units: tuple[Unit, ...]) -> Status:
        # A new Status, not dataclasses.replace (see Unit.settle): twice a local message.
        return Status(
            units, self.attempts, self.next_try, self.last_try, self.warned, self.notified
        )

    def tried(self, units: tuple[Unit, ...], now: float) -> Status:
        """After a try at `now` that left `units`."""
        return Status(units, self.attempts + 1, self.next_try, now, self.warned, self.notified)

    def to_json(self) -> bytes:
        d: dict[str, Any] = asdict(self)
        return json.dumps(d, separators=(",", ":"), ensure_ascii=False).encode("utf-8")

    @classmethod
    def from_json(cls, data: bytes) -> Status:
        d = json.loads(data.decode("utf-8"))
        units = d.get("units")
        return cls(
            units=None
            if units is None
            else tuple(
                Unit(
                    rcpt=int(u["rcpt"]),
                    address=str(u["address"]),
                    local=bool(u["local"]),
                    state=str(u["state"]),
                    reply=tuple(u["reply"]) if u.get("reply") else None,
                    relay=str(u.get("relay", "")),
                    attempts=int(u.get("attempts", 0)),
                    passed_on=bool(u.get("passed_on", False)),
                )
                for u in units
            ),
            attempts=int(d.get("attempts", 0)),
            next_try=float(d.get("next_try", 0.0)),
            last_try=float(d.get("last_try", 0.0)),
            warned=bool(d.get("warned", False)),
            notified=tuple(d.get("notified", ())),
        )

    @property
    def pending(self) -> list[Unit]:
        return [u for u in self.units or () if u.state == PENDING]

    @property
    def last_error(self) -> str:
        """The reply of the first unit not (yet) delivered, for `queue list`."""
        for u in self.units or ():
            if u.state != DONE and u.reply:
                return str(Reply(*u.reply)).replace("\n", " ")
        return ""
