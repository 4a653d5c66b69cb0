"""Local delivery into a Maildir (qmail's maildir(5) recipe).

Write the message into tmp/ piece by piece, fsync it, link it into new/,
remove the tmp name, fsync new/. A reader (POP3, mailbox.Maildir) only ever
sees complete files in new/ and cur/. Files are stored with LF line endings,
the Maildir convention that qmail-local, Postfix and Dovecot follow; POP3 turns
them back into CRLF. Lines are kept whole, however long: only the relay to
another server breaks them (`smtpclient.LINE_LENGTH_LIMIT`).

The name in new/ carries the sizes, as Dovecot writes them:
`<unique>,S=<octets in the file>,W=<octets in CRLF form>`. W is the size POP3
reports (RFC 1939 STAT/LIST), so a login lists a mailbox from its file names
without reading a message.
"""

from __future__ import annotations

import itertools
import os
import socket
import threading
import time
from pathlib import Path

from postvakt import pid
from postvakt.delivery import DeliveryError
from postvakt.delivery.source import MessageSource
from postvakt.reply import Reply

_seq = itertools.count()
_seq_lock = threading.Lock()
# Small pieces (the Return-Path: and Delivered-To: lines, the header, a small
# body) are gathered and written with one write up to this many octets.
WRITE_GATHER = 64 * 1024
# How many fresh names to try when one exists already (maildir(5): it "shouldn't happen").
NAME_ATTEMPTS = 5


def ensure_maildir(path: Path) -> None:
    for sub in ("tmp", "new", "cur"):
        (path / sub).mkdir(parents=True, exist_ok=True, mode=0o700)


# maildir(5): the host name in a file name, with "/" and ":" written in octal.
_HOST = socket.gethostname().replace("/", "\\057").replace(":", "\\072")


def _unique_name() -> str:
    with _seq_lock:
        seq = next(_seq)
    now = time.time_ns()
    return f"{now // 1_000_000_000}.M{(now // 1000) % 1_000_000}P{pid.current()}Q{seq}.{_HOST}"


def header_lines(message: bytes, name: bytes) -> list[bytes]:
    """Values of top-level header fields called `name` (case-insensitive)."""
    end = message.find(b"\n\n")
    end2 = message.find(b"\r\n\r\n")
    cut = min(x for x in (end, end2, len(message)) if x >= 0)
    prefix = name.lower() + b":"
    out = []
    for line in message[:cut].split(b"\n"):
        if line.lower().startswith(prefix):
            out.append(line[len(prefix) :].strip())
    return out


class LFConverter:
    """CRLF -> LF, piece by piece (a CR at the end of a piece waits for the
    next), counting the octets written (S=) and their CRLF form (W=): every
    LF and every CR not part of a CRLF counts as two octets there, and a last
    line without its end gets one, as `pop3.message.wire_size` counts them."""

    def __init__(self) -> None:
        self.size = 0
        self.wire = 0
        self._cr = False
        self._last = b""

    def feed(self, data: bytes) -> bytes:
        if self._cr:
            data = b"\r" + data
        self._cr = data.endswith(b"\r")
        if self._cr:
            data = data[:-1]
        return self._count(data.replace(b"\r\n", b"\n"))

    def end(self) -> bytes:
        out = self._count(b"\r" if self._cr else b"")
        self._cr = False
        if self.size and self._last not in (b"\r", b"\n"):
            self.wire += 2  # POP3 ends the last line for the client
        return out

    def _count(self, out: bytes) -> bytes:
        if out:
            crlf = out.count(b"\r\n")
            self.size += len(out)
            self.wire += len(out) + (out.count(b"\r") - crlf) + (out.count(b"\n") - crlf)
            if self._last == b"\r" and out[:1] == b"\n":
                self.wire -= 2  # a CR and an LF on both sides of a cut: one CRLF in the file
            self._last = out[-1:]
        return out


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _write_message(fd: int, head: bytes, message: MessageSource, lf: LFConverter) -> None:
    """The delivery lines, then the message in LF form, in as few writes as
    the pieces allow: a 1 KiB message is one write, not three."""
    gathered: list[bytes] = []
    size = 0
    for piece in itertools.chain((head,), message.chunks()):
        out = lf.feed(piece)
        gathered.append(out)
        size += len(out)
        if size >= WRITE_GATHER:
            _write_all(fd, b"".join(gathered))
            gathered.clear()
            size = 0
    gathered.append(lf.end())
    _write_all(fd, b"".join(gathered))


def _create(maildir: Path, tmp: str) -> int:
    """Open a new file in tmp/; the Maildir is made first when it is not there
    (a new user's first message). Trying first saves three mkdir calls on
    every delivery to a Maildir that exists."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    try:
        return os.open(tmp, flags, 0o600)
    except FileNotFoundError:
        ensure_maildir(maildir)
        return os.open(tmp, flags, 0o600)


def _link(maildir: Path, tmp: str, new: str) -> None:
    """tmp/ -> new/, making new/ and cur/ again when someone removed them."""
    try:
        os.link(tmp, new)
    except FileNotFoundError:
        if not os.path.exists(tmp):
            raise
        ensure_maildir(maildir)
        os.link(tmp, new)


def sync_new(new: Path | str) -> None:
    """fsync a Maildir's new/ directory: only then is a link made there
    durable. Raises DeliveryError."""
    try:
        fd = os.open(new, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as e:
        raise DeliveryError(_write_error(e)) from e


def _write_error(e: OSError) -> Reply:
    return Reply(451, "4.3.0", f"Mailbox write error: {e.strerror or e}")


def deliver(
    maildir: Path,
    message: MessageSource | bytes,
    *,
    return_path: str,
    delivered_to: str,
    sync: bool = True,
) -> Path:
    """Deliver one copy; returns the path in new/. Raises DeliveryError.
    The message's header must be whole in `message.prefix` (the loop check reads it).
    With `sync=False`, new/ is not fsynced: the caller does it (`sync_new`,
    once for several copies) and counts the copy as delivered only after it."""
    if isinstance(message, bytes):
        message = MessageSource.from_bytes(message)
    target = delivered_to.encode("utf-8")
    if any(v.lower() == target.lower() for v in header_lines(message.prefix, b"delivered-to")):
        # The message has been here before: an alias loop through another system.
        raise DeliveryError(
            Reply(554, "5.4.6", f"Mail forwarding loop for <{delivered_to}>"), temporary=False
        )
    head = b"Return-Path: <%s>\nDelivered-To: %s\n" % (return_path.encode("utf-8"), target)
    # Paths as text: pathlib's joins cost more than the rest of the bookkeeping.
    base = os.fspath(maildir)
    try:
        for _ in range(NAME_ATTEMPTS):
            name = _unique_name()
            tmp = f"{base}/tmp/{name}"
            try:
                fd = _create(maildir, tmp)
            except FileExistsError:
                continue
            lf = LFConverter()
            try:
                _write_message(fd, head, message, lf)
                os.fsync(fd)
            except OSError:
                os.close(fd)
                os.unlink(tmp)
                raise
            os.close(fd)
            new = f"{base}/new/{name},S={lf.size},W={lf.wire}"
            try:
                _link(maildir, tmp, new)
            except FileExistsError:
                os.unlink(tmp)
                continue
            os.unlink(tmp)
            if sync:
                sync_new(f"{base}/new")
            return Path(new)
    except OSError as e:
        raise DeliveryError(_write_error(e)) from e
    raise DeliveryError(Reply(451, "4.3.0", "Mailbox write error: no unique file name"))
