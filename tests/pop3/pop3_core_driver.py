"""Drive the sans-IO POP3 core without sockets: a Twisted-style in-memory backend.

Transcripts are `C:` (client) and `S:` (server) lines. `run_transcript` feeds
the client side in one of three ways (one chunk, byte by byte, given split
points) and compares the bytes the core produced with the `S:` lines.
STLS ends a segment: what a client sends after it travels only once the
handshake is over, so each segment is fed on its own.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from postvakt.pop3 import (
    NEED_DATA,
    PAUSED,
    Authenticate,
    Close,
    Fetch,
    MessageInfo,
    POP3Connection,
    Settings,
    StartTLS,
    Update,
    encode_message,
)

MESSAGE_1 = b"From: a@pv.test\nSubject: one\n\nline1\n.dot line\nlast\n"
# CRLF form: 17 + 14 + 2 + 7 + 11 + 6 octets
SIZE_1 = 57
MESSAGE_2 = b"Subject: two\r\n\r\nbody\r\n"
SIZE_2 = 22  # 14 + 2 + 6


@dataclass
class CoreDriver:
    settings: Settings = field(default_factory=lambda: Settings(plaintext_allowed=True))
    users: dict[str, str] = field(default_factory=lambda: {"alice@pv.test": "secret"})
    messages: list[tuple[str, bytes, int]] = field(
        default_factory=lambda: [("uid-1", MESSAGE_1, SIZE_1), ("uid-2", MESSAGE_2, SIZE_2)]
    )
    vanished: set[str] = field(default_factory=set)
    # Answer a Fetch as the server does: the message already encoded for the wire
    # (`encode_message` run by the caller, off its event loop).
    pre_encoded: bool = False

    def __post_init__(self) -> None:
        self.conn = POP3Connection(self.settings)
        self.out = bytearray(self.conn.data_to_send())
        self.events: list[object] = []
        self.deleted: tuple[str, ...] | None = None
        self.closed = False

    def feed(self, data: bytes) -> None:
        self.conn.receive_data(data)
        self.pump()

    def pump(self) -> None:
        conn = self.conn
        while True:
            ev = conn.next_event()
            if ev is NEED_DATA or ev is PAUSED:
                break
            self.events.append(ev)
            if isinstance(ev, Authenticate):
                good = self.users.get(ev.login) == ev.password
                if good and (not ev.authzid or ev.authzid == ev.login):
                    infos = [MessageInfo(uid, size) for uid, _, size in self.messages]
                    conn.login_ok(ev.login, infos)
                else:
                    conn.login_failed()
            elif isinstance(ev, StartTLS):
                self.out += conn.data_to_send()
                conn.tls_started()
            elif isinstance(ev, Fetch):
                data = {u: d for u, d, _ in self.messages}.get(ev.uid)
                if ev.uid in self.vanished:
                    data = None
                if self.pre_encoded and data is not None:
                    conn.message(data, encode_message(data, ev.lines))
                else:
                    conn.message(data)
            elif isinstance(ev, Update):
                self.deleted = ev.deleted
                conn.update_done(True)
            elif isinstance(ev, Close):
                self.closed = True
        self.out += conn.data_to_send()


def _unescape(text: str) -> bytes:
    """Transcript lines are raw strings: `\\x00`, `\\xff`, `\\x20` stand for those bytes."""
    return text.encode("latin-1").decode("unicode_escape").encode("latin-1")


def parse_transcript(text: str) -> tuple[list[bytes], bytes]:
    """(client segments, expected server bytes)."""
    segments: list[bytearray] = [bytearray()]
    expected = bytearray()
    for raw in text.strip("\n").splitlines():
        line = raw.lstrip()
        if not line:
            continue
        who, sep, rest = line.partition(":")
        rest = rest[1:] if rest.startswith(" ") else rest
        if who == "C" and sep:
            payload = _unescape(rest)
            segments[-1] += payload + b"\r\n"
            if payload.upper() == b"STLS":
                segments.append(bytearray())
        elif who == "S" and sep:
            expected += _unescape(rest) + b"\r\n"
        else:
            raise ValueError(f"bad transcript line {raw!r}")
    return [bytes(s) for s in segments if s], bytes(expected)


Splitter = Callable[[bytes], Iterable[bytes]]


def one_chunk(data: bytes) -> Iterable[bytes]:
    return [data]


def byte_by_byte(data: bytes) -> Iterable[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


def split_at(cuts: Sequence[int]) -> Splitter:
    def split(data: bytes) -> Iterable[bytes]:
        out, pos = [], 0
        for c in cuts:
            if pos >= len(data):
                break
            out.append(data[pos : pos + c])
            pos += c
        if pos < len(data):
            out.append(data[pos:])
        return out

    return split


def run_transcript(text: str, splitter: Splitter, driver: CoreDriver | None = None) -> CoreDriver:
    d = driver or CoreDriver()
    segments, expected = parse_transcript(text)
    for seg in segments:
        for chunk in splitter(seg):
            d.feed(chunk)
    assert bytes(d.out).decode("utf-8", "replace") == expected.decode("utf-8", "replace")
    return d
