"""Private Redis and PostgreSQL instances for the store tests.

Each test that stops an engine gets its own, on a free port, with its files in
the test's temporary directory: the machine's shared 6379 and 5432 are never
touched. PostgreSQL's initdb refuses to run as root, so as root the cluster
belongs to the `postgres` user (Debian's package creates it).
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest

PG_BIN = Path("/usr/lib/postgresql/15/bin")
SHARED_PG = "postgresql://postgres@127.0.0.1:5432"
START_TIMEOUT = 30.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


class PrivateRedis:
    """redis-server on a free port, no persistence; stop() and start() keep the port."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> PrivateRedis:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [
                shutil.which("redis-server") or "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"redis-server on {self.port} exited with {self.proc.returncode}"
                )
            if _answers(self.port):
                return self
            time.sleep(0.05)
        raise RuntimeError(f"redis-server on {self.port} did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(20)
        self.proc = None


class PrivatePostgres:
    """A PostgreSQL cluster of its own (initdb + pg_ctl) on a free port, trust auth."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.datadir = workdir / "pgdata"
        self.port = free_port()
        self.user = "postgres"

    def url(self, db: str = "postvakt") -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{db}"

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        cmd = list(args)
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True)

    def init(self) -> PrivatePostgres:
        self.workdir.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            os.chown(self.workdir, pw.pw_uid, pw.pw_gid)
            # The postgres user must reach its data directory through ours.
            d = self.workdir
            while d != d.parent:
                d.chmod(d.stat().st_mode | 0o001)
                d = d.parent
        else:
            self.user = pwd.getpwuid(os.geteuid()).pw_name
        self._run(
            str(PG_BIN / "initdb"),
            "-D",
            str(self.datadir),
            "-U",
            self.user,
            "--auth=trust",
            "--no-sync",
        )
        return self

    def start(self) -> PrivatePostgres:
        self._run(
            str(PG_BIN / "pg_ctl"),
            "-D",
            str(self.datadir),
            "-l",
            str(self.workdir / "pg.log"),
            "-o",
            f"-p {self.port} -k {self.workdir} -c listen_addresses=127.0.0.1 -c fsync=off",
            "-w",
            "-t",
            str(int(START_TIMEOUT)),
            "start",
        )
        return self

    def stop(self) -> None:
        self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.datadir), "-m", "fast", "-w", "stop")

    def createdb(self, name: str = "postvakt") -> str:
        self._run(
            str(PG_BIN / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", self.user, name
        )
        return self.url(name)


def _shared_pg_reachable() -> str:
    try:
        with psycopg.connect(f"{SHARED_PG}/postgres", connect_timeout=5):
            return ""
    except psycopg.Error as e:
        return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


@contextmanager
def shared_pg_database(prefix: str = "pvtest") -> Iterator[str]:
    """A database of the caller's own on the machine's PostgreSQL (127.0.0.1:5432, user
    postgres), dropped afterwards; the caller's test is skipped, saying why, if that
    PostgreSQL cannot be reached."""
    why = _shared_pg_reachable()
    if why:
        pytest.skip(f"PostgreSQL at 127.0.0.1:5432 (user postgres) is not reachable: {why}")
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(f"{SHARED_PG}/postgres", autocommit=True) as c:
        c.execute(f"CREATE DATABASE {name}")
    try:
        yield f"{SHARED_PG}/{name}"
    finally:
        with psycopg.connect(f"{SHARED_PG}/postgres", autocommit=True) as c:
            c.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
