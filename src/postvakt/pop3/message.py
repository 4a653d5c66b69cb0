"""A stored message as POP3 sends it.

Maildir files hold LF or CRLF line endings, whatever local delivery wrote.
POP3 (RFC 1939 §3) sends CRLF lines, a leading "." doubled, and ends with
".\r\n". The size in STAT/LIST/RETR is the size of the CRLF form before dot
stuffing (RFC 1939 §5: "the exact size of the message"), so `wire_size` and
`encode_message` use one normalisation and cannot disagree.
"""

from __future__ import annotations

import re

_BARE_LF = re.compile(rb"(?<!\r)\n")
_BARE_CR = re.compile(rb"\r(?!\n)")
_LEADING_DOT = re.compile(rb"^\.", re.MULTILINE)


def to_crlf(data: bytes) -> bytes:
    """Every line ending as CRLF (bare LF and bare CR alike), ending with a CRLF."""
    data = _BARE_CR.sub(b"\r\n", data)
    data = _BARE_LF.sub(b"\r\n", data)
    if data and not data.endswith(b"\r\n"):
        data += b"\r\n"
    return data


def wire_size(data: bytes) -> int:
    """Octets of the message in CRLF form: what LIST and STAT report."""
    return len(to_crlf(data))


def head_and_lines(data: bytes, lines: int) -> bytes:
    """The header, the blank line and the first `lines` body lines (RFC 1939 TOP)."""
    crlf = to_crlf(data)
    end = crlf.find(b"\r\n\r\n")
    if end < 0:
        return crlf
    header = crlf[: end + 4]
    body = crlf[end + 4 :]
    if lines <= 0 or not body:
        return header
    pos = 0
    for _ in range(lines):
        nxt = body.find(b"\r\n", pos)
        if nxt < 0:
            pos = len(body)
            break
        pos = nxt + 2
    return header + body[:pos]


def multiline(data: bytes) -> bytes:
    """CRLF data made into a POP3 multi-line body: dots stuffed, ".\r\n" at the end."""
    return _LEADING_DOT.sub(b"..", data) + b".\r\n"


def encode_message(data: bytes, lines: int | None = None) -> bytes:
    """The multi-line body for RETR (lines None) or TOP."""
    part = to_crlf(data) if lines is None else head_and_lines(data, lines)
    return multiline(part)
