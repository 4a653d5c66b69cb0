"""Grant stores (the login-failure throttle: test_login_throttle.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from postvakt.grants import MemoryGrantStore, SqliteGrantStore


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_grant_expires(kind: str, tmp_path: Path) -> None:
    store = (
        MemoryGrantStore(tmp_path / "g.json")
        if kind == "memory"
        else SqliteGrantStore(tmp_path / "g.sqlite3")
    )
    store.grant("127.0.0.2", "alice@pv.test", expires=100.0)
    g = store.lookup("127.0.0.2", now=50.0)
    assert g is not None and g.login == "alice@pv.test"
    assert store.lookup("127.0.0.3", now=50.0) is None
    assert store.lookup("127.0.0.2", now=100.0) is None
    store.grant("127.0.0.2", "alice@pv.test", expires=200.0)  # renewed by the next login
    assert [x.ip for x in store.all(now=150.0)] == ["127.0.0.2"]


def test_sqlite_grants_survive_reopen(tmp_path: Path) -> None:
    SqliteGrantStore(tmp_path / "g.sqlite3").grant("::1", "bob@pv.test", 500.0)
    assert SqliteGrantStore(tmp_path / "g.sqlite3").lookup("::1", 10.0) is not None


def test_memory_snapshot_is_readable_from_outside(tmp_path: Path) -> None:
    snap = tmp_path / "grants.json"
    MemoryGrantStore(snap).grant("127.0.0.2", "alice@pv.test", 500.0)
    assert [g.ip for g in MemoryGrantStore.read_snapshot(snap, 10.0)] == ["127.0.0.2"]
    assert MemoryGrantStore.read_snapshot(snap, 600.0) == []
