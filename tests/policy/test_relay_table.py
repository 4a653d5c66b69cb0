"""The relay decision as a table: robustness §2 R1–R20, S1–S4, and DESIGN.md.

Each row: (client, MAIL FROM, RCPT TO) -> (MAIL verdict, RCPT verdict,
RCPT reply, rules in the RCPT trace). A row whose address does not parse
expects the parser's reply instead: the SMTP layer sends that reply and the
policy never sees the address.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from policy_harness import NOW, O_IP, DictDirectory, client, make_config

from postvakt.address import AddressError, parse_path, split_path_and_params
from postvakt.config import Config
from postvakt.policy import (
    LOCAL_DOMAIN,
    PERMIT_AUTHENTICATED,
    PERMIT_CLIENTS,
    PERMIT_NETWORKS,
    PERMIT_POP_BEFORE_SMTP,
    REJECT_UNAUTH_DESTINATION,
    RELAY_DOMAIN,
    Client,
    Grant,
    Verdict,
    check_header_from,
    check_rcpt,
    check_sender,
)

PERMIT, REJECT, DEFER, WARN = Verdict.PERMIT, Verdict.REJECT, Verdict.DEFER, Verdict.WARN

DOMAINS = (LOCAL_DOMAIN, RELAY_DOMAIN)
ALL_ROADS_FAIL = (
    *DOMAINS,
    PERMIT_AUTHENTICATED,
    PERMIT_POP_BEFORE_SMTP,
    PERMIT_NETWORKS,
    PERMIT_CLIENTS,
    REJECT_UNAUTH_DESTINATION,
)
LOC = (LOCAL_DOMAIN,)
OK = "250 2.1.5 Ok"
UNKNOWN = "550 5.1.1 <{}>: Recipient address rejected: User unknown"
DENIED = "550 5.7.1 <{}>: Relaying denied"


@dataclass(frozen=True)
class Row:
    id: str
    who: str
    mail_from: str
    rcpt: str
    mail: Verdict | str  # a verdict, or the parser's "code enhanced" on a bad address
    verdict: Verdict | str
    reply: str = ""
    rules: tuple[str, ...] = ()


ROWS = [
    # R1-R4: whatever the sender, an outside client cannot relay.
    Row(
        "R1",
        "O",
        "<spam@other.example>",
        "<v@other.example>",
        PERMIT,
        REJECT,
        DENIED.format("v@other.example"),
        ALL_ROADS_FAIL,
    ),
    Row(
        "R2",
        "O",
        "<>",
        "<v@other.example>",
        PERMIT,
        REJECT,
        DENIED.format("v@other.example"),
        ALL_ROADS_FAIL,
    ),
    Row(
        "R3-postmaster",
        "O",
        "<postmaster@pv.test>",
        "<v@other.example>",
        REJECT,
        REJECT,
        DENIED.format("v@other.example"),
        ALL_ROADS_FAIL,
    ),
    Row(
        "R3-hostname",
        "O",
        "<u@mx.pv.test>",
        "<v@other.example>",
        REJECT,
        REJECT,
        DENIED.format("v@other.example"),
        ALL_ROADS_FAIL,
    ),
    Row(
        "R4",
        "O",
        "<u@[127.0.0.1]>",
        "<v@other.example>",
        REJECT,
        REJECT,
        DENIED.format("v@other.example"),
        ALL_ROADS_FAIL,
    ),
    # R5-R7: routing characters stay in the local part; local lookup is literal.
    Row(
        "R5-local",
        "O",
        "<a@other.example>",
        "<v%other.example@pv.test>",
        PERMIT,
        REJECT,
        UNKNOWN.format("v%other.example@pv.test"),
        LOC,
    ),
    Row(
        "R5-literal-user", "O", "<a@other.example>", "<weird%name@pv.test>", PERMIT, PERMIT, OK, LOC
    ),
    Row(
        "R5-ip",
        "O",
        "<a@other.example>",
        "<v%other.example@[127.0.0.1]>",
        PERMIT,
        REJECT,
        DENIED.format("v%other.example@[127.0.0.1]"),
        ALL_ROADS_FAIL,
    ),
    Row(
        "R6-local",
        "O",
        "<a@other.example>",
        "<other.example!v@pv.test>",
        PERMIT,
        REJECT,
        UNKNOWN.format("other.example!v@pv.test"),
        LOC,
    ),
    Row(
        "R6-ip",
        "O",
        "<a@other.example>",
        "<other.example!v@[127.0.0.1]>",
        PERMIT,
        REJECT,
        DENIED.format("other.example!v@[127.0.0.1]"),
        ALL_ROADS_FAIL,
    ),
    Row("R6-bare", "O", "<a@other.example>", "<other.example!v>", PERMIT, "501 5.1.3"),
    Row(
        "R7-local",
        "O",
        "<a@other.example>",
        '<"v@other.example"@pv.test>',
        PERMIT,
        REJECT,
        UNKNOWN.format('"v@other.example"@pv.test'),
        LOC,
    ),
    Row(
        "R7-ip",
        "O",
        "<a@other.example>",
        '<"v@other.example"@[127.0.0.1]>',
        PERMIT,
        REJECT,
        DENIED.format('"v@other.example"@[127.0.0.1]'),
        ALL_ROADS_FAIL,
    ),
    Row("R8-at", "O", "<a@other.example>", '<"v@other.example">', PERMIT, "501 5.1.3"),
    Row("R8-percent", "O", "<a@other.example>", '<"v%other.example">', PERMIT, "501 5.1.3"),
    # R9: two @ is a syntax error, never a route.
    Row("R9-local", "O", "<a@other.example>", "<v@other.example@pv.test>", PERMIT, "501 5.1.3"),
    Row("R9-ip", "O", "<a@other.example>", "<v@other.example@[127.0.0.1]>", PERMIT, "501 5.1.3"),
    Row(
        "R9-hostname", "O", "<a@other.example>", "<v@other.example@mx.pv.test>", PERMIT, "501 5.1.3"
    ),
    # R10-R11: source routes are dropped; the final mailbox decides.
    Row(
        "R10-local",
        "O",
        "<a@other.example>",
        "<@pv.test:v@other.example>",
        PERMIT,
        REJECT,
        DENIED.format("v@other.example"),
        ALL_ROADS_FAIL,
    ),
    Row(
        "R10-ip",
        "O",
        "<a@other.example>",
        "<@[127.0.0.1]:v@other.example>",
        PERMIT,
        REJECT,
        DENIED.format("v@other.example"),
        ALL_ROADS_FAIL,
    ),
    Row("R11", "O", "<a@other.example>", "<@other.example:u@pv.test>", PERMIT, PERMIT, OK, LOC),
    # R12-R15: case, trailing dots, look-alike domains and literals.
    Row(
        "R12-dot",
        "O",
        "<a@other.example>",
        "<v@other.example.>",
        PERMIT,
        REJECT,
        DENIED.format("v@other.example"),
        ALL_ROADS_FAIL,
    ),
    Row(
        "R12-case",
        "O",
        "<a@other.example>",
        "<v@OTHER.Example>",
        PERMIT,
        REJECT,
        DENIED.format("v@other.example"),
        ALL_ROADS_FAIL,
    ),
    Row("R13", "O", "<a@other.example>", "<u@PV.TEST.>", PERMIT, PERMIT, OK, LOC),
    Row(
        "R14-prefix",
        "O",
        "<a@other.example>",
        "<v@evilpv.test>",
        PERMIT,
        REJECT,
        DENIED.format("v@evilpv.test"),
        ALL_ROADS_FAIL,
    ),
    Row(
        "R14-suffix",
        "O",
        "<a@other.example>",
        "<v@pv.test.other.example>",
        PERMIT,
        REJECT,
        DENIED.format("v@pv.test.other.example"),
        ALL_ROADS_FAIL,
    ),
    Row(
        "R14-sub",
        "O",
        "<a@other.example>",
        "<v@sub.pv.test>",
        PERMIT,
        REJECT,
        DENIED.format("v@sub.pv.test"),
        ALL_ROADS_FAIL,
    ),
    Row(
        "R15-v4",
        "O",
        "<a@other.example>",
        "<v@[8.8.8.8]>",
        PERMIT,
        REJECT,
        DENIED.format("v@[8.8.8.8]"),
        ALL_ROADS_FAIL,
    ),
    Row(
        "R15-v6",
        "O",
        "<a@other.example>",
        "<v@[IPv6:::1]>",
        PERMIT,
        REJECT,
        DENIED.format("v@[IPv6:::1]"),
        ALL_ROADS_FAIL,
    ),
    Row(
        "R15-dotted-quad",
        "O",
        "<a@other.example>",
        "<v@127.0.0.1>",
        PERMIT,
        REJECT,
        DENIED.format("v@127.0.0.1"),
        ALL_ROADS_FAIL,
    ),
    # R16-R18: unqualified, control characters, non-ASCII without SMTPUTF8.
    Row("R16", "O", "<a@other.example>", "<v>", PERMIT, "501 5.1.3"),
    Row("R16-postmaster", "O", "<a@other.example>", "<Postmaster>", PERMIT, PERMIT, OK, LOC),
    Row("R17-nul", "O", "<a@other.example>", "<u@pv.test\x00@other.example>", PERMIT, "501 5.1.3"),
    Row("R17-cr", "O", "<a@other.example>", "<v@other.example\r>", PERMIT, "501 5.1.3"),
    Row("R18", "O", "<a@other.example>", "<v@exämple.com>", PERMIT, "553 5.6.7"),
    # R20: positive controls, one per road (DESIGN.md's table).
    Row(
        "R20-permit_networks",
        "T",
        "<a@other.example>",
        "<v@other.example>",
        PERMIT,
        PERMIT,
        OK,
        (*DOMAINS, PERMIT_AUTHENTICATED, PERMIT_POP_BEFORE_SMTP, PERMIT_NETWORKS),
    ),
    Row(
        "R20-permit_authenticated",
        "A:alice@pv.test",
        "<alice@pv.test>",
        "<v@other.example>",
        PERMIT,
        PERMIT,
        OK,
        (*DOMAINS, PERMIT_AUTHENTICATED),
    ),
    Row(
        "permit_pop_before_smtp",
        "P:alice@pv.test",
        "<a@other.example>",
        "<v@other.example>",
        PERMIT,
        PERMIT,
        OK,
        (*DOMAINS, PERMIT_AUTHENTICATED, PERMIT_POP_BEFORE_SMTP),
    ),
    Row(
        "permit_clients",
        "C",
        "<a@other.example>",
        "<v@other.example>",
        PERMIT,
        PERMIT,
        OK,
        (*DOMAINS, PERMIT_AUTHENTICATED, PERMIT_POP_BEFORE_SMTP, PERMIT_NETWORKS, PERMIT_CLIENTS),
    ),
    Row(
        "pop_before_smtp-expired",
        "E:alice@pv.test",
        "<a@other.example>",
        "<v@other.example>",
        PERMIT,
        REJECT,
        DENIED.format("v@other.example"),
        ALL_ROADS_FAIL,
    ),
    # DESIGN.md: anyone may send to our local and relay domains.
    Row("design-local_domain", "O", "<a@other.example>", "<u@pv.test>", PERMIT, PERMIT, OK, LOC),
    Row(
        "design-unknown-user",
        "O",
        "<a@other.example>",
        "<nobody@pv.test>",
        PERMIT,
        REJECT,
        UNKNOWN.format("nobody@pv.test"),
        LOC,
    ),
    Row(
        "design-relay_domain",
        "O",
        "<a@other.example>",
        "<x@backup.test>",
        PERMIT,
        PERMIT,
        OK,
        DOMAINS,
    ),
    Row(
        "design-relay_domain-routed",
        "O",
        "<a@other.example>",
        "<x%other.example@backup.test>",
        PERMIT,
        REJECT,
        DENIED.format("x%other.example@backup.test"),
        ALL_ROADS_FAIL,
    ),
    Row(
        "design-relay_domain-routed-trusted",
        "T",
        "<a@other.example>",
        "<x%other.example@backup.test>",
        PERMIT,
        PERMIT,
        OK,
        (*DOMAINS, PERMIT_AUTHENTICATED, PERMIT_POP_BEFORE_SMTP, PERMIT_NETWORKS),
    ),
    Row(
        "design-reject_unauth_destination",
        "O",
        "<a@other.example>",
        "<friend@adatum.example>",
        PERMIT,
        REJECT,
        DENIED.format("friend@adatum.example"),
        ALL_ROADS_FAIL,
    ),
    # A logged-in user at a local recipient: local_domain decides before any road.
    Row("A-local", "A:alice@pv.test", "<alice@pv.test>", "<bob@pv.test>", PERMIT, PERMIT, OK, LOC),
    # S1: an outside client claiming one of our addresses, in every spelling.
    Row("S1", "O", "<alice@pv.test>", "<bob@pv.test>", REJECT, PERMIT, OK, LOC),
    Row("S1-case", "O", "<ALICE@PV.TEST>", "<bob@pv.test>", REJECT, PERMIT, OK, LOC),
    Row("S1-dot", "O", "<alice@pv.test.>", "<bob@pv.test>", REJECT, PERMIT, OK, LOC),
    Row("S1-quoted", "O", '<"alice"@pv.test>', "<bob@pv.test>", REJECT, PERMIT, OK, LOC),
    Row("S1-literal", "O", "<alice@[127.0.0.1]>", "<bob@pv.test>", REJECT, PERMIT, OK, LOC),
    Row(
        "S1-route", "O", "<@other.example:alice@pv.test>", "<bob@pv.test>", REJECT, PERMIT, OK, LOC
    ),
    Row("S1-relay-domain", "O", "<x@backup.test>", "<bob@pv.test>", REJECT, PERMIT, OK, LOC),
    # S2: logged in as alice, claiming bob.
    Row(
        "S2",
        "A:alice@pv.test",
        "<bob@pv.test>",
        "<v@other.example>",
        REJECT,
        PERMIT,
        OK,
        (*DOMAINS, PERMIT_AUTHENTICATED),
    ),
    Row(
        "S2-alias",
        "A:alice@pv.test",
        "<sales@pv.test>",
        "<v@other.example>",
        PERMIT,
        PERMIT,
        OK,
        (*DOMAINS, PERMIT_AUTHENTICATED),
    ),
]


def _parse(path: str, allow_null: bool = False) -> tuple[object, str]:
    try:
        return parse_path(path, allow_null=allow_null), ""
    except AddressError as e:
        return None, f"{e.reply.code} {e.reply.enhanced}"


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_relay_table(row: Row) -> None:
    config = make_config()
    directory = DictDirectory()
    who = client(row.who)

    sender, sender_error = _parse(row.mail_from, allow_null=True)
    if isinstance(row.mail, str):
        assert sender_error == row.mail
    else:
        assert sender is not None, sender_error
        assert check_sender(who, sender, config, directory).verdict is row.mail  # type: ignore[arg-type]

    rcpt, rcpt_error = _parse(row.rcpt)
    if isinstance(row.verdict, str):
        assert rcpt_error == row.verdict
        return
    assert rcpt is not None, rcpt_error
    decision = check_rcpt(who, rcpt, config, directory)  # type: ignore[arg-type]
    assert decision.verdict is row.verdict
    assert str(decision.reply) == row.reply
    assert decision.rules() == row.rules
    assert decision.rule == row.rules[-1]
    # Never a relay: a permitted foreign recipient needs an open road.
    if decision.accepted and decision.rule not in DOMAINS:
        assert row.who != "O"


def test_r19_each_recipient_judged_alone() -> None:
    """R19: a local recipient first does not open the door for a foreign one."""
    config, directory, who = make_config(), DictDirectory(), client("O")
    verdicts = [
        check_rcpt(who, parse_path(r), config, directory).verdict
        for r in ("<u@pv.test>", "<v@other.example>", "<bob@pv.test>")
    ]
    assert verdicts == [PERMIT, REJECT, PERMIT]


def test_s3_auth_parameter_is_never_an_input() -> None:
    """S3: `MAIL FROM:<x@X> AUTH=<alice@L>` gives an outside client nothing."""
    path, params = split_path_and_params("<x@other.example> AUTH=<alice@pv.test>")
    assert params == [("AUTH", "<alice@pv.test>")]
    who = client("O")
    config, directory = make_config(), DictDirectory()
    assert check_sender(who, parse_path(path), config, directory).verdict is PERMIT
    d = check_rcpt(who, parse_path("<v@other.example>"), config, directory)
    assert d.verdict is REJECT and d.rule == REJECT_UNAUTH_DESTINATION


def test_s4_header_from_spoof_of_local_user_from_outside() -> None:
    """S4: envelope from outside, From: one of our users. By default only
    recorded (mailing lists deliver such mail); refused with
    `header_from_outside = "reject"`. A logged-in user's header is always checked."""
    config, directory = make_config(), DictDirectory()
    d = check_header_from(client("O"), [parse_path("<alice@pv.test>")], [], config, directory)
    assert d.verdict is WARN and d.accepted
    strict = make_config(sender={"header_from_outside": "reject"})
    d = check_header_from(client("O"), [parse_path("<alice@pv.test>")], [], strict, directory)
    assert d.verdict is REJECT
    assert str(d.reply) == "550 5.7.1 From: header <alice@pv.test> rejected: not logged in"
    d = check_header_from(
        client("A:alice@pv.test"), [parse_path("<bob@pv.test>")], [], config, directory
    )
    assert str(d.reply) == "550 5.7.1 From: header <bob@pv.test> not owned by user alice@pv.test"


