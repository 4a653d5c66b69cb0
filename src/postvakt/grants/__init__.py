"""State every front must see: POP-before-SMTP grants (here), rate counters
(`counters`) and the failed-login throttle (`logins`).

A grant says "this client address logged in to our POP3 server (or to the
Dovecot beside us, over IMAP) as this user, and may relay until then". The
POP3 front and the grant-report socket Dovecot's post-login script talks to
write grants, each naming the protocol of the login; the SMTP front reads
them at RCPT time and hands the one it found to the (pure) policy.

Stores sit behind one small interface; `postvakt.store` picks one by
`[store] state`. The memory store suits one process; the SQLite store
survives a restart and is shared by worker processes on one machine; the
Redis store (`postvakt.store.redis`) is the several-node form.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path
from typing import Protocol

from postvakt import sqlitedb
from postvakt.policy import Grant, GrantProtocol, grant_protocol

__all__ = [
    "Grant",
    "GrantStore",
    "MemoryGrantStore",
    "SqliteGrantStore",
]


class GrantStore(Protocol):
    def grant(
        self, ip: str, login: str, expires: float, protocol: GrantProtocol = "pop3"
    ) -> None: ...
    def lookup(self, ip: str, now: float) -> Grant | None: ...
    def all(self, now: float) -> list[Grant]: ...


class MemoryGrantStore:
    """Grants in this process's memory; gone after a restart.

    With `snapshot`, every change also rewrites that JSON file (atomically), so
    that `postvakt grants list` can show them from outside the server. The file
    is a view, never read back by the server.
    """

    def __init__(self, snapshot: Path | None = None, node: str = "") -> None:
        self._grants: dict[str, Grant] = {}
        self.snapshot = snapshot
        self.node = node
        if snapshot is not None:
            self._write_snapshot()

    def _write_snapshot(self) -> None:
        if self.snapshot is None:
            return
        tmp = self.snapshot.with_suffix(".tmp")
        rows = [
            {
                "ip": g.ip,
                "login": g.login,
                "expires": g.expires,
                "protocol": g.protocol,
                "node": g.node,
            }
            for g in self._grants.values()
        ]
        try:
            tmp.write_text(json.dumps(rows))
            tmp.replace(self.snapshot)
        except OSError:
            pass  # a view only: never let it break a login

    def grant(self, ip: str, login: str, expires: float, protocol: GrantProtocol = "pop3") -> None:
        self._grants[ip] = Grant(
            ip=ip, login=login, expires=expires, protocol=protocol, node=self.node
        )
        self._write_snapshot()

    @staticmethod
    def read_snapshot(path: Path, now: float) -> list[Grant]:
        try:
            rows = json.loads(path.read_text())
        except (OSError, ValueError):
            return []
        grants = []
        for r in rows if isinstance(rows, list) else []:
            try:
                grants.append(
                    Grant(
                        ip=str(r["ip"]),
                        login=str(r["login"]),
                        expires=float(r["expires"]),
                        # A snapshot from before the column existed holds POP3 grants only.
                        protocol=grant_protocol(r.get("protocol", "pop3")),
                        node=str(r.get("node", "")),
                    )
                )
            except (AttributeError, KeyError, TypeError, ValueError):
                continue  # a row this version did not write: the view shows the rest
        return sorted((g for g in grants if g.expires > now), key=lambda g: g.ip)

    def lookup(self, ip: str, now: float) -> Grant | None:
        g = self._grants.get(ip)
        if g is not None and g.expires <= now:
            del self._grants[ip]
            return None
        return g

    def all(self, now: float) -> list[Grant]:
        for ip in [ip for ip, g in self._grants.items() if g.expires <= now]:
            del self._grants[ip]
        return sorted(self._grants.values(), key=lambda g: g.ip)


class SqliteGrantStore:
    """Grants in data_dir/grants.sqlite3: survive restarts, shared by processes."""

    def __init__(self, path: Path, node: str = "") -> None:
        self._lock = threading.Lock()
        self.node = node
        self._db = sqlitedb.connect(path)
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS grants (ip TEXT PRIMARY KEY, login TEXT NOT NULL, "
            "expires REAL NOT NULL, protocol TEXT NOT NULL DEFAULT 'pop3', "
            "node TEXT NOT NULL DEFAULT '')"
        )
        _add_column(self._db, "protocol", "TEXT NOT NULL DEFAULT 'pop3'")
        _add_column(self._db, "node", "TEXT NOT NULL DEFAULT ''")

    def grant(self, ip: str, login: str, expires: float, protocol: GrantProtocol = "pop3") -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO grants(ip, login, expires, protocol, node) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT(ip) DO UPDATE SET login = excluded.login, "
                "expires = excluded.expires, protocol = excluded.protocol, node = excluded.node",
                (ip, login, expires, protocol, self.node),
            )

    def lookup(self, ip: str, now: float) -> Grant | None:
        with self._lock:
            row = self._db.execute(
                "SELECT ip, login, expires, protocol, node FROM grants WHERE ip = ? AND expires > ?",
                (ip, now),
            ).fetchone()
        return _row_grant(row) if row else None

    def all(self, now: float) -> list[Grant]:
        with self._lock:
            self._db.execute("DELETE FROM grants WHERE expires <= ?", (now,))
            rows = self._db.execute(
                "SELECT ip, login, expires, protocol, node FROM grants ORDER BY ip"
            ).fetchall()
        return [_row_grant(r) for r in rows]


def _row_grant(row: tuple[str, str, float, str, str]) -> Grant:
    return Grant(
        ip=row[0], login=row[1], expires=row[2], protocol=grant_protocol(row[3]), node=row[4]
    )


def _add_column(db: sqlite3.Connection, name: str, definition: str) -> None:
    """A grants table from before a column gets it (old grants: POP3, node unknown)."""
    columns = {str(r[1]) for r in db.execute("PRAGMA table_info(grants)")}
    if name in columns:
        return
    try:
        db.execute(f"ALTER TABLE grants ADD COLUMN {name} {definition}")
    except sqlite3.OperationalError:
        # Another process added it first ("duplicate column name"); anything else is real.
        if name not in {str(r[1]) for r in db.execute("PRAGMA table_info(grants)")}:
            raise
