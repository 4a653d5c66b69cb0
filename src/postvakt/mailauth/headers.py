"""The header section of a message as bytes: read fields, drop fields.

Pure (bytes in, bytes out). Used where the whole message is at hand anyway:
the queue manager before delivery, the checks at the end of DATA.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from postvakt.mailauth.results import AUTH_RESULTS, authserv_id_of

_FIELD_NAME = re.compile(rb"^([!-9;-~]+)[ \t]*:")


def _header_end(message: bytes) -> int:
    """Offset just past the blank line that ends the header section (or the end)."""
    ends = [
        (i, n) for i, n in ((message.find(b"\r\n\r\n"), 4), (message.find(b"\n\n"), 2)) if i >= 0
    ]
    if not ends:
        return len(message)
    at, length = min(ends)
    return at + length


def _fields(header: bytes) -> list[bytes]:
    """The raw fields (with their folded continuation lines and line ends)."""
    out: list[bytes] = []
    for line in header.splitlines(keepends=True):
        if line[:1] in (b" ", b"\t") and out:
            out[-1] += line
        else:
            out.append(line)
    return out


def _name_value(raw: bytes) -> tuple[str, str] | None:
    m = _FIELD_NAME.match(raw)
    if not m:
        return None
    name = m.group(1).decode("ascii", "replace")
    value = raw[m.end() :].decode("utf-8", "surrogateescape")
    return name, " ".join(value.split())


def header_fields(message: bytes) -> list[tuple[str, str]]:
    """(name, unfolded value) for each field of the header section, in order."""
    end = _header_end(message)
    out = []
    for raw in _fields(message[:end]):
        nv = _name_value(raw)
        if nv is not None:
            out.append(nv)
    return out


def remove_fields(message: bytes, drop: Callable[[str, str], bool]) -> tuple[bytes, int]:
    """The message without the header fields `drop(name, value)` picks, and how many."""
    end = _header_end(message)
    kept: list[bytes] = []
    dropped = 0
    for raw in _fields(message[:end]):
        nv = _name_value(raw)
        if nv is not None and drop(*nv):
            dropped += 1
            continue
        kept.append(raw)
    if not dropped:
        return message, 0
    return b"".join(kept) + message[end:], dropped


def strip_auth_results(message: bytes, authserv_id: str) -> tuple[bytes, int]:
    """RFC 8601 §5: drop Authentication-Results: fields that claim our authserv-id
    (anyone outside could write one to fool a filter that trusts us)."""
    end = _header_end(message)
    if b"uthentication-results" not in message[:end].lower():
        return message, 0
    ours = authserv_id.lower()
    name = AUTH_RESULTS.lower()
    return remove_fields(message, lambda n, v: n.lower() == name and authserv_id_of(v) == ours)
