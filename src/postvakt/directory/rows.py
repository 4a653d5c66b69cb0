"""Where the directory's rows live: the narrow interface and its SQLite form.

`postvakt.directory.Directory` holds the rules (canonical addresses, alias
expansion, postmaster, who may send as whom); a `Rows` only stores and
finds rows. The PostgreSQL form is in `postvakt.directory.postgres`.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Protocol

from postvakt import sqlitedb

# The SQLite schema's version (PRAGMA user_version); `postvakt store migrate` reports it.
SQLITE_SCHEMA_VERSION = 1

SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    address TEXT PRIMARY KEY,
    password_hash TEXT NOT NULL,
    created REAL NOT NULL DEFAULT (strftime('%s','now'))
);
CREATE TABLE IF NOT EXISTS aliases (
    alias TEXT NOT NULL,
    target TEXT NOT NULL,
    PRIMARY KEY (alias, target)
);
CREATE TABLE IF NOT EXISTS sendas (
    login TEXT NOT NULL,
    address TEXT NOT NULL,
    PRIMARY KEY (login, address)
);
"""


class SchemaError(Exception):
    """The database's schema is not the one this version needs (the message says what to run)."""


class DirectoryUnavailable(Exception):
    """The user database cannot be reached now: answer "try again later", never "no such user"."""


class Rows(Protocol):
    """Every method may raise DirectoryUnavailable."""

    def password_hash(self, address: str) -> str | None: ...
    def users(self) -> list[str]: ...
    def alias_targets(self, alias: str) -> list[str]: ...
    def aliases(self) -> list[tuple[str, str]]: ...
    def sendas(self, login: str) -> list[str]: ...
    def add_user(self, address: str, password_hash: str) -> None: ...
    def set_password(self, address: str, password_hash: str) -> None: ...
    def delete_user(self, address: str) -> None: ...
    def add_alias(self, alias: str, target: str) -> None: ...
    def delete_alias(self, alias: str, target: str | None) -> int: ...
    def add_sendas(self, login: str, address: str) -> None: ...
    def delete_sendas(self, login: str, address: str) -> int: ...
    def close(self) -> None: ...


class SqliteRows:
    """data_dir/directory.sqlite3: one connection, guarded by a lock."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlitedb.connect(path)
        self._db.executescript(SQLITE_SCHEMA)
        if self._version() < SQLITE_SCHEMA_VERSION:
            self._db.execute(f"PRAGMA user_version = {SQLITE_SCHEMA_VERSION}")

    def _version(self) -> int:
        return int(self._db.execute("PRAGMA user_version").fetchone()[0])

    @property
    def schema_version(self) -> int:
        with self._lock:
            return self._version()

    def _q(self, sql: str, args: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
        with self._lock:
            return list(self._db.execute(sql, args).fetchall())

    def _n(self, sql: str, args: tuple[object, ...]) -> int:
        with self._lock:
            return int(self._db.execute(sql, args).rowcount)

    def password_hash(self, address: str) -> str | None:
        rows = self._q("SELECT password_hash FROM users WHERE address = ?", (address,))
        return str(rows[0][0]) if rows else None

    def users(self) -> list[str]:
        return [str(r[0]) for r in self._q("SELECT address FROM users ORDER BY address")]

    def alias_targets(self, alias: str) -> list[str]:
        return [str(r[0]) for r in self._q("SELECT target FROM aliases WHERE alias = ?", (alias,))]

    def aliases(self) -> list[tuple[str, str]]:
        return [
            (str(a), str(t))
            for a, t in self._q("SELECT alias, target FROM aliases ORDER BY alias, target")
        ]

    def sendas(self, login: str) -> list[str]:
        return [
            str(r[0])
            for r in self._q(
                "SELECT address FROM sendas WHERE login = ? ORDER BY address", (login,)
            )
        ]

    def add_user(self, address: str, password_hash: str) -> None:
        try:
            self._q(
                "INSERT INTO users(address, password_hash) VALUES (?, ?)", (address, password_hash)
            )
        except sqlite3.IntegrityError:
            raise KeyError(address) from None

    def set_password(self, address: str, password_hash: str) -> None:
        self._q("UPDATE users SET password_hash = ? WHERE address = ?", (password_hash, address))

    def delete_user(self, address: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM users WHERE address = ?", (address,))
            self._db.execute("DELETE FROM sendas WHERE login = ?", (address,))

    def add_alias(self, alias: str, target: str) -> None:
        self._q("INSERT OR IGNORE INTO aliases(alias, target) VALUES (?, ?)", (alias, target))

    def delete_alias(self, alias: str, target: str | None) -> int:
        if target is None:
            return self._n("DELETE FROM aliases WHERE alias = ?", (alias,))
        return self._n("DELETE FROM aliases WHERE alias = ? AND target = ?", (alias, target))

    def add_sendas(self, login: str, address: str) -> None:
        self._q("INSERT OR IGNORE INTO sendas(login, address) VALUES (?, ?)", (login, address))

    def delete_sendas(self, login: str, address: str) -> int:
        return self._n("DELETE FROM sendas WHERE login = ? AND address = ?", (login, address))

    def close(self) -> None:
        with self._lock:
            self._db.close()
