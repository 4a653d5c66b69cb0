"""The POP3 core as transcripts, each run three ways: one chunk, byte by byte, random splits."""

from __future__ import annotations

import base64

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pop3_core_driver import (
    CoreDriver,
    byte_by_byte,
    one_chunk,
    run_transcript,
    split_at,
)

from postvakt.pop3 import NEED_DATA, Fetch, Settings, Update
from postvakt.pop3.connection import MAX_BAD_COMMANDS

PLAIN_OK = base64.b64encode(b"\x00alice@pv.test\x00secret").decode()
PLAIN_BAD = base64.b64encode(b"\x00alice@pv.test\x00wrong").decode()
PLAIN_OTHER_AUTHZ = base64.b64encode(b"bob@pv.test\x00alice@pv.test\x00secret").decode()

SESSION = r"""
S: +OK POP3 server ready
C: CAPA
S: +OK Capability list follows
S: TOP
S: UIDL
S: RESP-CODES
S: AUTH-RESP-CODE
S: PIPELINING
S: EXPIRE NEVER
S: USER
S: SASL PLAIN
S: IMPLEMENTATION postvakt
S: .
C: USER alice@pv.test
S: +OK
C: PASS secret
S: +OK Logged in, 2 messages (79 octets)
C: STAT
S: +OK 2 79
C: LIST
S: +OK 2 messages (79 octets)
S: 1 57
S: 2 22
S: .
C: LIST 2
S: +OK 2 22
C: UIDL
S: +OK
S: 1 uid-1
S: 2 uid-2
S: .
C: UIDL 1
S: +OK 1 uid-1
C: RETR 1
S: +OK 57 octets
S: From: a@pv.test
S: Subject: one
S:
S: line1
S: ..dot line
S: last
S: .
C: TOP 1 1
S: +OK Top of message follows
S: From: a@pv.test
S: Subject: one
S:
S: line1
S: .
C: TOP 2 0
S: +OK Top of message follows
S: Subject: two
S:
S: .
C: CAPA
S: +OK Capability list follows
S: TOP
S: UIDL
S: RESP-CODES
S: AUTH-RESP-CODE
S: PIPELINING
S: EXPIRE NEVER
S: IMPLEMENTATION postvakt
S: .
C: DELE 1
S: +OK Message 1 deleted
C: DELE 1
S: -ERR Message is deleted
C: RETR 1
S: -ERR Message is deleted
C: STAT
S: +OK 1 22
C: LIST
S: +OK 1 messages (22 octets)
S: 2 22
S: .
C: RSET
S: +OK 2 messages (79 octets)
C: DELE 2
S: +OK Message 2 deleted
C: NOOP
S: +OK
C: QUIT
S: +OK Logging out, 1 messages left
"""

PLAINTEXT_REFUSED_THEN_STLS = r"""
S: +OK POP3 server ready
C: CAPA
S: +OK Capability list follows
S: TOP
S: UIDL
S: RESP-CODES
S: AUTH-RESP-CODE
S: PIPELINING
S: EXPIRE NEVER
S: STLS
S: IMPLEMENTATION postvakt
S: .
C: USER alice@pv.test
S: -ERR [AUTH] Plaintext authentication disallowed on non-secure (SSL/TLS) connections.
C: PASS secret
S: -ERR [AUTH] Plaintext authentication disallowed on non-secure (SSL/TLS) connections.
C: AUTH PLAIN {plain}
S: -ERR [AUTH] Plaintext authentication disallowed on non-secure (SSL/TLS) connections.
C: AUTH
S: +OK
S: .
C: STAT
S: -ERR Command not valid in this state
C: STLS
S: +OK Begin TLS negotiation
C: STLS
S: -ERR TLS is already active
C: CAPA
S: +OK Capability list follows
S: TOP
S: UIDL
S: RESP-CODES
S: AUTH-RESP-CODE
S: PIPELINING
S: EXPIRE NEVER
S: USER
S: SASL PLAIN
S: IMPLEMENTATION postvakt
S: .
C: USER alice@pv.test
S: +OK
C: PASS secret
S: +OK Logged in, 2 messages (79 octets)
C: QUIT
S: +OK Logging out, 2 messages left
""".replace("{plain}", PLAIN_OK)

FAILED_LOGINS = r"""
S: +OK POP3 server ready
C: PASS secret
S: -ERR No user name given
C: USER nosuch@pv.test
S: +OK
C: PASS secret
S: -ERR [AUTH] Authentication failed
C: USER alice@pv.test
S: +OK
C: PASS wrong
S: -ERR [AUTH] Authentication failed
C: USER alice@pv.test
S: +OK
C: PASS also wrong
S: -ERR [AUTH] Authentication failed
C: USER alice@pv.test
C: PASS secret
"""

