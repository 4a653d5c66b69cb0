"""Who may send as whom, end to end with swaks: envelope and header From:."""

from __future__ import annotations

import poplib
import socket
import ssl
import subprocess
from collections.abc import Iterator

import pytest

from support import LOCAL_DOMAIN, Running, start_server, wait_maildir

ALICE = f"alice@{LOCAL_DOMAIN}"
BOB = f"bob@{LOCAL_DOMAIN}"
CAROL = f"carol@{LOCAL_DOMAIN}"
SALES = f"sales@{LOCAL_DOMAIN}"
ALI = f"ali@{LOCAL_DOMAIN}"  # alice's personal alias
TERRI = "terri@contoso.example"
PW = {ALICE: "alice pw", BOB: "bob pw", CAROL: "carol pw"}


def make_server(tmp_path_factory: pytest.TempPathFactory, name: str, **sections: dict) -> Running:  # type: ignore[type-arg]
    srv = start_server(tmp_path_factory.mktemp(name), users=PW, **sections)
    srv.cli("alias", "add", ALI, ALICE)
    srv.cli("alias", "add", SALES, ALICE)
    srv.cli("alias", "add", SALES, BOB)
    return srv


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    srv = make_server(
        tmp_path_factory,
        "sender",
        relay={"networks": ["127.0.0.1/32"], "grant_store": "sqlite"},
        sender={"networks": "domain", "pop_before_smtp": "owner"},
    )
    try:
        yield srv
    finally:
        srv.stop()


def submit(
    server: Running,
    login: str,
    env_from: str,
    header_from: str | None = None,
    to: str = CAROL,
    source: str = "127.0.0.2",
) -> subprocess.CompletedProcess[str]:
    args = [
        "swaks",
        "--hide-informational",
        "--server",
        f"127.0.0.1:{server.port('submission')}",
        "--tls",
        "--local-interface",
        source,
        "--auth",
        "PLAIN",
        "--auth-user",
        login,
        "--auth-password",
        PW[login],
        "--from",
        env_from,
        "--to",
        to,
    ]
    if header_from is not None:
        args += ["--header", f"From: {header_from}"]
    return subprocess.run(args, capture_output=True, text=True, timeout=60)


