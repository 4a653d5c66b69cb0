"""Grant stores and the shared login-failure counter."""

from __future__ import annotations

from pathlib import Path

import pytest

from postvakt.grants import LoginFailures, MemoryGrantStore, SqliteGrantStore


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


def test_failure_delay_grows_then_blocks() -> None:
    f = LoginFailures(delay_start=2, delay_max=15, block_after=5, window=600)
    assert f.delay("127.0.0.2", 0) == 0
    delays = []
    for i in range(5):
        f.record_failure("127.0.0.2", float(i))
        delays.append(f.delay("127.0.0.2", float(i)))
    assert delays == [2, 4, 8, 15, 15]
    assert f.blocked("127.0.0.2", 5.0)
    assert not f.blocked("127.0.0.3", 5.0) and f.delay("127.0.0.3", 5.0) == 0
    assert not f.blocked("127.0.0.2", 5.0 + 601)  # forgotten after the window
    f.record_failure("127.0.0.4", 0.0)
    f.record_success("127.0.0.4")
    assert f.delay("127.0.0.4", 0.0) == 0
