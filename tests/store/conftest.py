from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from engines import PrivatePostgres, PrivateRedis


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    """A redis-server of this test's own, which the test may stop and start."""
    r = PrivateRedis(tmp_path / "redis").start()
    try:
        yield r
    finally:
        r.stop()


SHARED_PG = "postgresql://postgres@127.0.0.1:5432"


def _shared_pg_reachable() -> str:
    try:
        with psycopg.connect(f"{SHARED_PG}/postgres", connect_timeout=5):
            return ""
    except psycopg.Error as e:
        return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


@pytest.fixture
def pg_database() -> Iterator[str]:
    """A database of this test's own on the machine's PostgreSQL, dropped afterwards."""
    why = _shared_pg_reachable()
    if why:
        pytest.skip(f"PostgreSQL at 127.0.0.1:5432 (user postgres) is not reachable: {why}")
    name = f"pvtest_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(f"{SHARED_PG}/postgres", autocommit=True) as c:
        c.execute(f"CREATE DATABASE {name}")
    try:
        yield f"{SHARED_PG}/{name}"
    finally:
        with psycopg.connect(f"{SHARED_PG}/postgres", autocommit=True) as c:
            c.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


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
