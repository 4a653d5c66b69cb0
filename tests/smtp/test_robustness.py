"""Protocol robustness (robustness §5) at the level of the core: P1–P8, P13–P17."""

from __future__ import annotations

from smtp_harness import BANNER, HOST, Driver, settings

from postvakt.smtp import NEED_DATA, DataChunk, SMTPServer, replies
from postvakt.smtp._connection import JUNK_COMMAND_LIMIT, MAX_COMMAND_LINE
from postvakt.smtp._data import DEFAULT_MAX_LINE_LENGTH, MAX_HEADER_SECTION

CHUNK = 64 * 1024


def in_data(driver: Driver, rcpts: int = 1) -> None:
    driver.feed(b"EHLO client.test\r\nMAIL FROM:<a@other.example>\r\n")
    driver.feed(b"RCPT TO:<u@pv.test>\r\n" * rcpts + b"DATA\r\n")
    driver.take()


def test_p1_511_octet_mail_from_gets_a_path_reply_not_line_too_long() -> None:
    d = Driver()
    d.feed(b"EHLO client.test\r\n")
    d.take()
    head = b"MAIL FROM:<"
    tail = b"@other.example>\r\n"
    line = head + b"a" * (511 - len(head) - len(tail)) + tail
    assert len(line) == 511
    d.feed(line + b"NOOP\r\n")
    out = d.lines()
    assert out[0].startswith("501 5.1.3"), out
    assert out[1:] == ["250 2.0.0 Ok"]


def test_p1_512_octets_is_the_limit() -> None:
    d = Driver()
    d.feed(b"NOOP " + b"x" * (MAX_COMMAND_LINE - 7) + b"\r\n")
    d.feed(b"NOOP " + b"x" * (MAX_COMMAND_LINE - 6) + b"\r\n")
    assert d.lines() == [BANNER, "250 2.0.0 Ok", "500 5.5.2 Error: command line too long"]


def test_p2_10kb_command_line_then_noop_stays_in_sync() -> None:
    d = Driver()
    d.feed(b"NOOP " + b"x" * 10_000 + b"\r\nNOOP\r\n")
    assert d.lines() == [BANNER, "500 5.5.2 Error: command line too long", "250 2.0.0 Ok"]


def test_p2_long_line_split_in_small_pieces() -> None:
    d = Driver()
    line = b"MAIL FROM:<" + b"x" * 10_000 + b"@other.example>\r\n"
    for i in range(0, len(line), 100):
        d.feed(line[i : i + 100])
    d.feed(b"NOOP\r\n")
    assert d.lines() == [BANNER, "500 5.5.2 Error: command line too long", "250 2.0.0 Ok"]


