"""Lines over RFC 5322's 998 octets (issue 16 point 11), against the real
`postvakt serve`: accepted up to `[smtp] max_line_length`, delivered to the
Maildir unchanged; beyond it, one clear reply after the final dot.
"""

from __future__ import annotations

import smtplib
from collections.abc import Iterator

import pytest

from support import LOCAL_DOMAIN, OUTSIDE_IP, Running, start_server, wait_maildir

ALICE = f"alice@{LOCAL_DOMAIN}"
LIMIT = 30_000


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    s = start_server(
        tmp_path_factory.mktemp("longlines"),
        users={ALICE: "pw"},
        smtp={"max_line_length": LIMIT},
    )
    yield s
    s.stop()


def send(srv: Running, body: bytes) -> None:
    with smtplib.SMTP("127.0.0.1", srv.port("smtp"), source_address=(OUTSIDE_IP, 0)) as c:
        c.sendmail("someone@other.example", [ALICE], body)


def test_a_long_generated_html_line_arrives_whole(srv: Running) -> None:
    line = b"<div>" + b"".join(b"<p>%d</p>" % i for i in range(2_500)) + b"</div>"
    assert 998 < len(line) <= LIMIT
    body = b"Subject: long-html\r\nContent-Type: text/html\r\n\r\n" + line + b"\r\n.x" + line
    send(srv, body + b"\r\n")
    msgs = wait_maildir(srv.data_dir, ALICE, containing=b"Subject: long-html")
    assert len(msgs) == 1
    assert b"\n" + line + b"\r\n" in msgs[0] or b"\n" + line + b"\n" in msgs[0]
    assert b".x" + line in msgs[0]


def test_a_line_beyond_the_bound_gets_a_clear_reply(srv: Running) -> None:
    body = b"Subject: too-long\r\n\r\n" + b"a" * (LIMIT + 1) + b"\r\n"
    with pytest.raises(smtplib.SMTPDataError) as e:
        send(srv, body)
    assert e.value.smtp_code == 554
    assert e.value.smtp_error == (
        f"5.6.0 Line too long: a line of the message exceeds {LIMIT} octets".encode()
    )
    assert not wait_maildir(srv.data_dir, ALICE, containing=b"Subject: too-long", timeout=1)
