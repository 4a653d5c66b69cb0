"""Two real servers pointed at one queue directory: the second refuses to start."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from support import Running, base_config, to_toml


def _server(tmp_path: Path, name: str, queue_dir: Path) -> Running:
    d = tmp_path / name
    d.mkdir()
    raw = base_config(d / "data")
    raw["queue_dir"] = str(queue_dir)
    cfg = d / "postvakt.toml"
    cfg.write_text(to_toml(raw))
    return Running(cfg, d / "data")


def test_second_server_on_one_queue_dir_refuses_to_start(tmp_path: Path) -> None:
    shared = tmp_path / "spool"
    a = _server(tmp_path, "a", shared).start()
    try:
        b = _server(tmp_path, "b", shared)
        with pytest.raises(RuntimeError) as e:
            b.start()
        text = str(e.value)
        assert "exited with" in text
        assert f"the queue directory {shared} is in use by another postvakt serve" in text
        assert f"on host {socket.gethostname()}" in text
        assert "Traceback" not in text
        # The first server is unharmed and still the holder.
        assert a.proc is not None and a.proc.poll() is None
        with socket.create_connection(("127.0.0.1", a.port("smtp")), timeout=10) as s:
            assert s.recv(512).startswith(b"220 ")
    finally:
        a.stop()
    # Once the holder has gone, the other may start on the same queue.
    b.start()
    b.stop()


def test_lock_of_a_killed_server_does_not_outlive_it(tmp_path: Path) -> None:
    shared = tmp_path / "spool"
    a = _server(tmp_path, "a", shared).start()
    a.kill()
    b = _server(tmp_path, "b", shared).start()
    try:
        assert (shared / "serve.lock").read_text().split()[0] == str(b.proc.pid if b.proc else "")
    finally:
        b.stop()
    assert os.path.isdir(shared / "incoming")
