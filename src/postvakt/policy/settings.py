"""What the policy reads of the configuration: small, read-only, typed views.

Rules of the house:
- `postvakt.config` owns parsing and builds frozen dataclasses; the policy
  never imports it. Each decision names here exactly the settings it reads.
- A view is a Protocol of read-only properties, shaped like the part of the
  configuration it stands for, so that a `Config` (and its sections) is one
  as it is: callers pass their config, a test may pass anything alike.
- The modes' vocabularies are the policy's: config.py parses into these.
"""

from __future__ import annotations

from typing import Literal, Protocol

from postvakt.net import IPNetwork

# What a failed sender check does: nothing, a record only (log and header), a refusal.
SenderMode = Literal["off", "warn", "reject"]
SENDER_MODES: tuple[SenderMode, ...] = ("off", "warn", "reject")
# Which sender a trusted road (networks, clients, POP-before-SMTP) may use.
TrustedSenderMode = Literal["any", "domain", "owner"]
TRUSTED_SENDER_MODES: tuple[TrustedSenderMode, ...] = ("any", "domain", "owner")
# What a failed SPF/DMARC check does: nothing (not even looked up), a record only, a refusal.
CheckMode = Literal["off", "warn", "reject"]
CHECK_MODES: tuple[CheckMode, ...] = ("off", "warn", "reject")


# ------------------------------------------------------------ sections


class DomainSettings(Protocol):
    """`[domains]`: the domains we take mail for, and those we relay to."""

    @property
    def local(self) -> tuple[str, ...]: ...

    @property
    def relay(self) -> tuple[str, ...]: ...


class RoadSettings(Protocol):
    """`[relay]` as the roads read it: who is trusted by address or by a recent login."""

    @property
    def networks(self) -> tuple[IPNetwork, ...]: ...

    @property
    def clients(self) -> tuple[IPNetwork, ...]: ...

    # Seconds a POP3/IMAP login lets its address relay; 0 = off.
    @property
    def pop_before_smtp(self) -> float: ...


class HintSettings(RoadSettings, Protocol):
    """The roads, and whether a refusal tells the client which roads it tried."""

    @property
    def explain_in_reply(self) -> bool: ...


class ReplySettings(Protocol):
    """`[relay]` as the relay refusal reads it: its reply, and whether it lists the roads tried."""

    @property
    def reject_code(self) -> int: ...

    @property
    def reject_enhanced(self) -> str: ...

    # "{rcpt}" stands for the recipient.
    @property
    def reject_text(self) -> str: ...

    @property
    def explain_in_reply(self) -> bool: ...


class RelaySettings(HintSettings, ReplySettings, Protocol):
    """`[relay]` as the relay decision reads it: the roads and the refusal."""


class SenderModes(Protocol):
    """`[sender]`: what each sender check does when it is not met."""

    @property
    def authenticated(self) -> SenderMode: ...

    @property
    def unauthenticated_local(self) -> SenderMode: ...

    @property
    def networks(self) -> TrustedSenderMode: ...

    @property
    def clients(self) -> TrustedSenderMode: ...

    @property
    def pop_before_smtp(self) -> TrustedSenderMode: ...

    @property
    def trusted(self) -> SenderMode: ...

    @property
    def header_from(self) -> SenderMode: ...

    @property
    def header_from_outside(self) -> SenderMode: ...


class AuthCheckModes(Protocol):
    """`[auth_checks]`: what a failed SPF or DMARC check does to mail from outside."""

    @property
    def spf_fail(self) -> CheckMode: ...

    @property
    def dmarc_reject(self) -> CheckMode: ...


# ------------------------------------------------- what a decision takes
#
# Shaped like the whole configuration, with only the sections (and keys) the
# decision reads: a `Config` is each of these.


class RoadsView(Protocol):
    """The four roads (`roads.each_road` and each road alone)."""

    @property
    def relay(self) -> RoadSettings: ...


class RelayReplyView(Protocol):
    """The relay refusal (`relay.relay_denied_reply`)."""

    @property
    def relay(self) -> ReplySettings: ...


class RelayView(RoadsView, RelayReplyView, Protocol):
    """RCPT: our domains, the roads, the refusal (`relay.check_rcpt`, `session.on_rcpt`)."""

    @property
    def domains(self) -> DomainSettings: ...

    @property
    def relay(self) -> RelaySettings: ...


class SenderView(RoadsView, Protocol):
    """MAIL and the header From:/Sender: (`sender.check_sender`, `check_header_from`,
    `session.on_mail`, `session.on_end_of_data`): our names, the roads, the modes."""

    @property
    def hostname(self) -> str: ...

    @property
    def domains(self) -> DomainSettings: ...

    @property
    def relay(self) -> HintSettings: ...

    @property
    def sender(self) -> SenderModes: ...
