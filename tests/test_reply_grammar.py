"""Every reply and continuation the SMTP and POP3 cores can send, as raw bytes,
checked against the RFC grammar.

SMTP (RFC 5321 §4.2, RFC 4954 §4)::

    Reply-line   = *( Reply-code "-" [ textstring ] CRLF )
                   Reply-code [ SP textstring ] CRLF
    continue-req = "334" SP [ base64 ] CRLF

POP3 (RFC 1939, RFC 2449 §9, RFC 5034 §4)::

    single-line  = status [ SP text ] CRLF
    resp-code    = "[" resp-level *("/" resp-level) "]"
    continue-req = "+" SP [ base64 ] CRLF
    multi-line   = single-line *( dot-stuffed line CRLF ) "." CRLF

On top of the grammar, one product rule: every SMTP reply but a SASL challenge
carries text, because real clients (s-nail, old mailx) take a reply line
shorter than six octets for a dead connection.

The replies come from three places: every `Reply` and `POP3Reply` value the
package defines (the catalogues, policy, queue and server modules), the
catalogue functions called with edge-case arguments, and the bytes the cores
write while they run every transcript and fuzzed input.
"""

from __future__ import annotations

import base64
import binascii
import importlib
import inspect
import pkgutil
import re
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pop3_core_driver import CoreDriver
from smtp_harness import Driver, parse, split_at
from smtp_harness import settings as make_settings
from smtp_transcripts import OPTIONS, TRANSCRIPTS

import postvakt
from postvakt.pop3 import Settings as POP3Settings
from postvakt.pop3 import replies as pop3_replies
from postvakt.pop3.replies import POP3Reply
from postvakt.reply import Reply
from postvakt.smtp import replies as smtp_replies

# ---------------------------------------------------------------- the grammar

SMTP_LINE = re.compile(rb"^([2-5][0-5][0-9])(?:([ -])(.*))?\Z", re.S)
# textstring = 1*(%d09 / %d32-126); RFC 6531 adds UTF-8 for SMTPUTF8 sessions.
TEXT = re.compile(r"^[\t\x20-\x7e\u0080-\U0010ffff]+\Z")
BASE64 = re.compile(rb"^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?\Z")
POP3_STATUS = re.compile(rb"^(\+OK|-ERR)(?: (.+))?\Z", re.S)
RESP_CODE = re.compile(r"^\[[A-Za-z0-9-]+(?:/[A-Za-z0-9-]+)*\](?: .+)?\Z")


def _lines(out: bytes) -> list[bytes]:
    assert out == b"" or out.endswith(b"\r\n"), out[-40:]
    lines = out.split(b"\r\n")[:-1]
    for line in lines:
        assert b"\r" not in line and b"\n" not in line, line
    return lines


def _text_ok(raw: bytes) -> bool:
    try:
        return bool(TEXT.match(raw.decode("utf-8")))
    except UnicodeDecodeError:
        return False


def smtp_replies_in(out: bytes) -> list[list[bytes]]:
    """Split server output into replies, asserting the grammar on every line."""
    replies: list[list[bytes]] = []
    current: list[bytes] = []
    for line in _lines(out):
        m = SMTP_LINE.match(line)
        assert m, f"not a reply line: {line!r}"
        code, sep, text = m.group(1), m.group(2), m.group(3)
        if current:
            assert code == current[0][:3], f"code changed inside a reply: {current + [line]!r}"
        current.append(line)
        if code == b"334":
            assert len(current) == 1 and sep == b" ", f"SASL challenge must be '334 ': {line!r}"
            assert BASE64.match(text), f"challenge not base64: {line!r}"
        else:
            assert text and _text_ok(text), f"reply line without (valid) text: {line!r}"
        if sep != b"-":
            replies.append(current)
            current = []
    assert not current, f"unfinished multi-line reply: {current!r}"
    return replies


def check_pop3_single(line: bytes, *, continuation_ok: bool = False) -> str:
    """One POP3 status or continuation line; returns "+OK", "-ERR" or "+"."""
    if continuation_ok and line.startswith(b"+ "):
        assert BASE64.match(line[2:]), f"continuation not base64: {line!r}"
        return "+"
    m = POP3_STATUS.match(line)
    assert m, f"not a POP3 status line: {line!r}"
    text = m.group(2)
    if text is not None:
        assert _text_ok(text) and not text.startswith(b" "), line
        if text.startswith(b"["):
            assert RESP_CODE.match(text.decode()), f"bad response code: {line!r}"
    return m.group(1).decode()


