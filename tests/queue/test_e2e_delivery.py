"""Queue and delivery end to end: the real `postvakt serve`, swaks on 587 with
AUTH, Postfix's smtp-sink as the remote MX, Maildir read back with mailbox."""

from __future__ import annotations

import email
import mailbox
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from support import LOCAL_DOMAIN, Running, SmtpSink, start_server, wait_maildir

pytestmark = pytest.mark.skipif(shutil.which("swaks") is None, reason="swaks is not installed")

REMOTE = "other.example"
ALICE = f"alice@{LOCAL_DOMAIN}"
BOB = f"bob@{LOCAL_DOMAIN}"
PASSWORD = "queue test password"


def swaks_submit(
    srv: Running, to: str, subject: str, sender: str = ALICE
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            "swaks",
            "--hide-informational",
            "--timeout",
            "20",
            "--server",
            f"127.0.0.1:{srv.port('submission')}",
            "--tls",
            "--auth",
            "PLAIN",
            "--auth-user",
            ALICE,
            "--auth-password",
            PASSWORD,
            "--from",
            sender,
            "--to",
            to,
            "--header",
            f"Subject: {subject}",
            "--body",
            f"body of {subject}\n.a line with a leading dot\n",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )


def wait_for_marker(srv: Running, mailbox: str, marker: str) -> None:
    """Send a message to a local mailbox after the test's traffic and wait until
    it is delivered and the queue is empty: whatever the server was going to do
    with earlier mail (a bounce, a notice) is done, so an absence means something."""
    import smtplib

    with smtplib.SMTP("127.0.0.1", srv.port("smtp"), timeout=30) as s:
        s.sendmail(f"m@{LOCAL_DOMAIN}", [mailbox], f"Subject: {marker}\r\n\r\nmarker\r\n")
    assert wait_maildir(srv.data_dir, mailbox, containing=marker.encode(), timeout=30)
    q = srv.data_dir / "queue"
    deadline = time.monotonic() + 30
    while any(list((q / s).iterdir()) for s in ("incoming", "active", "deferred")):
        assert time.monotonic() < deadline, "queue did not empty"
        time.sleep(0.05)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[Path, list[SmtpSink], list[Running]]]:
    sinks: list[SmtpSink] = []
    servers: list[Running] = []
    yield tmp_path, sinks, servers
    for s in servers:
        s.stop()
    for k in sinks:
        k.stop()


def test_submission_to_sink_and_to_local_maildir(world) -> None:  # type: ignore[no-untyped-def]
    tmp_path, sinks, servers = world
    sink = SmtpSink(tmp_path)
    sinks.append(sink)
    srv = start_server(
        tmp_path,
        users={ALICE: PASSWORD, BOB: "b"},
        delivery={"routes": {REMOTE: f"127.0.0.1:{sink.port}"}},
    )
    servers.append(srv)
    r = swaks_submit(srv, f"friend@{REMOTE}", "e2e-remote")
    assert r.returncode == 0, r.stdout + r.stderr
    [dump] = sink.wait_for(1)
    assert "Subject: e2e-remote" in dump and "\n.a line with a leading dot" in dump
    r = swaks_submit(srv, BOB, "e2e-local")
    assert r.returncode == 0, r.stdout + r.stderr
    wait_maildir(srv.data_dir, BOB, 1)
    box = mailbox.Maildir(srv.data_dir / "mail" / LOCAL_DOMAIN / "bob", create=False)
    [msg] = list(box)
    assert msg["Subject"] == "e2e-local"
    assert msg["Return-Path"] == f"<{ALICE}>"
    assert msg["Delivered-To"] == BOB
    assert msg["Received"]
    assert "a line with a leading dot" in msg.get_payload()
    log = srv.log()
    assert (
        f"to=<friend@{REMOTE}> relay=127.0.0.1[127.0.0.1]:{sink.port}" in log
        and "status=sent" in log
    )


def test_4xx_sink_keeps_mail_across_restart_until_accepted(world) -> None:  # type: ignore[no-untyped-def]
    tmp_path, sinks, servers = world
    refusing = SmtpSink(tmp_path, extra=["-r", "rcpt"])
    sinks.append(refusing)
    srv = start_server(
        tmp_path,
        users={ALICE: PASSWORD},
        delivery={"routes": {REMOTE: f"127.0.0.1:{refusing.port}"}},
    )
    servers.append(srv)
    r = swaks_submit(srv, f"friend@{REMOTE}", "e2e-deferred")
    assert r.returncode == 0, r.stdout + r.stderr
    deadline = time.monotonic() + 20
    while "status=deferred" not in srv.log() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "status=deferred" in srv.log()
    srv.stop()
    assert list((srv.data_dir / "queue" / "deferred").iterdir())  # still queued, on disk
    port = refusing.port
    refusing.stop()
    accepting = SmtpSink(tmp_path, port=port)
    sinks.append(accepting)
    srv.start()
    [dump] = accepting.wait_for(1)
    assert "Subject: e2e-deferred" in dump
    assert wait_maildir(srv.data_dir, ALICE, 1, timeout=2) == []  # no bounce


