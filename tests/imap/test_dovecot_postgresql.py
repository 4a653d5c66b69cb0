"""IMAP on a PostgreSQL directory: `[store] directory = "postgresql://..."`, Debian's
dovecot-pgsql and the machine's PostgreSQL.

The whole path an admin takes: `postvakt store migrate` makes the schema,
`postvakt user add` and `alias add` write the users into PostgreSQL,
`postvakt dovecot config` reads `[store] directory` and writes the pgsql
driver, Dovecot starts with what was written; postvakt delivers, Dovecot
shows it; a wrong password fails and `postvakt user passwd` counts at once.
"""

from __future__ import annotations

import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from imap_client import imap_login, login_fails, uid_of
from stack import Stack

PG = "postgresql://postgres@127.0.0.1:5432"
PSQL = shutil.which("psql")
USER = "alice@pv.test"
ALIAS = "info@pv.test"


def psql(sql: str, db: str = "postgres") -> str:
    assert PSQL is not None
    out = subprocess.run(
        [PSQL, f"{PG}/{db}", "-v", "ON_ERROR_STOP=1", "-qAtc", sql],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if out.returncode != 0:
        raise RuntimeError(out.stderr)
    return out.stdout


@pytest.fixture
def database() -> Iterator[str]:
    """An empty database of this test's own; postvakt makes the schema."""
    if PSQL is None:
        pytest.skip("psql (postgresql-client) is not installed")
    if not Path("/usr/lib/dovecot/modules/auth/libdriver_pgsql.so").exists():
        pytest.skip("Debian's dovecot-pgsql is not installed")
    try:
        psql("SELECT 1")
    except RuntimeError as e:
        pytest.skip(f"no PostgreSQL on 127.0.0.1:5432: {e}")
    name = f"pv_dovecot_{uuid.uuid4().hex[:12]}"
    psql(f"CREATE DATABASE {name}")
    try:
        yield name
    finally:
        psql(f"DROP DATABASE {name} WITH (FORCE)")


def test_dovecot_authenticates_against_a_postgresql_directory(database: str) -> None:
    stack = Stack.create(store={"directory": f"{PG}/{database}"})
    try:
        stack.cli("store", "migrate")
        stack.cli("user", "add", USER, "--password-stdin", input="pg pw\n")
        stack.cli("alias", "add", ALIAS, USER)
        # The users are in PostgreSQL, not in a SQLite file beside the config.
        assert psql("SELECT address FROM users", database).split() == [USER]
        assert not (stack.data_dir / "directory.sqlite3").exists()
        stack.start_postvakt()
        stack.start_dovecot()
        assert stack.conf_dir is not None
        sql = (stack.conf_dir / "dovecot-sql.conf.ext").read_text()
        assert "driver = pgsql\n" in sql and f"dbname={database}" in sql

        stack.deliver(USER, "pg-1")
        stack.deliver(ALIAS, "pg-2", mailbox=USER)  # an alias: mail in its target's Maildir
        m = imap_login(stack.imaps_port, "ALICE@pv.test", "pg pw")
        try:
            m.select("INBOX", readonly=True)
            assert uid_of(m, "pg-1") is not None and uid_of(m, "pg-2") is not None
        finally:
            m.logout()
        assert login_fails(stack.imaps_port, USER, "wrong")
        assert login_fails(stack.imaps_port, ALIAS, "pg pw")  # an alias is no login
        stack.cli("user", "passwd", USER, "--password-stdin", input="new pg pw\n")
        assert login_fails(stack.imaps_port, USER, "pg pw")
        imap_login(stack.imaps_port, USER, "new pg pw").logout()
    finally:
        stack.close()
