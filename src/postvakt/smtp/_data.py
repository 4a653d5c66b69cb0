"""Reading the message after DATA: strict end, dot-unstuffing, content checks.

Rules of the house:
- Only <CRLF>.<CRLF> ends the message (RFC 5321 §4.1.1.4). Every other
  "end" (LF.LF, CR.CR, CRLF.LF, ...; SMTP smuggling, CVE-2023-51764,
  CVE-2024-27305) stays inside the message, and its bare CR or LF makes the
  whole message refused: the smuggled "second transaction" is never read
  as commands.
- A problem never ends the message early: the reader goes on to the real
  end, discarding, so the session stays in sync (RFC 5321 §4.2.5 lets the
  reply wait for the end of data).
- The scan works on whole chunks with bytes methods (find, count, replace,
  split), never a Python loop per byte. The reader keeps at most the few
  bytes that could start the terminator, plus a bounded header section.
"""

from __future__ import annotations

from postvakt.reply import Reply
from postvakt.smtp import replies

TERMINATOR = b"\r\n.\r\n"
# The message starts at the beginning of a line, as if after a CRLF; the
# reader pretends that CRLF is there so "." on the first line is seen too.
_VIRTUAL_START = b"\r\n"

# RFC 5321 §4.5.3.1.6: a text line is at most 1000 octets including CRLF;
# the dot added by transparency (§4.5.2) is not part of the text.
MAX_TEXT_LINE = 1000 - 2
# What we accept, though ([smtp] max_line_length): real mail has longer lines
# (generated HTML, one paragraph per line), and Postfix takes lines of any
# length (its line_length_limit of 2048 only cuts them into queue records and
# joins them again at delivery). A bound is still worth having: a "message"
# with no line structure at all is a broken client or not mail. 64 KiB is far
# beyond any generated line seen in practice, and costs no memory (the reader
# counts a line, it never holds one). Lines are kept intact in the queue and
# in local delivery; relaying to a peer folds them for its 998-octet limit.
DEFAULT_MAX_LINE_LENGTH = 64 * 1024
# Header section kept for From:/Sender:/Received: checks. A chain of 50
# Received: headers (Postfix's hopcount_limit) is about 15 KiB; 64 KiB is
# generous for real mail and bounds what one session holds in memory.
MAX_HEADER_SECTION = 64 * 1024


def _partial_terminator(data: bytes) -> int:
    """Length of the longest tail of `data` that could begin the terminator."""
    for k in range(len(TERMINATOR) - 1, 0, -1):
        if data.endswith(TERMINATOR[:k]):
            return k
    return 0


def parse_header_section(section: bytes) -> tuple[tuple[str, str], ...]:
    """RFC 5322 §2.2 header fields -> (name, unfolded value); junk lines are skipped."""
    headers: list[tuple[str, str]] = []
    text = section.decode("utf-8", "replace")
    for line in text.split("\r\n"):
        if not line:
            continue
        if line[0] in " \t":
            if headers:
                name, value = headers[-1]
                headers[-1] = (name, value + line)
            continue
        name, colon, value = line.partition(":")
        name = name.rstrip(" \t")
        if not colon or not name or any(ch in name for ch in " \t"):
            continue
        headers.append((name, value))
    return tuple((name, value.strip(" \t")) for name, value in headers)


def header_section_of(message: bytes) -> tuple[tuple[tuple[str, str], ...], bool]:
    """The header fields the reader keeps of a whole message, and whether they are all.

    For a message that did not come over SMTP (`postvakt explain --message`):
    lines end in CRLF (a file's bare LFs are taken as line ends) and are not
    dot-stuffed. The reader itself reads it, so the end-of-data checks see
    exactly what they see in a live session.
    """
    text = message.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    if not text.endswith(b"\r\n"):
        text += b"\r\n"
    stuffed = (b"\r\n" + text).replace(b"\r\n.", b"\r\n..")[2:]
    reader = DataReader(max_size=len(stuffed) + 1, max_hops=len(stuffed), max_line=0)
    reader.consume(bytearray(stuffed + b".\r\n"))
    return reader.headers, reader.headers_complete


