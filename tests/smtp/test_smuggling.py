"""SMTP smuggling (robustness §3, M1–M15) at the level of the protocol core.

Each case sends a message whose body holds a fake end of DATA followed by a
complete second transaction. Only <CRLF>.<CRLF> may end the message: the
smuggled MAIL must never become a MailFrom event, and the one message must
be refused as a whole through `EndOfData.problem`.
"""

from __future__ import annotations

import pytest
from smtp_harness import BANNER, Driver, byte_by_byte, settings

from postvakt.smtp import EndOfData, MailFrom, replies

SMUGGLED = (
    b"MAIL FROM:<smuggled@other.example>\r\n"
    b"RCPT TO:<u@pv.test>\r\n"
    b"DATA\r\n"
    b"Subject: SMUGGLED\r\n\r\nx\r\n.\r\n"
)
BODY = b"From: a@other.example\r\nSubject: real\r\n\r\nbody"


def open_data(driver: Driver) -> None:
    driver.feed(b"EHLO client.test\r\n")
    driver.feed(b"MAIL FROM:<a@other.example>\r\nRCPT TO:<u@pv.test>\r\nDATA\r\n")
    driver.take()


def smuggle(ending: bytes, driver: Driver | None = None, split: bool = False) -> Driver:
    d = driver or Driver()
    open_data(d)
    payload = BODY + ending + SMUGGLED
    pieces = byte_by_byte(payload) if split else [payload]
    before = len(d.events)
    for piece in pieces:
        d.feed(piece)
    new = d.events[before:]
    assert not any(isinstance(e, MailFrom) for e in new), "smuggled MAIL was read as a command"
    ends = [e for e in new if isinstance(e, EndOfData)]
    assert len(ends) == 1
    assert ends[0].problem is not None
    out = d.lines()
    # One reply for the whole payload: the refusal after the real end.
    assert out == [str(ends[0].problem)]
    return d


def assert_bare(d: Driver) -> None:
    assert d.ends()[-1].problem == replies.BARE_CR_LF_IN_DATA


@pytest.mark.parametrize("split", [False, True], ids=["one_chunk", "byte_by_byte"])
def test_m1_lf_dot_lf_does_not_end_data(split: bool) -> None:
    assert_bare(smuggle(b"\n.\n", split=split))


@pytest.mark.parametrize("split", [False, True], ids=["one_chunk", "byte_by_byte"])
def test_m2_lf_dot_crlf_does_not_end_data(split: bool) -> None:
    # Postfix CVE-2023-51764: the sequence Exchange Online passed through.
    assert_bare(smuggle(b"\n.\r\n", split=split))


@pytest.mark.parametrize("split", [False, True], ids=["one_chunk", "byte_by_byte"])
def test_m3_crlf_dot_lf_does_not_end_data(split: bool) -> None:
    assert_bare(smuggle(b"\r\n.\n", split=split))


@pytest.mark.parametrize("split", [False, True], ids=["one_chunk", "byte_by_byte"])
def test_m4_cr_dot_cr_does_not_end_data(split: bool) -> None:
    assert_bare(smuggle(b"\r.\r", split=split))


@pytest.mark.parametrize("split", [False, True], ids=["one_chunk", "byte_by_byte"])
def test_m5_cr_dot_lf_does_not_end_data(split: bool) -> None:
    assert_bare(smuggle(b"\r.\n", split=split))


@pytest.mark.parametrize("split", [False, True], ids=["one_chunk", "byte_by_byte"])
def test_m6_lf_dot_cr_does_not_end_data(split: bool) -> None:
    assert_bare(smuggle(b"\n.\r", split=split))


@pytest.mark.parametrize("split", [False, True], ids=["one_chunk", "byte_by_byte"])
def test_m7_cr_dot_crlf_does_not_end_data(split: bool) -> None:
    assert_bare(smuggle(b"\r.\r\n", split=split))


@pytest.mark.parametrize("split", [False, True], ids=["one_chunk", "byte_by_byte"])
def test_m8_crlf_dot_cr_does_not_end_data(split: bool) -> None:
    assert_bare(smuggle(b"\r\n.\r", split=split))


@pytest.mark.parametrize("split", [False, True], ids=["one_chunk", "byte_by_byte"])
def test_m9_crlf_nul_dot_crlf_does_not_end_data(split: bool) -> None:
    d = smuggle(b"\r\n\x00.\r\n", split=split)
    assert d.ends()[-1].problem == replies.NUL_IN_DATA


@pytest.mark.parametrize("split", [False, True], ids=["one_chunk", "byte_by_byte"])
def test_m10_crlf_dot_nul_crlf_does_not_end_data(split: bool) -> None:
    d = smuggle(b"\r\n.\x00\r\n", split=split)
    assert d.ends()[-1].problem == replies.NUL_IN_DATA


@pytest.mark.parametrize("split", [False, True], ids=["one_chunk", "byte_by_byte"])
def test_m11_lf_lf_dot_crlf_does_not_end_data(split: bool) -> None:
    assert_bare(smuggle(b"\n\n.\r\n", split=split))


@pytest.mark.parametrize(
    "ending", [b"\r\n.\r\r\n", b"\r\r\n.\r\r\n"], ids=["crlf_dot_cr_crlf", "cr_crlf_dot_cr_crlf"]
)
def test_outbound_sequences_are_refused_too(ending: bytes) -> None:
    assert_bare(smuggle(ending))


