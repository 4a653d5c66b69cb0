"""Real POP3 clients read mail that came in over SMTP, from the real `postvakt serve`."""

from __future__ import annotations

import os
import poplib
import shutil
import smtplib
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from support import Running, start_server

ALICE = "alice@pv.test"
PASSWORD = "secret"
MESSAGE = (
    b"From: bob@other.example\r\nTo: alice@pv.test\r\nSubject: real clients\r\n\r\n"
    b"first line\r\n.starts with a dot\r\nlast line\r\n"
)


@pytest.fixture
def live(tmp_path: Path) -> Iterator[Running]:
    srv = start_server(tmp_path, users={ALICE: PASSWORD})
    try:
        yield srv
    finally:
        srv.stop()


def maildir_files(srv: Running) -> list[Path]:
    md = srv.data_dir / "mail" / "pv.test" / "alice"
    return [p for sub in ("new", "cur") if (md / sub).is_dir() for p in (md / sub).iterdir()]


def send_over_smtp(srv: Running, message: bytes = MESSAGE, count: int = 1) -> None:
    with smtplib.SMTP("127.0.0.1", srv.port("smtp"), timeout=10) as s:
        for _ in range(count):
            s.sendmail("bob@other.example", [ALICE], message)
    deadline = time.monotonic() + 10
    while len(maildir_files(srv)) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(maildir_files(srv)) >= count, srv.log()


def unverified() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def curl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["curl", "-sS", "-k", "--max-time", "20", *args], capture_output=True, text=True, timeout=30
    )


def test_poplib_with_stls_reads_and_deletes(live: Running) -> None:
    send_over_smtp(live, count=2)
    p = poplib.POP3("127.0.0.1", live.port("pop3"), timeout=10)
    assert "STLS" in p.capa() and "USER" not in p.capa()
    assert p.stls(unverified()).startswith(b"+OK")
    assert "USER" in p.capa()
    p.user(ALICE)
    p.pass_(PASSWORD)
    count, size = p.stat()
    assert count == 2 and size > 2 * len(MESSAGE)  # trace headers were added on delivery
    _, lines, octets = p.retr(1)
    assert b"Subject: real clients" in lines
    assert lines[-3:] == [b"first line", b".starts with a dot", b"last line"]  # poplib unstuffs
    uids = [u.split()[1] for u in p.uidl()[1]]
    assert len(set(uids)) == 2
    p.dele(1)
    p.quit()
    assert len(maildir_files(live)) == 1

    p = poplib.POP3_SSL("127.0.0.1", live.port("pop3s"), context=unverified(), timeout=10)
    p.user(ALICE)
    p.pass_(PASSWORD)
    assert [u.split()[1] for u in p.uidl()[1]] == [uids[1]]
    p.quit()


def test_curl_pop3_with_stls_and_pop3s(live: Running) -> None:
    send_over_smtp(live)
    r = curl("--ssl-reqd", f"pop3://127.0.0.1:{live.port('pop3')}/1", "-u", f"{ALICE}:{PASSWORD}")
    assert r.returncode == 0, r.stderr
    assert "Subject: real clients" in r.stdout
    assert "\n.starts with a dot" in r.stdout.replace("\r\n", "\n")
    r = curl(f"pop3s://127.0.0.1:{live.port('pop3s')}/", "-u", f"{ALICE}:{PASSWORD}")
    assert r.returncode == 0, r.stderr
    lines = [x for x in r.stdout.replace("\r\n", "\n").split("\n") if x]
    assert len(lines) == 1 and lines[0].startswith("1 ")


def test_curl_plaintext_login_refused_on_110(live: Running) -> None:
    send_over_smtp(live)
    r = curl(f"pop3://127.0.0.1:{live.port('pop3')}/1", "-u", f"{ALICE}:{PASSWORD}")
    assert r.returncode != 0
    assert "Subject: real clients" not in r.stdout
    assert "pop3 login client=" not in live.log()  # curl found no way to log in without TLS


@pytest.mark.skipif(
    shutil.which("fetchmail") is None, reason="fetchmail (Debian package) not installed"
)
@pytest.mark.parametrize("port_kind", ["pop3", "pop3s"])
def test_fetchmail_fetches_and_flushes(live: Running, tmp_path: Path, port_kind: str) -> None:
    send_over_smtp(live, count=2)
    out = tmp_path / "fetched.mbox"
    rc = tmp_path / "fetchmailrc"
    tls = 'sslproto "tls1.2+"' if port_kind == "pop3" else "ssl"
    rc.write_text(
        "set no syslog\nset no bouncemail\n"
        f"poll 127.0.0.1 with proto POP3 port {live.port(port_kind)} uidl\n"
        f'  user "{ALICE}" there with password "{PASSWORD}" is "localuser" here\n'
        f"  {tls} no sslcertck\n"
        f"  mda \"/bin/sh -c 'cat >> {out}'\"\n"
    )
    rc.chmod(0o600)
    r = subprocess.run(
        ["fetchmail", "-f", str(rc), "--nodetach", "-i", str(tmp_path / "ids")],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "HOME": str(tmp_path)},
    )
    assert r.returncode == 0, r.stdout + r.stderr + live.log()[-2000:]
    fetched = out.read_text()
    assert fetched.count("Subject: real clients") == 2
    assert "\n.starts with a dot\n" in fetched
    assert maildir_files(live) == []  # fetchmail flushed: DELE + QUIT removed them


def test_q6_stls_injection_against_serve(live: Running) -> None:
    """Q6 against the real server's event loop (uvloop when installed): STLS\\r\\nCAPA\\r\\n in one write."""
    from pop3_server_harness import POP3Raw

    c = POP3Raw(live.port("pop3"))
    try:
        assert c.line().startswith("+OK")
        c.send(b"STLS\r\nCAPA\r\n")
        assert c.line() == "+OK Begin TLS negotiation"
        c.starttls()
        c.sock.settimeout(0.7)
        with pytest.raises(TimeoutError):
            c.sock.recv(100)
        c.sock.settimeout(10)
        assert c.cmd("CAPA") == "+OK Capability list follows"
        caps = c.multiline()
        assert "USER" in caps and "STLS" not in caps
        assert c.login(ALICE, PASSWORD).startswith("+OK Logged in")
        c.cmd("QUIT")
    finally:
        c.close()
