"""Anti-spoofing: may this client use this sender address (envelope and From:)?

Rules of the house:
- One identity policy for the envelope (MAIL FROM) and the header (From:,
  Sender:): both are judged by `_judge`, so they cannot disagree.
- The client is who the server saw: the SMTP AUTH login, the POP-before-SMTP
  grant, the client address. The `AUTH=` MAIL parameter is never an input.
- `<>` always passes: bounces must get through (RFC 5321 §4.5.5).
- Roads are tried in the relay order; the first open road decides which
  `[sender]` setting applies, as it decides relaying.
- A client on no road may use any foreign sender (that is ordinary inbound
  mail), but not one of our domains (`[sender] unauthenticated_local`).
- A header check is never stricter than the envelope rule for the same road:
  its mode is the weaker of `[sender] header_from` and that rule. For a
  client on no road it is also no stricter than `[sender] header_from_outside`
  (default "warn"): mailing lists and forwarders legitimately deliver
  "From: our user" from outside.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from postvakt.address import Address
from postvakt.policy import roads as road_rules
from postvakt.policy.settings import (
    DomainSettings,
    RoadsView,
    SenderMode,
    SenderModes,
    SenderView,
)
from postvakt.policy.types import (
    NO_MATCH,
    OFF,
    PERMIT,
    REJECT,
    WARN,
    Client,
    Decision,
    DirectoryView,
    Step,
    Verdict,
)
from postvakt.reply import Reply

NULL_SENDER = "null_sender"
SENDER_AUTHENTICATED = "sender_authenticated"
SENDER_POP_BEFORE_SMTP = "sender_pop_before_smtp"
SENDER_NETWORKS = "sender_networks"
SENDER_CLIENTS = "sender_clients"
SENDER_UNAUTHENTICATED_LOCAL = "sender_unauthenticated_local"
HEADER_FROM = "header_from"
SENDER_RULES = (
    NULL_SENDER,
    SENDER_AUTHENTICATED,
    SENDER_POP_BEFORE_SMTP,
    SENDER_NETWORKS,
    SENDER_CLIENTS,
    SENDER_UNAUTHENTICATED_LOCAL,
    HEADER_FROM,
)

# Which [sender] key governs a client that came by which road.
_ROAD_KEY = {
    road_rules.PERMIT_POP_BEFORE_SMTP: "pop_before_smtp",
    road_rules.PERMIT_NETWORKS: "networks",
    road_rules.PERMIT_CLIENTS: "clients",
}

# RFC 3463 X.1.0 "other address status"; Postfix answers MAIL with 250 2.1.0 Ok.
MAIL_OK = Reply(250, "2.1.0", "Ok")
# After DATA the SMTP layer sends its own "queued as" reply; this one stands for "no objection".
HEADER_OK = Reply(250, "2.0.0", "Ok")

# Enforcement strength, weakest first; a combined check takes the weaker.
_STRENGTH: dict[SenderMode, int] = {"off": 0, "warn": 1, "reject": 2}


def _weaker(a: SenderMode, b: SenderMode) -> SenderMode:
    return a if _STRENGTH[a] <= _STRENGTH[b] else b


@dataclass(frozen=True)
class _Finding:
    """Outcome of judging one address: `enforce` applies only when not ok."""

    rule: str
    ok: bool
    detail: str
    reason: str = ""
    enforce: SenderMode = "reject"
    login: str | None = None


def _is_ours(address: Address, domains: DomainSettings) -> bool:
    return address.domain in domains.local or address.domain in domains.relay


def _claims_ours(address: Address, config: SenderView) -> bool:
    """Could this sender be one of ours? Our hostname is; a literal might name this host."""
    return (
        not address.domain
        or address.is_literal
        or address.domain == config.hostname
        or _is_ours(address, config.domains)
    )


def _road_steps(
    client: Client, config: RoadsView
) -> tuple[list[Step], road_rules.Road | None, list[str]]:
    """Roads tried in order up to the first open one: steps, that road, client hints."""
    steps: list[Step] = []
    hints: list[str] = []
    for road in road_rules.each_road(client, config):
        if road.ok:
            steps.append(Step(road.rule, PERMIT, road.detail))
            return steps, road, hints
        steps.append(Step(road.rule, NO_MATCH, road.detail))
        hints.append(road.hint)
    return steps, None, hints


_TRUSTED_ROAD_RULES = (SENDER_NETWORKS, SENDER_CLIENTS, SENDER_POP_BEFORE_SMTP)


def _judge(
    client: Client,
    address: Address,
    road: road_rules.Road | None,
    config: SenderView,
    directory: DirectoryView,
) -> _Finding:
    finding = _judge_address(client, address, road, config, directory)
    if not finding.ok and finding.rule in _TRUSTED_ROAD_RULES:
        # A trusted road's own setting (domain, owner) was not met: what then
        # is `[sender] trusted` (off | warn | reject).
        return replace(finding, enforce=config.sender.trusted)
    return finding


def _judge_address(
    client: Client,
    address: Address,
    road: road_rules.Road | None,
    config: SenderView,
    directory: DirectoryView,
) -> _Finding:
    """The rule of the road the client came by (none: mail from outside)."""
    if road is None:
        return _judge_outside(address, config)
    if road.rule == road_rules.PERMIT_AUTHENTICATED:
        return _judge_authenticated(address, road, config.sender, directory)
    return _judge_trusted(address, road, config, directory)


def _judge_authenticated(
    address: Address, road: road_rules.Road, modes: SenderModes, directory: DirectoryView
) -> _Finding:
    login = road.login or ""
    mode = modes.authenticated
    if mode == "off":
        return _Finding(
            SENDER_AUTHENTICATED,
            True,
            "[sender] authenticated = off: logged-in users may use any sender",
        )
    if directory.may_send_as(login, str(address)):
        return _Finding(SENDER_AUTHENTICATED, True, f"{login} may send as {address}", login=login)
    return _Finding(
        SENDER_AUTHENTICATED,
        False,
        f"{login} may not send as {address}: not the user's own address, alias or send-as grant",
        f"not owned by user {login}",
        mode,
        login,
    )


def _judge_trusted(
    address: Address, road: road_rules.Road, config: SenderView, directory: DirectoryView
) -> _Finding:
    """Networks, allowed clients, POP-before-SMTP: `[sender]` any | domain | owner."""
    key = _ROAD_KEY[road.rule]
    rule = f"sender_{key}"
    mode = getattr(config.sender, key)
    if mode == "any":
        return _Finding(rule, True, f"[sender] {key} = any: {address} allowed")
    if mode == "domain":
        if _is_ours(address, config.domains):
            return _Finding(
                rule, True, f"[sender] {key} = domain: {address.domain} is one of our domains"
            )
        return _Finding(
            rule,
            False,
            f"[sender] {key} = domain: {address.domain or address} is not one of our domains",
            "not in our domains",
        )
    # "owner": the road's user must own the address.
    if road.login is None:
        return _Finding(
            rule,
            False,
            f"[sender] {key} = owner, but this road has no user to own {address}",
            "not logged in",
        )
    if directory.may_send_as(road.login, str(address)):
        return _Finding(
            rule,
            True,
            f"[sender] {key} = owner: {road.login} may send as {address}",
            login=road.login,
        )
    return _Finding(
        rule,
        False,
        f"[sender] {key} = owner: {road.login} may not send as {address}",
        f"not owned by user {road.login}",
        login=road.login,
    )


def _judge_outside(address: Address, config: SenderView) -> _Finding:
    """A client on no road: any foreign sender, none of ours (unauthenticated_local)."""
    mode = config.sender.unauthenticated_local
    if not _claims_ours(address, config):
        return _Finding(
            SENDER_UNAUTHENTICATED_LOCAL,
            True,
            f"{address.domain} is not one of our domains: mail from outside may use it",
        )
    what = f"{address.domain}" if address.domain and not address.is_literal else f"{address}"
    if mode == "off":
        return _Finding(
            SENDER_UNAUTHENTICATED_LOCAL,
            True,
            f"{what} is ours, but [sender] unauthenticated_local = off",
        )
    return _Finding(
        SENDER_UNAUTHENTICATED_LOCAL,
        False,
        f"{address} uses our domain {what}, but the client is on no road (not logged in, not trusted)",
        "not logged in",
        mode,
    )


def _envelope_reply(sender: Address, reason: str, explain: bool, hints: Sequence[str]) -> Reply:
    text = f"<{sender}>: Sender address rejected: {reason}"
    if explain and reason == "not logged in" and hints:
        text = "\n".join((text, *hints))
    return Reply(553, "5.7.1", text)


def check_sender(
    client: Client, sender: Address, config: SenderView, directory: DirectoryView
) -> Decision:
    """MAIL FROM: may this client use this envelope sender?"""
    if sender.is_null:
        step = Step(NULL_SENDER, PERMIT, "<> is the bounce address and is always accepted")
        return Decision(Verdict.PERMIT, MAIL_OK, NULL_SENDER, (step,))
    steps, road, hints = _road_steps(client, config)
    finding = _judge(client, sender, road, config, directory)
    if finding.ok:
        steps.append(Step(finding.rule, PERMIT, finding.detail))
        return Decision(Verdict.PERMIT, MAIL_OK, finding.rule, tuple(steps))
    if finding.enforce == "off":
        steps.append(Step(finding.rule, OFF, f"{finding.detail} (check off)"))
        return Decision(Verdict.PERMIT, MAIL_OK, finding.rule, tuple(steps))
    if finding.enforce == "warn":
        steps.append(Step(finding.rule, WARN, f"{finding.detail} (warn only)"))
        return Decision(Verdict.WARN, MAIL_OK, finding.rule, tuple(steps))
    steps.append(Step(finding.rule, REJECT, finding.detail))
    reply = _envelope_reply(sender, finding.reason, config.relay.explain_in_reply, hints)
    return Decision(Verdict.REJECT, reply, finding.rule, tuple(steps))


def check_header_from(
    client: Client,
    header_from: Sequence[Address],
    header_sender: Sequence[Address],
    config: SenderView,
    directory: DirectoryView,
) -> Decision:
    """End of DATA: may this client put these addresses in From:/Sender:?

    Every address in both fields is checked (a second author or a Sender:
    does not excuse a From: the client does not own).
    """
    mode = config.sender.header_from
    if mode == "off":
        step = Step(HEADER_FROM, OFF, "[sender] header_from = off: From: is not checked")
        return Decision(Verdict.PERMIT, HEADER_OK, HEADER_FROM, (step,))
    fields = [("From:", a) for a in header_from] + [("Sender:", a) for a in header_sender]
    fields = [(name, a) for name, a in fields if not a.is_null]
    if not fields:
        step = Step(HEADER_FROM, PERMIT, "no From: or Sender: address to check")
        return Decision(Verdict.PERMIT, HEADER_OK, HEADER_FROM, (step,))

    steps, road, _hints = _road_steps(client, config)
    if road is None:
        # Inbound mail: a list or forwarder may carry "From: our user".
        mode = _weaker(mode, config.sender.header_from_outside)
    warned: list[str] = []
    for name, address in fields:
        finding = _judge(client, address, road, config, directory)
        if finding.ok:
            steps.append(Step(finding.rule, PERMIT, f"{name} {finding.detail}"))
            continue
        enforce = _weaker(mode, finding.enforce)
        if enforce == "off":
            steps.append(Step(finding.rule, OFF, f"{name} {finding.detail} (check off)"))
            continue
        if enforce == "warn":
            steps.append(Step(finding.rule, WARN, f"{name} {finding.detail} (warn only)"))
            warned.append(finding.rule)
            continue
        steps.append(Step(finding.rule, REJECT, f"{name} {finding.detail}"))
        phrase = (
            finding.reason
            if finding.reason.startswith("not owned")
            else f"rejected: {finding.reason}"
        )
        reply = Reply(550, "5.7.1", f"{name} header <{address}> {phrase}")
        steps.append(Step(HEADER_FROM, REJECT, f"[sender] header_from = {mode}"))
        return Decision(Verdict.REJECT, reply, HEADER_FROM, tuple(steps))
    if warned:
        steps.append(
            Step(HEADER_FROM, WARN, f"[sender] header_from = {mode}: accepted with findings")
        )
        return Decision(Verdict.WARN, HEADER_OK, HEADER_FROM, tuple(steps))
    steps.append(
        Step(HEADER_FROM, PERMIT, "every From:/Sender: address is allowed for this client")
    )
    return Decision(Verdict.PERMIT, HEADER_OK, HEADER_FROM, tuple(steps))