def test_rejection_trace_says_why_each_road_failed() -> None:
    d = check_rcpt(
        client("E:alice@pv.test"), parse_path("<v@other.example>"), make_config(), DictDirectory()
    )
    details = {s.rule: s.detail for s in d.trace}
    assert details[LOCAL_DOMAIN] == "other.example is not a local domain (local: pv.test)"
    assert details[RELAY_DOMAIN] == "other.example is not a relay domain (relay: backup.test)"
    assert details[PERMIT_AUTHENTICATED] == "not logged in (SMTP AUTH) on port smtp"
    assert (
        details[PERMIT_POP_BEFORE_SMTP]
        == "POP3 login by alice@pv.test from 127.0.0.2 expired 60 seconds ago"
    )
    assert details[PERMIT_NETWORKS] == "client 127.0.0.2 is not in networks 127.0.0.1/32, ::1/128"
    assert details[PERMIT_CLIENTS] == "client 127.0.0.2 is not in clients 127.0.0.3/32"
    line = d.log_line()
    assert line.startswith(
        'verdict=reject rule=reject_unauth_destination reply="550 5.7.1 <v@other.example>: Relaying denied"'
    )
    assert "permit_networks=no match: client 127.0.0.2 is not in networks" in line
    assert "\n" not in line and "\r" not in line


