"""The relay decision end to end: the real `postvakt serve`, real clients (swaks,
curl, smtplib, raw sockets), a real remote MX (Postfix's smtp-sink).

127.0.0.1 is our network; 127.0.0.2 is an outside client (a hotel, another ISP).
Every relay attempt that must fail is also checked at the sink: nothing arrives.

The battery runs twice: over IPv4, and over IPv6, where the server also
listens on [::1] and `networks` leaves ::1 out, so that a client on ::1 is an
outsider exactly as 127.0.0.2 is.
"""

from __future__ import annotations

import shutil
import smtplib
import ssl
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from support import (
    LOCAL_DOMAIN,
    OTHER_OUTSIDE_IP,
    OUTSIDE_IP,
    RawClient,
    Running,
    SmtpSink,
    eventually,
    start_server,
    wait_maildir,
    write_server_config,
)

pytestmark = pytest.mark.skipif(shutil.which("swaks") is None, reason="swaks is not installed")

REMOTE = "other.example"
ALICE = f"alice@{LOCAL_DOMAIN}"
BOB = f"bob@{LOCAL_DOMAIN}"
PASSWORD = "correct horse"


@pytest.fixture(scope="module")
def sink(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SmtpSink]:
    s = SmtpSink(tmp_path_factory.mktemp("sink"))
    try:
        yield s
    finally:
        s.stop()


KINDS = ("smtp", "submission", "submissions", "pop3", "pop3s")
# swaks speaks IPv6 only with Perl's IO::Socket::INET6, which Debian packages apart.
SWAKS_IPV6 = (
    subprocess.run(
        ["perl", "-MIO::Socket::INET6", "-e", "1"], capture_output=True, check=False
    ).returncode
    == 0
)


@dataclass
class NetServer(Running):
    """The server as the outside client of one address family reaches it."""

    family: str = "ipv4"
    host: str = "127.0.0.1"  # the server's address the outsider connects to
    outside: str = OUTSIDE_IP
    other_outside: str = OTHER_OUTSIDE_IP

    def port(self, kind: str = "smtp") -> int:
        return self.port_on(kind, self.host)

    @property
    def url_host(self) -> str:
        return f"[{self.host}]" if ":" in self.host else self.host


