"""The generator's PostgreSQL branch against Debian's dovecot-pgsql and the machine's PostgreSQL.

postvakt's directory cannot live in PostgreSQL yet (`[store] directory`
comes with the several-node work), so this test builds the users table in
the shape postvakt's SQLite directory has, in a database of its own, fills
it with an Argon2id hash the way postvakt makes them, and lets the
generator's pgsql branch point Dovecot at it: logins, a wrong password and
a password change behave as with SQLite.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from argon2 import PasswordHasher
from imap_client import imap_login, login_fails, uid_of
from stack import Stack

from postvakt import config as config_mod
from postvakt.config import HostPort
from postvakt.dovecot import Listeners, PostgresDirectory, setup_for, write

PG = "postgresql://postgres@127.0.0.1:5432"
PSQL = shutil.which("psql")
USER = "alice@pv.test"


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
        # The shape of postvakt's directory (src/postvakt/directory: users).
        psql(
            "CREATE TABLE users (address TEXT PRIMARY KEY, password_hash TEXT NOT NULL, "
            "created REAL NOT NULL DEFAULT 0)",
            name,
        )
        yield name
    finally:
        psql(f"DROP DATABASE {name} WITH (FORCE)")


def test_dovecot_authenticates_against_a_postgresql_directory(database: str) -> None:
    hasher = PasswordHasher()
    psql(
        f"INSERT INTO users(address, password_hash) VALUES ('{USER}', '{hasher.hash('pg pw')}')",
        database,
    )
    stack = Stack.create()
    try:
        stack.write_dovecot_config()
        assert stack.conf_dir is not None
        cfg = config_mod.load(stack.config_path)
        setup = setup_for(
            cfg,
            stack.conf_dir,
            cert=cfg.data_dir / "tls" / "cert.pem",
            key=cfg.data_dir / "tls" / "key.pem",
            listeners=Listeners(
                imap=(HostPort("127.0.0.1", stack.imap_port),),
                imaps=(HostPort("127.0.0.1", stack.imaps_port),),
            ),
            base_dir=stack.root / "run",
        )
        write(replace(setup, directory=PostgresDirectory(f"{PG}/{database}")))
        sql = (stack.conf_dir / "dovecot-sql.conf.ext").read_text()
        assert "driver = pgsql\n" in sql and f"dbname={database}" in sql
        # A message in the Maildir, as postvakt's delivery leaves it.
        new = stack.maildir(USER) / "new"
        new.mkdir(parents=True)
        msg = new / "1700000000.M1P1Q1.pgtest"
        msg.write_bytes(b"Subject: from pg\nMessage-ID: <pg-1@other.example>\n\npg-1\n")
        for p in (stack.mail_dir / "pv.test", stack.maildir(USER), new, msg):
            os.chown(p, stack.uid, stack.gid)
        stack.run_dovecot()

        m = imap_login(stack.imaps_port, "ALICE@pv.test", "pg pw")
        try:
            m.select("INBOX", readonly=True)
            assert uid_of(m, "pg-1") is not None
        finally:
            m.logout()
        assert login_fails(stack.imaps_port, USER, "wrong")
        psql(f"UPDATE users SET password_hash = '{hasher.hash('new pg pw')}'", database)
        assert login_fails(stack.imaps_port, USER, "pg pw")
        imap_login(stack.imaps_port, USER, "new pg pw").logout()
    finally:
        stack.close()
