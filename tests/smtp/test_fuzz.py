"""Any input, in any split, gives well-formed replies and never an exception."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from smtp_harness import REPLY_LINE, Driver, answer, merged_events, split_at
from smtp_harness import settings as make_settings

from postvakt.reply import Reply
from postvakt.smtp import NEED_DATA, PAUSED, Settings, SMTPServer, StartTLS, replies
from postvakt.smtp._data import MAX_TEXT_LINE, DataReader

TOKENS = [
    b"EHLO x\r\n",
    b"HELO x\r\n",
    b"MAIL FROM:<a@other.example>\r\n",
    b"MAIL FROM:<> SIZE=10 BODY=8BITMIME SMTPUTF8\r\n",
    b"RCPT TO:<u@pv.test>\r\n",
    b'RCPT TO:<"q@x"@pv.test> NOTIFY=NEVER\r\n',
    b"DATA\r\n",
    b"RSET\r\n",
    b"NOOP\r\n",
    b"QUIT\r\n",
    b"VRFY u\r\n",
    b"STARTTLS\r\n",
    b"AUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n",
    b"AUTH LOGIN\r\n",
    b"YWxpY2U=\r\n",
    b"*\r\n",
    b".\r\n",
    b"\r\n.\r\n",
    b"\n.\n",
    b"\r",
    b"\n",
    b"\x00",
    b".",
    b"..",
    b"Received: x\r\n",
    b"\xff\xfe",
    "MAIL FROM:<ä@x.example>\r\n".encode(),
    b"A" * 600,
]

streams = st.lists(st.one_of(st.sampled_from(TOKENS), st.binary(max_size=40)), max_size=40).map(
    b"".join
)


def check_output(out: bytes) -> None:
    assert out == b"" or out.endswith(b"\r\n")
    for line in out.split(b"\r\n")[:-1]:
        assert REPLY_LINE.match(line), line
    assert replies.internal_error("mx.pv.test").encode() not in out


def play(data: bytes, points: list[int], tls: bool) -> Driver:
    config = make_settings(tls_active=tls, max_message_size=2_000, max_hops=2)
    d = Driver(config)
    for piece in split_at(points)(data):
        d.feed(piece)
        assert d.conn.buffered <= len(data)
    d.feed(b"")
    check_output(d.take())
    return d


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=streams, points=st.lists(st.integers(0, 3000), max_size=20), tls=st.booleans())
def test_any_input_any_split_well_formed(data: bytes, points: list[int], tls: bool) -> None:
    play(data, points, tls)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=2000), points=st.lists(st.integers(0, 3000), max_size=20))
def test_random_bytes_well_formed(data: bytes, points: list[int]) -> None:
    play(data, points, False)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=streams, points=st.lists(st.integers(0, 3000), max_size=20))
def test_split_does_not_change_the_session(data: bytes, points: list[int]) -> None:
    """Without STARTTLS and DATA (whose early bytes are refused on purpose), splits don't matter."""
    upper = data.upper()
    if b"STARTTLS" in upper or b"DATA" in upper:
        return
    whole = play(data, [], False)
    split = play(data, points, False)
    assert merged_events(whole.events) == merged_events(split.events)


@settings(max_examples=200, deadline=None)
@given(data=streams)
def test_application_may_answer_late(data: bytes) -> None:
    """Pausing until the application answers changes nothing in the replies' form."""
    conn = SMTPServer(make_settings())
    conn.receive_data(data)
    conn.receive_data(b"")
    out = bytearray(conn.data_to_send())
    for _ in range(10_000):
        event = conn.next_event()
        if event is NEED_DATA:
            break
        if event is PAUSED:
            conn.respond(replies.Reply(451, "4.3.0", "try later"))
        elif isinstance(event, StartTLS):
            conn.tls_started()
        out += conn.data_to_send()
    out += conn.data_to_send()
    check_output(bytes(out))


# ---------------------------------------------------------------- DATA reader


def reference(stream: bytes, max_size: int, max_line: int) -> tuple[bytes, bool, bytes] | None:
    """Slow line-by-line model: (message, refused, rest after the end) or None."""
    s = b"\r\n" + stream
    end = s.find(b"\r\n.\r\n")
    if end < 0:
        return None
    raw = s[2 : end + 2]
    rest = s[end + 5 :]
    lines = raw.split(b"\r\n")[:-1] if raw else []
    out = []
    refused = False
    for line in lines:
        if line.startswith(b"."):
            line = line[1:]
        if b"\r" in line or b"\n" in line or b"\x00" in line or 0 < max_line < len(line):
            refused = True
        out.append(line + b"\r\n")
    message = b"".join(out)
    return message, refused or len(message) > max_size, rest


DATA_TOKENS = [b"\r\n", b".", b"\r", b"\n", b"\x00", b"x", b"ab", b"\r\n.", b".\r\n", b"y" * 500]
data_streams = st.lists(
    st.one_of(st.sampled_from(DATA_TOKENS), st.binary(max_size=8)), max_size=60
).map(b"".join)


