"""Client-typed text as it may appear in a log line.

A log line is read by people and by programs (grep, fail2ban, log shippers).
A user name or password attempt typed by a client must not end the line
early (CR, LF), fake another line's fields, or flood the log: control
characters, the angle brackets that delimit it, and backslashes are escaped,
and it is cut short.
"""

from __future__ import annotations

# Longer than any real login (RFC 5321 §4.5.3.1: 64 + 1 + 255 for an address).
MAX_LOGGED = 320


def printable(text: str, limit: int = MAX_LOGGED) -> str:
    """`text` with every unprintable character, `<`, `>` and `\\` as a \\x.. escape."""
    out = []
    for ch in text[:limit]:
        if ch.isprintable() and ch not in "<>\\":
            out.append(ch)
        else:
            code = ord(ch)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
    return "".join(out) + ("..." if len(text) > limit else "")
