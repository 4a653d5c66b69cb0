"""Limit decisions as tables: (who, counters, quota) -> (verdict, reply, deciding rule).

The decisions are pure; time is a parameter. NOW sits 30 minutes into an
hour, so a deferred client is told to come back in 30 minutes.
"""

from __future__ import annotations

import ipaddress
from dataclasses import replace
from pathlib import Path

import pytest

from postvakt.config import ConfigError, loads, parse_limits
from postvakt.diagnose.explain import render_text, run_explain
from postvakt.policy import Client, Decision, Grant, Verdict
from postvakt.policy.limits import (
    DEFAULT_USER,
    LIMITS_EXEMPT,
    LimitsConfig,
    Quota,
    Usage,
    check_mail_limits,
    check_rcpt_limits,
    hold_reason,
    subject_for,
    window_end,
    window_start,
    with_limit,
)
from postvakt.reply import Reply

# 2026-11-27 12:30:00 UTC
NOW = 1795782600.0
NETWORKS = (ipaddress.ip_network("192.0.2.0/24"),)
# Allowed clients ([relay] clients): the address quota counts them.
CLIENTS = (ipaddress.ip_network("203.0.113.0/24"),)
SMALL = Quota(
    messages_per_hour=2,
    messages_per_day=5,
    recipients_per_hour=10,
    recipients_per_day=20,
    recipients_per_message=3,
    outcome="hold",
)
LIMITS = LimitsConfig(
    user=SMALL,
    address=replace(SMALL, outcome="defer"),
    networks=replace(SMALL, outcome="reject", messages_per_hour=4),
    exempt=(ipaddress.ip_network("127.0.0.0/8"),),
    users=(("news@pv.test", replace(SMALL, messages_per_hour=100, messages_per_day=0)),),
)


def client(ip: str = "203.0.113.5", login: str | None = None) -> Client:
    return Client(ip=ip, port="submission" if login else "smtp", login=login, now=NOW)


def usage(mh: int = 0, md: int = 0, rh: int = 0, rd: int = 0) -> Usage:
    return Usage(messages_hour=mh, messages_day=md, recipients_hour=rh, recipients_day=rd)


MAIL_TABLE = [
    # (id, client, usage, verdict, reply start, deciding rule)
    (
        "user-fresh",
        client(login="alice@pv.test"),
        usage(),
        Verdict.PERMIT,
        "250",
        "user",
    ),
    (
        "user-at-hour-limit-held",
        client(login="alice@pv.test"),
        usage(2, 2),
        Verdict.HOLD,
        "250",
        "user.messages_per_hour",
    ),
    (
        "user-day-limit-held",
        client(login="alice@pv.test"),
        usage(0, 5),
        Verdict.HOLD,
        "250",
        "user.messages_per_day",
    ),
    (
        "user-case-insensitive-override",
        client(login="News@PV.test"),
        usage(50, 50),
        Verdict.PERMIT,
        "250",
        "users.news@pv.test",
    ),
    (
        "override-has-its-own-limit",
        client(login="news@pv.test"),
        usage(100, 100),
        Verdict.HOLD,
        "250",
        "users.news@pv.test.messages_per_hour",
    ),
    (
        "address-deferred",
        client(),
        usage(2, 2),
        Verdict.DEFER,
        "450 4.7.1",
        "address.messages_per_hour",
    ),
    ("address-below", client(), usage(1, 1), Verdict.PERMIT, "250", "address"),
    (
        "networks-own-quota",
        client("192.0.2.7"),
        usage(3, 3),
        Verdict.PERMIT,
        "250",
        "networks",
    ),
    (
        "networks-rejected",
        client("192.0.2.7"),
        usage(4, 4),
        Verdict.REJECT,
        "550 5.7.1",
        "networks.messages_per_hour",
    ),
    ("loopback-exempt", client("127.0.0.2"), usage(99, 99), Verdict.PERMIT, "250", LIMITS_EXEMPT),
    (
        "login-from-exempt-still-counted",
        client("127.0.0.1", "alice@pv.test"),
        usage(2, 2),
        Verdict.HOLD,
        "250",
        "user.messages_per_hour",
    ),
]