class DataReader:
    """One message, fed from the connection's buffer until <CRLF>.<CRLF>."""

    def __init__(
        self, max_size: int, max_hops: int, max_line: int = DEFAULT_MAX_LINE_LENGTH
    ) -> None:
        self.max_size = max_size
        self.max_hops = max_hops
        # Octets in one text line, CRLF and transparency dot not counted; 0: no limit.
        self.max_line = max_line
        self.size = 0
        self.problem: Reply | None = None
        self.headers: tuple[tuple[str, str], ...] = ()
        # False when the header section was longer than MAX_HEADER_SECTION and
        # `headers` holds only its beginning: a From: further down is unseen.
        self.headers_complete = True
        self._tail = _VIRTUAL_START
        self._skip = len(_VIRTUAL_START)
        self._line = 0  # length of the unfinished text line so far
        self._in_headers = True
        self._header_buf = bytearray()
        self._header_scan = 0

    def consume(self, buf: bytearray) -> tuple[bytes, bool]:
        """Take what can be decided from `buf`.

        Returns the message bytes to pass on (empty once a problem is found)
        and whether the message ended; what follows the end stays in `buf`.
        """
        data = self._tail + bytes(buf)
        buf.clear()
        end = data.find(TERMINATOR)
        if end >= 0:
            body = data[: end + 2]
            buf += data[end + len(TERMINATOR) :]
            self._tail = b""
        else:
            keep = _partial_terminator(data)
            body = data[: len(data) - keep]
            self._tail = data[len(data) - keep :]
        out = self._process(body)
        if end >= 0:
            self._finish()
            if self.problem is not None:
                out = b""
        return out, end >= 0

    def _process(self, body: bytes) -> bytes:
        if not body:
            return b""
        unstuffed = body.replace(b"\r\n.", b"\r\n")
        message = unstuffed[self._skip :] if self._skip else unstuffed
        self._skip = 0
        self.size += len(message)
        if self.problem is not None:
            return b""
        crlf = body.count(b"\r\n")
        if body.count(b"\r") != crlf or body.count(b"\n") != crlf:
            self.problem = replies.BARE_CR_LF_IN_DATA
        elif b"\x00" in body:
            self.problem = replies.NUL_IN_DATA
        elif self.max_line and self._line_too_long(unstuffed):
            self.problem = replies.data_line_too_long(self.max_line)
        elif self.size > self.max_size:
            self.problem = replies.MESSAGE_TOO_BIG
        if self.problem is None and self._in_headers:
            self._collect_headers(message)
        return b"" if self.problem is not None else message

    def _line_too_long(self, unstuffed: bytes) -> bool:
        if self._line + len(unstuffed) <= self.max_line:
            last = unstuffed.rfind(b"\r\n")
            self._line = self._line + len(unstuffed) if last < 0 else len(unstuffed) - last - 2
            return False
        lines = unstuffed.split(b"\r\n")
        first = self._line + len(lines[0])
        self._line = len(lines[-1])
        longest = max(map(len, lines[1:]), default=0)
        return max(first, longest) > self.max_line

    def _collect_headers(self, message: bytes) -> None:
        room = max(0, MAX_HEADER_SECTION + 2 - len(self._header_buf))
        self._header_buf += message[:room]
        hb = self._header_buf
        if hb.startswith(b"\r\n"):
            self._end_headers(b"")
            return
        end = hb.find(b"\r\n\r\n", max(0, self._header_scan - 3))
        self._header_scan = len(hb)
        if end >= 0:
            self._end_headers(bytes(hb[: end + 2]))
        elif len(hb) >= MAX_HEADER_SECTION:
            self.headers_complete = False
            cut = hb.rfind(b"\r\n", 0, MAX_HEADER_SECTION)
            self._end_headers(bytes(hb[: cut + 2]) if cut >= 0 else b"")

    def _end_headers(self, section: bytes) -> None:
        self._in_headers = False
        self._header_buf = bytearray()
        self.headers = parse_header_section(section)
        hops = sum(1 for name, _ in self.headers if name.lower() == "received")
        if hops > self.max_hops and self.problem is None:
            self.problem = replies.TOO_MANY_HOPS

    def _finish(self) -> None:
        if self._in_headers and self.problem is None:
            # The whole message is a header section (no empty line).
            self._end_headers(bytes(self._header_buf))
