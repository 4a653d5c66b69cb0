"""robustness.md §3, §4 and §5 against the live front: raw bytes on real sockets.

The core's own tests (tests/smtp/) prove the byte-level rules with transcripts;
these prove that the asyncio adapter keeps them: nothing smuggled is queued,
STARTTLS drops plaintext pipelined behind it, TLS ports speak no plaintext,
timeouts and limits hold on a real connection.
"""

from __future__ import annotations

import os
import smtplib
import socket
import ssl
import time
from collections.abc import Iterator

import pytest

from support import (
    LOCAL_DOMAIN,
    OTHER_OUTSIDE_IP,
    OUTSIDE_IP,
    RawClient,
    Running,
    eventually,
    maildir_messages,
    start_server,
    wait_maildir,
)

ALICE = f"alice@{LOCAL_DOMAIN}"
PASSWORD = "pw-alice"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    srv = start_server(
        tmp_path_factory.mktemp("front"),
        users={ALICE: PASSWORD},
        smtp={"idle_timeout": "2s", "max_connections_per_client": 5, "error_sleep": 0},
    )
    try:
        yield srv
    finally:
        srv.stop()


def tls_ctx() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def open_session(server: Running, ip: str = OUTSIDE_IP) -> RawClient:
    c = RawClient(server.port("smtp"), ip)
    assert c.reply().startswith("220 ")
    assert c.cmd("EHLO client.example").startswith("250")
    return c


def queued_count(server: Running) -> int:
    return len(maildir_messages(server.data_dir, ALICE))


# ---------------------------------------------------------------- §3 smuggling (M1-M11), live

SMUGGLE_ENDINGS = {
    "M1": b"\n.\n",
    "M2": b"\n.\r\n",
    "M3": b"\r\n.\n",
    "M4": b"\r.\r",
    "M5": b"\r.\n",
    "M6": b"\n.\r",
    "M7": b"\r.\r\n",
    "M8": b"\r\n.\r",
    "M9": b"\r\n\x00.\r\n",
    "M10": b"\r\n.\x00\r\n",
    "M11": b"\n\n.\r\n",
}


BARE = "550 5.5.2 Message contains bare CR or LF, refused (RFC 5321 2.3.8)"
NUL = "550 5.6.0 Message contains NUL characters, refused"
# The one reply each carrier gets: none of these endings is the end of data,
# and each makes the message one that is refused whole (Postfix's
# smtpd_forbid_bare_newline = reject; NUL as Postfix's 550 5.6.0).
SMUGGLE_REPLY = {case: NUL if b"\x00" in e else BARE for case, e in SMUGGLE_ENDINGS.items()}


def all_replies(c: RawClient) -> list[str]:
    """Every reply until the server closes the connection."""
    out = []
    try:
        while True:
            out.append(c.reply())
    except (ConnectionError, OSError):
        return out


def wait_for_marker(server: Running, marker: bytes) -> list[bytes]:
    """Send a message after the test's traffic and wait until it is in the
    Maildir and the queue is empty: anything queued before it has then been
    delivered too, so an absence checked afterwards means something."""
    with smtplib.SMTP("127.0.0.1", server.port("smtp"), timeout=30) as s:
        s.sendmail(f"m@{LOCAL_DOMAIN}", [ALICE], b"Subject: " + marker + b"\r\n\r\nmarker\r\n")
    assert wait_maildir(server.data_dir, ALICE, containing=marker, timeout=30)
    queue = server.data_dir / "queue"

    def queue_empty() -> None:
        assert not any(any((queue / d).iterdir()) for d in ("incoming", "active", "deferred"))

    eventually(queue_empty, timeout=30)
    return maildir_messages(server.data_dir, ALICE)


@pytest.mark.parametrize("ip", [OUTSIDE_IP, "127.0.0.1"], ids=["outside", "M12-trusted"])
@pytest.mark.parametrize(
    ("case", "ending"), list(SMUGGLE_ENDINGS.items()), ids=list(SMUGGLE_ENDINGS)
)
def test_smuggled_transaction_is_never_queued(
    server: Running, case: str, ending: bytes, ip: str
) -> None:
    c = open_session(server, ip)
    try:
        assert c.cmd("MAIL FROM:<sender@elsewhere.example>") == "250 2.1.0 Ok"
        assert c.cmd(f"RCPT TO:<{ALICE}>") == "250 2.1.5 Ok"
        assert c.cmd("DATA").startswith("354 ")
        smuggled = f"SMUGGLED-{case}-{ip}".encode()
        c.send(
            b"Subject: "
            + case.encode()
            + b" carrier\r\n\r\nbody"
            + ending
            + b"MAIL FROM:<smuggled@elsewhere.example>\r\nRCPT TO:<"
            + ALICE.encode()
            + b">\r\nDATA\r\n"
            + b"Subject: "
            + smuggled
            + b"\r\n\r\nx\r\n.\r\nQUIT\r\n"
        )
        # Every reply the server sends: one to the only end of data there is,
        # then QUIT's. A 250 for the smuggled MAIL, RCPT or DATA would show here.
        assert all_replies(c) == [SMUGGLE_REPLY[case], "221 2.0.0 Bye"]
    finally:
        c.close()
    after = wait_for_marker(server, f"marker-{case}-{ip}".encode())
    assert not any(smuggled in m for m in after)
    assert not any(f"Subject: {case} carrier".encode() in m for m in after)


