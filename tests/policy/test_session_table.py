"""The transaction's policy as a table: (client, stage input, config) -> (verdict,
reply, deciding rule, rules in the trace). `policy.session` is what the live
server and `explain` both call, so these rows hold for both."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from policy_harness import DictDirectory, client, make_config

from postvakt.address import parse_path
from postvakt.policy import Verdict
from postvakt.policy.limits import Quota, Subject, Usage
from postvakt.policy.session import (
    AUTH_REQUIRED_RULE,
    Counted,
    on_end_of_data,
    on_mail,
    on_rcpt,
    requires_auth,
    requires_starttls,
)
from postvakt.policy.types import Client

PERMIT, REJECT, WARN, HOLD, DEFER = (
    Verdict.PERMIT,
    Verdict.REJECT,
    Verdict.WARN,
    Verdict.HOLD,
    Verdict.DEFER,
)
HEADER_OK = "250 2.0.0 Ok"
TOO_LONG = "552 5.3.4 Header section too long to check the sender"
PADDING = (("X-Pad", "p" * 10),) * 3


@dataclass(frozen=True)
class DataRow:
    id: str
    role: str
    headers: tuple[tuple[str, str], ...]
    verdict: Verdict
    reply: str
    complete: bool = True
    sender: dict[str, object] = field(default_factory=dict)


DATA_ROWS = [
    DataRow("own-from", "A:alice@pv.test", (("From", "Alice <alice@pv.test>"),), PERMIT, HEADER_OK),
    DataRow(
        "foreign-from",
        "A:alice@pv.test",
        (("From", "<bob@pv.test>"),),
        REJECT,
        "550 5.7.1 From: header <bob@pv.test> not owned by user alice@pv.test",
    ),
    DataRow(
        "sender-not-owned",
        "A:alice@pv.test",
        (("From", "<alice@pv.test>"), ("Sender", "<bob@pv.test>")),
        REJECT,
        "550 5.7.1 Sender: header <bob@pv.test> not owned by user alice@pv.test",
    ),
    DataRow(
        "sender-header-case-insensitive",
        "A:alice@pv.test",
        (("FROM", "<alice@pv.test>"), ("sEnDeR", "<bob@pv.test>")),
        REJECT,
        "550 5.7.1 Sender: header <bob@pv.test> not owned by user alice@pv.test",
    ),
    DataRow("too-long", "A:alice@pv.test", PADDING, REJECT, TOO_LONG, complete=False),
    DataRow(
        "too-long-but-off",
        "A:alice@pv.test",
        PADDING,
        PERMIT,
        HEADER_OK,
        complete=False,
        sender={"header_from": "off"},
    ),
    DataRow(
        "unparsable-but-off",
        "A:alice@pv.test",
        (("From", "x <a@b@c>"),),
        PERMIT,
        HEADER_OK,
        sender={"header_from": "off"},
    ),
    DataRow("outside-warns", "O", (("From", "<alice@pv.test>"),), WARN, HEADER_OK),
    DataRow("no-from", "O", (("Subject", "x"),), PERMIT, HEADER_OK),
]


@pytest.mark.parametrize("row", DATA_ROWS, ids=[r.id for r in DATA_ROWS])
def test_end_of_data(row: DataRow) -> None:
    config = make_config(sender=row.sender) if row.sender else make_config()
    answer = on_end_of_data(client(row.role), row.headers, row.complete, config, DictDirectory())
    d = answer.decision
    assert (d.verdict, str(d.reply)) == (row.verdict, row.reply)
    assert d.rule == "header_from" and d.rules()[-1] == "header_from"
    assert answer.warnings == (tuple(s.detail for s in d.trace if s.result == "warn"))


def test_unparsable_from_is_refused_with_the_parsers_reply() -> None:
    answer = on_end_of_data(
        client("A:alice@pv.test"), (("From", "x <a@b@c>"),), True, make_config(), DictDirectory()
    )
    d = answer.decision
    assert d.verdict is REJECT and d.reply.code >= 500 and d.rule == "header_from"
    assert "does not parse" in d.trace[0].detail and answer.header_from == ()


def test_header_addresses_are_returned_for_later_checks() -> None:
    answer = on_end_of_data(
        client("O"),
        (("From", "A <a@x.example>, b@y.example"), ("Sender", "<s@z.example>")),
        True,
        make_config(),
        DictDirectory(),
    )
    assert [str(a) for a in answer.header_from] == ["a@x.example", "b@y.example"]
    assert [str(a) for a in answer.header_sender] == ["s@z.example"]


def test_auth_ports_are_said_once() -> None:
    assert [p for p in ("smtp", "submission", "submissions") if requires_auth(p)] == [
        "submission",
        "submissions",
    ]
    assert [p for p in ("smtp", "submission", "submissions") if requires_starttls(p)] == [
        "submission"
    ]
    not_logged_in = Client(ip="127.0.0.2", port="submissions", tls=True, now=1.0)
    d = on_mail(
        not_logged_in, parse_path("<a@x.example>"), make_config(), DictDirectory(), None
    ).decision
    assert (d.verdict, d.rule, str(d.reply)) == (
        REJECT,
        AUTH_REQUIRED_RULE,
        "530 5.7.0 Authentication required",
    )


QUOTA = Quota(
    messages_per_hour=2,
    messages_per_day=0,
    recipients_per_hour=0,
    recipients_per_day=0,
    recipients_per_message=1,
    outcome="hold",
    outcomes=(("recipients_per_message", "defer"),),
)
SUBJECT = Subject("user", "alice@pv.test", "user", QUOTA)


def counts(messages: int) -> Counted:
    return Counted(SUBJECT, Usage(messages_hour=messages))


def test_mail_limit_hold_keeps_the_policy_reply() -> None:
    answer = on_mail(
        client("A:alice@pv.test"),
        parse_path("<alice@pv.test>"),
        make_config(),
        DictDirectory(),
        lambda: counts(2),
    )
    assert answer.policy.verdict is PERMIT and answer.limit_hit
    d = answer.decision
    assert (d.verdict, str(d.reply), d.rule) == (HOLD, "250 2.1.0 Ok", "user.messages_per_hour")
    assert d.rules()[: len(answer.policy.trace)] == answer.policy.rules()
    assert answer.hold is not None and answer.hold.startswith("user.messages_per_hour: ")


def test_rcpt_limit_refusal_answers_instead_of_the_policy() -> None:
    answer = on_rcpt(
        client("A:alice@pv.test"),
        parse_path("<v@other.example>"),
        make_config(),
        DictDirectory(),
        lambda: counts(0),
        1,
    )
    assert answer.policy.verdict is PERMIT
    d = answer.decision
    assert (d.verdict, str(d.reply), d.rule) == (
        DEFER,
        "452 4.5.3 Too many recipients",
        "user.recipients_per_message",
    )
    assert answer.hold is None


def test_a_refused_command_never_reads_the_counters() -> None:
    def unread() -> Counted:
        raise AssertionError("the counters were read for a refused command")

    answer = on_rcpt(
        client("O"), parse_path("<v@other.example>"), make_config(), DictDirectory(), unread, 0
    )
    assert answer.decision.verdict is REJECT and answer.limit is None
    assert answer.decision.rule == "reject_unauth_destination"