def check_pop3_response(out: bytes, multiline: bool) -> list[str]:
    """The bytes answering one POP3 command line: status (+ body) or continuation."""
    lines = _lines(out)
    kinds = []
    i = 0
    while i < len(lines):
        kind = check_pop3_single(lines[i], continuation_ok=True)
        kinds.append(kind)
        i += 1
        if kind == "+OK" and multiline:
            while True:
                assert i < len(lines), f"multi-line response without its end: {out!r}"
                body = lines[i]
                i += 1
                if body == b".":
                    break
                assert not body.startswith(b".") or body.startswith(b".."), body
            multiline = False
    return kinds


# ---------------------------------------------------------------- the grammar checks itself


@pytest.mark.parametrize(
    "raw",
    [
        b"334\r\n",  # the s-nail bug: no space after 334
        b"334 not base64!\r\n",
        b"250\r\n",  # no text
        b"250 \r\n",  # SP but no textstring
        b"250-a\r\n251 b\r\n",  # code changes
        b"250-a\r\n",  # never finished
        b"250 a\rb\r\n",
        b"250 a",
        b"600 x\r\n",
    ],
)
def test_the_smtp_grammar_refuses(raw: bytes) -> None:
    with pytest.raises(AssertionError):
        smtp_replies_in(raw)


@pytest.mark.parametrize(
    "raw", [b"+OK \r\n", b"-ERR [AUTH Authentication failed\r\n", b"+\r\n", b"OK\r\n"]
)
def test_the_pop3_grammar_refuses(raw: bytes) -> None:
    with pytest.raises(AssertionError):
        check_pop3_response(raw, multiline=False)


# ---------------------------------------------------------------- every value the package defines


def _modules() -> Iterator[object]:
    for info in pkgutil.walk_packages(postvakt.__path__, "postvakt."):
        if info.name.endswith("__main__"):
            continue
        yield importlib.import_module(info.name)


def _defined_replies() -> list[tuple[str, Reply | POP3Reply]]:
    found: dict[int, tuple[str, Reply | POP3Reply]] = {}
    for module in _modules():
        for name, value in vars(module).items():
            candidates = [value]
            if inspect.isclass(value):
                candidates += list(vars(value).values())
            for v in candidates:
                if isinstance(v, Reply | POP3Reply):
                    found.setdefault(id(v), (f"{module.__name__}.{name}", v))
    return sorted(found.values(), key=lambda x: x[0])


DEFINED = _defined_replies()
# Catalogue functions with the arguments that could empty or break a line.
EDGE_ARGS = ["mx.pv.test", "x", "Q1B2C3", "SIZE", "a b", "räksmörgås.example"]
# Arguments that are the program's own values, never input: kept valid.
FIXED_ARGS: dict[str, object] = {"code": "SYS/TEMP", "keywords": ("PIPELINING", "SIZE 10")}


def _catalogue_calls() -> list[tuple[str, Reply | POP3Reply]]:
    out: list[tuple[str, Reply | POP3Reply]] = []
    for module in (smtp_replies, pop3_replies):
        for name, value in vars(module).items():
            # A catalogue function kept behind a cache (the banner, HELO and
            # EHLO replies) is swept as the function it wraps.
            fn = inspect.unwrap(value) if callable(value) else value
            if not inspect.isfunction(fn) or fn.__module__ != module.__name__:
                continue
            params = inspect.signature(fn).parameters
            for arg in EDGE_ARGS:
                # A response code is the program's constant, never input: keep it valid.
                result = fn(*[FIXED_ARGS.get(p, arg) for p in params])
                if isinstance(result, Reply | POP3Reply):
                    out.append((f"{module.__name__}.{name}({arg!r})", result))
    return out


def test_the_sweep_finds_the_catalogues() -> None:
    names = {n for n, _ in DEFINED}
    assert "postvakt.smtp.replies.AUTH_INVALID" in names
    assert "postvakt.pop3.replies.AUTH_FAILED" in names
    assert "postvakt.smtp._sasl._EMPTY_CHALLENGE" in names
    assert len(DEFINED) > 80


