"""The POP3 session summary (the `pop3 disconnect` line): each command issued,
and where some failed, how many succeeded; the SASL exchange is one AUTH."""

from __future__ import annotations

import base64

import pytest
from pop3_core_driver import CoreDriver

GOOD = base64.b64encode(b"\0alice@pv.test\0secret").decode()
BAD = base64.b64encode(b"\0alice@pv.test\0wrong").decode()

CASES = {
    "download-and-delete": (
        "USER alice@pv.test\r\nPASS secret\r\nSTAT\r\nRETR 1\r\nDELE 1\r\nQUIT\r\n",
        "user=1 pass=1 stat=1 retr=1 dele=1 quit=1 commands=6",
    ),
    "wrong-password-then-right": (
        "USER alice@pv.test\r\nPASS wrong\r\nUSER alice@pv.test\r\nPASS secret\r\nQUIT\r\n",
        "user=2 pass=1/2 quit=1 commands=4/5",
    ),
    "sasl-two-steps": (
        f"AUTH PLAIN\r\n{BAD}\r\nAUTH PLAIN {GOOD}\r\nLIST\r\nQUIT\r\n",
        "auth=1/2 list=1 quit=1 commands=3/4",
    ),
    "unknown-and-wrong-state": (
        "FOO\r\nSTAT\r\nCAPA\r\nQUIT\r\n",
        "capa=1 stat=0/1 quit=1 unknown=0/1 commands=2/4",
    ),
}


@pytest.mark.parametrize(("text", "summary"), list(CASES.values()), ids=list(CASES))
def test_pop3_summary(text: str, summary: str) -> None:
    d = CoreDriver()
    for b in text.encode():  # byte by byte: the counts must not depend on the split
        d.feed(bytes([b]))
    assert d.conn.command_summary() == summary


def test_pop3_summary_of_a_silent_client() -> None:
    assert CoreDriver().conn.command_summary() == "commands=0"
