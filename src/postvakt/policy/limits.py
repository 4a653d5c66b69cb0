"""Outbound limits: how much one user or one client address may send, and what
happens past the limit.

Rules of the house:
- Pure: the caller passes the counters (`Usage`) and the clock (`now`); the
  counters themselves live in `postvakt.grants.counters`.
- A subject is who is counted: the SMTP AUTH login ("user"), else the client
  address. Clients in `[relay] networks` are counted per address with the
  `[limits.networks]` quota; allowed clients and POP-before-SMTP addresses
  with `[limits.address]`; a client on no road is not counted (it can only
  send inbound mail, to our own domains). Addresses
  in `[limits] exempt` (default: loopback, the machine itself) are not counted
  per address; a login is counted wherever it connects from, because a stolen
  password is used from anywhere.
- Every limit has an outcome: "defer" (4xx, the client retries later),
  "reject" (5xx) or "hold" (the client sees 250, the message waits in the
  hold queue and the admin is told). Nothing is ever accepted and discarded.
- A limit's rule name is "<quota>.<limit>", e.g. "user.messages_per_hour":
  the same string as the config key `[limits.user] messages_per_hour`, in the
  trace, in the log and in the hold reason.
- Windows are fixed: the clock hour and the UTC day. A deferred client is
  told when the window ends. (A burst across a boundary may reach twice a
  limit; that is the price of counters an admin can read.)

Config (every key optional; 0 = no limit):

    [limits]
    enabled = true
    exempt = ["127.0.0.0/8", "::1/128"]   # not counted per address
    notify_user = false                   # also tell the user when held
    auth_delay = "2s"                     # failed logins per (address, login):
    auth_delay_max = "15s"                #   answer delay doubling up to the max,
    auth_failures = 10                    #   then 454 4.7.0 without a check;
    auth_failures_address = 100           # per address over all logins: 454 after this;
    auth_window = "15m"                   #   both forgotten after this long

    [limits.user]                         # likewise [limits.address], [limits.networks]
    messages_per_hour = 200
    outcome = "hold"                      # defer | reject | hold
    outcomes = { recipients_per_message = "defer" }

    [limits.users."news@example.org"]     # one login, over [limits.user]
    messages_per_hour = 5000
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, replace

from postvakt.net import IPV6_PREFIX, client_key, in_networks
from postvakt.policy.types import (
    DEFER,
    NO_MATCH,
    OFF,
    PERMIT,
    REJECT,
    Client,
    Decision,
    Result,
    Step,
    Verdict,
)
from postvakt.reply import Reply

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# What may happen over a limit.
OUTCOME_DEFER = "defer"
OUTCOME_REJECT = "reject"
OUTCOME_HOLD = "hold"
OUTCOMES = (OUTCOME_DEFER, OUTCOME_REJECT, OUTCOME_HOLD)
# The step result of a limit that holds the message.
HOLD = Result.HOLD

# Quotas: who is counted.
USER = "user"
ADDRESS = "address"
NETWORKS = "networks"
QUOTAS = (USER, ADDRESS, NETWORKS)

# The limits a quota has (config keys).
MESSAGES_PER_HOUR = "messages_per_hour"
MESSAGES_PER_DAY = "messages_per_day"
RECIPIENTS_PER_HOUR = "recipients_per_hour"
RECIPIENTS_PER_DAY = "recipients_per_day"
RECIPIENTS_PER_MESSAGE = "recipients_per_message"
LIMITS = (
    MESSAGES_PER_HOUR,
    MESSAGES_PER_DAY,
    RECIPIENTS_PER_HOUR,
    RECIPIENTS_PER_DAY,
    RECIPIENTS_PER_MESSAGE,
)
MAIL_LIMITS = (MESSAGES_PER_HOUR, MESSAGES_PER_DAY)
RCPT_LIMITS = (RECIPIENTS_PER_MESSAGE, RECIPIENTS_PER_HOUR, RECIPIENTS_PER_DAY)

HOUR = 3600.0
DAY = 86400.0
# Which window a limit counts in (None: per message, no window).
WINDOW = {
    MESSAGES_PER_HOUR: HOUR,
    MESSAGES_PER_DAY: DAY,
    RECIPIENTS_PER_HOUR: HOUR,
    RECIPIENTS_PER_DAY: DAY,
    RECIPIENTS_PER_MESSAGE: None,
}

# The rule name used when no quota applies (exempt address, limits off).
LIMITS_EXEMPT = "limits_exempt"

# RFC 3463 X.7.1 "delivery not authorized, message refused"; 450 asks the
# client to try again, 550 not.
DEFER_CODE = (450, "4.7.1")
REJECT_CODE = (550, "5.7.1")
# RFC 5321 §4.5.3.1.10: a client that gets 452 for too many recipients sends
# the rest in a later transaction; every MUA and MTA knows this reply.
TOO_MANY_RECIPIENTS = Reply(452, "4.5.3", "Too many recipients")
OK = Reply(250, "2.0.0", "Ok")


@dataclass(frozen=True)
class Quota:
    """The limits of one kind of subject; 0 means no limit."""

    messages_per_hour: int
    messages_per_day: int
    recipients_per_hour: int
    recipients_per_day: int
    recipients_per_message: int
    # The outcome of every limit of this quota, unless `outcomes` names another.
    outcome: str
    outcomes: tuple[tuple[str, str], ...] = ()

    def value(self, limit: str) -> int:
        return int(getattr(self, limit))

    def outcome_for(self, limit: str) -> str:
        for name, outcome in self.outcomes:
            if name == limit:
                return outcome
        return self.outcome


# Authenticated users. Large webmail providers cap personal accounts at a few
# hundred to a couple of thousand recipients a day; a small provider's honest
# customer sends far less, while a stolen password is used for thousands an
# hour. 200 messages / 1000 recipients an hour stops a spam run within minutes
# and is rarely met by a person. Over the limit the mail is held, not refused:
# the user's client would show an error the user cannot act on, and the admin
# can release a false alarm with one command.
# 100 recipients per message: RFC 5321 §4.5.3.1.8's minimum a server must
# accept; past it the standard 452 makes the client send the rest later.
DEFAULT_USER = Quota(
    messages_per_hour=200,
    messages_per_day=1000,
    recipients_per_hour=1000,
    recipients_per_day=5000,
    recipients_per_message=100,
    outcome=OUTCOME_HOLD,
    outcomes=((RECIPIENTS_PER_MESSAGE, OUTCOME_DEFER),),
)
# Clients not logged in and not in our networks: other mail servers delivering
# to our users. Deferred, never held: a real MTA retries (RFC 5321 §4.5.4.1),
# and holding a stranger's mail would make the admin sort spam. Per message
# the core's `[smtp] max_recipients` applies.
DEFAULT_ADDRESS = Quota(
    messages_per_hour=500,
    messages_per_day=2000,
    recipients_per_hour=1000,
    recipients_per_day=5000,
    recipients_per_message=0,
    outcome=OUTCOME_DEFER,
)
# Clients in `[relay] networks` without a login: customer lines and offices,
# several people behind one address, so more than one user; deferred like
# any MTA-to-MTA limit, and the log names the address.
DEFAULT_NETWORKS = Quota(
    messages_per_hour=1000,
    messages_per_day=10000,
    recipients_per_hour=5000,
    recipients_per_day=20000,
    recipients_per_message=0,
    outcome=OUTCOME_DEFER,
)
# The machine itself (webmail, cron, monitoring) is not counted per address.
DEFAULT_EXEMPT: tuple[IPNetwork, ...] = (
    ipaddress.ip_network("127.0.0.0/8"),
    ipaddress.ip_network("::1/128"),
)

# Failed logins (SMTP AUTH and POP3 share the counts; postvakt.grants.logins).
# Per (client address, login): Dovecot's authentication penalty, 2 s after the
# first failure, doubling, at most 15 s; then refusal without a password check
# after 10 (Postfix-style 454), which a user who mistypes never reaches.
AUTH_DELAY = 2.0
AUTH_DELAY_MAX = 15.0
AUTH_FAILURES = 10
# Per client address, over all logins: ten users' worth of the above, so that
# a NAT full of honest users (a school, a hotel) stays clear of it while an
# address that sprays guesses over many logins is stopped.
AUTH_FAILURES_ADDRESS = 100


# Failures older than this are forgotten (fail2ban's default findtime is 10 min).
AUTH_WINDOW = 15 * 60.0


@dataclass(frozen=True)
class LimitsConfig:
    """`[limits]`: quotas per kind of subject, per-user overrides, login failures."""

    enabled: bool = True
    user: Quota = DEFAULT_USER
    address: Quota = DEFAULT_ADDRESS
    networks: Quota = DEFAULT_NETWORKS
    exempt: tuple[IPNetwork, ...] = DEFAULT_EXEMPT
    # Overrides for single logins: (canonical login, its quota).
    users: tuple[tuple[str, Quota], ...] = ()
    # Also tell the user (not only postmaster) when their mail is held.
    notify_user: bool = False
    # Deprecated: the old name of `[store] state` (config.py maps it there).
    store: str = "memory"
    auth_delay: float = AUTH_DELAY
    auth_delay_max: float = AUTH_DELAY_MAX
    auth_failures: int = AUTH_FAILURES
    auth_failures_address: int = AUTH_FAILURES_ADDRESS
    auth_window: float = AUTH_WINDOW
    # How much of an IPv6 address is one client, for the limits and for failed logins.
    ipv6_prefix: int = IPV6_PREFIX

    def user_quota(self, login: str) -> Quota:
        key = login.lower()
        for name, quota in self.users:
            if name == key:
                return quota
        return self.user


@dataclass(frozen=True)
class Subject:
    """Who is counted and by which quota: kind is "user" or "address"."""

    kind: str
    key: str
    quota_name: str
    quota: Quota

    @property
    def counter_key(self) -> str:
        return f"{self.kind}:{self.key}"

    def __str__(self) -> str:
        return f"user {self.key}" if self.kind == USER else f"client address {self.key}"


@dataclass(frozen=True)
class Usage:
    """What a subject sent in the current windows (from the counter store)."""

    messages_hour: int = 0
    messages_day: int = 0
    recipients_hour: int = 0
    recipients_day: int = 0

    def count(self, limit: str) -> int:
        return {
            MESSAGES_PER_HOUR: self.messages_hour,
            MESSAGES_PER_DAY: self.messages_day,
            RECIPIENTS_PER_HOUR: self.recipients_hour,
            RECIPIENTS_PER_DAY: self.recipients_day,
        }.get(limit, 0)


def window_start(window: float, now: float) -> float:
    """The start of the fixed window (clock hour, UTC day) that holds `now`."""
    return now - (now % window)


def window_end(window: float, now: float) -> float:
    return window_start(window, now) + window


def subject_for(
    client: Client,
    limits: LimitsConfig,
    networks: tuple[IPNetwork, ...],
    clients: tuple[IPNetwork, ...] = (),
    *,
    any_road: bool = False,
) -> Subject | None:
    """Who this client is counted as; None when nobody is counted.

    Outbound limits count those who could relay: a login, or an address on
    one of the other roads (networks, allowed clients, a POP-before-SMTP
    grant). A client on no road can only send to our own domains: that is
    inbound mail (an MX peer, a mailing list), and outbound limits must never
    defer it. `any_road` answers for an address whatever road it came by
    (to show the counters it has).
    """
    if not limits.enabled:
        return None
    if client.login:
        login = client.login.lower()
        quota = limits.user_quota(login)
        name = f"users.{login}" if quota is not limits.user else USER
        return Subject(USER, login, name, quota)
    if in_networks(client.ip, limits.exempt):
        return None
    key = client_key(client.ip, limits.ipv6_prefix)
    if in_networks(client.ip, networks):
        return Subject(ADDRESS, key, NETWORKS, limits.networks)
    if any_road or in_networks(client.ip, clients) or client.grant is not None:
        return Subject(ADDRESS, key, ADDRESS, limits.address)
    return None


def _minutes(seconds: float) -> str:
    minutes = max(1, int(seconds + 59) // 60)
    return "1 minute" if minutes == 1 else f"{minutes} minutes"


def _what(limit: str) -> str:
    noun = "messages" if limit.startswith("messages") else "recipients"
    per = limit.rpartition("_")[2]
    return f"{noun} per {per}"


# How a count reads in the trace, by limit.
_COUNTED = {
    MESSAGES_PER_HOUR: "messages in this clock hour",
    MESSAGES_PER_DAY: "messages today (UTC)",
    RECIPIENTS_PER_HOUR: "recipients in this clock hour",
    RECIPIENTS_PER_DAY: "recipients today (UTC)",
    RECIPIENTS_PER_MESSAGE: "recipients in this message",
}


def _over_reply(subject: Subject, limit: str, outcome: str, now: float) -> Reply:
    value = subject.quota.value(limit)
    if outcome == OUTCOME_REJECT:
        return Reply(*REJECT_CODE, f"Too many {_what(limit)} from {subject} (limit {value})")
    if limit == RECIPIENTS_PER_MESSAGE:
        return TOO_MANY_RECIPIENTS
    window = WINDOW[limit]
    assert window is not None
    wait = window_end(window, now) - now
    return Reply(
        *DEFER_CODE,
        f"Too many {_what(limit)} from {subject} (limit {value}); try again in {_minutes(wait)}",
    )


def _verdict(outcome: str) -> Verdict:
    return {
        OUTCOME_DEFER: Verdict.DEFER,
        OUTCOME_REJECT: Verdict.REJECT,
        OUTCOME_HOLD: Verdict.HOLD,
    }[outcome]


def _result(outcome: str) -> Result:
    return {OUTCOME_DEFER: DEFER, OUTCOME_REJECT: REJECT, OUTCOME_HOLD: HOLD}[outcome]


def _check(
    client: Client,
    subject: Subject | None,
    usage: Usage,
    limits_to_check: tuple[str, ...],
    adding: dict[str, int],
    ok: Reply,
) -> Decision:
    if subject is None:
        why = (
            f"{client.ip} is not counted: not logged in and exempt ([limits] exempt), or on no road"
            " to relay (only inbound mail: outbound limits do not apply), or [limits] enabled is false"
        )
        return Decision(Verdict.PERMIT, ok, LIMITS_EXEMPT, (Step(LIMITS_EXEMPT, OFF, why),))
    trace: list[Step] = []
    held: Decision | None = None
    for limit in limits_to_check:
        rule = f"{subject.quota_name}.{limit}"
        value = subject.quota.value(limit)
        if value <= 0:
            trace.append(Step(rule, OFF, "no limit"))
            continue
        have = (
            adding[limit] if limit == RECIPIENTS_PER_MESSAGE else usage.count(limit) + adding[limit]
        )
        counted = f"{have} {_COUNTED[limit]} with this one, limit {value}"
        if have <= value:
            trace.append(Step(rule, NO_MATCH, f"{subject}: {counted}"))
            continue
        outcome = subject.quota.outcome_for(limit)
        detail = f"{subject}: {counted}: over the limit, {outcome}"
        trace.append(Step(rule, _result(outcome), detail))
        if outcome == OUTCOME_HOLD:
            # Hold is the mildest answer: a later limit that refuses still wins.
            if held is None:
                held = Decision(Verdict.HOLD, ok, rule, ())
            continue
        reply = _over_reply(subject, limit, outcome, client.now)
        return Decision(_verdict(outcome), reply, rule, tuple(trace))
    if held is not None:
        return replace(held, trace=tuple(trace))
    # The quota as a whole permits: its name is the config section's last part.
    trace.append(Step(subject.quota_name, PERMIT, f"{subject} is within its limits"))
    return Decision(Verdict.PERMIT, ok, subject.quota_name, tuple(trace))


def check_mail_limits(client: Client, subject: Subject | None, usage: Usage) -> Decision:
    """At MAIL: would one more message break an hourly or daily message limit?"""
    adding = {MESSAGES_PER_HOUR: 1, MESSAGES_PER_DAY: 1}
    return _check(client, subject, usage, MAIL_LIMITS, adding, OK)


def check_rcpt_limits(
    client: Client, subject: Subject | None, usage: Usage, in_message: int
) -> Decision:
    """At RCPT: `in_message` recipients already accepted in this transaction, one more asked."""
    n = in_message + 1
    adding = {RECIPIENTS_PER_MESSAGE: n, RECIPIENTS_PER_HOUR: n, RECIPIENTS_PER_DAY: n}
    return _check(client, subject, usage, RCPT_LIMITS, adding, OK)


def with_limit(decision: Decision, limit: Decision) -> Decision:
    """One decision for a command: the policy's, then the limit's, in one trace.

    A refused command never reaches the limits; a limit that refuses answers
    instead of the policy; a hold keeps the policy's 2xx reply.
    """
    if not decision.reply.positive:
        return decision
    trace = decision.trace + limit.trace
    if limit.verdict is Verdict.PERMIT:
        return Decision(decision.verdict, decision.reply, decision.rule, trace)
    if limit.verdict is Verdict.HOLD:
        return Decision(Verdict.HOLD, decision.reply, limit.rule, trace)
    return Decision(limit.verdict, limit.reply, limit.rule, trace)


def hold_reason(decision: Decision) -> str | None:
    """The text kept in the envelope of a held message: rule and why."""
    if decision.verdict is not Verdict.HOLD:
        return None
    for step in decision.trace:
        if step.rule == decision.rule:
            return f"{step.rule}: {step.detail}"
    return decision.rule


__all__ = [
    "ADDRESS",
    "HOLD",
    "LIMITS",
    "LIMITS_EXEMPT",
    "NETWORKS",
    "OUTCOMES",
    "USER",
    "IPV6_PREFIX",
    "LimitsConfig",
    "Quota",
    "Subject",
    "Usage",
    "check_mail_limits",
    "check_rcpt_limits",
    "client_key",
    "hold_reason",
    "subject_for",
    "window_end",
    "with_limit",
    "window_start",
]
