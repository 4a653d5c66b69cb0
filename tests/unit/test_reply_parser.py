"""The one SMTP reply parser (`postvakt.reply`), which the delivery client and
the doctor's probe both read a peer's replies with."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from postvakt.delivery import smtpclient
from postvakt.diagnose import client as probe
from postvakt.reply import Reply, parse_reply, reply_line_error


def test_both_clients_use_it() -> None:
    assert smtpclient.parse_reply is parse_reply
    assert probe.parse_reply is parse_reply
    assert smtpclient.reply_line_error is reply_line_error


@pytest.mark.parametrize(
    ("lines", "want"),
    [
        (["250 ok"], Reply(250, "", "ok")),
        (["250"], Reply(250, "", "")),
        (["550-5.1.1 first", "550 5.1.1 second"], Reply(550, "5.1.1", "first\nsecond")),
        # An enhanced code of another class than the reply's is text.
        (["450 5.1.1 odd"], Reply(450, "", "5.1.1 odd")),
        # Taken off the lines that carry it; a line without it keeps its text.
        (["550-5.7.1 one", "550 two"], Reply(550, "5.7.1", "one\ntwo")),
        (
            ["250-mx.example", "250-PIPELINING", "250 SIZE 1000"],
            Reply(250, "", "mx.example\nPIPELINING\nSIZE 1000"),
        ),
        (["221 2.0.0"], Reply(221, "2.0.0", "")),
    ],
)
def test_parse_reply(lines: list[str], want: Reply) -> None:
    assert parse_reply(lines) == want


@pytest.mark.parametrize(
    ("line", "first", "why"),
    [
        ("250 ok", None, None),
        ("250-ok", "250-a", None),
        ("2", None, "not a reply line"),
        ("650 x", None, "not a reply line"),
        ("250x", None, "not a reply line"),
        ("451 no", "250-a", "code 451 in a reply that began with 250"),
    ],
)
def test_reply_line_error(line: str, first: str | None, why: str | None) -> None:
    assert reply_line_error(line, first) == why


@given(
    code=st.sampled_from(["250", "451", "550"]),
    texts=st.lists(
        st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126)), min_size=1, max_size=5
    ),
)
def test_parse_reply_keeps_code_and_line_count(code: str, texts: list[str]) -> None:
    lines = [f"{code}-{t}" for t in texts[:-1]] + [f"{code} {texts[-1]}"]
    assert all(reply_line_error(ln, lines[0]) is None for ln in lines)
    r = parse_reply(lines)
    assert r.code == int(code)
    assert len(r.text.split("\n")) == len(texts)
