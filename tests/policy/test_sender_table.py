"""Sender identity as a table: (road, envelope sender or From:, [sender] modes) ->
(verdict, reply, rules in the trace). One policy for envelope and header."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from policy_harness import DictDirectory, client, make_config

from postvakt.address import parse_header_addresses, parse_path
from postvakt.policy import (
    HEADER_FROM,
    NULL_SENDER,
    PERMIT_AUTHENTICATED,
    PERMIT_CLIENTS,
    PERMIT_NETWORKS,
    PERMIT_POP_BEFORE_SMTP,
    SENDER_AUTHENTICATED,
    SENDER_CLIENTS,
    SENDER_NETWORKS,
    SENDER_POP_BEFORE_SMTP,
    SENDER_UNAUTHENTICATED_LOCAL,
    Verdict,
    check_header_from,
    check_sender,
)

PERMIT, REJECT, WARN = Verdict.PERMIT, Verdict.REJECT, Verdict.WARN
MAIL_OK = "250 2.1.0 Ok"
HEADER_OK = "250 2.0.0 Ok"

# Roads tried before the sender rule, by client role (first open road ends the list).
ROADS_O = (PERMIT_AUTHENTICATED, PERMIT_POP_BEFORE_SMTP, PERMIT_NETWORKS, PERMIT_CLIENTS)
ROADS_A = (PERMIT_AUTHENTICATED,)
ROADS_P = (PERMIT_AUTHENTICATED, PERMIT_POP_BEFORE_SMTP)
ROADS_T = (PERMIT_AUTHENTICATED, PERMIT_POP_BEFORE_SMTP, PERMIT_NETWORKS)
ROADS_C = ROADS_O

ALICE = "A:alice@pv.test"
POP_ALICE = "P:alice@pv.test"


def not_owned(addr: str, login: str = "alice@pv.test") -> str:
    return f"553 5.7.1 <{addr}>: Sender address rejected: not owned by user {login}"


def not_logged_in(addr: str) -> str:
    return f"553 5.7.1 <{addr}>: Sender address rejected: not logged in"


def not_ours(addr: str) -> str:
    return f"553 5.7.1 <{addr}>: Sender address rejected: not in our domains"


@dataclass(frozen=True)
class Row:
    id: str
    road: str
    address: str
    verdict: Verdict
    reply: str
    rules: tuple[str, ...]
    mode: dict[str, str] = field(default_factory=dict)


ENVELOPE = [
    Row("null_sender-outside", "O", "<>", PERMIT, MAIL_OK, (NULL_SENDER,)),
    Row("null_sender-authenticated", ALICE, "<>", PERMIT, MAIL_OK, (NULL_SENDER,)),
    # Logged in: only addresses the login owns.
    Row(
        "authenticated-own",
        ALICE,
        "<alice@pv.test>",
        PERMIT,
        MAIL_OK,
        (*ROADS_A, SENDER_AUTHENTICATED),
    ),
    Row(
        "authenticated-own-case",
        ALICE,
        "<Alice@PV.test.>",
        PERMIT,
        MAIL_OK,
        (*ROADS_A, SENDER_AUTHENTICATED),
    ),
    Row(
        "authenticated-alias",
        ALICE,
        "<sales@pv.test>",
        PERMIT,
        MAIL_OK,
        (*ROADS_A, SENDER_AUTHENTICATED),
    ),
    Row(
        "authenticated-sendas-relay-domain",
        ALICE,
        "<alice@backup.test>",
        PERMIT,
        MAIL_OK,
        (*ROADS_A, SENDER_AUTHENTICATED),
    ),
    Row(
        "S2-authenticated-other-user",
        ALICE,
        "<bob@pv.test>",
        REJECT,
        not_owned("bob@pv.test"),
        (*ROADS_A, SENDER_AUTHENTICATED),
    ),
    Row(
        "authenticated-foreign",
        ALICE,
        "<x@other.example>",
        REJECT,
        not_owned("x@other.example"),
        (*ROADS_A, SENDER_AUTHENTICATED),
    ),
    Row(
        "authenticated-routed",
        ALICE,
        "<alice%other.example@pv.test>",
        REJECT,
        not_owned("alice%other.example@pv.test"),
        (*ROADS_A, SENDER_AUTHENTICATED),
    ),
    Row(
        "authenticated-warn",
        ALICE,
        "<bob@pv.test>",
        WARN,
        MAIL_OK,
        (*ROADS_A, SENDER_AUTHENTICATED),
        {"authenticated": "warn"},
    ),
    Row(
        "authenticated-off",
        ALICE,
        "<bob@pv.test>",
        PERMIT,
        MAIL_OK,
        (*ROADS_A, SENDER_AUTHENTICATED),
        {"authenticated": "off"},
    ),
    # No road: foreign senders are ordinary inbound mail; ours are spoofing.
    Row(
        "outside-foreign",
        "O",
        "<x@other.example>",
        PERMIT,
        MAIL_OK,
        (*ROADS_O, SENDER_UNAUTHENTICATED_LOCAL),
    ),
    Row(
        "S1-outside-local",
        "O",
        "<alice@pv.test>",
        REJECT,
        not_logged_in("alice@pv.test"),
        (*ROADS_O, SENDER_UNAUTHENTICATED_LOCAL),
    ),
    Row(
        "outside-relay-domain",
        "O",
        "<x@backup.test>",
        REJECT,
        not_logged_in("x@backup.test"),
        (*ROADS_O, SENDER_UNAUTHENTICATED_LOCAL),
    ),
    Row(
        "outside-hostname",
        "O",
        "<root@mx.pv.test>",
        REJECT,
        not_logged_in("root@mx.pv.test"),
        (*ROADS_O, SENDER_UNAUTHENTICATED_LOCAL),
    ),
    Row(
        "outside-postmaster",
        "O",
        "<Postmaster>",
        REJECT,
        not_logged_in("Postmaster"),
        (*ROADS_O, SENDER_UNAUTHENTICATED_LOCAL),
    ),
    Row(
        "outside-local-warn",
        "O",
        "<alice@pv.test>",
        WARN,
        MAIL_OK,
        (*ROADS_O, SENDER_UNAUTHENTICATED_LOCAL),
        {"unauthenticated_local": "warn"},
    ),
    Row(
        "outside-local-off",
        "O",
        "<alice@pv.test>",
        PERMIT,
        MAIL_OK,
        (*ROADS_O, SENDER_UNAUTHENTICATED_LOCAL),
        {"unauthenticated_local": "off"},
    ),
    # Own network: "any" (default), "domain", "owner".
    Row(
        "networks-any-foreign",
        "T",
        "<x@other.example>",
        PERMIT,
        MAIL_OK,
        (*ROADS_T, SENDER_NETWORKS),
    ),
    Row("networks-any-local", "T", "<alice@pv.test>", PERMIT, MAIL_OK, (*ROADS_T, SENDER_NETWORKS)),
    Row(
        "networks-domain-local",
        "T",
        "<printer@pv.test>",
        PERMIT,
        MAIL_OK,
        (*ROADS_T, SENDER_NETWORKS),
        {"networks": "domain"},
    ),
    Row(
        "networks-domain-foreign",
        "T",
        "<x@other.example>",
        REJECT,
        not_ours("x@other.example"),
        (*ROADS_T, SENDER_NETWORKS),
        {"networks": "domain"},
    ),
    Row(
        "networks-domain-foreign-warn",
        "T",
        "<x@other.example>",
        WARN,
        MAIL_OK,
        (*ROADS_T, SENDER_NETWORKS),
        {"networks": "domain", "trusted": "warn"},
    ),
    Row(
        "networks-domain-foreign-off",
        "T",
        "<x@other.example>",
        PERMIT,
        MAIL_OK,
        (*ROADS_T, SENDER_NETWORKS),
        {"networks": "domain", "trusted": "off"},
    ),
    # Allowed clients, same settings.
    Row("clients-any", "C", "<x@other.example>", PERMIT, MAIL_OK, (*ROADS_C, SENDER_CLIENTS)),
    Row(
        "clients-domain-foreign",
        "C",
        "<x@other.example>",
        REJECT,
        not_ours("x@other.example"),
        (*ROADS_C, SENDER_CLIENTS),
        {"clients": "domain"},
    ),
    Row(
        "clients-domain-relay-domain",
        "C",
        "<x@backup.test>",
        PERMIT,
        MAIL_OK,
        (*ROADS_C, SENDER_CLIENTS),
        {"clients": "domain"},
    ),
    # POP-before-SMTP: "owner" means the user of the POP3 login.
    Row("pop-any", POP_ALICE, "<bob@pv.test>", PERMIT, MAIL_OK, (*ROADS_P, SENDER_POP_BEFORE_SMTP)),
    Row(
        "pop-owner-own",
        POP_ALICE,
        "<alice@pv.test>",
        PERMIT,
        MAIL_OK,
        (*ROADS_P, SENDER_POP_BEFORE_SMTP),
        {"pop_before_smtp": "owner"},
    ),
    Row(
        "pop-owner-alias",
        POP_ALICE,
        "<sales@pv.test>",
        PERMIT,
        MAIL_OK,
        (*ROADS_P, SENDER_POP_BEFORE_SMTP),
        {"pop_before_smtp": "owner"},
    ),
    Row(
        "pop-owner-other",
        POP_ALICE,
        "<bob@pv.test>",
        REJECT,
        not_owned("bob@pv.test"),
        (*ROADS_P, SENDER_POP_BEFORE_SMTP),
        {"pop_before_smtp": "owner"},
    ),
    Row(
        "pop-expired-is-outside",
        "E:alice@pv.test",
        "<alice@pv.test>",
        REJECT,
        not_logged_in("alice@pv.test"),
        (*ROADS_O, SENDER_UNAUTHENTICATED_LOCAL),
        {"pop_before_smtp": "owner"},
    ),
]


@pytest.mark.parametrize("row", ENVELOPE, ids=[r.id for r in ENVELOPE])
def test_sender_table(row: Row) -> None:
    config = make_config(sender=row.mode)
    d = check_sender(
        client(row.road), parse_path(row.address, allow_null=True), config, DictDirectory()
    )
    assert (d.verdict, str(d.reply), d.rules()) == (row.verdict, row.reply, row.rules)
    assert d.rule == row.rules[-1]


def from_header(addr: str, name: str = "From:") -> str:
    return f"550 5.7.1 {name} header <{addr}> {'not owned by user alice@pv.test'}"


HEADER = [
    Row(
        "header-authenticated-own",
        ALICE,
        "Alice <alice@pv.test>",
        PERMIT,
        HEADER_OK,
        (*ROADS_A, SENDER_AUTHENTICATED, HEADER_FROM),
    ),
    Row(
        "header-authenticated-alias",
        ALICE,
        "Sales <sales@pv.test>",
        PERMIT,
        HEADER_OK,
        (*ROADS_A, SENDER_AUTHENTICATED, HEADER_FROM),
    ),
    Row(
        "header-authenticated-other",
        ALICE,
        "Bob <bob@pv.test>",
        REJECT,
        from_header("bob@pv.test"),
        (*ROADS_A, SENDER_AUTHENTICATED, HEADER_FROM),
    ),
    Row(
        "header-authenticated-second-author",
        ALICE,
        "alice@pv.test, bob@pv.test",
        REJECT,
        from_header("bob@pv.test"),
        (*ROADS_A, SENDER_AUTHENTICATED, SENDER_AUTHENTICATED, HEADER_FROM),
    ),
    Row(
        "header-quoted-spoof",
        ALICE,
        'Bob <"bob"@PV.TEST.>',
        REJECT,
        from_header("bob@pv.test"),
        (*ROADS_A, SENDER_AUTHENTICATED, HEADER_FROM),
    ),
    Row(
        "header-warn",
        ALICE,
        "bob@pv.test",
        WARN,
        HEADER_OK,
        (*ROADS_A, SENDER_AUTHENTICATED, HEADER_FROM),
        {"header_from": "warn"},
    ),
    Row(
        "header-off",
        ALICE,
        "bob@pv.test",
        PERMIT,
        HEADER_OK,
        (HEADER_FROM,),
        {"header_from": "off"},
    ),
    # The envelope rule for the road bounds the header rule: never stricter.
    Row(
        "header-authenticated-check-off",
        ALICE,
        "bob@pv.test",
        PERMIT,
        HEADER_OK,
        (*ROADS_A, SENDER_AUTHENTICATED, HEADER_FROM),
        {"authenticated": "off"},
    ),
    Row(
        "header-authenticated-check-warn",
        ALICE,
        "bob@pv.test",
        WARN,
        HEADER_OK,
        (*ROADS_A, SENDER_AUTHENTICATED, HEADER_FROM),
        {"authenticated": "warn"},
    ),
    Row(
        "S4-outside-local",
        "O",
        "alice@pv.test",
        WARN,
        HEADER_OK,
        (*ROADS_O, SENDER_UNAUTHENTICATED_LOCAL, HEADER_FROM),
    ),
    Row(
        "S4-outside-local-strict",
        "O",
        "alice@pv.test",
        REJECT,
        "550 5.7.1 From: header <alice@pv.test> rejected: not logged in",
        (*ROADS_O, SENDER_UNAUTHENTICATED_LOCAL, HEADER_FROM),
        {"header_from_outside": "reject"},
    ),
    Row(
        "S4-outside-local-lists-allowed",
        "O",
        "alice@pv.test",
        WARN,
        HEADER_OK,
        (*ROADS_O, SENDER_UNAUTHENTICATED_LOCAL, HEADER_FROM),
        {"unauthenticated_local": "warn"},
    ),
    Row(
        "S4-outside-foreign",
        "O",
        "News <news@other.example>",
        PERMIT,
        HEADER_OK,
        (*ROADS_O, SENDER_UNAUTHENTICATED_LOCAL, HEADER_FROM),
    ),
    Row(
        "header-networks-any",
        "T",
        "x@other.example",
        PERMIT,
        HEADER_OK,
        (*ROADS_T, SENDER_NETWORKS, HEADER_FROM),
    ),
    Row(
        "header-networks-domain",
        "T",
        "x@other.example",
        REJECT,
        "550 5.7.1 From: header <x@other.example> rejected: not in our domains",
        (*ROADS_T, SENDER_NETWORKS, HEADER_FROM),
        {"networks": "domain"},
    ),
    Row(
        "header-pop-owner",
        POP_ALICE,
        "bob@pv.test",
        REJECT,
        from_header("bob@pv.test"),
        (*ROADS_P, SENDER_POP_BEFORE_SMTP, HEADER_FROM),
        {"pop_before_smtp": "owner"},
    ),
    Row("header-empty", ALICE, "", PERMIT, HEADER_OK, (HEADER_FROM,)),
    Row("header-group-empty", ALICE, "undisclosed-recipients:;", PERMIT, HEADER_OK, (HEADER_FROM,)),
]


@pytest.mark.parametrize("row", HEADER, ids=[r.id for r in HEADER])
def test_header_from_table(row: Row) -> None:
    config = make_config(sender=row.mode)
    header_from = parse_header_addresses(row.address)
    d = check_header_from(client(row.road), header_from, [], config, DictDirectory())
    assert (d.verdict, str(d.reply), d.rules()) == (row.verdict, row.reply, row.rules)
    assert d.rule == HEADER_FROM


def test_sender_header_is_checked_too() -> None:
    config = make_config()
    d = check_header_from(
        client(ALICE),
        [parse_path("<alice@pv.test>")],
        [parse_path("<bob@pv.test>")],
        config,
        DictDirectory(),
    )
    assert d.verdict is REJECT
    assert str(d.reply) == from_header("bob@pv.test", "Sender:")


def test_envelope_and_header_agree() -> None:
    """The same address gets the same answer at MAIL and at end of DATA (with
    the header check for outside clients as strict as the envelope's; by
    default it only warns, see the S4 rows)."""
    config, directory = make_config(sender={"header_from_outside": "reject"}), DictDirectory()
    for road in ("O", "T", "C", ALICE, POP_ALICE):
        for addr in (
            "alice@pv.test",
            "bob@pv.test",
            "sales@pv.test",
            "x@other.example",
            "x@backup.test",
        ):
            who = client(road)
            mail = check_sender(who, parse_path(f"<{addr}>"), config, directory)
            header = check_header_from(who, [parse_path(f"<{addr}>")], [], config, directory)
            assert mail.accepted == header.accepted, (road, addr)


def test_explain_in_reply_for_unauthenticated_local_sender() -> None:
    config = make_config(relay={"explain_in_reply": True})
    d = check_sender(client("O"), parse_path("<alice@pv.test>"), config, DictDirectory())
    assert d.reply.lines()[0] == "553-5.7.1 <alice@pv.test>: Sender address rejected: not logged in"
    assert "553-5.7.1 not logged in (use SMTP AUTH on the submission port)" in d.reply.lines()


def test_warn_finding_is_in_the_log_line() -> None:
    config = make_config(sender={"authenticated": "warn"})
    d = check_sender(client(ALICE), parse_path("<bob@pv.test>"), config, DictDirectory())
    assert d.verdict is WARN and d.accepted
    assert "sender_authenticated=warn: alice@pv.test may not send as bob@pv.test" in d.log_line()