def test_m13_data_pipelined_before_354_is_a_sync_error(server: Running) -> None:
    c = open_session(server)
    c.cmd("MAIL FROM:<s@elsewhere.example>")
    c.cmd(f"RCPT TO:<{ALICE}>")
    c.send("DATA\r\nSubject: early\r\n\r\nbody\r\n.\r\n")
    r = c.reply()
    assert r.startswith("554 5.5.0"), r
    c.close()


def test_m13_control_legal_pipelining_after_the_dot(server: Running) -> None:
    c = open_session(server)
    c.cmd("MAIL FROM:<s@elsewhere.example>")
    c.cmd(f"RCPT TO:<{ALICE}>")
    assert c.cmd("DATA").startswith("354")
    c.send("Subject: pipelined\r\n\r\nbody\r\n.\r\nMAIL FROM:<t@elsewhere.example>\r\nRSET\r\n")
    assert c.reply().startswith("250 2.0.0")
    assert c.reply().startswith("250")
    assert c.reply().startswith("250")
    c.close()


def test_m15_bare_lf_and_bare_cr_in_commands(server: Running) -> None:
    c = RawClient(server.port("smtp"), OUTSIDE_IP)
    c.reply()
    c.send("EHLO x\n")
    assert c.reply().startswith("5")
    c.send("EHLO c\r.test\r\n")
    r = c.reply()
    assert r.startswith("5"), r  # never split at the bare CR into "EHLO c" and ".test"
    assert c.cmd("NOOP").startswith("250")
    c.close()


# ---------------------------------------------------------------- §4 STARTTLS and AUTH, live


def starttls(c: RawClient) -> ssl.SSLSocket:
    s = tls_ctx().wrap_socket(c.sock, server_hostname="mx.pv.test")
    c.sock = s
    return s


def test_cve_2011_0411_t1_starttls_injection_answered_once(server: Running) -> None:
    c = open_session(server)
    c.send("STARTTLS\r\nRSET\r\n")
    assert c.reply().startswith("220 ")
    assert c.buf == b""
    starttls(c)
    c.sock.settimeout(1.0)
    with pytest.raises((TimeoutError, socket.timeout)):
        c.reply()  # the injected RSET is never answered
    c.sock.settimeout(10)
    assert c.cmd("NOOP").startswith("250")
    c.close()


def test_t2_state_reset_after_starttls(server: Running) -> None:
    c = open_session(server)
    assert c.cmd("STARTTLS").startswith("220")
    starttls(c)
    assert c.cmd("MAIL FROM:<s@elsewhere.example>").startswith("503")
    ehlo = c.cmd("EHLO client.example")
    assert "STARTTLS" not in ehlo and "AUTH PLAIN LOGIN" in ehlo
    assert c.cmd("STARTTLS").startswith("554 5.5.1")
    c.close()


def test_t2_starttls_with_argument(server: Running) -> None:
    c = open_session(server)
    assert c.cmd("STARTTLS foo").startswith("501")
    c.close()


def test_t3_plaintext_after_220_fails_the_handshake(server: Running) -> None:
    c = open_session(server)
    assert c.cmd("STARTTLS").startswith("220")
    c.send("EHLO plaintext\r\n")
    c.sock.settimeout(5)
    data = b""
    try:
        while chunk := c.sock.recv(4096):
            data += chunk
    except (ConnectionError, TimeoutError):
        pass
    assert b"250" not in data  # no plaintext SMTP reply: the server speaks TLS or closes
    c.close()


