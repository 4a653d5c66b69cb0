"""`postvakt serve`, `init` and config errors as an admin meets them."""

from __future__ import annotations

import os
import signal
import smtplib
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from support import (
    LOCAL_DOMAIN,
    OUTSIDE_IP,
    RawClient,
    Running,
    base_config,
    postvakt,
    start_server,
    to_toml,
    wait_maildir,
    write_server_config,
)

ALICE = f"alice@{LOCAL_DOMAIN}"


def test_init_writes_a_commented_config_that_serves(tmp_path: Path) -> None:
    r = postvakt(
        "init",
        "--dir",
        str(tmp_path / "etc"),
        "--domain",
        "Proseware.Example",
        "--ports",
        "unprivileged",
    )
    cfg = tmp_path / "etc" / "postvakt.toml"
    text = cfg.read_text()
    assert 'local = ["proseware.example"]' in text
    assert text.count("#") > 20  # commented
    assert (tmp_path / "etc" / "data").is_dir()
    again = postvakt(
        "init", "--dir", str(tmp_path / "etc"), "--domain", "proseware.example", check=False
    )
    assert again.returncode != 0 and "exists already" in again.stderr
    assert "Traceback" not in again.stderr + r.stderr


@pytest.mark.parametrize(
    ("toml", "expect"),
    [
        ('[relay]\nnetworks = ["10.0.0.0/33"]\n', "[relay] networks: '10.0.0.0/33' is not a valid"),
        ("[relay]\nnetwork = []\n", "[relay] network: unknown key"),
        (
            '[tls]\ncert = "missing-cert.pem"\nkey = "missing-key.pem"\n[listen]\nsmtp = ["127.0.0.1:0"]\n',
            "cannot read",
        ),
        ('[listen]\nsmtp = ["127.0.0.1:0"]\n', "is not a usable directory"),
        ("", "[listen]: no listener configured"),
    ],
    ids=["bad-cidr", "unknown-key", "unreadable-certificate", "unusable-data-dir", "no-listener"],
)
def test_bad_config_one_line_no_traceback(tmp_path: Path, toml: str, expect: str) -> None:
    cfg = tmp_path / "bad.toml"
    data_dir = "/proc/nonexistent/x" if "usable directory" in expect else tmp_path / "data"
    cfg.write_text(f'data_dir = "{data_dir}"\n' + toml)
    r = subprocess.run(
        [sys.executable, "-m", "postvakt", "serve", "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert str(cfg) in r.stderr and expect in r.stderr


def test_port_in_use_is_named(tmp_path: Path) -> None:
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    port = blocker.getsockname()[1]
    cfg = tmp_path / "p.toml"
    cfg.write_text(to_toml(base_config(tmp_path / "data", listen={"smtp": [f"127.0.0.1:{port}"]})))
    r = subprocess.run(
        [sys.executable, "-m", "postvakt", "serve", "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    blocker.close()
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    assert f"[listen] smtp: 127.0.0.1:{port} is already in use" in r.stderr


def test_user_commands(tmp_path: Path) -> None:
    cfg, _ = write_server_config(tmp_path)
    postvakt("user", "add", ALICE, "--password-stdin", config=cfg, input="pw\n")
    assert postvakt("user", "list", config=cfg).stdout.split() == [ALICE]
    dup = postvakt("user", "add", ALICE, "--password-stdin", config=cfg, input="pw\n", check=False)
    assert dup.returncode == 1 and "exists already" in dup.stderr and "Traceback" not in dup.stderr
    postvakt("user", "passwd", ALICE, "--password-stdin", config=cfg, input="new\n")
    postvakt("alias", "add", f"info@{LOCAL_DOMAIN}", ALICE, config=cfg)
    assert f"info@{LOCAL_DOMAIN} -> {ALICE}" in postvakt("alias", "list", config=cfg).stdout
    postvakt("user", "sendas", "add", ALICE, f"sales@{LOCAL_DOMAIN}", config=cfg)
    assert postvakt("user", "sendas", "list", ALICE, config=cfg).stdout.split() == [
        f"sales@{LOCAL_DOMAIN}"
    ]
    postvakt("user", "del", ALICE, config=cfg)
    assert postvakt("user", "list", config=cfg).stdout.strip() == ""
    nopw = postvakt("user", "add", f"bob@{LOCAL_DOMAIN}", config=cfg, check=False, input="")
    assert nopw.returncode != 0 and "password" in nopw.stderr


def test_embedded_default_prints_how_to_start(tmp_path: Path) -> None:
    ports = [2525, 2587, 2465, 2110, 2995]
    for p in ports:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", p)) == 0:
                pytest.skip(f"port {p} of the embedded default is in use on this machine")
    proc = subprocess.Popen(
        [sys.executable, "-m", "postvakt", "serve"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 20
        while (
            not (tmp_path / "postvakt-data" / "listening.json").exists()
            and time.monotonic() < deadline
        ):
            time.sleep(0.05)
        add = subprocess.run(
            [
                sys.executable,
                "-m",
                "postvakt",
                "user",
                "add",
                "alice@example.test",
                "--password-stdin",
            ],
            cwd=tmp_path,
            input="pw\n",
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert add.returncode == 0, add.stderr
        with smtplib.SMTP("127.0.0.1", 2525, timeout=10) as s:
            assert (
                s.sendmail("x@y.example", ["alice@example.test"], "Subject: default\r\n\r\nhi\r\n")
                == {}
            )
        assert wait_maildir(tmp_path / "postvakt-data", "alice@example.test")
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
    assert "postvakt user add alice@example.test" in out
    assert "swaks" in out
    assert proc.returncode == 0


def test_postmaster_always_reaches_an_admin_mailbox(tmp_path: Path) -> None:
    """RFC 5321 §4.5.1: <Postmaster> and postmaster@ every local domain are
    accepted and kept, even before anyone made a user for the admin mailbox."""
    srv = start_server(tmp_path)  # no users at all
    try:
        c = RawClient(srv.port("smtp"), OUTSIDE_IP)
        c.reply()
        c.cmd("EHLO c.example")
        c.cmd("MAIL FROM:<someone@elsewhere.example>")
        assert c.cmd("RCPT TO:<Postmaster>").startswith("250")
        assert c.cmd(f"RCPT TO:<POSTMASTER@{LOCAL_DOMAIN}>").startswith("250")
        assert c.cmd("DATA").startswith("354")
        assert c.cmd("Subject: to-the-postmaster\r\n\r\nhello\r\n.").startswith("250")
        c.close()
        msgs = wait_maildir(srv.data_dir, f"postmaster@{LOCAL_DOMAIN}")
        assert len(msgs) == 1 and b"to-the-postmaster" in msgs[0]  # one copy, not a bounce
        srv.add_user(f"postmaster@{LOCAL_DOMAIN}", "pm")  # now readable over POP3 too
    finally:
        srv.stop()


def test_received_header_records_tls_and_auth(tmp_path: Path) -> None:
    import ssl

    srv = start_server(tmp_path, users={ALICE: "pw"})
    try:
        ctx = ssl.create_default_context()
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        with smtplib.SMTP("127.0.0.1", srv.port("submission"), timeout=10) as s:
            s.starttls(context=ctx)
            s.login(ALICE, "pw")
            s.sendmail(ALICE, [ALICE], "Subject: received\r\n\r\nhi\r\n")
        msg = wait_maildir(srv.data_dir, ALICE)[0].decode()
        received = msg.split("Received: ", 1)[1].split("\n\n")[0]
        assert "with ESMTPSA id" in received and "TLSv1." in received
    finally:
        srv.stop()


def test_received_header_says_utf8smtpsa_and_the_real_zone_offset(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """RFC 6531 §3.7.3: a transaction with SMTPUTF8 is recorded as UTF8SMTP(S)(A);
    RFC 5322 §3.3: the date carries the server's offset, not "-0000" (unknown)."""
    import ssl

    monkeypatch.setenv("TZ", "IST-5:30")  # POSIX form: +0530 all year, no zone files needed
    srv = start_server(tmp_path, users={ALICE: "pw"})
    try:
        ctx = ssl.create_default_context()
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        with smtplib.SMTP("127.0.0.1", srv.port("submission"), timeout=10) as s:
            s.starttls(context=ctx)
            s.login(ALICE, "pw")
            s.sendmail(
                ALICE, [ALICE], "Subject: utf8-trace\r\n\r\nhej då\r\n".encode(), ["SMTPUTF8"]
            )
            s.sendmail(ALICE, [ALICE], "Subject: ascii-trace\r\n\r\nhi\r\n")
        with smtplib.SMTP("127.0.0.1", srv.port("smtp"), timeout=10) as s:
            s.sendmail(
                "x@other.example", [ALICE], b"Subject: plain-utf8\r\n\r\nhi\r\n", ["SMTPUTF8"]
            )
        for subject, proto in (
            (b"utf8-trace", "UTF8SMTPSA"),
            (b"ascii-trace", "ESMTPSA"),
            (b"plain-utf8", "UTF8SMTP"),
        ):
            msg = wait_maildir(srv.data_dir, ALICE, containing=subject)[0].decode()
            received = msg.split("Received: ", 1)[1].split("\nSubject:")[0]
            assert f"with {proto} id" in received, received
            assert received.rstrip().endswith("+0530"), received
    finally:
        srv.stop()


def _peak_rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def test_big_message_is_streamed_not_held_in_memory(tmp_path: Path) -> None:
    srv = start_server(tmp_path, users={ALICE: "pw"}, smtp={"max_message_size": 60_000_000})
    try:
        assert srv.proc is not None
        c = RawClient(srv.port("smtp"), "127.0.0.1", timeout=60)
        c.reply()
        c.cmd("EHLO c.example")
        c.cmd("MAIL FROM:<x@elsewhere.example>")
        c.cmd(f"RCPT TO:<{ALICE}>")
        assert c.cmd("DATA").startswith("354")
        before = _peak_rss_kb(srv.proc.pid)
        c.send(b"Subject: big\r\n\r\n")
        line = b"y" * 998 + b"\r\n"
        block = line * 1024  # 1 MiB
        for _ in range(50):
            c.send(block)
        c.send(b".\r\n")
        assert c.reply().startswith("250")
        grown_mb = (_peak_rss_kb(srv.proc.pid) - before) / 1024
        assert grown_mb < 20, f"server peak RSS grew {grown_mb:.1f} MB for a 50 MB message"
        c.close()
    finally:
        srv.stop()


def wait_for_log(srv: Running, text: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while text not in srv.log():
        assert time.monotonic() < deadline, f"no {text!r} in the log:\n{srv.log()[-2000:]}"
        time.sleep(0.05)


def test_sigterm_finishes_the_transaction_in_flight(tmp_path: Path) -> None:
    srv = start_server(tmp_path, users={ALICE: "pw"})
    assert srv.proc is not None
    c = RawClient(srv.port("smtp"), "127.0.0.1")
    c.reply()
    c.cmd("EHLO c.example")
    c.cmd("MAIL FROM:<x@elsewhere.example>")
    c.cmd(f"RCPT TO:<{ALICE}>")
    assert c.cmd("DATA").startswith("354")
    c.send("Subject: in-flight\r\n\r\npart one\r\n")
    srv.proc.send_signal(signal.SIGTERM)
    # The server has taken the signal in (listeners closed) before the rest arrives.
    wait_for_log(srv, "stopping: no new connections")
    c.send("part two\r\n.\r\n")
    assert c.reply().startswith("250")  # the message in flight is finished, not dropped
    assert srv.proc.wait(20) == 0
    srv.start()
    try:
        assert wait_maildir(srv.data_dir, ALICE, containing=b"in-flight")
    finally:
        srv.stop()


def test_sighup_reloads_policy(tmp_path: Path) -> None:
    srv = start_server(tmp_path, users={ALICE: "pw"})
    try:
        assert srv.proc is not None

        def rcpt_reply() -> str:
            c = RawClient(srv.port("smtp"), OUTSIDE_IP)
            c.reply()
            c.cmd("EHLO c.example")
            c.cmd("MAIL FROM:<x@elsewhere.example>")
            r = c.cmd("RCPT TO:<v@other.example>")
            c.close()
            return r

        assert rcpt_reply().startswith("550 5.7.1")
        text = srv.config_path.read_text().replace(
            'networks = ["127.0.0.1/32"]',
            'networks = ["127.0.0.1/32"]\nreject_code = 553\nreject_text = "sorry, that domain isn\'t in my list of allowed rcpthosts"',
        )
        srv.config_path.write_text(text)
        srv.proc.send_signal(signal.SIGHUP)
        wait_for_log(srv, f"reloaded {srv.config_path}")
        assert rcpt_reply() == "553 5.7.1 sorry, that domain isn't in my list of allowed rcpthosts"
        os.kill(srv.proc.pid, 0)  # still running
    finally:
        srv.stop()


def _manager_pids(front_pid: int) -> list[int]:
    out = subprocess.run(
        ["pgrep", "-P", str(front_pid), "-f", "queue-manager"], capture_output=True, text=True
    )
    return [int(p) for p in out.stdout.split()]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/status")
    return status.exists() and "State:\tZ" not in status.read_text()


def test_queue_manager_runs_apart_and_is_restarted_when_it_dies(tmp_path: Path) -> None:
    srv = start_server(tmp_path, users={ALICE: "pw"})
    try:
        assert srv.proc is not None
        deadline = time.monotonic() + 10
        while not _manager_pids(srv.proc.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        [first] = _manager_pids(srv.proc.pid)
        os.kill(first, signal.SIGKILL)
        with smtplib.SMTP("127.0.0.1", srv.port("smtp"), timeout=10) as s:
            s.sendmail("x@elsewhere.example", [ALICE], "Subject: after-manager-crash\r\n\r\nhi\r\n")
        assert wait_maildir(srv.data_dir, ALICE, containing=b"after-manager-crash")
        [second] = _manager_pids(srv.proc.pid)
        assert second != first
        assert "queue manager exited" in srv.log()
    finally:
        srv.stop()


def test_killed_front_leaves_no_orphan_manager(tmp_path: Path) -> None:
    srv = start_server(tmp_path)
    assert srv.proc is not None
    deadline = time.monotonic() + 10
    while not _manager_pids(srv.proc.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    [manager] = _manager_pids(srv.proc.pid)
    srv.kill()  # SIGKILL: no chance to stop the child itself
    deadline = time.monotonic() + 15
    while _alive(manager) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(manager)


def test_d5_low_space_gets_452_at_mail_not_a_250_that_cannot_be_kept(tmp_path: Path) -> None:
    srv = start_server(tmp_path, smtp={"queue_minfree": 10**18})  # more than any disk has
    try:
        c = RawClient(srv.port("smtp"), "127.0.0.1")
        c.reply()
        c.cmd("EHLO c.example")
        assert c.cmd("MAIL FROM:<x@elsewhere.example>") == "452 4.3.1 Insufficient system storage"
        c.close()
    finally:
        srv.stop()
    assert "low on space" in srv.log()