SASL_PLAIN = r"""
S: +OK POP3 server ready
C: AUTH
S: +OK
S: PLAIN
S: .
C: AUTH CRAM-MD5
S: -ERR Unsupported authentication mechanism
C: AUTH PLAIN
S: +\x20
C: *
S: -ERR Authentication aborted
C: AUTH PLAIN
S: +\x20
C: !!!notbase64
S: -ERR Invalid base64 data
C: AUTH PLAIN
S: +\x20
C: {long}
S: -ERR Line too long
C: NOOP
S: -ERR Command not valid in this state
C: AUTH PLAIN {bad}
S: -ERR [AUTH] Authentication failed
C: AUTH PLAIN {other}
S: -ERR [AUTH] Authentication failed
C: AUTH PLAIN
S: +\x20
C: {ok}
S: +OK Logged in, 2 messages (79 octets)
C: AUTH PLAIN {ok}
S: -ERR Command not valid in this state
C: QUIT
S: +OK Logging out, 2 messages left
"""


def sasl_transcript() -> str:
    return (
        SASL_PLAIN.replace("{ok}", PLAIN_OK)
        .replace("{bad}", PLAIN_BAD)
        .replace("{other}", PLAIN_OTHER_AUTHZ)
        .replace("{long}", "QUFB" * 2000)
    )


BAD_INPUT = r"""
S: +OK POP3 server ready
C: USER alice@pv.test
S: +OK
C: PASS secret
S: +OK Logged in, 2 messages (79 octets)
C: RETR 0
S: -ERR No such message
C: RETR -1
S: -ERR No such message
C: RETR 99999999999
S: -ERR No such message
C: RETR 3
S: -ERR No such message
C: RETR
S: -ERR Invalid arguments
C: RETR 1 2
S: -ERR Invalid arguments
C: TOP 1
S: -ERR Invalid arguments
C: TOP 1 -5
S: -ERR Invalid arguments
C: LIST x
S: -ERR No such message
C: DELE \xd9\xa1
S: -ERR No such message
C: {long}
S: -ERR Line too long
C: RETR \x00
S: -ERR Invalid characters in command
C: NOOP \xff\xfe
S: -ERR Invalid characters in command
C: FOO
S: -ERR Unknown command
C: USER bob
S: -ERR Command not valid in this state
C: APOP alice 0123456789abcdef0123456789abcdef
S: -ERR Command not valid in this state
C: stat
S: +OK 2 79
C: QUIT
S: +OK Logging out, 2 messages left
""".replace("{long}", "A" * 10_000)

APOP_AND_QUIT = r"""
S: +OK POP3 server ready
C: APOP alice 0123456789abcdef0123456789abcdef
S: -ERR APOP is not enabled
C: QUIT
S: +OK Logging out
C: NOOP
"""

TRANSCRIPTS = {
    "session": (SESSION, Settings(plaintext_allowed=True)),
    "plaintext_refused_then_stls": (
        PLAINTEXT_REFUSED_THEN_STLS,
        Settings(plaintext_allowed=False, tls_available=True),
    ),
    "failed_logins": (FAILED_LOGINS, Settings(plaintext_allowed=True, max_failures=3)),
    "sasl_plain": (sasl_transcript(), Settings(tls_active=True)),
    "bad_input": (BAD_INPUT, Settings(plaintext_allowed=True)),
    "apop_and_quit": (APOP_AND_QUIT, Settings(plaintext_allowed=True)),
}

WAYS = {"one_chunk": one_chunk, "byte_by_byte": byte_by_byte}


@pytest.mark.parametrize("way", sorted(WAYS))
@pytest.mark.parametrize("name", sorted(TRANSCRIPTS))
def test_transcript(name: str, way: str) -> None:
    text, s = TRANSCRIPTS[name]
    run_transcript(text, WAYS[way], CoreDriver(settings=s))


@pytest.mark.parametrize("name", sorted(TRANSCRIPTS))
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cuts=st.lists(st.integers(min_value=1, max_value=40), min_size=1, max_size=200))
def test_transcript_random_splits(name: str, cuts: list[int]) -> None:
    text, s = TRANSCRIPTS[name]
    run_transcript(text, split_at(cuts), CoreDriver(settings=s))


@pytest.mark.parametrize("name", sorted(TRANSCRIPTS))
def test_transcript_with_messages_encoded_by_the_caller(name: str) -> None:
    """The server encodes RETR/TOP bodies off its loop and hands them in: same bytes."""
    text, s = TRANSCRIPTS[name]
    run_transcript(text, one_chunk, CoreDriver(settings=s, pre_encoded=True))


def test_session_commits_only_the_marked_deletion() -> None:
    d = run_transcript(SESSION, one_chunk)
    assert d.deleted == ("uid-2",)
    assert d.closed
    assert [type(e) for e in d.events].count(Update) == 1


def test_failed_logins_close_the_connection_and_ignore_the_rest() -> None:
    d = run_transcript(
        FAILED_LOGINS, one_chunk, CoreDriver(settings=Settings(plaintext_allowed=True))
    )
    assert d.closed
    assert d.conn.login is None


def test_quit_in_authorization_deletes_nothing() -> None:
    d = run_transcript(APOP_AND_QUIT, byte_by_byte)
    assert d.deleted is None and d.closed


