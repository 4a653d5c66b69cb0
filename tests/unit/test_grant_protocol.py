"""Each POP-before-SMTP grant names the login that made it (pop3, imap): stores, CLI, trace."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import pytest
from policy_harness import NOW, O_IP, DictDirectory, make_config

from postvakt.address import parse_path
from postvakt.grants import MemoryGrantStore, SqliteGrantStore
from postvakt.policy import Client, Grant, check_rcpt, grant_protocol
from support import base_config, postvakt, to_toml


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_store_keeps_the_protocol_and_the_latest_login_wins(kind: str, tmp_path: Path) -> None:
    store = (
        MemoryGrantStore(tmp_path / "g.json")
        if kind == "memory"
        else SqliteGrantStore(tmp_path / "g.sqlite3")
    )
    store.grant("127.0.0.2", "alice@pv.test", 100.0, "imap")
    store.grant("127.0.0.3", "bob@pv.test", 100.0)
    assert store.lookup("127.0.0.2", 50.0) == Grant("127.0.0.2", "alice@pv.test", 100.0, "imap")
    assert [(g.ip, g.protocol) for g in store.all(50.0)] == [
        ("127.0.0.2", "imap"),
        ("127.0.0.3", "pop3"),
    ]
    store.grant("127.0.0.2", "alice@pv.test", 200.0, "pop3")  # a POP3 login renews it
    assert store.lookup("127.0.0.2", 150.0) == Grant("127.0.0.2", "alice@pv.test", 200.0, "pop3")


def test_sqlite_table_from_before_the_column_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "grants.sqlite3"
    db = sqlite3.connect(path)
    db.execute(
        "CREATE TABLE grants (ip TEXT PRIMARY KEY, login TEXT NOT NULL, expires REAL NOT NULL)"
    )
    db.execute("INSERT INTO grants VALUES ('127.0.0.2', 'alice@pv.test', 500.0)")
    db.commit()
    db.close()
    store = SqliteGrantStore(path)
    assert store.lookup("127.0.0.2", 10.0) == Grant("127.0.0.2", "alice@pv.test", 500.0, "pop3")
    store.grant("127.0.0.4", "bob@pv.test", 500.0, "imap")
    assert SqliteGrantStore(path).lookup("127.0.0.4", 10.0) == Grant(
        "127.0.0.4", "bob@pv.test", 500.0, "imap"
    )


def test_memory_snapshot_from_before_the_column_reads_as_pop3(tmp_path: Path) -> None:
    snap = tmp_path / "grants.json"
    snap.write_text(json.dumps([{"ip": "127.0.0.2", "login": "a@pv.test", "expires": 500.0}]))
    assert MemoryGrantStore.read_snapshot(snap, 10.0) == [
        Grant("127.0.0.2", "a@pv.test", 500.0, "pop3")
    ]


def test_memory_snapshot_rows_it_cannot_read_are_skipped(tmp_path: Path) -> None:
    snap = tmp_path / "grants.json"
    rows = [
        {"ip": "127.0.0.2", "login": "a@pv.test", "expires": 500.0, "protocol": "carrier-pigeon"},
        {"ip": "127.0.0.3", "login": "b@pv.test", "expires": 500.0, "protocol": "imap"},
        "not a row",
    ]
    snap.write_text(json.dumps(rows))
    assert MemoryGrantStore.read_snapshot(snap, 10.0) == [
        Grant("127.0.0.3", "b@pv.test", 500.0, "imap")
    ]


def test_unknown_protocol_is_refused() -> None:
    assert grant_protocol("imap") == "imap"
    with pytest.raises(ValueError, match="not a login protocol"):
        grant_protocol("smtp")


def test_trace_names_the_login_that_opened_the_road() -> None:
    grant = Grant(O_IP, "alice@pv.test", NOW + 60, "imap")
    d = check_rcpt(
        Client(ip=O_IP, grant=grant, now=NOW),
        parse_path("<friend@other.example>"),
        make_config(),
        DictDirectory(),
    )
    assert d.verdict.accepted
    assert any(s.detail.startswith(f"IMAP login by alice@pv.test from {O_IP}") for s in d.trace)


@pytest.mark.parametrize("store", ["memory", "sqlite"])
def test_grants_list_shows_the_protocol_in_text_and_json(tmp_path: Path, store: str) -> None:
    data_dir = tmp_path / "data"
    cfg = tmp_path / "postvakt.toml"
    cfg.write_text(to_toml(base_config(data_dir, relay={"grant_store": store})))
    data_dir.mkdir()
    expires = time.time() + 600
    if store == "sqlite":
        s = SqliteGrantStore(data_dir / "grants.sqlite3")
        s.grant("127.0.0.2", "alice@pv.test", expires, "imap")
        s.grant("127.0.0.3", "bob@pv.test", expires, "pop3")
    else:
        m = MemoryGrantStore(data_dir / "grants.json")
        m.grant("127.0.0.2", "alice@pv.test", expires, "imap")
        m.grant("127.0.0.3", "bob@pv.test", expires, "pop3")
    listed = json.loads(postvakt("grants", "list", "--json", config=cfg).stdout)
    assert [(g["ip"], g["protocol"], g["login"]) for g in listed] == [
        ("127.0.0.2", "imap", "alice@pv.test"),
        ("127.0.0.3", "pop3", "bob@pv.test"),
    ]
    lines = postvakt("grants", "list", config=cfg).stdout.splitlines()
    assert [line.split()[:3] for line in lines] == [
        ["127.0.0.2", "imap", "alice@pv.test"],
        ["127.0.0.3", "pop3", "bob@pv.test"],
    ]
