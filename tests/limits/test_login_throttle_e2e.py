"""The failed-login throttle against the real `postvakt serve`: attempts in
parallel sessions cost what serial ones cost (each is reserved before its
password is checked), on SMTP AUTH and POP3 alike, on both stores.

Every session is opened and brought to the point of sending its password
first; then all send at once. Which attempts had their password checked is
read from the server's log (`... failed` against `... refused: too many failures`)
and, on SMTP, from the reply (535 against 454).
"""

from __future__ import annotations

import base64
import re
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from support import LOCAL_DOMAIN, OUTSIDE_IP, RawClient, Running, eventually, start_server

ALICE = f"alice@{LOCAL_DOMAIN}"
PASSWORD = "pw-alice"
PARALLEL = 40
CEILING = 10  # [limits] auth_failures, the default


def tls_ctx() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


@pytest.fixture(params=["memory", "sqlite"])
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Running]:
    srv = start_server(
        tmp_path,
        users={ALICE: PASSWORD},
        # Small delays keep the test short; the ceiling is the default's.
        limits={"auth_delay": 0.05, "auth_delay_max": 0.2, "store": request.param},
        pop3={"fail_delay": 0.05, "fail_delay_max": 0.2},
    )
    try:
        yield srv
    finally:
        srv.stop()


def smtp_ready(srv: Running) -> RawClient:
    """A submission session from outside, after STARTTLS and EHLO: one line from AUTH."""
    c = RawClient(srv.port("submission"), OUTSIDE_IP, timeout=60)
    assert c.reply().startswith("220")
    c.cmd("EHLO client.example")
    assert c.cmd("STARTTLS").startswith("220")
    c.sock = tls_ctx().wrap_socket(c.sock, server_hostname="mx.pv.test")
    assert "AUTH PLAIN" in c.cmd("EHLO client.example")
    return c


def smtp_attempt(c: RawClient, password: str) -> str:
    token = base64.b64encode(f"\0{ALICE}\0{password}".encode()).decode()
    return c.cmd(f"AUTH PLAIN {token}")


def pop3_ready(srv: Running) -> RawClient:
    """A POP3 session on 995 from outside, after USER: one line from PASS."""
    sock = socket.create_connection(
        ("127.0.0.1", srv.port("pop3s")), timeout=60, source_address=(OUTSIDE_IP, 0)
    )
    c = RawClient.__new__(RawClient)
    c.sock, c.buf = tls_ctx().wrap_socket(sock, server_hostname="mx.pv.test"), b""
    assert c.line().startswith("+OK")
    c.send(f"USER {ALICE}\r\n")
    assert c.line() == "+OK"
    return c


def pop3_attempt(c: RawClient, password: str) -> str:
    c.send(f"PASS {password}\r\n")
    return c.line()


def all_at_once(
    sessions: list[tuple[RawClient, Callable[[RawClient, str], str]]],
) -> list[str]:
    """Each session sends its own wrong password at the same moment; their replies."""
    replies: list[str] = [""] * len(sessions)
    go = threading.Barrier(len(sessions))

    def attempt(i: int) -> None:
        client, send = sessions[i]
        go.wait()
        replies[i] = send(client, f"wrong-{i}")

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(len(sessions))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    for client, _ in sessions:
        client.close()
    return replies


def checked_and_refused(srv: Running) -> tuple[int, int]:
    """(attempts whose password was checked and was wrong, attempts refused unchecked)."""
    checked = refused = 0
    for line in srv.log().splitlines():
        if "refused: too many failures (login)" in line:
            refused += 1
        elif re.search(r"AUTH client=\S+ .* failed$|pop3 login failed client=", line):
            checked += 1
    return checked, refused


def test_40_parallel_wrong_auth_plain_get_10_password_checks(server: Running) -> None:
    sessions = [(smtp_ready(server), smtp_attempt) for _ in range(PARALLEL)]
    replies = all_at_once(sessions)
    codes = sorted(r[:3] for r in replies)
    assert codes == ["454"] * (PARALLEL - CEILING) + ["535"] * CEILING, replies

    def logged() -> None:
        assert checked_and_refused(server) == (CEILING, PARALLEL - CEILING)

    eventually(logged)


def test_40_parallel_wrong_pop3_logins_get_10_password_checks(server: Running) -> None:
    sessions = [(pop3_ready(server), pop3_attempt) for _ in range(PARALLEL)]
    replies = all_at_once(sessions)
    # A refused attempt looks like a wrong password to the client ...
    assert replies == ["-ERR [AUTH] Authentication failed"] * PARALLEL
    # ... but only the ceiling had a password checked.

    def logged() -> None:
        assert checked_and_refused(server) == (CEILING, PARALLEL - CEILING)

    eventually(logged)


def test_smtp_and_pop3_in_parallel_share_one_ceiling(server: Running) -> None:
    half = PARALLEL // 2
    sessions = [(smtp_ready(server), smtp_attempt) for _ in range(half)]
    sessions += [(pop3_ready(server), pop3_attempt) for _ in range(half)]
    replies = all_at_once(sessions)
    assert sum(r.startswith("535") for r in replies[:half]) <= CEILING

    def logged() -> None:
        assert checked_and_refused(server) == (CEILING, PARALLEL - CEILING)

    eventually(logged)
    # And the right password is refused too now, from this address, for this login.
    c = smtp_ready(server)
    assert smtp_attempt(c, PASSWORD).startswith("454 4.7.0")
    c.close()
