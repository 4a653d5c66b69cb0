from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from engines import PrivateRedis


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    """A redis-server of this test's own, which the test may stop and start."""
    r = PrivateRedis(tmp_path / "redis").start()
    try:
        yield r
    finally:
        r.stop()
