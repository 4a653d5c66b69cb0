"""`postvakt explain` agrees with the live server on every row of the policy table.

Each row is run twice: once through `postvakt explain --json` (the offline
what-if) and once as a real SMTP session from the row's client address, with
AUTH when the row has a login and a real POP3 login when it has a grant. The
replies to MAIL and to every RCPT must be the same, line for line.
"""

from __future__ import annotations

import json
import poplib
import smtplib
import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from support import LOCAL_DOMAIN, Running, start_server

ALICE = f"alice@{LOCAL_DOMAIN}"
BOB = f"bob@{LOCAL_DOMAIN}"
PASSWORD = "alice pw"
TRUSTED = "127.0.0.1"  # in networks
OUTSIDE = "127.0.0.2"  # nowhere
ALLOWED = "127.0.0.4"  # in [relay] clients
POP_USER_IP = "127.0.0.5"  # logs in to POP3 first


@dataclass(frozen=True)
class Row:
    id: str
    ip: str
    login: str | None
    port: str
    mail_from: str
    rcpts: tuple[str, ...]
    pop_login: bool = False


ROWS = [
    Row("anyone-to-local", OUTSIDE, None, "smtp", "x@elsewhere.example", (ALICE,)),
    Row(
        "anyone-to-relay-domain",
        OUTSIDE,
        None,
        "smtp",
        "x@elsewhere.example",
        ("v@backup.example",),
    ),
    Row(
        "anyone-to-postmaster",
        OUTSIDE,
        None,
        "smtp",
        "x@elsewhere.example",
        (f"postmaster@{LOCAL_DOMAIN}",),
    ),
    Row(
        "unknown-local-user",
        OUTSIDE,
        None,
        "smtp",
        "x@elsewhere.example",
        (f"nobody@{LOCAL_DOMAIN}",),
    ),
    Row(
        "reject_unauth_destination",
        OUTSIDE,
        None,
        "smtp",
        "x@elsewhere.example",
        ("v@other.example",),
    ),
    Row("permit_networks", TRUSTED, None, "smtp", "x@elsewhere.example", ("v@other.example",)),
    Row("permit_clients", ALLOWED, None, "smtp", "x@elsewhere.example", ("v@other.example",)),
    Row("permit_authenticated", OUTSIDE, ALICE, "submission", ALICE, ("v@other.example", BOB)),
    Row(
        "permit_pop_before_smtp",
        POP_USER_IP,
        None,
        "smtp",
        "x@elsewhere.example",
        ("v@other.example",),
        pop_login=True,
    ),
    Row("sender-not-logged-in", OUTSIDE, None, "smtp", ALICE, ("v@other.example",)),
    Row("sender-not-owned", OUTSIDE, ALICE, "submission", BOB, ("v@other.example",)),
    Row(
        "mixed-recipients",
        OUTSIDE,
        None,
        "smtp",
        "x@elsewhere.example",
        (BOB, "v@other.example", f"nobody@{LOCAL_DOMAIN}"),
    ),
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    srv = start_server(
        tmp_path_factory.mktemp("explain-live"),
        users={ALICE: PASSWORD, BOB: "bob pw"},
        domains={"relay": ["backup.example"]},
        relay={"clients": [f"{ALLOWED}/32"], "grant_store": "sqlite"},
    )
    try:
        yield srv
    finally:
        srv.stop()


class BoundPOP3(poplib.POP3):
    """poplib with a chosen source address (poplib has no source_address)."""

    def __init__(self, source_ip: str, host: str, port: int, timeout: float) -> None:
        self._source_ip = source_ip
        super().__init__(host, port, timeout)

    def _create_socket(self, timeout: float) -> socket.socket:
        return socket.create_connection(
            (self.host, self.port), timeout, source_address=(self._source_ip, 0)
        )


def tls() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def live(server: Running, row: Row) -> list[str | None]:
    """Replies to MAIL and each RCPT, as "code text" strings (None where not reached)."""
    if row.pop_login:
        p = BoundPOP3(row.ip, "127.0.0.1", server.port("pop3"), timeout=10)
        p.stls(context=tls())
        p.user(ALICE)
        p.pass_(PASSWORD)
        p.quit()
    with smtplib.SMTP(
        "127.0.0.1", server.port(row.port), source_address=(row.ip, 0), timeout=20
    ) as s:
        s.ehlo("client.example")
        if row.port == "submission":
            s.starttls(context=tls())
            s.ehlo("client.example")
        if row.login:
            s.login(row.login, PASSWORD)
        code, text = s.mail(row.mail_from)
        out: list[str | None] = [f"{code} {text.decode()}"]
        for r in row.rcpts:
            if code >= 400:
                out.append(None)
                continue
            rc, rt = s.rcpt(r)
            out.append(f"{rc} {rt.decode()}")
        s.rset()
    return out


def offline(server: Running, row: Row) -> list[str | None]:
    args = ["explain", "--json", "--client", row.ip, "--port", row.port, "--from", row.mail_from]
    if row.login:
        args += ["--auth", row.login]
    for r in row.rcpts:
        args += ["--to", r]
    result = server.cli(*args, check=False)
    assert result.returncode in (0, 1), result.stderr
    data = json.loads(result.stdout)
    out: list[str | None] = []
    for check in data["checks"]:
        if check["command"].upper().startswith(("MAIL", "RCPT")):
            if not check["reached"]:
                out.append(None)
                continue
            lines = check["reply"]
            code = lines[0][:3]
            out.append(code + " " + "\n".join(line[4:] for line in lines))
    return out


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_explain_agrees_with_live_server(server: Running, row: Row) -> None:
    got_live = live(server, row)
    got_offline = offline(server, row)
    assert got_offline == got_live
