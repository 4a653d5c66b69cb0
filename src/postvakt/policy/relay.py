"""The relay decision for each RCPT TO: the reason this product exists.

Rules of the house:
- One restriction list, first match wins (Postfix smtpd_relay_restrictions):
  local_domain, relay_domain, the four roads, reject_unauth_destination.
- The last rule cannot be removed or reordered: a foreign recipient that no
  road permits is rejected, whatever else the config says.
- The recipient is judged as the canonical `Address` that routing and
  delivery will use; a routed local part (`%`, `!`, quoted `@`) is only ever
  a literal mailbox name, and never makes a relay domain acceptable.
- Every rule appends a Step; a rejection's trace says why each road failed.
"""

from __future__ import annotations

from postvakt.address import Address
from postvakt.policy import roads as road_rules
from postvakt.policy.settings import DomainSettings, RelayReplyView, RelayView
from postvakt.policy.types import (
    NO_MATCH,
    PERMIT,
    REJECT,
    Client,
    Decision,
    DirectoryView,
    Result,
    Step,
    Verdict,
)
from postvakt.reply import Reply

LOCAL_DOMAIN = "local_domain"
RELAY_DOMAIN = "relay_domain"
REJECT_UNAUTH_DESTINATION = "reject_unauth_destination"
RELAY_RULES = (LOCAL_DOMAIN, RELAY_DOMAIN, *road_rules.ROADS, REJECT_UNAUTH_DESTINATION)

# RFC 3463 X.1.5 "destination address valid"; Postfix answers RCPT with 250 2.1.5 Ok.
RCPT_OK = Reply(250, "2.1.5", "Ok")


def _domains_words(domains: tuple[str, ...]) -> str:
    return ", ".join(domains) if domains else "none configured"


def unknown_user_reply(rcpt: Address) -> Reply:
    return Reply(550, "5.1.1", f"<{rcpt}>: Recipient address rejected: User unknown")


def relay_denied_reply(rcpt: Address, config: RelayReplyView, hints: tuple[str, ...] = ()) -> Reply:
    """The configurable relay refusal; with explain_in_reply, one line per road tried."""
    relay = config.relay
    text = relay.reject_text.replace("{rcpt}", str(rcpt))
    if relay.explain_in_reply and hints:
        text = "\n".join((text, *hints))
    return Reply(relay.reject_code, relay.reject_enhanced, text)


def check_rcpt(
    client: Client, rcpt: Address, config: RelayView, directory: DirectoryView
) -> Decision:
    """May this client hand us mail for `rcpt`? Accept for our domains, relay only by a road."""
    trace: list[Step] = []
    decided = _our_recipient(rcpt, config.domains, directory, trace)
    if decided is not None:
        return decided
    hints: list[str] = []
    for road in road_rules.each_road(client, config):
        if road.ok:
            trace.append(Step(road.rule, PERMIT, f"{road.detail}: may relay to {rcpt}"))
            return Decision(Verdict.PERMIT, RCPT_OK, road.rule, tuple(trace))
        trace.append(Step(road.rule, NO_MATCH, road.detail))
        hints.append(road.hint)

    if rcpt.domain in config.domains.relay:
        where = f"{rcpt} asks for routing elsewhere"
    else:
        where = f"{rcpt.domain} is not our domain"
    reply = relay_denied_reply(rcpt, config, (where, *hints))
    verdict = Verdict.DEFER if reply.temporary else Verdict.REJECT
    trace.append(
        Step(
            REJECT_UNAUTH_DESTINATION,
            Result(verdict.value),
            f"{rcpt} is a foreign recipient and no road permits relaying for {client.ip}",
        )
    )
    return Decision(verdict, reply, REJECT_UNAUTH_DESTINATION, tuple(trace))


def _our_recipient(
    rcpt: Address, domains: DomainSettings, directory: DirectoryView, trace: list[Step]
) -> Decision | None:
    """local_domain and relay_domain: the decision for one of our recipients; None
    for a foreign one (its steps are in `trace`), which only a road may relay."""
    domain = rcpt.domain
    if not domain and not rcpt.is_null:
        trace.append(
            Step(
                LOCAL_DOMAIN,
                PERMIT,
                f"<{rcpt}> without a domain is our postmaster (RFC 5321 §4.5.1)",
            )
        )
        return Decision(Verdict.PERMIT, RCPT_OK, LOCAL_DOMAIN, tuple(trace))

    if domain in domains.local:
        if directory.recipient_exists(str(rcpt)):
            trace.append(
                Step(LOCAL_DOMAIN, PERMIT, f"{domain} is a local domain and {rcpt} exists")
            )
            return Decision(Verdict.PERMIT, RCPT_OK, LOCAL_DOMAIN, tuple(trace))
        why = f"{domain} is a local domain but there is no user or alias {rcpt}"
        if rcpt.routed:
            why += " (the local part is taken literally: nothing routes on %, ! or @)"
        trace.append(Step(LOCAL_DOMAIN, REJECT, why))
        return Decision(Verdict.REJECT, unknown_user_reply(rcpt), LOCAL_DOMAIN, tuple(trace))
    trace.append(
        Step(
            LOCAL_DOMAIN,
            NO_MATCH,
            f"{domain} is not a local domain (local: {_domains_words(domains.local)})",
        )
    )

    if domain in domains.relay and not rcpt.routed:
        trace.append(
            Step(
                RELAY_DOMAIN, PERMIT, f"{domain} is a relay domain: we accept and forward its mail"
            )
        )
        return Decision(Verdict.PERMIT, RCPT_OK, RELAY_DOMAIN, tuple(trace))
    if domain in domains.relay:
        detail = f"{domain} is a relay domain, but the local part {rcpt.local!r} asks for routing elsewhere"
    else:
        detail = f"{domain} is not a relay domain (relay: {_domains_words(domains.relay)})"
    trace.append(Step(RELAY_DOMAIN, NO_MATCH, detail))
    return None
