"""The one way postvakt opens its SQLite files (users, grants, counters)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

# How long a writer waits for another process's write lock before failing.
BUSY_TIMEOUT_MS = 5000


def connect(path: Path) -> sqlite3.Connection:
    """A connection in autocommit mode that threads may share (callers keep
    their own lock), in WAL mode so that readers in other processes, such as
    the CLI next to a running server, never wait for a writer."""
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    return db
