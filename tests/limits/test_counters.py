"""Rate counters: fixed windows, memory and SQLite stores, the admin's view."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from postvakt.config import from_dict
from postvakt.grants.counters import MemoryCounterStore, SqliteCounterStore
from postvakt.policy.limits import Usage
from postvakt.store import list_counters, open_state

# 2026-11-27 12:30:00 UTC
NOW = 1795782600.0


@pytest.fixture(params=["memory", "sqlite"])
def store(
    request: pytest.FixtureRequest, tmp_path: Path
) -> MemoryCounterStore | SqliteCounterStore:
    if request.param == "memory":
        return MemoryCounterStore()
    return SqliteCounterStore(tmp_path / "counters.sqlite3")


def test_counts_add_up_within_the_windows(store: MemoryCounterStore | SqliteCounterStore) -> None:
    store.add("user:a@pv.test", 1, 3, NOW)
    store.add("user:a@pv.test", 1, 2, NOW + 60)
    store.add("address:192.0.2.1", 1, 1, NOW)
    assert store.usage("user:a@pv.test", NOW + 120) == Usage(2, 2, 5, 5)
    assert store.usage("address:192.0.2.1", NOW) == Usage(1, 1, 1, 1)
    assert store.usage("user:nobody@pv.test", NOW) == Usage()


def test_the_hour_ends_the_day_goes_on(store: MemoryCounterStore | SqliteCounterStore) -> None:
    store.add("user:a@pv.test", 2, 4, NOW)
    next_hour = NOW + 1800  # 13:00 UTC
    assert store.usage("user:a@pv.test", next_hour) == Usage(0, 2, 0, 4)
    store.add("user:a@pv.test", 1, 1, next_hour)
    assert store.usage("user:a@pv.test", next_hour) == Usage(1, 3, 1, 5)
    tomorrow = NOW + 12 * 3600
    assert store.usage("user:a@pv.test", tomorrow) == Usage()
    store.add("user:a@pv.test", 1, 1, tomorrow)
    assert store.usage("user:a@pv.test", tomorrow) == Usage(1, 1, 1, 1)


def test_all_lists_only_live_subjects(store: MemoryCounterStore | SqliteCounterStore) -> None:
    store.add("user:old@pv.test", 1, 1, NOW - 86400)
    store.add("user:b@pv.test", 1, 1, NOW)
    store.add("address:192.0.2.1", 1, 1, NOW)
    assert [u.subject for u in store.all(NOW)] == ["address:192.0.2.1", "user:b@pv.test"]


def test_sqlite_counters_survive_and_are_shared(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite3"
    a, b = SqliteCounterStore(path), SqliteCounterStore(path)

    def work(s: SqliteCounterStore) -> None:
        for _ in range(50):
            s.add("user:a@pv.test", 1, 2, NOW)

    threads = [threading.Thread(target=work, args=(s,)) for s in (a, b, a)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert SqliteCounterStore(path).usage("user:a@pv.test", NOW) == Usage(150, 150, 300, 300)


def test_memory_snapshot_is_what_limits_show_reads(tmp_path: Path) -> None:
    cfg = from_dict({"data_dir": str(tmp_path), "store": {"state": "memory"}})
    store = open_state(cfg).counters
    assert isinstance(store, MemoryCounterStore)
    store.add("user:a@pv.test", 1, 4, NOW)  # the first change is written at once
    store.add("user:a@pv.test", 1, 1, NOW + 0.1)  # within the interval: pending
    assert [u.usage for u in list_counters(cfg, NOW + 0.2)] == [Usage(1, 1, 4, 4)]
    store.flush(NOW + 0.5)
    assert [u.usage for u in list_counters(cfg, NOW + 0.6)] == [Usage(2, 2, 5, 5)]
    # Read in the next hour, the hourly counts of the view are stale and read as zero.
    assert [u.usage for u in list_counters(cfg, NOW + 1800)] == [Usage(0, 2, 0, 5)]


def test_missing_or_broken_snapshot_reads_as_empty(tmp_path: Path) -> None:
    cfg = from_dict({"data_dir": str(tmp_path), "store": {"state": "memory"}})
    assert list_counters(cfg, NOW) == []
    (tmp_path / "counters.json").write_text("{not json")
    assert list_counters(cfg, NOW) == []
    sq = from_dict({"data_dir": str(tmp_path), "limits": {"store": "sqlite"}})
    assert list_counters(sq, NOW) == []
    assert not (tmp_path / "counters.sqlite3").exists()  # looking creates nothing


def test_memory_store_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    import postvakt.grants.counters as counters

    monkeypatch.setattr(counters, "MAX_SUBJECTS", 10)
    store = MemoryCounterStore()
    for i in range(25):
        store.add(f"address:192.0.2.{i}", 1, 1, NOW)
    assert len(store.all(NOW)) <= 11
    assert store.usage("address:192.0.2.24", NOW) == Usage(1, 1, 1, 1)
