"""DSN content: RFC 3464 structure, parsed back with the email package."""

from __future__ import annotations

import email
import email.policy
import time
from email.message import Message

import pytest

from postvakt.queue import dsn
from postvakt.queue.envelope import FAILED, PENDING, Envelope, Recipient, Unit

ORIGINAL = (
    b"Received: from c\r\nFrom: alice@pv.test\r\nSubject: quarterly report\r\n\r\nbody line\r\n"
)


def envelope(**kw: object) -> Envelope:
    base: dict[str, object] = dict(
        sender="alice@pv.test",
        recipients=(
            Recipient("bob@other.example", "rfc822;Bob+2B1@Other.example"),
            Recipient("list@pv.test"),
        ),
        received_at=1_700_000_000.0,
        client_ip="127.0.0.1",
        helo="c",
        login="alice@pv.test",
        envid="ENV+2D42",
    )
    base.update(kw)
    return Envelope(**base)  # type: ignore[arg-type]


def parse(data: bytes) -> Message:
    return email.message_from_bytes(data, policy=email.policy.compat32)


def failed_units() -> list[dsn.Report]:
    return [
        dsn.Report(
            Unit(
                0,
                "bob@other.example",
                False,
                FAILED,
                (550, "5.1.1", "<bob@other.example>: user unknown"),
                "mx.other.example[192.0.2.1]:25",
                1,
            ),
            dsn.FAILED,
        ),
        dsn.Report(
            Unit(1, "carol@pv.test", True, FAILED, (452, "4.2.2", "mailbox full"), "local", 9),
            dsn.FAILED,
        ),
    ]


def test_failure_report_structure() -> None:
    bounce_env, data = dsn.build(
        hostname="mx.pv.test",
        queue_id="ABC",
        envelope=envelope(),
        reports=failed_units(),
        original=ORIGINAL,
        now=1_700_000_100.0,
    )
    assert bounce_env.sender == ""
    assert [r.address for r in bounce_env.recipients] == ["alice@pv.test"]
    assert bounce_env.recipients[0].notify == ("NEVER",)
    assert b"\n" not in data.replace(b"\r\n", b"")  # CRLF only
    msg = parse(data)
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    assert msg["To"] == "<alice@pv.test>"
    assert msg["Auto-Submitted"] == "auto-replied"
    assert msg["From"].startswith("Mail Delivery System <MAILER-DAEMON@mx.pv.test>")
    human, status, returned = msg.get_payload()
    assert human.get_content_type() == "text/plain"
    text = human.get_payload()
    assert (
        "<bob@other.example>: host mx.other.example[192.0.2.1]:25 said: 550 5.1.1 <bob@other.example>: user unknown"
        in text
    )
    assert status.get_content_type() == "message/delivery-status"
    per_message, bob, carol = status.get_payload()
    assert per_message["Reporting-MTA"] == "dns; mx.pv.test"
    assert per_message["Original-Envelope-Id"] == "ENV-42"
    assert bob["Final-Recipient"] == "rfc822; bob@other.example"
    assert bob["Original-Recipient"] == "rfc822;Bob+1@Other.example"  # xtext decoded
    assert bob["Action"] == "failed"
    assert bob["Status"] == "5.1.1"
    assert bob["Remote-MTA"] == "dns; mx.other.example[192.0.2.1]:25"
    assert bob["Diagnostic-Code"] == "smtp; 550 5.1.1 <bob@other.example>: user unknown"
    # An alias target reports where the message was originally addressed.
    assert carol["Original-Recipient"] == "rfc822; list@pv.test"
    assert carol["Status"] == "4.4.7"  # a temporary error that ran out of time
    assert returned.get_content_type() == "message/rfc822"
    inner = returned.get_payload()[0]
    assert inner["Subject"] == "quarterly report"


def test_ret_hdrs_and_big_messages_return_headers_only() -> None:
    for env, original in (
        (envelope(ret="HDRS"), ORIGINAL),
        (envelope(), ORIGINAL + b"x" * (dsn.RETURN_SIZE_LIMIT + 1)),
    ):
        _, data = dsn.build(
            hostname="mx.pv.test",
            queue_id="ABC",
            envelope=env,
            reports=failed_units(),
            original=original,
            now=1.0,
        )
        returned = parse(data).get_payload()[2]
        assert returned.get_content_type() == "text/rfc822-headers"
        assert b"body line" not in data
        assert "Subject: quarterly report" in returned.get_payload()


def test_delay_report() -> None:
    rep = [
        dsn.Report(
            Unit(
                0,
                "bob@other.example",
                False,
                PENDING,
                (451, "4.4.1", "connect to x: Connection refused"),
                "",
                3,
            ),
            dsn.DELAYED,
        )
    ]
    _, data = dsn.build(
        hostname="mx.pv.test",
        queue_id="ABC",
        envelope=envelope(),
        reports=rep,
        original=ORIGINAL,
        now=1_700_014_400.0,
        delay_hours=4,
        give_up_days=5,
    )
    msg = parse(data)
    assert msg["Subject"] == "Delayed Mail (still being retried)"
    _, bob = msg.get_payload()[1].get_payload()
    assert bob["Action"] == "delayed"
    assert bob["Status"] == "4.4.1"
    assert bob["Will-Retry-Until"]
    assert "4 hours" in msg.get_payload()[0].get_payload()


def test_utf8_sender_and_8bit_original() -> None:
    env = envelope(sender="jörg@pv.test", smtputf8=True)
    original = "Subject: grüße\r\n\r\nä\r\n".encode()
    benv, data = dsn.build(
        hostname="mx.pv.test",
        queue_id="ABC",
        envelope=env,
        reports=failed_units(),
        original=original,
        now=1.0,
    )
    assert benv.smtputf8 and benv.body == "8BITMIME"
    assert "jörg@pv.test".encode() in data


def test_bounce_dates_carry_the_real_zone_offset(monkeypatch: pytest.MonkeyPatch) -> None:
    """RFC 5322 §3.3: "-0000" says "local time unknown"; a bounce knows its time."""
    monkeypatch.setenv("TZ", "IST-5:30")
    time.tzset()
    try:
        _, data = dsn.build(
            hostname="mx.pv.test",
            queue_id="ABC",
            envelope=envelope(),
            reports=failed_units(),
            original=ORIGINAL,
            now=1_700_000_100.0,
        )
    finally:
        monkeypatch.undo()
        time.tzset()
    msg = parse(data)
    assert msg["Date"].endswith("+0530"), msg["Date"]
    per_message = msg.get_payload()[1].get_payload()[0]
    assert per_message["Arrival-Date"].endswith("+0530")
