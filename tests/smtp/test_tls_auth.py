"""STARTTLS and AUTH at the level of the core (robustness §4: T1, T2, T5, T6, T9)."""

from __future__ import annotations

import base64

import pytest
from smtp_harness import BANNER, Driver, settings

from postvakt.reply import Reply
from postvakt.server.smtp import received_protocol
from postvakt.smtp import NEED_DATA, PAUSED, AuthCredentials, SMTPServer, StartTLS, replies
from postvakt.smtp._sasl import MAX_AUTH_LINE

PLAIN_GOOD = base64.b64encode(b"\x00alice\x00secret").decode()
PLAIN_BAD = base64.b64encode(b"\x00alice\x00wrong").decode()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def tls_session(**changes: object) -> Driver:
    d = Driver(settings(tls_active=True, **changes))
    d.feed(b"EHLO client.test\r\n")
    d.take()
    return d


def test_cve_2011_0411_starttls_injection() -> None:
    """T1: `STARTTLS\\r\\nRSET\\r\\n` in one write: only the 220, nothing after the handshake."""
    d = Driver(start_tls=False)
    d.feed(b"EHLO client.test\r\n")
    d.take()
    d.feed(b"STARTTLS\r\nRSET\r\n")
    assert d.lines() == ["220 2.0.0 Ready to start TLS"]
    assert isinstance(d.events[-1], StartTLS)
    d.conn.tls_started()
    d.pump()
    assert d.take() == b""
    d.feed(b"NOOP\r\n")
    assert d.lines() == ["250 2.0.0 Ok"]


def test_cve_2024_34083_plaintext_arriving_during_handshake_is_dropped() -> None:
    """Bytes that reach the core between the 220 and tls_started() are plaintext: dropped."""
    conn = SMTPServer(settings())
    conn.receive_data(b"EHLO client.test\r\nSTARTTLS\r\n")
    events = []
    while (e := conn.next_event()) is not NEED_DATA:
        events.append(e)
    assert isinstance(events[-1], StartTLS)
    conn.receive_data(b"MAIL FROM:<evil@other.example>\r\n")
    assert conn.next_event() is NEED_DATA
    assert conn.buffered == 0
    conn.tls_started()
    assert conn.next_event() is NEED_DATA
    conn.data_to_send()
    conn.receive_data(b"EHLO client.test\r\n")
    assert conn.next_event().__class__.__name__ == "Helo"


def test_t1_command_injection_tester_pattern() -> None:
    """`STARTTLS\\r\\nEHLO x\\r\\n` in one segment: no unprompted reply after TLS."""
    d = Driver(start_tls=False)
    d.feed(b"STARTTLS\r\nEHLO x\r\n")
    assert d.lines() == [BANNER, "220 2.0.0 Ready to start TLS"]
    d.conn.tls_started()
    d.pump()
    assert d.take() == b""
    d.feed(b"FAKE x\r\n")
    assert d.lines() == ["500 5.5.2 Error: command not recognized"]


def test_t2_state_reset_after_tls() -> None:
    d = Driver(settings(tls_available=True))
    d.feed(b"EHLO client.test\r\nMAIL FROM:<a@other.example>\r\n")
    assert d.conn.sender is not None
    d.feed(b"RSET\r\nSTARTTLS\r\n")
    assert d.conn.tls is True
    assert d.conn.helo is None and d.conn.sender is None and not d.conn.esmtp
    d.take()
    d.feed(b"MAIL FROM:<a@other.example>\r\n")
    assert d.lines() == ["503 5.5.1 Error: send HELO/EHLO first"]
    d.feed(b"EHLO client.test\r\n")
    ehlo = d.lines()
    assert "250-STARTTLS" not in ehlo
    assert "250-AUTH PLAIN LOGIN" in ehlo
    d.feed(b"STARTTLS\r\n")
    assert d.lines() == ["554 5.5.1 Error: TLS already active"]
    d.feed(b"STARTTLS foo\r\n")
    assert d.lines() == ["501 5.5.4 Syntax: STARTTLS"]


def test_t2_login_from_before_tls_does_not_survive() -> None:
    # A login can only happen under TLS; a second STARTTLS is refused, so the
    # only way to a fresh TLS session is a new connection. Check the reset anyway.
    conn = SMTPServer(settings())
    conn.login = "mallory"
    conn.receive_data(b"EHLO x\r\nSTARTTLS\r\n")
    while conn.next_event() is not NEED_DATA:
        pass
    conn.tls_started()
    assert conn.login is None


def test_starttls_not_available() -> None:
    d = Driver(settings(tls_available=False))
    d.feed(b"EHLO client.test\r\n")
    assert "250-STARTTLS" not in d.lines()
    d.feed(b"STARTTLS\r\n")
    assert d.lines() == ["502 5.5.1 Error: command not implemented"]


def test_starttls_in_transaction_is_refused() -> None:
    d = Driver()
    d.feed(b"EHLO client.test\r\nMAIL FROM:<a@other.example>\r\n")
    d.take()
    d.feed(b"STARTTLS\r\n")
    assert d.lines() == ["503 5.5.1 Error: MAIL transaction in progress"]