def test_5xx_sink_bounces_to_sender_maildir(world) -> None:  # type: ignore[no-untyped-def]
    tmp_path, sinks, servers = world
    sink = SmtpSink(tmp_path, extra=["-B", "550 5.1.1 friend: no such user here", "-f", "rcpt"])
    sinks.append(sink)
    srv = start_server(
        tmp_path, users={ALICE: PASSWORD}, delivery={"routes": {REMOTE: f"127.0.0.1:{sink.port}"}}
    )
    servers.append(srv)
    r = swaks_submit(srv, f"friend@{REMOTE}", "e2e-bounced")
    assert r.returncode == 0, r.stdout + r.stderr
    [raw] = wait_maildir(srv.data_dir, ALICE, 1)
    bounce = email.message_from_bytes(raw)
    assert bounce.get_content_type() == "multipart/report"
    assert bounce["Return-Path"] == "<>"
    human, status, original = bounce.get_payload()  # type: ignore[misc]
    _, rcpt = status.get_payload()
    assert rcpt["Final-Recipient"] == f"rfc822; friend@{REMOTE}"
    assert rcpt["Action"] == "failed"
    assert rcpt["Diagnostic-Code"] == "smtp; 550 5.1.1 friend: no such user here"
    assert "550 5.1.1 friend: no such user here" in human.get_payload()
    assert original.get_payload()[0]["Subject"] == "e2e-bounced"


def test_failing_bounce_to_null_sender_is_dropped_with_a_log_line(world) -> None:  # type: ignore[no-untyped-def]
    tmp_path, sinks, servers = world
    sink = SmtpSink(tmp_path, extra=["-f", "rcpt"])
    sinks.append(sink)
    srv = start_server(
        tmp_path, users={BOB: "bob pw"}, delivery={"routes": {REMOTE: f"127.0.0.1:{sink.port}"}}
    )
    servers.append(srv)
    r = subprocess.run(
        [
            "swaks",
            "--hide-informational",
            "--server",
            f"127.0.0.1:{srv.port('smtp')}",
            "--from",
            "<>",
            "--to",
            f"friend@{REMOTE}",
            "--header",
            "Subject: a bounce",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    deadline = time.monotonic() + 20
    while "bounce dropped" not in srv.log() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "bounce dropped" in srv.log()
    wait_for_marker(srv, BOB, "marker after the dropped bounce")
    q = srv.data_dir / "queue"
    assert not any(list((q / s).iterdir()) for s in ("incoming", "active", "deferred", "hold"))
    assert "dsn=" not in srv.log()


def test_dsn_parameters_travel_to_the_next_hop(world) -> None:  # type: ignore[no-untyped-def]
    import smtplib

    tmp_path, sinks, servers = world
    sink = SmtpSink(tmp_path)
    sinks.append(sink)
    srv = start_server(tmp_path, delivery={"routes": {REMOTE: f"127.0.0.1:{sink.port}"}})
    servers.append(srv)
    with smtplib.SMTP("127.0.0.1", srv.port("smtp"), timeout=10) as s:
        s.sendmail(
            "x@home.example",
            [f"friend@{REMOTE}"],
            "Subject: dsn params\r\n\r\nx\r\n",
            mail_options=["RET=HDRS", "ENVID=env+2B42"],
            rcpt_options=["NOTIFY=SUCCESS,FAILURE", "ORCPT=rfc822;Friend+2B1@other.example"],
        )
    [dump] = sink.wait_for(1)
    assert "X-Mail-Args: <x@home.example> RET=HDRS ENVID=env+2B42" in dump
    assert (
        "X-Rcpt-Args: <friend@other.example> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;Friend+2B1@other.example"
        in dump
    )


def test_notify_never_means_no_bounce(world) -> None:  # type: ignore[no-untyped-def]
    import smtplib

    tmp_path, sinks, servers = world
    sink = SmtpSink(tmp_path, extra=["-f", "rcpt"])
    sinks.append(sink)
    srv = start_server(
        tmp_path, users={ALICE: PASSWORD}, delivery={"routes": {REMOTE: f"127.0.0.1:{sink.port}"}}
    )
    servers.append(srv)
    with smtplib.SMTP("127.0.0.1", srv.port("submission"), timeout=10) as s:
        s.starttls()
        s.login(ALICE, PASSWORD)
        s.sendmail(
            ALICE,
            [f"friend@{REMOTE}"],
            "Subject: never\r\n\r\nx\r\n",
            rcpt_options=["NOTIFY=NEVER"],
        )
    deadline = time.monotonic() + 20
    while "status=bounced" not in srv.log() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "status=bounced" in srv.log()
    wait_for_marker(srv, ALICE, "marker after NOTIFY=NEVER")
    assert [m for m in wait_maildir(srv.data_dir, ALICE, 1) if b"marker" not in m] == []


def test_sigterm_abandons_a_slow_delivery_safely_and_restart_delivers(world) -> None:  # type: ignore[no-untyped-def]
    tmp_path, sinks, servers = world
    slow = SmtpSink(tmp_path, extra=["-w", "120"])  # answers DATA only after 2 minutes
    sinks.append(slow)
    srv = start_server(
        tmp_path, users={ALICE: PASSWORD}, delivery={"routes": {REMOTE: f"127.0.0.1:{slow.port}"}}
    )
    servers.append(srv)
    r = swaks_submit(srv, f"friend@{REMOTE}", "e2e-sigterm")
    assert r.returncode == 0, r.stdout + r.stderr
    # Wait until the manager has taken the message on (it may still be starting).
    active = srv.data_dir / "queue" / "active"
    deadline = time.monotonic() + 20
    while not list(active.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert list(active.iterdir())  # in delivery: the slow peer holds back its DATA reply
    t0 = time.monotonic()
    assert srv.stop(timeout=30) == 0
    assert time.monotonic() - t0 < 25
    assert "deliveries abandoned" in srv.log()
    port = slow.port
    slow.stop()
    fast = SmtpSink(tmp_path, port=port)
    sinks.append(fast)
    srv.start()
    [dump] = fast.wait_for(1)
    assert "Subject: e2e-sigterm" in dump