@pytest.mark.parametrize(
    ("c", "u", "verdict", "reply", "rule"),
    [r[1:] for r in MAIL_TABLE],
    ids=[r[0] for r in MAIL_TABLE],
)
def test_mail_limits(c: Client, u: Usage, verdict: Verdict, reply: str, rule: str) -> None:
    d = check_mail_limits(c, subject_for(c, LIMITS, NETWORKS, CLIENTS), u)
    assert d.verdict is verdict
    assert str(d.reply).startswith(reply)
    assert d.rule == rule
    assert d.accepted == (verdict in (Verdict.PERMIT, Verdict.HOLD))
    assert rule in d.rules()


RCPT_TABLE = [
    # (id, client, usage, already in this message, verdict, reply, rule)
    (
        "user-within",
        client(login="alice@pv.test"),
        usage(rh=5),
        1,
        Verdict.PERMIT,
        "250",
        "user",
    ),
    (
        "user-per-message-held",
        client(login="alice@pv.test"),
        usage(),
        3,
        Verdict.HOLD,
        "250",
        "user.recipients_per_message",
    ),
    (
        "user-hour-held",
        client(login="alice@pv.test"),
        usage(rh=9, rd=9),
        1,
        Verdict.HOLD,
        "250",
        "user.recipients_per_hour",
    ),
    (
        "address-per-message-is-452",
        client(),
        usage(),
        3,
        Verdict.DEFER,
        "452 4.5.3 Too many recipients",
        "address.recipients_per_message",
    ),
    (
        "address-hour-deferred",
        client(),
        usage(rh=10, rd=10),
        0,
        Verdict.DEFER,
        "450 4.7.1",
        "address.recipients_per_hour",
    ),
    (
        "address-day-deferred",
        client(),
        usage(rh=0, rd=20),
        0,
        Verdict.DEFER,
        "450 4.7.1",
        "address.recipients_per_day",
    ),
    (
        "networks-day-rejected",
        client("192.0.2.9"),
        usage(rd=19),
        1,
        Verdict.REJECT,
        "550 5.7.1",
        "networks.recipients_per_day",
    ),
]


@pytest.mark.parametrize(
    ("c", "u", "n", "verdict", "reply", "rule"),
    [r[1:] for r in RCPT_TABLE],
    ids=[r[0] for r in RCPT_TABLE],
)
def test_rcpt_limits(c: Client, u: Usage, n: int, verdict: Verdict, reply: str, rule: str) -> None:
    d = check_rcpt_limits(c, subject_for(c, LIMITS, NETWORKS, CLIENTS), u, n)
    assert d.verdict is verdict
    assert str(d.reply).startswith(reply)
    assert d.rule == rule


def test_a_refusing_limit_wins_over_a_holding_one() -> None:
    limits = replace(LIMITS, user=replace(SMALL, outcomes=(("recipients_per_day", "reject"),)))
    c = client(login="alice@pv.test")
    d = check_rcpt_limits(c, subject_for(c, limits, NETWORKS, CLIENTS), usage(rh=10, rd=20), 0)
    assert d.verdict is Verdict.REJECT
    assert d.rule == "user.recipients_per_day"
    assert [s.result for s in d.trace] == ["no match", "hold", "reject"]


def test_defer_says_when_to_come_back() -> None:
    d = check_mail_limits(client(), subject_for(client(), LIMITS, NETWORKS, CLIENTS), usage(2, 2))
    assert d.reply.code == 450 and d.reply.enhanced == "4.7.1"
    assert "client address 203.0.113.5" in d.reply.text
    assert "try again in 30 minutes" in d.reply.text
    day = check_mail_limits(client(), subject_for(client(), LIMITS, NETWORKS, CLIENTS), usage(0, 5))
    assert "try again in 690 minutes" in day.reply.text  # 11.5 h to midnight UTC


def test_hold_reason_names_rule_and_numbers() -> None:
    c = client(login="alice@pv.test")
    d = check_mail_limits(c, subject_for(c, LIMITS, NETWORKS, CLIENTS), usage(2, 2))
    reason = hold_reason(d)
    assert reason is not None
    assert reason.startswith(
        "user.messages_per_hour: user alice@pv.test: 3 messages in this clock hour with this one, limit 2"
    )
    assert (
        hold_reason(check_mail_limits(c, subject_for(c, LIMITS, NETWORKS, CLIENTS), usage()))
        is None
    )


def test_zero_means_no_limit() -> None:
    limits = replace(LIMITS, address=replace(SMALL, messages_per_hour=0, messages_per_day=0))
    d = check_mail_limits(
        client(), subject_for(client(), limits, NETWORKS, CLIENTS), usage(10**6, 10**6)
    )
    assert d.verdict is Verdict.PERMIT
    assert [s.result for s in d.trace][:2] == ["off", "off"]