def test_p3_50mb_without_lf_keeps_the_buffer_bounded() -> None:
    conn = SMTPServer(settings())
    block = b"A" * CHUNK
    peak = 0
    for _ in range(50 * 1024 * 1024 // CHUNK):
        conn.receive_data(block)
        while conn.next_event() is not NEED_DATA:
            pass
        peak = max(peak, conn.buffered)
    assert peak < MAX_COMMAND_LINE
    conn.receive_data(b"\r\nNOOP\r\n")
    assert conn.next_event() is NEED_DATA
    out = conn.data_to_send().decode().split("\r\n")
    assert out == [BANNER, "500 5.5.2 Error: command line too long", "250 2.0.0 Ok", ""]


def test_p3_50mb_in_data_without_lf_keeps_memory_bounded() -> None:
    d = Driver(settings(max_message_size=1_000_000))
    in_data(d)
    block = b"B" * CHUNK
    peak = 0
    for _ in range(50 * 1024 * 1024 // CHUNK):
        d.conn.receive_data(block)
        d.pump()
        d.events = [e for e in d.events if not isinstance(e, DataChunk)]
        peak = max(peak, d.conn.buffered)
    assert peak == 0
    d.feed(b"\r\n.\r\n")
    end = d.ends()[-1]
    assert end.problem == replies.data_line_too_long(DEFAULT_MAX_LINE_LENGTH)
    assert end.size == 50 * 1024 * 1024 + 2
    assert d.lines() == [LINE_TOO_LONG_REPLY]


LINE_TOO_LONG_REPLY = (
    f"554 5.6.0 Line too long: a line of the message exceeds {DEFAULT_MAX_LINE_LENGTH} octets"
)


def test_p4_lines_over_998_octets_are_accepted_and_kept_whole() -> None:
    # issue 16 point 11: generated HTML has long lines; RFC 5322's 998 is not our bound.
    d = Driver(settings(max_message_size=1_000_000))
    in_data(d)
    before = len(d.events)
    line = b"<p>" + b"h" * 20_000 + b"</p>"
    d.feed(b"Subject: html\r\n\r\n" + line + b"\r\n." + line + b"\r\n.\r\n")
    assert d.ends()[-1].problem is None
    assert d.lines() == ["250 2.0.0 Ok: queued as TEST"]
    chunks = b"".join(e.data for e in d.events[before:] if isinstance(e, DataChunk))
    assert chunks == b"Subject: html\r\n\r\n" + line + b"\r\n" + line + b"\r\n"


def test_p4_max_line_length_is_the_bound_the_transparency_dot_not_counted() -> None:
    d = Driver(settings(max_line_length=998))
    in_data(d)
    d.feed(b"x" * 998 + b"\r\n.\r\n")
    assert d.ends()[-1].problem is None
    assert d.lines() == ["250 2.0.0 Ok: queued as TEST"]
    d.feed(b"MAIL FROM:<a@other.example>\r\nRCPT TO:<u@pv.test>\r\nDATA\r\n")
    d.take()
    d.feed(b"." + b"x" * 998 + b"\r\n.\r\n")
    assert d.ends()[-1].problem is None, "the transparency dot is not part of the line"
    d.take()
    d.feed(b"MAIL FROM:<a@other.example>\r\nRCPT TO:<u@pv.test>\r\nDATA\r\n")
    d.take()
    d.feed(b"x" * 999 + b"\r\n.\r\n")
    assert d.ends()[-1].problem == replies.data_line_too_long(998)
    assert d.lines() == ["554 5.6.0 Line too long: a line of the message exceeds 998 octets"]


def test_p4_no_line_limit_but_the_size_with_zero() -> None:
    d = Driver(settings(max_line_length=0, max_message_size=1_000_000))
    in_data(d)
    d.feed(b"z" * (DEFAULT_MAX_LINE_LENGTH * 2) + b"\r\n.\r\n")
    assert d.ends()[-1].problem is None


def test_p4_overlong_line_refused_only_after_the_final_dot() -> None:
    d = Driver()
    in_data(d)
    before = len(d.events)
    d.feed(b"Subject: long\r\n\r\n" + b"y" * (DEFAULT_MAX_LINE_LENGTH + 1) + b"\r\nmore\r\n")
    assert d.take() == b"", "no reply before the end of data (RFC 5321 §4.2.5)"
    d.feed(b".\r\n")
    assert d.lines() == [LINE_TOO_LONG_REPLY]
    chunks = b"".join(e.data for e in d.events[before:] if isinstance(e, DataChunk))
    assert b"y" * (DEFAULT_MAX_LINE_LENGTH + 1) not in chunks


def test_p5_size_parameter_over_limit_refused_at_mail() -> None:
    d = Driver()
    d.feed(b"EHLO client.test\r\n")
    assert "250-SIZE 10000" in d.lines()
    d.feed(b"MAIL FROM:<a@other.example> SIZE=10001\r\n")
    assert d.lines() == ["552 5.3.4 Message size exceeds fixed limit"]
    d.feed(b"MAIL FROM:<a@other.example> SIZE=10000\r\n")
    assert d.lines() == ["250 2.1.0 Ok"]


def test_p5_message_over_limit_without_size_refused_after_dot_nothing_passed_on() -> None:
    d = Driver()
    in_data(d)
    line = b"z" * 98 + b"\r\n"
    body = line * 100 + b"!"  # 10001 octets, one over the limit
    assert len(body + b"\r\n") == 10_003
    before = len(d.events)
    for i in range(0, len(body), 333):
        d.feed(body[i : i + 333])
    d.feed(b"\r\n.\r\n")
    assert d.lines() == ["552 5.3.4 Message size exceeds fixed limit"]
    passed = b"".join(e.data for e in d.events[before:] if isinstance(e, DataChunk))
    assert len(passed) <= 10_000
    assert d.ends()[-1].size == 10_003


def test_p5_message_exactly_at_limit_is_accepted() -> None:
    d = Driver()
    in_data(d)
    body = b"z" * 98 + b"\r\n"
    d.feed(body * 100 + b".\r\n")
    assert d.ends()[-1].size == 10_000
    assert d.ends()[-1].problem is None


def test_p6_recipient_limit() -> None:
    d = Driver(settings(max_recipients=100))
    d.feed(b"EHLO client.test\r\nMAIL FROM:<a@other.example>\r\n")
    d.take()
    d.feed(b"".join(b"RCPT TO:<u%d@pv.test>\r\n" % i for i in range(101)))
    out = d.lines()
    assert out[:100] == ["250 2.1.5 Ok"] * 100
    assert out[100] == "452 4.5.3 Too many recipients"
    assert d.conn.recipient_count == 100
    d.feed(b"DATA\r\n")
    assert d.lines() == ["354 End data with <CR><LF>.<CR><LF>"]


def test_p6_1001_recipients_with_the_default_limit() -> None:
    d = Driver(settings(max_recipients=1000))
    d.feed(b"EHLO client.test\r\nMAIL FROM:<a@other.example>\r\n")
    d.take()
    d.feed(b"".join(b"RCPT TO:<u%d@pv.test>\r\n" % i for i in range(1001)))
    out = d.lines()
    assert out.count("250 2.1.5 Ok") == 1000
    assert out[-1] == "452 4.5.3 Too many recipients"
    assert d.conn.error_count == 0, "an overshoot is not an attack"


def test_p6_refused_recipients_do_not_count_toward_the_limit() -> None:
    d = Driver(settings(max_recipients=2, hard_error_limit=100))
    d.feed(b"EHLO client.test\r\nMAIL FROM:<a@other.example>\r\n")
    d.take()
    d.feed(b"RCPT TO:<unknown1@pv.test>\r\nRCPT TO:<a@pv.test>\r\nRCPT TO:<unknown2@pv.test>\r\n")
    d.feed(b"RCPT TO:<b@pv.test>\r\nRCPT TO:<c@pv.test>\r\n")
    out = d.lines()
    assert [line[:3] for line in out] == ["550", "250", "550", "250", "452"]


def test_p7_unknown_commands_hit_the_hard_limit() -> None:
    d = Driver()
    d.take()
    counts = []
    for _ in range(25):
        d.feed(b"XYZZY\r\n")
        counts.append(d.conn.error_count)
    out = d.lines()
    assert out[:20] == ["500 5.5.2 Error: command not recognized"] * 20
    assert out[20:] == [f"421 4.7.0 {HOST} Error: too many errors"]
    assert d.kinds()[-1] == "Close"
    # The adapter slows replies down once error_count > soft limit (10).
    assert counts[10] == 11


def test_p7_application_refusals_count_as_errors() -> None:
    d = Driver(settings(hard_error_limit=3))
    d.feed(b"EHLO client.test\r\nMAIL FROM:<a@other.example>\r\n")
    d.take()
    d.feed(b"RCPT TO:<unknown1@pv.test>\r\n" * 5)
    assert d.lines() == [
        "550 5.1.1 <unknown1@pv.test>: Recipient address rejected: User unknown",
    ] * 3 + [f"421 4.7.0 {HOST} Error: too many errors"]


def test_p8_junk_commands_count_as_errors_after_100() -> None:
    d = Driver()
    d.take()
    d.feed(b"NOOP\r\n" * JUNK_COMMAND_LIMIT)
    assert d.conn.error_count == 0
    d.feed(b"RSET\r\nVRFY x\r\nHELP\r\nNOOP\r\n")
    assert d.conn.error_count == 4
    d.feed(b"NOOP\r\n" * 50)
    out = d.lines()
    assert out.count("250 2.0.0 Ok") == JUNK_COMMAND_LIMIT + 2 + 16
    assert out[-1] == f"421 4.7.0 {HOST} Error: too many errors"


def test_p8_junk_count_resets_after_a_delivered_message() -> None:
    d = Driver()
    d.feed(b"EHLO client.test\r\n" + b"NOOP\r\n" * JUNK_COMMAND_LIMIT)
    in_data(d)
    d.feed(b"x\r\n.\r\n" + b"NOOP\r\n" * JUNK_COMMAND_LIMIT)
    assert d.conn.error_count == 0


def test_p13_100k_noops_without_reading_replies() -> None:
    conn = SMTPServer(settings())
    conn.receive_data(b"NOOP\r\n" * 100_000)
    events = []
    while (e := conn.next_event()) is not NEED_DATA:
        events.append(e)
    out = conn.data_to_send()
    # The junk limit ends the session long before 10^5 replies pile up.
    assert out.count(b"\r\n") == 1 + JUNK_COMMAND_LIMIT + 20 + 1
    assert out.endswith(b"too many errors\r\n")
    assert conn.buffered == 0
    assert [type(e).__name__ for e in events] == ["Close"]


def test_p13_pipelined_input_waits_while_paused() -> None:
    conn = SMTPServer(settings())
    conn.receive_data(b"EHLO x\r\nMAIL FROM:<a@other.example>\r\n" + b"RCPT TO:<u@pv.test>\r\n" * 3)
    assert type(conn.next_event()).__name__ == "Helo"
    assert type(conn.next_event()).__name__ == "MailFrom"
    from postvakt.smtp import PAUSED

    assert conn.next_event() is PAUSED
    assert conn.buffered == len(b"RCPT TO:<u@pv.test>\r\n") * 3
    conn.respond(replies.SENDER_OK)
    assert type(conn.next_event()).__name__ == "RcptTo"


def test_p14_nul_in_ehlo_mail_and_data() -> None:
    d = Driver()
    d.feed(b"EHLO a\x00b\r\n")
    assert d.lines()[-1] == "500 5.5.2 Error: NUL character in command"
    d.feed(b"EHLO client.test\r\nMAIL FROM:<a\x00@other.example>\r\n")
    assert d.lines()[-1] == "500 5.5.2 Error: NUL character in command"
    in_data(d)
    d.feed(b"Subject: x\r\n\r\nnul \x00 here\r\n.\r\n")
    assert d.lines() == ["550 5.6.0 Message contains NUL characters, refused"]


def test_p15_non_ascii_sender_without_smtputf8() -> None:
    d = Driver()
    d.feed(b"EHLO client.test\r\n")
    d.take()
    d.feed("MAIL FROM:<ä@other.example>\r\n".encode())
    assert d.lines()[0].startswith("553 5.6.7")
    d.feed("MAIL FROM:<ä@other.example> SMTPUTF8\r\n".encode())
    assert d.lines() == ["250 2.1.0 Ok"]
    assert d.conn.sender is not None and d.conn.sender.smtputf8
    d.feed("RCPT TO:<ö@pv.test>\r\n".encode())
    assert d.lines() == ["250 2.1.5 Ok"]


def test_p15_latin1_bytes_in_a_command() -> None:
    d = Driver()
    d.feed(b"EHLO client.test\r\nMAIL FROM:<\xe4@other.example>\r\n")
    assert d.lines()[-1] == "500 5.5.2 Error: command is not valid UTF-8"


def test_p15_8bit_headers_and_body_pass_byte_for_byte() -> None:
    d = Driver()
    in_data(d)
    message = "Subject: Grüße\r\nFrom: Jörg <j@other.example>\r\n\r\n".encode() + b"\xe4\xff\r\n"
    d.feed(message + b".\r\n")
    assert d.message() == message
    end = d.ends()[-1]
    assert end.problem is None
    assert end.headers == (("Subject", "Grüße"), ("From", "Jörg <j@other.example>"))


def test_p16_sequence_errors() -> None:
    d = Driver()
    d.feed(b"EHLO client.test\r\nRCPT TO:<u@pv.test>\r\n")
    assert d.lines()[-1] == "503 5.5.1 Error: need MAIL command"
    d.feed(b"MAIL FROM:<a@other.example>\r\nMAIL FROM:<a@other.example>\r\n")
    assert d.lines() == ["250 2.1.0 Ok", "503 5.5.1 Error: nested MAIL command"]
    d.feed(b"DATA\r\n")
    assert d.lines() == ["503 5.5.1 Error: need RCPT command"]


def test_p17_51_received_headers_are_too_many_hops() -> None:
    d = Driver(settings(max_hops=50, max_message_size=1_000_000))
    in_data(d)
    received = b"".join(
        b"Received: from h%d.other.example by mx.other.example;\r\n\tFri, 27 Nov 2026 12:00:00 +0000\r\n"
        % i
        for i in range(51)
    )
    d.feed(received + b"Subject: loop\r\n\r\nbody\r\n.\r\n")
    assert d.lines() == ["554 5.4.0 Too many hops"]


def test_p17_50_received_headers_are_fine() -> None:
    d = Driver(settings(max_hops=50, max_message_size=1_000_000))
    in_data(d)
    received = b"Received: from a by b; Fri, 27 Nov 2026 12:00:00 +0000\r\n" * 50
    d.feed(received + b"Subject: ok\r\n\r\nReceived: in the body does not count\r\n.\r\n")
    assert d.ends()[-1].problem is None
    assert len([h for h in d.ends()[-1].headers if h[0] == "Received"]) == 50


def test_header_section_is_bounded() -> None:
    d = Driver(settings(max_message_size=1_000_000))
    in_data(d)
    header = b"X-Filler: " + b"f" * 900 + b"\r\n"
    d.feed(header * 200 + b"\r\nbody\r\n.\r\n")
    end = d.ends()[-1]
    assert end.problem is None
    assert sum(len(n) + len(v) + 4 for n, v in end.headers) <= MAX_HEADER_SECTION
    assert 60 <= len(end.headers) < 200
    assert end.headers_complete is False  # the application must not trust a partial view


def test_headers_within_the_bound_are_complete() -> None:
    d = Driver()
    in_data(d)
    d.feed(b"From: <alice@pv.test>\r\nSubject: s\r\n\r\nbody\r\n.\r\n")
    assert d.ends()[-1].headers_complete is True


def test_headers_are_unfolded() -> None:
    d = Driver()
    in_data(d)
    d.feed(
        b"From: Alice\r\n <alice@pv.test>\r\nSubject:  a\r\n\tb \r\nbroken line\r\n\r\nx\r\n.\r\n"
    )
    assert d.ends()[-1].headers == (("From", "Alice <alice@pv.test>"), ("Subject", "a\tb"))


def test_message_without_body_separator_still_gets_headers() -> None:
    d = Driver()
    in_data(d)
    d.feed(b"From: <alice@pv.test>\r\n.\r\n")
    assert d.ends()[-1].headers == (("From", "<alice@pv.test>"),)


def test_eof_mid_command_and_mid_data() -> None:
    d = Driver()
    d.feed(b"EHLO client.test\r\nNOOP")
    d.feed(b"")
    assert d.kinds()[-1] == "Close"
    assert d.events[-1].reason == "peer closed"
    d = Driver()
    in_data(d)
    d.feed(b"partial message\r\n")
    d.feed(b"")
    assert d.kinds()[-2:] == ["DataChunk", "Close"]
    assert not d.ends()


def test_eof_after_pipelined_commands_answers_them_first() -> None:
    d = Driver()
    d.feed(b"EHLO client.test\r\nNOOP\r\nQUIT\r\n")
    d.feed(b"")
    assert d.lines()[-2:] == ["250 2.0.0 Ok", "221 2.0.0 Bye"]
    assert d.kinds()[-1] == "Quit"


def test_idle_timeout() -> None:
    conn = SMTPServer(settings())
    conn.data_to_send()
    conn.idle_timeout()
    assert conn.data_to_send() == f"421 4.4.2 {HOST} Error: timeout exceeded\r\n".encode()
    event = conn.next_event()
    assert type(event).__name__ == "Close"
    assert conn.next_event() is NEED_DATA
    conn.receive_data(b"NOOP\r\n")
    assert conn.next_event() is NEED_DATA
    assert conn.data_to_send() == b""


def test_idle_timeout_while_waiting_for_the_application() -> None:
    conn = SMTPServer(settings())
    conn.receive_data(b"EHLO x\r\nMAIL FROM:<a@other.example>\r\n")
    conn.next_event()
    conn.next_event()
    conn.idle_timeout()
    assert type(conn.next_event()).__name__ == "Close"
    conn.respond(replies.SENDER_OK)  # a late answer is ignored
    assert conn.data_to_send().endswith(b"Error: timeout exceeded\r\n")


def test_shutdown_between_commands_is_immediate() -> None:
    conn = SMTPServer(settings())
    conn.data_to_send()
    conn.shutdown()
    assert conn.data_to_send().startswith(b"421 4.3.2 " + HOST.encode())
    assert type(conn.next_event()).__name__ == "Close"


def test_shutdown_waits_for_the_message_in_flight() -> None:
    d = Driver()
    in_data(d)
    d.feed(b"Subject: x\r\n\r\nhalf")
    d.conn.shutdown()
    assert d.take() == b""
    d.feed(b"\r\n.\r\nMAIL FROM:<b@other.example>\r\n")
    out = d.lines()
    assert out[0] == "250 2.0.0 Ok: queued as TEST"
    assert out[1].startswith("421 4.3.2")
    assert d.kinds()[-2:] == ["EndOfData", "Close"]


def test_idle_session_is_small() -> None:
    """10,000 idle connections must fit in well under 150 MB (DESIGN.md targets)."""
    import tracemalloc

    config = settings()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        sessions = [SMTPServer(config) for _ in range(1000)]
        for s in sessions:
            s.data_to_send()
        per_session = (tracemalloc.get_traced_memory()[0] - before) / len(sessions)
    finally:
        tracemalloc.stop()
    assert per_session < 2048


def test_helo_and_ehlo_set_the_session_facts() -> None:
    d = Driver()
    d.feed(b"HELO old.client\r\n")
    assert (d.conn.helo, d.conn.esmtp) == ("old.client", False)
    d.feed(b"EHLO new.client\r\n")
    assert (d.conn.helo, d.conn.esmtp) == ("new.client", True)
    assert [e.extended for e in d.events] == [False, True]