def test_explain_in_reply_lists_each_road() -> None:
    config = make_config(relay={"explain_in_reply": True, "pop_before_smtp": "30m"})
    d = check_rcpt(client("O"), parse_path("<v@other.example>"), config, DictDirectory())
    assert d.reply.lines() == [
        "550-5.7.1 <v@other.example>: Relaying denied",
        "550-5.7.1 other.example is not our domain",
        "550-5.7.1 not logged in (use SMTP AUTH on the submission port)",
        "550-5.7.1 no POP3 login from 127.0.0.2 in the last 30 minutes",
        "550-5.7.1 127.0.0.2 is not in our networks",
        "550 5.7.1 127.0.0.2 is not in our list of allowed clients",
    ]
    # The reply tells the client no internal ranges and no user names.
    assert "127.0.0.1/32" not in str(d.reply)


def test_configurable_reject_reply_and_defer() -> None:
    config = make_config(
        relay={
            "reject_code": 454,
            "reject_enhanced": "4.7.1",
            "reject_text": "<{rcpt}>: Relay access denied",
        }
    )
    d = check_rcpt(client("O"), parse_path("<v@other.example>"), config, DictDirectory())
    assert d.verdict is DEFER
    assert str(d.reply) == "454 4.7.1 <v@other.example>: Relay access denied"
    config = make_config(
        relay={"reject_text": "sorry, that domain isn't in my list of allowed rcpthosts"}
    )
    d = check_rcpt(client("O"), parse_path("<v@other.example>"), config, DictDirectory())
    assert str(d.reply) == "550 5.7.1 sorry, that domain isn't in my list of allowed rcpthosts"


