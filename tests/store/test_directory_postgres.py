"""The directory in PostgreSQL: the same answers as SQLite, migrations, `store
copy`, and changes reaching a live mirror by notification."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from postvakt.config import from_dict
from postvakt.directory import Directory, DirectoryError, SchemaError
from postvakt.directory.postgres import SCHEMA_VERSION, PostgresRows, migrate
from postvakt.directory.rows import SqliteRows
from support import postvakt, to_toml


def directories(tmp_path: Path, url: str) -> tuple[Directory, Directory]:
    migrate(url, 10)
    args = (tmp_path / "directory.sqlite3", ["pv.test"], "postmaster@pv.test", tmp_path)
    return Directory(*args), Directory(*args, rows=PostgresRows(url, timeout=5, live=False))


def test_postgresql_answers_as_sqlite(tmp_path: Path, pg_database: str) -> None:
    sq, pg = directories(tmp_path, pg_database)
    try:
        for d in (sq, pg):
            d.add_user("Alice@PV.test", "pw-a")
            d.add_user("bob@pv.test", "pw-b")
            d.add_alias("info@pv.test", "alice@pv.test")
            d.add_alias("info@pv.test", "carol@other.example")
            d.add_alias("team@pv.test", "info@pv.test")
            d.add_sendas("bob@pv.test", "news@pv.test")
            with pytest.raises(DirectoryError, match="exists already"):
                d.add_user("alice@pv.test", "again")
        for d in (sq, pg):
            assert d.users() == ["alice@pv.test", "bob@pv.test"]
            assert d.verify_password("ALICE@pv.test", "pw-a") == "alice@pv.test"
            assert d.verify_password("alice@pv.test", "wrong") is None
            assert sorted(d.resolve("team@pv.test")) == ["alice@pv.test", "carol@other.example"]
            assert d.may_send_as("bob@pv.test", "news@pv.test")
            assert not d.may_send_as("alice@pv.test", "news@pv.test")
            assert d.recipient_exists("postmaster@pv.test")
            d.delete_alias("info@pv.test", "carol@other.example")
            d.delete_sendas("bob@pv.test", "news@pv.test")
            with pytest.raises(DirectoryError, match="no such alias"):
                d.delete_alias("nothing@pv.test")
            d.delete_user("bob@pv.test")
        assert sq.users() == pg.users() == ["alice@pv.test"]
        assert sq.aliases() == pg.aliases()
    finally:
        sq.close()
        pg.close()


def test_migrate_is_idempotent_and_an_old_schema_is_refused(
    tmp_path: Path, pg_database: str
) -> None:
    with pytest.raises(SchemaError, match="run `postvakt store migrate`"):
        PostgresRows(pg_database, timeout=5, live=False)
    cfg = tmp_path / "postvakt.toml"
    cfg.write_text(
        to_toml(
            {
                "data_dir": str(tmp_path / "data"),
                "domains": {"local": ["pv.test"]},
                "store": {"directory": pg_database},
            }
        )
    )
    refused = postvakt("user", "list", config=cfg, check=False)
    assert refused.returncode == 1
    assert "schema version 0" in refused.stderr and "postvakt store migrate" in refused.stderr
    first = postvakt("store", "migrate", config=cfg).stdout
    assert f"schema version 0 -> {SCHEMA_VERSION}" in first
    again = postvakt("store", "migrate", config=cfg).stdout
    assert f"schema version {SCHEMA_VERSION}, up to date" in again
    assert migrate(pg_database, 10) == (SCHEMA_VERSION, SCHEMA_VERSION)


def test_store_copy_moves_users_with_their_passwords(tmp_path: Path, pg_database: str) -> None:
    data = tmp_path / "data"
    cfg = tmp_path / "postvakt.toml"
    base = {"data_dir": str(data), "domains": {"local": ["pv.test"]}}
    cfg.write_text(to_toml(base))
    postvakt("user", "add", "alice@pv.test", "--password-stdin", config=cfg, input="s3cret\n")
    postvakt("user", "add", "bob@pv.test", "--password-stdin", config=cfg, input="other\n")
    postvakt("alias", "add", "info@pv.test", "alice@pv.test", config=cfg)
    out = postvakt("store", "copy", "--from", "sqlite", "--to", pg_database, config=cfg).stdout
    assert "copied 2 users, 1 aliases" in out
    # Into a directory that is not empty: refused, nothing changed.
    again = postvakt(
        "store", "copy", "--from", "sqlite", "--to", pg_database, config=cfg, check=False
    )
    assert again.returncode == 1 and "empty directory" in again.stderr
    cfg.write_text(to_toml({**base, "store": {"directory": pg_database}}))
    assert postvakt("user", "list", config=cfg).stdout.split() == ["alice@pv.test", "bob@pv.test"]
    d = Directory.for_config(from_dict({**base, "store": {"directory": pg_database}}))
    try:
        assert d.verify_password("alice@pv.test", "s3cret") == "alice@pv.test"
        assert d.resolve("info@pv.test") == ["alice@pv.test"]
    finally:
        d.close()
    assert SqliteRows(data / "directory.sqlite3").users() == ["alice@pv.test", "bob@pv.test"]


def wait_for(check: object, what: str, deadline: float = 20.0) -> float:
    """Seconds until check() is true (a generous deadline, no timing assert)."""
    start = time.monotonic()
    while not check():  # type: ignore[operator]
        assert time.monotonic() - start < deadline, f"{what}: not seen in {deadline} s"
        time.sleep(0.005)
    return time.monotonic() - start


def test_a_change_by_anyone_reaches_a_live_mirror(pg_database: str) -> None:
    migrate(pg_database, 10)
    writer = PostgresRows(pg_database, timeout=5, live=False)
    live = PostgresRows(pg_database, timeout=5, live=True)
    try:
        writer.add_user("alice@pv.test", "hash-1")
        took = wait_for(lambda: live.password_hash("alice@pv.test") == "hash-1", "new user")
        writer.set_password("alice@pv.test", "hash-2")
        took = max(took, wait_for(lambda: live.password_hash("alice@pv.test") == "hash-2", "pw"))
        writer.add_alias("info@pv.test", "alice@pv.test")
        wait_for(lambda: live.alias_targets("info@pv.test") == ["alice@pv.test"], "alias")
        writer.delete_user("alice@pv.test")
        took = max(took, wait_for(lambda: live.password_hash("alice@pv.test") is None, "deleted"))
        # A change made in SQL by hand is seen as well (the trigger, not postvakt, tells).
        with writer._conn() as c:
            c.execute("TRUNCATE aliases")
        wait_for(lambda: live.aliases() == [], "truncate")
        print(f"slowest change to reach the mirror: {took * 1000:.1f} ms")
    finally:
        writer.close()
        live.close()
