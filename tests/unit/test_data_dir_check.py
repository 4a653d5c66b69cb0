"""The start's check that `data_dir` is usable (`server.app.check_data_dir`),
which every process of `[server] workers` makes at the same moment."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from postvakt.config import Config, ConfigError, loads
from postvakt.server.app import check_data_dir


def _config(data_dir: Path) -> Config:
    return loads(f'hostname = "mx.pv.test"\ndata_dir = "{data_dir}"\n')


def test_processes_that_check_at_once_all_pass(tmp_path: Path) -> None:
    """Several checks at the same moment on one directory: none fails. With one
    fixed probe name, one check removed the probe of another, which then
    failed with "No such file or directory" (a worker that did not start)."""
    config = _config(tmp_path / "data")
    errors: list[BaseException] = []
    start = threading.Barrier(6)

    def check() -> None:
        start.wait()
        for _ in range(300):
            try:
                check_data_dir(config)
            except ConfigError as e:
                errors.append(e)
                return

    threads = [threading.Thread(target=check) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert list((tmp_path / "data").iterdir()) == []  # no probe left behind


def test_a_data_dir_that_is_a_file_is_named(tmp_path: Path) -> None:
    blocker = tmp_path / "data"
    blocker.write_text("not a directory")
    with pytest.raises(ConfigError, match="data_dir.*is not a usable directory"):
        check_data_dir(_config(blocker))
