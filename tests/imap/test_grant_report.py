"""The grant-report socket: who may create a POP-before-SMTP grant, and what a report must say.

The table tests call the handler's `answer` directly; the socket tests run
the real listener on a Unix socket and real clients, one of them a process
of another user (the machine's `nobody`), which needs root to start.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from postvakt.config import Config, from_dict
from postvakt.grants import MemoryGrantStore
from postvakt.grants.report import (
    MAX_LINE,
    REPLY_OFF,
    parse_report,
    request_line,
    socket_path,
    socket_path_problem,
)
from postvakt.server.grantreport import (
    SOCKET_MODE,
    GrantReports,
    allowed_uids,
    start_grant_reports,
    stop_grant_reports,
)

NOW = 1_000_000.0
ALICE = "alice@pv.test"
ME = os.geteuid()
STRANGER = 4242  # a uid that is neither root, nor us, nor [server] user


def config(pop_before_smtp: str = "30m") -> Config:
    return from_dict(
        {"domains": {"local": ["pv.test"]}, "relay": {"pop_before_smtp": pop_before_smtp}}
    )


def reports(store: MemoryGrantStore, cfg: Config | None = None) -> GrantReports:
    c = cfg or config()
    return GrantReports(
        config=lambda: c,
        grants=store,
        user_exists=lambda login: login == ALICE,
        allowed=frozenset({0, ME}),
        clock=lambda: NOW,
    )


def test_a_report_from_an_allowed_user_grants_the_address_with_its_protocol() -> None:
    store = MemoryGrantStore()
    reply = reports(store).answer(ME, b"GRANT imap 127.0.0.2 Alice@PV.test\n")
    assert reply == f"OK {int(NOW + 1800)}\n".encode()
    g = store.lookup("127.0.0.2", NOW)
    assert g is not None and (g.login, g.protocol, g.expires) == (ALICE, "imap", NOW + 1800)


@pytest.mark.parametrize(
    ("uid", "line", "reason"),
    [
        (STRANGER, b"GRANT imap 127.0.0.2 alice@pv.test\n", b"NO not allowed to report logins"),
        (None, b"GRANT imap 127.0.0.2 alice@pv.test\n", b"NO not allowed to report logins"),
        (ME, b"GRANT imap 127.0.0.2 nobody@pv.test\n", b"NO no such user"),
        (ME, b"GRANT smtp 127.0.0.2 alice@pv.test\n", b"NO 'smtp' is not a login protocol"),
        (ME, b"GRANT imap 127.0.0.300 alice@pv.test\n", b"NO '127.0.0.300' is not an IP address"),
        (ME, b"GRANT imap 127.0.0.2\n", b"NO expected 'GRANT <protocol> <address> <login>'"),
        (ME, b"GRANT imap 127.0.0.2 alice@pv.test extra\n", b"NO expected"),
        (ME, b"grant imap 127.0.0.2 alice@pv.test\n", b"NO expected"),
        (ME, b"GRANT imap 127.0.0.2 al\xc3\xafce@pv.test\n", b"NO not ASCII"),
        (ME, b"GRANT imap 127.0.0.2 " + b"a" * MAX_LINE + b"\n", b"NO line too long"),
    ],
)
def test_refused_reports_grant_nothing(uid: int | None, line: bytes, reason: bytes) -> None:
    store = MemoryGrantStore()
    assert reports(store).answer(uid, line).startswith(reason)
    assert store.all(NOW) == []


def test_with_pop_before_smtp_off_a_report_grants_nothing_and_is_no_error() -> None:
    store = MemoryGrantStore()
    assert reports(store, config("0")).answer(ME, b"GRANT imap 127.0.0.2 alice@pv.test\n") == (
        REPLY_OFF
    )
    assert store.all(NOW) == []


def test_ipv4_mapped_addresses_are_keyed_as_ipv4() -> None:
    assert parse_report(b"GRANT imap ::ffff:127.0.0.2 a@pv.test").ip == "127.0.0.2"
    assert parse_report(request_line("pop3", "::1", "a@pv.test")).ip == "::1"


def test_allowed_users_are_root_ourselves_and_the_server_user() -> None:
    uids = allowed_uids(from_dict({"server": {"user": "nobody"}}))
    assert uids == {0, ME, pwd.getpwnam("nobody").pw_uid}
    assert allowed_uids(from_dict({"server": {"user": "no-such-user-here"}})) == {0, ME}


def test_a_socket_path_too_long_for_the_kernel_is_named(tmp_path: Path) -> None:
    assert socket_path_problem(Path("/var/lib/postvakt/grants.sock")) is None
    problem = socket_path_problem(Path("/" + "d" * 120) / "grants.sock")
    assert problem is not None and "107 bytes" in problem
    assert socket_path(from_dict({"data_dir": "/srv/pv"})) == Path("/srv/pv/grants.sock")


# ---------------------------------------------------------------- the real socket


def _ask(path: Path, line: bytes) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(str(path))
        s.sendall(line)
        return s.recv(1024)


# Runs as another user: connect, send one report, print the reply or the error.
FORGER = """
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(10)
try:
    s.connect(sys.argv[1])
