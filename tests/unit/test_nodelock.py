"""One server per queue directory: the lock and its error."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from postvakt import config
from postvakt.config import ConfigError
from postvakt.server.nodelock import LOCK_NAME, lock_queue_dir


def _config(tmp_path: Path, queue_dir: Path | None) -> config.Config:
    text = f'data_dir = "{tmp_path / "data"}"\n'
    if queue_dir is not None:
        text += f'queue_dir = "{queue_dir}"\n'
    return config.loads(text, "site.toml")


def test_second_lock_on_one_queue_dir_is_refused_with_the_holder(tmp_path: Path) -> None:
    shared = tmp_path / "spool"
    fd = lock_queue_dir(_config(tmp_path / "a", shared))
    try:
        with pytest.raises(ConfigError) as e:
            lock_queue_dir(_config(tmp_path / "b", shared))
        text = str(e.value)
        assert "queue_dir" in text and str(shared) in text
        assert f"pid {os.getpid()} on host {socket.gethostname()}" in text
        assert "needs a queue directory of its own" in text
    finally:
        os.close(fd)
    # Released: the next server may start.
    os.close(lock_queue_dir(_config(tmp_path / "b", shared)))


def test_default_queue_dir_is_below_data_dir(tmp_path: Path) -> None:
    cfg = _config(tmp_path, None)
    assert cfg.queue_root == tmp_path / "data" / "queue"
    fd = lock_queue_dir(cfg)
    try:
        assert (cfg.queue_root / LOCK_NAME).read_text().split()[0] == str(os.getpid())
        with pytest.raises(ConfigError) as e:
            lock_queue_dir(cfg)
        assert "data_dir" in str(e.value)
    finally:
        os.close(fd)


def test_an_unusable_queue_dir_is_a_config_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ConfigError) as e:
        lock_queue_dir(_config(tmp_path, blocker / "queue"))
    assert "queue_dir" in str(e.value) and "cannot open the queue lock" in str(e.value)
