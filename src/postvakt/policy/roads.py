"""The four roads by which a client earns trust, each judged with a reason.

A road is tried the same way for relaying (RCPT) and for sender checks
(MAIL, From:), so the two can never disagree about who the client is.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from postvakt.net import IPNetwork, parse_ip
from postvakt.policy.settings import RoadsView
from postvakt.policy.types import Client

# Rule names: the same strings in config, trace, log and test ids.
PERMIT_AUTHENTICATED = "permit_authenticated"
PERMIT_POP_BEFORE_SMTP = "permit_pop_before_smtp"
PERMIT_NETWORKS = "permit_networks"
PERMIT_CLIENTS = "permit_clients"
# The order in which roads are tried (Postfix's permit_sasl_authenticated,
# then the POP-before-SMTP map, then permit_mynetworks, then client access).
ROADS = (PERMIT_AUTHENTICATED, PERMIT_POP_BEFORE_SMTP, PERMIT_NETWORKS, PERMIT_CLIENTS)
# The road of mail the server writes itself (bounces, notices), as the
# envelope records it: trusted like a road, for DKIM signing.
GENERATED = "generated"

# Networks listed by name in an admin-facing reason before we summarize.
MAX_NETWORKS_SHOWN = 4


@dataclass(frozen=True)
class Road:
    """One road's outcome. `detail` is for the admin (log, explain);
    `hint` is safe to tell the client (no internal ranges, no logins)."""

    rule: str
    ok: bool
    detail: str
    hint: str
    # The user behind the road, when it has one (AUTH login or grant's login).
    login: str | None = None


def duration_words(seconds: float) -> str:
    """30 * 60 -> "30 minutes"; for reasons a person reads."""
    s = max(0, int(round(seconds)))
    if s < 120:
        return f"{s} seconds" if s != 1 else "1 second"
    if s < 2 * 3600:
        return f"{s // 60} minutes"
    if s < 2 * 86400:
        return f"{s // 3600} hours"
    return f"{s // 86400} days"


def _networks_words(nets: Sequence[IPNetwork]) -> str:
    shown = ", ".join(str(n) for n in nets[:MAX_NETWORKS_SHOWN])
    more = len(nets) - MAX_NETWORKS_SHOWN
    return shown + (f" and {more} more" if more > 0 else "")


# How a road over a list of addresses is described to the client.
_LIST_WORDS = {"networks": "our networks", "clients": "our list of allowed clients"}


# A road over a list of addresses depends on the client's address and the list
# alone, and a Road never changes: the answer is kept for the next message from
# the same client (each is asked at MAIL and at the end of DATA), instead of
# parsing the address and writing the texts again (3% of the front's CPU).
# Keyed by the list's identity, which the entry keeps alive (so no other list
# can take its id); a config reload brings new lists, and so new entries.
_SEEN: dict[tuple[str, str, int], tuple[tuple[IPNetwork, ...], Road]] = {}
_SEEN_MAX = 1024


def _network_road(rule: str, key: str, client: Client, nets: Sequence[IPNetwork]) -> Road:
    if type(nets) is not tuple:  # a list could change under the entry
        return _judge_network(rule, key, client.ip, nets)
    seen = (rule, client.ip, id(nets))
    hit = _SEEN.get(seen)
    if hit is not None and hit[0] is nets:
        return hit[1]
    road = _judge_network(rule, key, client.ip, nets)
    if len(_SEEN) >= _SEEN_MAX:
        _SEEN.clear()
    _SEEN[seen] = (nets, road)
    return road


def _judge_network(rule: str, key: str, client_ip: str, nets: Sequence[IPNetwork]) -> Road:
    ip = parse_ip(client_ip)
    if ip is None:
        return Road(
            rule,
            False,
            f"client address {client_ip!r} is not an IP address",
            "unknown client address",
        )
    if not nets:
        return Road(rule, False, f"[relay] {key} is empty", f"{ip} is not in {_LIST_WORDS[key]}")
    for net in nets:
        if ip.version == net.version and ip in net:
            return Road(
                rule, True, f"client {ip} is in {key} {net}", f"{ip} is in {_LIST_WORDS[key]}"
            )
    return Road(
        rule,
        False,
        f"client {ip} is not in {key} {_networks_words(nets)}",
        f"{ip} is not in {_LIST_WORDS[key]}",
    )


def authenticated(client: Client) -> Road:
    if client.login:
        return Road(
            PERMIT_AUTHENTICATED, True, f"logged in as {client.login}", "logged in", client.login
        )
    return Road(
        PERMIT_AUTHENTICATED,
        False,
        f"not logged in (SMTP AUTH) on port {client.port}",
        "not logged in (use SMTP AUTH on the submission port)",
    )


def pop_before_smtp(client: Client, config: RoadsView) -> Road:
    rule = PERMIT_POP_BEFORE_SMTP
    window = config.relay.pop_before_smtp
    if window <= 0:
        return Road(
            rule,
            False,
            "POP-before-SMTP is disabled ([relay] pop_before_smtp = 0)",
            "POP-before-SMTP is off",
        )
    grant = client.grant
    ip = parse_ip(client.ip)
    recent = f"in the last {duration_words(window)}"
    if grant is None:
        return Road(
            rule,
            False,
            f"no POP3 login from {client.ip} {recent}",
            f"no POP3 login from {client.ip} {recent}",
        )
    if ip is None or parse_ip(grant.ip) != ip:
        # The store is keyed by IP; a grant for another address is a caller bug, never trust.
        return Road(
            rule,
            False,
            f"grant is for {grant.ip}, not for {client.ip}",
            f"no POP3 login from {client.ip} {recent}",
        )
    if grant.expires <= client.now:
        ago = duration_words(client.now - grant.expires)
        return Road(
            rule,
            False,
            f"{grant.login_kind} by {grant.login} from {client.ip} expired {ago} ago",
            f"no POP3 login from {client.ip} {recent}",
        )
    left = duration_words(grant.expires - client.now)
    # Several nodes: which one saw the login, so that `explain` on any node says where.
    where = f" on node {grant.node}" if grant.node else ""
    return Road(
        rule,
        True,
        f"{grant.login_kind} by {grant.login} from {client.ip}{where}, valid for {left} more",
        f"{grant.login_kind} from {client.ip}",
        grant.login,
    )


def networks(client: Client, config: RoadsView) -> Road:
    return _network_road(PERMIT_NETWORKS, "networks", client, config.relay.networks)


def clients(client: Client, config: RoadsView) -> Road:
    return _network_road(PERMIT_CLIENTS, "clients", client, config.relay.clients)


def each_road(client: Client, config: RoadsView) -> tuple[Road, ...]:
    """All four roads, in order, each with its reason."""
    return (
        authenticated(client),
        pop_before_smtp(client, config),
        networks(client, config),
        clients(client, config),
    )


def first_open(roads: Sequence[Road]) -> Road | None:
    for road in roads:
        if road.ok:
            return road
    return None