def plain(
    server: Running, source: str, env_from: str, header_from: str | None = None, to: str = CAROL
) -> subprocess.CompletedProcess[str]:
    args = [
        "swaks",
        "--hide-informational",
        "--server",
        f"127.0.0.1:{server.port('smtp')}",
        "--local-interface",
        source,
        "--from",
        env_from,
        "--to",
        to,
    ]
    if header_from is not None:
        args += ["--header", f"From: {header_from}"]
    return subprocess.run(args, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("address", [ALICE, ALI], ids=["own", "personal-alias"])
def test_alice_may_send_as_her_own_addresses(server: Running, address: str) -> None:
    r = submit(server, ALICE, address, header_from=address)
    assert r.returncode == 0, r.stdout


def test_sales_only_once_granted(server: Running) -> None:
    r = submit(server, ALICE, SALES)
    assert f"553 5.7.1 <{SALES}>: Sender address rejected: not owned by user {ALICE}" in r.stdout
    server.cli("user", "sendas", "add", ALICE, SALES)
    try:
        r = submit(server, ALICE, SALES, header_from=f"Sales <{SALES}>")
        assert r.returncode == 0, r.stdout
    finally:
        server.cli("user", "sendas", "del", ALICE, SALES)


def test_not_as_bob_in_the_envelope(server: Running) -> None:
    r = submit(server, ALICE, BOB)
    assert f"553 5.7.1 <{BOB}>: Sender address rejected: not owned by user {ALICE}" in r.stdout


def test_not_as_bob_in_the_header(server: Running) -> None:
    r = submit(server, ALICE, ALICE, header_from=f"Bob <{BOB}>")
    assert f"550 5.7.1 From: header <{BOB}> not owned by user {ALICE}" in r.stdout


def test_terri_only_when_granted(server: Running) -> None:
    r = submit(server, ALICE, TERRI)
    assert "553 5.7.1" in r.stdout
    server.cli("user", "sendas", "add", ALICE, TERRI)
    try:
        assert submit(server, ALICE, TERRI, header_from=TERRI).returncode == 0
    finally:
        server.cli("user", "sendas", "del", ALICE, TERRI)


def test_network_client_with_domain_mode(server: Running) -> None:
    assert plain(server, "127.0.0.1", f"anyone@{LOCAL_DOMAIN}").returncode == 0
    r = plain(server, "127.0.0.1", TERRI)
    assert f"553 5.7.1 <{TERRI}>: Sender address rejected" in r.stdout


def test_bounce_from_trusted_client_passes(server: Running) -> None:
    r = plain(
        server,
        "127.0.0.1",
        "<>",
        header_from=f"Mail Delivery System <MAILER-DAEMON@{LOCAL_DOMAIN}>",
    )
    assert r.returncode == 0, r.stdout
    assert "MAIL FROM:<>" in r.stdout


class BoundPOP3(poplib.POP3):
    def __init__(self, source_ip: str, port: int) -> None:
        self._source_ip = source_ip
        super().__init__("127.0.0.1", port, 10)

    def _create_socket(self, timeout: float) -> socket.socket:
        return socket.create_connection(
            (self.host, self.port), timeout, source_address=(self._source_ip, 0)
        )


def test_pop_before_smtp_client_bound_to_its_login(server: Running) -> None:
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    p = BoundPOP3("127.0.0.6", server.port("pop3"))
    p.stls(context=ctx)
    p.user(BOB)
    p.pass_(PW[BOB])
    p.quit()
    ok = plain(server, "127.0.0.6", BOB, header_from=BOB)
    assert ok.returncode == 0, ok.stdout
    r = plain(server, "127.0.0.6", ALICE)
    assert "553 5.7.1" in r.stdout


def test_warn_mode_delivers_with_a_header_and_logs(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    srv = make_server(
        tmp_path_factory, "warn", sender={"authenticated": "warn", "header_from": "warn"}
    )
    try:
        r = submit(srv, ALICE, BOB, header_from=BOB, to=CAROL)
        assert r.returncode == 0, r.stdout
        msgs = wait_maildir(srv.data_dir, CAROL)
        assert msgs, "the message was not delivered"
        head = msgs[-1].replace(b"\r\n", b"\n").split(b"\n\n")[0].decode()
        assert "X-Postvakt-Sender-Warning:" in head
        assert BOB in head.split("X-Postvakt-Sender-Warning:")[1]
        assert "sender warning" in srv.log() and BOB in srv.log()
    finally:
        srv.stop()


def test_from_header_hidden_behind_a_huge_header_section_is_refused(server: Running) -> None:
    """A From: placed after more header bytes than the server reads could not be
    checked; the message is refused instead of letting a forged sender through."""
    import smtplib

    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    padding = "".join(f"X-Pad-{i}: {'p' * 900}\r\n" for i in range(80))  # ~72 KiB
    message = f"Subject: hidden from\r\n{padding}From: Bob <{BOB}>\r\n\r\nbody\r\n"
    with smtplib.SMTP("127.0.0.1", server.port("submission"), timeout=20) as s:
        s.starttls(context=ctx)
        s.login(ALICE, PW[ALICE])
        with pytest.raises(smtplib.SMTPDataError) as e:
            s.sendmail(ALICE, [CAROL], message)
    assert e.value.smtp_code == 552 and b"too long to check" in e.value.smtp_error


def test_mailing_list_post_of_a_local_user_arrives_from_outside(server: Running) -> None:
    """A list delivers alice's post to carol: envelope from the list, From: alice.
    By default delivered, with the finding recorded in a header."""
    r = plain(
        server, "127.0.0.7", "list-bounces@lists.example", header_from=f"Alice <{ALICE}>", to=CAROL
    )
    assert r.returncode == 0, r.stdout
    msgs = wait_maildir(server.data_dir, CAROL, containing=b"list-bounces@lists.example")
    heads = [m.replace(b"\r\n", b"\n").split(b"\n\n")[0].decode() for m in msgs]
    assert any(
        "X-Postvakt-Sender-Warning:" in h and "list-bounces@lists.example" in h for h in heads
    )
