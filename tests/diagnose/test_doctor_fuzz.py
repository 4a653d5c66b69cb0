"""Any input either parses or gives a named answer, never a traceback:
pasted error texts for --explain-error, and any bytes a server may send."""

from __future__ import annotations

import socket

from hypothesis import given, settings
from hypothesis import strategies as st

from postvakt.diagnose.client import ProbeError, SMTPProbe, Transcript, _LineConnection
from postvakt.diagnose.errortext import explain_error
from postvakt.reply import Reply

REPLY_LIKE = st.lists(
    st.tuples(
        st.sampled_from(
            ["220", "250", "354", "421", "450", "530", "550", "553", "554", "99", "abc", ""]
        ),
        st.sampled_from([" ", "-", "", "\t"]),
        st.text(max_size=80),
    ).map(lambda t: "".join(t)),
    max_size=6,
).map(lambda lines: "\n".join(lines))


@given(st.one_of(st.text(max_size=400), REPLY_LIKE))
@settings(max_examples=300, deadline=None)
def test_explain_error_never_raises(text: str) -> None:
    d = explain_error(text)
    assert d.exit_code in (0, 2)
    assert d.to_text("en") and d.to_text("sv") and d.to_json("en")


@given(
    st.one_of(st.binary(max_size=600), REPLY_LIKE.map(lambda s: s.replace("\n", "\r\n").encode()))
)
@settings(max_examples=200, deadline=None)
def test_client_reads_any_server_bytes_without_crashing(blob: bytes) -> None:
    a, b = socket.socketpair()
    try:
        a.sendall(blob)
        a.close()
        c = SMTPProbe("127.0.0.1", 0, timeout=1)
        c.conn = _LineConnection(b, Transcript(), 1)
        try:
            r = c.read_reply()
            assert isinstance(r, Reply) and 0 <= r.code <= 999
        except ProbeError as e:
            assert e.kind in ("closed", "protocol", "timeout")
    finally:
        b.close()
