"""The one way postvakt opens its SQLite files (users, grants, counters)."""

from __future__ import annotations

import os
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
    if os.geteuid() == 0:
        _same_owner_as_directory(path)
    return db


def _same_owner_as_directory(path: Path) -> None:
    """A command run as root (`user add`, `check`) must not leave the database or its WAL
    and shared-memory files to root: the server, running as its own user, could no longer
    open them. They take the owner of the directory they are in."""
    try:
        st = path.parent.stat()
    except OSError:
        return
    for p in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        try:
            own = p.lstat()
            if (own.st_uid, own.st_gid) != (st.st_uid, st.st_gid):
                os.lchown(p, st.st_uid, st.st_gid)
        except OSError:
            continue