def test_t4_cleartext_after_close_notify_is_not_processed(server: Running) -> None:
    c = open_session(server)
    c.cmd("STARTTLS")
    s = starttls(c)
    assert c.cmd("EHLO client.example").startswith("250")
    raw = s.unwrap()  # close_notify, back to the raw socket
    raw.sendall(b"NOOP\r\n")
    raw.settimeout(3)
    got = b""
    try:
        while chunk := raw.recv(4096):
            got += chunk
    except (ConnectionError, TimeoutError, OSError):
        pass
    assert b"250" not in got
    raw.close()


def test_t5_auth_before_tls_on_submission_same_reply_for_any_password(server: Running) -> None:
    import base64

    replies = []
    for pw in (PASSWORD, "wrong"):
        c = RawClient(server.port("submission"), OUTSIDE_IP)
        c.reply()
        ehlo = c.cmd("EHLO client.example")
        assert "AUTH" not in ehlo
        token = base64.b64encode(f"\0{ALICE}\0{pw}".encode()).decode()
        replies.append(c.cmd(f"AUTH PLAIN {token}"))
        c.close()
    assert replies[0] == replies[1]
    assert replies[0].startswith("538 5.7.11")


def test_t7_implicit_tls_port_speaks_no_plaintext(server: Running) -> None:
    s = socket.create_connection(
        ("127.0.0.1", server.port("submissions")), timeout=5, source_address=(OUTSIDE_IP, 0)
    )
    s.sendall(b"EHLO plaintext\r\n")
    got = b""
    try:
        while chunk := s.recv(4096):
            got += chunk
    except (ConnectionError, TimeoutError):
        pass
    assert b"220" not in got and b"250" not in got
    s.close()


# ---------------------------------------------------------------- §5 at the front


def test_p2_long_command_then_noop_in_sync(server: Running) -> None:
    c = open_session(server)
    c.send("X" * 10_000 + "\r\n")
    assert c.reply().startswith("500 5.5.2")
    assert c.cmd("NOOP").startswith("250")
    c.close()


def test_p9_idle_client_gets_421_and_close(server: Running) -> None:
    c = RawClient(server.port("smtp"), OUTSIDE_IP)
    c.reply()
    start = time.monotonic()
    r = c.reply()
    assert r.startswith("421 4.4.2"), r
    assert 1.5 < time.monotonic() - start < 10
    with pytest.raises(ConnectionError):
        c.reply()


def test_p10_slowloris_is_cut_by_the_deadline(server: Running) -> None:
    c = RawClient(server.port("smtp"), OUTSIDE_IP)
    c.reply()
    start = time.monotonic()
    got = ""
    try:
        for ch in "EHLO slow.example":
            c.send(ch)
            time.sleep(0.5)  # a byte every quarter of the 2 s timeout
        c.send("\r\n")
        got = c.reply()
    except (ConnectionError, OSError):
        got = "closed"
    assert got.startswith("421") or got == "closed", got
    assert time.monotonic() - start < 8


def test_p11_connection_limit_per_client_address(server: Running) -> None:
    held: list[RawClient] = []

    def five_held() -> None:
        # A previous test's connections count until the server has seen them
        # close: start once all five places of the address are free.
        for c in held:
            c.close()
        held[:] = [RawClient(server.port("smtp"), OUTSIDE_IP) for _ in range(5)]
        assert all(c.reply().startswith("220") for c in held)

    eventually(five_held, timeout=10)
    extra = RawClient(server.port("smtp"), OUTSIDE_IP)
    assert extra.reply().startswith("421 4.7.0")
    other = RawClient(server.port("smtp"), OTHER_OUTSIDE_IP)
    assert other.reply().startswith("220")  # 127.0.0.3 is still served
    for c in [*held, extra, other]:
        c.close()

    # The places come back once the server has seen the closes (not at the
    # client's close() itself): wait for that, so the next test starts clean.
    def served_again() -> None:
        c = RawClient(server.port("smtp"), OUTSIDE_IP)
        try:
            assert c.reply().startswith("220")
        finally:
            c.close()

    eventually(served_again, timeout=10)


def _open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_p12_connect_and_abandon(server: Running) -> None:
    assert server.proc is not None
    time.sleep(0.5)
    baseline = _open_fds(server.proc.pid)
    for _ in range(300):
        s = socket.create_connection(("127.0.0.1", server.port("smtp")), timeout=5)
        s.close()
    time.sleep(1.0)
    c = open_session(server, "127.0.0.1")
    assert c.cmd("NOOP").startswith("250")
    c.close()
    time.sleep(0.5)
    assert _open_fds(server.proc.pid) <= baseline + 3


