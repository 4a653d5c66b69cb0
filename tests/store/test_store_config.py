"""`[store]`: the keys, their errors, and the old keys it replaces."""

from __future__ import annotations

from pathlib import Path

import pytest

from postvakt.config import ConfigError, from_dict
from postvakt.store import open_state
from postvakt.store.local import MemoryNoticeStore, SqliteNoticeStore
from support import postvakt, start_server, to_toml


def test_defaults_are_sqlite_for_state_and_directory(tmp_path: Path) -> None:
    cfg = from_dict({"data_dir": str(tmp_path)})
    assert (cfg.store.state, cfg.store.directory) == ("sqlite", "sqlite")
    assert cfg.notes == ()
    state = open_state(cfg)
    assert state.kind == "sqlite" and not state.remote
    state.grants.grant("192.0.2.1", "alice@pv.test", 2e9)
    assert (tmp_path / "grants.sqlite3").exists()


@pytest.mark.parametrize(
    ("old", "state"),
    [
        ({"relay": {"grant_store": "memory"}}, "memory"),
        ({"relay": {"grant_store": "sqlite"}}, "sqlite"),
        ({"limits": {"store": "memory"}}, "memory"),
        ({"relay": {"grant_store": "memory"}, "limits": {"store": "sqlite"}}, "sqlite"),
    ],
)
def test_old_keys_still_work_and_name_the_new_one(
    tmp_path: Path, old: dict[str, dict[str, str]], state: str
) -> None:
    cfg = from_dict({"data_dir": str(tmp_path), **old})
    assert cfg.store.state == state
    assert cfg.notes and all("use [store] state" in n for n in cfg.notes)


def test_store_state_wins_over_an_old_key(tmp_path: Path) -> None:
    cfg = from_dict(
        {
            "data_dir": str(tmp_path),
            "relay": {"grant_store": "memory"},
            "store": {"state": "sqlite"},
        }
    )
    assert cfg.store.state == "sqlite"
    assert len(cfg.notes) == 1


@pytest.mark.parametrize(
    ("store", "key", "words"),
    [
        ({"state": "redis"}, "[store] state", "redis:// URL"),
        ({"state": "redis://127.0.0.1:x/0"}, "[store] state", "port is not a number"),
        ({"state": 5}, "[store] state", "a string"),
        ({"directory": "mysql://db/postvakt"}, "[store] directory", "postgresql:// URL"),
        ({"timeout": "0s"}, "[store] timeout", "more than 0"),
        ({"engine": "x"}, "[store] engine", "unknown key"),
    ],
)
def test_bad_store_values_name_the_key(
    tmp_path: Path, store: dict[str, object], key: str, words: str
) -> None:
    with pytest.raises(ConfigError) as e:
        from_dict({"data_dir": str(tmp_path), "store": store})
    assert key in str(e.value) and words in str(e.value)


def test_the_cli_warns_about_an_old_key(tmp_path: Path) -> None:
    cfg = tmp_path / "postvakt.toml"
    cfg.write_text(to_toml({"data_dir": str(tmp_path / "d"), "limits": {"store": "sqlite"}}))
    r = postvakt("grants", "list", config=cfg)
    assert "[limits] store is deprecated: use [store] state" in r.stderr


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_one_notice_per_window(tmp_path: Path, kind: str) -> None:
    store = MemoryNoticeStore() if kind == "memory" else SqliteNoticeStore(tmp_path / "n.sqlite3")
    assert store.claim("user:a|user.messages_per_hour", 200.0, 100.0)
    assert not store.claim("user:a|user.messages_per_hour", 200.0, 150.0)
    assert store.claim("user:a|user.messages_per_day", 200.0, 150.0)
    assert store.claim("user:a|user.messages_per_hour", 300.0, 200.0)  # the next window
    if kind == "sqlite":  # another process of the node sees the same
        other = SqliteNoticeStore(tmp_path / "n.sqlite3")
        assert not other.claim("user:a|user.messages_per_hour", 300.0, 250.0)


def test_serve_logs_the_old_key_and_runs_on_the_new_one(tmp_path: Path) -> None:
    srv = start_server(tmp_path, relay={"grant_store": "memory"})
    try:
        assert "[relay] grant_store is deprecated: use [store] state" in srv.log()
        assert (srv.data_dir / "grants.json").exists()  # state = "memory": the JSON view
    finally:
        srv.stop()