def test_m12_authenticated_client_gets_the_same_treatment() -> None:
    d = Driver(settings(tls_active=True))
    d.feed(b"EHLO client.test\r\nAUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n")
    assert d.conn.login == "alice"
    d.take()
    smuggle(b"\n.\r\n", driver=d)
    assert d.conn.login == "alice"


def test_cve_2024_27305_bare_lf_smuggling() -> None:
    # aiosmtpd < 1.4.5 ended DATA on ".\r\n" after a bare LF (readuntil(b"\n")).
    d = smuggle(b"\n.\r\n")
    assert_bare(d)
    # The session goes on normally after the refusal.
    d.feed(b"NOOP\r\n")
    assert d.lines() == ["250 2.0.0 Ok"]


def test_cve_2023_51766_exim_sequences_stay_inside() -> None:
    for ending in (b"\n.\n", b"\r\n.\n", b"\n.\r\n"):
        assert_bare(smuggle(ending))


def test_m13_data_and_content_in_one_write_is_sync_error() -> None:
    d = Driver()
    d.feed(b"EHLO client.test\r\n")
    d.take()
    d.feed(
        b"MAIL FROM:<a@other.example>\r\nRCPT TO:<u@pv.test>\r\nDATA\r\nSubject: x\r\n\r\nbody\r\n.\r\n"
    )
    assert d.lines() == [
        "250 2.1.0 Ok",
        "250 2.1.5 Ok",
        "554 5.5.0 Error: SMTP protocol synchronization",
    ]
    assert d.kinds()[-1] == "Close"
    assert "DataStart" not in d.kinds()
    d.feed(b"NOOP\r\n")
    assert d.take() == b""


def test_m13_content_arriving_before_354_is_answered_is_sync_error() -> None:
    """Bytes that arrive while the application decides about DATA: still too early."""
    d = Driver(app=lambda e: None)
    d.feed(b"EHLO client.test\r\n")
    conn = d.conn
    conn.receive_data(b"MAIL FROM:<a@other.example>\r\n")
    assert type(conn.next_event()).__name__ == "MailFrom"
    conn.respond(replies.SENDER_OK)
    conn.receive_data(b"RCPT TO:<u@pv.test>\r\n")
    assert type(conn.next_event()).__name__ == "RcptTo"
    conn.respond(replies.RECIPIENT_OK)
    conn.receive_data(b"DATA\r\n")
    assert type(conn.next_event()).__name__ == "DataStart"
    conn.receive_data(b"Subject: early\r\n")
    conn.respond(replies.START_DATA)
    assert type(conn.next_event()).__name__ == "Close"
    assert conn.data_to_send().endswith(b"554 5.5.0 Error: SMTP protocol synchronization\r\n")


def test_m13_control_dot_and_next_mail_pipelined_is_legal() -> None:
    d = Driver()
    open_data(d)
    d.feed(
        b"Subject: one\r\n\r\nbody\r\n.\r\n"
        b"MAIL FROM:<b@other.example>\r\nRCPT TO:<u@pv.test>\r\nDATA\r\n"
    )
    assert d.lines() == [
        "250 2.0.0 Ok: queued as TEST",
        "250 2.1.0 Ok",
        "250 2.1.5 Ok",
        "354 End data with <CR><LF>.<CR><LF>",
    ]
    d.feed(b"Subject: two\r\n\r\nbody\r\n.\r\nQUIT\r\n")
    assert d.lines() == ["250 2.0.0 Ok: queued as TEST", "221 2.0.0 Bye"]
    assert [e.problem for e in d.ends()] == [None, None]


def test_m15_bare_lf_ends_a_refused_command_line() -> None:
    d = Driver()
    d.feed(b"EHLO x\nMAIL FROM:<a@other.example>\n")
    assert d.lines() == [BANNER, "500 5.5.2 Error: bare <LF> received"] + [
        "500 5.5.2 Error: bare <LF> received"
    ]
    assert d.conn.helo is None
    assert "Helo" not in d.kinds()


def test_m15_bare_cr_in_a_command_never_splits_it() -> None:
    d = Driver()
    d.feed(b"EHLO c\r.test\r\n")
    assert d.lines() == [BANNER, "500 5.5.2 Error: bare <CR> received"]
    assert d.conn.helo is None
    d.feed(b"EHLO c\rMAIL FROM:<a@other.example>\r\n")
    assert d.lines() == ["500 5.5.2 Error: bare <CR> received"]
    assert d.kinds() == []


def test_only_crlf_dot_crlf_ends_and_message_is_exact() -> None:
    d = Driver()
    open_data(d)
    d.feed(b"a\r\n..b\r\n.c\r\n...\r\n.\r\n")
    assert d.message() == b"a\r\n.b\r\nc\r\n..\r\n"
    assert d.ends()[-1].problem is None
    assert d.ends()[-1].size == len(b"a\r\n.b\r\nc\r\n..\r\n")


def test_dot_on_first_line_ends_an_empty_message() -> None:
    d = Driver()
    open_data(d)
    d.feed(b".\r\n")
    assert d.message() == b""
    assert d.ends()[-1] == EndOfData(0, None, ())
