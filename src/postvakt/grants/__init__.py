"""State every front must see: POP-before-SMTP grants (here), rate counters
(`counters`) and the failed-login throttle (`logins`).

A grant says "this client address logged in to our POP3 server as this user,
and may relay until then". The POP3 front writes grants; the SMTP front reads
them at RCPT time and hands the one it found to the (pure) policy.

Stores sit behind one small interface. The memory store suits one process;
the SQLite store survives a restart and is shared by worker processes on one
machine; a Redis store is the several-node form.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from postvakt import sqlitedb
from postvakt.policy import Grant

if TYPE_CHECKING:
    from postvakt.config import Config

__all__ = [
    "Grant",
    "GrantStore",
    "MemoryGrantStore",
    "SqliteGrantStore",
    "list_grants",
    "open_grant_store",
]


class GrantStore(Protocol):
    def grant(self, ip: str, login: str, expires: float) -> None: ...
    def lookup(self, ip: str, now: float) -> Grant | None: ...
    def all(self, now: float) -> list[Grant]: ...


class MemoryGrantStore:
    """Grants in this process's memory; gone after a restart.

    With `snapshot`, every change also rewrites that JSON file (atomically), so
    that `postvakt grants list` can show them from outside the server. The file
    is a view, never read back by the server.
    """

    def __init__(self, snapshot: Path | None = None) -> None:
        self._grants: dict[str, Grant] = {}
        self.snapshot = snapshot
        if snapshot is not None:
            self._write_snapshot()

    def _write_snapshot(self) -> None:
        if self.snapshot is None:
            return
        tmp = self.snapshot.with_suffix(".tmp")
        rows = [{"ip": g.ip, "login": g.login, "expires": g.expires} for g in self._grants.values()]
        try:
            tmp.write_text(json.dumps(rows))
            tmp.replace(self.snapshot)
        except OSError:
            pass  # a view only: never let it break a login

    def grant(self, ip: str, login: str, expires: float) -> None:
        self._grants[ip] = Grant(ip=ip, login=login, expires=expires)
        self._write_snapshot()

    @staticmethod
    def read_snapshot(path: Path, now: float) -> list[Grant]:
        try:
            rows = json.loads(path.read_text())
        except (OSError, ValueError):
            return []
        grants = [
            Grant(ip=str(r["ip"]), login=str(r["login"]), expires=float(r["expires"])) for r in rows
        ]
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

    def __init__(self, path: Path) -> None:
        self._lock = threading.Lock()
        self._db = sqlitedb.connect(path)
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS grants (ip TEXT PRIMARY KEY, login TEXT NOT NULL, expires REAL NOT NULL)"
        )

    def grant(self, ip: str, login: str, expires: float) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO grants(ip, login, expires) VALUES (?, ?, ?) "
                "ON CONFLICT(ip) DO UPDATE SET login = excluded.login, expires = excluded.expires",
                (ip, login, expires),
            )

    def lookup(self, ip: str, now: float) -> Grant | None:
        with self._lock:
            row = self._db.execute(
                "SELECT ip, login, expires FROM grants WHERE ip = ? AND expires > ?", (ip, now)
            ).fetchone()
        return Grant(ip=row[0], login=row[1], expires=row[2]) if row else None

    def all(self, now: float) -> list[Grant]:
        with self._lock:
            self._db.execute("DELETE FROM grants WHERE expires <= ?", (now,))
            rows = self._db.execute("SELECT ip, login, expires FROM grants ORDER BY ip").fetchall()
        return [Grant(ip=r[0], login=r[1], expires=r[2]) for r in rows]


def open_grant_store(config: Config) -> GrantStore:
    if config.relay.grant_store == "sqlite":
        return SqliteGrantStore(config.data_dir / "grants.sqlite3")
    return MemoryGrantStore(snapshot=config.data_dir / "grants.json")


def list_grants(config: Config, now: float) -> list[Grant]:
    """What `postvakt grants list` shows, from outside the server."""
    if config.relay.grant_store == "sqlite":
        return SqliteGrantStore(config.data_dir / "grants.sqlite3").all(now)
    return MemoryGrantStore.read_snapshot(config.data_dir / "grants.json", now)