def test_disabled_limits_count_nobody() -> None:
    assert (
        subject_for(client(login="a@pv.test"), replace(LIMITS, enabled=False), NETWORKS, CLIENTS)
        is None
    )


def test_windows_are_the_clock_hour_and_the_utc_day() -> None:
    assert window_start(3600, NOW) == NOW - 1800
    assert window_end(3600, NOW) == NOW + 1800
    assert window_end(86400, NOW) == NOW + 11.5 * 3600


def test_default_quotas_hold_users_and_defer_addresses() -> None:
    d = LimitsConfig()
    assert (
        d.user.outcome == "hold" and d.address.outcome == "defer" and d.networks.outcome == "defer"
    )
    assert d.user.outcome_for("recipients_per_message") == "defer"
    assert d.user.messages_per_hour == 200 and d.user.recipients_per_hour == 1000
    assert subject_for(client("127.0.0.1"), d, NETWORKS, CLIENTS) is None
    assert subject_for(client("::1"), d, NETWORKS, CLIENTS) is None


# ---------------------------------------------------------------- config


def test_parse_limits_full_table() -> None:
    cfg = loads(
        """
[limits]
store = "sqlite"
exempt = ["10.0.0.0/8"]
notify_user = true
auth_delay = 0.5
auth_delay_max = "2s"
auth_failures = 5
auth_failures_address = 40
auth_window = "10m"

[limits.user]
messages_per_hour = 50
outcome = "reject"

[limits.address]
recipients_per_message = 10
outcomes = { recipients_per_hour = "hold" }

[limits.users."News@PV.test"]
messages_per_hour = 5000
"""
    ).limits
    assert cfg.store == "sqlite" and cfg.notify_user
    assert cfg.exempt == (ipaddress.ip_network("10.0.0.0/8"),)
    assert (cfg.auth_delay, cfg.auth_delay_max, cfg.auth_failures, cfg.auth_window) == (
        0.5,
        2.0,
        5,
        600.0,
    )
    assert cfg.auth_failures_address == 40
    assert loads("").limits.auth_failures_address == 100  # ten users' worth of the default 10
    assert cfg.user.messages_per_hour == 50
    # A quota-wide outcome replaces the default per-limit ones.
    assert cfg.user.outcome_for("recipients_per_message") == "reject"
    assert cfg.address.outcome_for("recipients_per_hour") == "hold"
    assert cfg.address.outcome_for("messages_per_hour") == "defer"
    news = cfg.user_quota("news@pv.test")
    assert news.messages_per_hour == 5000
    assert news.outcome == "reject"  # built on the configured [limits.user]


@pytest.mark.parametrize(
    ("toml", "key"),
    [
        ("[limits]\nbogus = 1", "[limits] bogus"),
        ("[limits.user]\nmessages_per_hour = -1", "[limits.user] messages_per_hour"),
        ('[limits.user]\nmessages_per_hour = "many"', "[limits.user] messages_per_hour"),
        ('[limits.user]\noutcome = "discard"', "[limits.user] outcome"),
        (
            '[limits.user]\noutcomes = { messages_per_week = "hold" }',
            "[limits.user] outcomes.messages_per_week",
        ),
        (
            '[limits.user]\noutcomes = { messages_per_hour = "drop" }',
            "[limits.user] outcomes.messages_per_hour",
        ),
        ("[limits.user]\nmessages = 3", "[limits.user] messages"),
        ('[limits]\nstore = "redis"', "[limits] store"),
        ('[limits]\nexempt = ["not-an-ip"]', "[limits] exempt"),
        ("[limits]\nauth_failures = 0", "[limits] auth_failures"),
        ("[limits]\nauth_failures_address = true", "[limits] auth_failures_address"),
        ("[limits]\nauth_delay = 5\nauth_delay_max = 1", "[limits] auth_delay_max"),
        ("[limits.users.nobody]\nmessages_per_hour = 1", "[limits.users.'nobody']"),
        ("[limits]\nuser = 3", "[limits.user]"),
    ],
)
def test_config_errors_name_the_key(toml: str, key: str) -> None:
    with pytest.raises(ConfigError) as e:
        loads(toml, source="t.toml")
    assert e.value.key == key, str(e.value)
    assert str(e.value).startswith("t.toml: ")


