"""A user over an outbound limit, against the real `postvakt serve`.

With outcome "hold" the client sees 250, the message waits in hold/, the
postmaster (and, if configured, the user) gets a notice naming the limit and
the release command, and `postvakt queue release` delivers it.
"""

from __future__ import annotations

import email.policy
import json
import signal
import smtplib
import ssl
import time
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path

import pytest

from support import (
    LOCAL_DOMAIN,
    OTHER_OUTSIDE_IP,
    OUTSIDE_IP,
    Running,
    SmtpSink,
    base_config,
    clock_inside_one_hour,
    eventually,
    maildir_messages,
    to_toml,
    wait_maildir,
)

ALICE = f"alice@{LOCAL_DOMAIN}"
ADMIN = f"admin@{LOCAL_DOMAIN}"
NEWS = f"news@{LOCAL_DOMAIN}"
PASSWORD = "pw-alice"
REMOTE = "remote.test"


@pytest.fixture(scope="module", autouse=True)
def one_clock_hour() -> Iterator[None]:
    """Hourly limits count per clock hour: keep the whole module inside one."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("POSTVAKT_CLOCK_OFFSET", clock_inside_one_hour())
        yield


def tls_ctx() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def submit(
    srv: Running, login: str, subject: str, ip: str = OUTSIDE_IP, to: str = f"bob@{REMOTE}"
) -> str:
    """Send one message by SMTP AUTH on 587; return the reply to the end of DATA
    (or the refusal of MAIL or RCPT)."""
    msg = EmailMessage()
    msg["From"] = login
    msg["To"] = to
    msg["Subject"] = subject
    msg.set_content(f"body of {subject}\n")
    with smtplib.SMTP("127.0.0.1", srv.port("submission"), source_address=(ip, 0), timeout=30) as s:
        s.starttls(context=tls_ctx())
        s.login(login, PASSWORD)
        code, text = s.mail(login)
        if code == 250:
            code, text = s.rcpt(to)
        if code != 250:
            return f"{code} {text.decode()}"
        code, text = s.data(msg.as_bytes(policy=email.policy.SMTP))
    return f"{code} {text.decode()}"


def marker_delivered(srv: Running, tag: str) -> None:
    """A message from another outside address to a local mailbox, sent now and
    waited for until delivered with the queue empty: whatever was queued before
    it has been dealt with, so an absence checked afterwards means something."""
    with smtplib.SMTP(
        "127.0.0.1", srv.port("smtp"), source_address=(OTHER_OUTSIDE_IP, 0), timeout=30
    ) as s:
        s.sendmail(f"m@{REMOTE}", [NEWS], f"Subject: {tag}\r\n\r\nmarker\r\n")
    assert wait_maildir(srv.data_dir, NEWS, containing=tag.encode(), timeout=30)
    queue = srv.data_dir / "queue"

    def queue_settled() -> None:
        assert not any(any((queue / d).iterdir()) for d in ("incoming", "active", "deferred"))

    eventually(queue_settled, timeout=30)


def held(srv: Running) -> list[dict[str, object]]:
    rows = json.loads(srv.cli("queue", "list", "--held", "--json").stdout)
    assert isinstance(rows, list)
    return rows


@pytest.fixture()
def sink(tmp_path: Path) -> Iterator[SmtpSink]:
    s = SmtpSink(tmp_path)
    try:
        yield s
    finally:
        s.stop()


def start(tmp_path: Path, sink: SmtpSink, **limits: object) -> Running:
    data_dir = tmp_path / "data"
    cfg = base_config(
        data_dir,
        delivery={"routes": {REMOTE: f"127.0.0.1:{sink.port}"}},
        limits={"exempt": [], **limits},
    )
    cfg["postmaster"] = ADMIN  # the notices go to postmaster; here a real mailbox
    cfg_path = tmp_path / "postvakt.toml"
    cfg_path.write_text(to_toml(cfg))
    srv = Running(cfg_path, data_dir)
    for user in (ALICE, ADMIN, NEWS):
        srv.add_user(user, PASSWORD)
    return srv.start()


def test_user_over_hourly_limit_is_held_notified_and_released(
    tmp_path: Path, sink: SmtpSink
) -> None:
    srv = start(tmp_path, sink, user={"messages_per_hour": 2}, notify_user=True)
    try:
        for i in range(2):
            assert submit(srv, ALICE, f"ok {i}").startswith("250")
        assert len(sink.wait_for(2)) == 2

        def explained_as_hold() -> None:  # the counters' view for the CLI may lag a second
            exp = srv.cli(
                "explain",
                "--client",
                OUTSIDE_IP,
                "--port",
                "submission",
                "--auth",
                ALICE,
                "--from",
                ALICE,
                "--to",
                f"bob@{REMOTE}",
                check=False,
            )
            assert "=> HOLD by user.messages_per_hour" in exp.stdout, exp.stdout

        eventually(explained_as_hold)

        def at_limit() -> None:
            shown = srv.cli("limits", "show", ALICE).stdout
            assert "user.messages_per_hour" in shown and "AT LIMIT" in shown, shown

        eventually(at_limit)

        reply = submit(srv, ALICE, "third")
        assert reply.startswith("250"), reply  # the client sees success: nothing to retry
        rows = held(srv)
        assert len(rows) == 1
        qid = str(rows[0]["id"])
        assert reply.endswith(qid)
        assert "user.messages_per_hour" in str(rows[0]["hold_reason"])
        marker_delivered(srv, "marker after the held message")
        assert len(sink.messages()) == 2  # held: not delivered

        notices = wait_maildir(srv.data_dir, ADMIN)
        assert len(notices) == 1
        notice = notices[0].decode()
        assert "user.messages_per_hour" in notice
        assert ALICE in notice and OUTSIDE_IP in notice
        assert f"postvakt queue release {qid}" in notice
        assert "Auto-Submitted: auto-generated" in notice
        user_notice = [m.decode() for m in wait_maildir(srv.data_dir, ALICE)]
        assert any("Your outgoing mail was paused" in m and qid in m for m in user_notice)
        assert "hold" in srv.log() and qid in srv.log()

        # A fourth message in the same hour is held too, but no second notice is sent.
        assert submit(srv, ALICE, "fourth").startswith("250")
        assert len(held(srv)) == 2
        marker_delivered(srv, "marker after the fourth message")
        assert len(maildir_messages(srv.data_dir, ADMIN)) == 1

        # Another user is not affected.
        assert submit(srv, NEWS, "news").startswith("250")
        assert len(sink.wait_for(3)) == 3

        out = srv.cli("queue", "release", qid)
        assert "released" in out.stdout
        msgs = sink.wait_for(4)
        assert len(msgs) == 4
        assert any("Subject: third" in m for m in msgs)
        assert len(held(srv)) == 1
    finally:
        srv.stop()


@pytest.mark.parametrize(
    ("outcome", "expect"),
    [("defer", "450 4.7.1"), ("reject", "550 5.7.1")],
)
def test_user_over_hourly_limit_defer_or_reject_at_mail(
    tmp_path: Path, sink: SmtpSink, outcome: str, expect: str
) -> None:
    srv = start(tmp_path, sink, user={"messages_per_hour": 1, "outcome": outcome})
    try:
        assert submit(srv, ALICE, "first").startswith("250")
        with smtplib.SMTP("127.0.0.1", srv.port("submission"), source_address=(OUTSIDE_IP, 0)) as s:
            s.starttls(context=tls_ctx())
            s.login(ALICE, PASSWORD)
            code, text = s.mail(ALICE)
        assert f"{code} {text.decode()}".startswith(expect), (code, text)
        assert "user.messages_per_hour" in srv.log()
        assert held(srv) == []
        if outcome == "defer":
            assert "try again in" in text.decode()
    finally:
        srv.stop()


def test_per_user_override_lets_a_newsletter_sender_send_more(
    tmp_path: Path, sink: SmtpSink
) -> None:
    srv = start(
        tmp_path,
        sink,
        user={"messages_per_hour": 1, "outcome": "reject"},
        users={NEWS: {"messages_per_hour": 5}},
    )
    try:
        for i in range(4):
            assert submit(srv, NEWS, f"issue {i}").startswith("250")
        assert submit(srv, ALICE, "one").startswith("250")
        # A login is counted wherever it connects from.
        assert submit(srv, ALICE, "two", ip=OTHER_OUTSIDE_IP).startswith("550 5.7.1")

        def counted() -> None:
            shown = json.loads(srv.cli("limits", "show", NEWS, "--json").stdout)
            rows = {r["rule"]: r for r in shown["subjects"][0]["limits"]}
            assert rows[f"users.{NEWS}.messages_per_hour"]["count"] == 4
            assert rows[f"users.{NEWS}.messages_per_hour"]["limit"] == 5

        eventually(counted)
    finally:
        srv.stop()


def relay_one(srv: Running, subject: str) -> str:
    """One message from our network (127.0.0.1, not logged in) to the remote domain."""
    with smtplib.SMTP("127.0.0.1", srv.port("smtp"), timeout=30) as s:
        s.ehlo("office.example")
        code, text = s.mail(f"printer@{LOCAL_DOMAIN}")
        if code == 250:
            code, text = s.rcpt(f"bob@{REMOTE}")
        if code != 250:
            return f"{code} {text.decode()}"
        code, text = s.data(f"Subject: {subject}\r\n\r\nscan\r\n".encode())
    return f"{code} {text.decode()}"


def test_network_client_over_its_limit_is_held_and_the_admin_told(
    tmp_path: Path, sink: SmtpSink
) -> None:
    srv = start(tmp_path, sink, networks={"messages_per_hour": 1, "outcome": "hold"})
    try:
        assert relay_one(srv, "scan 1").startswith("250")
        reply = relay_one(srv, "scan 2")
        assert reply.startswith("250"), reply
        rows = held(srv)
        assert len(rows) == 1 and "networks.messages_per_hour" in str(rows[0]["hold_reason"])
        notice = wait_maildir(srv.data_dir, ADMIN)[0].decode()
        assert "client address 127.0.0.1" in notice and "not logged in" in notice
        assert f"postvakt queue release {rows[0]['id']}" in notice
        assert len(sink.wait_for(1)) == 1
    finally:
        srv.stop()


def test_reload_changes_limits_at_once(tmp_path: Path, sink: SmtpSink) -> None:
    srv = start(tmp_path, sink, user={"messages_per_hour": 1, "outcome": "reject"})
    try:
        assert submit(srv, ALICE, "one").startswith("250")
        assert submit(srv, ALICE, "two").startswith("550 5.7.1")
        text = srv.config_path.read_text()
        assert '"messages_per_hour" = 1' in text
        srv.config_path.write_text(
            text.replace('"messages_per_hour" = 1', '"messages_per_hour" = 5')
        )
        assert srv.proc is not None
        srv.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while "reloaded" not in srv.log() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert submit(srv, ALICE, "two again").startswith("250")
    finally:
        srv.stop()


def test_sqlite_counters_survive_a_restart(tmp_path: Path, sink: SmtpSink) -> None:
    srv = start(tmp_path, sink, store="sqlite", user={"messages_per_hour": 1, "outcome": "reject"})
    try:
        assert submit(srv, ALICE, "one").startswith("250")

        def counted() -> None:
            shown = json.loads(srv.cli("limits", "show", "--json").stdout)
            assert [s["subject"] for s in shown["subjects"]] == [f"user:{ALICE}"]

        eventually(counted)
        srv.restart()
        assert submit(srv, ALICE, "two").startswith("550 5.7.1")
    finally:
        srv.stop()