except OSError as e:
    print("connect:", e.strerror)
    raise SystemExit(0)
s.sendall(b"GRANT imap 127.0.0.2 alice@pv.test\\n")
print(s.recv(1024).decode().strip())
"""


async def _forge(path: Path) -> str:
    proc = await asyncio.create_subprocess_exec(
        "/usr/bin/python3",
        "-I",
        "-c",
        FORGER,
        str(path),
        user="nobody",
        group="nogroup",
        extra_groups=[],
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await proc.communicate()
    return out.decode().strip()


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory anyone may enter (pytest's own are private to root), so that
    only the socket's own mode decides who may connect."""
    d = Path(tempfile.mkdtemp(prefix="pv-gr-"))
    os.chmod(d, 0o755)
    yield d
    for p in d.iterdir():
        p.unlink()
    d.rmdir()


def test_the_listener_grants_for_an_allowed_peer_and_cleans_up(open_dir: Path) -> None:
    path = open_dir / "grants.sock"
    store = MemoryGrantStore()
    cfg = config()

    async def main() -> None:
        server = await start_grant_reports(path, reports(store, cfg), cfg)
        assert server is not None
        assert path.stat().st_mode & 0o777 == SOCKET_MODE
        loop = asyncio.get_running_loop()
        reply = await loop.run_in_executor(None, _ask, path, b"GRANT imap ::1 alice@pv.test\n")
        assert reply.startswith(b"OK ")
        garbage = await loop.run_in_executor(None, _ask, path, b"\x00\xff" * 400)
        assert garbage.startswith(b"NO ")
        stop_grant_reports(server, path)

    asyncio.run(main())
    assert [(g.ip, g.protocol) for g in store.all(NOW)] == [("::1", "imap")]
    assert not path.exists()


def test_a_stale_socket_from_a_dead_server_is_replaced(open_dir: Path) -> None:
    path = open_dir / "grants.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()
    store = MemoryGrantStore()

    async def main() -> None:
        server = await start_grant_reports(path, reports(store), config())
        assert server is not None
        reply = await asyncio.get_running_loop().run_in_executor(
            None, _ask, path, b"GRANT imap 127.0.0.9 alice@pv.test\n"
        )
        assert reply.startswith(b"OK ")
        stop_grant_reports(server, path)

    asyncio.run(main())


@pytest.mark.skipif(os.geteuid() != 0, reason="starting a process as another user needs root")
def test_forged_report_from_another_local_user_is_refused_twice(open_dir: Path) -> None:
    """The socket's mode keeps `nobody` out; opened by mistake, the peer check still does."""
    path = open_dir / "grants.sock"
    store = MemoryGrantStore()
    cfg = config()

    async def main() -> tuple[str, str]:
        server = await start_grant_reports(path, reports(store, cfg), cfg)
        assert server is not None
        by_mode = await _forge(path)
        os.chmod(path, 0o666)  # an admin's mistake
        by_peer = await _forge(path)
        stop_grant_reports(server, path)
        return by_mode, by_peer

    by_mode, by_peer = asyncio.run(main())
    assert by_mode == "connect: Permission denied"
    assert by_peer == "NO not allowed to report logins"
    assert store.all(NOW) == []