@pytest.mark.parametrize(
    ("name", "reply"), DEFINED + _catalogue_calls(), ids=lambda x: x if isinstance(x, str) else ""
)
def test_every_defined_reply_is_grammatical(name: str, reply: Reply | POP3Reply) -> None:
    raw = reply.encode()
    if isinstance(reply, Reply):
        assert len(smtp_replies_in(raw)) == 1, raw
    elif reply.ok and not reply.text:
        assert raw == b"+OK\r\n"  # `+OK` alone is the grammar's bare status (USER, AUTH list)
    else:
        check_pop3_response(raw, multiline=False)


@settings(max_examples=300, deadline=None)
@given(
    code=st.sampled_from([220, 250, 334, 421, 451, 535, 550]),
    enhanced=st.sampled_from(["", "2.0.0", "5.7.1"]),
    text=st.text(max_size=60),
)
@example(code=334, enhanced="", text="\n")  # a newline is no base64 challenge
def test_any_reply_text_encodes_to_grammatical_lines(code: int, enhanced: str, text: str) -> None:
    """Text from config files and echoed input: CR, NUL, blank lines, trailing
    spaces. The encoding never splits a reply or sends a line the grammar
    refuses; only empty text may give a bare code (RFC 5321 allows it)."""
    reply = Reply(code, enhanced, text)
    raw = reply.encode()
    if code == 334:
        if not enhanced and BASE64.match(text.encode("utf-8", "replace")):
            assert raw == b"334 " + text.encode() + b"\r\n"
        return
    for line in _lines(raw):
        m = SMTP_LINE.match(line)
        assert m and m.group(1) == str(code).encode(), line
        assert m.group(3) is None or m.group(3) == b"" or _text_ok(m.group(3)), line
        assert not line.endswith(b" "), line
    assert raw.count(b"\r\n") == max(1, len(text.split("\n")))


# ---------------------------------------------------------------- continuations, byte for byte


def test_smtp_sasl_continuations_raw_bytes() -> None:
    d = Driver(make_settings(tls_active=True))
    d.take()
    d.feed(b"EHLO c\r\n")
    d.take()
    d.feed(b"AUTH PLAIN\r\n")
    assert d.take() == b"334 \r\n"  # RFC 4954 §4: "334" SP, then the empty challenge
    d.feed(b"*\r\n")
    d.take()
    d.feed(b"AUTH LOGIN\r\n")
    assert d.take() == b"334 VXNlcm5hbWU6\r\n"
    d.feed(base64.b64encode(b"alice") + b"\r\n")
    assert d.take() == b"334 UGFzc3dvcmQ6\r\n"
    assert base64.b64decode(b"VXNlcm5hbWU6") == b"Username:"


def test_pop3_sasl_continuation_raw_bytes() -> None:
    d = CoreDriver(settings=POP3Settings(tls_active=True))
    d.out.clear()
    d.feed(b"AUTH PLAIN\r\n")
    assert bytes(d.out) == b"+ \r\n"  # RFC 5034 §4: "+" SP, then the empty challenge


# ---------------------------------------------------------------- what the cores write while they run


@pytest.mark.parametrize("name", sorted(TRANSCRIPTS))
def test_smtp_transcripts_send_only_grammatical_replies(name: str) -> None:
    d = Driver(make_settings(**OPTIONS.get(name, {})))
    for segment in parse(TRANSCRIPTS[name]).segments:
        d.feed(segment.client)
    smtp_replies_in(d.take())


