"""SIGHUP: every section reloads (here [pop3] and the TLS certificate), sessions in
flight finish on the settings they started with, and a change only a restart can
apply refuses the whole reload with one line naming the keys."""

from __future__ import annotations

import hashlib
import signal
import smtplib
import socket
import ssl
from pathlib import Path

import trustme
from opsutil import wait_log, wait_until

from support import OUTSIDE_IP, RawClient, Running, base_config, to_toml

ALICE = "alice@pv.test"


def _start(tmp_path: Path, **sections: object) -> Running:
    cfg = tmp_path / "postvakt.toml"
    data = tmp_path / "data"
    cfg.write_text(to_toml(base_config(data, **sections)))  # type: ignore[arg-type]
    srv = Running(cfg, data)
    srv.add_user(ALICE, "pw")
    return srv.start()


def _hup(srv: Running, n: int) -> None:
    assert srv.proc is not None
    srv.proc.send_signal(signal.SIGHUP)
    wait_until(
        lambda: srv.log().count("reloaded ") + srv.log().count("reload refused") >= n,
        f"reload number {n}",
    )


def test_pop3_plaintext_and_idle_timeout_reload(tmp_path: Path) -> None:
    srv = _start(tmp_path, pop3={"plaintext": "never", "idle_timeout": 600})
    try:
        before = RawClient(srv.port("pop3"))
        assert before.line().startswith("+OK")
        text = srv.config_path.read_text().replace('plaintext = "never"', 'plaintext = "always"')
        srv.config_path.write_text(text.replace("idle_timeout = 600", "idle_timeout = 1"))
        _hup(srv, 1)
        assert "reloaded" in srv.log()
        after = RawClient(srv.port("pop3"))
        assert after.line().startswith("+OK")
        assert after.cmd(f"USER {ALICE}").startswith("+OK")
        assert after.cmd("PASS pw").startswith("+OK")
        # The new idle timeout: the server ends the new session by itself.
        after.sock.settimeout(30)
        rest = b""
        while chunk := after.sock.recv(4096):
            rest += chunk
        assert b"-ERR" in rest or rest == b""
        # The session from before the reload keeps its settings: no plaintext login.
        assert before.cmd(f"USER {ALICE}").startswith("-ERR")
        before.close()
    finally:
        srv.stop()


def test_restart_only_change_refuses_the_whole_reload(tmp_path: Path) -> None:
    srv = _start(tmp_path, pop3={"plaintext": "never"})
    try:
        text = srv.config_path.read_text().replace('plaintext = "never"', 'plaintext = "always"')
        text = text.replace('smtp = ["127.0.0.1:0"]', 'smtp = ["127.0.0.1:0", "127.0.0.1:0"]')
        srv.config_path.write_text(text)
        _hup(srv, 1)
        refused = [x for x in srv.log().splitlines() if "reload refused" in x]
        assert len(refused) == 1 and "[listen]" in refused[0] and "restart" in refused[0]
        c = RawClient(srv.port("pop3"))
        c.line()
        assert c.cmd(f"USER {ALICE}").startswith("-ERR")  # nothing of the new file applied
        c.close()
    finally:
        srv.stop()


def _fingerprint(der: bytes | None) -> str:
    assert der is not None
    return hashlib.sha256(der).hexdigest()


def _write_cert(ca: trustme.CA, cert: Path, key: Path) -> str:
    leaf = ca.issue_cert("mx.pv.test", "localhost")
    key.write_bytes(leaf.private_key_pem.bytes())
    cert.write_bytes(b"".join(b.bytes() for b in leaf.cert_chain_pems))
    return _fingerprint(ssl.PEM_cert_to_DER_cert(leaf.cert_chain_pems[0].bytes().decode()))


def test_renewed_certificate_served_after_sighup_session_in_flight_completes(
    tmp_path: Path,
) -> None:
    ca = trustme.CA()
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    old = _write_cert(ca, cert, key)
    srv = _start(tmp_path, tls={"cert": str(cert), "key": str(key)})
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    try:
        port = srv.port("submissions")
        inflight = smtplib.SMTP_SSL("localhost", port, timeout=20, context=client_ctx)
        inflight.ehlo("client.example")
        assert isinstance(inflight.sock, ssl.SSLSocket)
        assert _fingerprint(inflight.sock.getpeercert(binary_form=True)) == old
        inflight.login(ALICE, "pw")
        inflight.mail(ALICE)

        new = _write_cert(ca, cert, key)
        assert new != old
        _hup(srv, 1)
        assert "reloaded" in srv.log(), srv.log()

        with socket.create_connection(("127.0.0.1", port), timeout=20) as raw:
            with client_ctx.wrap_socket(raw, server_hostname="localhost") as tls:
                assert _fingerprint(tls.getpeercert(binary_form=True)) == new
        # STARTTLS on 587 serves the renewed one too.
        fresh = smtplib.SMTP("localhost", srv.port("submission"), timeout=20)
        fresh.starttls(context=client_ctx)
        assert isinstance(fresh.sock, ssl.SSLSocket)
        assert _fingerprint(fresh.sock.getpeercert(binary_form=True)) == new
        fresh.quit()

        # The session from before the reload finishes its message on the old certificate.
        inflight.rcpt(ALICE)
        code, _ = inflight.data(b"Subject: across a reload\r\n\r\nstill here\r\n")
        assert code == 250
        assert _fingerprint(inflight.sock.getpeercert(binary_form=True)) == old
        inflight.quit()
        wait_log(srv, "status=sent")
    finally:
        srv.stop()


def test_smtp_session_in_flight_keeps_its_policy(tmp_path: Path) -> None:
    srv = _start(tmp_path)
    try:
        before = RawClient(srv.port("smtp"), OUTSIDE_IP)
        before.reply()
        before.cmd("EHLO before.example")
        text = srv.config_path.read_text().replace(
            'networks = ["127.0.0.1/32"]', 'networks = ["127.0.0.1/32"]\nreject_code = 553'
        )
        srv.config_path.write_text(text)
        _hup(srv, 1)
        assert "reloaded" in srv.log()
        after = RawClient(srv.port("smtp"), OUTSIDE_IP)
        after.reply()
        after.cmd("EHLO after.example")
        after.cmd("MAIL FROM:<x@elsewhere.example>")
        assert after.cmd("RCPT TO:<v@other.example>").startswith("553 5.7.1")
        after.close()
        before.cmd("MAIL FROM:<x@elsewhere.example>")
        assert before.cmd("RCPT TO:<v@other.example>").startswith("550 5.7.1")
        before.close()
    finally:
        srv.stop()
