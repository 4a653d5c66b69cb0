"""Local delivery into a Maildir (qmail's maildir(5) recipe).

Write the whole message into tmp/, fsync it, link it into new/, remove the tmp
name, fsync new/. A reader (POP3, mailbox.Maildir) only ever sees complete
files in new/ and cur/. Files are stored with LF line endings, the Maildir
convention that qmail-local, Postfix and Dovecot follow; POP3 turns them back
into CRLF.
"""

from __future__ import annotations

import itertools
import os
import socket
import threading
import time
from pathlib import Path

from postvakt.delivery import DeliveryError
from postvakt.reply import Reply

_seq = itertools.count()
_seq_lock = threading.Lock()
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
    return f"{now // 1_000_000_000}.M{(now // 1000) % 1_000_000}P{os.getpid()}Q{seq}.{_HOST}"


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


def deliver(maildir: Path, message: bytes, *, return_path: str, delivered_to: str) -> Path:
    """Deliver one copy; returns the path in new/. Raises DeliveryError."""
    target = delivered_to.encode("utf-8")
    if any(v.lower() == target.lower() for v in header_lines(message, b"delivered-to")):
        # The message has been here before: an alias loop through another system.
        raise DeliveryError(
            Reply(554, "5.4.6", f"Mail forwarding loop for <{delivered_to}>"), temporary=False
        )
    head = b"Return-Path: <%s>\nDelivered-To: %s\n" % (return_path.encode("utf-8"), target)
    data = head + message.replace(b"\r\n", b"\n")
    try:
        ensure_maildir(maildir)
        for _ in range(NAME_ATTEMPTS):
            name = _unique_name()
            tmp = maildir / "tmp" / name
            new = maildir / "new" / name
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                continue
            try:
                view = memoryview(data)
                while view:
                    n = os.write(fd, view)
                    view = view[n:]
                os.fsync(fd)
            except OSError:
                os.close(fd)
                os.unlink(tmp)
                raise
            os.close(fd)
            try:
                os.link(tmp, new)
            except FileExistsError:
                os.unlink(tmp)
                continue
            os.unlink(tmp)
            dfd = os.open(maildir / "new", os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
            return new
    except OSError as e:
        raise DeliveryError(Reply(451, "4.3.0", f"Mailbox write error: {e.strerror or e}")) from e
    raise DeliveryError(Reply(451, "4.3.0", "Mailbox write error: no unique file name"))