@pytest.mark.parametrize("credentials", [PLAIN_GOOD, PLAIN_BAD], ids=["right", "wrong"])
def test_t5_auth_before_tls_same_reply_for_right_and_wrong(credentials: str) -> None:
    d = Driver(settings(require_tls=True, require_auth=True))
    d.feed(b"EHLO client.test\r\n")
    ehlo = d.lines()
    assert not any("AUTH" in line for line in ehlo)
    d.feed(f"AUTH PLAIN {credentials}\r\n".encode())
    assert d.lines() == ["538 5.7.11 Encryption required for requested authentication mechanism"]
    assert not any(isinstance(e, AuthCredentials) for e in d.events)
    d.feed(b"AUTH LOGIN\r\n")
    assert d.lines() == ["538 5.7.11 Encryption required for requested authentication mechanism"]


def test_t6_mail_before_starttls_on_submission() -> None:
    d = Driver(settings(require_tls=True, require_auth=True))
    d.feed(b"EHLO client.test\r\nMAIL FROM:<alice@pv.test>\r\n")
    assert d.lines()[-1] == "530 5.7.0 Must issue a STARTTLS command first"


def test_t6_mail_before_auth_on_submissions() -> None:
    d = tls_session(require_tls=True, require_auth=True)
    d.feed(b"MAIL FROM:<alice@pv.test>\r\n")
    assert d.lines() == ["530 5.7.0 Authentication required"]


def test_t9_bad_base64() -> None:
    d = tls_session()
    d.feed(b"AUTH PLAIN !!!\r\n")
    assert d.lines() == ["501 5.5.2 Can't decode base64"]
    d.feed(b"AUTH LOGIN\r\n")
    d.feed(b"not base64 at all\r\n")
    assert d.lines() == ["334 VXNlcm5hbWU6", "501 5.5.2 Can't decode base64"]


def test_t9_star_aborts() -> None:
    d = tls_session()
    d.feed(b"AUTH PLAIN\r\n*\r\n")
    assert d.lines() == ["334 ", "501 5.7.0 Authentication aborted"]
    d.feed(b"AUTH LOGIN\r\n" + b64(b"alice").encode() + b"\r\n*\r\n")
    assert d.lines() == ["334 VXNlcm5hbWU6", "334 UGFzc3dvcmQ6", "501 5.7.0 Authentication aborted"]
    assert d.conn.login is None


def test_t9_unknown_mechanism() -> None:
    d = tls_session()
    d.feed(b"AUTH CRAM-MD5\r\nAUTH XOAUTH2 abc\r\n")
    assert d.lines() == ["504 5.5.4 Unrecognized authentication type"] * 2


def test_t9_mechanism_not_configured_is_unknown() -> None:
    d = tls_session(auth_mechanisms=("PLAIN",))
    d.feed(b"AUTH LOGIN\r\n")
    assert d.lines() == ["504 5.5.4 Unrecognized authentication type"]


def test_auth_disabled_when_no_mechanisms() -> None:
    d = tls_session(auth_mechanisms=())
    d.feed(b"EHLO client.test\r\n")
    assert not any("AUTH" in line for line in d.lines())
    d.feed(f"AUTH PLAIN {PLAIN_GOOD}\r\n".encode())
    assert d.lines() == ["503 5.5.1 Error: authentication not enabled"]


def test_t9_auth_in_transaction() -> None:
    d = tls_session()
    d.feed(b"MAIL FROM:<a@other.example>\r\n")
    d.take()
    d.feed(f"AUTH PLAIN {PLAIN_GOOD}\r\n".encode())
    assert d.lines() == ["503 5.5.1 Error: MAIL transaction in progress"]
    assert d.conn.login is None


def test_t9_second_auth() -> None:
    d = tls_session()
    d.feed(f"AUTH PLAIN {PLAIN_GOOD}\r\n".encode())
    assert d.lines() == ["235 2.7.0 Authentication successful"]
    assert d.conn.login == "alice"
    d.feed(f"AUTH PLAIN {PLAIN_GOOD}\r\n".encode())
    assert d.lines() == ["503 5.5.1 Error: already authenticated"]


def test_t9_oversized_response() -> None:
    d = tls_session()
    d.feed(b"AUTH PLAIN\r\n")
    d.feed(b"A" * (MAX_AUTH_LINE + 100) + b"\r\nNOOP\r\n")
    assert d.lines() == [
        "334 ",
        "500 5.5.6 Authentication exchange line is too long",
        "250 2.0.0 Ok",
    ]
    d.feed(b"AUTH PLAIN " + b"A" * MAX_AUTH_LINE + b"\r\nNOOP\r\n")
    assert d.lines() == ["500 5.5.6 Authentication exchange line is too long", "250 2.0.0 Ok"]


def test_auth_line_may_exceed_512_octets() -> None:
    """RFC 4954 §4: AUTH lines up to 12288 octets (long passwords, initial responses)."""
    d = tls_session()
    password = "p" * 3000
    token = b64(b"\x00alice\x00" + password.encode())
    d.feed(b"AUTH PLAIN " + token.encode() + b"\r\n")
    creds = [e for e in d.events if isinstance(e, AuthCredentials)]
    assert creds and creds[-1].password == password
    assert d.lines() == ["535 5.7.8 Authentication credentials invalid"]