def test_pop_before_smtp_disabled_ignores_grants() -> None:
    config = make_config(relay={"pop_before_smtp": 0})
    d = check_rcpt(
        client("P:alice@pv.test"), parse_path("<v@other.example>"), config, DictDirectory()
    )
    assert d.verdict is REJECT
    assert (
        "POP-before-SMTP is disabled"
        in dict((s.rule, s.detail) for s in d.trace)[PERMIT_POP_BEFORE_SMTP]
    )


def test_grant_for_another_ip_is_not_trusted() -> None:
    who = Client(ip=O_IP, grant=Grant("127.0.0.9", "alice@pv.test", NOW + 600), now=NOW)
    d = check_rcpt(who, parse_path("<v@other.example>"), make_config(), DictDirectory())
    assert d.verdict is REJECT


def test_grant_expiring_exactly_now_is_expired() -> None:
    who = Client(ip=O_IP, grant=Grant(O_IP, "alice@pv.test", NOW), now=NOW)
    assert (
        check_rcpt(who, parse_path("<v@other.example>"), make_config(), DictDirectory()).verdict
        is REJECT
    )


@pytest.mark.parametrize(
    ("ip", "verdict"),
    [
        ("::ffff:127.0.0.1", PERMIT),  # IPv4-mapped form of a trusted address
        ("::1", PERMIT),
        ("::ffff:127.0.0.2", REJECT),
        ("not-an-ip", REJECT),
        ("", REJECT),
        ("127.0.0.1.example", REJECT),
    ],
)
def test_client_address_forms(ip: str, verdict: Verdict) -> None:
    who = Client(ip=ip, now=NOW)
    assert (
        check_rcpt(who, parse_path("<v@other.example>"), make_config(), DictDirectory()).verdict
        is verdict
    )


