"""A private HAProxy (Debian's package) in front of `postvakt serve`, for the PROXY protocol
and cluster tests: its config's common head, starting it, waiting for its frontends."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"
START_TIMEOUT = 20.0

requires_haproxy = pytest.mark.skipif(
    not Path(HAPROXY).exists(), reason=f"HAProxy is not installed ({HAPROXY}: apt install haproxy)"
)


def tcp_head(*defaults: str) -> str:
    """`global` and `defaults` for TCP frontends, with extra `defaults` lines."""
    lines = ["global", "    maxconn 200", "", "defaults", "    mode tcp", "    timeout connect 5s"]
    lines += ["    timeout client 60s", "    timeout server 60s"]
    lines += [f"    {d}" for d in defaults]
    return "\n".join(lines) + "\n\n"


@contextmanager
def running_haproxy(
    config: Path, ip: str, ports: Iterable[int]
) -> Iterator[subprocess.Popen[bytes]]:
    """HAProxy on `config`, once every frontend port on `ip` accepts; stopped afterwards."""
    proc = subprocess.Popen(
        [HAPROXY, "-db", "-f", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + START_TIMEOUT
        for port in ports:
            while True:
                try:
                    socket.create_connection((ip, port), timeout=2).close()
                    break
                except OSError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        err = proc.stderr.read() if proc.stderr else b""
                        raise RuntimeError(f"haproxy did not start: {err!r}") from None
                    time.sleep(0.05)
        yield proc
    finally:
        proc.terminate()
        proc.wait(10)