def test_p13_many_pipelined_noops_without_reading(server: Running) -> None:
    c = RawClient(server.port("smtp"), "127.0.0.1")
    c.reply()
    c.sock.settimeout(20)
    payload = b"NOOP\r\n" * 100_000
    sent = 0
    try:
        while sent < len(payload):
            sent += c.sock.send(payload[sent : sent + 65536])
    except (ConnectionError, OSError):
        pass  # the server may close after the junk-command limit: that is the point
    data = b""
    try:
        while chunk := c.sock.recv(65536):
            data += chunk
    except (ConnectionError, TimeoutError, OSError):
        pass
    assert b"421" in data  # junk commands count as errors, then the session ends
    c.close()
    d = open_session(server, "127.0.0.1")  # still serving
    assert d.cmd("NOOP").startswith("250")
    d.close()


def test_t10_brute_force_slows_then_refuses_and_other_address_unaffected(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    import base64
    import smtplib

    srv = start_server(tmp_path_factory.mktemp("brute"), users={ALICE: PASSWORD})
    try:

        def attempt(ip: str, pw: str) -> tuple[int, float]:
            t = time.monotonic()
            with smtplib.SMTP(
                "127.0.0.1", srv.port("submission"), source_address=(ip, 0), timeout=60
            ) as s:
                s.starttls(context=tls_ctx())
                s.ehlo()
                token = base64.b64encode(f"\0{ALICE}\0{pw}".encode()).decode()
                code, _ = s.docmd("AUTH", f"PLAIN {token}")
            return code, time.monotonic() - t

        first = [attempt(OUTSIDE_IP, f"wrong{i}") for i in range(3)]
        assert [c for c, _ in first] == [535, 535, 535]
        assert first[2][1] > first[0][1] + 1.5  # the per-address delay grows (2 s, 4 s, ...)
        code, took = attempt(OTHER_OUTSIDE_IP, PASSWORD)
        assert code == 235 and took < 2.0  # another address logs in at once
    finally:
        srv.stop()


def test_m14_outbound_smuggling_never_reaches_the_sink(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """As an authenticated client, every bad end-of-data sequence inside a message:
    the message is refused whole, the sink receives nothing; a clean message that
    follows arrives once, with CRLF line ends only."""
    import smtplib

    from support import SmtpSink

    sink = SmtpSink(tmp_path_factory.mktemp("m14sink"))
    srv = start_server(
        tmp_path_factory.mktemp("m14"),
        users={ALICE: PASSWORD},
        delivery={"routes": {"other.example": f"127.0.0.1:{sink.port}"}},
    )
    try:
        sequences = list(SMUGGLE_ENDINGS.values()) + [b"\r\n.\r\r\n", b"\r\r\n.\r\r\n"]
        body = b"Subject: m14\r\n\r\nSMUGGLINGSTART" + b"x".join(sequences) + b"SMUGGLINGEND\r\n"
        with smtplib.SMTP("127.0.0.1", srv.port("submission"), timeout=20) as s:
            s.starttls(context=tls_ctx())
            s.login(ALICE, PASSWORD)
            s.mail(ALICE)
            s.rcpt("friend@other.example")
            code, _ = s.docmd("DATA")
            assert code == 354
            s.send(body + b".\r\n")
            code, text = s.getreply()
            assert code == 550 and b"bare CR or LF" in text
            s.rset()
            assert (
                s.sendmail(
                    ALICE, ["friend@other.example"], b"Subject: m14-clean\r\n\r\nclean body\r\n"
                )
                == {}
            )
        msgs = sink.wait_for(1)
        time.sleep(1.0)
        msgs = sink.messages()
        assert len(msgs) == 1 and "m14-clean" in msgs[0]
        raw = msgs[0].encode()
        assert b"SMUGGLINGSTART" not in raw
    finally:
        srv.stop()
        sink.stop()


def test_p10_data_slower_than_the_minimum_rate_is_cut(server: Running) -> None:
    """In DATA the deadline grows only with the bytes received (500 B/s by
    default): a trickle of a few bytes a second is cut, not reset by each byte."""
    c = open_session(server, OUTSIDE_IP)
    assert c.cmd("MAIL FROM:<s@elsewhere.example>").startswith("250")
    assert c.cmd(f"RCPT TO:<{ALICE}>").startswith("250")
    assert c.cmd("DATA").startswith("354")
    start = time.monotonic()
    got = ""
    try:
        for _ in range(40):
            c.send(b"x")
            time.sleep(0.25)  # 4 bytes a second
        got = c.reply()
    except (ConnectionError, OSError):
        got = "closed"
    assert got.startswith("421") or got == "closed", got
    assert time.monotonic() - start < 9