@settings(max_examples=500, deadline=None)
@given(
    stream=data_streams,
    points=st.lists(st.integers(0, 5000), max_size=30),
    tail=st.sampled_from([b"", b"\r\n.\r\n", b"x\r\n.\r\nNOOP\r\n"]),
    max_line=st.sampled_from([0, MAX_TEXT_LINE, 1_200]),
)
def test_data_reader_matches_the_line_model(
    stream: bytes, points: list[int], tail: bytes, max_line: int
) -> None:
    stream += tail
    reader = DataReader(max_size=1_500, max_hops=3, max_line=max_line)
    buf = bytearray()
    got = b""
    done = False
    for piece in split_at(points)(stream):
        if done:
            buf += piece
            continue
        buf += piece
        out, done = reader.consume(buf)
        got += out
        assert len(buf) == 0 or done
    want = reference(stream, 1_500, max_line)
    if want is None:
        assert not done
        return
    message, refused, rest = want
    assert done
    assert bytes(buf) == rest
    assert reader.size == len(message)
    if reader.problem is None:
        assert not refused
        assert got == message
    else:
        assert refused or reader.problem == replies.TOO_MANY_HOPS
        assert message.startswith(got)


def test_command_line_limit_is_512_octets_with_crlf() -> None:
    """RFC 5321 4.5.3.1.4: a command line is at most 512 octets, CRLF included."""
    drv = Driver()
    drv.feed(b"EHLO client.test\r\n")
    drv.take()
    longest = b"NOOP " + b"x" * (512 - 5 - 2) + b"\r\n"
    assert len(longest) == 512
    drv.feed(longest)
    assert drv.lines() == ["250 2.0.0 Ok"]
    drv.feed(b"NOOP " + b"x" * (512 - 5 - 1) + b"\r\n")
    assert drv.lines() == ["500 5.5.2 Error: command line too long"]
    drv.feed(b"NOOP\r\n")  # the session goes on after the refusal
    assert drv.lines() == ["250 2.0.0 Ok"]


# ---------------------------------------------------------------- any application, any settings
#
# The core's promise holds whatever the application answers and however the
# listener is set up: a well-formed reply for every input, never an exception.

MORE_TOKENS = [
    *TOKENS,
    b"AUTH PLAIN\r\n",
    b"AUTH PLAIN =\r\n",
    b"AUTH CRAM-MD5\r\n",
    b"=\r\n",
    b"MAIL FROM:<@a.example,@b.example:u@c.example>\r\n",
    b"MAIL FROM:<a@[127.0.0.1]> RET=HDRS ENVID=x+2Bq\r\n",
    b"RCPT TO:<postmaster>\r\n",
    b"RCPT TO:<u@pv.test> ORCPT=rfc822;u+40pv.test\r\n",
    b"BDAT 10 LAST\r\n",
    b"Subject: " + b"s" * 1_200 + b"\r\n",
    b"x" * 3_000,
    b"\r\n\r\n",
]
more_streams = st.lists(
    st.one_of(st.sampled_from(MORE_TOKENS), st.binary(max_size=40)), max_size=50
).map(b"".join)

REPLY_CHOICES = [
    None,  # the test application's own answer
    Reply(250, "2.0.0", "Ok"),
    Reply(354, "", "go ahead"),
    Reply(421, "4.3.2", "shutting down"),
    Reply(451, "4.3.0", "try later"),
    Reply(452, "4.5.3", "Too many recipients"),
    Reply(454, "4.7.0", "Too many failed logins"),
    Reply(550, "5.7.1", "no"),
    Reply(235, "2.7.0", "Authentication successful"),
    Reply(535, "5.7.8", "Authentication credentials invalid"),
]
CORE_SETTINGS = st.builds(
    make_settings,
    tls_active=st.booleans(),
    tls_available=st.booleans(),
    require_tls=st.booleans(),
    require_auth=st.booleans(),
    max_message_size=st.sampled_from([100, 2_000, 100_000]),
    max_recipients=st.integers(1, 5),
    max_hops=st.integers(0, 3),
    max_line_length=st.sampled_from([0, 10, MAX_TEXT_LINE, 2_048]),
    soft_error_limit=st.integers(1, 10),
    hard_error_limit=st.integers(1, 20),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=more_streams,
    points=st.lists(st.integers(0, 3000), max_size=20),
    config=CORE_SETTINGS,
    answers=st.lists(st.sampled_from(REPLY_CHOICES), max_size=30),
)
def test_any_answers_any_settings_well_formed(
    data: bytes, points: list[int], config: Settings, answers: list[Reply | None]
) -> None:
    """Whatever the application answers (even a reply unusual for the stage)."""
    pending = list(answers)

    def app(event: object) -> Reply | None:
        own = answer(event)
        if own is None:
            return None
        chosen = pending.pop(0) if pending else None
        return own if chosen is None else chosen

    d = Driver(config, app=app)
    for piece in split_at(points)(data):
        d.feed(piece)
    d.feed(b"")
    check_output(d.take())


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    lines=st.lists(st.integers(0, 3_000), min_size=1, max_size=6),
    limit=st.sampled_from([0, MAX_TEXT_LINE, 1_000, 2_048]),
    points=st.lists(st.integers(1, 4_000), max_size=10),
)
def test_long_lines_accepted_up_to_the_limit_and_kept_whole(
    lines: list[int], limit: int, points: list[int]
) -> None:
    body = b"".join(b"L" * n + b"\r\n" for n in lines)
    d = Driver(make_settings(max_line_length=limit, max_message_size=1_000_000))
    d.feed(b"EHLO x\r\nMAIL FROM:<a@other.example>\r\nRCPT TO:<u@pv.test>\r\nDATA\r\n")
    d.take()
    for piece in split_at(points)(body + b".\r\n"):
        d.feed(piece)
    end = d.ends()[-1]
    too_long = limit > 0 and max(lines) > limit
    if too_long:
        assert end.problem == replies.data_line_too_long(limit)
    else:
        assert end.problem is None
        assert d.message() == body
    check_output(d.take())
