"""The session summary line's counts (Postfix's `disconnect from ... ehlo=1 mail=1
rcpt=0/1 ... commands=3/4`), from the sans-IO core: a command counts as issued
when read, and as succeeded when its final reply (not 334 or 354) is 2xx/3xx."""

from __future__ import annotations

import base64

import pytest
from smtp_harness import Driver

AUTH_PLAIN = base64.b64encode(b"\0alice\0secret").decode()

CASES = {
    "postfix-example": (
        "EHLO c.example\r\nMAIL FROM:<a@x.example>\r\nRCPT TO:<b@pv.test>\r\nDATA\r\n"
        "--Subject: x\r\n\r\nbody\r\n.\r\nQUIT\r\n",
        "ehlo=1 mail=1 rcpt=1 data=1 quit=1 commands=5",
    ),
    "refused-rcpt": (
        "EHLO c.example\r\nMAIL FROM:<a@x.example>\r\nRCPT TO:<unknown@pv.test>\r\n"
        "RCPT TO:<b@pv.test>\r\nQUIT\r\n",
        "ehlo=1 mail=1 rcpt=1/2 quit=1 commands=4/5",
    ),
    "unknown-and-bad-sequence": (
        "XYZZY\r\nMAIL FROM:<a@x.example>\r\nHELO c.example\r\nNOOP\r\nQUIT\r\n",
        "helo=1 mail=0/1 noop=1 quit=1 unknown=0/1 commands=3/5",
    ),
    "silent-client": ("", "commands=0"),
    "auth-in-two-steps": (
        f"EHLO c.example\r\nAUTH PLAIN\r\n{AUTH_PLAIN}\r\nAUTH PLAIN {AUTH_PLAIN}\r\nQUIT\r\n",
        "ehlo=1 auth=1/2 quit=1 commands=3/4",
    ),
    "data-refused-after-354": (
        "EHLO c.example\r\nMAIL FROM:<a@x.example>\r\nRCPT TO:<b@pv.test>\r\nDATA\r\n--"
        + "X-Long: "
        + "y" * 20_000
        + "\r\n\r\n.\r\nQUIT\r\n",
        "ehlo=1 mail=1 rcpt=1 data=0/1 quit=1 commands=4/5",
    ),
}


@pytest.mark.parametrize(("text", "summary"), list(CASES.values()), ids=list(CASES))
def test_summary_counts_each_command_once_by_its_final_reply(text: str, summary: str) -> None:
    d = Driver(start_tls=True)
    # AUTH needs TLS: the transcripts run as after a STARTTLS.
    d.conn.tls = True
    # "--": the client waits for the replies so far (after DATA: for the 354).
    for segment in text.split("--"):
        d.feed(segment.encode())
    assert d.conn.command_summary() == summary


def test_summary_is_the_same_byte_by_byte() -> None:
    text, summary = CASES["refused-rcpt"]
    d = Driver()
    for b in text.encode():
        d.feed(bytes([b]))
    assert d.conn.command_summary() == summary