SMTP_TOKENS = [
    b"EHLO x\r\n",
    b"HELO x\r\n",
    b"MAIL FROM:<a@other.example>\r\n",
    b"MAIL FROM:<> SIZE=10 BODY=8BITMIME SMTPUTF8\r\n",
    "MAIL FROM:<ä@x.example> SMTPUTF8\r\n".encode(),
    b"RCPT TO:<u@pv.test>\r\n",
    b"RCPT TO:<unknown@pv.test>\r\n",
    b"DATA\r\n",
    b"RSET\r\n",
    b"VRFY u\r\n",
    b"HELP\r\n",
    b"EXPN x\r\n",
    b"STARTTLS\r\n",
    b"AUTH PLAIN\r\n",
    b"AUTH LOGIN\r\n",
    b"AUTH PLAIN =\r\n",
    b"AUTH\r\n",
    b"YWxpY2U=\r\n",
    b"c2VjcmV0\r\n",
    b"AGFsaWNlAHNlY3JldA==\r\n",
    b"*\r\n",
    b"x\r\n.\r\n",
    b"\r\n",
    b"\n",
    b"\x00",
    b"\xff",
    b"QUIT\r\n",
]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.lists(st.one_of(st.sampled_from(SMTP_TOKENS), st.binary(max_size=20)), max_size=40).map(
        b"".join
    ),
    points=st.lists(st.integers(0, 2000), max_size=10),
    tls=st.booleans(),
)
def test_smtp_core_under_any_input_sends_only_grammatical_replies(
    data: bytes, points: list[int], tls: bool
) -> None:
    d = Driver(make_settings(tls_active=tls, require_auth=tls))
    for piece in split_at(points)(data):
        d.feed(piece)
    d.feed(b"")
    smtp_replies_in(d.take())


POP3_LINES = [
    "CAPA",
    "USER alice@pv.test",
    "PASS secret",
    "PASS wrong",
    "USER",
    "AUTH",
    "AUTH PLAIN",
    "AUTH PLAIN =",
    "AUTH LOGIN",
    "AGFsaWNlQHB2LnRlc3QAc2VjcmV0",
    "*",
    "APOP a b",
    "STLS",
    "STAT",
    "LIST",
    "LIST 1",
    "LIST 9",
    "UIDL",
    "UIDL 2",
    "RETR 1",
    "RETR x",
    "TOP 1 0",
    "TOP 2 5",
    "DELE 1",
    "RSET",
    "NOOP",
    "XYZZY",
    "",
    "QUIT",
]
MULTILINE_VERBS = {"CAPA", "RETR", "TOP"}
MULTILINE_WITHOUT_ARGS = {"LIST", "UIDL", "AUTH"}


def _multiline(line: str) -> bool:
    verb, _, rest = line.partition(" ")
    verb = verb.upper()
    return verb in MULTILINE_VERBS or (verb in MULTILINE_WITHOUT_ARGS and not rest.strip())


def run_pop3_lines(lines: list[str], s: POP3Settings) -> None:
    d = CoreDriver(settings=s)
    check_pop3_response(bytes(d.out), multiline=False)  # the greeting
    d.out.clear()
    in_sasl = False
    for line in lines:
        d.feed(line.encode() + b"\r\n")
        out = bytes(d.out)
        d.out.clear()
        kinds = check_pop3_response(out, multiline=not in_sasl and _multiline(line))
        assert len(kinds) <= 1, out
        in_sasl = kinds == ["+"]
        if d.closed:
            break


@pytest.mark.parametrize("tls", [True, False])
def test_pop3_every_command_in_both_states_is_grammatical(tls: bool) -> None:
    s = POP3Settings(tls_active=tls, tls_available=not tls, plaintext_allowed=True)
    before_login = [x for x in POP3_LINES if x not in ("QUIT", "STLS", "PASS secret")]
    run_pop3_lines([*before_login, "USER alice@pv.test", "PASS secret", *POP3_LINES], s)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    lines=st.lists(st.one_of(st.sampled_from(POP3_LINES), st.text(max_size=20)), max_size=30),
    tls=st.booleans(),
    plaintext=st.booleans(),
)
def test_pop3_core_under_any_lines_sends_only_grammatical_responses(
    lines: list[str], tls: bool, plaintext: bool
) -> None:
    lines = [x.replace("\r", "").replace("\n", "") for x in lines]
    s = POP3Settings(
        tls_active=tls, tls_available=not tls, plaintext_allowed=plaintext, max_failures=3
    )
    run_pop3_lines(lines, s)


def test_base64_pattern_agrees_with_the_decoder() -> None:
    for sample in (b"", b"a", b"ab", b"abc", b"abcd", b"\x00alice\x00secret"):
        enc = base64.b64encode(sample)
        assert BASE64.match(enc)
        binascii.a2b_base64(enc, strict_mode=True)
    assert not BASE64.match(b"abc")
    # `$` would match before a final newline; the grammar has none.
    assert not BASE64.match(b"\n") and not BASE64.match(b"YWJj\n")
