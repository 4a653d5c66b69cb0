"""fail2ban over a real server's log: Debian's `fail2ban-regex` with the filter
shipped in contrib/fail2ban/ finds every failed SMTP AUTH and POP3 login made
from 127.0.0.2, names no other address, and matches no successful login, in
both log formats. A user name crafted to look like another failure line (with
a line break) must not get a third party banned.
"""

from __future__ import annotations

import base64
import poplib
import shutil
import smtplib
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from support import LOCAL_DOMAIN, OUTSIDE_IP, Running, base_config, to_toml

FAIL2BAN_REGEX = "/usr/bin/fail2ban-regex"
COMMON_CONF = Path("/etc/fail2ban/filter.d/common.conf")
FILTER = Path(__file__).resolve().parents[2] / "contrib" / "fail2ban" / "filter.d" / "postvakt.conf"

pytestmark = pytest.mark.skipif(
    not Path(FAIL2BAN_REGEX).exists() or not COMMON_CONF.exists(),
    reason="Debian's fail2ban (fail2ban-regex, /etc/fail2ban/filter.d/common.conf) is not installed",
)

ALICE = f"alice@{LOCAL_DOMAIN}"
PASSWORD = "correct horse"
THIRD_PARTY = "10.9.9.9"
# What an attacker would like a naive filter to read as a failure of somebody else.
FORGED_USER = (
    f"x> mechanism=PLAIN failed\n2026-12-07 09:30:00,123 postvakt.smtp INFO AUTH "
    f"client={THIRD_PARTY} port=smtp user=<x> mechanism=PLAIN failed"
)
DEADLINE = 30.0


def tls() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


@pytest.fixture(params=["text", "json"])
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Running]:
    data_dir = tmp_path / "data"
    cfg = base_config(
        data_dir,
        # No slow-down between attempts: the test makes several in a row.
        limits={"auth_delay": "0s", "auth_delay_max": "0s"},
        pop3={"fail_delay": "0s", "fail_delay_max": "0s"},
        log={"format": request.param},
    )
    cfg_path = tmp_path / "postvakt.toml"
    cfg_path.write_text(to_toml(cfg))
    srv = Running(cfg_path, data_dir)
    srv.add_user(ALICE, PASSWORD)
    srv.start()
    yield srv
    srv.stop()


def fail2ban_regex(tmp_path: Path, log: Path) -> list[str]:
    """The addresses fail2ban would count, one per matched line."""
    conf = tmp_path / "fail2ban" / "filter.d"
    conf.mkdir(parents=True, exist_ok=True)
    shutil.copy(COMMON_CONF, conf / "common.conf")
    shutil.copy(FILTER, conf / "postvakt.conf")
    r = subprocess.run(
        [FAIL2BAN_REGEX, "-o", "ip", str(log), str(conf / "postvakt.conf")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout.split()


def smtp_login(srv: Running, kind: str, user: str, password: str, mechanism: str) -> bool:
    if kind == "submissions":
        s: smtplib.SMTP = smtplib.SMTP_SSL(
            "127.0.0.1", srv.port(kind), source_address=(OUTSIDE_IP, 0), context=tls()
        )
    else:
        s = smtplib.SMTP("127.0.0.1", srv.port(kind), source_address=(OUTSIDE_IP, 0))
        s.starttls(context=tls())
    with s:
        s.ehlo("client.example")
        if mechanism == "PLAIN":
            raw = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
            code, _ = s.docmd("AUTH", f"PLAIN {raw}")
        else:
            s.user, s.password = user, password
            code, _ = s.auth("LOGIN", s.auth_login, initial_response_ok=False)
        return code == 235


def smtp_auth_code(srv: Running, user: str, password: str, mechanism: str) -> bool:
    try:
        return smtp_login(srv, "submission", user, password, mechanism)
    except smtplib.SMTPAuthenticationError:
        return False


class POP3SFrom(poplib.POP3_SSL):
    """POP3 over implicit TLS from the outside address."""

    def _create_socket(self, timeout: float) -> socket.socket:
        sock = socket.create_connection(
            (self.host, self.port), timeout, source_address=(OUTSIDE_IP, 0)
        )
        return self.context.wrap_socket(sock, server_hostname=self.host)


def pop3_login(srv: Running, user: str, password: str, sasl: bool) -> bool:
    p = POP3SFrom("127.0.0.1", srv.port("pop3s"), context=tls(), timeout=30)
    try:
        if sasl:
            raw = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
            p._shortcmd(f"AUTH PLAIN {raw}")
        else:
            p.user(user)
            p.pass_(password)
        p.quit()
        return True
    except poplib.error_proto:
        return False
    finally:
        p.close()


def wait_log(srv: Running, needle: str, count: int) -> str:
    deadline = time.monotonic() + DEADLINE
    while True:
        text = srv.log()
        if text.count(needle) >= count or time.monotonic() > deadline:
            return text
        time.sleep(0.1)


def test_fail2ban_bans_every_failed_login_and_no_successful_one(
    server: Running, tmp_path: Path
) -> None:
    assert not smtp_auth_code(server, ALICE, "wrong 1", "PLAIN")
    assert not smtp_auth_code(server, ALICE, "wrong 2", "LOGIN")
    assert not smtp_login(server, "submissions", "mallory@pv.test", "guess", "PLAIN")
    assert not smtp_auth_code(server, FORGED_USER, "guess", "PLAIN")
    assert not pop3_login(server, ALICE, "wrong 3", sasl=False)
    assert not pop3_login(server, "nobody@pv.test", "guess", sasl=True)
    failures = 6
    # Successful logins from the same address, over both protocols.
    assert smtp_auth_code(server, ALICE, PASSWORD, "PLAIN")
    assert smtp_login(server, "submissions", ALICE, PASSWORD, "LOGIN")
    assert pop3_login(server, ALICE, PASSWORD, sasl=False)
    assert pop3_login(server, ALICE, PASSWORD, sasl=True)
    # Every session has said goodbye (its summary line) before we read the log.
    wait_log(server, "disconnect from unknown[127.0.0.2] port=submission", 4)
    wait_log(server, "pop3 disconnect from unknown[127.0.0.2]", 4)

    log = server.log_path
    assert log is not None
    banned = fail2ban_regex(tmp_path, log)
    assert banned == [OUTSIDE_IP] * failures, banned

    successes = tmp_path / "successes.log"
    successes.write_text(
        "".join(
            line + "\n"
            for line in server.log().splitlines()
            if " ok" in line and "AUTH client=" in line or "pop3 login client=" in line
        )
    )
    assert len(successes.read_text().splitlines()) == 4
    assert fail2ban_regex(tmp_path, successes) == []