@pytest.mark.parametrize(
    "raw",
    [
        b"bob\x00alice\x00secret",  # authzid differs from authcid
        b"\x00alice\x00secret\x00extra",  # extra NUL field
        b"alice\x00secret",  # too few fields
        b"\x00\x00secret",  # empty authcid
        b"\x00alice\x00",  # empty password
        b"\x00\xff\xfe\x00secret",  # not UTF-8
    ],
    ids=["authzid_mismatch", "extra_nul", "two_fields", "empty_user", "empty_password", "bad_utf8"],
)
def test_t9_plain_malformed_is_535_without_event(raw: bytes) -> None:
    d = tls_session()
    d.feed(f"AUTH PLAIN {b64(raw)}\r\n".encode())
    assert d.lines() == ["535 5.7.8 Authentication credentials invalid"]
    assert not any(isinstance(e, AuthCredentials) for e in d.events)


def test_plain_authzid_equal_to_authcid_is_fine() -> None:
    d = tls_session()
    token = b64(b"alice\x00alice\x00secret")
    d.feed(b"AUTH PLAIN " + token.encode() + b"\r\n")
    assert d.lines() == ["235 2.7.0 Authentication successful"]


def test_plain_empty_initial_response() -> None:
    d = tls_session()
    d.feed(b"AUTH PLAIN =\r\n")
    assert d.lines() == ["535 5.7.8 Authentication credentials invalid"]


def test_auth_credentials_hide_password_in_repr() -> None:
    creds = AuthCredentials("PLAIN", "", "alice", "secret")
    assert "secret" not in repr(creds)


def test_failed_auth_counts_as_error() -> None:
    d = tls_session()
    for _ in range(3):
        d.feed(f"AUTH PLAIN {PLAIN_BAD}\r\n".encode())
    assert d.conn.error_count == 3


def test_auth_waits_for_the_application() -> None:
    conn = SMTPServer(settings(tls_active=True))
    conn.receive_data(
        f"EHLO x\r\nAUTH PLAIN {PLAIN_GOOD}\r\nMAIL FROM:<alice@pv.test>\r\n".encode()
    )
    assert conn.next_event().__class__.__name__ == "Helo"
    creds = conn.next_event()
    assert isinstance(creds, AuthCredentials)
    assert (creds.mechanism, creds.authzid, creds.username, creds.password) == (
        "PLAIN",
        "",
        "alice",
        "secret",
    )
    assert conn.next_event() is PAUSED
    assert conn.next_event() is PAUSED
    conn.respond(Reply(235, "2.7.0", "Authentication successful"))
    assert conn.login == "alice"
    assert conn.next_event().__class__.__name__ == "MailFrom"


def test_respond_may_give_the_canonical_login() -> None:
    conn = SMTPServer(settings(tls_active=True))
    conn.receive_data(
        b"EHLO x\r\nAUTH PLAIN " + b64(b"\x00ALICE@PV.TEST\x00secret").encode() + b"\r\n"
    )
    conn.next_event()
    assert isinstance(conn.next_event(), AuthCredentials)
    conn.respond(replies.AUTH_OK, login="alice@pv.test")
    assert conn.login == "alice@pv.test"


def test_s3_auth_parameter_on_mail_grants_nothing() -> None:
    d = Driver(settings(require_auth=True, tls_active=True))
    d.feed(b"EHLO client.test\r\nMAIL FROM:<x@other.example> AUTH=<alice@pv.test>\r\n")
    assert d.lines()[-1] == "530 5.7.0 Authentication required"
    assert d.conn.login is None
    d = Driver()
    d.feed(b"EHLO client.test\r\nMAIL FROM:<x@other.example> AUTH=<alice@pv.test>\r\n")
    assert d.lines()[-1] == "250 2.1.0 Ok"
    assert d.conn.login is None


def test_respond_without_a_waiting_event_is_a_usage_error() -> None:
    from postvakt.smtp import UsageError

    conn = SMTPServer(settings())
    with pytest.raises(UsageError):
        conn.respond(replies.OK)
    with pytest.raises(UsageError):
        conn.tls_started()


@pytest.mark.parametrize(
    ("esmtp", "tls", "auth", "smtputf8", "keyword"),
    [
        (False, False, False, False, "SMTP"),
        (True, False, False, False, "ESMTP"),
        (True, True, False, False, "ESMTPS"),
        (True, False, True, False, "ESMTPA"),
        (True, True, True, False, "ESMTPSA"),
        (True, False, False, True, "UTF8SMTP"),
        (True, True, False, True, "UTF8SMTPS"),
        (True, False, True, True, "UTF8SMTPA"),
        (True, True, True, True, "UTF8SMTPSA"),
    ],
)
def test_received_protocol_keywords_rfc3848_rfc6531(
    esmtp: bool, tls: bool, auth: bool, smtputf8: bool, keyword: str
) -> None:
    assert received_protocol(esmtp, tls, auth, smtputf8) == keyword
