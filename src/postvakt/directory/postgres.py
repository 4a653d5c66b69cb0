"""The user directory in PostgreSQL (`[store] directory = "postgresql://..."`).

The tables have the SQLite directory's shape (users, aliases, sendas), so
Dovecot's pgsql driver reads the same users (`postvakt.dovecot`).

Schema: MIGRATIONS, numbered from 1. `postvakt store migrate` applies the
missing ones, each in its own transaction, under an advisory lock so that
two nodes migrating at once take turns. A server or command refuses to work
on an older schema and names the command.

Changes everywhere: a trigger on each table NOTIFYs the channel CHANNEL with
"<table> <key>" for every changed row, whoever changed it (postvakt on any
node, `store copy`, an admin in psql).

Server processes (`live=True`) answer from a mirror of the three tables in
memory: AUTH, MAIL and RCPT never wait on the network on the event loop, and
the credential cache (keyed on the stored hash) sees a new hash as soon as
the mirror does. One thread per process LISTENs, reloads the key each
notification names, and checks the connection every HEALTH_INTERVAL. So a
password change, a deleted user or a changed alias reaches every process of
every node one notification's trip after its commit (milliseconds; the
tests measure it, docs/deployment.md gives the bound). When the connection
is lost the mirror is not trusted (DirectoryUnavailable: AUTH 454, RCPT 451)
until the thread is connected again and has reloaded everything, since
notifications sent meanwhile are lost. A silent network failure is noticed
within HEALTH_INTERVAL plus `[store] timeout`.

The mirror holds every user's hash: about 200 bytes a user, 20 MB per
process for 100,000 users.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool

from postvakt.directory.rows import DirectoryUnavailable, Rows, SchemaError

log = logging.getLogger("postvakt.directory")

CHANNEL = "postvakt_directory"
# Idle, the listener checks its connection this often (and so notices a dead server).
HEALTH_INTERVAL = 1.0
# After a failed connect, the listener tries again this often.
RETRY_INTERVAL = 1.0
# Any number; the migrations of every postvakt node take this advisory lock.
MIGRATION_LOCK = 0x706F7374  # "post"
# Connections a command-line process keeps (one is in use at a time).
POOL_SIZE = 2

MIGRATIONS: tuple[tuple[int, tuple[str, ...]], ...] = (
    (
        1,
        (
            "CREATE TABLE users (address text PRIMARY KEY, password_hash text NOT NULL,"
            " created double precision NOT NULL DEFAULT extract(epoch FROM now()))",
            "CREATE TABLE aliases (alias text NOT NULL, target text NOT NULL,"
            " PRIMARY KEY (alias, target))",
            "CREATE TABLE sendas (login text NOT NULL, address text NOT NULL,"
            " PRIMARY KEY (login, address))",
        ),
    ),
    (
        2,
        (
            # TG_ARGV[0] names the key column; an UPDATE that moves a key tells both keys.
            f"""CREATE FUNCTION postvakt_directory_changed() RETURNS trigger
            LANGUAGE plpgsql AS $$
            BEGIN
              IF TG_OP <> 'INSERT' THEN
                PERFORM pg_notify('{CHANNEL}', TG_TABLE_NAME || ' ' || (to_jsonb(OLD) ->> TG_ARGV[0]));
              END IF;
              IF TG_OP <> 'DELETE' THEN
                PERFORM pg_notify('{CHANNEL}', TG_TABLE_NAME || ' ' || (to_jsonb(NEW) ->> TG_ARGV[0]));
              END IF;
              RETURN NULL;
            END $$""",
            f"""CREATE FUNCTION postvakt_directory_truncated() RETURNS trigger
            LANGUAGE plpgsql AS $$
            BEGIN
              PERFORM pg_notify('{CHANNEL}', '*');
              RETURN NULL;
            END $$""",
            *(
                stmt
                for table, key in (("users", "address"), ("aliases", "alias"), ("sendas", "login"))
                for stmt in (
                    f"CREATE TRIGGER {table}_changed AFTER INSERT OR UPDATE OR DELETE ON {table}"
                    f" FOR EACH ROW EXECUTE FUNCTION postvakt_directory_changed('{key}')",
                    f"CREATE TRIGGER {table}_truncated AFTER TRUNCATE ON {table}"
                    " FOR EACH STATEMENT EXECUTE FUNCTION postvakt_directory_truncated()",
                )
            ),
        ),
    ),
)
SCHEMA_VERSION = MIGRATIONS[-1][0]


def _connect_args(timeout: float) -> dict[str, Any]:
    """Timeouts on connect, on every statement, and on a silent network (libpq's own)."""
    ms = int(timeout * 1000)
    return {
        "connect_timeout": max(1, round(timeout)),
        "options": f"-c statement_timeout={ms} -c lock_timeout={ms}",
        "tcp_user_timeout": ms,
        "keepalives": 1,
        "keepalives_idle": max(1, round(timeout)),
        "keepalives_interval": 1,
        "keepalives_count": 3,
        "application_name": "postvakt",
    }


def _where(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        user_part, _, host_part = rest.rpartition("@")
        rest = f"{user_part.partition(':')[0]}@{host_part}"
    return f"{scheme}{sep}{rest}"


def schema_version(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT to_regclass('postvakt_schema') IS NOT NULL").fetchone()
    if not row or not row[0]:
        return 0
    row = conn.execute("SELECT max(version) FROM postvakt_schema").fetchone()
    return int(row[0] or 0) if row else 0


def migrate(url: str, timeout: float) -> tuple[int, int]:
    """Bring the schema up to SCHEMA_VERSION; (version before, version after)."""
    try:
        with psycopg.connect(url, **_connect_args(max(timeout, 30.0))) as conn:
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
                conn.execute(
                    "CREATE TABLE IF NOT EXISTS postvakt_schema (version integer NOT NULL)"
                )
                before = schema_version(conn)
            current = before
            for number, statements in MIGRATIONS:
                with conn.transaction():
                    conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
                    current = schema_version(conn)
                    if number <= current:
                        continue
                    for stmt in statements:
                        conn.execute(stmt.encode())  # ours, not user input
                    conn.execute("INSERT INTO postvakt_schema(version) VALUES (%s)", (number,))
                    current = number
            return before, current
    except psycopg.OperationalError as e:
        raise DirectoryUnavailable(
            f"directory {_where(url)} unreachable: {_first_line(e)}"
        ) from None


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def check_schema(conn: psycopg.Connection[Any], url: str) -> None:
    version = schema_version(conn)
    if version < SCHEMA_VERSION:
        raise SchemaError(
            f"directory {_where(url)} has schema version {version}, this postvakt needs "
            f"{SCHEMA_VERSION}: run `postvakt store migrate`"
        )
    if version > SCHEMA_VERSION:
        raise SchemaError(
            f"directory {_where(url)} has schema version {version}, newer than this "
            f"postvakt knows ({SCHEMA_VERSION}): upgrade postvakt"
        )


class PostgresRows:
    """The directory's rows in PostgreSQL.

    `live=False` (commands): every call is a query on a small pool.
    `live=True` (server processes): reads come from the mirror, writes go to
    the database (the mirror learns them by notification like everyone else).
    """

    def __init__(self, url: str, *, timeout: float, live: bool) -> None:
        self.url = url
        self.where = _where(url)
        self.timeout = timeout
        self.live = live
        self._pool = ConnectionPool(
            url,
            min_size=0,
            max_size=POOL_SIZE,
            timeout=timeout,
            kwargs={**_connect_args(timeout), "autocommit": True},
            open=False,
        )
        self._pool.open(wait=False)
        self._lock = threading.Lock()
        self._users: dict[str, str] = {}
        self._aliases: dict[str, list[str]] = {}
        self._sendas: dict[str, list[str]] = {}
        self._ready = False
        self._down_since: float | None = None
        self._stop = threading.Event()
        self._loaded = threading.Event()
        self._thread: threading.Thread | None = None
        self._schema_problem = ""
        self.changes_applied = 0
        if live:
            self._thread = threading.Thread(
                target=self._listen_loop, name="directory-listener", daemon=True
            )
            self._thread.start()
            # A node that starts while PostgreSQL is down still starts (and says 454/451).
            self._loaded.wait(timeout + 1.0)
            if self._schema_problem:
                self.close()
                raise SchemaError(self._schema_problem)
        else:
            self._check()

    # ------------------------------------------------------------ plumbing

    def _check(self) -> None:
        with self._conn() as conn:
            check_schema(conn, self.url)

    def _conn(self) -> Any:
        try:
            return self._pool.connection(timeout=self.timeout)
        except Exception as e:  # the pool's own timeout error, or a failed connect
            raise DirectoryUnavailable(
                f"directory {self.where} unreachable: {_first_line(e)}"
            ) from None

    def _q(self, sql: str, args: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
        try:
            with self._conn() as conn:
                cur = conn.execute(sql, args)
                return list(cur.fetchall()) if cur.description else []
        except psycopg.errors.UniqueViolation:
            raise
        except (psycopg.OperationalError, psycopg.errors.QueryCanceled) as e:
            raise DirectoryUnavailable(
                f"directory {self.where} unreachable: {_first_line(e)}"
            ) from None

    def _n(self, sql: str, args: tuple[object, ...]) -> int:
        try:
            with self._conn() as conn:
                return int(conn.execute(sql, args).rowcount)
        except (psycopg.OperationalError, psycopg.errors.QueryCanceled) as e:
            raise DirectoryUnavailable(
                f"directory {self.where} unreachable: {_first_line(e)}"
            ) from None

    def _mirror(self) -> None:
        if not self._ready:
            raise DirectoryUnavailable(f"directory {self.where} unreachable")

    # ------------------------------------------------------------ the listener

    def _listen_loop(self) -> None:
        while not self._stop.is_set():
            try:
                with psycopg.connect(self.url, autocommit=True, **_connect_args(self.timeout)) as c:
                    c.execute(f"LISTEN {CHANNEL}")
                    check_schema(c, self.url)
                    self._load_all(c)
                    self._up()
                    while not self._stop.is_set():
                        # Out of the generator before querying: it holds the connection.
                        got = [n.payload for n in c.notifies(timeout=HEALTH_INTERVAL, stop_after=1)]
                        for payload in dict.fromkeys(got):
                            self._apply(c, payload)
                        if not got:
                            c.execute("SELECT 1")
            except SchemaError as e:
                self._schema_problem = str(e)
                self._down(str(e))
            except (psycopg.Error, OSError) as e:
                self._down(_first_line(e))
            finally:
                self._loaded.set()
            self._stop.wait(RETRY_INTERVAL)

    def _up(self) -> None:
        with self._lock:
            since, self._down_since = self._down_since, None
            self._ready = True
        self._loaded.set()
        if since is not None:
            log.warning(
                "directory %s reachable again after %.0f s (reloaded)",
                self.where,
                time.monotonic() - since,
            )

    def _down(self, why: str) -> None:
        with self._lock:
            self._ready = False
            first = self._down_since is None
            if first:
                self._down_since = time.monotonic()
        if first:
            log.error(
                "directory %s unreachable: %s; logins get 454 and local recipients 451 until it is back",
                self.where,
                why,
            )

    def _load_all(self, c: psycopg.Connection[Any]) -> None:
        users = {str(a): str(h) for a, h in c.execute("SELECT address, password_hash FROM users")}
        aliases: dict[str, list[str]] = {}
        for a, t in c.execute("SELECT alias, target FROM aliases ORDER BY alias, target"):
            aliases.setdefault(str(a), []).append(str(t))
        sendas: dict[str, list[str]] = {}
        for lg, a in c.execute("SELECT login, address FROM sendas ORDER BY login, address"):
            sendas.setdefault(str(lg), []).append(str(a))
        with self._lock:
            self._users, self._aliases, self._sendas = users, aliases, sendas

    def _apply(self, c: psycopg.Connection[Any], payload: str) -> None:
        table, _, key = payload.partition(" ")
        if payload == "*":
            self._load_all(c)
        elif table == "users":
            row = c.execute("SELECT password_hash FROM users WHERE address = %s", (key,)).fetchone()
            with self._lock:
                if row is None:
                    self._users.pop(key, None)
                else:
                    self._users[key] = str(row[0])
        elif table == "aliases":
            targets = [
                str(r[0])
                for r in c.execute(
                    "SELECT target FROM aliases WHERE alias = %s ORDER BY target", (key,)
                )
            ]
            with self._lock:
                if targets:
                    self._aliases[key] = targets
                else:
                    self._aliases.pop(key, None)
        elif table == "sendas":
            addresses = [
                str(r[0])
                for r in c.execute(
                    "SELECT address FROM sendas WHERE login = %s ORDER BY address", (key,)
                )
            ]
            with self._lock:
                if addresses:
                    self._sendas[key] = addresses
                else:
                    self._sendas.pop(key, None)
        self.changes_applied += 1
        log.debug("directory change applied: %s", payload)

    # ------------------------------------------------------------ Rows

    def password_hash(self, address: str) -> str | None:
        if self.live:
            self._mirror()
            return self._users.get(address)
        rows = self._q("SELECT password_hash FROM users WHERE address = %s", (address,))
        return str(rows[0][0]) if rows else None

    def users(self) -> list[str]:
        if self.live:
            self._mirror()
            return sorted(self._users)
        return [str(r[0]) for r in self._q("SELECT address FROM users ORDER BY address")]

    def alias_targets(self, alias: str) -> list[str]:
        if self.live:
            self._mirror()
            return list(self._aliases.get(alias, ()))
        return [
            str(r[0])
            for r in self._q(
                "SELECT target FROM aliases WHERE alias = %s ORDER BY target", (alias,)
            )
        ]

    def aliases(self) -> list[tuple[str, str]]:
        if self.live:
            self._mirror()
            with self._lock:
                return sorted((a, t) for a, ts in self._aliases.items() for t in ts)
        return [
            (str(a), str(t))
            for a, t in self._q("SELECT alias, target FROM aliases ORDER BY alias, target")
        ]

    def sendas(self, login: str) -> list[str]:
        if self.live:
            self._mirror()
            return list(self._sendas.get(login, ()))
        return [
            str(r[0])
            for r in self._q(
                "SELECT address FROM sendas WHERE login = %s ORDER BY address", (login,)
            )
        ]

    def add_user(self, address: str, password_hash: str) -> None:
        try:
            self._q(
                "INSERT INTO users(address, password_hash) VALUES (%s, %s)",
                (address, password_hash),
            )
        except psycopg.errors.UniqueViolation:
            raise KeyError(address) from None

    def set_password(self, address: str, password_hash: str) -> None:
        self._q("UPDATE users SET password_hash = %s WHERE address = %s", (password_hash, address))

    def delete_user(self, address: str) -> None:
        try:
            with self._conn() as conn, conn.transaction():
                conn.execute("DELETE FROM users WHERE address = %s", (address,))
                conn.execute("DELETE FROM sendas WHERE login = %s", (address,))
        except (psycopg.OperationalError, psycopg.errors.QueryCanceled) as e:
            raise DirectoryUnavailable(
                f"directory {self.where} unreachable: {_first_line(e)}"
            ) from None

    def add_alias(self, alias: str, target: str) -> None:
        self._q(
            "INSERT INTO aliases(alias, target) VALUES (%s, %s) ON CONFLICT DO NOTHING",
            (alias, target),
        )

    def delete_alias(self, alias: str, target: str | None) -> int:
        if target is None:
            return self._n("DELETE FROM aliases WHERE alias = %s", (alias,))
        return self._n("DELETE FROM aliases WHERE alias = %s AND target = %s", (alias, target))

    def add_sendas(self, login: str, address: str) -> None:
        self._q(
            "INSERT INTO sendas(login, address) VALUES (%s, %s) ON CONFLICT DO NOTHING",
            (login, address),
        )

    def delete_sendas(self, login: str, address: str) -> int:
        return self._n("DELETE FROM sendas WHERE login = %s AND address = %s", (login, address))

    def load(
        self,
        users: Iterable[tuple[str, str]],
        aliases: Iterable[tuple[str, str]],
        sendas: Iterable[tuple[str, str]],
    ) -> None:
        """`store copy`: everything in one transaction, into an empty directory."""
        try:
            with self._conn() as conn, conn.transaction():
                n = conn.execute("SELECT count(*) FROM users").fetchone()[0]
                if n:
                    raise ValueError(f"directory {self.where} holds {n} users already")
                with conn.cursor() as cur:
                    cur.executemany(
                        "INSERT INTO users(address, password_hash) VALUES (%s, %s)", list(users)
                    )
                    cur.executemany(
                        "INSERT INTO aliases(alias, target) VALUES (%s, %s) ON CONFLICT DO NOTHING",
                        list(aliases),
                    )
                    cur.executemany(
                        "INSERT INTO sendas(login, address) VALUES (%s, %s) ON CONFLICT DO NOTHING",
                        list(sendas),
                    )
        except (psycopg.OperationalError, psycopg.errors.QueryCanceled) as e:
            raise DirectoryUnavailable(
                f"directory {self.where} unreachable: {_first_line(e)}"
            ) from None

    def close(self) -> None:
        self._stop.set()
        self._pool.close()


def open_rows(url: str, *, timeout: float, live: bool) -> Rows:
    """PostgresRows, with a connection or schema problem turned into one line."""
    try:
        return PostgresRows(url, timeout=timeout, live=live)
    except psycopg.Error as e:
        raise DirectoryUnavailable(f"directory {_where(url)}: {_first_line(e)}") from None
