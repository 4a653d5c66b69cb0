from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pop3_server_harness import LiveServer


@pytest.fixture
def server(tmp_path: Path) -> Iterator[LiveServer]:
    srv = LiveServer(tmp_path)
    try:
        yield srv
    finally:
        srv.stop()