def test_outcome_discard_does_not_exist() -> None:
    """Never accept-and-discard: there is no such outcome to configure."""
    with pytest.raises(ConfigError):
        parse_limits({"user": {"outcome": "discard"}}, "t.toml")
    assert DEFAULT_USER.outcome in ("defer", "reject", "hold")


# ---------------------------------------------------------------- explain


def test_explain_shows_which_limit_decides(tmp_path: Path) -> None:
    cfg = loads(
        f"""
data_dir = "{tmp_path}"
[domains]
local = ["pv.test"]
[limits]
exempt = []
[limits.user]
messages_per_hour = 2
[limits.address]
recipients_per_message = 1
"""
    )

    class Everyone:
        def recipient_exists(self, address: str) -> bool:
            return True

        def may_send_as(self, login: str, address: str) -> bool:
            return True

    held = run_explain(
        cfg,
        Everyone(),
        None,
        client_ip="192.0.2.1",
        login="alice@pv.test",
        port="submission",
        mail_from="alice@pv.test",
        rcpts=["bob@remote.test"],
        now=NOW,
        usage=usage(2, 2),
    )
    mail = held.checks[0].decision
    assert mail.verdict is Verdict.HOLD and mail.rule == "user.messages_per_hour"
    assert str(mail.reply).startswith("250")
    assert "sender_authenticated" in mail.rules()  # the policy's steps come first
    assert held.accepted  # the client sees 250: accepted, but held
    text = render_text(held, cfg)
    assert "=> HOLD by user.messages_per_hour" in text
    assert "3 messages in this clock hour with this one, limit 2" in text

    stranger = run_explain(
        cfg,
        Everyone(),
        None,
        client_ip="192.0.2.1",
        mail_from="x@elsewhere.example",
        rcpts=["a@pv.test", "b@pv.test"],
        now=NOW,
    )
    # A client on no road to relay sends only inbound mail: never limited here.
    assert stranger.accepted
    assert all("limits_exempt" in c.decision.rules() for c in stranger.checks[1:])

    allowed_cfg = replace(cfg, relay=replace(cfg.relay, clients=CLIENTS + NETWORKS))
    allowed = run_explain(
        allowed_cfg,
        Everyone(),
        None,
        client_ip="192.0.2.1",
        mail_from="x@elsewhere.example",
        rcpts=["a@pv.test", "b@pv.test"],
        now=NOW,
    )
    first, second = (c.decision for c in allowed.checks[1:])
    assert first.accepted and "address.recipients_per_message" in first.rules()
    assert second.rule == "address.recipients_per_message"
    assert str(second.reply) == "452 4.5.3 Too many recipients"


def test_with_limit_keeps_a_refusal_and_replaces_an_ok() -> None:
    c = client(login="alice@pv.test")
    s = subject_for(c, LIMITS, NETWORKS, CLIENTS)
    refused = Decision(Verdict.REJECT, Reply(553, "5.7.1", "no"), "sender_authenticated", ())
    assert with_limit(refused, check_mail_limits(c, s, usage(9, 9))) is refused
    ok = Decision(Verdict.PERMIT, Reply(250, "2.1.0", "Ok"), "sender_authenticated", ())
    limits = replace(LIMITS, user=replace(SMALL, outcome="reject"))
    over = with_limit(
        ok, check_mail_limits(c, subject_for(c, limits, NETWORKS, CLIENTS), usage(2, 2))
    )
    assert over.verdict is Verdict.REJECT and over.reply.code == 550
    fine = with_limit(ok, check_mail_limits(c, s, usage()))
    assert fine.reply == ok.reply and fine.rule == "sender_authenticated"
    assert fine.rules()[-2:] == ("user.messages_per_day", "user")


def test_a_client_on_no_road_sends_only_inbound_mail_and_is_not_counted() -> None:
    outsider = client("198.51.100.7")
    assert subject_for(outsider, LIMITS, NETWORKS, CLIENTS) is None
    pop = Client(ip="198.51.100.7", grant=Grant("198.51.100.7", "a@pv.test", NOW + 60), now=NOW)
    counted = subject_for(pop, LIMITS, NETWORKS, CLIENTS)
    assert counted is not None and counted.quota_name == "address"
    shown = subject_for(outsider, LIMITS, NETWORKS, any_road=True)
    assert shown is not None and shown.counter_key == counted.counter_key
