"""IPv6 clients on the roads that are not the address itself: a POP3 login
from ::1 opens POP-before-SMTP for ::1, and the outbound limits count an IPv6
client (by its /64). The real server listens on [::1] only; `networks` leaves
::1 out, so the client starts as an outsider."""

from __future__ import annotations

import json
import poplib
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest

from support import LOCAL_DOMAIN, RawClient, Running, SmtpSink, base_config, to_toml

REMOTE = "other.example"
ALICE = f"alice@{LOCAL_DOMAIN}"
PASSWORD = "correct horse"


@pytest.fixture
def sink(tmp_path: Path) -> Iterator[SmtpSink]:
    s = SmtpSink(tmp_path / "sink", host="::1")
    yield s
    s.stop()


@pytest.fixture
def server(tmp_path: Path, sink: SmtpSink) -> Iterator[Running]:
    data_dir = tmp_path / "data"
    cfg = base_config(
        data_dir,
        delivery={"routes": {REMOTE: sink.address}},
        limits={"exempt": [], "address": {"messages_per_hour": 1, "outcome": "reject"}},
    )
    cfg["listen"] = {"smtp": ["[::1]:0"], "pop3s": ["[::1]:0"]}
    cfg_path = tmp_path / "postvakt.toml"
    cfg_path.write_text(to_toml(cfg))
    srv = Running(cfg_path, data_dir)
    srv.add_user(ALICE, PASSWORD)
    srv.start()
    yield srv
    srv.stop()


def relay(srv: Running, subject: str) -> tuple[str, str]:
    c = RawClient(srv.port_on("smtp", "::1"), "::1")
    try:
        c.reply()
        c.cmd("EHLO client.example")
        mail = c.cmd(f"MAIL FROM:<{ALICE}>")
        if not mail.startswith("250"):
            return mail, ""
        rcpt = c.cmd(f"RCPT TO:<friend@{REMOTE}>")
        if not rcpt.startswith("250"):
            return mail, rcpt
        assert c.cmd("DATA").startswith("354")
        c.send(f"Subject: {subject}\r\n\r\nbody\r\n.\r\n")
        return mail, c.reply()
    finally:
        c.close()


def test_pop_before_smtp_and_limits_over_ipv6(server: Running, sink: SmtpSink) -> None:
    # An outsider on ::1: refused (not logged in as the sender's owner, or no road).
    mail, rcpt = relay(server, "before-login")
    assert mail.startswith("553 5.7.1") or rcpt.startswith("550 5.7.1"), (mail, rcpt)

    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    p = poplib.POP3_SSL("::1", server.port_on("pop3s", "::1"), context=ctx, timeout=30)
    p.user(ALICE)
    p.pass_(PASSWORD)
    p.quit()
    rows = json.loads(server.cli("grants", "list", "--json").stdout)
    assert [(r["ip"], r["login"]) for r in rows] == [("::1", ALICE)], rows

    mail, data = relay(server, "after-pop3-login")
    assert mail.startswith("250") and data.startswith("250"), (mail, data)
    assert any("after-pop3-login" in m for m in sink.wait_for(1))
    assert "rule=permit_pop_before_smtp" in server.log()

    # The address limit (one message an hour) counts the IPv6 client, by its /64.
    mail, _ = relay(server, "over-the-limit")
    assert mail.startswith("5"), mail
    assert "Too many messages per hour from client address ::/64 (limit 1)" in mail, mail
