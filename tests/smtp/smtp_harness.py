"""Drive the sans-IO SMTP core without sockets, with a tiny in-test application.

Transcripts are lines:
- `C: text`  the client sends `text` + CRLF;
- `C~ text`  the client sends `text` with Python escapes (`\\r`, `\\n`, `\\x00`) and no CRLF added;
- `S: text`  the server answers `text` + CRLF;
- `S~ text`  the server answers `text` with Python escapes and no CRLF added
             (for bytes a stripped line cannot show, as the space of `334 `);
- `E: repr`  an event the application saw (DataChunks of one message are merged);
- `A: reply` the application's answer to the next event that needs one, in
             place of the default application (`answer`);
- `--`       the client waits here for every reply so far (after DATA, after STARTTLS).

Each segment's client bytes are fed one of three ways (one chunk, byte by
byte, given split points) and the replies produced by the end of the
segment must equal its `S:` lines exactly.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from postvakt.reply import Reply
from postvakt.smtp import (
    NEED_DATA,
    PAUSED,
    AuthCredentials,
    DataChunk,
    DataStart,
    EndOfData,
    MailFrom,
    RcptTo,
    Settings,
    SMTPServer,
    StartTLS,
)

HOST = "mx.pv.test"
SETTINGS = Settings(
    hostname=HOST,
    max_message_size=10_000,
    max_recipients=5,
    soft_error_limit=10,
    hard_error_limit=20,
    max_hops=5,
    tls_available=True,
)
BANNER = f"220 {HOST} ESMTP postvakt"
EHLO_LINES = [
    f"250-{HOST}",
    "250-PIPELINING",
    "250-SIZE 10000",
    "250-8BITMIME",
    "250-SMTPUTF8",
    "250-ENHANCEDSTATUSCODES",
    "250-DSN",
]

# Well-formed reply line: 3 digits, then end, space or dash (RFC 5321 §4.2).
REPLY_LINE = re.compile(rb"^[2-5][0-9][0-9](?:[ -][^\r\n]*)?$")


def settings(**changes: object) -> Settings:
    return replace(SETTINGS, **changes)  # type: ignore[arg-type]


def answer(event: object) -> Reply | None:
    """The in-test application: accepts everything except a few telling names."""
    if isinstance(event, MailFrom):
        if event.sender.local == "refuse":
            return Reply(550, "5.7.1", f"<{event.sender}>: Sender address rejected")
        return Reply(250, "2.1.0", "Ok")
    if isinstance(event, RcptTo):
        if event.recipient.local.startswith("unknown"):
            return Reply(
                550, "5.1.1", f"<{event.recipient}>: Recipient address rejected: User unknown"
            )
        if event.recipient.local == "later":
            return Reply(450, "4.2.0", f"<{event.recipient}>: try again later")
        return Reply(250, "2.1.5", "Ok")
    if isinstance(event, DataStart):
        return Reply(354, "", "End data with <CR><LF>.<CR><LF>")
    if isinstance(event, EndOfData):
        return event.problem or Reply(250, "2.0.0", "Ok: queued as TEST")
    if isinstance(event, AuthCredentials):
        if event.username == "alice" and event.password == "secret":
            return Reply(235, "2.7.0", "Authentication successful")
        return Reply(535, "5.7.8", "Authentication credentials invalid")
    return None


@dataclass
class Driver:
    """A connection plus the application answering its events at once."""

    settings: Settings = SETTINGS
    app: Callable[[object], Reply | None] = answer
    start_tls: bool = True  # finish the handshake as soon as StartTLS is seen
    events: list[object] = field(default_factory=list)
    scripted: list[Reply] = field(default_factory=list)  # answers used before `app`

    def __post_init__(self) -> None:
        self.conn = SMTPServer(self.settings)
        self.out = bytearray()

    def feed(self, data: bytes) -> None:
        self.conn.receive_data(data)
        self.pump()

    def pump(self) -> None:
        while True:
            event = self.conn.next_event()
            if event is NEED_DATA:
                break
            if event is PAUSED:
                raise AssertionError("PAUSED although every event was answered")
            self.events.append(event)
            reply = self.app(event)
            if reply is not None and self.scripted:
                reply = self.scripted.pop(0)
            if reply is not None:
                self.conn.respond(reply)
            if isinstance(event, StartTLS) and self.start_tls:
                self.conn.tls_started()
        self.out += self.conn.data_to_send()

    def take(self) -> bytes:
        self.out += self.conn.data_to_send()
        out = bytes(self.out)
        self.out.clear()
        return out

    def lines(self) -> list[str]:
        return self.take().decode("utf-8", "replace").split("\r\n")[:-1]

    def kinds(self) -> list[str]:
        return [type(e).__name__ for e in self.events]

    def message(self) -> bytes:
        return b"".join(e.data for e in self.events if isinstance(e, DataChunk))

    def ends(self) -> list[EndOfData]:
        return [e for e in self.events if isinstance(e, EndOfData)]


def merged_events(events: Sequence[object]) -> list[str]:
    """Event reprs with the DataChunks of one message merged (they depend on splits)."""
    out: list[str] = []
    chunk = b""
    for e in events:
        if isinstance(e, DataChunk):
            chunk += e.data
            continue
        if chunk:
            out.append(repr(DataChunk(chunk)))
            chunk = b""
        out.append(repr(e))
    if chunk:
        out.append(repr(DataChunk(chunk)))
    return out


@dataclass
class Segment:
    client: bytes = b""
    server: bytes = b""


@dataclass
class Transcript:
    segments: list[Segment]
    events: list[str] | None  # None: the transcript does not list events
    answers: list[Reply] = field(default_factory=list)


def parse(text: str) -> Transcript:
    segments = [Segment()]
    events: list[str] = []
    answers: list[Reply] = []
    for raw in text.strip("\n").split("\n"):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line == "--":
            segments.append(Segment())
        elif line.startswith("C: ") or line == "C:":
            segments[-1].client += line[3:].encode("utf-8") + b"\r\n"
        elif line.startswith("C~ "):
            segments[-1].client += (
                line[3:].encode("latin-1").decode("unicode_escape").encode("latin-1")
            )
        elif line.startswith("S: ") or line == "S:":
            segments[-1].server += line[3:].encode("utf-8") + b"\r\n"
        elif line.startswith("S~ "):
            segments[-1].server += (
                line[3:].encode("latin-1").decode("unicode_escape").encode("latin-1")
            )
        elif line.startswith("E: "):
            events.append(line[3:])
        elif line.startswith("A: "):
            code, enhanced, rest = (line[3:].split(" ", 2) + ["", ""])[:3]
            if not enhanced[:1].isdigit():
                enhanced, rest = "", f"{enhanced} {rest}".strip()
            answers.append(Reply(int(code), enhanced, rest))
        else:
            raise ValueError(f"bad transcript line: {raw!r}")
    return Transcript(segments, events or None, answers)


Splitter = Callable[[bytes], list[bytes]]


def one_chunk(data: bytes) -> list[bytes]:
    return [data] if data else []


def byte_by_byte(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


def split_at(points: Sequence[int]) -> Splitter:
    def split(data: bytes) -> list[bytes]:
        cuts = sorted({p % (len(data) + 1) for p in points} | {0, len(data)})
        return [data[a:b] for a, b in zip(cuts, cuts[1:], strict=False) if b > a]

    return split


def run(text: str, split: Splitter, config: Settings = SETTINGS) -> Driver:
    transcript = parse(text)
    driver = Driver(config, scripted=list(transcript.answers))
    for n, segment in enumerate(transcript.segments):
        for piece in split(segment.client):
            driver.feed(piece)
        driver.pump()
        got = driver.take()
        want = segment.server.decode("utf-8").split("\r\n")
        assert (n, got.decode("utf-8", "replace").split("\r\n")) == (n, want)
    if transcript.events is not None:
        assert merged_events(driver.events) == transcript.events
    return driver