def test_empty_networks_trusts_nobody() -> None:
    config: Config = make_config(relay={"networks": [], "clients": []})
    d = check_rcpt(client("T"), parse_path("<v@other.example>"), config, DictDirectory())
    assert d.verdict is REJECT
    assert "[relay] networks is empty" in d.log_line()


def test_a_reload_with_other_networks_decides_anew_for_the_same_client() -> None:
    """The network roads are remembered per client and list: the same client
    under a config whose lists changed (a reload) gets the new lists' answer,
    both ways, and the first config still gives its own."""
    who = Client(ip="192.0.2.7", now=NOW)
    rcpt = parse_path("<v@other.example>")
    trusting = make_config(relay={"networks": ["192.0.2.0/24"], "clients": []})
    closed = make_config(relay={"networks": ["198.51.100.0/24"], "clients": []})
    listed = make_config(relay={"networks": [], "clients": ["192.0.2.7/32"]})
    for _ in range(2):  # the second round answers from what was remembered
        assert check_rcpt(who, rcpt, trusting, DictDirectory()).rule == PERMIT_NETWORKS
        assert check_rcpt(who, rcpt, closed, DictDirectory()).verdict is REJECT
        assert check_rcpt(who, rcpt, listed, DictDirectory()).rule == PERMIT_CLIENTS