@pytest.fixture(scope="module", params=["ipv4", "ipv6"])
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, sink: SmtpSink
) -> Iterator[NetServer]:
    tmp = tmp_path_factory.mktemp("srv")
    if request.param == "ipv4":
        cfg_path, data_dir = write_server_config(
            tmp, delivery={"routes": {REMOTE: f"127.0.0.1:{sink.port}"}}
        )
        srv = NetServer(cfg_path, data_dir)
    else:
        # networks stays 127.0.0.1/32: ::1 is outside, as 127.0.0.2 is over IPv4.
        cfg_path, data_dir = write_server_config(
            tmp,
            listen={k: ["127.0.0.1:0", "[::1]:0"] for k in KINDS},
            delivery={"routes": {REMOTE: f"127.0.0.1:{sink.port}"}},
        )
        srv = NetServer(
            cfg_path, data_dir, family="ipv6", host="::1", outside="::1", other_outside="::1"
        )
    for address, password in {ALICE: PASSWORD, BOB: "bobs password"}.items():
        srv.add_user(address, password)
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def swaks(server: NetServer, *args: str) -> subprocess.CompletedProcess[str]:
    over_ipv6 = server.family == "ipv6" and any(server.url_host in a for a in args)
    if over_ipv6 and not SWAKS_IPV6:
        pytest.skip("swaks cannot speak IPv6 here: Perl's IO::Socket::INET6 is not installed")
    if over_ipv6:
        args = tuple(
            {OUTSIDE_IP: server.outside, OTHER_OUTSIDE_IP: server.other_outside}.get(a, a)
            for a in args
        )
    return subprocess.run(
        ["swaks", "--hide-informational", "--timeout", "20", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def marker_in_sink(sink: SmtpSink, marker: str, timeout: float = 15.0) -> bool:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(marker in m for m in sink.messages()):
            return True
        time.sleep(0.1)
    return False


# ---------------------------------------------------------------- the DESIGN.md table, live


def test_own_network_may_relay(server: NetServer, sink: SmtpSink) -> None:
    r = swaks(
        server,
        "--server",
        f"127.0.0.1:{server.port_on('smtp', '127.0.0.1')}",  # from inside, on either run
        "--from",
        "x@home.example",
        "--to",
        f"friend@{REMOTE}",
        "--header",
        "Subject: own-network-relay",
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert marker_in_sink(sink, "own-network-relay")


def test_outside_client_is_refused_relay(server: NetServer, sink: SmtpSink) -> None:
    r = swaks(
        server,
        "--server",
        f"{server.url_host}:{server.port('smtp')}",
        "--local-interface",
        OUTSIDE_IP,
        "--from",
        "x@home.example",
        "--to",
        f"friend@{REMOTE}",
        "--header",
        "Subject: hotel-relay",
    )
    assert r.returncode != 0
    assert f"550 5.7.1 <friend@{REMOTE}>: Relaying denied" in r.stdout
    assert not marker_in_sink(sink, "hotel-relay", timeout=1.0)


def test_outside_client_may_send_to_our_domain(server: NetServer) -> None:
    r = swaks(
        server,
        "--server",
        f"{server.url_host}:{server.port('smtp')}",
        "--local-interface",
        OUTSIDE_IP,
        "--from",
        "someone@elsewhere.example",
        "--to",
        ALICE,
        "--header",
        "Subject: inbound-for-alice",
    )
    assert r.returncode == 0, r.stdout
    assert wait_maildir(server.data_dir, ALICE, containing=b"inbound-for-alice")


def test_unknown_local_user_is_refused_at_rcpt(server: NetServer) -> None:
    r = swaks(
        server,
        "--server",
        f"{server.url_host}:{server.port('smtp')}",
        "--local-interface",
        OUTSIDE_IP,
        "--from",
        "someone@elsewhere.example",
        "--to",
        f"nobody@{LOCAL_DOMAIN}",
        "--quit-after",
        "RCPT",
    )
    assert (
        f"550 5.1.1 <nobody@{LOCAL_DOMAIN}>: Recipient address rejected: User unknown" in r.stdout
    )


@pytest.mark.parametrize(
    ("kind", "tls_args"),
    [("submission", ["--tls"]), ("submissions", ["--tls-on-connect"]), ("smtp", ["--tls"])],
    ids=["587-starttls", "465-implicit", "25-starttls"],
)
def test_authenticated_outside_client_may_relay(
    server: NetServer, sink: SmtpSink, kind: str, tls_args: list[str]
) -> None:
    marker = f"auth-relay-{kind}"
    r = swaks(
        server,
        "--server",
        f"{server.url_host}:{server.port(kind)}",
        "--local-interface",
        OUTSIDE_IP,
        *tls_args,
        "--auth",
        "PLAIN",
        "--auth-user",
        ALICE,
        "--auth-password",
        PASSWORD,
        "--from",
        ALICE,
        "--to",
        f"friend@{REMOTE}",
        "--header",
        f"Subject: {marker}",
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert marker_in_sink(sink, marker)


def test_auth_login_mechanism(server: NetServer, sink: SmtpSink) -> None:
    r = swaks(
        server,
        "--server",
        f"{server.url_host}:{server.port('submission')}",
        "--local-interface",
        OUTSIDE_IP,
        "--tls",
        "--auth",
        "LOGIN",
        "--auth-user",
        ALICE,
        "--auth-password",
        PASSWORD,
        "--from",
        ALICE,
        "--to",
        f"friend@{REMOTE}",
        "--header",
        "Subject: auth-login-relay",
    )
    assert r.returncode == 0, r.stdout
    assert marker_in_sink(sink, "auth-login-relay")


def test_submission_requires_auth(server: NetServer) -> None:
    r = swaks(
        server,
        "--server",
        f"{server.url_host}:{server.port('submission')}",
        "--tls",
        "--from",
        ALICE,
        "--to",
        f"friend@{REMOTE}",
        "--quit-after",
        "RCPT",
    )
    assert "530 5.7.0 Authentication required" in r.stdout


def test_submission_requires_starttls_first(server: NetServer) -> None:
    c = RawClient(server.port("submission"), server.outside)
    assert c.reply().startswith("220 ")
    ehlo = c.cmd("EHLO client.example")
    assert "STARTTLS" in ehlo and "AUTH" not in ehlo  # T5: no AUTH offered in clear
    assert c.cmd(f"MAIL FROM:<{ALICE}>") == "530 5.7.0 Must issue a STARTTLS command first"
    c.close()


def test_wrong_password(server: NetServer) -> None:
    r = swaks(
        server,
        "--server",
        f"{server.url_host}:{server.port('submission')}",
        "--tls",
        "--local-interface",
        OTHER_OUTSIDE_IP,
        "--auth",
        "PLAIN",
        "--auth-user",
        ALICE,
        "--auth-password",
        "wrong",
        "--from",
        ALICE,
        "--to",
        f"friend@{REMOTE}",
        "--quit-after",
        "AUTH",
    )
    assert "535 5.7.8 Authentication credentials invalid" in r.stdout


# ---------------------------------------------------------------- other real clients


def test_curl_smtp_outside_refused_and_smtps_with_login(
    server: NetServer, sink: SmtpSink, tmp_path: Path
) -> None:
    body = tmp_path / "mail.txt"
    body.write_text("Subject: curl-relay\r\n\r\nhello from curl\r\n")
    refused = subprocess.run(
        [
            "curl",
            "-sS",
            "--interface",
            server.outside,
            f"smtp://{server.url_host}:{server.port('smtp')}",
            "--mail-from",
            "x@home.example",
            "--mail-rcpt",
            f"friend@{REMOTE}",
            "--upload-file",
            str(body),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert refused.returncode != 0
    assert "550" in refused.stderr
    ok = subprocess.run(
        [
            "curl",
            "-sS",
            "-k",
            "--interface",
            server.outside,
            f"smtps://{server.url_host}:{server.port('submissions')}",
            "--user",
            f"{ALICE}:{PASSWORD}",
            "--mail-from",
            ALICE,
            "--mail-rcpt",
            f"friend@{REMOTE}",
            "--upload-file",
            str(body),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert ok.returncode == 0, ok.stderr
    assert marker_in_sink(sink, "curl-relay")


def test_smtplib_submission(server: NetServer, sink: SmtpSink) -> None:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with smtplib.SMTP(
        server.host, server.port("submission"), source_address=(server.outside, 0), timeout=20
    ) as s:
        s.starttls(context=ctx)
        s.login(ALICE, PASSWORD)
        refused = s.sendmail(ALICE, [f"friend@{REMOTE}"], "Subject: smtplib-relay\r\n\r\nhi\r\n")
        assert refused == {}
    assert marker_in_sink(sink, "smtplib-relay")


def test_smtplib_outside_relay_refused(server: NetServer) -> None:
    with smtplib.SMTP(
        server.host, server.port("smtp"), source_address=(server.outside, 0), timeout=20
    ) as s:
        with pytest.raises(smtplib.SMTPRecipientsRefused) as e:
            s.sendmail("x@home.example", [f"friend@{REMOTE}"], "Subject: no\r\n\r\nno\r\n")
    code, text = e.value.recipients[f"friend@{REMOTE}"]
    assert code == 550 and b"5.7.1" in text


# ---------------------------------------------------------------- anti-spoofing (robustness §2 S1-S3)


@pytest.mark.parametrize(
    "sender", [ALICE, ALICE.upper(), f"{ALICE}.", f'"alice"@{LOCAL_DOMAIN}', f"@{REMOTE}:{ALICE}"]
)
def test_s1_outside_client_cannot_claim_our_domain(server: NetServer, sender: str) -> None:
    c = RawClient(server.port("smtp"), server.outside)
    c.reply()
    c.cmd("EHLO client.example")
    r = c.cmd(f"MAIL FROM:<{sender}>")
    assert r.startswith("553 5.7.1 "), r
    assert "Sender address rejected: not logged in" in r
    c.close()


def test_s2_authenticated_user_cannot_send_as_another(server: NetServer) -> None:
    r = swaks(
        server,
        "--server",
        f"{server.url_host}:{server.port('submission')}",
        "--tls",
        "--auth",
        "PLAIN",
        "--auth-user",
        ALICE,
        "--auth-password",
        PASSWORD,
        "--from",
        BOB,
        "--to",
        f"friend@{REMOTE}",
        "--quit-after",
        "MAIL",
    )
    assert f"553 5.7.1 <{BOB}>: Sender address rejected: not owned by user {ALICE}" in r.stdout


def test_s3_auth_parameter_grants_nothing(server: NetServer) -> None:
    c = RawClient(server.port("smtp"), server.outside)
    c.reply()
    c.cmd("EHLO client.example")
    assert c.cmd(f"MAIL FROM:<x@{REMOTE}> AUTH=<{ALICE}>").startswith("250")
    assert c.cmd(f"RCPT TO:<v@{REMOTE}>").startswith("550 5.7.1")
    c.close()


# ---------------------------------------------------------------- relay tricks (robustness §2), live, client O

IP = "[127.0.0.1]"
H = "mx.pv.test"
L = LOCAL_DOMAIN
X = REMOTE

DENIED = "550 5.7.1 <{}>: Relaying denied"
UNKNOWN = "550 5.1.1 <{}>: Recipient address rejected: User unknown"
# Each variant with the one reply it must get (DESIGN.md's table, RFC 5321 §4.1.2
# for the syntax errors): the exact code, enhanced code and the address named.
TRICKS: dict[str, tuple[str, str]] = {
    "R1": (f"<v@{X}>", DENIED.format(f"v@{X}")),
    "R5-percent": (f"<v%{X}@{L}>", UNKNOWN.format(f"v%{X}@{L}")),
    "R5-percent-literal": (f"<v%{X}@{IP}>", DENIED.format(f"v%{X}@{IP}")),
    "R6-bang": (f"<{X}!v@{L}>", UNKNOWN.format(f"{X}!v@{L}")),
    "R6-bang-literal": (f"<{X}!v@{IP}>", DENIED.format(f"{X}!v@{IP}")),
    "R6-bang-bare": (f"<{X}!v>", f"501 5.1.3 <{X}!v>: need fully-qualified address"),
    "R7-quoted-at": (f'<"v@{X}"@{L}>', UNKNOWN.format(f'"v@{X}"@{L}')),
    "R7-quoted-at-literal": (f'<"v@{X}"@{IP}>', DENIED.format(f'"v@{X}"@{IP}')),
    "R8-quoted-only": (f'<"v@{X}">', f'501 5.1.3 <"v@{X}">: no domain after quoted local part'),
    "R8-quoted-percent": (
        f'<"v%{X}">',
        f'501 5.1.3 <"v%{X}">: no domain after quoted local part',
    ),
    "R9-double-at": (f"<v@{X}@{L}>", f"501 5.1.3 <v@{X}@{L}>: more than one @ in address"),
    "R9-double-at-literal": (
        f"<v@{X}@{IP}>",
        f"501 5.1.3 <v@{X}@{IP}>: more than one @ in address",
    ),
    "R9-double-at-host": (f"<v@{X}@{H}>", f"501 5.1.3 <v@{X}@{H}>: more than one @ in address"),
    # A source route is dropped (RFC 5321 §4.1.1.3): the foreign mailbox is judged.
    "R10-route": (f"<@{L}:v@{X}>", DENIED.format(f"v@{X}")),
    "R10-route-literal": (f"<@{IP}:v@{X}>", DENIED.format(f"v@{X}")),
    # One canonical form: trailing dot and case name the same foreign domain.
    "R12-trailing-dot": (f"<v@{X}.>", DENIED.format(f"v@{X}")),
    "R12-case": ("<v@OTHER.Example>", DENIED.format(f"v@{X}")),
    "R14-evil-suffix": (f"<v@evil{L}>", DENIED.format(f"v@evil{L}")),
    "R14-dotted-suffix": (f"<v@{L}.{X}>", DENIED.format(f"v@{L}.{X}")),
    "R14-subdomain": (f"<v@sub.{L}>", DENIED.format(f"v@sub.{L}")),
    "R15-literal": ("<v@[8.8.8.8]>", DENIED.format("v@[8.8.8.8]")),
    "R15-ipv6-literal": ("<v@[IPv6:::1]>", DENIED.format("v@[IPv6:::1]")),
    "R15-dotted-quad": ("<v@127.0.0.1>", DENIED.format("v@127.0.0.1")),
    "R16-no-domain": ("<v>", "501 5.1.3 <v>: need fully-qualified address"),
    "R18-utf8-without-smtputf8": (
        "<v@exämple.com>",
        "553 5.6.7 <v@exämple.com>: non-ASCII address needs SMTPUTF8",
    ),
}


@pytest.mark.parametrize(
    ("case", "rcpt", "want"), [(c, *t) for c, t in TRICKS.items()], ids=list(TRICKS)
)
def test_relay_trick_never_relays(server: NetServer, case: str, rcpt: str, want: str) -> None:
    """The sender is one MAIL accepts, so the RCPT reply is the relay decision itself."""
    c = RawClient(server.port("smtp"), server.outside)
    try:
        c.reply()
        c.cmd("EHLO client.example")
        assert c.cmd(f"MAIL FROM:<spam@{X}>") == "250 2.1.0 Ok"
        assert c.cmd(f"RCPT TO:{rcpt}") == want, case
    finally:
        c.close()


@pytest.fixture(scope="module")
def lenient(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    """A server that only warns about an outside client claiming our domain as
    sender: MAIL accepts such senders, so RCPT shows whether they grant relay."""
    srv = start_server(
        tmp_path_factory.mktemp("lenient"),
        users={ALICE: PASSWORD},
        sender={"unauthenticated_local": "warn"},
    )
    try:
        yield srv
    finally:
        srv.stop()


CLAIMED_SENDERS = {
    "R3-postmaster": f"postmaster@{L}",
    "R3-hostname": f"u@{H}",
    "R4-own-literal": f"u@{IP}",
}


@pytest.mark.parametrize("sender", list(CLAIMED_SENDERS.values()), ids=list(CLAIMED_SENDERS))
def test_r3_r4_claimed_sender_is_refused_at_mail(server: NetServer, sender: str) -> None:
    c = RawClient(server.port("smtp"), server.outside)
    try:
        c.reply()
        c.cmd("EHLO client.example")
        assert c.cmd(f"MAIL FROM:<{sender}>") == (
            f"553 5.7.1 <{sender}>: Sender address rejected: not logged in"
        )
    finally:
        c.close()


@pytest.mark.parametrize(
    "sender",
    ["", *CLAIMED_SENDERS.values()],
    ids=["R2-null", *CLAIMED_SENDERS],
)
def test_r2_r3_r4_sender_never_grants_relay(lenient: Running, sender: str) -> None:
    c = RawClient(lenient.port("smtp"), OUTSIDE_IP)
    try:
        c.reply()
        c.cmd("EHLO client.example")
        assert c.cmd(f"MAIL FROM:<{sender}>") == "250 2.1.0 Ok"
        assert c.cmd(f"RCPT TO:<v@{X}>") == DENIED.format(f"v@{X}")
    finally:
        c.close()


def test_r11_route_to_local_user_is_local(server: NetServer, sink: SmtpSink) -> None:
    """A source route through a foreign host to our user is our user (the route
    is dropped), and the message lands in her Maildir, not at the foreign host."""
    c = RawClient(server.port("smtp"), server.outside)
    try:
        c.reply()
        c.cmd("EHLO client.example")
        assert c.cmd(f"MAIL FROM:<spam@{X}>") == "250 2.1.0 Ok"
        assert c.cmd(f"RCPT TO:<@{X}:{ALICE}>") == "250 2.1.5 Ok"
        assert c.cmd("DATA").startswith("354 ")
        c.send("Subject: r11-route\r\n\r\nbody\r\n.\r\n")
        assert c.reply().startswith("250 2.0.0 Ok: queued as ")
    finally:
        c.close()
    assert wait_maildir(server.data_dir, ALICE, containing=b"r11-route")
    # Once the queue is empty every copy has gone where it was going.
    queue = server.data_dir / "queue"

    def queue_empty() -> None:
        assert not any(any((queue / d).iterdir()) for d in ("incoming", "active", "deferred"))

    eventually(queue_empty, timeout=30)
    assert not any("r11-route" in m for m in sink.messages())


def test_r13_trailing_dot_upper_case_is_the_same_mailbox(server: NetServer) -> None:
    c = RawClient(server.port("smtp"), server.outside)
    c.reply()
    c.cmd("EHLO client.example")
    c.cmd(f"MAIL FROM:<spam@{X}>")
    assert c.cmd(f"RCPT TO:<ALICE@{L.upper()}.>").startswith("250")
    c.close()


def test_r17_nul_and_cr_in_address(server: NetServer) -> None:
    c = RawClient(server.port("smtp"), server.outside)
    c.reply()
    c.cmd("EHLO client.example")
    c.cmd(f"MAIL FROM:<spam@{X}>")
    r1 = c.cmd(f"RCPT TO:<u@{L}\x00@{X}>")
    assert r1[0] == "5", r1
    c.send(f"RCPT TO:<v@{X}\r>\r\n")
    r2 = c.reply()
    assert r2[0] == "5", r2
    c.close()


def test_r19_mixed_recipients_deliver_only_locally(server: NetServer, sink: SmtpSink) -> None:
    c = RawClient(server.port("smtp"), server.outside)
    c.reply()
    c.cmd("EHLO client.example")
    assert c.cmd(f"MAIL FROM:<a@{X}>").startswith("250")
    assert c.cmd(f"RCPT TO:<{BOB}>").startswith("250")
    assert c.cmd(f"RCPT TO:<v@{X}>").startswith("550 5.7.1")
    assert c.cmd("DATA").startswith("354")
    c.send("Subject: r19-mixed\r\n\r\nbody\r\n.\r\n")
    assert c.reply().startswith("250")
    c.cmd("QUIT")
    assert wait_maildir(server.data_dir, BOB, containing=b"r19-mixed")
    assert not marker_in_sink(sink, "r19-mixed", timeout=1.0)
