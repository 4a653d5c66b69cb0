"""Type=notify: the server tells the service manager READY=1 once it serves,
RELOADING=1 then READY=1 around a SIGHUP, and STOPPING=1 when SIGTERM starts the
shutdown, over the datagram socket named by NOTIFY_SOCKET (read here as systemd would)."""

from __future__ import annotations

import signal
import socket
import tempfile
from pathlib import Path

import pytest

from support import RawClient, Running, base_config, to_toml


def _messages(sock: socket.socket, want: str, timeout: float = 30.0) -> list[str]:
    """Datagrams until one holds the line `want`."""
    got: list[str] = []
    sock.settimeout(timeout)
    while True:
        msg = sock.recv(4096).decode()
        got.append(msg)
        if want in msg.splitlines():
            return got


@pytest.mark.parametrize("abstract", [False, True], ids=["path", "abstract"])
def test_ready_reloading_stopping(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, abstract: bool
) -> None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    short = Path(tempfile.mkdtemp(prefix="pvn-"))  # a socket path holds at most 107 bytes
    if abstract:
        name = f"@postvakt-test-{short.name}"
        sock.bind("\0" + name[1:])
    else:
        name = str(short / "notify")
        sock.bind(name)
    monkeypatch.setenv("NOTIFY_SOCKET", name)
    cfg = tmp_path / "postvakt.toml"
    cfg.write_text(to_toml(base_config(tmp_path / "data")))
    srv = Running(cfg, tmp_path / "data").start()
    try:
        ready = _messages(sock, "READY=1")
        assert not any("STOPPING=1" in m for m in ready)
        # READY=1 comes when the listeners answer.
        c = RawClient(srv.port("smtp"))
        assert c.reply().startswith("220")
        c.close()
        assert srv.proc is not None
        srv.proc.send_signal(signal.SIGHUP)
        around = _messages(sock, "READY=1")
        assert any("RELOADING=1" in m.splitlines() for m in around), around
        assert any(line.startswith("MONOTONIC_USEC=") for m in around for line in m.splitlines())
        srv.proc.send_signal(signal.SIGTERM)
        _messages(sock, "STOPPING=1")
        assert srv.proc.wait(30) == 0
    finally:
        srv.stop()
        sock.close()
        if not abstract:
            Path(name).unlink(missing_ok=True)
        short.rmdir()
