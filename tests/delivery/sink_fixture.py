"""The smtp_sink fixture: smtp-sink processes on free loopback ports."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from smtp_peer import SMTP_SINK, Sink, free_port, wait_port  # noqa: E402


@pytest.fixture
def smtp_sink() -> Iterator[Callable[..., Sink]]:
    """Start smtp-sink with extra options; each message is dumped to a file."""
    if not Path(SMTP_SINK).exists():
        pytest.skip("smtp-sink (Debian package postfix) is not installed")
    procs: list[subprocess.Popen[bytes]] = []
    dumps: list[Path] = []

    def start(*options: str, port: int | None = None) -> Sink:
        port = port or free_port()
        # smtp-sink drops to "nobody": its dump directory must be reachable for
        # that user, which pytest's private tmp_path is not.
        dump = Path(tempfile.mkdtemp(prefix="pv-sink-"))
        dump.chmod(0o777)
        dumps.append(dump)
        proc = subprocess.Popen(
            [SMTP_SINK, "-u", "nobody", "-d", f"{dump}/%M.", *options, f"127.0.0.1:{port}", "100"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        procs.append(proc)
        wait_port(port)
        return Sink(port, dump, proc)

    yield start
    for p in procs:
        p.terminate()
        p.wait(5)
    for d in dumps:
        shutil.rmtree(d, ignore_errors=True)
