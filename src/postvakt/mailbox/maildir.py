"""A POP3 session's view of one Maildir: lock, snapshot, read, delete.

Rules of the house:
- Local delivery writes messages into `new/` (via `tmp/`); this module moves
  them into `cur/` with the `:2,` info suffix at login, as Dovecot and Courier
  do. Nothing else here writes into the Maildir.
- A message's UIDL is its Maildir unique name (the file name before `:`).
  Unique names never change when the file moves from `new/` to `cur/` or its
  flags change, and delivery never reuses one, so UIDs are stable across
  sessions and restarts and never come back (RFC 1939 §7). A unique name that
  is not a valid UIDL (RFC 1939: 1-70 characters 0x21-0x7E) is replaced by a
  digest of it, which is just as stable.
- The snapshot is taken once, at login: mail that arrives during the session
  is seen in the next one.
- One session per mailbox: an exclusive `flock` on `postvakt-pop3.lock` in the
  Maildir. The kernel drops it when the descriptor is closed or the process
  dies, so a crashed server never leaves a mailbox locked, and it works
  across worker processes.
- A file that disappears behind our back (another client, an admin) is a
  missing message, never an exception that escapes; one that moves (Dovecot's
  IMAP renames a file to set its flags, docs/imap.md) is found again by its
  unique name, also when it moves while we delete it.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from postvakt.pop3 import MessageInfo, wire_size

LOCK_NAME = "postvakt-pop3.lock"
# A message another reader (Dovecot, setting flags) renames between our lookup
# and our unlink is looked up again; each rename is one IMAP command, so a
# few tries outlast any client.
UNLINK_ATTEMPTS = 5
# RFC 1939 §7 (UIDL): "The unique-id of a message is an arbitrary server-
# determined string, consisting of one to 70 characters in the range 0x21 to 0x7E".
UID_MAX = 70
_UID_OK = re.compile(r"^[\x21-\x7e]{1,70}$")
# Dovecot's Maildir name field ",W=<n>": the size with CRLF line endings.
_VIRTUAL_SIZE = re.compile(r",W=(\d+)")
_LEADING_TIME = re.compile(r"^(\d+)")


# Errors that stay until an admin acts (RFC 3206 [SYS/PERM]); any other OSError
# (disk full, I/O error, too many open files) may pass by itself ([SYS/TEMP]).
_PERMANENT_ERRNOS = frozenset(
    {errno.ENOTDIR, errno.EEXIST, errno.EACCES, errno.EPERM, errno.ELOOP, errno.EROFS}
)


class MailboxError(Exception):
    """The Maildir cannot be opened or read; `permanent` when retrying cannot help."""

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


def _error(path: Path, doing: str, e: OSError) -> MailboxError:
    return MailboxError(
        f"{path}: cannot {doing}: {e.strerror}", permanent=e.errno in _PERMANENT_ERRNOS
    )


class MailboxLocked(MailboxError):
    """Another session holds this mailbox."""


@dataclass(frozen=True)
class StoredMessage:
    uid: str
    name: str  # unique name: the file name before ":"
    path: Path
    size: int


def unique_name(filename: str) -> str:
    return filename.split(":", 1)[0]


def uid_for(name: str) -> str:
    """The UIDL for a Maildir unique name (itself when it is a valid UIDL)."""
    if _UID_OK.match(name) and len(name) <= UID_MAX:
        return name
    return "h" + hashlib.sha256(name.encode("utf-8", "surrogateescape")).hexdigest()[:40]


def ensure_maildir(path: Path) -> None:
    for sub in ("tmp", "new", "cur"):
        (path / sub).mkdir(mode=0o700, parents=True, exist_ok=True)


class MaildirMailbox:
    def __init__(self, path: Path, lock_fd: int, messages: list[StoredMessage]) -> None:
        self.path = path
        self._lock_fd: int | None = lock_fd
        # Called once when the lock is released (the lock across nodes, if any).
        self.on_close: Callable[[], None] | None = None
        self.messages = messages
        self._by_uid = {m.uid: m for m in messages}

    # ------------------------------------------------------------ session start

    @classmethod
    def open(cls, path: Path) -> MaildirMailbox:
        """Lock the mailbox and take the snapshot. Raises MailboxLocked or MailboxError."""
        try:
            ensure_maildir(path)
            fd = os.open(path / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as e:
            raise _error(path, "open", e) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise MailboxLocked(str(path)) from None
            raise _error(path, "lock", e) from None
        try:
            messages = _snapshot(path)
        except OSError as e:
            os.close(fd)
            raise _error(path, "read", e) from None
        return cls(path, fd, messages)

    def infos(self) -> list[MessageInfo]:
        return [MessageInfo(m.uid, m.size) for m in self.messages]

    # ------------------------------------------------------------ during the session

    def _current_path(self, m: StoredMessage) -> Path | None:
        if m.path.exists():
            return m.path
        # Flags changed (or moved to cur/) by another reader: find it by unique name.
        for sub in ("cur", "new"):
            try:
                names = os.listdir(self.path / sub)
            except OSError:
                continue
            for fn in names:
                if unique_name(fn) == m.name:
                    return self.path / sub / fn
        return None

    def read(self, uid: str) -> bytes | None:
        """The message's bytes, or None when it is gone."""
        m = self._by_uid.get(uid)
        if m is None:
            return None
        for _ in range(2):  # one retry: it may move between finding and opening
            p = self._current_path(m)
            if p is None:
                return None
            try:
                return p.read_bytes()
            except FileNotFoundError:
                continue
            except OSError as e:
                raise _error(p, "read", e) from None
        return None

    # ------------------------------------------------------------ UPDATE state

    def delete(self, uids: tuple[str, ...] | list[str]) -> bool:
        """Remove these messages; True when none is left behind. Gone already counts as removed."""
        all_gone = True
        for uid in uids:
            m = self._by_uid.get(uid)
            if m is not None and not self._unlink(m):
                all_gone = False
        _fsync_dir(self.path / "cur")
        return all_gone

    def _unlink(self, m: StoredMessage) -> bool:
        """Remove one message wherever it is now; True when it is gone."""
        for _ in range(UNLINK_ATTEMPTS):
            p = self._current_path(m)
            if p is None:
                return True
            try:
                p.unlink()
                return True
            except FileNotFoundError:
                continue  # renamed by an IMAP client's flag change meanwhile: find it again
            except OSError:
                return False
        return self._current_path(m) is None

    def close(self) -> None:
        """Release the lock. Idempotent; also what the kernel does if the process dies."""
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            os.close(fd)
            on_close, self.on_close = self.on_close, None
            if on_close is not None:
                on_close()

    @property
    def locked(self) -> bool:
        return self._lock_fd is not None


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _snapshot(path: Path) -> list[StoredMessage]:
    new, cur = path / "new", path / "cur"
    moved = False
    for fn in os.listdir(new):
        if fn.startswith("."):
            continue
        target = fn if ":" in fn else fn + ":2,"
        try:
            os.rename(new / fn, cur / target)
            moved = True
        except FileNotFoundError:
            continue
    if moved:
        _fsync_dir(cur)
        _fsync_dir(new)
    found: list[tuple[tuple[int, int, str], StoredMessage]] = []
    seen: set[str] = set()
    for fn in os.listdir(cur):
        if fn.startswith("."):
            continue
        p = cur / fn
        name = unique_name(fn)
        uid = uid_for(name)
        if uid in seen:
            continue  # two files, one unique name: not a Maildir writer we know; keep the first
        try:
            st = p.stat()
        except FileNotFoundError:
            continue
        m = _VIRTUAL_SIZE.search(name)
        if m:
            size = int(m.group(1))
        else:
            try:
                size = wire_size(p.read_bytes())
            except FileNotFoundError:
                continue
        seen.add(uid)
        t = _LEADING_TIME.match(name)
        # Delivery order: Maildir names start with the delivery time in seconds;
        # within one second the file's mtime (written once, in tmp/) decides.
        key = (int(t.group(1)) if t else int(st.st_mtime), st.st_mtime_ns, name)
        found.append((key, StoredMessage(uid, name, p, size)))
    found.sort(key=lambda x: x[0])
    return [m for _, m in found]
