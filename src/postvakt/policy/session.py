"""The whole transaction's policy: every decision from MAIL to the end of data.

Rules of the house:
- One function per stage: `on_mail` (sender check, then limits), `on_rcpt`
  (relay, then limits), `on_end_of_data` (header section complete, From:
  and Sender: parsed and checked). The live server (`server/smtp.py`) and
  `postvakt explain` call these and nothing else, so the reply `explain`
  shows is the reply the server sends, by construction.
- Pure: no I/O, no clock. What the counters say (`Counted`) and the header
  fields are read by the caller and passed in.
- A stage's answer keeps the policy's decision and the limits' decision
  apart (each has its own log line) and gives their combination as the
  one `decision` whose reply is sent.
- Which ports require SMTP AUTH (and TLS) is said here once; the protocol
  core enforces it with the settings the adapter derives from these.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from postvakt.address import Address, AddressError, parse_header_addresses
from postvakt.policy.limits import (
    Subject,
    Usage,
    check_mail_limits,
    check_rcpt_limits,
    hold_reason,
    with_limit,
)
from postvakt.policy.relay import check_rcpt
from postvakt.policy.sender import HEADER_FROM, check_header_from, check_sender
from postvakt.policy.settings import RelayView, SenderView
from postvakt.policy.types import (
    REJECT,
    WARN,
    Client,
    Decision,
    DirectoryView,
    Port,
    Step,
    Verdict,
)
from postvakt.reply import Reply
from postvakt.smtp.replies import AUTH_REQUIRED

# DESIGN.md [listen]: submission (587, STARTTLS) and submissions (465, implicit
# TLS) take no MAIL before AUTH; 587 takes no AUTH before STARTTLS.
AUTH_PORTS: tuple[Port, ...] = ("submission", "submissions")
STARTTLS_PORTS: tuple[Port, ...] = ("submission",)
AUTH_REQUIRED_RULE = "auth_required"
# A From: beyond the part of the header section the core keeps could not be checked.
HEADER_TOO_LONG = Reply(552, "5.3.4", "Header section too long to check the sender")


def requires_auth(port: str) -> bool:
    return port in AUTH_PORTS


def requires_starttls(port: str) -> bool:
    return port in STARTTLS_PORTS


@dataclass(frozen=True)
class Counted:
    """What the limits know of the client: who is counted, and what they sent so far."""

    subject: Subject | None
    usage: Usage


@dataclass(frozen=True)
class Answer:
    """One command's answer: the policy's decision, the limits' (when reached), combined."""

    policy: Decision
    limit: Decision | None = None

    @property
    def decision(self) -> Decision:
        """The policy's, then the limit's, in one trace: its reply is the one sent."""
        return self.policy if self.limit is None else with_limit(self.policy, self.limit)

    @property
    def hold(self) -> str | None:
        """The hold reason a limit gave (the message goes to the hold queue), if any."""
        return hold_reason(self.limit) if self.limit is not None else None

    @property
    def warnings(self) -> tuple[str, ...]:
        """Findings of checks in "warn" mode: logged and carried in the message."""
        return warnings_of(self.policy)

    @property
    def limit_hit(self) -> bool:
        """A limit that did more than permit: logged on its own line."""
        return self.limit is not None and self.limit.verdict is not Verdict.PERMIT


def warnings_of(decision: Decision) -> tuple[str, ...]:
    return tuple(s.detail for s in decision.trace if s.result == WARN)


def auth_required(client: Client) -> Decision | None:
    """MAIL on a port that requires AUTH, from a client not logged in."""
    if not requires_auth(client.port) or client.login is not None:
        return None
    step = Step(AUTH_REQUIRED_RULE, REJECT, f"port {client.port} requires SMTP AUTH before MAIL")
    return Decision(Verdict.REJECT, AUTH_REQUIRED, AUTH_REQUIRED_RULE, (step,))


def on_mail(
    client: Client,
    sender: Address,
    config: SenderView,
    directory: DirectoryView,
    counts: Callable[[], Counted] | None,
) -> Answer:
    """MAIL FROM: may the client use this sender, and may it send one more message?

    `counts` reads the counters; it is called only when the limits are
    consulted (a refused command never reads them). None: no limits are kept.
    """
    refused = auth_required(client)
    if refused is not None:
        return Answer(refused)
    decision = check_sender(client, sender, config, directory)
    if not decision.reply.positive or counts is None:
        return Answer(decision)
    counted = counts()
    return Answer(decision, check_mail_limits(client, counted.subject, counted.usage))


def on_rcpt(
    client: Client,
    rcpt: Address,
    config: RelayView,
    directory: DirectoryView,
    counts: Callable[[], Counted] | None,
    in_message: int,
) -> Answer:
    """RCPT TO: relay rules, then the recipient limits (`in_message` accepted so far)."""
    decision = check_rcpt(client, rcpt, config, directory)
    if not decision.reply.positive or counts is None:
        return Answer(decision)
    counted = counts()
    limit = check_rcpt_limits(client, counted.subject, counted.usage, in_message)
    return Answer(decision, limit)


@dataclass(frozen=True)
class HeaderAnswer:
    """The end-of-data header check, and the From: addresses later checks (DMARC) use."""

    decision: Decision
    header_from: tuple[Address, ...] = ()
    header_sender: tuple[Address, ...] = ()

    @property
    def warnings(self) -> tuple[str, ...]:
        return warnings_of(self.decision)


def _header_values(headers: Sequence[tuple[str, str]], name: str) -> list[str]:
    return [v for k, v in headers if k.lower() == name]


def _refuse(reply: Reply, detail: str) -> HeaderAnswer:
    step = Step(HEADER_FROM, REJECT, detail)
    return HeaderAnswer(Decision(Verdict.REJECT, reply, HEADER_FROM, (step,)))


def on_end_of_data(
    client: Client,
    headers: Sequence[tuple[str, str]],
    headers_complete: bool,
    config: SenderView,
    directory: DirectoryView,
) -> HeaderAnswer:
    """End of data: may this client put these addresses in From: and Sender:?

    With `[sender] header_from` on, a header section too long to read whole
    and a From:/Sender: that does not parse are refused: a forged sender must
    not pass unseen, nor by being read differently by two parsers
    (CVE-2023-27043).
    """
    checking = config.sender.header_from != "off"
    if not headers_complete and checking:
        return _refuse(
            HEADER_TOO_LONG,
            "the header section is too long to read whole: a From: beyond it could not be checked",
        )
    try:
        header_from = [
            a for v in _header_values(headers, "from") for a in parse_header_addresses(v)
        ]
        header_sender = [
            a for v in _header_values(headers, "sender") for a in parse_header_addresses(v)
        ]
    except AddressError as e:
        if checking:
            return _refuse(e.reply, f"a From: or Sender: header does not parse: {e.reply.text}")
        header_from, header_sender = [], []
    decision = check_header_from(client, header_from, header_sender, config, directory)
    return HeaderAnswer(decision, tuple(header_from), tuple(header_sender))
