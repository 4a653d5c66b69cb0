"""Client-typed text in a log line: one line, no fake delimiters, bounded."""

from __future__ import annotations

import json
import logging

from postvakt.logtext import printable
from postvakt.server.process import JSONFormatter


def test_line_breaks_brackets_and_backslashes_are_escaped() -> None:
    assert printable("alice@pv.test") == "alice@pv.test"
    assert printable("a\r\nb") == "a\\x0d\\x0ab"
    assert printable("x> mechanism=PLAIN ok") == "x\\x3e mechanism=PLAIN ok"
    assert printable("<a\\b>") == "\\x3ca\\x5cb\\x3e"
    assert printable("\u2028") == "\\u2028"
    assert printable("åäö") == "åäö"


def test_long_text_is_cut() -> None:
    out = printable("a" * 10_000)
    assert len(out) == 320 + 3 and out.endswith("...")
    assert printable("abcdef", 3) == "abc..."


def test_json_lines_carry_the_text_message() -> None:
    record = logging.LogRecord(
        "postvakt.smtp", logging.INFO, __file__, 1, "AUTH client=%s failed", ("::1",), None
    )
    entry = json.loads(JSONFormatter().format(record))
    assert entry["msg"] == "AUTH client=::1 failed"
    assert entry["level"] == "info" and entry["logger"] == "postvakt.smtp"
    assert entry["time"].endswith("Z") and "T" in entry["time"]
