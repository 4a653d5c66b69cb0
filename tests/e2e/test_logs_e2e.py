"""Logs of the real server: `[log] format = "json"` gives one JSON object per
line from every process (front and queue manager), and each SMTP and POP3
session ends with one summary line of the commands it used (Postfix's
`disconnect from unknown[addr] ehlo=1 mail=1 rcpt=1 data=1 quit=1 commands=5`)."""

from __future__ import annotations

import json
import smtplib
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from support import LOCAL_DOMAIN, OUTSIDE_IP, RawClient, Running, base_config, to_toml

ALICE = f"alice@{LOCAL_DOMAIN}"
PASSWORD = "correct horse"
DEADLINE = 30.0


def start(tmp_path: Path, fmt: str | None) -> Running:
    data_dir = tmp_path / "data"
    sections = {"log": {"format": fmt}} if fmt else {}
    cfg_path = tmp_path / "postvakt.toml"
    cfg_path.write_text(to_toml(base_config(data_dir, **sections)))
    srv = Running(cfg_path, data_dir)
    srv.add_user(ALICE, PASSWORD)
    return srv.start()


@pytest.fixture(params=["text", "json", None], ids=["text", "json", "default"])
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Running]:
    srv = start(tmp_path, request.param)
    srv.fmt = request.param or "text"  # type: ignore[attr-defined]
    yield srv
    srv.stop()


def messages(srv: Running) -> list[str]:
    """The message of every log line (the JSON form's "msg"; the text form's whole line)."""
    out = []
    for line in srv.log().splitlines():
        if line.startswith("postvakt: ready"):  # stdout's one line, for a person at a terminal
            continue
        if srv.fmt == "json":  # type: ignore[attr-defined]
            entry = json.loads(line)  # every line is one JSON object
            assert set(entry) >= {"time", "level", "logger", "pid", "msg"}, entry
            out.append(entry["msg"])
        else:
            assert not line.startswith("{"), line
            out.append(line)
    return out


def wait_message(srv: Running, needle: str) -> list[str]:
    deadline = time.monotonic() + DEADLINE
    while True:
        found = [m for m in messages(srv) if needle in m]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def test_session_summaries_in_either_format(server: Running) -> None:
    with smtplib.SMTP("127.0.0.1", server.port("smtp"), source_address=(OUTSIDE_IP, 0)) as s:
        s.ehlo("client.example")
        s.sendmail("x@elsewhere.example", [ALICE], "Subject: hi\r\n\r\nhello\r\n")
    found = wait_message(
        server,
        "disconnect from unknown[127.0.0.2] port=smtp ehlo=1 mail=1 rcpt=1 data=1 quit=1 commands=5",
    )
    assert len(found) == 1, found

    c = RawClient(server.port("smtp"), OUTSIDE_IP)
    c.reply()
    c.cmd("EHLO client.example")
    c.cmd("MAIL FROM:<x@elsewhere.example>")
    assert c.cmd("RCPT TO:<v@other.example>").startswith("550")
    c.cmd("BOGUS")
    c.close()  # no QUIT: the summary is written however the session ends
    assert wait_message(
        server,
        "disconnect from unknown[127.0.0.2] port=smtp ehlo=1 mail=1 rcpt=0/1 unknown=0/1 commands=2/4",
    )

    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    raw = socket.create_connection(("127.0.0.1", server.port("pop3s")), timeout=20)
    with ctx.wrap_socket(raw) as t:
        f = t.makefile("rwb")
        assert f.readline().startswith(b"+OK")
        for cmd in (f"USER {ALICE}", "PASS wrong"):
            f.write(cmd.encode() + b"\r\n")
            f.flush()
            f.readline()
        for cmd in (f"USER {ALICE}", f"PASS {PASSWORD}", "STAT", "QUIT"):
            f.write(cmd.encode() + b"\r\n")
            f.flush()
            assert f.readline().startswith(b"+OK"), cmd
        f.close()
    assert wait_message(
        server,
        "pop3 disconnect from unknown[127.0.0.1] port=pop3s user=2 pass=1/2 stat=1 quit=1"
        " commands=5/6",
    )
    # The queue manager's lines come in the same format (delivery of the first message).
    assert wait_message(server, "status=sent")