def test_dropped_connection_in_transaction_deletes_nothing() -> None:
    d = CoreDriver()
    d.feed(b"USER alice@pv.test\r\nPASS secret\r\nDELE 1\r\nDELE 2\r\n")
    assert d.conn.marked_deleted == ("uid-1", "uid-2")
    d.feed(b"")  # EOF without QUIT
    assert d.closed and d.deleted is None


def test_too_many_bad_commands_close() -> None:
    d = CoreDriver()
    d.feed(b"BOGUS\r\n" * (MAX_BAD_COMMANDS + 5))
    lines = bytes(d.out).split(b"\r\n")
    assert lines.count(b"-ERR Unknown command") == MAX_BAD_COMMANDS - 1
    assert b"-ERR Too many bad commands, closing connection" in lines
    assert d.closed


def test_bad_commands_between_good_ones_do_not_close() -> None:
    # issue 16 point 10: a long session with an -ERR now and then (a client
    # asking for a message another session removed) is no attack.
    d = CoreDriver()
    d.feed(b"USER alice@pv.test\r\nPASS secret\r\n")
    for _ in range(MAX_BAD_COMMANDS * 2):
        d.feed(b"LIST 9999\r\nNOOP\r\n")
    d.feed(b"STAT\r\n")
    lines = bytes(d.out).split(b"\r\n")
    assert lines.count(b"-ERR No such message") == MAX_BAD_COMMANDS * 2, lines[-6:]
    assert b"-ERR Too many bad commands, closing connection" not in lines
    assert not d.closed
    assert lines[-2].startswith(b"+OK 2 ")


def test_bad_commands_in_a_row_still_close_after_a_good_one() -> None:
    d = CoreDriver()
    d.feed(b"USER alice@pv.test\r\nPASS secret\r\nNOOP\r\n" + b"LIST 9999\r\n" * MAX_BAD_COMMANDS)
    assert b"-ERR Too many bad commands, closing connection" in bytes(d.out)
    assert d.closed


def test_vanished_message_gives_err_and_session_goes_on() -> None:
    d = CoreDriver(vanished={"uid-1"})
    d.feed(b"USER alice@pv.test\r\nPASS secret\r\nRETR 1\r\nRETR 2\r\n")
    out = bytes(d.out)
    assert b"-ERR [SYS/TEMP] Message was removed by another process\r\n" in out
    assert b"+OK 22 octets\r\nSubject: two\r\n\r\nbody\r\n.\r\n" in out


def test_pipelined_input_behind_stls_is_discarded() -> None:
    d = CoreDriver(settings=Settings(tls_available=True))
    d.conn.receive_data(b"STLS\r\nCAPA\r\n")
    ev = d.conn.next_event()
    assert type(ev).__name__ == "StartTLS"
    d.conn.receive_data(b"USER injected\r\n")  # plaintext before the handshake finished
    assert d.conn.data_to_send().endswith(b"+OK Begin TLS negotiation\r\n")
    d.conn.tls_started()
    assert d.conn.next_event() is NEED_DATA
    assert d.conn.data_to_send() == b""  # nothing answered unprompted


def test_too_much_pipelined_input_while_paused_closes() -> None:
    from postvakt.pop3 import PAUSED
    from postvakt.pop3.connection import MAX_PENDING_INPUT

    d = CoreDriver()
    d.conn.receive_data(b"USER alice@pv.test\r\nPASS secret\r\n")
    ev = d.conn.next_event()
    assert type(ev).__name__ == "Authenticate"
    d.conn.receive_data(b"NOOP\r\n" * (MAX_PENDING_INPUT // 6 + 10))
    assert d.conn.next_event() is PAUSED  # still waiting for the authenticator
    d.conn.login_failed()
    d.pump()
    assert bytes(d.out).endswith(
        b"-ERR [AUTH] Authentication failed\r\n-ERR Too much pipelined input, closing connection\r\n"
    )
    assert d.closed
    assert len(d.conn._buf) == 0


def test_pipelining_after_pass_within_the_limit_is_answered_in_order() -> None:
    d = CoreDriver()
    d.conn.receive_data(b"USER alice@pv.test\r\nPASS secret\r\n")
    ev = d.conn.next_event()
    assert type(ev).__name__ == "Authenticate"
    d.conn.receive_data(b"STAT\r\nNOOP\r\nQUIT\r\n")
    d.conn.login_ok("alice@pv.test", [])
    d.pump()
    assert bytes(d.out).endswith(
        b"+OK Logged in, 0 messages (0 octets)\r\n+OK 0 0\r\n+OK\r\n+OK Logging out, 0 messages left\r\n"
    )


def test_a_body_encoded_by_the_caller_is_sent_as_given() -> None:
    """The core does not encode twice: what the caller hands in is what goes out."""
    d = CoreDriver()
    d.feed(b"USER alice@pv.test\r\nPASS secret\r\n")
    d.out.clear()
    d.conn.receive_data(b"RETR 2\r\n")
    ev = d.conn.next_event()
    assert isinstance(ev, Fetch) and ev.uid == "uid-2"
    d.conn.message(b"ignored\r\n", b"made by the caller\r\n.\r\n")
    assert bytes(d.conn.data_to_send()) == b"+OK 22 octets\r\nmade by the caller\r\n.\r\n"
