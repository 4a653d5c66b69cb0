"""The stores of one node: notice de-duplication and (no) mailbox locks.

On one node the POP3 mailbox lock is the Maildir's own `flock`
(`postvakt.mailbox.maildir`); only the Redis form adds a lock that holds
across nodes.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Protocol

from postvakt import sqlitedb

# Keys of notices told in the current window kept in memory; older windows go first.
MAX_NOTICES = 10_000


class StateUnavailable(Exception):
    """The shared state store cannot be reached now (the message says why)."""


class NoticeStore(Protocol):
    def claim(self, key: str, until: float, now: float) -> bool:
        """True for the first caller per key until `until` (one notice per window)."""
        ...


class LockStore(Protocol):
    def acquire(self, name: str, owner: str) -> bool:
        """Take the lock for `owner`; False if another owner holds it (or it cannot be known)."""
        ...

    def release(self, name: str, owner: str) -> None: ...


class MemoryNoticeStore:
    """Notices told by this process."""

    def __init__(self) -> None:
        self._told: dict[str, float] = {}
        self._lock = threading.Lock()

    def claim(self, key: str, until: float, now: float) -> bool:
        with self._lock:
            if self._told.get(key, 0.0) > now:
                return False
            if len(self._told) >= MAX_NOTICES:
                self._told = {k: v for k, v in self._told.items() if v > now}
            self._told[key] = until
            return True


class SqliteNoticeStore:
    """Notices told by any process of this node, in data_dir/notices.sqlite3."""

    blocking = True

    def __init__(self, path: Path) -> None:
        self._lock = threading.Lock()
        self._db = sqlitedb.connect(path)
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS notices (key TEXT PRIMARY KEY, until REAL NOT NULL)"
        )

    def claim(self, key: str, until: float, now: float) -> bool:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute("SELECT until FROM notices WHERE key = ?", (key,)).fetchone()
                if row is not None and float(row[0]) > now:
                    self._db.execute("COMMIT")
                    return False
                self._db.execute("DELETE FROM notices WHERE until <= ?", (now,))
                self._db.execute(
                    "INSERT OR REPLACE INTO notices(key, until) VALUES (?, ?)", (key, until)
                )
                self._db.execute("COMMIT")
                return True
            except BaseException:
                self._db.execute("ROLLBACK")
                raise


class NoLocks:
    """One node: the Maildir's flock is the whole lock."""

    def acquire(self, name: str, owner: str) -> bool:
        return True

    def release(self, name: str, owner: str) -> None:
        return None
