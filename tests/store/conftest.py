from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from engines import PrivatePostgres, PrivateRedis, shared_pg_database


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    """A redis-server of this test's own, which the test may stop and start."""
    r = PrivateRedis(tmp_path / "redis").start()
    try:
        yield r
    finally:
        r.stop()


@pytest.fixture
def pg_database() -> Iterator[str]:
    """A database of this test's own on the machine's PostgreSQL, dropped afterwards."""
    with shared_pg_database() as url:
        yield url


@pytest.fixture
def private_pg(tmp_path: Path) -> Iterator[PrivatePostgres]:
    """A PostgreSQL cluster of this test's own, which the test may stop and start."""
    pg = PrivatePostgres(tmp_path / "pg").init().start()
    try:
        yield pg
    finally:
        try:
            pg.stop()
        except Exception:
            pass
